//! Who speaks for whom. A certified peer is trusted for its own key space
//! only, so gossip is judged by who says it (the certificate of the link a
//! message came on) and about whom:
//!
//! - An incarnation is *verified* when this peer has authenticated its node
//!   id at its gossip address itself: a QUIC handshake whose certificate
//!   named that node, from or to that address (remembered across restarts in
//!   the data directory), or it is this peer's own node id at its own
//!   address (an earlier incarnation of itself). Only verified incarnations
//!   are served: merged into the registry, shown as peers, counted for
//!   convergence, catching up and acknowledgements.
//! - Any other incarnation is *unverified*: held (it may become verified
//!   when its node connects), listed in status and counted in a metric, and
//!   at most [`MAX_UNVERIFIED`] of them are let in; gossip about more is
//!   dropped before chitchat sees it.
//! - What a sender says about a node whose link with this peer is open now
//!   must come from that node itself: relayed deltas about it are dropped,
//!   so a peer cannot overwrite a connected peer's state. Relays about a
//!   node that is not connected (dead, restarting, partitioned from here)
//!   are still taken: that is how the state of a dead peer survives it.
//! - Nobody else speaks for this peer's current incarnation.
//! - A peer's VRRP claim counts for split brains only while its link is
//!   open now ([`Identities::connected`]); whether the claim was heard from
//!   the peer itself ([`Identities::vrrp_first_hand`]) is shown in status.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Mutex;

use chitchat::{ChitchatId, ChitchatMessage, Delta, Digest};

use crate::registry::PeerId;

/// At most this many unverified incarnations are held.
pub const MAX_UNVERIFIED: usize = 32;
/// At most this many (node id, address) pairs are remembered as verified;
/// the least recently authenticated are forgotten first.
pub const MAX_VERIFIED: usize = 256;
/// At most this many addresses are remembered per node id, so that one
/// certificate connecting from many ports cannot push others' pairs out.
pub const MAX_ADDRESSES_PER_NODE: usize = 4;
/// The file in the data directory that keeps the verified pairs.
pub const VERIFIED_FILE: &str = "verified-peers";

/// Why a peer's state is not merged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Untrusted {
    InvalidNodeId,
    /// A certificate (QUIC) for this other node was presented at its address.
    OtherCertificate(PeerId),
}

/// How far an incarnation is trusted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Standing {
    /// Served.
    Verified(PeerId),
    /// Held, not served.
    Unverified(PeerId),
    /// Neither.
    Refused(Untrusted),
}

/// What this peer knows of who authenticated where.
#[derive(Debug, Default)]
struct Ledger {
    /// This peer's node id, gossip address and generation.
    own: Option<(PeerId, SocketAddr, u64)>,
    /// The node the latest certificate at each address named.
    by_addr: HashMap<SocketAddr, PeerId>,
    /// Every (node, address) pair authenticated, least recent first.
    verified: Vec<(PeerId, SocketAddr)>,
    /// Open links (by connection id): the node their certificate names, and
    /// the address.
    open: HashMap<usize, (PeerId, SocketAddr)>,
    /// The newest generation each node announced about itself.
    first_hand_generation: HashMap<PeerId, u64>,
    /// The newest VRRP claim (version, value) each incarnation gossiped itself.
    first_hand_vrrp: HashMap<ChitchatId, (u64, Option<String>)>,
    /// Unverified incarnations let in.
    admitted: HashSet<ChitchatId>,
    /// Gossip about unverified incarnations dropped for the bound.
    dropped: u64,
}

impl Ledger {
    fn standing(&self, id: &ChitchatId) -> Standing {
        let Ok(node) = id.node_id.parse::<PeerId>() else {
            return Standing::Refused(Untrusted::InvalidNodeId);
        };
        let addr = id.gossip_advertise_addr;
        if let Some(certified) = self.by_addr.get(&addr) {
            if *certified != node {
                return Standing::Refused(Untrusted::OtherCertificate(certified.clone()));
            }
        }
        let own = self
            .own
            .as_ref()
            .is_some_and(|(n, a, _)| *n == node && *a == addr);
        if own || self.verified.iter().any(|(n, a)| *n == node && *a == addr) {
            Standing::Verified(node)
        } else {
            Standing::Unverified(node)
        }
    }

    fn connected(&self, node: &str) -> bool {
        self.open.values().any(|(n, _)| n.as_str() == node)
    }

    /// Whether gossip about `id` from `from` gets through (and lets it in).
    fn admit(&mut self, from: &PeerId, id: &ChitchatId, in_delta: bool) -> bool {
        let first_hand = *id.node_id == *from.as_str();
        if in_delta && !first_hand {
            // This peer's own current incarnation: only this peer speaks for it.
            if self
                .own
                .as_ref()
                .is_some_and(|(n, _, g)| n.as_str() == &*id.node_id && id.generation_id >= *g)
            {
                return false;
            }
            // A node connected now speaks for its current incarnation itself.
            let newest = id
                .node_id
                .parse::<PeerId>()
                .ok()
                .and_then(|n| self.first_hand_generation.get(&n).copied());
            if self.connected(&id.node_id) && id.generation_id >= newest.unwrap_or(0) {
                return false;
            }
        }
        match self.standing(id) {
            Standing::Verified(_) => true,
            _ if self.admitted.contains(id) => true,
            _ if self.admitted.len() < MAX_UNVERIFIED => {
                self.admitted.insert(id.clone());
                true
            }
            _ => {
                self.dropped += 1;
                false
            }
        }
    }

    fn screen_digest(&mut self, from: &PeerId, digest: &mut Digest) {
        for id in digest.nodes() {
            if *id.node_id == *from.as_str() {
                let g = self.first_hand_generation.entry(from.clone()).or_default();
                *g = (*g).max(id.generation_id);
            }
        }
        digest.retain_nodes(|id| self.admit(from, id, false));
    }

    fn screen_delta(&mut self, from: &PeerId, delta: &mut Delta) {
        let own: Vec<ChitchatId> = delta
            .nodes()
            .filter(|id| *id.node_id == *from.as_str())
            .cloned()
            .collect();
        for id in own {
            if let Some((version, value)) = delta.value_of(&id, super::META_VRRP) {
                let slot = self.first_hand_vrrp.entry(id.clone()).or_insert((0, None));
                if version > slot.0 {
                    *slot = (version, value.map(str::to_owned));
                }
            }
            let g = self.first_hand_generation.entry(from.clone()).or_default();
            *g = (*g).max(id.generation_id);
        }
        delta.retain_nodes(|id| self.admit(from, id, true));
    }
}

/// Who authenticated where, what each peer said about itself, and which
/// unverified incarnations are let in; shared by the QUIC transport (which
/// records and screens) and the mesh tasks (which judge).
#[derive(Debug, Default)]
pub struct Identities {
    ledger: Mutex<Ledger>,
    /// Where the verified pairs are kept (none: in memory only).
    file: Option<PathBuf>,
}

impl Identities {
    /// A ledger that keeps its verified pairs in `data_dir` and starts with
    /// those kept there (a file that does not read is logged and ignored).
    pub fn persistent(data_dir: &std::path::Path) -> Identities {
        let file = data_dir.join(VERIFIED_FILE);
        let mut ledger = Ledger::default();
        match std::fs::read_to_string(&file) {
            Ok(text) => ledger.verified = parse_verified(&text),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(file = %file.display(), error = %e, "cannot read the verified peers; starting without them")
            }
        }
        Identities {
            ledger: Mutex::new(ledger),
            file: Some(file),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Ledger> {
        self.ledger.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// This peer's node id, gossip address and generation: an earlier
    /// incarnation of itself there is verified; nobody else speaks for this one.
    pub fn set_own(&self, node: PeerId, addr: SocketAddr, generation: u64) {
        self.lock().own = Some((node, addr, generation));
    }

    /// A link with `addr` authenticated `node`; `conn` identifies it until
    /// [`Identities::closed`].
    pub fn opened(&self, addr: SocketAddr, node: PeerId, conn: usize) {
        let save = {
            let mut l = self.lock();
            l.by_addr.insert(addr, node.clone());
            l.open.insert(conn, (node.clone(), addr));
            let pair = (node.clone(), addr);
            let known = l.verified.iter().position(|p| *p == pair);
            if let Some(i) = known {
                l.verified.remove(i);
            }
            l.verified.push(pair);
            let of_node = l.verified.iter().filter(|(n, _)| *n == node).count();
            if of_node > MAX_ADDRESSES_PER_NODE {
                if let Some(i) = l.verified.iter().position(|(n, _)| *n == node) {
                    l.verified.remove(i);
                }
            }
            if l.verified.len() > MAX_VERIFIED {
                l.verified.remove(0);
            }
            // Who was at an address is kept as long as the pair is, or a link is open.
            let Ledger {
                by_addr,
                verified,
                open,
                ..
            } = &mut *l;
            by_addr.retain(|a, _| {
                verified.iter().any(|(_, v)| v == a) || open.values().any(|(_, o)| o == a)
            });
            // The incarnations at that address are no longer unverified.
            let verified = l.verified.clone();
            l.admitted.retain(|id| {
                !verified
                    .iter()
                    .any(|(n, a)| n.as_str() == &*id.node_id && *a == id.gossip_advertise_addr)
            });
            known.is_none().then(|| format_verified(&l.verified))
        };
        if let (Some(text), Some(file)) = (save, &self.file) {
            if let Err(e) = crate::store::write_atomic_mode(file, text.as_bytes(), Some(0o600)) {
                tracing::warn!(file = %file.display(), error = %e, "cannot keep the verified peers");
            }
        }
    }

    /// The link `conn` closed.
    pub fn closed(&self, conn: usize) {
        self.lock().open.remove(&conn);
    }

    /// The node id the latest certificate at `addr` named, if a connection
    /// with it was authenticated.
    pub fn node_at(&self, addr: SocketAddr) -> Option<PeerId> {
        self.lock().by_addr.get(&addr).cloned()
    }

    /// How far `id` is trusted.
    pub fn standing(&self, id: &ChitchatId) -> Standing {
        self.lock().standing(id)
    }

    /// Every node id verified at some address, this peer's own included.
    pub fn verified_nodes(&self) -> std::collections::BTreeSet<String> {
        let l = self.lock();
        l.verified
            .iter()
            .map(|(n, _)| n)
            .chain(l.own.as_ref().map(|(n, _, _)| n))
            .map(|n| n.to_string())
            .collect()
    }

    /// Whether a link whose certificate names `node` is open now.
    pub fn connected(&self, node: &str) -> bool {
        self.lock().connected(node)
    }

    /// The VRRP claim `id` last gossiped about itself, as (version, value).
    pub fn vrrp_first_hand(&self, id: &ChitchatId) -> Option<(u64, Option<String>)> {
        self.lock().first_hand_vrrp.get(id).cloned()
    }

    /// Screens a message that came on a link whose certificate names
    /// `from`, before chitchat applies it (see the module's rules).
    pub fn screen(&self, from: &PeerId, msg: &mut ChitchatMessage) {
        let mut l = self.lock();
        match msg {
            ChitchatMessage::Syn { digest, .. } => l.screen_digest(from, digest),
            ChitchatMessage::SynAck { digest, delta } => {
                l.screen_digest(from, digest);
                l.screen_delta(from, delta);
            }
            ChitchatMessage::Ack { delta } => l.screen_delta(from, delta),
            ChitchatMessage::BadCluster => {}
        }
    }

    /// Forgets what is kept about incarnations chitchat no longer holds.
    pub fn retain(&self, held: impl Fn(&ChitchatId) -> bool) {
        let mut l = self.lock();
        l.admitted.retain(&held);
        l.first_hand_vrrp.retain(|id, _| held(id));
    }

    /// How many times gossip about an unverified incarnation was dropped for
    /// the bound.
    pub fn dropped(&self) -> u64 {
        self.lock().dropped
    }
}

/// How far `id` is trusted; without authentication (plain UDP, simulations)
/// every valid node id is verified.
pub fn standing(identities: Option<&Identities>, id: &ChitchatId) -> Standing {
    match identities {
        Some(i) => i.standing(id),
        None => match id.node_id.parse::<PeerId>() {
            Ok(node) => Standing::Verified(node),
            Err(_) => Standing::Refused(Untrusted::InvalidNodeId),
        },
    }
}

/// Whether `node` is connected now (always, without authentication).
pub fn connected(identities: Option<&Identities>, node: &str) -> bool {
    identities.is_none_or(|i| i.connected(node))
}

/// `node address` per line.
fn format_verified(pairs: &[(PeerId, SocketAddr)]) -> String {
    pairs.iter().map(|(n, a)| format!("{n} {a}\n")).collect()
}

/// Reads what [`format_verified`] wrote; lines that do not parse are skipped.
fn parse_verified(text: &str) -> Vec<(PeerId, SocketAddr)> {
    let mut pairs: Vec<(PeerId, SocketAddr)> = text
        .lines()
        .filter_map(|l| {
            let (n, a) = l.split_once(' ')?;
            Some((n.parse().ok()?, a.parse().ok()?))
        })
        .collect();
    if pairs.len() > MAX_VERIFIED {
        pairs.drain(..pairs.len() - MAX_VERIFIED);
    }
    pairs
}

#[cfg(test)]
mod tests {
    use chitchat::{DeletionStatus, DeltaSerializer, VersionedValue};

    use super::*;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([198, 18, 0, 1], port))
    }

    fn peer(n: &str) -> PeerId {
        n.parse().unwrap()
    }

    fn id(n: &str, generation: u64, port: u16) -> ChitchatId {
        ChitchatId::new(n, generation, addr(port))
    }

    /// Key, value, version.
    type Kvs<'a> = &'a [(&'a str, &'a str, u64)];

    fn delta(nodes: &[(&ChitchatId, Kvs<'_>)]) -> Delta {
        let mut d = DeltaSerializer::with_mtu(60_000);
        for (id, kvs) in nodes {
            assert!(d.try_add_node((*id).clone(), 0, 0));
            for (k, v, version) in *kvs {
                assert!(d.try_add_kv(
                    k,
                    VersionedValue {
                        value: (*v).into(),
                        version: *version,
                        status: DeletionStatus::Set,
                    }
                ));
            }
        }
        d.finish()
    }

    fn kept(msg: &ChitchatMessage) -> Vec<ChitchatId> {
        match msg {
            ChitchatMessage::Ack { delta } => delta.nodes().cloned().collect(),
            _ => unreachable!(),
        }
    }

    fn ledger() -> Identities {
        let i = Identities::default();
        i.set_own(peer("lb1"), addr(1), 50);
        i
    }

    #[test]
    fn standing_follows_what_this_peer_authenticated_itself() {
        let i = ledger();
        // Its own node id at its own address (an earlier incarnation).
        assert_eq!(
            i.standing(&id("lb1", 10, 1)),
            Standing::Verified(peer("lb1"))
        );
        // Its own node id elsewhere, and a node never met.
        assert_eq!(
            i.standing(&id("lb1", 10, 9)),
            Standing::Unverified(peer("lb1"))
        );
        assert_eq!(
            i.standing(&id("lb2", 10, 2)),
            Standing::Unverified(peer("lb2"))
        );
        i.opened(addr(2), peer("lb2"), 7);
        assert_eq!(
            i.standing(&id("lb2", 10, 2)),
            Standing::Verified(peer("lb2"))
        );
        // Still verified after its link closed: a dead peer stays served.
        i.closed(7);
        assert!(!i.connected("lb2"));
        assert_eq!(
            i.standing(&id("lb2", 11, 2)),
            Standing::Verified(peer("lb2"))
        );
        // Another node id at an address where lb2's certificate was shown.
        assert_eq!(
            i.standing(&id("lb9", 1, 2)),
            Standing::Refused(Untrusted::OtherCertificate(peer("lb2")))
        );
        assert_eq!(
            standing(Some(&i), &id("bad id!", 1, 3)),
            Standing::Refused(Untrusted::InvalidNodeId)
        );
        // Without authentication, every valid node id is verified and connected.
        assert_eq!(
            standing(None, &id("lb7", 1, 7)),
            Standing::Verified(peer("lb7"))
        );
        assert!(connected(None, "lb7"));
    }

    #[test]
    fn verified_pairs_survive_a_restart_and_are_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let i = Identities::persistent(dir.path());
        for n in 0..(MAX_VERIFIED + 5) {
            i.opened(addr(n as u16 + 100), peer(&format!("lb{n}")), n);
        }
        let again = Identities::persistent(dir.path());
        assert_eq!(
            again.standing(&id("lb4", 1, 104)),
            Standing::Unverified(peer("lb4")),
            "the least recent pairs are forgotten first"
        );
        let last = MAX_VERIFIED + 4;
        assert_eq!(
            again.standing(&id(&format!("lb{last}"), 1, last as u16 + 100)),
            Standing::Verified(peer(&format!("lb{last}")))
        );
        // Nothing survives as connected.
        assert!(!again.connected(&format!("lb{last}")));
        // A damaged file: lines that do not parse are skipped.
        std::fs::write(
            dir.path().join(VERIFIED_FILE),
            "lb2 198.18.0.1:2\ngarbage\n\n",
        )
        .unwrap();
        let damaged = Identities::persistent(dir.path());
        assert_eq!(
            damaged.standing(&id("lb2", 1, 2)),
            Standing::Verified(peer("lb2"))
        );
    }

    #[test]
    fn one_certificate_from_many_ports_keeps_a_few_addresses_only() {
        let i = ledger();
        i.opened(addr(2), peer("lb2"), 1);
        for port in 0..(MAX_VERIFIED as u16 * 2) {
            i.opened(addr(10_000 + port), peer("lb3"), 100 + port as usize);
            i.closed(100 + port as usize);
        }
        assert_eq!(
            i.standing(&id("lb2", 1, 2)),
            Standing::Verified(peer("lb2"))
        );
        assert_eq!(
            i.standing(&id("lb3", 1, 10_000)),
            Standing::Unverified(peer("lb3"))
        );
        let last = 10_000 + MAX_VERIFIED as u16 * 2 - 1;
        assert_eq!(
            i.standing(&id("lb3", 1, last)),
            Standing::Verified(peer("lb3"))
        );
        assert!(i.lock().by_addr.len() <= MAX_VERIFIED + 1);
    }

    #[test]
    fn relays_about_a_connected_peer_or_this_one_are_dropped() {
        let i = ledger();
        i.opened(addr(2), peer("lb2"), 2);
        i.opened(addr(3), peer("lb3"), 3);
        let (lb2, lb3) = (id("lb2", 20, 2), id("lb3", 30, 3));
        let forged_vrrp: Kvs<'_> = &[("meta/vrrp", "MASTER VI 99", 1_000)];
        // lb3 tells about itself, relays about lb2 (connected) and about
        // this peer's current incarnation: only its own state gets through.
        let mut msg = ChitchatMessage::Ack {
            delta: delta(&[
                (&lb3, &[("meta/vrrp", "BACKUP VI 5", 4)]),
                (&lb2, forged_vrrp),
                (&id("lb1", 50, 1), forged_vrrp),
            ]),
        };
        i.screen(&peer("lb3"), &mut msg);
        assert_eq!(kept(&msg), vec![lb3.clone()]);
        assert_eq!(
            i.vrrp_first_hand(&lb3),
            Some((4, Some("BACKUP VI 5".into())))
        );
        assert_eq!(i.vrrp_first_hand(&lb2), None);
        // Once lb2's link closed, relays about it are taken (a dead peer's
        // state lives on in others), and this peer's earlier incarnations too.
        i.closed(2);
        let mut msg = ChitchatMessage::Ack {
            delta: delta(&[(&lb2, forged_vrrp), (&id("lb1", 40, 1), forged_vrrp)]),
        };
        i.screen(&peer("lb3"), &mut msg);
        assert_eq!(kept(&msg), vec![lb2.clone(), id("lb1", 40, 1)]);
        // A relayed value is never first-hand.
        assert_eq!(i.vrrp_first_hand(&lb2), None);
    }

    #[test]
    fn unverified_incarnations_are_bounded() {
        let i = ledger();
        i.opened(addr(2), peer("lb2"), 2);
        let ghosts: Vec<ChitchatId> = (0..MAX_UNVERIFIED + 10)
            .map(|n| id(&format!("ghost{n}"), 1, 1_000 + n as u16))
            .collect();
        let nodes: Vec<(&ChitchatId, Kvs<'_>)> = ghosts.iter().map(|g| (g, &[][..])).collect();
        let mut msg = ChitchatMessage::Ack {
            delta: delta(&nodes),
        };
        i.screen(&peer("lb2"), &mut msg);
        assert_eq!(kept(&msg).len(), MAX_UNVERIFIED);
        assert_eq!(i.dropped(), 10);
        // The ones let in keep getting through; verified ones always do.
        let mut msg = ChitchatMessage::Ack {
            delta: delta(&[
                (&ghosts[0], &[]),
                (&ghosts[MAX_UNVERIFIED], &[]),
                (&id("lb2", 3, 2), &[]),
            ]),
        };
        i.screen(&peer("lb2"), &mut msg);
        assert_eq!(kept(&msg), vec![ghosts[0].clone(), id("lb2", 3, 2)]);
        // Once chitchat forgets them, room is made.
        i.retain(|_| false);
        let mut msg = ChitchatMessage::Ack {
            delta: delta(&[(&ghosts[MAX_UNVERIFIED], &[])]),
        };
        i.screen(&peer("lb2"), &mut msg);
        assert_eq!(kept(&msg).len(), 1);
    }
}
