//! The event log: one structured line for each thing an operator wants to
//! know happened on this peer (accepted writes, lease ends, peers, the VIP,
//! quarantines, reloads), and a ring of the recent ones for `GET /v1/events`
//! and the status page.
//!
//! Every event goes to the `lbmesh::events` tracing target, so
//! `LBMESH_LOG=lbmesh::events=warn` keeps only the bad news and
//! `LBMESH_LOG_FORMAT=json` makes each a JSON line with one field per value.
//! Renewals are the exception: a busy mesh renews tens of thousands of
//! leases a second, so a renewal is a debug line only, and stays out of the ring.

pub mod diff;

use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use crate::clock::Clock;
use crate::registry::{Key, LISTING_RUN_KEYS, Outcome};
use crate::shared::SharedRegistry;

/// The tracing target of every event line.
pub const TARGET: &str = "lbmesh::events";

/// How many recent events a peer keeps by default.
pub const DEFAULT_CAPACITY: usize = 1000;

/// How much an event matters, as its log line's level says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    Debug,
    Info,
    Warn,
    Error,
}

/// What happened, with the values that say to what.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum EventKind {
    /// This peer accepted a write from a client.
    Write {
        /// `registered`, `renewed`, `updated`, `deleted` or `absent`.
        action: Outcome,
        frontend: u16,
        server: SocketAddr,
        name: String,
        /// The lease granted, for adds and renewals.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        lease_seconds: Option<u64>,
        /// The peer that accepted it (this one).
        peer: String,
        /// Where the request came from.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        client: Option<IpAddr>,
    },
    /// A server's lease ended without a renewal: it left the config.
    LeaseExpired {
        frontend: u16,
        server: SocketAddr,
        name: String,
        /// The peer that accepted the last write for it.
        peer: String,
    },
    /// A peer not seen before is live.
    PeerJoined {
        peer: String,
        incarnation: u64,
        gossip_addr: String,
    },
    /// A live peer stopped answering.
    PeerDead { peer: String, incarnation: u64 },
    /// A dead peer is live again, or a peer restarted (a new incarnation).
    PeerBack {
        peer: String,
        incarnation: u64,
        restarted: bool,
    },
    /// A dead peer's state was dropped (past the dead-peer grace period).
    PeerForgotten { peer: String },
    /// keepalived reported a new VRRP state for this peer.
    VrrpState {
        instance: String,
        state: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        previous: Option<String>,
    },
    /// The peer holding the floating IP changed (as the live peers report it).
    VipMoved {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        from: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        to: Option<String>,
    },
    /// Two or more live peers hold the floating IP.
    SplitBrain { masters: Vec<String> },
    /// At most one live peer holds the floating IP again.
    SplitBrainOver { masters: Vec<String> },
    /// A frontend was left out of the config because it cannot be served here.
    Quarantined { frontend: u16, reason: String },
    /// A quarantined frontend is served again (or left the registry).
    QuarantineLifted { frontend: u16 },
    /// HAProxy was reloaded (or started) on a new config.
    Reload {
        cause: Cause,
        ok: bool,
        duration_ms: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<String>,
    },
    /// Servers changed through HAProxy's Runtime API, without a reload.
    RuntimeChange {
        cause: Cause,
        ok: bool,
        duration_ms: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<String>,
    },
    /// The supervised HAProxy died and was restarted.
    HaproxyRestarted {
        /// Restarts since lbmesh started.
        restarts: u64,
    },
}

/// Why HAProxy's config changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Cause {
    /// The first config of this process.
    Start,
    /// The registry changed (a write here or gossiped from a peer).
    Registry,
    /// A lease ended.
    Expiry,
    /// A retry: a failed apply or a quarantined frontend.
    Retry,
}

impl Cause {
    pub const ALL: [Cause; 4] = [Cause::Start, Cause::Registry, Cause::Expiry, Cause::Retry];

    pub fn as_str(self) -> &'static str {
        match self {
            Cause::Start => "start",
            Cause::Registry => "registry",
            Cause::Expiry => "expiry",
            Cause::Retry => "retry",
        }
    }
}

impl EventKind {
    /// The level of this event's log line.
    pub fn level(&self) -> Level {
        match self {
            EventKind::Write {
                action: Outcome::Renewed,
                ..
            } => Level::Debug,
            EventKind::Write { .. }
            | EventKind::LeaseExpired { .. }
            | EventKind::PeerJoined { .. }
            | EventKind::PeerBack { .. }
            | EventKind::PeerForgotten { .. }
            | EventKind::VipMoved { .. }
            | EventKind::SplitBrainOver { .. }
            | EventKind::QuarantineLifted { .. } => Level::Info,
            EventKind::VrrpState { state, .. } => {
                if state == "FAULT" {
                    Level::Warn
                } else {
                    Level::Info
                }
            }
            EventKind::Reload { ok, .. } => {
                if *ok {
                    Level::Info
                } else {
                    Level::Error
                }
            }
            EventKind::RuntimeChange { ok, .. } => {
                if *ok {
                    Level::Info
                } else {
                    Level::Warn
                }
            }
            EventKind::PeerDead { .. } => Level::Warn,
            EventKind::SplitBrain { .. }
            | EventKind::Quarantined { .. }
            | EventKind::HaproxyRestarted { .. } => Level::Error,
        }
    }

    /// The short sentence of this event's log line.
    pub fn message(&self) -> &'static str {
        match self {
            EventKind::Write { .. } => "write accepted",
            EventKind::LeaseExpired { .. } => "lease expired",
            EventKind::PeerJoined { .. } => "peer joined",
            EventKind::PeerDead { .. } => "peer dead",
            EventKind::PeerBack { .. } => "peer back",
            EventKind::PeerForgotten { .. } => "peer forgotten",
            EventKind::VrrpState { .. } => "VRRP state changed",
            EventKind::VipMoved { .. } => "floating IP moved",
            EventKind::SplitBrain { .. } => {
                "split brain: two or more live peers hold the floating IP"
            }
            EventKind::SplitBrainOver { .. } => "split brain over",
            EventKind::Quarantined { .. } => "frontend quarantined",
            EventKind::QuarantineLifted { .. } => "frontend quarantine lifted",
            EventKind::Reload { ok: true, .. } => "HAProxy reloaded",
            EventKind::Reload { ok: false, .. } => "HAProxy reload failed",
            EventKind::RuntimeChange { ok: true, .. } => "servers changed through the Runtime API",
            EventKind::RuntimeChange { ok: false, .. } => "Runtime API change failed",
            EventKind::HaproxyRestarted { .. } => "HAProxy died and was restarted",
        }
    }
}

/// One event as `GET /v1/events` returns it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// Increases by one per recorded event, from 1, for the life of the process.
    pub seq: u64,
    /// Unix milliseconds.
    pub at_ms: u64,
    pub level: Level,
    pub message: String,
    #[serde(flatten)]
    pub kind: EventKind,
}

/// The event log of one peer; cheap to clone, shared by every subsystem.
#[derive(Clone)]
pub struct Events {
    inner: Arc<Inner>,
}

struct Inner {
    clock: Arc<dyn Clock>,
    capacity: usize,
    // A std mutex: the critical sections push or copy out, and never await.
    ring: Mutex<Ring>,
}

#[derive(Default)]
struct Ring {
    last_seq: u64,
    events: VecDeque<Event>,
}

impl std::fmt::Debug for Events {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Events")
            .field("capacity", &self.inner.capacity)
            .finish()
    }
}

macro_rules! at_level {
    ($level:expr, $($rest:tt)+) => {
        match $level {
            Level::Debug => tracing::debug!(target: TARGET, $($rest)+),
            Level::Info => tracing::info!(target: TARGET, $($rest)+),
            Level::Warn => tracing::warn!(target: TARGET, $($rest)+),
            Level::Error => tracing::error!(target: TARGET, $($rest)+),
        }
    };
}

impl Events {
    /// An event log keeping the last `capacity` events, stamped by `clock`.
    pub fn new(capacity: usize, clock: Arc<dyn Clock>) -> Self {
        Self {
            inner: Arc::new(Inner {
                clock,
                capacity: capacity.max(1),
                ring: Mutex::new(Ring::default()),
            }),
        }
    }

    /// Logs `kind` and keeps it among the recent events (renewals are only logged).
    pub fn emit(&self, kind: EventKind) {
        let level = kind.level();
        log_line(&kind, level);
        if level == Level::Debug {
            return;
        }
        let at_ms = self.inner.clock.now_ms();
        let mut ring = self.inner.ring.lock().unwrap_or_else(|p| p.into_inner());
        ring.last_seq += 1;
        let event = Event {
            seq: ring.last_seq,
            at_ms,
            level,
            message: kind.message().to_owned(),
            kind,
        };
        if ring.events.len() == self.inner.capacity {
            ring.events.pop_front();
        }
        ring.events.push_back(event);
    }

    /// Records a write this peer accepted. A renewal costs nothing unless
    /// debug lines of [`TARGET`] are enabled.
    pub fn write(
        &self,
        action: Outcome,
        key: &Key,
        name: &str,
        lease_seconds: Option<u64>,
        peer: &str,
        client: Option<IpAddr>,
    ) {
        if action == Outcome::Renewed && !tracing::enabled!(target: TARGET, tracing::Level::DEBUG) {
            return;
        }
        self.emit(EventKind::Write {
            action,
            frontend: key.frontend,
            server: key.server,
            name: name.to_owned(),
            lease_seconds,
            peer: peer.to_owned(),
            client,
        });
    }

    /// Up to `limit` of the most recent events with a sequence number above
    /// `after`, oldest first.
    pub fn recent(&self, after: u64, limit: usize) -> Vec<Event> {
        let ring = self.inner.ring.lock().unwrap_or_else(|p| p.into_inner());
        let newer = ring.events.iter().filter(|e| e.seq > after);
        let skip = newer.clone().count().saturating_sub(limit);
        newer.skip(skip).cloned().collect()
    }

    /// The sequence number of the last recorded event (0 before the first).
    pub fn last_seq(&self) -> u64 {
        self.inner
            .ring
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .last_seq
    }

    /// The time on the event log's clock (Unix ms).
    pub fn now_ms(&self) -> u64 {
        self.inner.clock.now_ms()
    }

    /// How many events are kept.
    pub fn capacity(&self) -> usize {
        self.inner.capacity
    }
}

/// Emits a `lease_expired` event for every lease that ended after
/// `*after_ms`, then moves `*after_ms` to now. Call every second or so.
pub fn note_lease_ends(registry: &SharedRegistry, after_ms: &mut u64) {
    let now = registry.now_ms();
    if now <= *after_ms {
        return;
    }
    // Read in runs: at 100,000 servers one pass holds every write for
    // milliseconds, every second.
    let mut ended = Vec::new();
    let mut from = Some(0);
    while let Some(port) = from {
        from = registry
            .with(|r| r.leases_ended_from(port, LISTING_RUN_KEYS, *after_ms, now, &mut ended));
    }
    for (key, name, origin) in ended {
        registry.events().emit(EventKind::LeaseExpired {
            frontend: key.frontend,
            server: key.server,
            name: name.to_string(),
            peer: origin.node.to_string(),
        });
    }
    *after_ms = now;
}

/// Writes the event's log line: the message, `event=` and one field per value.
fn log_line(kind: &EventKind, level: Level) {
    let msg = kind.message();
    match kind {
        EventKind::Write {
            action,
            frontend,
            server,
            name,
            lease_seconds,
            peer,
            client,
        } => at_level!(
            level,
            event = "write",
            action = outcome_str(*action),
            frontend,
            %server,
            %name,
            lease_seconds,
            %peer,
            client = client.map(|c| c.to_string()),
            "{msg}"
        ),
        EventKind::LeaseExpired {
            frontend,
            server,
            name,
            peer,
        } => at_level!(level, event = "lease_expired", frontend, %server, %name, %peer, "{msg}"),
        EventKind::PeerJoined {
            peer,
            incarnation,
            gossip_addr,
        } => at_level!(level, event = "peer_joined", %peer, incarnation, %gossip_addr, "{msg}"),
        EventKind::PeerDead { peer, incarnation } => {
            at_level!(level, event = "peer_dead", %peer, incarnation, "{msg}")
        }
        EventKind::PeerBack {
            peer,
            incarnation,
            restarted,
        } => at_level!(level, event = "peer_back", %peer, incarnation, restarted, "{msg}"),
        EventKind::PeerForgotten { peer } => {
            at_level!(level, event = "peer_forgotten", %peer, "{msg}")
        }
        EventKind::VrrpState {
            instance,
            state,
            previous,
        } => at_level!(level, event = "vrrp_state", %instance, %state, previous, "{msg}"),
        EventKind::VipMoved { from, to } => {
            at_level!(level, event = "vip_moved", from, to, "{msg}")
        }
        EventKind::SplitBrain { masters } => {
            at_level!(level, event = "split_brain", masters = %masters.join(","), "{msg}")
        }
        EventKind::SplitBrainOver { masters } => {
            at_level!(level, event = "split_brain_over", masters = %masters.join(","), "{msg}")
        }
        EventKind::Quarantined { frontend, reason } => {
            at_level!(level, event = "quarantined", frontend, %reason, "{msg}")
        }
        EventKind::QuarantineLifted { frontend } => {
            at_level!(level, event = "quarantine_lifted", frontend, "{msg}")
        }
        EventKind::Reload {
            cause,
            ok,
            duration_ms,
            error,
        } => at_level!(
            level,
            event = "reload",
            cause = cause.as_str(),
            ok,
            duration_ms,
            error,
            "{msg}"
        ),
        EventKind::RuntimeChange {
            cause,
            ok,
            duration_ms,
            error,
        } => at_level!(
            level,
            event = "runtime_change",
            cause = cause.as_str(),
            ok,
            duration_ms,
            error,
            "{msg}"
        ),
        EventKind::HaproxyRestarted { restarts } => {
            at_level!(level, event = "haproxy_restarted", restarts, "{msg}")
        }
    }
}

fn outcome_str(o: Outcome) -> &'static str {
    match o {
        Outcome::Registered => "registered",
        Outcome::Renewed => "renewed",
        Outcome::Updated => "updated",
        Outcome::Deleted => "deleted",
        Outcome::Absent => "absent",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fixed(u64);
    impl Clock for Fixed {
        fn now_ms(&self) -> u64 {
            self.0
        }
    }

    fn dead(n: u64) -> EventKind {
        EventKind::PeerDead {
            peer: format!("lb{n}"),
            incarnation: n,
        }
    }

    #[test]
    fn keeps_the_newest_events_in_order() {
        let ev = Events::new(3, Arc::new(Fixed(7)));
        for n in 1..=5 {
            ev.emit(dead(n));
        }
        let all = ev.recent(0, 100);
        assert_eq!(all.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![3, 4, 5]);
        assert_eq!(all[0].kind, dead(3));
        assert_eq!(all[0].at_ms, 7);
        assert_eq!(ev.last_seq(), 5);
        assert_eq!(
            ev.recent(3, 100).iter().map(|e| e.seq).collect::<Vec<_>>(),
            vec![4, 5]
        );
        // A limit keeps the newest, still oldest first.
        assert_eq!(
            ev.recent(0, 2).iter().map(|e| e.seq).collect::<Vec<_>>(),
            vec![4, 5]
        );
        assert!(ev.recent(5, 100).is_empty());
    }

    #[test]
    fn renewals_stay_out_of_the_ring() {
        let ev = Events::new(10, Arc::new(Fixed(0)));
        let key = Key {
            frontend: 443,
            server: "203.0.113.7:30443".parse().unwrap(),
        };
        ev.write(Outcome::Renewed, &key, "traefik", Some(900), "lb1", None);
        ev.emit(EventKind::Write {
            action: Outcome::Renewed,
            frontend: 443,
            server: key.server,
            name: "traefik".into(),
            lease_seconds: Some(900),
            peer: "lb1".into(),
            client: None,
        });
        assert_eq!(ev.last_seq(), 0);
        ev.write(
            Outcome::Registered,
            &key,
            "traefik",
            Some(900),
            "lb1",
            Some("198.51.100.4".parse().unwrap()),
        );
        assert_eq!(ev.recent(0, 10).len(), 1);
    }

    #[test]
    fn serializes_flat_with_the_event_name() {
        let ev = Events::new(10, Arc::new(Fixed(1_700_000_000_000)));
        ev.emit(EventKind::Write {
            action: Outcome::Registered,
            frontend: 443,
            server: "203.0.113.7:30443".parse().unwrap(),
            name: "traefik".into(),
            lease_seconds: Some(900),
            peer: "lb1".into(),
            client: Some("198.51.100.4".parse().unwrap()),
        });
        let e = &ev.recent(0, 1)[0];
        let v = serde_json::to_value(e).unwrap();
        assert_eq!(
            v,
            serde_json::json!({
                "seq": 1, "at_ms": 1_700_000_000_000u64, "level": "info",
                "message": "write accepted", "event": "write", "action": "registered",
                "frontend": 443, "server": "203.0.113.7:30443", "name": "traefik",
                "lease_seconds": 900, "peer": "lb1", "client": "198.51.100.4"
            })
        );
        let back: Event = serde_json::from_value(v).unwrap();
        assert_eq!(&back, e);
    }

    #[test]
    fn levels_say_how_bad() {
        let table = [
            (dead(1), Level::Warn),
            (
                EventKind::SplitBrain {
                    masters: vec!["a".into(), "b".into()],
                },
                Level::Error,
            ),
            (
                EventKind::Reload {
                    cause: Cause::Registry,
                    ok: false,
                    duration_ms: 1,
                    error: Some("x".into()),
                },
                Level::Error,
            ),
            (
                EventKind::Reload {
                    cause: Cause::Registry,
                    ok: true,
                    duration_ms: 1,
                    error: None,
                },
                Level::Info,
            ),
            (
                EventKind::VrrpState {
                    instance: "VI_1".into(),
                    state: "FAULT".into(),
                    previous: None,
                },
                Level::Warn,
            ),
        ];
        for (kind, level) in table {
            assert_eq!(kind.level(), level, "{kind:?}");
        }
    }
}
