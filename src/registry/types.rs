//! Validated domain values: what a client may name, and nothing else.
//!
//! Every value here is built by a parser that rejects anything that could
//! carry text into the HAProxy config, so later stages never re-check.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Why a single field was rejected. `field` uses the wire name of the original API.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {problem}")]
pub struct FieldError {
    pub field: &'static str,
    pub problem: String,
}

impl FieldError {
    pub fn new(field: &'static str, problem: impl Into<String>) -> Self {
        Self {
            field,
            problem: problem.into(),
        }
    }
}

/// Shows a client-supplied value in an error message without letting it
/// smuggle control characters or unbounded length into logs or JSON.
pub fn quoted(raw: &str) -> String {
    const MAX: usize = 64;
    let mut out = String::with_capacity(raw.len().min(MAX) + 2);
    out.push('"');
    for (i, c) in raw.chars().enumerate() {
        if i == MAX {
            out.push('…');
            break;
        }
        out.extend(c.escape_debug());
    }
    out.push('"');
    out
}

/// A TCP port from 1 to 65535.
pub fn parse_port(field: &'static str, raw: &str) -> Result<u16, FieldError> {
    let bad = || {
        FieldError::new(
            field,
            format!("must be a port number from 1 to 65535, got {}", quoted(raw)),
        )
    };
    if raw.is_empty() || raw.len() > 5 || !raw.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    match raw.parse::<u32>() {
        Ok(p) if (1..=65_535).contains(&p) => Ok(p as u16),
        _ => Err(bad()),
    }
}

/// An address a backend server can be reached at: an IPv4 or IPv6 host
/// address (no host names, no zone ids), with an IPv4-mapped IPv6 address
/// turned into the IPv4 address it is. Addresses that can never be a host
/// (unspecified, multicast, broadcast, reserved, including when embedded in
/// IPv6) are refused here; what the operator allows is the registry's call.
pub fn parse_server_ip(field: &'static str, raw: &str) -> Result<IpAddr, FieldError> {
    let ip: IpAddr = raw.parse().map_err(|_| {
        FieldError::new(
            field,
            format!("must be an IPv4 or IPv6 address, got {}", quoted(raw)),
        )
    })?;
    let ip = super::backend_policy::canonical(ip);
    if let Some(what) = super::backend_policy::never(ip) {
        return Err(FieldError::new(
            field,
            format!("{ip} cannot be a backend server address ({what})"),
        ));
    }
    Ok(ip)
}

fn is_name_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-')
}

/// Checks the `[A-Za-z0-9_.-]{1,63}` rule shared by service names and peer ids.
fn check_name(field: &'static str, raw: &str) -> Result<(), FieldError> {
    if raw.is_empty() || raw.len() > 63 || !raw.bytes().all(is_name_byte) {
        return Err(FieldError::new(
            field,
            format!(
                "must be 1 to 63 characters from A-Z a-z 0-9 _ . -, got {}",
                quoted(raw)
            ),
        ));
    }
    Ok(())
}

macro_rules! name_type {
    ($(#[$doc:meta])* $ty:ident, $field:literal) => {
        $(#[$doc])*
        /// Shared (`Arc<str>`): the same name appears in many entries.
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $ty(std::sync::Arc<str>);

        impl $ty {
            /// Validates `raw`, naming `field` in the error.
            pub fn parse_field(field: &'static str, raw: &str) -> Result<Self, FieldError> {
                check_name(field, raw)?;
                Ok(Self(raw.into()))
            }
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl FromStr for $ty {
            type Err = FieldError;
            fn from_str(raw: &str) -> Result<Self, FieldError> {
                Self::parse_field($field, raw)
            }
        }

        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl Serialize for $ty {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.0)
            }
        }

        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let raw = String::deserialize(d)?;
                raw.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}

name_type!(
    /// The name a service registers under; the owner of a frontend.
    ServiceName,
    "name"
);
name_type!(
    /// The identity of one lbmesh peer in the mesh.
    PeerId,
    "node-id"
);

/// Who accepted a write: one peer in one incarnation. A restart is a new
/// generation, so entries of an earlier incarnation stay apart from the new ones.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Origin {
    pub node: PeerId,
    pub generation: u64,
}

impl Origin {
    pub fn new(node: PeerId, generation: u64) -> Self {
        Self { node, generation }
    }
}

/// Parses a node id as generation 0 (tests and single-incarnation use).
impl FromStr for Origin {
    type Err = FieldError;
    fn from_str(raw: &str) -> Result<Self, FieldError> {
        Ok(Self::new(raw.parse()?, 0))
    }
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.node.fmt(f)
    }
}

/// Shown as the node id: the generation is bookkeeping.
impl Serialize for Origin {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.node.serialize(s)
    }
}

/// One backend server: the node IP and NodePort a frontend forwards to.
pub type ServerAddr = SocketAddr;

/// Identifies one server of one frontend: the unit a lease covers.
/// Read back (from the store) only if the API could have accepted it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "KeyFields")]
pub struct Key {
    pub frontend: u16,
    pub server: ServerAddr,
}

/// A [`Key`] as written, before it is checked.
#[derive(Deserialize)]
struct KeyFields {
    frontend: u16,
    server: ServerAddr,
}

impl Key {
    /// Refuses what no request could have registered: port 0, an address
    /// that can never be a backend, or an IPv4 address in IPv6 form (the
    /// API turns it into the IPv4 address, so it would be a second key for
    /// one server).
    pub fn check(frontend: u16, server: ServerAddr) -> Result<Key, FieldError> {
        if frontend == 0 {
            return Err(FieldError::new("frontend", "must not be port 0"));
        }
        if server.port() == 0 {
            return Err(FieldError::new("server", "must not be port 0"));
        }
        let ip = parse_server_ip("server", &server.ip().to_string())?;
        if ip != server.ip() {
            return Err(FieldError::new(
                "server",
                format!("{} must be written as {ip}", server.ip()),
            ));
        }
        Ok(Key { frontend, server })
    }
}

impl TryFrom<KeyFields> for Key {
    type Error = FieldError;
    fn try_from(k: KeyFields) -> Result<Key, FieldError> {
        Key::check(k.frontend, k.server)
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}→{}", self.frontend, self.server)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports() {
        for (raw, ok) in [
            ("1", Some(1)),
            ("443", Some(443)),
            ("65535", Some(65535)),
            ("0", None),
            ("65536", None),
            ("", None),
            ("-1", None),
            ("+443", None),
            (" 443", None),
            ("443 ", None),
            ("44;3", None),
            ("4e2", None),
            ("000000443", None),
            ("99999999999999999999", None),
        ] {
            assert_eq!(parse_port("frontend-port", raw).ok(), ok, "{raw:?}");
        }
    }

    #[test]
    fn server_ips() {
        for (raw, ok) in [
            ("203.0.113.7", true),
            ("127.0.0.1", true),
            ("2001:db8::7", true),
            ("::1", true),
            ("0.0.0.0", false),
            ("::", false),
            ("::ffff:0.0.0.0", false),
            ("::ffff:255.255.255.255", false),
            ("::ffff:224.0.0.1", false),
            ("240.0.0.1", false),
            ("::ffff:203.0.113.7", true),
            ("255.255.255.255", false),
            ("224.0.0.1", false),
            ("ff02::1", false),
            ("fe80::1%eth0", false),
            ("203.0.113.7:80", false),
            ("example.com", false),
            ("203.0.113.07", false),
            ("203.0.113", false),
            ("203.0.113.7 ", false),
            ("203.0.113.7;", false),
            ("", false),
        ] {
            assert_eq!(parse_server_ip("dst-ip", raw).is_ok(), ok, "{raw:?}");
        }
        assert_eq!(
            parse_server_ip("dst-ip", "::ffff:203.0.113.7").unwrap(),
            "203.0.113.7".parse::<IpAddr>().unwrap()
        );
    }

    #[test]
    fn names() {
        for (raw, ok) in [
            ("traefik", true),
            ("unifi-adoption", true),
            ("a.b_c-D9", true),
            (&"x".repeat(63), true),
            (&"x".repeat(64), false),
            ("", false),
            ("has space", false),
            ("semi;colon", false),
            ("new\nline", false),
            ("hash#tag", false),
            ("quote\"", false),
            ("ünicode", false),
            ("slash/", false),
        ] {
            assert_eq!(raw.parse::<ServiceName>().is_ok(), ok, "{raw:?}");
        }
    }

    #[test]
    fn quoted_escapes_and_truncates() {
        assert_eq!(quoted("a\nb"), "\"a\\nb\"");
        assert!(quoted(&"y".repeat(500)).chars().count() < 70);
    }
}
