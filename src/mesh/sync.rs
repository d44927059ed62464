//! The sync task: merges verified peers' key spaces into the registry (see
//! [`super::trust`]), diffing each incarnation's entries by version, and
//! keeps how far this peer holds each incarnation, verified or not (for
//! catching up, see [`super::snapshot`]).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use chitchat::ChitchatId;
use tokio::sync::{Mutex, Notify, mpsc, watch};

use super::codec;
use super::quic::Identities;
use super::snapshot::Incarnation;
use super::trust::{Standing, Untrusted, standing};
use crate::registry::{Entry, Key, Origin, PeerId};
use crate::shared::SharedRegistry;

/// What the sync task last merged from one incarnation's key space.
#[derive(Default)]
struct Seen {
    max_version: u64,
    /// Chitchat key → version merged.
    keys: HashMap<String, u64>,
    /// The newest version among its entry keys held now.
    entry_version: u64,
}

/// What the sync task works with.
pub(super) struct Sync {
    pub chitchat: Arc<Mutex<chitchat::Chitchat>>,
    pub me: ChitchatId,
    pub identities: Option<Arc<Identities>>,
    pub registry: Arc<SharedRegistry>,
    pub wake: Arc<Notify>,
    /// How far this peer holds every other incarnation's entries.
    pub holds: Arc<ArcSwap<BTreeMap<Incarnation, u64>>>,
    /// Wakes the mesh task when that changed.
    pub held: Arc<Notify>,
    pub metrics: Option<Arc<crate::metrics::Metrics>>,
    /// Where merged entries go to be acknowledged once on disk.
    pub stored: mpsc::UnboundedSender<super::ack::Stored>,
}

fn forget(origin: &Origin, s: &Seen, changes: &mut Vec<(Key, Origin, Option<Entry>)>) {
    for k in s.keys.keys() {
        if let Ok(key) = codec::decode_key(&k[codec::ENTRY_PREFIX.len()..]) {
            changes.push((key, origin.clone(), None));
        }
    }
}

/// Brings `s` (what was merged from one incarnation's key space) up to
/// `state`, pushing each entry that changed, appeared or vanished onto
/// `changes`; returns whether any entry key changed, and whether the newest
/// version among the entry keys held (`s.entry_version`) moved.
///
/// A key space at max version M holds every key at its latest version up to
/// M (chitchat applies a node's versions in order), so keys at or below the
/// version last merged are what was merged then: only newer ones are
/// decoded. Keys can also vanish (collected tombstones, a reset); counting
/// tells, and then every key is compared. A catching-up peer merges a large
/// key space piece by piece while holding chitchat's lock, which gossip
/// needs: each round costs what changed, not the whole key space.
fn diff(
    state: &chitchat::NodeState,
    s: &mut Seen,
    origin: &Origin,
    changes: &mut Vec<(Key, Origin, Option<Entry>)>,
    refused: &impl Fn(&codec::DecodeError, &Origin),
) -> (bool, bool) {
    let entries = || {
        state
            .key_values_including_deleted()
            .filter(|(k, _)| k.starts_with(codec::ENTRY_PREFIX))
    };
    let mut unchanged = 0;
    let mut newer = Vec::new();
    for (k, vv) in entries() {
        if vv.version <= s.max_version {
            unchanged += 1;
        } else {
            newer.push((k, vv));
        }
    }
    let replaced = newer
        .iter()
        .filter(|(k, _)| s.keys.contains_key(*k))
        .count();
    let nothing_vanished =
        state.max_version() > s.max_version && unchanged + replaced == s.keys.len();
    let mut take = |k: &str, vv: &chitchat::VersionedValue| {
        let key = match codec::decode_key(&k[codec::ENTRY_PREFIX.len()..]) {
            Ok(key) => key,
            Err(e) => return refused(&e, origin),
        };
        if vv.is_deleted() {
            changes.push((key, origin.clone(), None));
            return;
        }
        match codec::decode_value(&vv.value) {
            Ok(entry) => changes.push((key, origin.clone(), Some(entry))),
            Err(e) => refused(&e, origin),
        }
    };
    let mut took = false;
    let mut entry_version = s.entry_version;
    if nothing_vanished {
        for (k, vv) in newer {
            took = true;
            entry_version = entry_version.max(vv.version);
            s.keys.insert(k.to_owned(), vv.version);
            take(k, vv);
        }
    } else {
        let mut present: HashSet<&str> = HashSet::with_capacity(s.keys.len());
        for (k, vv) in entries() {
            present.insert(k);
            if s.keys.get(k) == Some(&vv.version) {
                continue;
            }
            took = true;
            s.keys.insert(k.to_owned(), vv.version);
            take(k, vv);
        }
        s.keys.retain(|k, _| {
            let keep = present.contains(k.as_str());
            if !keep {
                if let Ok(key) = codec::decode_key(&k[codec::ENTRY_PREFIX.len()..]) {
                    changes.push((key, origin.clone(), None));
                }
            }
            keep
        });
        entry_version = s.keys.values().copied().max().unwrap_or(0);
    }
    s.max_version = state.max_version();
    let moved = entry_version != s.entry_version;
    s.entry_version = entry_version;
    (took, moved)
}

pub(super) async fn run(task: Sync, mut shutdown: watch::Receiver<bool>) {
    let Sync {
        chitchat,
        me,
        identities,
        registry,
        wake,
        holds,
        held,
        metrics,
        stored,
    } = task;
    let refused_entry = |e: &codec::DecodeError, origin: &Origin| {
        if let Some(m) = &metrics {
            m.gossip_entries_malformed.inc();
        }
        tracing::warn!(peer = %origin, error = %e, "ignoring a gossiped entry");
    };
    let mut seen: HashMap<ChitchatId, Seen> = HashMap::new();
    let mut bad_nodes: HashSet<ChitchatId> = HashSet::new();
    // Unverified incarnations: held, not merged; (max version, newest entry version).
    let mut unverified: HashMap<ChitchatId, (u64, u64)> = HashMap::new();
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            // Fixed branch order: seeded simulations replay exactly.
            biased;
            () = wake.notified() => {}
            _ = tick.tick() => {}
            () = crate::shutdown::signalled(&mut shutdown) => return,
        }
        let mut changes: Vec<(Key, Origin, Option<Entry>)> = Vec::new();
        // Incarnations whose entries changed, at the version merged (for watermarks).
        let mut versions: Vec<(ChitchatId, u64)> = Vec::new();
        let mut held_changed = false;
        {
            let cc = chitchat.lock().await;
            let states = cc.node_states();
            for (id, state) in states {
                if *id == me {
                    continue;
                }
                let node = match standing(identities.as_deref(), id) {
                    Standing::Verified(node) => {
                        held_changed |= unverified.remove(id).is_some();
                        node
                    }
                    Standing::Unverified(node) => {
                        // Held, so that catching up counts it, but not served.
                        let slot = unverified.entry(id.clone()).or_insert_with(|| {
                            held_changed = true;
                            (0, 0)
                        });
                        if slot.0 != state.max_version() {
                            let entry_version = state
                                .key_values_including_deleted()
                                .filter(|(k, _)| k.starts_with(codec::ENTRY_PREFIX))
                                .map(|(_, vv)| vv.version)
                                .max()
                                .unwrap_or(0);
                            held_changed |= entry_version != slot.1;
                            *slot = (state.max_version(), entry_version);
                        }
                        // Merged while it was verified (a pair forgotten for the bound).
                        if let Some(s) = seen.remove(id) {
                            forget(&Origin::new(node, id.generation_id), &s, &mut changes);
                            held_changed = true;
                        }
                        continue;
                    }
                    Standing::Refused(why) => {
                        if bad_nodes.insert(id.clone()) {
                            match why {
                                Untrusted::InvalidNodeId => tracing::warn!(
                                    node = ?id.node_id,
                                    "ignoring a peer with an invalid node id"
                                ),
                                Untrusted::OtherCertificate(certified) => {
                                    if let Some(m) = &metrics {
                                        m.refused_connection(
                                            crate::metrics::refused_connection::IDENTITY,
                                        );
                                    }
                                    tracing::warn!(
                                        addr = %id.gossip_advertise_addr,
                                        certificate = %certified,
                                        gossips_as = ?id.node_id,
                                        "refusing a peer whose certificate names another node than it gossips as"
                                    )
                                }
                            }
                        }
                        // Forget anything merged from it before it was found out.
                        if let Some(s) = seen.remove(id) {
                            if let Ok(node) = id.node_id.parse::<PeerId>() {
                                forget(&Origin::new(node, id.generation_id), &s, &mut changes);
                            }
                            held_changed = true;
                        }
                        continue;
                    }
                };
                let origin = Origin::new(node, id.generation_id);
                let s = seen.entry(id.clone()).or_insert_with(|| {
                    held_changed = true;
                    Seen::default()
                });
                if state.max_version() == s.max_version {
                    continue;
                }
                let (took, moved) = diff(state, s, &origin, &mut changes, &refused_entry);
                if took {
                    versions.push((id.clone(), s.max_version));
                }
                held_changed |= moved;
            }
            // An incarnation whose state chitchat dropped (dead past the grace period).
            bad_nodes.retain(|id| states.contains_key(id));
            unverified.retain(|id, _| {
                let keep = states.contains_key(id);
                held_changed |= !keep;
                keep
            });
            if let Some(i) = &identities {
                i.retain(|id| states.contains_key(id));
            }
            seen.retain(|id, s| {
                let keep = states.contains_key(id);
                if !keep {
                    if let Ok(node) = id.node_id.parse::<PeerId>() {
                        forget(&Origin::new(node, id.generation_id), s, &mut changes);
                    }
                    held_changed = true;
                }
                keep
            });
        }
        if held_changed {
            holds.store(Arc::new(
                seen.iter()
                    .map(|(id, s)| (id, s.entry_version))
                    .chain(unverified.iter().map(|(id, (_, v))| (id, *v)))
                    .map(|(id, v)| ((id.node_id.to_string(), id.generation_id), v))
                    .collect(),
            ));
            held.notify_one();
        }
        if !changes.is_empty() {
            let now = registry.now_ms();
            if let Some(m) = &metrics {
                // Writes made since this peer started: older ones are catch-up, not propagation.
                for (_, _, entry) in &changes {
                    let written = entry.as_ref().map_or(0, |e| e.stamp.wall_ms());
                    if written >= me.generation_id {
                        let ms = now.saturating_sub(written);
                        m.propagation_seconds.observe(ms as f64 / 1000.0);
                    }
                }
            }
        }
        if !changes.is_empty() || !versions.is_empty() {
            let durable = registry.merge_remote(changes);
            let _ = stored.send(super::ack::Stored { versions, durable });
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, HashMap};
    use std::net::SocketAddr;

    use chitchat::NodeState;
    use proptest::prelude::*;

    use super::*;
    use crate::clock::Stamp;
    use crate::registry::Op;

    #[derive(Debug, Clone)]
    enum Step {
        Set(u8, u8),
        Delete(u8),
        /// The writer's tombstones are collected: their keys vanish.
        Collect,
        /// The reader merges what it holds of the writer now.
        Look,
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            4 => (0u8..24, any::<u8>()).prop_map(|(k, v)| Step::Set(k, v)),
            2 => (0u8..24).prop_map(Step::Delete),
            1 => Just(Step::Collect),
            2 => Just(Step::Look),
        ]
    }

    fn key(i: u8) -> String {
        codec::encode_key(&Key {
            frontend: 20_000 + u16::from(i % 3),
            server: SocketAddr::from(([127, 0, 0, 1], 30_000 + u16::from(i))),
        })
    }

    fn value(v: u8) -> String {
        codec::encode_value(&Entry {
            stamp: Stamp(u64::from(v) + 1),
            observed: Stamp(0),
            op: Op::Add {
                name: "svc".parse().unwrap(),
                send_proxy: false,
                since_ms: 1,
                expires_ms: 2,
            },
        })
    }

    /// Every entry key with its version, tombstones included.
    fn versions(state: &NodeState) -> HashMap<String, u64> {
        state
            .key_values_including_deleted()
            .filter(|(k, _)| k.starts_with(codec::ENTRY_PREFIX))
            .map(|(k, vv)| (k.to_owned(), vv.version))
            .collect()
    }

    /// The live entries, decoded.
    fn live(state: &NodeState) -> BTreeMap<Key, Entry> {
        state
            .key_values()
            .filter_map(|(k, v)| {
                let rest = k.strip_prefix(codec::ENTRY_PREFIX)?;
                Some((
                    codec::decode_key(rest).unwrap(),
                    codec::decode_value(v).unwrap(),
                ))
            })
            .collect()
    }

    /// Drops the writer's tombstones, as chitchat's collection does.
    fn collect(state: &NodeState) -> NodeState {
        let mut json = serde_json::to_value(state).unwrap();
        let deleted: Vec<String> = state
            .key_values_including_deleted()
            .filter(|(_, vv)| vv.is_deleted())
            .map(|(k, _)| k.to_owned())
            .collect();
        let gc = state
            .key_values_including_deleted()
            .filter(|(_, vv)| vv.is_deleted())
            .map(|(_, vv)| vv.version)
            .max()
            .unwrap_or(state.last_gc_version());
        let kvs = json["key_values"].as_object_mut().unwrap();
        for k in deleted {
            kvs.remove(&k);
        }
        json["last_gc_version"] = gc.into();
        serde_json::from_value(json).unwrap()
    }

    proptest! {
        /// Whatever the writer does, the reader's merged entries are the
        /// writer's live ones, and each look reports exactly the keys that
        /// changed, appeared or vanished since the last.
        #[test]
        fn diff_reports_exactly_what_changed(steps in proptest::collection::vec(step(), 1..80)) {
            let origin = Origin::new("lb1".parse().unwrap(), 1);
            let refused = |e: &codec::DecodeError, _: &Origin| panic!("refused {e}");
            let mut writer = NodeState::for_test();
            let mut seen = Seen::default();
            let mut merged: BTreeMap<Key, Entry> = BTreeMap::new();
            let mut looked: HashMap<String, u64> = HashMap::new();
            for step in steps.into_iter().chain([Step::Set(0, 0), Step::Look]) {
                match step {
                    Step::Set(k, v) => writer.set(key(k), value(v)),
                    Step::Delete(k) => {
                        if writer.contains_key(&key(k)) {
                            writer.delete(&key(k));
                        }
                    }
                    Step::Collect => writer = collect(&writer),
                    Step::Look => {
                        // As the sync task: a key space whose max version
                        // did not move is not looked at.
                        if writer.max_version() == seen.max_version {
                            continue;
                        }
                        let reader = writer.clone();
                        let mut changes = Vec::new();
                        let held = seen.entry_version;
                        let (took, moved) = diff(&reader, &mut seen, &origin, &mut changes, &refused);
                        let now = versions(&reader);
                        let changed = now
                            .iter()
                            .filter(|(k, v)| looked.get(*k) != Some(v))
                            .count()
                            + looked.keys().filter(|k| !now.contains_key(*k)).count();
                        prop_assert_eq!(changes.len(), changed);
                        prop_assert_eq!(took, now.iter().any(|(k, v)| looked.get(k) != Some(v)));
                        prop_assert_eq!(seen.entry_version, now.values().copied().max().unwrap_or(0));
                        prop_assert_eq!(moved, seen.entry_version != held);
                        for (key, _, entry) in changes {
                            match entry {
                                Some(e) => merged.insert(key, e),
                                None => merged.remove(&key),
                            };
                        }
                        prop_assert_eq!(&merged, &live(&reader));
                        looked = now;
                    }
                }
            }
        }
    }
}
