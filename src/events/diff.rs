//! The events between two snapshots of some state: pure functions, so that
//! each emit point is one line and each rule is table-tested here.

use std::collections::BTreeMap;

use super::EventKind;
use crate::status::PeerStatus;

/// Peers that joined, died, came back or were forgotten between two peer
/// lists (one row per node id), leaving out `me`.
pub fn peers(me: &str, old: &[PeerStatus], new: &[PeerStatus]) -> Vec<EventKind> {
    let old: BTreeMap<&str, &PeerStatus> = old.iter().map(|p| (p.node_id.as_str(), p)).collect();
    let new_by: BTreeMap<&str, &PeerStatus> = new.iter().map(|p| (p.node_id.as_str(), p)).collect();
    let mut out = Vec::new();
    for (id, n) in &new_by {
        if *id == me {
            continue;
        }
        match old.get(id) {
            None if n.live => out.push(EventKind::PeerJoined {
                peer: n.node_id.clone(),
                incarnation: n.generation,
                gossip_addr: n.gossip_addr.clone(),
            }),
            None => {}
            Some(o) => {
                let restarted = n.generation != o.generation;
                if o.live && !n.live {
                    out.push(EventKind::PeerDead {
                        peer: n.node_id.clone(),
                        incarnation: n.generation,
                    });
                } else if n.live && (!o.live || restarted) {
                    out.push(EventKind::PeerBack {
                        peer: n.node_id.clone(),
                        incarnation: n.generation,
                        restarted,
                    });
                }
            }
        }
    }
    for id in old.keys() {
        if *id != me && !new_by.contains_key(id) {
            out.push(EventKind::PeerForgotten {
                peer: (*id).to_owned(),
            });
        }
    }
    out
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
            generation: incarnation,
            gossip_addr: "198.18.0.1:7946".into(),
            api_addr: None,
            registry_digest: None,
            config_digest: None,
            vrrp_state: None,
        }
    }

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| (*x).to_owned()).collect()
    }

    #[test]
    fn peer_transitions() {
        let me = peer("me", true, 1);
        let table: Vec<(Vec<PeerStatus>, Vec<PeerStatus>, Vec<EventKind>)> = vec![
            // Seeing myself is no news.
            (vec![], vec![me.clone()], vec![]),
            (
                vec![me.clone()],
                vec![me.clone(), peer("b", true, 5)],
                vec![EventKind::PeerJoined {
                    peer: "b".into(),
                    incarnation: 5,
                    gossip_addr: "198.18.0.1:7946".into(),
                }],
            ),
            // Learning of a peer that is already dead says nothing.
            (vec![], vec![peer("b", false, 5)], vec![]),
            (
                vec![peer("b", true, 5)],
                vec![peer("b", false, 5)],
                vec![EventKind::PeerDead {
                    peer: "b".into(),
                    incarnation: 5,
                }],
            ),
            (
                vec![peer("b", false, 5)],
                vec![peer("b", true, 5)],
                vec![EventKind::PeerBack {
                    peer: "b".into(),
                    incarnation: 5,
                    restarted: false,
                }],
            ),
            // Restarted faster than it could be seen dead.
            (
                vec![peer("b", true, 5)],
                vec![peer("b", true, 9)],
                vec![EventKind::PeerBack {
                    peer: "b".into(),
                    incarnation: 9,
                    restarted: true,
                }],
            ),
            // A dead restart is not back yet.
            (vec![peer("b", false, 5)], vec![peer("b", false, 9)], vec![]),
            (
                vec![peer("b", false, 5)],
                vec![],
                vec![EventKind::PeerForgotten { peer: "b".into() }],
            ),
            (vec![peer("b", true, 5)], vec![peer("b", true, 5)], vec![]),
        ];
        for (old, new, want) in table {
            assert_eq!(peers("me", &old, &new), want, "{old:?} -> {new:?}");
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
