//! What each peer publishes so that every peer can refuse backends that
//! would loop back into the mesh, and can see whether the peers apply the
//! same policy: its interface addresses, lbmesh's ports, and a digest of its
//! registry policy.
//!
//! Value of `meta/addrs`: `<ip>,<ip>,… <port>,<port>,…` (at most
//! [`MAX_ADDRS`] addresses and [`MAX_PORTS`] ports are read from a peer).

use std::collections::BTreeSet;
use std::net::IpAddr;

use crate::registry::{LoopGuard, Registry};

pub const META_ADDRS: &str = "meta/addrs";
pub const META_POLICY: &str = "meta/policy";

/// Bounds on what is read from one peer's `meta/addrs`.
pub const MAX_ADDRS: usize = 64;
pub const MAX_PORTS: usize = 8;

/// Reads this VM's interface addresses.
pub type ReadAddrs = fn() -> BTreeSet<IpAddr>;

/// This VM's interface addresses (every address HAProxy could be reached at
/// here, the floating IP included while this VM holds it).
pub fn local_addrs() -> BTreeSet<IpAddr> {
    let mut out = BTreeSet::new();
    if let Ok(ifs) = nix::ifaddrs::getifaddrs() {
        for i in ifs {
            let Some(a) = i.address else { continue };
            if let Some(v4) = a.as_sockaddr_in() {
                out.insert(IpAddr::V4(v4.ip()));
            } else if let Some(v6) = a.as_sockaddr_in6() {
                out.insert(IpAddr::V6(v6.ip()));
            }
        }
    }
    out
}

pub fn encode(addrs: &BTreeSet<IpAddr>, ports: &BTreeSet<u16>) -> String {
    let a: Vec<String> = addrs
        .iter()
        .filter(|ip| !ip.is_loopback())
        .take(MAX_ADDRS)
        .map(ToString::to_string)
        .collect();
    let p: Vec<String> = ports
        .iter()
        .take(MAX_PORTS)
        .map(ToString::to_string)
        .collect();
    format!("{} {}", a.join(","), p.join(","))
}

/// Reads a peer's `meta/addrs`, keeping what parses, within the bounds.
pub fn decode(v: &str) -> (Vec<IpAddr>, Vec<u16>) {
    let (a, p) = v.split_once(' ').unwrap_or((v, ""));
    let addrs = a
        .split(',')
        .take(MAX_ADDRS)
        .filter_map(|s| s.parse::<IpAddr>().ok())
        .map(|ip| ip.to_canonical())
        .collect();
    let ports = p
        .split(',')
        .take(MAX_PORTS)
        .filter_map(|s| s.parse::<u16>().ok())
        .filter(|p| *p != 0)
        .collect();
    (addrs, ports)
}

/// The loop guard from this VM's addresses and ports and every peer's
/// published `meta/addrs` values.
pub fn guard<'a>(
    own_addrs: &BTreeSet<IpAddr>,
    own_ports: &BTreeSet<u16>,
    peers: impl IntoIterator<Item = &'a str>,
) -> LoopGuard {
    let mut g = LoopGuard {
        addrs: own_addrs.iter().map(|a| a.to_canonical()).collect(),
        ports: own_ports.clone(),
    };
    for v in peers {
        let (a, p) = decode(v);
        g.addrs.extend(a);
        g.ports.extend(p);
    }
    g
}

/// A short digest of what this peer accepts: frontend ports, backend
/// networks and bounds. Peers with different digests serve different things.
pub fn policy_digest(r: &Registry) -> String {
    use sha2::Digest as _;
    let l = r.limits();
    let text = format!(
        "ports {}\nbackends {}\nttl {:?} {:?} {:?}\nmax {} {} {}\n",
        r.port_policy(),
        r.backends(),
        l.min_ttl,
        l.default_ttl,
        l.max_ttl,
        l.max_servers,
        l.max_servers_per_frontend,
        l.max_frontends
    );
    crate::registry::view::short_digest(sha2::Sha256::new_with_prefix(text))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_hostile_values() {
        let addrs: BTreeSet<IpAddr> = ["198.18.0.11", "2001:db8::1", "127.0.0.1"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        let ports: BTreeSet<u16> = [9000, 7946].into();
        let v = encode(&addrs, &ports);
        assert_eq!(v, "198.18.0.11,2001:db8::1 7946,9000");
        let (a, p) = decode(&v);
        assert_eq!(a.len(), 2);
        assert_eq!(p, vec![7946, 9000]);
        let g = guard(&BTreeSet::new(), &BTreeSet::new(), [v.as_str(), "junk", ""]);
        assert!(g.is_mesh("198.18.0.11".parse().unwrap()));
        assert!(g.ports.contains(&9000));
        let huge = format!("{} 1,2", "1.2.3.4,".repeat(10_000));
        assert!(decode(&huge).0.len() <= MAX_ADDRS);
        assert!(!local_addrs().is_empty());
    }
}
