//! The registry shared by the API, HAProxy applier and gossip: serializes
//! writes, makes them durable before they are acknowledged, and tells watchers.

use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::{mpsc, watch};

use crate::clock::Clock;
use crate::events::Events;
use crate::registry::{Change, Command, Entry, Key, Registry, RegistryError, RegistryView};
use crate::store::{Record, Store, StoreError};

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
    /// A new own entry; the flag says whether peers need it at once (it
    /// changes what HAProxy serves) or can wait for the next gossip round.
    Set(Key, Entry, bool),
    /// The entry no longer matters (lease over, old tombstone).
    Remove(Key),
}

/// The one registry of this peer.
pub struct SharedRegistry {
    /// Where own writes go to be gossiped, in the order they were accepted.
    outbox: Mutex<Option<mpsc::UnboundedSender<OwnEvent>>>,
    // A std mutex, not tokio's: every critical section is short and never awaits.
    inner: Mutex<Registry>,
    store: Store,
    clock: Arc<dyn Clock>,
    /// Carries the config generation: bumped on changes HAProxy must serve
    /// (not on plain renewals, which would wake the applier for nothing).
    config_changes: watch::Sender<u64>,
    events: Events,
}

impl SharedRegistry {
    /// Builds the shared registry from `registry` and what `store` recovered.
    pub fn new(
        mut registry: Registry,
        store: Store,
        recovered: Vec<Record>,
        clock: Arc<dyn Clock>,
    ) -> Self {
        let now = clock.now_ms();
        let node = registry.origin().clone();
        let mut kept = 0;
        for r in recovered {
            // Expired leases and old tombstones are not restored.
            if registry.entry_matters(&r.entry, now) {
                registry.set_entry(r.key, node.clone(), Some(r.entry));
                kept += 1;
            }
        }
        if kept > 0 {
            tracing::info!(entries = kept, "restored the registry from disk");
        }
        let (config_changes, _) = watch::channel(registry.config_generation());
        let events = Events::new(crate::events::DEFAULT_CAPACITY, clock.clone());
        Self {
            outbox: Mutex::new(None),
            inner: Mutex::new(registry),
            store,
            clock,
            config_changes,
            events,
        }
    }

    /// This peer's event log.
    pub fn events(&self) -> &Events {
        &self.events
    }

    /// Sends own writes to `outbox` from now on; returns the own entries held
    /// so far, which the caller publishes first.
    pub fn attach_outbox(&self, outbox: mpsc::UnboundedSender<OwnEvent>) -> Vec<(Key, Entry)> {
        let reg = self.lock();
        *self.outbox.lock().unwrap_or_else(|p| p.into_inner()) = Some(outbox);
        reg.own_entries().map(|(k, e)| (*k, e.clone())).collect()
    }

    fn emit(&self, event: OwnEvent) {
        if let Some(tx) = self
            .outbox
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
        {
            let _ = tx.send(event);
        }
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

    /// Applies a command and returns once it is on disk.
    pub async fn submit(&self, cmd: Command) -> Result<Change, SubmitError> {
        if self.store.is_failed() {
            return Err(StoreError::Failed(
                "an earlier write failed; restart lbmesh once the disk is fixed".into(),
            )
            .into());
        }
        let (change, pending) = {
            let mut reg = self.lock();
            let change = reg.apply(cmd, self.clock.now_ms())?;
            if !change.written {
                return Ok(change);
            }
            let pending = self.store.append(Record {
                key: change.key,
                entry: change.entry.clone(),
            });
            self.emit(OwnEvent::Set(
                change.key,
                change.entry.clone(),
                change.affects_config,
            ));
            (change, pending)
        };
        if change.affects_config {
            self.config_changes.send_if_modified(|g| {
                let newer = change.config_generation > *g;
                if newer {
                    *g = change.config_generation;
                }
                newer
            });
        }
        pending.durable().await?;
        Ok(change)
    }

    /// The current config generation (what the applier must reach).
    pub fn config_generation(&self) -> u64 {
        *self.config_changes.borrow()
    }

    /// The registry as served now.
    pub fn view(&self) -> RegistryView {
        let now = self.clock.now_ms();
        self.lock().view(now)
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

    /// Forgets expired leases and rewrites the store with what still matters.
    pub async fn compact(&self) -> Result<(), StoreError> {
        let pending = {
            let mut reg = self.lock();
            let own = reg.origin().clone();
            for (key, origin) in reg.collect_garbage(self.clock.now_ms()) {
                if origin == own {
                    self.emit(OwnEvent::Remove(key));
                }
            }
            let records = reg
                .own_entries()
                .map(|(k, e)| Record {
                    key: *k,
                    entry: e.clone(),
                })
                .collect();
            self.store.compact(records)
        };
        pending.durable().await
    }
}
