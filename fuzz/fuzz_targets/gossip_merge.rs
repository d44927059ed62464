//! What peers gossip, merged into this peer's registry as the mesh does:
//! whatever keys, values, stamps and lease times they send, and whatever
//! this peer writes itself meanwhile, nothing panics, the registry stays
//! consistent and within its bounds, and it still renders.
//!
//! Input: lines. `<peer><key>\t<value>` merges a peer's entry (`<peer>` is
//! one character naming one of four peer incarnations; an empty value is a
//! deleted key); `!<key>` registers `<key>` locally, `-<key>` deletes it;
//! each line advances the clock by its length in seconds.
#![no_main]

use std::collections::BTreeSet;
use std::time::Duration;

use lbmesh::haproxy::render::{RenderSettings, render};
use lbmesh::mesh::codec::{decode_key, decode_value};
use lbmesh::registry::{Command, Limits, Origin, PortPolicy, Registry};
use libfuzzer_sys::fuzz_target;

const T0: u64 = 1_800_000_000_000;

fuzz_target!(|data: &[u8]| {
    let limits = Limits {
        max_servers: 8,
        max_servers_per_frontend: 4,
        max_frontends: 4,
        ..Limits::default()
    };
    let max_servers = limits.max_servers;
    let mut r = Registry::new(
        "me".parse().unwrap(),
        limits,
        PortPolicy::new(vec![], [9000]),
    );
    let peers = [
        Origin::new("lb2".parse().unwrap(), 1),
        Origin::new("lb2".parse().unwrap(), 2),
        Origin::new("lb3".parse().unwrap(), 1),
        // An earlier incarnation of this peer, as gossip still carries it.
        Origin::new("me".parse().unwrap(), 7),
    ];
    let mut now = T0;
    for line in String::from_utf8_lossy(data).lines() {
        now += line.len() as u64 * 1_000;
        let Some(first) = line.chars().next() else {
            continue;
        };
        let rest = &line[first.len_utf8()..];
        match first {
            '!' | '-' => {
                let Ok(key) = decode_key(rest) else { continue };
                let name = "own".parse().unwrap();
                let cmd = if first == '!' {
                    Command::Register {
                        key,
                        name,
                        send_proxy: false,
                        ttl: None,
                    }
                } else {
                    Command::Delete { key, name }
                };
                let _ = r.apply(cmd, now);
            }
            _ => {
                let peer = peers[(first as usize) % peers.len()].clone();
                let (k, v) = rest.split_once('\t').unwrap_or((rest, ""));
                let Ok(key) = decode_key(k) else { continue };
                let entry = if v.is_empty() {
                    None
                } else {
                    match decode_value(v) {
                        Ok(e) => Some(e),
                        Err(_) => continue,
                    }
                };
                let _ = r.merge_remote(key, peer, entry, now);
            }
        }
        r.check_invariants().unwrap();
    }
    // Held entries from other peers stay bounded whatever they send.
    let others = r
        .entries()
        .filter(|(_, o, _)| o.node.as_str() != "me")
        .count();
    assert!(others <= 2 * 2 * max_servers, "{others} entries held");
    let _ = r.summary(now);
    let _ = r.refused(now, 100);
    let _ = r.refused_counts(now);
    let _ = r.leases_ended(T0, now);
    let view = r.view(now);
    let _ = render(
        &view,
        &BTreeSet::new(),
        &RenderSettings::with_sockets_in(std::path::Path::new("/run/lbmesh")),
    );
    r.collect_garbage(now + Duration::from_secs(3 * 24 * 3600).as_millis() as u64);
    r.bound_own_tombstones(now);
    r.check_invariants().unwrap();
});
