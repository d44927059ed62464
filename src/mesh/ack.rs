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

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use chitchat::{ChitchatHandle, ChitchatId};
use tokio::sync::{Mutex, Notify, mpsc, watch};

use super::{codec, quic};
use crate::registry::PeerId;
use crate::shared::Confirmed;
use crate::store::Pending;

/// What the sync task merged in one round: the gossip version of each peer
/// whose entries it took, and the write that persists them.
pub struct Stored {
    pub versions: Vec<(ChitchatId, u64)>,
    pub durable: Pending,
}

/// Publishes this peer's watermarks once what it merged is on disk, and
/// pushes each to the peer it is about at once.
pub async fn publish_watermarks(
    handle: Arc<ChitchatHandle>,
    mut stored: mpsc::UnboundedReceiver<Stored>,
    mut shutdown: watch::Receiver<bool>,
) {
    let chitchat = handle.chitchat();
    let mut batch = Vec::new();
    loop {
        tokio::select! {
            // Fixed branch order: seeded simulations replay exactly.
            biased;
            n = stored.recv_many(&mut batch, 256) => if n == 0 { return },
            () = crate::shutdown::signalled(&mut shutdown) => return,
        }
        let mut durable: Vec<(ChitchatId, u64)> = Vec::new();
        for s in batch.drain(..) {
            match s.durable.durable().await {
                Ok(()) => durable.extend(s.versions),
                // Not on disk: no watermark moves, so no writer counts on this peer.
                Err(e) => {
                    tracing::warn!(error = %e, "entries held from other peers were not stored; not acknowledging them")
                }
            }
        }
        if durable.is_empty() {
            continue;
        }
        let targets: BTreeSet<SocketAddr> = {
            let mut cc = chitchat.lock().await;
            let state = cc.self_node_state();
            let mut targets = BTreeSet::new();
            for (id, version) in durable {
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

/// Follows what live peers confirm of this incarnation's key space.
pub struct Follow {
    pub chitchat: Arc<Mutex<chitchat::Chitchat>>,
    pub me: ChitchatId,
    pub identities: Option<Arc<quic::Identities>>,
    /// Woken when any peer's watermark changes.
    pub wake: Arc<Notify>,
    pub confirmed: watch::Sender<Confirmed>,
}

impl Follow {
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        // Liveness changes without a key changing: look at least this often.
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let key = format!("{}{}", codec::ACK_PREFIX, self.me.node_id);
        loop {
            tokio::select! {
                // Fixed branch order: seeded simulations replay exactly.
                biased;
                () = self.wake.notified() => {}
                _ = tick.tick() => {}
                () = crate::shutdown::signalled(&mut shutdown) => return,
            }
            let now = {
                let cc = self.chitchat.lock().await;
                let mut c = Confirmed::default();
                for id in cc.live_nodes() {
                    if id.node_id == self.me.node_id {
                        continue;
                    }
                    let Ok(node) = id.node_id.parse::<PeerId>() else {
                        continue;
                    };
                    let impostor = self
                        .identities
                        .as_ref()
                        .and_then(|i| i.node_at(id.gossip_advertise_addr))
                        .is_some_and(|certified| certified != node);
                    if impostor {
                        continue;
                    }
                    c.live_peers += 1;
                    let mark = cc
                        .node_state(id)
                        .and_then(|s| s.get(&key))
                        .and_then(|v| codec::decode_ack(v).ok());
                    if let Some((generation, version)) = mark {
                        if generation == self.me.generation_id {
                            c.version = c.version.max(version);
                        }
                    }
                }
                c
            };
            self.confirmed.send_if_modified(|c| {
                let changed = *c != now;
                *c = now;
                changed
            });
        }
    }
}
