//! The nftables rules of connection handoff and the peers they pass
//! packets to; pure.
//!
//! Every VM holds the VIP as a /32 on `lo` and answers ARP only for
//! addresses of the interface asked (`arp_ignore=1`, `arp_announce=2`), so
//! only the VRRP holder draws the VIP's traffic, while every VM keeps the
//! sockets it accepted through the VIP after the VIP has moved on. Packets
//! reach the holder of the moment; one of a connection this VM did not see
//! start (not a SYN, tracked by no conntrack entry, and no connected socket
//! here) is passed to every peer and dropped here. The peer that serves the
//! connection takes it; the others drop it, also silently. A copy arrives
//! with TTL 1 (set to 2; the kernel's `dup` takes one), and a packet with
//! TTL 1 is never passed on again, so two VMs that both believe they hold
//! the VIP cannot bounce packets between them.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::Ipv4Addr;

/// The floating IP and the interface that carries it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HandoffSettings {
    pub vip: Ipv4Addr,
    /// Validated at configuration: `[A-Za-z0-9_.-]{1,15}`.
    pub interface: String,
}

/// The nftables table lbmesh owns; nothing else is touched.
pub const TABLE: &str = "lbmesh_handoff";

/// A peer that has not been live for this long gets no more packets: its
/// daemon restarting (an upgrade) takes seconds, while a VM that crashed
/// serves nothing, and the holder then answers those packets with a reset
/// so that their clients reconnect.
pub const FORGET_MS: u64 = 60_000;

/// The nftables script that installs the rules, replacing any earlier
/// version in one transaction (`nft -f`). `peers`: where packets of
/// connections this VM did not see start are passed; with none, such
/// packets reach this VM's own stack, which resets them.
pub fn ruleset(s: &HandoffSettings, peers: &[Ipv4Addr]) -> String {
    let mut pass_on = String::new();
    for p in peers {
        let _ = write!(pass_on, " dup to {p} device \"{}\"", s.interface);
    }
    let pass_on = if peers.is_empty() {
        "\t\t# No peer to pass them to: this VM's stack answers with a reset.\n".to_owned()
    } else {
        format!(
            "\t\t# To every peer: the one that serves it takes it.\n\
             \t\tip ttl set 2{pass_on} drop\n"
        )
    };
    format!(
        "# lbmesh: connections through the floating IP outlive its moves.\n\
         table ip {TABLE}\n\
         delete table ip {TABLE}\n\
         table ip {TABLE} {{\n\
         \tchain prerouting {{\n\
         \t\ttype filter hook prerouting priority mangle; policy accept;\n\
         \t\tip daddr {vip} meta l4proto tcp jump vip\n\
         \t}}\n\
         \tchain vip {{\n\
         \t\t# Connections this VM tracks, and new ones: served here.\n\
         \t\tct state established,related return\n\
         \t\ttcp flags & (syn | ack) == syn return\n\
         \t\t# A connection accepted here before it was tracked.\n\
         \t\tsocket wildcard 0 return\n\
         \t\t# Not this VM's. A copy from a peer goes no further.\n\
         \t\tip ttl 1 drop\n\
         {pass_on}\
         \t}}\n\
         }}\n",
        vip = s.vip,
    )
}

/// The nftables script that removes the table, whether or not it exists.
pub fn removal() -> String {
    format!("table ip {TABLE}\ndelete table ip {TABLE}\n")
}

/// One peer as the mesh reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerRow<'a> {
    pub node: &'a str,
    /// Its address on the VIP's network (its gossip address), if IPv4.
    pub addr: Option<Ipv4Addr>,
    pub live: bool,
}

/// Which peers get packets of connections this VM did not see start:
/// every other peer that is live or was live within [`FORGET_MS`].
#[derive(Debug, Clone, Default)]
pub struct Targets {
    /// Node → its address and when it was last seen live (ms).
    seen: BTreeMap<String, (Ipv4Addr, u64)>,
}

impl Targets {
    /// Records what the mesh reports at `now_ms`; returns the peers to pass
    /// packets to, sorted.
    pub fn observe<'a>(
        &mut self,
        me: &str,
        rows: impl IntoIterator<Item = PeerRow<'a>>,
        now_ms: u64,
    ) -> Vec<Ipv4Addr> {
        for r in rows {
            if let (true, Some(addr), false) = (r.live, r.addr, r.node == me) {
                self.seen.insert(r.node.to_owned(), (addr, now_ms));
            }
        }
        self.seen
            .retain(|_, (_, last)| now_ms.saturating_sub(*last) <= FORGET_MS);
        let mut out: Vec<Ipv4Addr> = self.seen.values().map(|(a, _)| *a).collect();
        out.sort();
        out.dedup();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> HandoffSettings {
        HandoffSettings {
            vip: Ipv4Addr::new(198, 18, 0, 100),
            interface: "eth0".into(),
        }
    }

    #[test]
    fn the_rules_pass_foreign_packets_to_every_peer_once() {
        let peers = [Ipv4Addr::new(198, 18, 0, 12), Ipv4Addr::new(198, 18, 0, 13)];
        let r = ruleset(&settings(), &peers);
        assert!(r.starts_with("# lbmesh"));
        assert!(r.contains("table ip lbmesh_handoff\ndelete table ip lbmesh_handoff\n"));
        assert!(r.contains("ip daddr 198.18.0.100 meta l4proto tcp jump vip"));
        // Established and new connections first, then sockets, then copies.
        let order = [
            "ct state established,related return",
            "tcp flags & (syn | ack) == syn return",
            "socket wildcard 0 return",
            "ip ttl 1 drop",
            "ip ttl set 2 dup to 198.18.0.12 device \"eth0\" dup to 198.18.0.13 device \"eth0\" drop",
        ];
        let at: Vec<usize> = order.iter().map(|l| r.find(l).expect(l)).collect();
        assert!(at.windows(2).all(|w| w[0] < w[1]), "{r}");
    }

    #[test]
    fn with_no_peer_foreign_packets_reach_the_stack_and_copies_still_stop() {
        let r = ruleset(&settings(), &[]);
        assert!(!r.contains("dup to"), "{r}");
        assert!(r.contains("ip ttl 1 drop"));
        assert_eq!(
            removal(),
            "table ip lbmesh_handoff\ndelete table ip lbmesh_handoff\n"
        );
    }

    #[test]
    fn peers_are_kept_for_a_minute_after_they_were_last_live() {
        let a = Ipv4Addr::new(198, 18, 0, 11);
        let b = Ipv4Addr::new(198, 18, 0, 12);
        let row = |node, addr, live| PeerRow { node, addr, live };
        let mut t = Targets::default();
        // Myself, a peer never live, and one without an IPv4 address: none.
        assert_eq!(
            t.observe(
                "lb1",
                [
                    row("lb1", Some(a), true),
                    row("lb2", Some(b), false),
                    row("lb3", None, true)
                ],
                0
            ),
            Vec::<Ipv4Addr>::new()
        );
        assert_eq!(
            t.observe("lb1", [row("lb2", Some(b), true)], 1_000),
            vec![b]
        );
        // Restarting: not live for a while, still passed packets.
        assert_eq!(
            t.observe("lb1", [row("lb2", Some(b), false)], 1_000 + FORGET_MS),
            vec![b]
        );
        assert_eq!(
            t.observe("lb1", [row("lb2", Some(b), false)], 1_001 + FORGET_MS),
            Vec::<Ipv4Addr>::new()
        );
        // Two nodes at one address (a node id changed): one target.
        let mut t = Targets::default();
        assert_eq!(
            t.observe("lb1", [row("x", Some(b), true), row("y", Some(b), true)], 5),
            vec![b]
        );
    }
}
