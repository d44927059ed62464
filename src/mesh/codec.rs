//! How registry entries are written into gossip: one chitchat key per server,
//! a compact text value. Decoding treats every byte as untrusted input.
//!
//! Key:   `r1/<frontend port>/<server ip:port>`  (IPv6 in brackets)
//! Value: `A <stamp> <observed> <name> <p|-> <since ms> <expires ms>` or
//!        `D <stamp> <observed> <name>`, stamps in hex.
//!
//! Acknowledgement watermarks, one key per other peer:
//! Key:   `a1/<node id>`
//! Value: `<generation> <version>` in hex: this peer has stored durably every
//!        entry of that peer's incarnation `generation` up to gossip `version`.
//!
//! The `r1` and `a1` prefixes version the format: a later format gets a new
//! prefix and both can be read during an upgrade.

use std::net::SocketAddr;

use crate::clock::Stamp;
use crate::registry::{Entry, Key, Op, PeerId, ServiceName};

pub const ENTRY_PREFIX: &str = "r1/";
pub const ACK_PREFIX: &str = "a1/";

/// The largest value we accept from gossip; real ones are under 100 bytes.
const MAX_VALUE_LEN: usize = 256;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bad gossip {what}: {why}")]
pub struct DecodeError {
    pub what: &'static str,
    pub why: String,
}

fn bad(what: &'static str, why: impl Into<String>) -> DecodeError {
    DecodeError {
        what,
        why: why.into(),
    }
}

pub fn encode_key(key: &Key) -> String {
    format!("{ENTRY_PREFIX}{}/{}", key.frontend, key.server)
}

/// Parses the part of a key after [`ENTRY_PREFIX`].
pub fn decode_key(rest: &str) -> Result<Key, DecodeError> {
    let (port, server) = rest.split_once('/').ok_or_else(|| bad("key", "no '/'"))?;
    let frontend = crate::registry::types::parse_port("frontend", port)
        .map_err(|e| bad("key", e.to_string()))?;
    let server: SocketAddr = server
        .parse()
        .map_err(|_| bad("key", "bad server address"))?;
    // Same rules as an API request: no unspecified, multicast or port 0,
    // and one form per address, so one server is one key.
    Key::check(frontend, server).map_err(|e| bad("key", e.to_string()))
}

pub fn encode_value(e: &Entry) -> String {
    match &e.op {
        Op::Add {
            name,
            send_proxy,
            since_ms,
            expires_ms,
        } => format!(
            "A {:x} {:x} {name} {} {since_ms} {expires_ms}",
            e.stamp.0,
            e.observed.0,
            if *send_proxy { "p" } else { "-" }
        ),
        Op::Delete { name } => format!("D {:x} {:x} {name}", e.stamp.0, e.observed.0),
    }
}

fn hex(field: &'static str, s: Option<&str>) -> Result<u64, DecodeError> {
    let s = s.ok_or_else(|| bad("value", format!("missing {field}")))?;
    if s.is_empty() || s.len() > 16 {
        return Err(bad("value", format!("bad {field}")));
    }
    u64::from_str_radix(s, 16).map_err(|_| bad("value", format!("bad {field}")))
}

fn dec(field: &'static str, s: Option<&str>) -> Result<u64, DecodeError> {
    let s = s.ok_or_else(|| bad("value", format!("missing {field}")))?;
    if s.is_empty() || s.len() > 20 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad("value", format!("bad {field}")));
    }
    s.parse().map_err(|_| bad("value", format!("bad {field}")))
}

pub fn decode_value(v: &str) -> Result<Entry, DecodeError> {
    if v.len() > MAX_VALUE_LEN {
        return Err(bad("value", "too long"));
    }
    let mut parts = v.split(' ');
    let kind = parts.next().unwrap_or("");
    let stamp = Stamp(hex("stamp", parts.next())?);
    let observed = Stamp(hex("observed", parts.next())?);
    let name: ServiceName = parts
        .next()
        .ok_or_else(|| bad("value", "missing name"))?
        .parse()
        .map_err(|e: crate::registry::FieldError| bad("value", e.to_string()))?;
    let op = match kind {
        "A" => {
            let send_proxy = match parts.next() {
                Some("p") => true,
                Some("-") => false,
                _ => return Err(bad("value", "bad proxy flag")),
            };
            let since_ms = dec("since", parts.next())?;
            let expires_ms = dec("expires", parts.next())?;
            Op::Add {
                name,
                send_proxy,
                since_ms,
                expires_ms,
            }
        }
        "D" => Op::Delete { name },
        _ => return Err(bad("value", "unknown kind")),
    };
    if parts.next().is_some() {
        return Err(bad("value", "trailing fields"));
    }
    Ok(Entry {
        stamp,
        observed,
        op,
    })
}

/// The key under which a peer publishes how much of `node`'s key space it stored.
pub fn ack_key(node: &PeerId) -> String {
    format!("{ACK_PREFIX}{node}")
}

/// A watermark: (generation, version).
pub fn encode_ack(generation: u64, version: u64) -> String {
    format!("{generation:x} {version:x}")
}

pub fn decode_ack(v: &str) -> Result<(u64, u64), DecodeError> {
    let mut parts = v.split(' ');
    let generation = hex("generation", parts.next())?;
    let version = hex("version", parts.next())?;
    if parts.next().is_some() {
        return Err(bad("watermark", "trailing fields"));
    }
    Ok((generation, version))
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn round_trip() {
        let key = Key {
            frontend: 443,
            server: "[2001:db8::7]:30443".parse().unwrap(),
        };
        assert_eq!(encode_key(&key), "r1/443/[2001:db8::7]:30443");
        assert_eq!(
            decode_key(&encode_key(&key)[ENTRY_PREFIX.len()..]).unwrap(),
            key
        );
        for e in [
            Entry {
                stamp: Stamp(0x19a2b3c4d5e60001),
                observed: Stamp(7),
                op: Op::Add {
                    name: "traefik".parse().unwrap(),
                    send_proxy: true,
                    since_ms: 1,
                    expires_ms: 2,
                },
            },
            Entry {
                stamp: Stamp(5),
                observed: Stamp(0),
                op: Op::Delete {
                    name: "mqtt".parse().unwrap(),
                },
            },
        ] {
            assert_eq!(decode_value(&encode_value(&e)).unwrap(), e);
        }
    }

    #[test]
    fn hostile_values_are_refused() {
        for v in [
            "",
            "A",
            "X 1 1 a",
            "A 1 1 a p 1",
            "A 1 1 a x 1 2",
            "A zz 1 a p 1 2",
            "A 1 1 bad\nname p 1 2",
            "A 1 1 a;b p 1 2",
            "A 1 1 a p 1 2 extra",
            "D 1 1 a extra",
            "A 11111111111111111 1 a p 1 2",
            "A 1 1 a p -1 2",
        ] {
            assert!(decode_value(v).is_err(), "{v:?}");
        }
        for k in [
            "443",
            "0/127.0.0.1:1",
            "443/0.0.0.0:1",
            "443/127.0.0.1:0",
            "443/host:1",
            "70000/127.0.0.1:1",
            // A second key for 198.18.0.9:1, which every API request and
            // other peer writes in IPv4 form (found by fuzzing).
            "443/[::ffff:198.18.0.9]:1",
        ] {
            assert!(decode_key(k).is_err(), "{k:?}");
        }
    }

    #[test]
    fn watermarks() {
        assert_eq!(decode_ack(&encode_ack(0x19a, 42)).unwrap(), (0x19a, 42));
        for v in ["", "1", "1 2 3", "x 1", "1 -1", "11111111111111111 1"] {
            assert!(decode_ack(v).is_err(), "{v:?}");
        }
    }

    proptest! {
        #[test]
        fn decoding_never_panics(v in ".{0,300}", k in ".{0,80}") {
            let _ = decode_value(&v);
            let _ = decode_key(&k);
            let _ = decode_ack(&v);
        }
    }
}
