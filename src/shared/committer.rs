//! The one writer of this peer's own entries. Commands that write queue here;
//! the committer applies everything queued (later commands see earlier ones),
//! writes it to the log with one fsync, and only then publishes it to gossip
//! and answers. If the disk write fails, it puts back what the batch changed
//! and answers 503: a write that cannot reach the disk changes nothing,
//! anywhere. Between batches it persists lease ends renewed from memory
//! (every second, and at shutdown), carries on entries of peers gone for
//! good, and compacts the log. Doing all of that in one task means no own
//! write is ever half-way while another one starts.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::sync::{oneshot, watch};
use tokio::time::Instant;

use super::{AckMode, OwnEvent, SharedRegistry, SubmitError};
use crate::registry::{Change, Command, Key};
use crate::store::{Record, StoreError};

/// How often lease ends renewed from memory are written to disk: the most a
/// crash can take off an acknowledged lease end (plus one fsync).
pub const LEASE_FLUSH: Duration = Duration::from_secs(1);

/// How often the log is compacted even when it is small.
const COMPACT_EVERY: Duration = Duration::from_secs(300);

/// A command waiting for the committer, and where its answer goes: the
/// change and the sequence number of its gossip event (0: none).
pub(super) struct Write {
    pub cmd: Command,
    pub done: oneshot::Sender<Result<(Change, u64), SubmitError>>,
}

impl SharedRegistry {
    /// Runs the committer until `shutdown`, then answers what is queued and
    /// persists the renewed lease ends. Every peer runs exactly one.
    pub async fn run(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let Some(mut rx) = self.queued.lock().unwrap_or_else(|p| p.into_inner()).take() else {
            tracing::error!("the committer was started twice");
            return;
        };
        let mut tick = tokio::time::interval(LEASE_FLUSH);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_compaction = Instant::now();
        let mut writes = Vec::new();
        loop {
            tokio::select! {
                // Fixed branch order: seeded simulations replay exactly.
                biased;
                n = rx.recv_many(&mut writes, 1024) => {
                    if n == 0 {
                        break;
                    }
                    self.commit(&mut writes).await;
                }
                _ = tick.tick() => self.housekeeping(&mut last_compaction).await,
                () = crate::shutdown::signalled(&mut shutdown) => break,
            }
        }
        rx.close();
        while let Ok(w) = rx.try_recv() {
            writes.push(w);
        }
        self.commit(&mut writes).await;
        if let Err(e) = self.flush_leases().await {
            tracing::error!(error = %e, "lease ends renewed in the last second could not be written at shutdown");
        }
    }

    /// Applies, stores and publishes one batch of writes, or none of it.
    async fn commit(&self, writes: &mut Vec<Write>) {
        if writes.is_empty() {
            return;
        }
        let now = self.clock.now_ms();
        let mut accepted = Vec::with_capacity(writes.len());
        let pending = {
            let mut reg = self.lock();
            let mut records = Vec::new();
            for w in writes.drain(..) {
                match reg.apply(w.cmd, now) {
                    Ok(change) => {
                        if change.written {
                            records.push(Record::own(change.key, change.entry.clone()));
                        }
                        accepted.push((w.done, change));
                    }
                    // Refused: nothing changed, answer at once.
                    Err(e) => {
                        let _ = w.done.send(Err(e.into()));
                    }
                }
            }
            self.store.append(records)
        };
        let result = pending.durable().await;
        let urgent = self.ack.mode == AckMode::Replicated;
        let (seqs, config) = {
            let mut reg = self.lock();
            match &result {
                Ok(()) => {
                    reg.settle();
                    let mut config = false;
                    let seqs: Vec<u64> = accepted
                        .iter()
                        .map(|(_, c)| {
                            if !c.written {
                                return 0;
                            }
                            config |= c.affects_config;
                            let seq = self.emit(OwnEvent::Set(
                                c.key,
                                c.entry.clone(),
                                urgent || c.affects_config,
                            ));
                            for key in &c.forgotten {
                                self.emit(OwnEvent::Remove(*key));
                            }
                            seq
                        })
                        .collect();
                    (seqs, config)
                }
                Err(_) => (Vec::new(), reg.revert(self.clock.now_ms())),
            }
        };
        if config {
            self.notify();
        }
        match result {
            Ok(()) => {
                for ((done, change), seq) in accepted.into_iter().zip(seqs) {
                    let _ = done.send(Ok((change, seq)));
                }
            }
            Err(e) => {
                tracing::warn!(writes = accepted.len(), error = %e, "writes refused: they did not reach the disk");
                for (done, _) in accepted {
                    let _ = done.send(Err(StoreError::Failed(e.to_string()).into()));
                }
            }
        }
    }

    /// Work between batches, once per [`LEASE_FLUSH`].
    async fn housekeeping(&self, last_compaction: &mut Instant) {
        if let Err(e) = self.flush_leases().await {
            tracing::warn!(error = %e, "renewed lease ends could not be written; retrying");
        }
        self.adopt_orphans().await;
        let held = self.with(|r| r.entry_count()) as u64;
        let log = self.store.wal_records();
        let due = log > 2 * held + 10_000
            || (log > 0 && last_compaction.elapsed() > COMPACT_EVERY)
            || self.compaction_wanted.load(Ordering::Relaxed)
            // Probe the disk: a compaction that succeeds clears the failure.
            || self.store.is_failed();
        if due {
            *last_compaction = Instant::now();
            if let Err(e) = self.compact().await {
                tracing::debug!(error = %e, "compaction failed");
            }
        }
    }

    /// Publishes lease ends whose published entry nears its end, and writes
    /// every lease end renewed since the last flush.
    async fn flush_leases(&self) -> Result<(), StoreError> {
        let now = self.clock.now_ms();
        let (pending, keys) = {
            let mut reg = self.lock();
            for (key, entry) in reg.publish_due_leases(now) {
                self.emit(OwnEvent::Set(key, entry, false));
            }
            let dirty = reg.take_dirty();
            let keys: Vec<Key> = dirty.iter().map(|(k, _)| *k).collect();
            let records = dirty.into_iter().map(|(k, e)| Record::own(k, e)).collect();
            (self.store.append(records), keys)
        };
        let r = pending.durable().await;
        if r.is_err() {
            self.lock().mark_dirty(keys);
        }
        r
    }

    /// Takes over entries of incarnations no peer gossips any more (a peer
    /// gone for good, whose entries this peer kept on disk), once this peer
    /// has been in touch with a live peer for a while.
    async fn adopt_orphans(&self) {
        let Some(gossiped) = self
            .replication
            .get()
            .map(|r| r.gossiped.borrow().clone())
            .filter(|g| g.settled)
        else {
            return;
        };
        let now = self.clock.now_ms();
        let (pending, taken) = {
            let mut reg = self.lock();
            let taken = reg.adopt_orphans(&gossiped.origins, now);
            if taken.is_empty() {
                return;
            }
            let records = taken
                .iter()
                .map(|(k, e)| Record::own(*k, e.clone()))
                .collect();
            (self.store.append(records), taken)
        };
        let r = pending.durable().await;
        let mut reg = self.lock();
        match r {
            Ok(()) => {
                reg.settle();
                tracing::info!(
                    entries = taken.len(),
                    "carrying on entries of peers that are gone"
                );
                for (k, e) in taken {
                    self.emit(OwnEvent::Set(k, e, false));
                }
            }
            Err(e) => {
                reg.revert(now);
                tracing::warn!(error = %e, "could not take over entries of peers that are gone; retrying");
            }
        }
    }
}
