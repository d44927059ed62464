//! The registry shared by the API, HAProxy applier and gossip: answers
//! renewals from memory, hands every other write to the committer (which
//! makes it durable before it is published or answered), waits for another
//! peer to confirm it when acknowledgements are replicated, persists what
//! other peers gossip, and tells watchers.

mod committer;
pub mod replication;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use tokio::sync::{mpsc, oneshot, watch};

pub use committer::LEASE_FLUSH;
pub use replication::{AckMode, AckPolicy, Confirmed, Gossiped, Published, Replication};

use crate::clock::Clock;
use crate::events::Events;
use crate::registry::{
    Change, Command, Entry, FrontendRun, Key, LISTING_RUN_KEYS, Origin, Registry, RegistryError,
    RegistryView, Report, Summary,
};
use crate::store::{Pending, Record, Store, StoreError};
use committer::Write;

#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    #[error(transparent)]
    Rejected(#[from] RegistryError),
    #[error("the change could not be stored durably: {0}")]
    Storage(#[from] StoreError),
}

/// A change to this peer's own entries, for the mesh to publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OwnEvent {
    /// A new own entry; the flag says whether peers need it at once (a
    /// client waits for it, or it changes what HAProxy serves) or it can
    /// wait for the next gossip round.
    Set(Key, Entry, bool),
    /// The entry no longer matters (lease over, old tombstone).
    Remove(Key),
}

/// Own events in the order they were accepted, numbered from 1.
pub type Outbox = mpsc::UnboundedSender<(u64, OwnEvent)>;

/// An accepted command and how far it got.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accepted {
    pub change: Change,
    /// With replicated acknowledgements: whether another peer confirmed it
    /// holds the change durably. `None` when nothing was waited for (local
    /// acknowledgements, a renewal answered from memory, or a command that
    /// wrote nothing).
    pub replicated: Option<bool>,
}

struct OutboxState {
    tx: Option<Outbox>,
    seq: u64,
}

/// The one registry of this peer.
pub struct SharedRegistry {
    /// Where own writes go to be gossiped, in the order they were accepted.
    outbox: Mutex<OutboxState>,
    // A std mutex, not tokio's: every critical section is short and never awaits.
    inner: Mutex<Registry>,
    store: Store,
    clock: Arc<dyn Clock>,
    ack: AckPolicy,
    /// Set by the mesh when it starts.
    replication: OnceLock<Replication>,
    /// Carries the config generation: bumped on changes HAProxy must serve
    /// (not on plain renewals, which would wake the applier for nothing).
    config_changes: watch::Sender<u64>,
    events: Events,
    /// Writes for the committer, and its end of the queue until it starts.
    writes: mpsc::UnboundedSender<Write>,
    queued: Mutex<Option<mpsc::UnboundedReceiver<Write>>>,
    /// Entries held from other peers did not reach the disk: the next
    /// compaction must rewrite everything.
    compaction_wanted: AtomicBool,
    /// Compactions queued so far, and the number of the last one that
    /// succeeded (they complete in the order they were queued).
    compactions_queued: AtomicU64,
    compacted: watch::Sender<u64>,
}

impl SharedRegistry {
    /// Builds the shared registry from `registry` and what `store` recovered:
    /// own entries become this incarnation's, entries held from other peers
    /// keep their origin. Writes wait for [`SharedRegistry::run`].
    pub fn new(
        mut registry: Registry,
        store: Store,
        recovered: Vec<Record>,
        clock: Arc<dyn Clock>,
        ack: AckPolicy,
    ) -> Self {
        let now = clock.now_ms();
        let own = registry.origin().clone();
        let (mut kept, mut held) = (0, 0);
        for r in recovered {
            // Expired leases and old tombstones are not restored.
            let Some(entry) = r.entry.filter(|e| registry.entry_matters(e, now)) else {
                continue;
            };
            match r.origin {
                None => {
                    registry.set_entry(r.key, own.clone(), Some(entry));
                    kept += 1;
                }
                Some(origin) => {
                    registry.set_entry(r.key, origin, Some(entry));
                    held += 1;
                }
            }
        }
        if kept + held > 0 {
            tracing::info!(
                own = kept,
                held_from_peers = held,
                "restored the registry from disk"
            );
        }
        let (config_changes, _) = watch::channel(registry.config_generation());
        let events = Events::new(crate::events::DEFAULT_CAPACITY, clock.clone());
        let (writes, queued) = mpsc::unbounded_channel();
        Self {
            outbox: Mutex::new(OutboxState { tx: None, seq: 0 }),
            inner: Mutex::new(registry),
            store,
            clock,
            ack,
            replication: OnceLock::new(),
            config_changes,
            events,
            writes,
            queued: Mutex::new(Some(queued)),
            compaction_wanted: AtomicBool::new(false),
            compactions_queued: AtomicU64::new(0),
            compacted: watch::channel(0).0,
        }
    }

    /// This peer's event log.
    pub fn events(&self) -> &Events {
        &self.events
    }

    /// Sends own writes to `outbox` from now on, and waits on `replication`
    /// for replicated acknowledgements; returns the own entries held so far,
    /// which the caller publishes first.
    pub fn attach_mesh(&self, outbox: Outbox, replication: Replication) -> Vec<(Key, Entry)> {
        let reg = self.lock();
        self.outbox_state().tx = Some(outbox);
        let _ = self.replication.set(replication);
        reg.own_entries().map(|(k, e)| (*k, e.clone())).collect()
    }

    fn outbox_state(&self) -> MutexGuard<'_, OutboxState> {
        self.outbox.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues an own event for gossip; returns its sequence number. Called
    /// with the registry locked, so events keep the registry's order.
    fn emit(&self, event: OwnEvent) -> u64 {
        let mut out = self.outbox_state();
        out.seq += 1;
        if let Some(tx) = &out.tx {
            let _ = tx.send((out.seq, event));
        }
        out.seq
    }

    fn lock(&self) -> MutexGuard<'_, Registry> {
        // A panic while holding the lock cannot leave the registry half-changed
        // (apply validates before it mutates), so a poisoned lock is still usable.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn now_ms(&self) -> u64 {
        self.clock.now_ms()
    }

    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }

    pub fn ack_policy(&self) -> AckPolicy {
        self.ack
    }

    /// Applies a command. A renewal that only moves an own lease end forward
    /// is answered from memory; anything else returns once it is on disk and,
    /// with replicated acknowledgements, confirmed by another live peer (or
    /// the bound passed).
    pub async fn submit(&self, cmd: Command) -> Result<Accepted, SubmitError> {
        if let Some(change) = self.renew_from_memory(&cmd) {
            return Ok(Accepted {
                change,
                replicated: None,
            });
        }
        let stopped = || StoreError::Failed("lbmesh is shutting down".into());
        let (done, answer) = oneshot::channel();
        self.writes
            .send(Write { cmd, done })
            .map_err(|_| stopped())?;
        let (change, seq) = answer.await.map_err(|_| stopped())??;
        let replicated = match self.ack.mode {
            AckMode::Replicated if change.written => Some(match self.replication.get() {
                Some(r) => r.wait(seq, self.ack.timeout).await,
                None => false,
            }),
            _ => None,
        };
        Ok(Accepted { change, replicated })
    }

    fn renew_from_memory(&self, cmd: &Command) -> Option<Change> {
        // While writes fail, renewals go to the disk too, and are refused
        // with it: an answer from memory would promise what cannot be kept.
        if self.store.is_failed() {
            return None;
        }
        let mut reg = self.lock();
        let change = reg.renew(cmd, self.clock.now_ms())?;
        if change.written {
            self.emit(OwnEvent::Set(change.key, change.entry.clone(), false));
        }
        Some(change)
    }

    /// Merges entries gossiped by other peers and persists those that
    /// changed what this peer holds. Await the result to know they are on disk.
    pub fn merge_remote(&self, changes: Vec<(Key, Origin, Option<Entry>)>) -> Pending {
        if changes.is_empty() {
            return Pending::done();
        }
        let now = self.clock.now_ms();
        let (pending, config_changed) = {
            let mut reg = self.lock();
            let mut records = Vec::new();
            let mut any = false;
            for (key, origin, entry) in changes {
                let m = reg.merge_remote(key, origin.clone(), entry.clone(), now);
                any |= m.affects_config;
                if m.changed {
                    records.push(Record::held(key, origin, entry));
                }
            }
            // Queued under the lock: the log keeps the order of the registry.
            (self.store.append(records), any)
        };
        if config_changed {
            self.notify();
        }
        pending
    }

    /// The current config generation (what the applier must reach).
    pub fn config_generation(&self) -> u64 {
        *self.config_changes.borrow()
    }

    /// The registry as served now.
    ///
    /// Read in runs of about [`LISTING_RUN_KEYS`] keys, each under its own
    /// hold of the lock, so that building the view of a large registry
    /// (75 ms at 100,000 servers) never holds every write behind it: equal
    /// to one read when nothing changed meanwhile, else each frontend as it
    /// was when read and the generations of the first run, which watchers of
    /// [`SharedRegistry::subscribe`] then see are behind.
    pub fn view(&self) -> RegistryView {
        let now = self.clock.now_ms();
        RegistryView::from_runs(|from| self.frontends_from(from, LISTING_RUN_KEYS, now))
    }

    /// The digest and counts of the registry as served now (see
    /// [`Registry::summary`]), computed in runs like [`SharedRegistry::view`]
    /// when the one kept no longer holds: at 100,000 servers a pass costs
    /// tens of milliseconds, and the mesh asks every second. When the
    /// registry changed meanwhile, the summary mixes instants (each frontend
    /// as read) and is not kept, so the next call reads it again.
    pub fn summary(&self) -> Summary {
        let now = self.clock.now_ms();
        let mut runs = {
            let reg = self.lock();
            if let Some(s) = reg.memoized_summary(now) {
                return s;
            }
            reg.start_summary(now)
        };
        while runs.next.is_some() {
            self.lock().summarize(&mut runs, LISTING_RUN_KEYS);
        }
        self.lock().finish_summary(runs)
    }

    /// What `/v1/status` shows of the registry (see [`Registry::report`]),
    /// read in runs: the summary, then, only when this peer refuses to serve
    /// some live entries, a view to list them.
    pub fn report(&self, max_refused: usize) -> Report {
        let summary = self.summary();
        let in_view = if summary.refused == 0 {
            Vec::new()
        } else {
            self.view().refused
        };
        self.lock().report_of(summary, in_view, max_refused)
    }

    /// One frontend as served now.
    pub fn frontend_view(&self, port: u16) -> Option<crate::registry::view::FrontendView> {
        let now = self.clock.now_ms();
        self.lock().frontend_view(port, now)
    }

    /// A run of served frontends from port `from` on, as served at `now_ms`:
    /// the registry is locked for about `max_keys` keys' worth of reading
    /// (see [`Registry::frontends_from`]).
    pub fn frontends_from(&self, from: u16, max_keys: usize, now_ms: u64) -> FrontendRun {
        self.lock().frontends_from(from, max_keys, now_ms)
    }

    /// Runs `f` with the registry locked; keep it short.
    pub fn with<T>(&self, f: impl FnOnce(&mut Registry) -> T) -> T {
        f(&mut self.lock())
    }

    /// Tells watchers that the registry changed outside [`SharedRegistry::submit`].
    pub fn notify(&self) {
        let g = self.lock().config_generation();
        self.config_changes.send_replace(g);
    }

    /// A receiver that wakes on every change HAProxy must serve.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.config_changes.subscribe()
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Asks for a compaction because entries held from other peers did not
    /// reach the disk; returns the compaction number that, once it has
    /// succeeded, holds them (see [`SharedRegistry::compacted`]).
    pub fn want_compaction(&self) -> u64 {
        self.compaction_wanted.store(true, Ordering::Relaxed);
        self.compactions_queued.load(Ordering::Relaxed) + 1
    }

    /// The number of the last compaction that succeeded.
    pub fn compacted(&self) -> watch::Receiver<u64> {
        self.compacted.subscribe()
    }

    /// Forgets expired leases and rewrites the store with what still
    /// matters: own entries as acknowledged and those held from other peers.
    /// Run by the committer between batches (or once it stopped), so no own
    /// write is half-way.
    pub async fn compact(&self) -> Result<(), StoreError> {
        let (pending, number) = {
            let mut reg = self.lock();
            let own = reg.origin().clone();
            for (key, origin) in reg.collect_garbage(self.clock.now_ms()) {
                if origin == own {
                    self.emit(OwnEvent::Remove(key));
                }
            }
            let records = reg
                .entries()
                .filter_map(|(k, o, e)| {
                    if *o == own {
                        Some(Record::own(*k, reg.own_acknowledged(k)?))
                    } else {
                        Some(Record::held(*k, o.clone(), Some(e.clone())))
                    }
                })
                .collect();
            self.compaction_wanted.store(false, Ordering::Relaxed);
            let number = self.compactions_queued.fetch_add(1, Ordering::Relaxed) + 1;
            (self.store.compact(records), number)
        };
        match pending.durable().await {
            Ok(()) => {
                self.compacted.send_replace(number);
                Ok(())
            }
            Err(e) => {
                self.compaction_wanted.store(true, Ordering::Relaxed);
                Err(e)
            }
        }
    }
}
