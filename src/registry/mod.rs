//! The backend registry: validated commands in, leased servers out. Pure: time
//! is an argument, I/O happens elsewhere.

pub mod backend_policy;
pub mod bounds;
pub mod entry;
mod listing;
pub mod own;
pub mod policy;
mod summary;
pub mod types;
pub mod view;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::Duration;

use serde::Serialize;

pub use backend_policy::{AddressRefusal, BackendPolicy, LoopGuard};
pub use bounds::OverBound;
pub use entry::{Entry, Op};
pub use listing::{FrontendRun, LISTING_RUN_KEYS};
pub use own::Durability;
pub use policy::{PolicyError, PortPolicy, PortRange};
pub use summary::SummaryRuns;
pub use types::{FieldError, Key, Origin, PeerId, ServerAddr, ServiceName};
pub use view::{FrontendView, RefusedView, RegistryView, ServerView, Summary};

use crate::clock::{Hlc, Stamp};

/// How many entries are refused, by the peer that sent them and the reason.
pub type RefusedCounts = BTreeMap<(PeerId, &'static str), usize>;

/// What status shows of the registry at one instant.
#[derive(Debug, Clone)]
pub struct Report {
    pub summary: Summary,
    /// The first refused entries (see [`Registry::refused`]).
    pub refused: Vec<RefusedView>,
    pub counts: RefusedCounts,
}

/// Bounds that keep one registry's size and leases sane.
#[derive(Debug, Clone)]
pub struct Limits {
    pub default_ttl: Duration,
    pub min_ttl: Duration,
    pub max_ttl: Duration,
    pub max_servers: usize,
    pub max_servers_per_frontend: usize,
    pub max_frontends: usize,
    /// The clock skew between peers that must not change any outcome.
    pub max_clock_skew: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            // Three times the original client's 600 s interval.
            default_ttl: Duration::from_secs(1800),
            min_ttl: Duration::from_secs(10),
            max_ttl: Duration::from_secs(24 * 3600),
            max_servers: 10_000,
            max_servers_per_frontend: 256,
            max_frontends: 1_000,
            max_clock_skew: Duration::from_secs(10),
        }
    }
}

/// A request to change the registry, already validated field by field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Add the server to the frontend's pool, or renew its lease.
    Register {
        key: Key,
        name: ServiceName,
        send_proxy: bool,
        ttl: Option<Duration>,
    },
    /// Withdraw the server from the frontend's pool at once.
    Delete { key: Key, name: ServiceName },
}

impl Command {
    pub fn key(&self) -> Key {
        match self {
            Self::Register { key, .. } | Self::Delete { key, .. } => *key,
        }
    }
}

/// What a command did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// A server that was not in the pool now is.
    Registered,
    /// A server already in the pool got a new lease.
    Renewed,
    /// A server already in the pool got a new lease and changed options.
    Updated,
    /// A server in the pool left it.
    Deleted,
    /// A delete for a server that was not in the pool (recorded anyway, so an
    /// add for it still in flight elsewhere in the mesh loses).
    Absent,
}

/// The result of an accepted command: what to answer and what to persist.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub outcome: Outcome,
    pub key: Key,
    pub name: ServiceName,
    /// The entry this peer now holds for `key`; persist and replicate it.
    pub entry: Entry,
    /// The registry generation this change created (or found, for a no-op).
    pub generation: u64,
    /// The config generation HAProxy must reach to serve this change.
    pub config_generation: u64,
    /// Whether HAProxy's config must change for this to be served.
    pub affects_config: bool,
    /// Whether `entry` is a new write of this peer, to persist and publish
    /// (false for a no-op delete, where `entry` is the tombstone already
    /// known, and for a renewal that only moved the acknowledged lease end).
    pub written: bool,
    /// Own entries forgotten to keep the tombstones bounded; no longer published.
    pub forgotten: Vec<Key>,
    /// What the change needs before it is answered.
    pub durability: Durability,
}

/// Why a command was refused. Nothing changed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegistryError {
    #[error(transparent)]
    Policy(#[from] PolicyError),
    #[error(
        "frontend port {port} is owned by \"{owner}\"; \"{name}\" cannot claim it while it has live servers"
    )]
    NameConflict {
        port: u16,
        owner: ServiceName,
        name: ServiceName,
    },
    #[error("server {server} on frontend port {port} is registered by \"{owner}\", not \"{name}\"")]
    NotOwner {
        port: u16,
        server: SocketAddr,
        owner: ServiceName,
        name: ServiceName,
    },
    #[error(
        "a lease of {} is outside the allowed {} to {}",
        seconds(*requested), seconds(*min), seconds(*max)
    )]
    TtlOutOfRange {
        requested: Duration,
        min: Duration,
        max: Duration,
    },
    #[error("registry full: {0}")]
    Full(String),
    #[error(transparent)]
    Backend(#[from] AddressRefusal),
}

/// Why an entry is not served: what this peer's own policy and bounds say
/// about it, whoever accepted it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error(transparent)]
    Port(#[from] PolicyError),
    #[error(transparent)]
    Address(#[from] AddressRefusal),
    #[error("peer {peer} holds more than {max} entries (twice registry.max-servers)")]
    PeerOverBound { peer: PeerId, max: usize },
    /// Beyond this peer's own size bounds (the entries served first stay).
    #[error(transparent)]
    Bound(#[from] OverBound),
    /// Stamped or leased further ahead of this peer's clock than any lease
    /// may last: no sane clock writes it, and held it would win every later
    /// write (a stamp) or never expire (a lease end).
    #[error("{what} is {} ahead of this peer's clock, beyond registry.max-ttl", seconds(*ahead))]
    ClockAhead { what: &'static str, ahead: Duration },
}

impl Refusal {
    /// How status lists the server at `key` (named `name`, from `peer`)
    /// that this refusal leaves out.
    pub fn view(&self, key: &Key, name: &ServiceName, peer: &PeerId) -> RefusedView {
        RefusedView {
            frontend: key.frontend,
            server: key.server,
            name: name.clone(),
            peer: peer.clone(),
            reason: self.label(),
            message: self.to_string(),
        }
    }

    /// A stable label for metrics and JSON.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Port(PolicyError::Reserved(_)) => "port_reserved",
            Self::Port(PolicyError::NotAllowed { .. }) => "port_not_allowed",
            Self::Address(a) => a.label(),
            Self::PeerOverBound { .. } => "peer_over_bound",
            Self::Bound(b) => b.label(),
            Self::ClockAhead { .. } => "clock_ahead",
        }
    }
}

/// Gossiped entries refused on arrival are listed up to this many; beyond,
/// they are only counted (memory stays bounded whatever a peer sends).
const MAX_LISTED_REFUSALS: usize = 10_000;

/// Entries other peers sent that this peer's policy refuses on arrival.
#[derive(Debug, Default)]
struct RemoteRefusals {
    listed: BTreeMap<(PeerId, Key), (ServiceName, Refusal)>,
    /// Refusals beyond the listed ones, by peer and reason.
    unlisted: BTreeMap<(PeerId, &'static str), usize>,
}

/// A duration as people write it in the config (`30s`, `1h`).
fn seconds(d: Duration) -> String {
    humantime::format_duration(Duration::from_secs(d.as_secs())).to_string()
}

/// What merging a gossiped entry did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Merge {
    pub changed: bool,
    pub affects_config: bool,
}

/// The entries of one key, one per origin, in origin order. A sorted Vec
/// rather than a BTreeMap: most keys have one or two entries, and a BTreeMap
/// node reserves room for eleven (about a kilobyte per server).
#[derive(Debug, Clone, Default)]
struct PeerEntries(Vec<(Origin, Entry)>);

impl PeerEntries {
    fn get(&self, origin: &Origin) -> Option<&Entry> {
        self.0
            .binary_search_by(|(o, _)| o.cmp(origin))
            .ok()
            .map(|i| &self.0[i].1)
    }

    fn insert(&mut self, origin: Origin, entry: Entry) {
        match self.0.binary_search_by(|(o, _)| o.cmp(&origin)) {
            Ok(i) => self.0[i].1 = entry,
            Err(i) => {
                // Grow by one: a Vec's first growth reserves four slots.
                self.0.reserve_exact(1);
                self.0.insert(i, (origin, entry));
            }
        }
    }

    fn remove(&mut self, origin: &Origin) {
        if let Ok(i) = self.0.binary_search_by(|(o, _)| o.cmp(origin)) {
            self.0.remove(i);
        }
    }

    fn iter(&self) -> impl Iterator<Item = (&Origin, &Entry)> {
        self.0.iter().map(|(o, e)| (o, e))
    }

    fn values(&self) -> impl Iterator<Item = &Entry> {
        self.0.iter().map(|(_, e)| e)
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl std::ops::Index<&Origin> for PeerEntries {
    type Output = Entry;
    fn index(&self, origin: &Origin) -> &Entry {
        self.get(origin).expect("the winner is one of the entries")
    }
}

impl<'a> IntoIterator for &'a PeerEntries {
    type Item = (&'a Origin, &'a Entry);
    type IntoIter = std::iter::Map<
        std::slice::Iter<'a, (Origin, Entry)>,
        fn(&'a (Origin, Entry)) -> (&'a Origin, &'a Entry),
    >;
    fn into_iter(self) -> Self::IntoIter {
        self.0.iter().map(|(o, e)| (o, e))
    }
}

/// All entries known for one key, by the peer that wrote them, and the winner.
#[derive(Debug, Clone, Default)]
struct KeyEntries {
    by_peer: PeerEntries,
    winner: Option<Origin>,
}

impl KeyEntries {
    fn winner(&self) -> Option<&Entry> {
        self.winner.as_ref().and_then(|p| self.by_peer.get(p))
    }

    fn newest_stamp(&self) -> Stamp {
        self.by_peer
            .values()
            .map(|e| e.stamp)
            .max()
            .unwrap_or_default()
    }

    fn newest_delete(&self) -> Stamp {
        self.by_peer
            .values()
            .filter(|e| e.is_delete())
            .map(|e| e.stamp)
            .max()
            .unwrap_or_default()
    }
}

/// The registry state of one peer: its own entries and those gossiped from others.
#[derive(Debug)]
pub struct Registry {
    origin: Origin,
    limits: Limits,
    policy: PortPolicy,
    backends: BackendPolicy,
    guard: LoopGuard,
    hlc: Hlc,
    keys: BTreeMap<Key, KeyEntries>,
    /// Entries stored per other peer (all its incarnations): bounded.
    per_peer: BTreeMap<PeerId, usize>,
    remote_refused: RemoteRefusals,
    /// Keys whose winner is an add (live or expired but not yet collected).
    adds: usize,
    /// Keys whose winner is a delete.
    tombstones: usize,
    /// This peer's own tombstones, oldest first: the ones forgotten first
    /// when a flood of deletes would outgrow the bound.
    own_tombstones: std::collections::BTreeSet<(Stamp, Key)>,
    /// Per frontend port, keys whose winner is an add.
    adds_per_frontend: BTreeMap<u16, usize>,
    generation: u64,
    config_generation: u64,
    /// Own lease ends acknowledged beyond the published entry's (renewals
    /// answered from memory).
    leases: BTreeMap<Key, Entry>,
    /// Own keys renewed since the last background flush.
    dirty: BTreeSet<Key>,
    /// Own writes not yet on disk, with what each key held before.
    unsettled: BTreeMap<Key, own::Before>,
    /// Per frontend port, its owner as last computed for a renewal; see
    /// [`OwnerMemo`].
    owners: BTreeMap<u16, OwnerMemo>,
    /// Bumps whenever anything a [`Summary`] is computed from changes: an
    /// entry, or the loop guard (the other policies are set at start).
    state: u64,
    /// The last summary computed; see [`summary::SummaryMemo`].
    summary: std::sync::Mutex<Option<summary::SummaryMemo>>,
    /// What was served when a registration last found the adds held at a
    /// bound; see [`ServedMemo`].
    served: Option<ServedMemo>,
}

/// How many servers the view served, in all and per frontend, at state
/// `state`. Until the state changes it holds until the first lease then
/// live ends, `until_ms`: a registration refused for room is refused again
/// from it, without a walk of the whole registry (a token holder looping
/// on a full frontend would otherwise hold every write behind one).
#[derive(Debug, Clone)]
struct ServedMemo {
    state: u64,
    until_ms: Option<u64>,
    servers: usize,
    per_frontend: BTreeMap<u16, usize>,
}

impl ServedMemo {
    fn holds(&self, state: u64, now_ms: u64) -> bool {
        self.state == state && self.until_ms.is_none_or(|t| now_ms < t)
    }

    fn occupancy(&self, frontend: u16) -> bounds::Occupancy {
        bounds::Occupancy {
            servers: self.servers,
            frontends: self.per_frontend.len(),
            on_frontend: self.per_frontend.get(&frontend).copied().unwrap_or(0),
        }
    }
}

/// A frontend's owner as computed at `from_ms`. Until one of its keys changes
/// (which drops the memo) its live adds can only end, so the owner stays the
/// same until the first of their leases ends at `until_ms`.
#[derive(Debug, Clone)]
struct OwnerMemo {
    owner: Option<ServiceName>,
    from_ms: u64,
    until_ms: u64,
}

/// How `origin`'s entry serves its server: an add, as the view shows it.
fn server_view(origin: &Origin, e: &Entry) -> Option<ServerView> {
    match &e.op {
        Op::Add {
            send_proxy,
            since_ms,
            expires_ms,
            ..
        } => Some(ServerView {
            send_proxy: *send_proxy,
            since_ms: *since_ms,
            expires_ms: *expires_ms,
            origin: origin.clone(),
            stamp: e.stamp,
        }),
        Op::Delete { .. } => None,
    }
}

impl Registry {
    pub fn new(origin: Origin, limits: Limits, policy: PortPolicy) -> Self {
        Self {
            origin,
            limits,
            policy,
            backends: BackendPolicy::default(),
            guard: LoopGuard::default(),
            hlc: Hlc::default(),
            keys: BTreeMap::new(),
            per_peer: BTreeMap::new(),
            remote_refused: RemoteRefusals::default(),
            adds: 0,
            tombstones: 0,
            own_tombstones: std::collections::BTreeSet::new(),
            adds_per_frontend: BTreeMap::new(),
            generation: 0,
            config_generation: 0,
            leases: BTreeMap::new(),
            dirty: BTreeSet::new(),
            unsettled: BTreeMap::new(),
            owners: BTreeMap::new(),
            state: 0,
            summary: std::sync::Mutex::new(None),
            served: None,
        }
    }

    /// Sets which backend addresses the operator allows.
    pub fn with_backends(mut self, backends: BackendPolicy) -> Self {
        self.backends = backends;
        self.state += 1;
        self
    }

    pub fn backends(&self) -> &BackendPolicy {
        &self.backends
    }

    pub fn port_policy(&self) -> &PortPolicy {
        &self.policy
    }

    pub fn loop_guard(&self) -> &LoopGuard {
        &self.guard
    }

    /// Replaces the mesh's addresses and ports that backends must not point
    /// at. Returns whether anything changed; the served view may then change,
    /// so the config generation moves on.
    pub fn set_loop_guard(&mut self, guard: LoopGuard) -> bool {
        if guard == self.guard {
            return false;
        }
        self.guard = guard;
        self.state += 1;
        self.generation += 1;
        self.config_generation += 1;
        true
    }

    /// What this peer's own policy says of an entry for `key`, given which
    /// frontend ports are live: the static part (ports, addresses) and the
    /// loop guard.
    fn admit(&self, key: &Key, is_frontend: impl Fn(u16) -> bool) -> Result<(), Refusal> {
        self.admit_statically(key)?;
        self.guard
            .check(key.server.ip(), key.server.port(), |p| {
                p == key.frontend || is_frontend(p)
            })
            .map_err(Refusal::from)
    }

    /// The part of [`Registry::admit`] that depends on the key alone.
    fn admit_statically(&self, key: &Key) -> Result<(), Refusal> {
        self.policy.check(key.frontend)?;
        self.backends.check(key.server.ip())?;
        Ok(())
    }

    /// Refuses a gossiped entry written, or leased, further ahead of
    /// `now_ms` than the longest lease plus the skew bound.
    fn check_times(&self, e: &Entry, now_ms: u64) -> Result<(), Refusal> {
        let limit = (self.limits.max_ttl + self.limits.max_clock_skew).as_millis() as u64;
        let horizon = now_ms.saturating_add(limit);
        let (what, at) = match e.op {
            Op::Add { expires_ms, .. } if expires_ms > horizon => ("its lease end", expires_ms),
            _ if e.stamp.wall_ms() > horizon => ("its write", e.stamp.wall_ms()),
            _ => return Ok(()),
        };
        Err(Refusal::ClockAhead {
            what,
            ahead: Duration::from_millis(at - now_ms),
        })
    }

    /// Whether a frontend has a live server at `now_ms`.
    fn is_live_frontend(&self, port: u16, now_ms: u64) -> bool {
        self.live_in(port, now_ms).next().is_some()
    }

    /// Refuses a registration that would build a forwarding loop: a server on
    /// a mesh address at a frontend or lbmesh port, or a new frontend on a
    /// port some mesh-address server already points at.
    fn check_loop(&self, key: &Key, now_ms: u64) -> Result<(), RegistryError> {
        self.guard.check(key.server.ip(), key.server.port(), |p| {
            p == key.frontend || self.is_live_frontend(p, now_ms)
        })?;
        if self.is_live_frontend(key.frontend, now_ms) {
            return Ok(());
        }
        for (k, ke) in &self.keys {
            let live = ke.winner().and_then(|e| e.live_until(now_ms)).is_some();
            if live && k.server.port() == key.frontend && self.guard.is_mesh(k.server.ip()) {
                return Err(AddressRefusal::LoopTarget {
                    frontend: key.frontend,
                    server: k.server,
                    of: k.frontend,
                }
                .into());
            }
        }
        Ok(())
    }

    pub fn node(&self) -> &PeerId {
        &self.origin.node
    }

    /// This peer in its current incarnation: the origin of its own writes.
    pub fn origin(&self) -> &Origin {
        &self.origin
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    pub fn generation(&self) -> u64 {
        self.generation
    }

    pub fn config_generation(&self) -> u64 {
        self.config_generation
    }

    /// Validates and applies one command at wall time `now_ms`.
    pub fn apply(&mut self, cmd: Command, now_ms: u64) -> Result<Change, RegistryError> {
        match cmd {
            Command::Register {
                key,
                name,
                send_proxy,
                ttl,
            } => self.register(key, name, send_proxy, ttl, now_ms),
            Command::Delete { key, name } => self.delete(key, name, now_ms),
        }
    }

    fn register(
        &mut self,
        key: Key,
        name: ServiceName,
        send_proxy: bool,
        ttl: Option<Duration>,
        now_ms: u64,
    ) -> Result<Change, RegistryError> {
        self.policy.check(key.frontend)?;
        self.backends.check(key.server.ip())?;
        self.check_loop(&key, now_ms)?;
        let ttl = ttl.unwrap_or(self.limits.default_ttl);
        if ttl < self.limits.min_ttl || ttl > self.limits.max_ttl {
            return Err(RegistryError::TtlOutOfRange {
                requested: ttl,
                min: self.limits.min_ttl,
                max: self.limits.max_ttl,
            });
        }
        if let Some(owner) = self.owner(key.frontend, now_ms) {
            if owner != name {
                return Err(RegistryError::NameConflict {
                    port: key.frontend,
                    owner,
                    name,
                });
            }
        }
        let current = self.keys.get(&key);
        let live = current
            .and_then(KeyEntries::winner)
            .filter(|e| e.live_until(now_ms).is_some() && e.name() == &name)
            .cloned();
        if live.is_none() {
            self.check_room(key, now_ms)?;
        }
        let observed = self.newest_delete(&key);
        let stamp = self.hlc.tick(now_ms);
        let (outcome, since_ms) = match &live {
            Some(Entry {
                op:
                    Op::Add {
                        since_ms,
                        send_proxy: was,
                        ..
                    },
                ..
            }) => (
                if *was == send_proxy {
                    Outcome::Renewed
                } else {
                    Outcome::Updated
                },
                *since_ms,
            ),
            _ => (Outcome::Registered, now_ms),
        };
        let entry = Entry {
            stamp,
            observed,
            op: Op::Add {
                name: name.clone(),
                send_proxy,
                since_ms,
                expires_ms: now_ms.saturating_add(ttl.as_millis() as u64),
            },
        };
        Ok(self.commit_own(key, name, entry, outcome))
    }

    fn delete(
        &mut self,
        key: Key,
        name: ServiceName,
        now_ms: u64,
    ) -> Result<Change, RegistryError> {
        let current = self.keys.get(&key).and_then(KeyEntries::winner);
        let was_live = match current {
            Some(e) if e.live_until(now_ms).is_some() => {
                if e.name() != &name {
                    return Err(RegistryError::NotOwner {
                        port: key.frontend,
                        server: key.server,
                        owner: e.name().clone(),
                        name,
                    });
                }
                true
            }
            Some(e) if e.is_delete() => {
                // Already withdrawn everywhere this peer knows of.
                return Ok(Change {
                    outcome: Outcome::Absent,
                    key,
                    name,
                    entry: e.clone(),
                    generation: self.generation,
                    config_generation: self.config_generation,
                    affects_config: false,
                    written: false,
                    forgotten: Vec::new(),
                    durability: Durability::Disk,
                });
            }
            _ => false,
        };
        let observed = self
            .keys
            .get(&key)
            .map(KeyEntries::newest_stamp)
            .unwrap_or_default();
        let entry = Entry {
            stamp: self.hlc.tick(now_ms),
            observed,
            op: Op::Delete { name: name.clone() },
        };
        let outcome = if was_live {
            Outcome::Deleted
        } else {
            Outcome::Absent
        };
        let mut change = self.commit_own(key, name, entry, outcome);
        change.forgotten = self.bound_own_tombstones(now_ms);
        Ok(change)
    }

    /// Keeps this peer's own tombstones within `max-servers`: forgets expired
    /// ones, then the oldest. A delete is never refused for want of room (a
    /// token holder deleting random servers must not block real deletes);
    /// forgetting an old tombstone only matters if an add it beat is still
    /// held by a peer that has not heard of the delete, which gossip makes rare.
    /// Returns the keys whose own entry went.
    pub fn bound_own_tombstones(&mut self, now_ms: u64) -> Vec<Key> {
        let mut forgotten = Vec::new();
        if self.own_tombstones.len() <= self.limits.max_servers {
            return forgotten;
        }
        let own = self.origin.clone();
        for (key, origin) in self.collect_garbage(now_ms) {
            if origin == own {
                forgotten.push(key);
            }
        }
        while self.own_tombstones.len() > self.limits.max_servers {
            let Some((_, key)) = self.own_tombstones.first().copied() else {
                break;
            };
            // Put back if the delete that forgets it does not reach the disk.
            self.unsettle(key);
            self.set_entry(key, own.clone(), None);
            forgotten.push(key);
        }
        forgotten
    }

    fn commit_own(
        &mut self,
        key: Key,
        name: ServiceName,
        entry: Entry,
        outcome: Outcome,
    ) -> Change {
        let affects_config = outcome != Outcome::Renewed && outcome != Outcome::Absent;
        let origin = self.origin.clone();
        self.unsettle(key);
        self.set_entry(key, origin, Some(entry.clone()));
        self.generation += 1;
        if affects_config {
            self.config_generation += 1;
        }
        Change {
            outcome,
            key,
            name,
            entry,
            generation: self.generation,
            config_generation: self.config_generation,
            affects_config,
            written: true,
            forgotten: Vec::new(),
            durability: Durability::Disk,
        }
    }

    /// Refuses a new server if it would exceed a size bound. While every add
    /// held fits the bounds with room for one more, so does what is served,
    /// and that is all it takes; otherwise expired entries are collected,
    /// and then only what is served counts: entries this peer refuses to
    /// serve (beyond its bounds, or against its policy) never keep its own
    /// clients out.
    fn check_room(&mut self, key: Key, now_ms: u64) -> Result<(), RegistryError> {
        // Every add held is served while they all fit the bounds.
        let room = |r: &Self| {
            let held = bounds::Occupancy {
                servers: r.adds,
                frontends: r.adds_per_frontend.len(),
                on_frontend: r.adds_per_frontend.get(&key.frontend).copied().unwrap_or(0),
            };
            held.full(&r.limits, key.frontend).is_none()
                && bounds::fits(&r.limits, r.adds_per_frontend.values().copied())
        };
        if room(self) {
            return Ok(());
        }
        // Only what is served counts; what it was is kept until the
        // registry changes or a lease ends.
        let served = match self.served.as_ref().filter(|m| m.holds(self.state, now_ms)) {
            Some(memo) => memo.occupancy(key.frontend),
            None => {
                self.collect_garbage(now_ms);
                if room(self) {
                    return Ok(());
                }
                let view = self.view(now_ms);
                let memo = ServedMemo {
                    state: self.state,
                    until_ms: view.next_expiry_ms,
                    servers: view.server_count(),
                    per_frontend: view
                        .frontends
                        .iter()
                        .map(|(port, f)| (*port, f.servers.len()))
                        .collect(),
                };
                let served = memo.occupancy(key.frontend);
                self.served = Some(memo);
                served
            }
        };
        match served.full(&self.limits, key.frontend) {
            None => Ok(()),
            Some(why) => Err(RegistryError::Full(why)),
        }
    }

    /// The newest stamp this peer knows for `key`, from any origin.
    pub fn newest_stamp(&self, key: &Key) -> Stamp {
        self.keys
            .get(key)
            .map(KeyEntries::newest_stamp)
            .unwrap_or_default()
    }

    /// The newest delete of `key` this peer knows, from any origin.
    pub fn newest_delete(&self, key: &Key) -> Stamp {
        self.keys
            .get(key)
            .map(KeyEntries::newest_delete)
            .unwrap_or_default()
    }

    /// The name owning a frontend at `now_ms`: the oldest live claim.
    pub fn owner(&self, frontend: u16, now_ms: u64) -> Option<ServiceName> {
        self.live_in(frontend, now_ms)
            .min_by(|a, b| (a.1, a.0).cmp(&(b.1, b.0)))
            .map(|(name, _)| name.clone())
    }

    /// Whether `name` owns `frontend` at `now_ms`: [`Registry::owner`],
    /// remembered per frontend, so renewing one of many servers does not
    /// look at all of them every time.
    pub fn is_owner(&mut self, frontend: u16, name: &ServiceName, now_ms: u64) -> bool {
        if let Some(m) = self.owners.get(&frontend)
            && (m.from_ms..m.until_ms).contains(&now_ms)
        {
            return m.owner.as_ref() == Some(name);
        }
        let owner = self.owner(frontend, now_ms);
        let until_ms = self
            .live_in_with_ends(frontend, now_ms)
            .map(|(_, _, end)| end)
            .min()
            .unwrap_or(u64::MAX);
        let is = owner.as_ref() == Some(name);
        self.owners.insert(
            frontend,
            OwnerMemo {
                owner,
                from_ms: now_ms,
                until_ms,
            },
        );
        is
    }

    /// Live adds of one frontend as (name, since_ms).
    fn live_in(&self, frontend: u16, now_ms: u64) -> impl Iterator<Item = (&ServiceName, u64)> {
        self.live_in_with_ends(frontend, now_ms)
            .map(|(name, since, _)| (name, since))
    }

    /// Live adds of one frontend as (name, since_ms, lease end).
    fn live_in_with_ends(
        &self,
        frontend: u16,
        now_ms: u64,
    ) -> impl Iterator<Item = (&ServiceName, u64, u64)> {
        let lo = Key {
            frontend,
            server: SocketAddr::from(([0, 0, 0, 0], 0)),
        };
        self.keys
            .range(lo..)
            .take_while(move |(k, _)| k.frontend == frontend)
            .filter_map(move |(_, ke)| {
                let e = ke.winner()?;
                let end = e.live_until(now_ms)?;
                match &e.op {
                    Op::Add { name, since_ms, .. } => Some((name, *since_ms, end)),
                    Op::Delete { .. } => None,
                }
            })
    }

    /// Records `entry` as `peer`'s latest for `key` (or forgets it with `None`)
    /// and recomputes the winner. Used for own writes, restore and gossip.
    pub fn set_entry(&mut self, key: Key, peer: Origin, entry: Option<Entry>) {
        self.state += 1;
        self.owners.remove(&key.frontend);
        let ke = self.keys.entry(key).or_default();
        let before = ke.winner().map(Entry::is_delete);
        if peer == self.origin {
            if let Some(old) = ke.by_peer.get(&peer).filter(|e| e.is_delete()) {
                self.own_tombstones.remove(&(old.stamp, key));
            }
            if let Some(new) = entry.as_ref().filter(|e| e.is_delete()) {
                self.own_tombstones.insert((new.stamp, key));
            }
        }
        let had = ke.by_peer.get(&peer).is_some();
        let has = entry.is_some();
        if peer != self.origin && had != has {
            let n = self.per_peer.entry(peer.node.clone()).or_default();
            if has {
                *n += 1;
            } else {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    self.per_peer.remove(&peer.node);
                }
            }
        }
        match entry {
            Some(e) => {
                self.hlc.observe(e.stamp);
                ke.by_peer.insert(peer, e);
            }
            None => {
                ke.by_peer.remove(&peer);
            }
        }
        ke.winner =
            entry::winner(ke.by_peer.iter(), self.limits.max_clock_skew).map(|(p, _)| p.clone());
        let after = ke.winner().map(Entry::is_delete);
        if ke.by_peer.is_empty() {
            self.keys.remove(&key);
        }
        self.count(key.frontend, before, -1);
        self.count(key.frontend, after, 1);
    }

    /// Like [`Registry::set_entry`] for a write that arrived by gossip.
    /// Returns whether the registry changed and whether HAProxy must follow
    /// (a lease renewal alone does not need it).
    pub fn merge_remote(
        &mut self,
        key: Key,
        peer: Origin,
        entry: Option<Entry>,
        now_ms: u64,
    ) -> Merge {
        if let Some(e) = &entry {
            let known = self
                .keys
                .get(&key)
                .is_some_and(|ke| ke.by_peer.get(&peer).is_some());
            let bound = 2 * self.limits.max_servers;
            let refusal =
                self.admit_statically(&key)
                    .err()
                    .or_else(|| self.check_times(e, now_ms).err())
                    .or_else(|| {
                        (!known && self.per_peer.get(&peer.node).copied().unwrap_or(0) >= bound)
                            .then(|| Refusal::PeerOverBound {
                                peer: peer.node.clone(),
                                max: bound,
                            })
                    });
            if let Some(why) = refusal {
                self.refuse_remote(&peer.node, key, e.name().clone(), why);
                if !known {
                    return Merge::default();
                }
                // What was held of it before is no longer that peer's entry.
                return self.set_remote(key, peer, None, now_ms);
            }
        }
        self.forget_refusal(&peer.node, &key);
        self.set_remote(key, peer, entry, now_ms)
    }

    fn set_remote(&mut self, key: Key, peer: Origin, entry: Option<Entry>, now_ms: u64) -> Merge {
        let before = self.served_as(&key, now_ms);
        let old = self
            .keys
            .get(&key)
            .and_then(|ke| ke.by_peer.get(&peer))
            .cloned();
        if old == entry {
            return Merge::default();
        }
        self.set_entry(key, peer, entry);
        let affects_config = self.served_as(&key, now_ms) != before;
        self.generation += 1;
        if affects_config {
            self.config_generation += 1;
        }
        Merge {
            changed: true,
            affects_config,
        }
    }

    fn refuse_remote(&mut self, peer: &PeerId, key: Key, name: ServiceName, why: Refusal) {
        let r = &mut self.remote_refused;
        let slot = (peer.clone(), key);
        if r.listed.len() < MAX_LISTED_REFUSALS || r.listed.contains_key(&slot) {
            r.listed.insert(slot, (name, why));
        } else {
            *r.unlisted.entry((peer.clone(), why.label())).or_default() += 1;
        }
    }

    fn forget_refusal(&mut self, peer: &PeerId, key: &Key) {
        if !self.remote_refused.listed.is_empty() {
            self.remote_refused.listed.remove(&(peer.clone(), *key));
        }
    }

    /// Forgets the refusals of entries from `peer` (its state was dropped).
    pub fn forget_refusals_of(&mut self, peer: &PeerId) {
        let r = &mut self.remote_refused;
        r.listed.retain(|(p, _), _| p != peer);
        r.unlisted.retain(|(p, _), _| p != peer);
    }

    /// Entries this peer does not serve because its own policy or bounds
    /// refuse them, at most `max` listed: those refused on arrival by gossip,
    /// then those refused when served (forwarding loops).
    pub fn refused(&self, now_ms: u64, max: usize) -> Vec<RefusedView> {
        let in_view = self.refused_when_served(&self.summary(now_ms), now_ms);
        self.list_refused(in_view, max)
    }

    /// How many entries are refused, by the peer that sent them and the reason.
    pub fn refused_counts(&self, now_ms: u64) -> RefusedCounts {
        let in_view = self.refused_when_served(&self.summary(now_ms), now_ms);
        self.count_refused(&in_view)
    }

    /// [`Registry::summary`], [`Registry::refused`] and
    /// [`Registry::refused_counts`] together, from one pass over the registry
    /// when nothing is refused when served (what status shows).
    pub fn report(&self, now_ms: u64, max_refused: usize) -> Report {
        let summary = self.summary(now_ms);
        let in_view = self.refused_when_served(&summary, now_ms);
        self.report_of(summary, in_view, max_refused)
    }

    /// A [`Report`] from the `summary` and the entries refused when served
    /// (`in_view`, from a view of the same instant).
    pub fn report_of(
        &self,
        summary: Summary,
        in_view: Vec<RefusedView>,
        max_refused: usize,
    ) -> Report {
        Report {
            counts: self.count_refused(&in_view),
            refused: self.list_refused(in_view, max_refused),
            summary,
        }
    }

    /// Live entries this peer's own policy or bounds leave out of the view,
    /// given the `summary` of the same instant. Builds the view only when
    /// there are some: with many servers a view costs tens of milliseconds
    /// under the registry lock, and status and health read this at every
    /// request.
    fn refused_when_served(&self, summary: &Summary, now_ms: u64) -> Vec<RefusedView> {
        if summary.refused == 0 {
            return Vec::new();
        }
        self.view(now_ms).refused
    }

    fn list_refused(&self, in_view: Vec<RefusedView>, max: usize) -> Vec<RefusedView> {
        let mut out: Vec<RefusedView> = self
            .remote_refused
            .listed
            .iter()
            .take(max)
            .map(|((peer, key), (name, why))| why.view(key, name, peer))
            .collect();
        let room = max.saturating_sub(out.len());
        out.extend(in_view.into_iter().take(room));
        out
    }

    fn count_refused(&self, in_view: &[RefusedView]) -> RefusedCounts {
        let mut counts = RefusedCounts::new();
        for ((peer, _), (_, why)) in &self.remote_refused.listed {
            *counts.entry((peer.clone(), why.label())).or_default() += 1;
        }
        for (k, n) in &self.remote_refused.unlisted {
            *counts.entry(k.clone()).or_default() += n;
        }
        for r in in_view {
            *counts.entry((r.peer.clone(), r.reason)).or_default() += 1;
        }
        counts
    }

    /// What of `key` reaches the HAProxy config (or ownership) at `now_ms`.
    fn served_as(&self, key: &Key, now_ms: u64) -> Option<(ServiceName, bool, u64)> {
        let e = self.keys.get(key)?.winner()?;
        e.live_until(now_ms)?;
        match &e.op {
            Op::Add {
                name,
                send_proxy,
                since_ms,
                ..
            } => Some((name.clone(), *send_proxy, *since_ms)),
            Op::Delete { .. } => None,
        }
    }

    fn count(&mut self, frontend: u16, winner_is_delete: Option<bool>, delta: isize) {
        match winner_is_delete {
            None => {}
            Some(true) => self.tombstones = self.tombstones.saturating_add_signed(delta),
            Some(false) => {
                self.adds = self.adds.saturating_add_signed(delta);
                let n = self.adds_per_frontend.entry(frontend).or_default();
                *n = n.saturating_add_signed(delta);
                if *n == 0 {
                    self.adds_per_frontend.remove(&frontend);
                }
            }
        }
    }

    /// Servers whose lease ended in `(after_ms, upto_ms]` with nothing newer
    /// for them: the servers that left the view by expiry in that window,
    /// with their name and the peer that accepted their last write.
    pub fn leases_ended(&self, after_ms: u64, upto_ms: u64) -> Vec<(Key, ServiceName, Origin)> {
        let mut ended = Vec::new();
        self.leases_ended_from(0, usize::MAX, after_ms, upto_ms, &mut ended);
        ended
    }

    /// [`Registry::leases_ended`] for whole frontends from port `from` on,
    /// stopping once about `max_keys` keys have been read; appends to
    /// `ended` and returns the port the next run starts from (`None` once
    /// every key is read).
    pub fn leases_ended_from(
        &self,
        from: u16,
        max_keys: usize,
        after_ms: u64,
        upto_ms: u64,
        ended: &mut Vec<(Key, ServiceName, Origin)>,
    ) -> Option<u16> {
        let lo = Key {
            frontend: from,
            server: SocketAddr::from(([0, 0, 0, 0], 0)),
        };
        let mut last = None;
        for (read, (k, ke)) in self.keys.range(lo..).enumerate() {
            if read >= max_keys.max(1) && last != Some(k.frontend) {
                return Some(k.frontend);
            }
            last = Some(k.frontend);
            let Some(p) = ke.winner.as_ref() else {
                continue;
            };
            if let Op::Add {
                name, expires_ms, ..
            } = &ke.by_peer[p].op
            {
                if *expires_ms > after_ms && *expires_ms <= upto_ms {
                    ended.push((*k, name.clone(), p.clone()));
                }
            }
        }
        None
    }

    /// This peer's own entries: what it persists and publishes.
    pub fn own_entries(&self) -> impl Iterator<Item = (&Key, &Entry)> {
        self.keys
            .iter()
            .filter_map(|(k, ke)| ke.by_peer.get(&self.origin).map(|e| (k, e)))
    }

    /// Every entry held, own and other peers', as (key, origin, entry).
    pub fn entries(&self) -> impl Iterator<Item = (&Key, &Origin, &Entry)> {
        self.keys
            .iter()
            .flat_map(|(k, ke)| ke.by_peer.iter().map(move |(o, e)| (k, o, e)))
    }

    /// How many entries are held, own and other peers'.
    pub fn entry_count(&self) -> usize {
        self.keys.values().map(|ke| ke.by_peer.0.len()).sum()
    }

    /// Whether an entry still means anything at `now_ms`: a live add, or a
    /// tombstone young enough that an add it must beat could still be around.
    pub fn entry_matters(&self, entry: &Entry, now_ms: u64) -> bool {
        match entry.op {
            Op::Add { expires_ms, .. } => expires_ms > now_ms,
            Op::Delete { .. } => {
                let keep = self.limits.max_ttl + self.limits.max_clock_skew * 2;
                entry
                    .stamp
                    .wall_ms()
                    .saturating_add(keep.as_millis() as u64)
                    > now_ms
            }
        }
    }

    /// Forgets expired leases and old tombstones of every peer, returning what
    /// went. Does not bump generations: the view at `now_ms` is unchanged by
    /// forgetting what is no longer live.
    pub fn collect_garbage(&mut self, now_ms: u64) -> Vec<(Key, Origin)> {
        let mut dead: Vec<(Key, Origin)> = Vec::new();
        for (k, ke) in &self.keys {
            for (p, e) in &ke.by_peer {
                let renewed = *p == self.origin
                    && self
                        .leases
                        .get(k)
                        .is_some_and(|l| self.entry_matters(l, now_ms));
                if !self.entry_matters(e, now_ms) && !renewed {
                    dead.push((*k, p.clone()));
                }
            }
        }
        for (k, p) in &dead {
            self.set_entry(*k, p.clone(), None);
            if *p == self.origin {
                self.leases.remove(k);
                self.dirty.remove(k);
            }
        }
        dead
    }

    /// The registry as served at `now_ms`.
    pub fn view(&self, now_ms: u64) -> RegistryView {
        let mut frontends: BTreeMap<u16, FrontendView> = BTreeMap::new();
        let mut conflicts = Vec::new();
        let mut next_expiry_ms: Option<u64> = None;
        let mut owners: BTreeMap<u16, (u64, ServiceName)> = BTreeMap::new();
        let mut live: Vec<(Key, &Origin, &Entry)> = Vec::new();
        for (k, ke) in &self.keys {
            let Some(p) = &ke.winner else { continue };
            let e = &ke.by_peer[p];
            if let Op::Add { expires_ms, .. } = &e.op {
                if *expires_ms <= now_ms {
                    continue;
                }
                next_expiry_ms = Some(next_expiry_ms.map_or(*expires_ms, |n| n.min(*expires_ms)));
                live.push((*k, p, e));
            }
        }
        // This peer's own policy decides what it serves, whoever accepted it.
        let live_frontends: std::collections::BTreeSet<u16> =
            live.iter().map(|(k, _, _)| k.frontend).collect();
        let mut refused = Vec::new();
        live.retain(
            |(k, p, e)| match self.admit(k, |port| live_frontends.contains(&port)) {
                Ok(()) => true,
                Err(why) => {
                    refused.push(why.view(k, e.name(), &p.node));
                    false
                }
            },
        );
        for (k, _, e) in &live {
            if let Op::Add { name, since_ms, .. } = &e.op {
                let candidate = (*since_ms, name.clone());
                owners
                    .entry(k.frontend)
                    .and_modify(|o| {
                        if candidate < *o {
                            *o = candidate.clone();
                        }
                    })
                    .or_insert(candidate);
            }
        }
        // This peer's own size bounds, whoever accepted the entries.
        let mut pools: BTreeMap<u16, Vec<(u64, SocketAddr)>> = BTreeMap::new();
        for (k, _, e) in &live {
            if let Op::Add { name, since_ms, .. } = &e.op {
                if *name == owners[&k.frontend].1 {
                    pools
                        .entry(k.frontend)
                        .or_default()
                        .push((*since_ms, k.server));
                }
            }
        }
        let over = bounds::leave_out(&self.limits, &pools);
        for (k, p, e) in live {
            let Op::Add { name, .. } = &e.op else {
                continue;
            };
            let owner = &owners[&k.frontend].1;
            if name != owner {
                conflicts.push(view::ConflictView {
                    frontend: k.frontend,
                    server: k.server,
                    name: name.clone(),
                    owner: owner.clone(),
                });
                continue;
            }
            if let Some(why) = over.get(&k) {
                refused.push(Refusal::from(*why).view(&k, name, &p.node));
                continue;
            }
            frontends
                .entry(k.frontend)
                .or_insert_with(|| FrontendView {
                    port: k.frontend,
                    owner: owner.clone(),
                    servers: BTreeMap::new(),
                })
                .servers
                .extend(server_view(p, e).map(|s| (k.server, s)));
        }
        RegistryView {
            generation: self.generation,
            config_generation: self.config_generation,
            frontends,
            conflicts,
            refused,
            next_expiry_ms,
        }
    }

    /// Checks the bookkeeping against a recount; for tests and simulations.
    pub fn check_invariants(&self) -> Result<(), String> {
        let mut adds = 0;
        let mut tombstones = 0;
        let mut per: BTreeMap<u16, usize> = BTreeMap::new();
        for (k, ke) in &self.keys {
            if ke.by_peer.is_empty() {
                return Err(format!("{k}: empty entry set kept"));
            }
            let expected = entry::winner(ke.by_peer.iter(), self.limits.max_clock_skew)
                .map(|(p, _)| p.clone());
            if expected != ke.winner {
                return Err(format!(
                    "{k}: cached winner {:?} != {:?}",
                    ke.winner, expected
                ));
            }
            match ke.winner().map(Entry::is_delete) {
                Some(true) => tombstones += 1,
                Some(false) => {
                    adds += 1;
                    *per.entry(k.frontend).or_default() += 1;
                }
                None => {}
            }
        }
        if adds != self.adds || tombstones != self.tombstones || per != self.adds_per_frontend {
            return Err(format!(
                "counters drifted: adds {} vs {}, tombstones {} vs {}",
                self.adds, adds, self.tombstones, tombstones
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
