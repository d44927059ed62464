//! What the mesh task works out about the mesh, once, for everyone who reads
//! it (status, the health check, the status page, metrics): a pure function
//! of what this peer observes, the previous snapshot and `now`.
//!
//! Catching up: a peer that has just started may hold nothing (a wiped
//! disk) or an old state, and must not take the floating IP until it holds
//! what the mesh holds. Each peer publishes, under [`META_SYNC`], whether it
//! has caught up and how far it holds every other incarnation's entries (the
//! newest chitchat version among their entry keys). chitchat sends a node's
//! keys in version order, so holding version `v` of an incarnation means
//! holding all its keys up to `v`. A starting peer has caught up once it
//! holds everything a caught-up peer listed after it had heard of this
//! incarnation.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::codec::DecodeError;
use crate::registry::PeerId;
use crate::status::PeerStatus;

/// The gossip key under which a peer publishes its [`SyncState`].
pub const META_SYNC: &str = "meta/sync";

/// At most this many incarnations in a published [`SyncState`] (about 40 KB),
/// well under chitchat's limit for one value.
pub const MAX_SYNC_ENTRIES: usize = 1500;

/// One incarnation of a peer: its node id and generation.
pub type Incarnation = (String, u64);

/// How a peer came to be caught up with the mesh.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "by", rename_all = "kebab-case")]
pub enum CaughtUp {
    /// It has no seed but itself: a single peer is never held back.
    NoSeeds,
    /// It holds everything this caught-up peer held once it knew of it.
    Peer { peer: String },
    /// Every live peer started recently and none had caught up: it holds
    /// what each of them held, which is all the mesh kept.
    WholeMesh { peers: Vec<String> },
    /// No peer was live for the whole wait after start: it serves what it holds.
    Alone,
}

/// The mesh as this peer sees it, apart from the peer rows.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MeshState {
    /// Live peers that report VRRP MASTER (for the instance with the most), sorted.
    pub vip_holders: Vec<String>,
    /// Every live peer, this one included with its current digests, reports
    /// the same registry and config digests.
    pub converged: bool,
    /// Since when (Unix ms) it has been converged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub converged_since_ms: Option<u64>,
    /// The HAProxy config digest that more than half the live peers run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub majority_config_digest: Option<String>,
    /// Since when (Unix ms) this peer's config has differed from the majority's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lagging_since_ms: Option<u64>,
    /// Whether this peer has caught up with the mesh since it started.
    pub caught_up: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub caught_up_at_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub caught_up_by: Option<CaughtUp>,
    /// While not caught up: what it waits for, in words.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub catching_up: Option<String>,
    /// Peer incarnations held but not served (`node address generation`):
    /// this peer never authenticated their node id at their address.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unverified_peers: Vec<String>,
    /// When this peer started (Unix ms).
    pub started_ms: u64,
    /// When this snapshot was computed (Unix ms).
    pub computed_at_ms: u64,
}

impl MeshState {
    /// How long this peer's config has differed from the majority's at `now_ms`.
    pub fn lag(&self, now_ms: u64) -> Option<Duration> {
        self.lagging_since_ms
            .map(|since| Duration::from_millis(now_ms.saturating_sub(since)))
    }

    pub fn split_brain(&self) -> bool {
        self.vip_holders.len() > 1
    }
}

/// One snapshot of the mesh, published by the mesh task.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MeshSnapshot {
    /// One row per node id (its newest incarnation), this peer included
    /// with its current digests, sorted by node id.
    pub peers: Vec<PeerStatus>,
    pub state: MeshState,
    /// The registry change count this peer's row was computed at.
    pub registry_generation: u64,
}

impl MeshSnapshot {
    /// The row of `node_id`.
    pub fn row(&self, node_id: &str) -> Option<&PeerStatus> {
        self.peers.iter().find(|p| p.node_id == node_id)
    }
}

/// What a peer publishes about how far it holds the mesh's state.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SyncState {
    pub caught_up: bool,
    /// Every other incarnation it holds state of → the newest version among
    /// that incarnation's entry keys it holds (0: none).
    pub holds: BTreeMap<Incarnation, u64>,
}

impl SyncState {
    /// `v1 <0|1> <node>:<generation hex>:<version hex> …`; at most
    /// [`MAX_SYNC_ENTRIES`] incarnations, the newest generations kept.
    pub fn encode(&self) -> String {
        let mut out = format!("v1 {}", u8::from(self.caught_up));
        let mut entries: Vec<(&Incarnation, &u64)> = self.holds.iter().collect();
        if entries.len() > MAX_SYNC_ENTRIES {
            entries.sort_by_key(|e| std::cmp::Reverse(e.0.1));
            entries.truncate(MAX_SYNC_ENTRIES);
            entries.sort();
        }
        for ((node, generation), version) in entries {
            out.push_str(&format!(" {node}:{generation:x}:{version:x}"));
        }
        out
    }

    /// Parses what a peer published; every byte is untrusted.
    pub fn decode(v: &str) -> Result<SyncState, DecodeError> {
        let bad = |why: &str| DecodeError {
            what: "sync state",
            why: why.into(),
        };
        if v.len() > MAX_SYNC_ENTRIES * 100 {
            return Err(bad("too long"));
        }
        let mut words = v.split(' ');
        if words.next() != Some("v1") {
            return Err(bad("unknown format"));
        }
        let caught_up = match words.next() {
            Some("1") => true,
            Some("0") => false,
            _ => return Err(bad("bad caught-up flag")),
        };
        let hex = |s: Option<&str>| {
            s.filter(|s| !s.is_empty() && s.len() <= 16)
                .and_then(|s| u64::from_str_radix(s, 16).ok())
                .ok_or_else(|| bad("bad number"))
        };
        let mut holds = BTreeMap::new();
        for word in words {
            if holds.len() >= MAX_SYNC_ENTRIES {
                return Err(bad("too many incarnations"));
            }
            let mut parts = word.split(':');
            let node = parts.next().unwrap_or("");
            node.parse::<PeerId>().map_err(|_| bad("bad node id"))?;
            let generation = hex(parts.next())?;
            let version = hex(parts.next())?;
            if parts.next().is_some() {
                return Err(bad("trailing fields"));
            }
            holds.insert((node.to_owned(), generation), version);
        }
        Ok(SyncState { caught_up, holds })
    }

    /// Whether `mine` holds everything this state lists of the node ids
    /// this peer would serve (`serves`; None: all), and the list was made
    /// after its publisher had heard of incarnation `me`. A node id this
    /// peer never verified is not served here, so it is not waited for
    /// (invented node ids cannot hold a peer back).
    pub fn held_by(
        &self,
        mine: &BTreeMap<Incarnation, u64>,
        me: &Incarnation,
        serves: Option<&BTreeSet<String>>,
    ) -> bool {
        self.holds.contains_key(me)
            && self.holds.iter().all(|(inc, v)| {
                inc == me
                    || *v == 0
                    || serves.is_some_and(|s| !s.contains(&inc.0))
                    || mine.get(inc).is_some_and(|m| m >= v)
            })
    }
}

/// Another peer as this one sees it: its row and what it published.
#[derive(Debug, Clone)]
pub struct Observed {
    pub status: PeerStatus,
    /// None: it published nothing readable (yet).
    pub sync: Option<SyncState>,
}

/// Everything the mesh task observed at one instant.
#[derive(Debug, Clone)]
pub struct Observation {
    pub now_ms: u64,
    /// This peer's own row, with its current digests.
    pub me: PeerStatus,
    /// Every other node id (newest incarnation), trusted peers only.
    pub others: Vec<Observed>,
    /// What this peer holds of every other incarnation (see [`SyncState::holds`]).
    pub holds: BTreeMap<Incarnation, u64>,
    /// The node ids this peer verified (see [`super::trust`]); None: every
    /// node id (no peer authentication).
    pub verified: Option<BTreeSet<String>>,
    pub registry_generation: u64,
}

/// When a starting peer counts as caught up.
#[derive(Debug, Clone)]
pub struct CatchUpRule {
    pub started_ms: u64,
    /// The seeds that are not this peer, as written (an address is compared
    /// with the gossip addresses of live peers).
    pub other_seeds: Vec<String>,
    /// How long after start a peer that has met no caught-up peer decides
    /// that the whole mesh restarted (or that it is alone), unless every
    /// seed is live sooner.
    pub wait_alone: Duration,
}

impl CatchUpRule {
    /// The wait for a mesh that gossips every `gossip_interval`: long enough
    /// to meet every reachable peer many times over.
    pub fn wait_for_gossip_interval(gossip_interval: Duration) -> Duration {
        (gossip_interval * 50).max(Duration::from_secs(10))
    }
}

/// Live peers that report VRRP MASTER, for the instance with the most of them.
pub fn vip_holders(peers: &[PeerStatus]) -> Vec<String> {
    let mut by_instance: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for p in peers.iter().filter(|p| p.live) {
        if let Some(v) = &p.vrrp_state {
            let mut words = v.split(' ');
            if words.next() == Some("MASTER") {
                by_instance
                    .entry(words.next().unwrap_or(""))
                    .or_default()
                    .push(p.node_id.clone());
            }
        }
    }
    let mut holders = by_instance
        .into_values()
        .max_by_key(Vec::len)
        .unwrap_or_default();
    holders.sort();
    holders
}

/// The config digest more than half the live peers run.
fn majority_config(peers: &[PeerStatus]) -> Option<String> {
    let live: Vec<&str> = peers
        .iter()
        .filter(|p| p.live)
        .filter_map(|p| p.config_digest.as_deref())
        .collect();
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for d in &live {
        *counts.entry(d).or_default() += 1;
    }
    counts
        .into_iter()
        .find(|(_, n)| n * 2 > live.len())
        .map(|(d, _)| d.to_owned())
}

/// Whether this peer has caught up, and how; or what it still waits for.
fn catch_up(prev: &MeshState, seen: &Observation, rule: &CatchUpRule) -> Result<CaughtUp, String> {
    if let Some(how) = &prev.caught_up_by {
        return Ok(how.clone());
    }
    if rule.other_seeds.is_empty() {
        return Ok(CaughtUp::NoSeeds);
    }
    let me: Incarnation = (seen.me.node_id.clone(), seen.me.incarnation);
    let live: Vec<&Observed> = seen.others.iter().filter(|o| o.status.live).collect();
    let held = |o: &Observed| {
        o.sync
            .as_ref()
            .is_some_and(|s| s.held_by(&seen.holds, &me, seen.verified.as_ref()))
    };
    // A list that names this incarnation was made after this peer started:
    // its maker was alive then, whether or not it looks live yet.
    if let Some(o) = seen
        .others
        .iter()
        .find(|o| o.sync.as_ref().is_some_and(|s| s.caught_up) && held(o))
    {
        return Ok(CaughtUp::Peer {
            peer: o.status.node_id.clone(),
        });
    }
    let waited = Duration::from_millis(seen.now_ms.saturating_sub(rule.started_ms));
    let done_waiting = waited >= rule.wait_alone;
    let names = |v: &[&Observed]| {
        v.iter()
            .map(|o| o.status.node_id.clone())
            .collect::<Vec<_>>()
    };
    if live.is_empty() {
        return if done_waiting {
            Ok(CaughtUp::Alone)
        } else {
            Err(format!(
                "no other peer is live yet ({} s of {} s after start)",
                waited.as_secs(),
                rule.wait_alone.as_secs()
            ))
        };
    }
    let caught_up_live: Vec<&Observed> = live
        .iter()
        .copied()
        .filter(|o| o.sync.as_ref().is_some_and(|s| s.caught_up))
        .collect();
    // A whole-mesh restart: every seed is back (or the wait is over, a peer
    // may be gone for good) and none has caught up, so what they all kept is
    // all there is.
    let seeds_live = rule
        .other_seeds
        .iter()
        .all(|seed| live.iter().any(|o| o.status.gossip_addr == *seed));
    let held_all = live.iter().all(|o| held(o));
    if caught_up_live.is_empty() && (done_waiting || seeds_live) && held_all {
        return Ok(CaughtUp::WholeMesh {
            peers: names(&live),
        });
    }
    Err(if caught_up_live.is_empty() {
        format!(
            "no live peer has caught up yet ({}): waiting for {} ({} s of {} s after start)",
            names(&live).join(", "),
            if seeds_live {
                "their state"
            } else {
                "every seed or the end of the wait"
            },
            waited.as_secs(),
            rule.wait_alone.as_secs()
        )
    } else {
        format!(
            "not yet holding the state of a caught-up peer ({})",
            names(&caught_up_live).join(", ")
        )
    })
}

/// The next snapshot, from the previous one and what was just observed.
pub fn next(prev: &MeshSnapshot, seen: &Observation, rule: &CatchUpRule) -> MeshSnapshot {
    let now = seen.now_ms;
    let mut peers: Vec<PeerStatus> = seen.others.iter().map(|o| o.status.clone()).collect();
    peers.push(seen.me.clone());
    peers.sort_by(|a, b| a.node_id.cmp(&b.node_id));
    let converged = crate::status::converged(&peers);
    let majority_config_digest = majority_config(&peers);
    let p = &prev.state;
    // A lag ends when this peer serves what the majority serves; a moment
    // without a majority (a peer flapping) neither starts nor ends one.
    let lagging_since_ms = match (&majority_config_digest, &seen.me.config_digest) {
        (Some(m), Some(mine)) if m != mine => Some(p.lagging_since_ms.unwrap_or(now)),
        (None, Some(_)) => p.lagging_since_ms,
        _ => None,
    };
    let (caught_up_by, catching_up) = match catch_up(p, seen, rule) {
        Ok(how) => (Some(how), None),
        Err(why) => (None, Some(why)),
    };
    let state = MeshState {
        vip_holders: vip_holders(&peers),
        converged,
        converged_since_ms: converged.then(|| p.converged_since_ms.unwrap_or(now)),
        majority_config_digest,
        lagging_since_ms,
        caught_up: caught_up_by.is_some(),
        caught_up_at_ms: caught_up_by
            .as_ref()
            .map(|_| p.caught_up_at_ms.unwrap_or(now)),
        caught_up_by,
        catching_up,
        // Filled in by the mesh task, which judges who is verified.
        unverified_peers: Vec::new(),
        started_ms: rule.started_ms,
        computed_at_ms: now,
    };
    MeshSnapshot {
        peers,
        state,
        registry_generation: seen.registry_generation,
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn row(id: &str, live: bool, incarnation: u64, digests: (&str, &str)) -> PeerStatus {
        PeerStatus {
            node_id: id.into(),
            live,
            incarnation,
            gossip_addr: "198.18.0.1:7946".into(),
            api_addr: None,
            registry_digest: Some(digests.0.into()),
            config_digest: Some(digests.1.into()),
            vrrp_state: None,
            policy_digest: None,
            duplicate: false,
            authenticated: true,
            vrrp_first_hand: true,
        }
    }

    fn inc(id: &str, generation: u64) -> Incarnation {
        (id.to_owned(), generation)
    }

    fn sync(caught_up: bool, holds: &[(&str, u64, u64)]) -> Option<SyncState> {
        Some(SyncState {
            caught_up,
            holds: holds.iter().map(|(n, g, v)| (inc(n, *g), *v)).collect(),
        })
    }

    const START: u64 = 1_000_000;

    /// lb1 and lb3 are the seeds besides this peer.
    fn rule() -> CatchUpRule {
        CatchUpRule {
            started_ms: START,
            other_seeds: vec!["198.18.0.11:7946".into(), "198.18.0.13:7946".into()],
            wait_alone: Duration::from_secs(10),
        }
    }

    fn seen(now_ms: u64, others: Vec<Observed>, holds: &[(&str, u64, u64)]) -> Observation {
        Observation {
            now_ms,
            me: row("lb2", true, 7, ("r1", "c1")),
            others,
            holds: holds.iter().map(|(n, g, v)| (inc(n, *g), *v)).collect(),
            verified: None,
            registry_generation: 1,
        }
    }

    #[test]
    fn a_node_id_never_verified_here_is_not_waited_for() {
        let me = inc("lb2", 7);
        let listed = SyncState {
            caught_up: true,
            holds: [(me.clone(), 0), (inc("lb1", 3), 5), (inc("ghost", 1), 9)]
                .into_iter()
                .collect(),
        };
        let mine: BTreeMap<Incarnation, u64> = [(inc("lb1", 3), 5)].into_iter().collect();
        assert!(!listed.held_by(&mine, &me, None));
        let verified: BTreeSet<String> = ["lb1".to_owned(), "lb2".to_owned()].into();
        assert!(listed.held_by(&mine, &me, Some(&verified)));
        // A verified node id is still waited for.
        let mine = BTreeMap::new();
        assert!(!listed.held_by(&mine, &me, Some(&verified)));
    }

    fn peer(id: &str, live: bool, s: Option<SyncState>) -> Observed {
        let mut status = row(id, live, 3, ("r1", "c1"));
        status.gossip_addr = format!("198.18.0.1{}:7946", &id[2..]);
        Observed { status, sync: s }
    }

    #[test]
    fn sync_state_round_trips_and_refuses_garbage() {
        let s = SyncState {
            caught_up: true,
            holds: [(inc("lb1", 0x19a), 12), (inc("lb-3.x", 5), 0)]
                .into_iter()
                .collect(),
        };
        assert_eq!(s.encode(), "v1 1 lb-3.x:5:0 lb1:19a:c");
        assert_eq!(SyncState::decode(&s.encode()).unwrap(), s);
        assert_eq!(SyncState::decode("v1 0").unwrap(), SyncState::default());
        for bad in [
            "",
            "v2 1",
            "v1",
            "v1 2",
            "v1 1 lb1",
            "v1 1 lb1:1",
            "v1 1 lb1:1:2:3",
            "v1 1 lb 1:1:2",
            "v1 1 :1:2",
            "v1 1 lb1:zz:2",
            "v1 1 lb1:11111111111111111:2",
            "v1 1  lb1:1:2",
        ] {
            assert!(SyncState::decode(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_huge_sync_state_keeps_the_newest_incarnations_and_still_decodes() {
        let holds = (0..MAX_SYNC_ENTRIES as u64 + 10)
            .map(|g| (inc("lb1", g), g))
            .collect();
        let s = SyncState {
            caught_up: false,
            holds,
        };
        let back = SyncState::decode(&s.encode()).unwrap();
        assert_eq!(back.holds.len(), MAX_SYNC_ENTRIES);
        assert!(!back.holds.contains_key(&inc("lb1", 0)));
        assert!(
            back.holds
                .contains_key(&inc("lb1", MAX_SYNC_ENTRIES as u64 + 9))
        );
    }

    #[test]
    fn catching_up_follows_the_rules() {
        let me = ("lb2", 7, 0);
        let full = [("lb1", 3, 40), ("lb3", 3, 9), ("lb2", 5, 20), me];
        // (what others published, what this peer holds, seconds after start,
        // has other seeds) → caught up by
        #[allow(clippy::type_complexity)]
        let table: Vec<(
            Vec<Observed>,
            Vec<(&str, u64, u64)>,
            u64,
            bool,
            Option<CaughtUp>,
        )> = vec![
            // No seed but itself: never held back.
            (vec![], vec![], 0, false, Some(CaughtUp::NoSeeds)),
            // A caught-up peer whose list names this incarnation, all held.
            (
                vec![peer("lb1", true, sync(true, &full))],
                full[..3].to_vec(),
                1,
                true,
                Some(CaughtUp::Peer { peer: "lb1".into() }),
            ),
            // One incarnation (the earlier self, wiped) not held far enough.
            (
                vec![peer("lb1", true, sync(true, &full))],
                vec![("lb1", 3, 40), ("lb3", 3, 9), ("lb2", 5, 19)],
                1,
                true,
                None,
            ),
            // Its list predates this incarnation: it says nothing about now.
            (
                vec![peer("lb1", true, sync(true, &full[..3]))],
                full[..3].to_vec(),
                1,
                true,
                None,
            ),
            // Holding more than listed is fine; versions of 0 need nothing.
            (
                vec![peer(
                    "lb1",
                    true,
                    sync(true, &[("lb1", 3, 4), ("lb9", 1, 0), me]),
                )],
                vec![("lb1", 3, 50)],
                1,
                true,
                Some(CaughtUp::Peer { peer: "lb1".into() }),
            ),
            // A peer that has not caught up itself does not count …
            (
                vec![peer("lb3", true, sync(false, &[me]))],
                vec![],
                1,
                true,
                None,
            ),
            // … one not seen live yet counts once its list names this peer …
            (
                vec![peer("lb1", false, sync(true, &[me]))],
                vec![],
                1,
                true,
                Some(CaughtUp::Peer { peer: "lb1".into() }),
            ),
            // … one that published nothing readable does not.
            (vec![peer("lb1", true, None)], vec![], 1, true, None),
            // Whole-mesh restart: every seed live, holding every live peer's list.
            (
                vec![
                    peer("lb1", true, sync(false, &[("lb1", 2, 8), me])),
                    peer("lb3", true, sync(false, &[me])),
                ],
                vec![("lb1", 2, 8)],
                1,
                true,
                Some(CaughtUp::WholeMesh {
                    peers: vec!["lb1".into(), "lb3".into()],
                }),
            ),
            // One seed gone for good: only once the wait is over.
            (
                vec![peer("lb3", true, sync(false, &[me]))],
                vec![],
                9,
                true,
                None,
            ),
            (
                vec![peer("lb3", true, sync(false, &[me]))],
                vec![],
                10,
                true,
                Some(CaughtUp::WholeMesh {
                    peers: vec!["lb3".into()],
                }),
            ),
            // Missing one live peer's list: never.
            (
                vec![
                    peer("lb1", true, sync(false, &[("lb1", 2, 8), me])),
                    peer("lb3", true, sync(false, &[me])),
                ],
                vec![],
                30,
                true,
                None,
            ),
            // A caught-up peer is live: never the whole-mesh rule, however long.
            (
                vec![
                    peer("lb1", true, sync(true, &[("lb1", 2, 8), me])),
                    peer("lb3", true, sync(false, &[me])),
                ],
                vec![],
                30,
                true,
                None,
            ),
            // Nobody live: alone after the wait only.
            (vec![], vec![], 9, true, None),
            (
                vec![peer("lb1", false, None)],
                vec![],
                10,
                true,
                Some(CaughtUp::Alone),
            ),
        ];
        for (i, (others, holds, secs, seeds, want)) in table.into_iter().enumerate() {
            let mut rule = rule();
            if !seeds {
                rule.other_seeds.clear();
            }
            let s = next(
                &MeshSnapshot::default(),
                &seen(START + secs * 1000, others, &holds),
                &rule,
            );
            assert_eq!(s.state.caught_up_by, want, "row {i}");
            assert_eq!(s.state.caught_up, want.is_some(), "row {i}");
            assert_eq!(s.state.catching_up.is_none(), want.is_some(), "row {i}");
        }
    }

    #[test]
    fn caught_up_stays_caught_up_and_keeps_its_time() {
        let first = next(
            &MeshSnapshot::default(),
            &seen(
                START + 500,
                vec![peer("lb1", true, sync(true, &[("lb2", 7, 0)]))],
                &[],
            ),
            &rule(),
        );
        assert_eq!(first.state.caught_up_at_ms, Some(START + 500));
        let later = next(&first, &seen(START + 9_000, vec![], &[]), &rule());
        assert!(later.state.caught_up);
        assert_eq!(later.state.caught_up_at_ms, Some(START + 500));
    }

    #[test]
    fn converged_lag_and_vip_holders_come_from_live_rows_and_the_own_current_row() {
        let t0 = 5_000_000;
        let mut a = row("lb1", true, 1, ("r2", "c2"));
        a.vrrp_state = Some("MASTER VI_1".into());
        let mut dead = row("lb3", false, 1, ("r0", "c0"));
        dead.vrrp_state = Some("MASTER VI_1".into());
        let others = vec![
            Observed {
                status: a.clone(),
                sync: None,
            },
            Observed {
                status: dead,
                sync: None,
            },
        ];
        let mut o = seen(t0, others.clone(), &[]);
        // This peer's own row is current: one change behind the others.
        o.me = row("lb2", true, 7, ("r1", "c1"));
        let s1 = next(&MeshSnapshot::default(), &o, &rule());
        assert!(!s1.state.converged);
        assert_eq!(s1.state.converged_since_ms, None);
        assert_eq!(s1.state.vip_holders, vec!["lb1".to_string()]);
        assert!(!s1.state.split_brain());
        assert_eq!(
            s1.peers
                .iter()
                .map(|p| p.node_id.as_str())
                .collect::<Vec<_>>(),
            ["lb1", "lb2", "lb3"]
        );
        // Two live peers disagree: no majority, no lag.
        assert_eq!(s1.state.majority_config_digest, None);
        assert_eq!(s1.state.lagging_since_ms, None);

        // A third live peer sides with lb1: this peer lags from now on,
        // and the lag keeps its start however often it is computed.
        let mut o2 = o.clone();
        o2.now_ms = t0 + 1_000;
        o2.others[1].status = row("lb3", true, 2, ("r2", "c2"));
        let s2 = next(&s1, &o2, &rule());
        assert_eq!(s2.state.majority_config_digest.as_deref(), Some("c2"));
        assert_eq!(s2.state.lagging_since_ms, Some(t0 + 1_000));
        o2.now_ms = t0 + 4_000;
        let s3 = next(&s2, &o2, &rule());
        assert_eq!(s3.state.lag(t0 + 4_000), Some(Duration::from_secs(3)));
        // lb3 seems dead for a moment: no majority, the lag goes on.
        let mut flap = o2.clone();
        flap.others[1].status.live = false;
        let s3 = next(&s3, &flap, &rule());
        assert_eq!(s3.state.majority_config_digest, None);
        assert_eq!(s3.state.lagging_since_ms, Some(t0 + 1_000));

        // It catches up: converged since then, no lag.
        o2.now_ms = t0 + 5_000;
        o2.me = row("lb2", true, 7, ("r2", "c2"));
        let s4 = next(&s3, &o2, &rule());
        assert!(s4.state.converged);
        assert_eq!(s4.state.converged_since_ms, Some(t0 + 5_000));
        assert_eq!(s4.state.lagging_since_ms, None);
        o2.now_ms = t0 + 6_000;
        let s5 = next(&s4, &o2, &rule());
        assert_eq!(s5.state.converged_since_ms, Some(t0 + 5_000));

        // Two live masters of one instance: split brain.
        let mut o3 = o2.clone();
        o3.me.vrrp_state = Some("MASTER VI_1".into());
        let s6 = next(&s5, &o3, &rule());
        assert_eq!(s6.state.vip_holders, vec!["lb1".to_string(), "lb2".into()]);
        assert!(s6.state.split_brain());
    }

    proptest! {
        #[test]
        fn decoding_never_panics(v in ".{0,300}") {
            let _ = SyncState::decode(&v);
        }
    }
}
