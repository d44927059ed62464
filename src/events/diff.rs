//! The events between two snapshots of some state: pure functions, so that
//! each emit point is one line and each rule is table-tested here.

use std::collections::BTreeMap;

use super::{EventKind, Events};
use crate::status::PeerStatus;

/// What the mesh looked like at the last look: turns each new peer list
/// into events. Owned by the task that computes the peer list.
#[derive(Debug, Default)]
pub struct MeshWatch {
    last: Vec<PeerStatus>,
    /// Peers seen live, with the incarnation they were last seen live in.
    seen_live: BTreeMap<String, u64>,
}

impl MeshWatch {
    /// Emits what changed since the last call: peers joining, dying, coming
    /// back or forgotten, and the floating IP moving.
    pub fn update(&mut self, events: &Events, me: &str, new: &[PeerStatus]) {
        let masters = crate::mesh::snapshot::vip_holders;
        let vip = vip(&masters(&self.last), &masters(new));
        for e in self.peers(me, new).into_iter().chain(vip) {
            events.emit(e);
        }
        self.last = new.to_vec();
    }

    /// The peer events between the last list and `new` (one row per node
    /// id), leaving out `me`.
    pub fn peers(&mut self, me: &str, new: &[PeerStatus]) -> Vec<EventKind> {
        let old: BTreeMap<&str, &PeerStatus> =
            self.last.iter().map(|p| (p.node_id.as_str(), p)).collect();
        let mut out = Vec::new();
        for n in new.iter().filter(|n| n.node_id != me) {
            let was_live = old.get(n.node_id.as_str()).is_some_and(|o| o.live);
            let seen = self.seen_live.get(&n.node_id).copied();
            if n.live {
                self.seen_live.insert(n.node_id.clone(), n.incarnation);
            }
            match (was_live, n.live, seen) {
                (false, true, None) => out.push(EventKind::PeerJoined {
                    peer: n.node_id.clone(),
                    incarnation: n.incarnation,
                    gossip_addr: n.gossip_addr.clone(),
                }),
                (true, false, _) => out.push(EventKind::PeerDead {
                    peer: n.node_id.clone(),
                    incarnation: n.incarnation,
                }),
                (was_live, true, Some(before)) if !was_live || before != n.incarnation => {
                    out.push(EventKind::PeerBack {
                        peer: n.node_id.clone(),
                        incarnation: n.incarnation,
                        restarted: before != n.incarnation,
                    })
                }
                _ => {}
            }
        }
        for id in old.keys() {
            if *id != me && !new.iter().any(|n| n.node_id == *id) {
                self.seen_live.remove(*id);
                out.push(EventKind::PeerForgotten {
                    peer: (*id).to_owned(),
                });
            }
        }
        out
    }
}

/// Who holds the floating IP, before and after: a move, or a split brain
/// beginning or ending. Lists are sorted node ids of live VRRP masters.
pub fn vip(old: &[String], new: &[String]) -> Vec<EventKind> {
    if old == new {
        return Vec::new();
    }
    match (old.len(), new.len()) {
        (0 | 1, 0 | 1) => vec![EventKind::VipMoved {
            from: old.first().cloned(),
            to: new.first().cloned(),
        }],
        (_, 2..) => vec![EventKind::SplitBrain {
            masters: new.to_vec(),
        }],
        (2.., _) => vec![EventKind::SplitBrainOver {
            masters: new.to_vec(),
        }],
    }
}

/// Frontends quarantined or released between two quarantine maps (port → reason).
pub fn quarantine(old: &BTreeMap<u16, String>, new: &BTreeMap<u16, String>) -> Vec<EventKind> {
    let mut out: Vec<EventKind> = new
        .iter()
        .filter(|(port, _)| !old.contains_key(port))
        .map(|(port, reason)| EventKind::Quarantined {
            frontend: *port,
            reason: reason.clone(),
        })
        .collect();
    out.extend(
        old.keys()
            .filter(|port| !new.contains_key(port))
            .map(|port| EventKind::QuarantineLifted { frontend: *port }),
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(id: &str, live: bool, incarnation: u64) -> PeerStatus {
        PeerStatus {
            node_id: id.into(),
            live,
            incarnation,
            gossip_addr: "198.18.0.1:7946".into(),
            api_addr: None,
            registry_digest: None,
            config_digest: None,
            vrrp_state: None,
            policy_digest: None,
            duplicate: false,
            authenticated: true,
            vrrp_first_hand: true,
        }
    }

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| (*x).to_owned()).collect()
    }

    #[test]
    fn peer_transitions() {
        let joined = |id: &str, inc| EventKind::PeerJoined {
            peer: id.into(),
            incarnation: inc,
            gossip_addr: "198.18.0.1:7946".into(),
        };
        let dead = |id: &str, inc| EventKind::PeerDead {
            peer: id.into(),
            incarnation: inc,
        };
        let back = |id: &str, inc, restarted| EventKind::PeerBack {
            peer: id.into(),
            incarnation: inc,
            restarted,
        };
        let me = peer("me", true, 1);
        // Each step: the new peer list, and the events it makes.
        let steps: Vec<(Vec<PeerStatus>, Vec<EventKind>)> = vec![
            // Seeing myself is no news; a seed known before it answers is no news.
            (vec![me.clone(), peer("b", false, 5)], vec![]),
            // Its first time live: joined, not back.
            (vec![me.clone(), peer("b", true, 5)], vec![joined("b", 5)]),
            (vec![me.clone(), peer("b", true, 5)], vec![]),
            (vec![me.clone(), peer("b", false, 5)], vec![dead("b", 5)]),
            (
                vec![me.clone(), peer("b", true, 5)],
                vec![back("b", 5, false)],
            ),
            // Restarted faster than it could be seen dead.
            (
                vec![me.clone(), peer("b", true, 9)],
                vec![back("b", 9, true)],
            ),
            (vec![me.clone(), peer("b", false, 9)], vec![dead("b", 9)]),
            // A new incarnation known before it is live: back once live.
            (vec![me.clone(), peer("b", false, 12)], vec![]),
            (
                vec![me.clone(), peer("b", true, 12)],
                vec![back("b", 12, true)],
            ),
            (vec![me.clone(), peer("b", false, 12)], vec![dead("b", 12)]),
            (
                vec![me.clone()],
                vec![EventKind::PeerForgotten { peer: "b".into() }],
            ),
            // Forgotten, then live again: a new member.
            (vec![me.clone(), peer("b", true, 20)], vec![joined("b", 20)]),
        ];
        let mut w = MeshWatch::default();
        for (i, (new, want)) in steps.into_iter().enumerate() {
            assert_eq!(w.peers("me", &new), want, "step {i}");
            w.last = new;
        }
    }

    #[test]
    fn vip_transitions() {
        let moved = |from: Option<&str>, to: Option<&str>| EventKind::VipMoved {
            from: from.map(Into::into),
            to: to.map(Into::into),
        };
        let table = [
            (s(&[]), s(&[]), vec![]),
            (s(&["a"]), s(&["a"]), vec![]),
            (s(&[]), s(&["a"]), vec![moved(None, Some("a"))]),
            (s(&["a"]), s(&["b"]), vec![moved(Some("a"), Some("b"))]),
            (s(&["a"]), s(&[]), vec![moved(Some("a"), None)]),
            (
                s(&["a"]),
                s(&["a", "b"]),
                vec![EventKind::SplitBrain {
                    masters: s(&["a", "b"]),
                }],
            ),
            (
                s(&["a", "b"]),
                s(&["a", "b", "c"]),
                vec![EventKind::SplitBrain {
                    masters: s(&["a", "b", "c"]),
                }],
            ),
            (
                s(&["a", "b"]),
                s(&["b"]),
                vec![EventKind::SplitBrainOver { masters: s(&["b"]) }],
            ),
        ];
        for (old, new, want) in table {
            assert_eq!(vip(&old, &new), want, "{old:?} -> {new:?}");
        }
    }

    #[test]
    fn quarantine_transitions() {
        let m = |v: &[(u16, &str)]| -> BTreeMap<u16, String> {
            v.iter().map(|(p, r)| (*p, (*r).to_owned())).collect()
        };
        assert_eq!(
            quarantine(&m(&[(25, "in use")]), &m(&[(8443, "denied")])),
            vec![
                EventKind::Quarantined {
                    frontend: 8443,
                    reason: "denied".into()
                },
                EventKind::QuarantineLifted { frontend: 25 },
            ]
        );
        // A new reason for a port still quarantined is no news.
        assert!(quarantine(&m(&[(25, "a")]), &m(&[(25, "b")])).is_empty());
    }
}
