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
                let mut present: HashSet<&str> = HashSet::with_capacity(s.keys.len());
                let mut took = false;
                for (k, vv) in state.key_values_including_deleted() {
                    let Some(rest) = k.strip_prefix(codec::ENTRY_PREFIX) else {
                        continue;
                    };
                    present.insert(k);
                    if s.keys.get(k) == Some(&vv.version) {
                        continue;
                    }
                    took = true;
                    s.keys.insert(k.to_owned(), vv.version);
                    let key = match codec::decode_key(rest) {
                        Ok(key) => key,
                        Err(e) => {
                            refused_entry(&e, &origin);
                            continue;
                        }
                    };
                    if vv.is_deleted() {
                        changes.push((key, origin.clone(), None));
                        continue;
                    }
                    match codec::decode_value(&vv.value) {
                        Ok(entry) => changes.push((key, origin.clone(), Some(entry))),
                        Err(e) => refused_entry(&e, &origin),
                    }
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
                s.max_version = state.max_version();
                if took {
                    versions.push((id.clone(), s.max_version));
                }
                let entry_version = s.keys.values().copied().max().unwrap_or(0);
                held_changed |= entry_version != s.entry_version;
                s.entry_version = entry_version;
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
