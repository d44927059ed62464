//! Replicated acknowledgements, the mesh's side.
//!
//! Every peer persists the entries it holds from other peers, and publishes
//! in its own key space how far it has stored each other peer's key space
//! durably: a watermark per peer, `(generation, gossip version)` (see
//! [`codec`]). A writer pushes its write to every live peer at once
//! (`ChitchatHandle::gossip`); a peer that has stored it durably publishes its
//! new watermark and pushes it back the same way; the writer answers once a
//! live peer's watermark covers the version its write got.
//!
//! Why watermarks in gossip rather than an acknowledgement message of their
//! own: one channel. They travel over the same authenticated QUIC links and
//! the same simulated network as the entries, need no second protocol or
//! port, and chitchat's versions already say exactly "everything up to here"
//! (a peer's state for another peer always holds every version up to its max).
//! The watermark also serves the whole-mesh restart: what a peer
//! acknowledged is on its disk, with the entries it holds from others.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use chitchat::{ChitchatHandle, ChitchatId};
use tokio::sync::{Mutex, Notify, mpsc, watch};
use tokio::time::Instant;

use super::{codec, quic};
use crate::registry::{Origin, PeerId};
use crate::shared::{Confirmed, Gossiped, SharedRegistry};
use crate::store::Pending;

/// How long this peer must have been in touch with a live peer before it
/// takes over entries no peer gossips any more: long enough to have received
/// every key space the mesh still holds.
const SETTLE: Duration = Duration::from_secs(3);

/// What the sync task merged in one round: the gossip version of each peer
/// whose entries it took, and the write that persists them.
pub struct Stored {
    pub versions: Vec<(ChitchatId, u64)>,
    pub durable: Pending,
}

/// Publishes this peer's watermarks once what it merged is on disk, and
/// pushes each to the peer it is about at once. When merged entries fail to
/// reach the disk, no watermark moves until a compaction (which rewrites
/// everything held) has succeeded.
pub async fn publish_watermarks(
    handle: Arc<ChitchatHandle>,
    registry: Arc<SharedRegistry>,
    mut stored: mpsc::UnboundedReceiver<Stored>,
    mut shutdown: watch::Receiver<bool>,
) {
    let chitchat = handle.chitchat();
    let mut compacted = registry.compacted();
    let mut batch = Vec::new();
    // Versions stored but not yet published, and the compaction they wait for.
    let mut ready: BTreeMap<ChitchatId, u64> = BTreeMap::new();
    let mut blocked: Option<u64> = None;
    loop {
        tokio::select! {
            // Fixed branch order: seeded simulations replay exactly.
            biased;
            n = stored.recv_many(&mut batch, 256) => if n == 0 { return },
            r = compacted.changed(), if blocked.is_some() => if r.is_err() { return },
            () = crate::shutdown::signalled(&mut shutdown) => return,
        }
        for s in batch.drain(..) {
            if let Err(e) = s.durable.durable().await {
                tracing::warn!(error = %e, "entries held from other peers did not reach the disk; not acknowledging them until a compaction writes them");
                blocked = Some(registry.want_compaction());
            }
            for (id, version) in s.versions {
                let v = ready.entry(id).or_default();
                *v = (*v).max(version);
            }
        }
        if let Some(need) = blocked {
            if *compacted.borrow_and_update() < need {
                continue;
            }
            blocked = None;
        }
        if ready.is_empty() {
            continue;
        }
        let targets: BTreeSet<SocketAddr> = {
            let mut cc = chitchat.lock().await;
            let state = cc.self_node_state();
            let mut targets = BTreeSet::new();
            for (id, version) in std::mem::take(&mut ready) {
                let key = format!("{}{}", codec::ACK_PREFIX, id.node_id);
                let newer = state
                    .get(&key)
                    .and_then(|v| codec::decode_ack(v).ok())
                    .is_none_or(|held| (id.generation_id, version) > held);
                if newer {
                    state.set(key, codec::encode_ack(id.generation_id, version));
                    targets.insert(id.gossip_advertise_addr);
                }
            }
            targets
        };
        for addr in targets {
            let _ = handle.gossip(addr);
        }
    }
}

/// Follows what live peers confirm of this incarnation's key space, and
/// which incarnations' key spaces the mesh still gossips.
pub struct Follow {
    pub chitchat: Arc<Mutex<chitchat::Chitchat>>,
    pub me: ChitchatId,
    pub identities: Option<Arc<quic::Identities>>,
    /// Woken when any peer's watermark changes.
    pub wake: Arc<Notify>,
    pub confirmed: watch::Sender<Confirmed>,
    pub gossiped: watch::Sender<Gossiped>,
}

impl Follow {
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        // Liveness changes without a key changing: look at least this often.
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let key = format!("{}{}", codec::ACK_PREFIX, self.me.node_id);
        let mut live_since: Option<Instant> = None;
        loop {
            tokio::select! {
                // Fixed branch order: seeded simulations replay exactly.
                biased;
                () = self.wake.notified() => {}
                _ = tick.tick() => {}
                () = crate::shutdown::signalled(&mut shutdown) => return,
            }
            let (now, origins) = {
                let cc = self.chitchat.lock().await;
                let origins: BTreeSet<Origin> = cc
                    .node_states()
                    .keys()
                    .filter_map(|id| {
                        let node = id.node_id.parse::<PeerId>().ok()?;
                        Some(Origin::new(node, id.generation_id))
                    })
                    .collect();
                let mut c = Confirmed::default();
                for id in cc.live_nodes() {
                    if id.node_id == self.me.node_id {
                        continue;
                    }
                    // Only verified peers count; only one connected now
                    // confirms (a relayed watermark may be forged).
                    let identities = self.identities.as_deref();
                    if !matches!(
                        super::trust::standing(identities, id),
                        super::trust::Standing::Verified(_)
                    ) {
                        continue;
                    }
                    c.live_peers += 1;
                    let mark = cc
                        .node_state(id)
                        .and_then(|s| s.get(&key))
                        .and_then(|v| codec::decode_ack(v).ok());
                    if let Some((generation, version)) = mark {
                        if generation == self.me.generation_id
                            && super::trust::connected(identities, &id.node_id)
                        {
                            c.version = c.version.max(version);
                        }
                    }
                }
                (c, origins)
            };
            self.confirmed.send_if_modified(|c| {
                let changed = *c != now;
                *c = now;
                changed
            });
            live_since = match (now.live_peers, live_since) {
                (0, _) => None,
                (_, None) => Some(Instant::now()),
                (_, since) => since,
            };
            let settled = live_since.is_some_and(|t| t.elapsed() >= SETTLE);
            self.gossiped.send_if_modified(|g| {
                let changed = g.settled != settled || *g.origins != origins;
                if changed {
                    *g = Gossiped {
                        origins: Arc::new(origins),
                        settled,
                    };
                }
                changed
            });
        }
    }
}
