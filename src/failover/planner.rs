//! The pure core: from what this peer knows at `now`, whether keepalived
//! may run its VRRP instance or must hold it in FAULT. No I/O, no clock.
//!
//! Rules, in order:
//! 1. A drained peer never holds the VIP.
//! 2. A peer with health problems may not take the VIP; a MASTER keeps it
//!    through problems shorter than the grace (times the local-health
//!    multiplier): a brief stall does not move the VIP.
//! 3. Split brain: when this peer and another live peer both claim MASTER of
//!    the same instance for longer than `CONFIRM_MS`, the newest MASTER keeps
//!    the VIP (its gratuitous ARPs are the ones clients followed last; the
//!    node id breaks ties) and the others step down. A peer that stepped
//!    down stays out while the holder still claims MASTER and is live, until
//!    VRRP adverts from the holder reach it again (VRRP works again). When
//!    the holder gives the VIP up, it stays out for the newest live MASTER,
//!    if there is one: it rejoins only when no live peer holds the VIP.
//!    A claim counts only while its peer is authenticated now (a link whose
//!    certificate names it is open, so relays about it are refused).

use std::collections::BTreeMap;
use std::net::IpAddr;

use super::claim::Claim;
use crate::keepalived::VrrpState;

/// How long two MASTERs must both be seen before one steps down: VRRP itself
/// resolves two masters that hear each other within an advert or two.
pub const CONFIRM_MS: u64 = 300;
/// How long a MASTER keeps the VIP through health problems.
pub const HEALTH_GRACE_MS: u64 = 1_000;
/// An advert heard this recently means VRRP reaches this peer.
pub const ADVERT_FRESH_MS: u64 = 1_000;

/// Another peer, as the mesh reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    pub node: String,
    pub live: bool,
    /// Connected now under its own certificate (see `mesh::trust`): only
    /// then does its claim count; while it is connected, nobody else can
    /// overwrite its state.
    pub authenticated: bool,
    /// Its VRRP address (the address its adverts come from), if known.
    pub addr: Option<IpAddr>,
    pub claim: Option<Claim>,
}

#[derive(Debug, Clone)]
pub struct Inputs<'a> {
    pub me: &'a str,
    pub own: Option<&'a Claim>,
    /// Every other peer the mesh knows.
    pub peers: &'a [Peer],
    pub drained: bool,
    /// Health problems now (empty: healthy).
    pub problems: &'a [String],
    /// Local health multiplier (1: healthy; more when this VM is starved):
    /// stretches the grace a MASTER gets.
    pub patience: u64,
    /// When a VRRP advert was last heard from each address (ms).
    pub adverts: &'a BTreeMap<IpAddr, u64>,
}

/// Why this peer may not hold the VIP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Why {
    Drained,
    Unhealthy(String),
    /// Stepped down from a split brain; `holder` keeps the VIP.
    SplitBrain {
        holder: String,
    },
}

impl std::fmt::Display for Why {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Why::Drained => f.write_str("drained"),
            Why::Unhealthy(p) => write!(f, "unhealthy: {p}"),
            Why::SplitBrain { holder } => {
                write!(f, "stepped down from a split brain; {holder} holds the VIP")
            }
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    MayHold,
    Fault(Why),
}

/// What happened at this step that the log and metrics should tell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// This peer steps down from a split brain in favour of `holder`.
    SteppedDown { holder: String, rivals: Vec<String> },
    /// The peer this one stepped down for gave the VIP up, and `holder`,
    /// another live MASTER, holds it now: this peer stays out.
    HolderChanged { from: String, holder: String },
    /// The split brain this peer stepped down from is over.
    Rejoined { why: &'static str },
}

/// The planner's memory between steps.
#[derive(Debug, Clone, Default)]
pub struct Planner {
    unhealthy_since: Option<u64>,
    conflict_since: Option<u64>,
    yielded_to: Option<String>,
}

impl Planner {
    pub fn step(&mut self, i: &Inputs<'_>, now: u64) -> (Verdict, Option<Event>) {
        let mut event = None;
        let master = i.own.is_some_and(|c| c.state == VrrpState::Master);
        // Not knowing (a restarted daemon hears of its state only at the next
        // transition) counts as holding: a restart must not move the VIP.
        let maybe_master = i.own.is_none_or(|c| c.state == VrrpState::Master);

        // Split brain, judged first so that its memory stays current.
        let rivals: Vec<&Peer> = match i.own {
            Some(own) if master => i
                .peers
                .iter()
                .filter(|p| p.live && p.authenticated && p.node != i.me)
                .filter(|p| {
                    p.claim
                        .as_ref()
                        .is_some_and(|c| c.state == VrrpState::Master && c.instance == own.instance)
                })
                .collect(),
            _ => Vec::new(),
        };
        if let (Some(own), false) = (i.own, rivals.is_empty()) {
            let since = *self.conflict_since.get_or_insert(now);
            let newest = rivals
                .iter()
                .map(|p| (p.claim.as_ref().map_or(0, |c| c.since_ms), p.node.as_str()))
                .chain([(own.since_ms, i.me)])
                .max()
                .map(|(_, n)| n.to_owned());
            if let Some(holder) = newest.filter(|n| n != i.me) {
                if now.saturating_sub(since) >= CONFIRM_MS && self.yielded_to.is_none() {
                    event = Some(Event::SteppedDown {
                        holder: holder.clone(),
                        rivals: rivals.iter().map(|p| p.node.clone()).collect(),
                    });
                    self.yielded_to = Some(holder);
                }
            }
        } else {
            self.conflict_since = None;
        }
        if let Some(holder) = self.yielded_to.clone() {
            let instance = i.own.map(|c| c.instance.as_str());
            let holds = |p: &Peer| {
                p.live
                    && p.authenticated
                    && p.node != i.me
                    && p.claim.as_ref().is_some_and(|c| {
                        c.state == VrrpState::Master && instance.is_none_or(|n| n == c.instance)
                    })
            };
            let peer = i.peers.iter().find(|p| p.node == holder);
            let heard = peer
                .and_then(|p| p.addr)
                .and_then(|a| i.adverts.get(&a))
                .is_some_and(|t| now.saturating_sub(*t) <= ADVERT_FRESH_MS);
            // The holder gave the VIP up while VRRP is still cut: another
            // live MASTER (the newest) holds it now, and this peer stays out
            // for it. Rejoining would make this peer the newest MASTER, and
            // the VIP would go round the peers that stepped down.
            let next = (!heard && !peer.is_some_and(holds))
                .then(|| {
                    i.peers
                        .iter()
                        .filter(|p| holds(p))
                        .max_by_key(|p| (p.claim.as_ref().map_or(0, |c| c.since_ms), &p.node))
                })
                .flatten();
            if let Some(next) = next {
                self.yielded_to = Some(next.node.clone());
                event = Some(Event::HolderChanged {
                    from: holder,
                    holder: next.node.clone(),
                });
            } else if heard || !peer.is_some_and(holds) {
                self.yielded_to = None;
                self.conflict_since = None;
                event = Some(Event::Rejoined {
                    why: if heard {
                        "the holder's VRRP adverts reach this peer again"
                    } else {
                        "no live peer holds the VIP"
                    },
                });
            }
        }

        if i.problems.is_empty() {
            self.unhealthy_since = None;
        }
        let verdict = if i.drained {
            Verdict::Fault(Why::Drained)
        } else if !i.problems.is_empty()
            && (!maybe_master
                || now.saturating_sub(*self.unhealthy_since.get_or_insert(now))
                    >= HEALTH_GRACE_MS * i.patience.max(1))
        {
            self.unhealthy_since.get_or_insert(now);
            Verdict::Fault(Why::Unhealthy(i.problems.join("; ")))
        } else if let Some(holder) = &self.yielded_to {
            Verdict::Fault(Why::SplitBrain {
                holder: holder.clone(),
            })
        } else {
            Verdict::MayHold
        };
        (verdict, event)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claim(state: VrrpState, since_ms: u64) -> Claim {
        Claim {
            state,
            instance: "VI".into(),
            since_ms,
        }
    }

    fn peer(node: &str, live: bool, c: Option<Claim>) -> Peer {
        Peer {
            node: node.into(),
            live,
            authenticated: true,
            addr: Some(format!("198.18.0.{}", node.len() + 10).parse().unwrap()),
            claim: c,
        }
    }

    struct World {
        own: Option<Claim>,
        peers: Vec<Peer>,
        drained: bool,
        problems: Vec<String>,
        patience: u64,
        adverts: BTreeMap<IpAddr, u64>,
    }

    impl World {
        fn new(own: Option<Claim>, peers: Vec<Peer>) -> World {
            World {
                own,
                peers,
                drained: false,
                problems: Vec::new(),
                patience: 1,
                adverts: BTreeMap::new(),
            }
        }
        fn step(&self, p: &mut Planner, now: u64) -> (Verdict, Option<Event>) {
            p.step(
                &Inputs {
                    me: "a",
                    own: self.own.as_ref(),
                    peers: &self.peers,
                    drained: self.drained,
                    problems: &self.problems,
                    patience: self.patience,
                    adverts: &self.adverts,
                },
                now,
            )
        }
    }

    #[test]
    fn a_restarted_daemon_that_does_not_know_its_state_gets_the_grace() {
        let mut w = World::new(None, vec![]);
        w.problems = vec!["HAProxy has not been configured yet".into()];
        let mut p = Planner::default();
        assert_eq!(w.step(&mut p, 0).0, Verdict::MayHold);
        assert!(matches!(
            w.step(&mut p, HEALTH_GRACE_MS).0,
            Verdict::Fault(Why::Unhealthy(_))
        ));
    }

    #[test]
    fn a_lone_healthy_peer_may_hold_and_a_drained_one_may_not() {
        let mut w = World::new(Some(claim(VrrpState::Backup, 1)), vec![]);
        let mut p = Planner::default();
        assert_eq!(w.step(&mut p, 10).0, Verdict::MayHold);
        w.drained = true;
        assert_eq!(w.step(&mut p, 20).0, Verdict::Fault(Why::Drained));
    }

    #[test]
    fn health_problems_stop_a_backup_at_once_and_a_master_after_the_grace() {
        let mut w = World::new(Some(claim(VrrpState::Backup, 1)), vec![]);
        w.problems = vec!["HAProxy does not answer".into()];
        let mut p = Planner::default();
        assert!(matches!(
            w.step(&mut p, 0).0,
            Verdict::Fault(Why::Unhealthy(_))
        ));

        let mut p = Planner::default();
        w.own = Some(claim(VrrpState::Master, 1));
        assert_eq!(w.step(&mut p, 0).0, Verdict::MayHold);
        assert_eq!(w.step(&mut p, HEALTH_GRACE_MS - 1).0, Verdict::MayHold);
        assert!(matches!(
            w.step(&mut p, HEALTH_GRACE_MS).0,
            Verdict::Fault(Why::Unhealthy(_))
        ));
        // A starved master gets a longer grace; a brief problem is forgotten.
        let mut p = Planner::default();
        w.patience = 4;
        assert_eq!(w.step(&mut p, 0).0, Verdict::MayHold);
        assert_eq!(w.step(&mut p, 3 * HEALTH_GRACE_MS).0, Verdict::MayHold);
        w.problems.clear();
        assert_eq!(w.step(&mut p, 3 * HEALTH_GRACE_MS + 1).0, Verdict::MayHold);
        w.problems = vec!["x".into()];
        assert_eq!(w.step(&mut p, 4 * HEALTH_GRACE_MS).0, Verdict::MayHold);
    }

    #[test]
    fn the_older_of_two_masters_steps_down_after_the_confirmation_delay() {
        // "a" became MASTER at 100, "bb" at 500: "bb" is newer and keeps the VIP.
        let mut w = World::new(
            Some(claim(VrrpState::Master, 100)),
            vec![peer("bb", true, Some(claim(VrrpState::Master, 500)))],
        );
        let mut p = Planner::default();
        assert_eq!(w.step(&mut p, 1_000), (Verdict::MayHold, None));
        assert_eq!(w.step(&mut p, 1_000 + CONFIRM_MS - 1).0, Verdict::MayHold);
        let (v, e) = w.step(&mut p, 1_000 + CONFIRM_MS);
        assert_eq!(
            v,
            Verdict::Fault(Why::SplitBrain {
                holder: "bb".into()
            })
        );
        assert!(matches!(e, Some(Event::SteppedDown { .. })));
        // keepalived reports FAULT; still out while "bb" holds and no advert arrives.
        w.own = Some(claim(VrrpState::Fault, 1_400));
        assert!(matches!(w.step(&mut p, 5_000).0, Verdict::Fault(_)));
        // VRRP works again: adverts from "bb" are heard.
        w.adverts.insert(w.peers[0].addr.unwrap(), 5_900);
        let (v, e) = w.step(&mut p, 6_000);
        assert_eq!(v, Verdict::MayHold);
        assert!(matches!(e, Some(Event::Rejoined { .. })));
    }

    #[test]
    fn the_newer_master_keeps_the_vip_and_a_dead_or_stale_rival_changes_nothing() {
        let w = World::new(
            Some(claim(VrrpState::Master, 900)),
            vec![
                peer("bb", true, Some(claim(VrrpState::Master, 500))),
                peer("ccc", false, Some(claim(VrrpState::Master, 990))),
            ],
        );
        let mut p = Planner::default();
        for t in [1_000, 2_000, 3_000] {
            assert_eq!(w.step(&mut p, t), (Verdict::MayHold, None));
        }
    }

    #[test]
    fn a_peer_that_stepped_down_rejoins_when_the_holder_gives_up_the_vip() {
        let mut w = World::new(
            Some(claim(VrrpState::Master, 100)),
            vec![peer("bb", true, Some(claim(VrrpState::Master, 500)))],
        );
        let mut p = Planner::default();
        w.step(&mut p, 1_000);
        assert!(matches!(w.step(&mut p, 2_000).0, Verdict::Fault(_)));
        w.own = Some(claim(VrrpState::Fault, 2_000));
        w.peers[0].live = false;
        assert_eq!(w.step(&mut p, 3_000).0, Verdict::MayHold);
    }

    #[test]
    fn a_peer_that_stepped_down_stays_out_for_the_next_holder_while_vrrp_is_cut() {
        // Three MASTERs with VRRP cut: "a" steps down for "bb" (newest it
        // sees), then "bb" steps down for "ccc": "a" stays out for "ccc"
        // instead of rejoining as the newest MASTER.
        let mut w = World::new(
            Some(claim(VrrpState::Master, 100)),
            vec![
                peer("bb", true, Some(claim(VrrpState::Master, 500))),
                peer("ccc", true, Some(claim(VrrpState::Backup, 50))),
            ],
        );
        let mut p = Planner::default();
        w.step(&mut p, 1_000);
        assert!(matches!(
            w.step(&mut p, 1_000 + CONFIRM_MS).1,
            Some(Event::SteppedDown { .. })
        ));
        w.own = Some(claim(VrrpState::Fault, 1_400));
        w.peers[1].claim = Some(claim(VrrpState::Master, 600));
        w.peers[0].claim = Some(claim(VrrpState::Fault, 1_500));
        let (v, e) = w.step(&mut p, 2_000);
        assert_eq!(
            v,
            Verdict::Fault(Why::SplitBrain {
                holder: "ccc".into()
            })
        );
        assert_eq!(
            e,
            Some(Event::HolderChanged {
                from: "bb".into(),
                holder: "ccc".into()
            })
        );
        assert_eq!(w.step(&mut p, 3_000), (v, None));
        // Nobody holds it any more: back as a candidate.
        w.peers[1].live = false;
        let (v, e) = w.step(&mut p, 4_000);
        assert_eq!(v, Verdict::MayHold);
        assert!(matches!(e, Some(Event::Rejoined { .. })));
    }

    #[test]
    fn only_a_claim_of_a_peer_connected_now_counts() {
        // A newer MASTER claim that is not corroborated: no step-down.
        let mut w = World::new(
            Some(claim(VrrpState::Master, 100)),
            vec![peer("bb", true, Some(claim(VrrpState::Master, 500)))],
        );
        w.peers[0].authenticated = false;
        let mut p = Planner::default();
        for t in [1_000, 2_000, 10_000] {
            assert_eq!(w.step(&mut p, t), (Verdict::MayHold, None));
        }
        // Corroborated: this peer steps down …
        w.peers[0].authenticated = true;
        w.step(&mut p, 11_000);
        let (v, e) = w.step(&mut p, 11_000 + CONFIRM_MS);
        assert!(matches!(v, Verdict::Fault(Why::SplitBrain { .. })));
        assert!(matches!(e, Some(Event::SteppedDown { .. })));
        w.own = Some(claim(VrrpState::Fault, 11_400));
        assert!(matches!(w.step(&mut p, 12_000).0, Verdict::Fault(_)));
        // … and comes back once the claim is no longer corroborated (its
        // link closed, or the claim was only relayed), even without adverts.
        w.peers[0].authenticated = false;
        let (v, e) = w.step(&mut p, 12_050);
        assert_eq!(v, Verdict::MayHold);
        assert!(matches!(e, Some(Event::Rejoined { .. })));
    }

    #[test]
    fn equal_since_breaks_ties_by_node_id_the_same_way_on_both_sides() {
        // Both at since 500: the larger node id ("bb" > "a") keeps the VIP.
        let w = World::new(
            Some(claim(VrrpState::Master, 500)),
            vec![peer("bb", true, Some(claim(VrrpState::Master, 500)))],
        );
        let mut p = Planner::default();
        w.step(&mut p, 0);
        assert!(matches!(w.step(&mut p, CONFIRM_MS).0, Verdict::Fault(_)));
    }
}
