//! This peer's VRRP state as keepalived last reported it, published to the
//! mesh; a new state runs its transition hook.

use std::sync::{Arc, Mutex};

use tokio::sync::watch;

use super::{Hooks, Notification, VrrpState};
use crate::clock::{Clock, SystemClock};
use crate::events::{EventKind, Events};
use crate::failover::claim::Claim;

/// This peer's VRRP state, as last reported, shared with the mesh.
#[derive(Clone)]
pub struct Vrrp {
    /// The last notification and when its state began (wall-clock ms).
    current: Arc<Mutex<Option<(Notification, u64)>>>,
    published: watch::Sender<Option<String>>,
    hooks: Arc<Hooks>,
    /// Hooks run one at a time, in the order of the transitions: a BACKUP
    /// hook releasing an address must finish before the MASTER hook claims it.
    queue: tokio::sync::mpsc::UnboundedSender<(String, Vec<String>, VrrpState, String)>,
    events: Events,
}

impl Vrrp {
    /// Call within a tokio runtime: hooks run on a task of their own.
    pub fn new(hooks: Hooks, events: Events) -> (Vrrp, watch::Receiver<Option<String>>) {
        let (published, rx) = watch::channel(None);
        let (queue, mut jobs) =
            tokio::sync::mpsc::unbounded_channel::<(String, Vec<String>, VrrpState, String)>();
        tokio::spawn(async move {
            while let Some((program, args, state, name)) = jobs.recv().await {
                super::hooks::run_hook(&program, &args, state, &name).await;
            }
        });
        (
            Vrrp {
                current: Arc::default(),
                published,
                hooks: Arc::new(hooks),
                queue,
                events,
            },
            rx,
        )
    }

    pub fn current(&self) -> Option<Notification> {
        self.claim_with_notification().map(|(n, _)| n)
    }

    /// This peer's state as it publishes it to the mesh.
    pub fn claim(&self) -> Option<Claim> {
        self.claim_with_notification().map(|(_, c)| c)
    }

    fn claim_with_notification(&self) -> Option<(Notification, Claim)> {
        let cur = self.current.lock().unwrap_or_else(|p| p.into_inner());
        cur.as_ref().map(|(n, since_ms)| {
            (
                n.clone(),
                Claim {
                    state: n.state,
                    instance: n.name.clone(),
                    since_ms: *since_ms,
                },
            )
        })
    }

    /// Records a notification; runs the hook of a new state.
    pub fn report(&self, n: Notification) {
        let now_ms = SystemClock.now_ms();
        let (previous, claim) = {
            let mut cur = self.current.lock().unwrap_or_else(|p| p.into_inner());
            let since_ms = match cur.as_ref() {
                Some((p, since)) if p.state == n.state && p.name == n.name => *since,
                _ => now_ms,
            };
            let previous = cur.as_ref().map(|(p, _)| p.state);
            *cur = Some((n.clone(), since_ms));
            (
                previous,
                Claim {
                    state: n.state,
                    instance: n.name.clone(),
                    since_ms,
                },
            )
        };
        let changed = previous.is_none_or(|p| p != n.state);
        if changed {
            self.events.emit(EventKind::VrrpState {
                instance: n.name.clone(),
                state: n.state.to_string(),
                previous: previous.map(|p| p.to_string()),
            });
        } else {
            tracing::debug!(instance = %n.name, state = %n.state, priority = ?n.priority, "VRRP state reported again by keepalived");
        }
        self.published.send_replace(Some(claim.to_string()));
        if changed {
            let hook = match n.state {
                VrrpState::Master => &self.hooks.on_master,
                VrrpState::Backup => &self.hooks.on_backup,
                VrrpState::Fault => &self.hooks.on_fault,
                VrrpState::Stop => return,
            };
            if let Some((program, args)) = hook.split_first() {
                let _ = self
                    .queue
                    .send((program.clone(), args.to_vec(), n.state, n.name.clone()));
            }
        }
    }
}
