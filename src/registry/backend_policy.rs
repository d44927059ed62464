//! Which addresses a backend server may have: never one that is not a real
//! unicast host, loopback and link-local only where the operator allows them
//! (SSRF: the VM's own services, cloud metadata at 169.254.169.254), and
//! never this VM or a peer on a port that would make HAProxy connect to
//! itself (a loop). Pure: the mesh's addresses come in as an argument.
//!
//! Every check looks through the forms that carry an IPv4 address inside an
//! IPv6 one (mapped, translated, NAT64, 6to4, Teredo, ISATAP), so
//! `::ffff:127.0.0.1` or `64:ff9b::a9fe:a9fe` is judged as the IPv4 address it reaches.

use std::collections::BTreeSet;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;

/// Why a backend address is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AddressRefusal {
    /// Not a host at all (unspecified, multicast, broadcast, reserved or
    /// deprecated ranges); refused whatever the config says.
    #[error("{ip} cannot be a backend server address ({what})")]
    Never { ip: IpAddr, what: &'static str },
    /// Loopback or link-local, and the operator has not listed it.
    #[error(
        "{ip} is a {what} address; list it in registry.allowed-backends to allow backends there"
    )]
    Local { ip: IpAddr, what: &'static str },
    #[error("{ip} is not in registry.allowed-backends ({allowed})")]
    NotAllowed { ip: IpAddr, allowed: String },
    #[error(
        "{ip}:{port} is {whose} on {what}: HAProxy would connect to itself (a forwarding loop)"
    )]
    Loop {
        ip: IpAddr,
        port: u16,
        whose: &'static str,
        what: &'static str,
    },
    #[error(
        "frontend port {frontend} cannot be opened: server {server} of frontend port {of} points at it on this load balancer or a peer (a forwarding loop)"
    )]
    LoopTarget {
        frontend: u16,
        server: std::net::SocketAddr,
        of: u16,
    },
}

impl AddressRefusal {
    /// A stable label for metrics and JSON.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Never { .. } => "address_never_allowed",
            Self::Local { .. } => "address_local",
            Self::NotAllowed { .. } => "address_not_allowed",
            Self::Loop { .. } | Self::LoopTarget { .. } => "forwarding_loop",
        }
    }
}

/// The IPv4 address an IPv6 address forwards to, for the forms that embed one.
pub fn embedded_v4(v6: &Ipv6Addr) -> Option<Ipv4Addr> {
    let s = v6.segments();
    let o = v6.octets();
    let tail = Ipv4Addr::new(o[12], o[13], o[14], o[15]);
    match s {
        // ::ffff:a.b.c.d (mapped) and ::ffff:0:a.b.c.d (SIIT translated).
        [0, 0, 0, 0, 0, 0xffff, _, _] | [0, 0, 0, 0, 0xffff, 0, _, _] => Some(tail),
        // 64:ff9b::a.b.c.d, the NAT64 well-known prefix.
        [0x64, 0xff9b, 0, 0, 0, 0, _, _] => Some(tail),
        // 64:ff9b:1::/48, local-use NAT64 (RFC 8215) with a /48 layout:
        // the address sits in bits 48..64 and 72..88 around the u octet.
        [0x64, 0xff9b, 1, ..] => Some(Ipv4Addr::new(o[6], o[7], o[9], o[10])),
        // 2002:AABB:CCDD::/48, 6to4: the relay at a.b.c.d.
        [0x2002, hi, lo, ..] => Some(Ipv4Addr::from((u32::from(hi) << 16) | u32::from(lo))),
        // 2001:0::/32, Teredo: the client's address is the last 32 bits inverted.
        [0x2001, 0, ..] => Some(Ipv4Addr::from(!u32::from(tail))),
        // An ISATAP interface id (::0:5efe:a.b.c.d or ::200:5efe:a.b.c.d).
        [_, _, _, _, 0 | 0x200, 0x5efe, _, _] => Some(tail),
        _ => None,
    }
}

/// The address HAProxy is given: an IPv4-mapped IPv6 address is the IPv4
/// address itself (one server, whichever way it is written).
pub fn canonical(ip: IpAddr) -> IpAddr {
    ip.to_canonical()
}

/// Why an address can never be a backend, if it cannot.
pub fn never(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => never_v4(v4),
        IpAddr::V6(v6) => {
            if v6.is_unspecified() {
                return Some("unspecified");
            }
            if v6.is_multicast() {
                return Some("multicast");
            }
            let s = v6.segments();
            // ::a.b.c.d, IPv4-compatible: deprecated and unroutable (::1 is loopback).
            if s[..6] == [0; 6] && !v6.is_loopback() {
                return Some("deprecated IPv4-compatible form");
            }
            // 100::/64 discard-only, fec0::/10 site-local (deprecated).
            if s[..4] == [0x100, 0, 0, 0] {
                return Some("discard-only");
            }
            if (s[0] & 0xffc0) == 0xfec0 {
                return Some("deprecated site-local");
            }
            embedded_v4(&v6).and_then(never_v4)
        }
    }
}

fn never_v4(v4: Ipv4Addr) -> Option<&'static str> {
    let o = v4.octets();
    if v4.is_unspecified() || o[0] == 0 {
        Some("unspecified or \"this network\"")
    } else if v4.is_broadcast() {
        Some("broadcast")
    } else if v4.is_multicast() {
        Some("multicast")
    } else if o[0] >= 240 {
        Some("reserved")
    } else if o[..3] == [192, 0, 0] {
        Some("reserved for protocol assignments")
    } else {
        None
    }
}

/// Whether an address is loopback or link-local, looking through embedded IPv4.
pub fn local_kind(ip: IpAddr) -> Option<&'static str> {
    let v4 = match ip {
        IpAddr::V4(v4) => Some(v4),
        IpAddr::V6(v6) => {
            if v6.is_loopback() {
                return Some("loopback");
            }
            if v6.is_unicast_link_local() {
                return Some("link-local");
            }
            embedded_v4(&v6)
        }
    };
    let v4 = v4?;
    if v4.is_loopback() {
        Some("loopback")
    } else if v4.is_link_local() {
        Some("link-local")
    } else {
        None
    }
}

/// The operator's list of allowed backend networks (`registry.allowed-backends`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendPolicy {
    allowed: Vec<IpNet>,
}

impl Default for BackendPolicy {
    /// Every unicast address except loopback and link-local.
    fn default() -> Self {
        Self::new(vec![
            "0.0.0.0/0".parse().expect("valid"),
            "::/0".parse().expect("valid"),
        ])
    }
}

impl BackendPolicy {
    pub fn new(allowed: Vec<IpNet>) -> Self {
        let mut allowed: Vec<IpNet> = allowed.into_iter().map(|n| n.trunc()).collect();
        allowed.sort();
        allowed.dedup();
        Self { allowed }
    }

    pub fn allowed(&self) -> &[IpNet] {
        &self.allowed
    }

    /// Checks a backend address against the policy. Loopback and link-local
    /// addresses need a listed network that lies within loopback or
    /// link-local itself: `0.0.0.0/0` alone does not open them.
    pub fn check(&self, ip: IpAddr) -> Result<(), AddressRefusal> {
        let ip = canonical(ip);
        if let Some(what) = never(ip) {
            return Err(AddressRefusal::Never { ip, what });
        }
        // Judge an embedded IPv4 address as what it is, too.
        let inner = match ip {
            IpAddr::V6(v6) => embedded_v4(&v6).map(IpAddr::V4),
            IpAddr::V4(_) => None,
        };
        let listed = |a: IpAddr, need_local: bool| {
            self.allowed
                .iter()
                .any(|n| n.contains(&a) && (!need_local || local_kind(n.network()).is_some()))
        };
        if let Some(what) = local_kind(ip) {
            let target = inner.filter(|i| local_kind(*i).is_some()).unwrap_or(ip);
            if !listed(target, true) {
                return Err(AddressRefusal::Local { ip, what });
            }
            return Ok(());
        }
        if !listed(ip, false) || inner.is_some_and(|i| !listed(i, false)) {
            return Err(AddressRefusal::NotAllowed {
                ip,
                allowed: self.to_string(),
            });
        }
        Ok(())
    }
}

impl fmt::Display for BackendPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let list: Vec<String> = self.allowed.iter().map(ToString::to_string).collect();
        f.write_str(&list.join(", "))
    }
}

/// What a backend must never point at: the addresses of this VM and of every
/// peer (as they publish them), on lbmesh's own ports. Frontend ports are
/// added from the registry when a server is checked.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LoopGuard {
    /// Interface addresses of this VM and of the peers.
    pub addrs: BTreeSet<IpAddr>,
    /// lbmesh's listening ports on this VM and on the peers.
    pub ports: BTreeSet<u16>,
}

impl LoopGuard {
    /// Whether `ip` is this VM or a peer. Every loopback address is this VM.
    pub fn is_mesh(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        if ip.is_loopback() || local_kind(ip) == Some("loopback") {
            return true;
        }
        if self.addrs.contains(&ip) {
            return true;
        }
        match ip {
            IpAddr::V6(v6) => {
                embedded_v4(&v6).is_some_and(|v4| self.addrs.contains(&IpAddr::V4(v4)))
            }
            IpAddr::V4(_) => false,
        }
    }

    /// Refuses a server at `ip:port` when that is a mesh address on one of
    /// lbmesh's ports or on a frontend port (`is_frontend`).
    pub fn check(
        &self,
        ip: IpAddr,
        port: u16,
        is_frontend: impl Fn(u16) -> bool,
    ) -> Result<(), AddressRefusal> {
        if !self.is_mesh(ip) {
            return Ok(());
        }
        let what = if self.ports.contains(&port) {
            "one of lbmesh's ports"
        } else if is_frontend(port) {
            "a frontend port"
        } else {
            return Ok(());
        };
        Err(AddressRefusal::Loop {
            ip,
            port,
            whose: "this load balancer or a peer",
            what,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn the_policy_table() {
        let default = BackendPolicy::default();
        let lab = BackendPolicy::new(vec![
            "0.0.0.0/0".parse().unwrap(),
            "::/0".parse().unwrap(),
            "127.0.0.0/8".parse().unwrap(),
        ]);
        let narrow = BackendPolicy::new(vec!["10.0.0.0/8".parse().unwrap()]);
        // (policy, address, allowed, label when refused)
        let cases: &[(&BackendPolicy, &str, Option<&str>)] = &[
            (&default, "203.0.113.7", None),
            (&default, "198.18.0.5", None),
            (&default, "2001:db8::7", None),
            (&default, "100.64.0.1", None),
            (&default, "127.0.0.1", Some("address_local")),
            (&default, "::1", Some("address_local")),
            (&default, "169.254.169.254", Some("address_local")),
            (&default, "fe80::1", Some("address_local")),
            (&default, "::ffff:127.0.0.1", Some("address_local")),
            (&default, "::ffff:169.254.169.254", Some("address_local")),
            (&default, "64:ff9b::7f00:1", Some("address_local")),
            (&default, "64:ff9b::a9fe:a9fe", Some("address_local")),
            (&default, "2002:7f00:1::1", Some("address_local")),
            (&default, "::ffff:0:7f00:1", Some("address_local")),
            (&default, "::ffff:0.0.0.0", Some("address_never_allowed")),
            (
                &default,
                "::ffff:255.255.255.255",
                Some("address_never_allowed"),
            ),
            (&default, "::ffff:224.0.0.1", Some("address_never_allowed")),
            (&default, "240.0.0.1", Some("address_never_allowed")),
            (&default, "0.1.2.3", Some("address_never_allowed")),
            (&default, "192.0.0.170", Some("address_never_allowed")),
            (&default, "::7f00:1", Some("address_never_allowed")),
            (&default, "fec0::1", Some("address_never_allowed")),
            (&default, "ff02::1", Some("address_never_allowed")),
            (&default, "64:ff9b::e000:1", Some("address_never_allowed")),
            (&lab, "127.0.0.1", None),
            (&lab, "127.8.9.10", None),
            (&lab, "::ffff:127.0.0.1", None),
            (&lab, "169.254.169.254", Some("address_local")),
            (&lab, "::1", Some("address_local")),
            (&narrow, "10.1.2.3", None),
            (&narrow, "::ffff:10.1.2.3", None),
            (&narrow, "203.0.113.7", Some("address_not_allowed")),
            (&narrow, "64:ff9b::cb00:7107", Some("address_not_allowed")),
            (&narrow, "127.0.0.1", Some("address_local")),
        ];
        for (policy, addr, want) in cases {
            let got = policy.check(ip(addr)).err().map(|e| e.label());
            assert_eq!(got, *want, "{addr} under [{policy}]");
        }
        let msg = default
            .check(ip("169.254.169.254"))
            .unwrap_err()
            .to_string();
        assert_eq!(
            msg,
            "169.254.169.254 is a link-local address; list it in registry.allowed-backends to allow backends there"
        );
    }

    #[test]
    fn embedded_forms() {
        for (v6, v4) in [
            ("::ffff:1.2.3.4", "1.2.3.4"),
            ("::ffff:0:1.2.3.4", "1.2.3.4"),
            ("64:ff9b::1.2.3.4", "1.2.3.4"),
            ("2002:102:304::1", "1.2.3.4"),
            ("2001:0:4136:e378:8000:63bf:fefd:fcfb", "1.2.3.4"),
            ("2001:db8::5efe:1.2.3.4", "1.2.3.4"),
            ("64:ff9b:1:102:3:400::", "1.2.3.4"),
        ] {
            let v6: Ipv6Addr = v6.parse().unwrap();
            assert_eq!(embedded_v4(&v6), Some(v4.parse().unwrap()), "{v6}");
        }
        assert_eq!(embedded_v4(&"2001:db8::7".parse().unwrap()), None);
        assert_eq!(canonical(ip("::ffff:1.2.3.4")), ip("1.2.3.4"));
    }

    #[test]
    fn loops_are_refused_on_lbmesh_and_frontend_ports_only() {
        let guard = LoopGuard {
            addrs: [ip("198.18.0.11"), ip("198.18.0.12")].into(),
            ports: [9000, 7946].into(),
        };
        let frontends = |p: u16| p == 443 || p == 8702;
        for (addr, port, refused) in [
            ("198.18.0.11", 8702, true),
            ("198.18.0.12", 443, true),
            ("198.18.0.12", 9000, true),
            ("::ffff:198.18.0.11", 7946, true),
            ("64:ff9b::c612:b", 443, true),
            ("127.0.0.1", 443, true),
            ("127.9.9.9", 9000, true),
            ("198.18.0.11", 30443, false),
            ("198.18.0.13", 443, false),
            ("127.0.0.1", 30443, false),
        ] {
            assert_eq!(
                guard.check(ip(addr), port, frontends).is_err(),
                refused,
                "{addr}:{port}"
            );
        }
    }
}
