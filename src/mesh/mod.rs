//! The mesh: replicates every peer's registry entries to every other peer by
//! gossip (chitchat), and reports who is in the mesh and whether it agrees.
//!
//! Each peer writes only its own chitchat key space: one key per server it
//! accepted a write for (see [`codec`]). Every peer reads all key spaces,
//! including those of dead peers and earlier incarnations, and merges them
//! with the registry's deterministic rule, so all peers compute the same
//! registry. chitchat's key listeners run under its lock and never see
//! deletions, so they only wake the sync task; the sync task diffs node
//! states by version.

pub mod cluster;
pub mod codec;
pub mod quic;
pub mod transport;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use chitchat::transport::Transport;
use chitchat::{ChitchatConfig, ChitchatHandle, ChitchatId, FailureDetectorConfig, spawn_chitchat};
use tokio::sync::{Mutex, Notify, mpsc, watch};
use tokio::task::JoinHandle;

use crate::api::MeshStatus;
use crate::haproxy::apply::ApplyStatus;
use crate::registry::{Key, Origin, PeerId};
use crate::shared::{OwnEvent, SharedRegistry};
use crate::status::PeerStatus;

/// Keys a peer publishes about itself.
pub const META_API: &str = "meta/api";
pub const META_DIGEST: &str = "meta/digest";
pub const META_VRRP: &str = "meta/vrrp";

#[derive(Debug, Clone)]
pub struct MeshSettings {
    /// This peer in this incarnation.
    pub origin: Origin,
    pub listen: SocketAddr,
    /// The address other peers reach this one at.
    pub advertise: SocketAddr,
    pub seeds: Vec<String>,
    /// Peers only talk to peers with the same cluster id.
    pub cluster_id: String,
    pub gossip_interval: Duration,
    /// How long a dead peer's state is kept: longer than any lease, so a
    /// dead peer's registrations stay until they end.
    pub dead_node_grace: Duration,
    /// How long deleted keys are remembered.
    pub deleted_key_grace: Duration,
    /// This peer's API URL, published for status and clients.
    pub api_url: String,
    /// Who authenticated peer addresses are (QUIC transport); a peer whose
    /// certificate names another node than the one it gossips as is refused.
    pub identities: Option<Arc<quic::Identities>>,
    /// This peer's VRRP state to publish (from keepalived).
    pub vrrp: watch::Receiver<Option<String>>,
    pub metrics: Option<Arc<crate::metrics::Metrics>>,
}

/// A running mesh membership.
pub struct Mesh {
    handle: Arc<ChitchatHandle>,
    peers: Arc<ArcSwap<Vec<PeerStatus>>>,
    tasks: Vec<JoinHandle<()>>,
}

struct PeersView(Arc<ArcSwap<Vec<PeerStatus>>>);

impl MeshStatus for PeersView {
    fn peers(&self) -> Vec<PeerStatus> {
        self.0.load().as_ref().clone()
    }
}

impl Mesh {
    /// Joins the mesh: publishes this peer's entries and starts replicating.
    pub async fn start(
        settings: MeshSettings,
        transport: &dyn Transport,
        registry: Arc<SharedRegistry>,
        apply: watch::Receiver<ApplyStatus>,
        shutdown: watch::Receiver<bool>,
    ) -> anyhow::Result<Mesh> {
        let (outbox, inbox) = mpsc::unbounded_channel();
        let own = registry.attach_outbox(outbox);
        let mut initial: Vec<(String, String)> = own
            .iter()
            .map(|(k, e)| (codec::encode_key(k), codec::encode_value(e)))
            .collect();
        initial.push((META_API.into(), settings.api_url.clone()));
        let id = ChitchatId::new(
            settings.origin.node.as_str(),
            settings.origin.generation,
            settings.advertise,
        );
        let config = ChitchatConfig {
            chitchat_id: id.clone(),
            cluster_id: settings.cluster_id.clone(),
            gossip_interval: settings.gossip_interval,
            listen_addr: settings.listen,
            seed_nodes: settings.seeds.clone(),
            failure_detector_config: FailureDetectorConfig {
                initial_interval: settings.gossip_interval * 5,
                dead_node_grace_period: settings.dead_node_grace,
                ..FailureDetectorConfig::default()
            },
            marked_for_deletion_grace_period: settings.deleted_key_grace,
            catchup_callback: None,
            extra_liveness_predicate: None,
        };
        let handle = Arc::new(spawn_chitchat(config, initial, transport).await?);
        let chitchat = handle.chitchat();
        let wake = Arc::new(Notify::new());
        {
            let wake = wake.clone();
            chitchat
                .lock()
                .await
                .subscribe_event(codec::ENTRY_PREFIX, move |_| wake.notify_one())
                .forever();
        }
        tracing::info!(
            node = %settings.origin.node,
            generation = settings.origin.generation,
            gossip = %settings.listen,
            seeds = ?settings.seeds,
            entries = own.len(),
            "joined the mesh"
        );
        let peers = Arc::new(ArcSwap::from_pointee(Vec::new()));
        let tasks = vec![
            tokio::spawn(publish(handle.clone(), inbox, shutdown.clone())),
            tokio::spawn(sync(
                Sync {
                    chitchat: chitchat.clone(),
                    me: id.clone(),
                    identities: settings.identities.clone(),
                    registry: registry.clone(),
                    wake,
                    peers: peers.clone(),
                    metrics: settings.metrics.clone(),
                },
                shutdown.clone(),
            )),
            tokio::spawn(announce(
                chitchat,
                registry,
                apply,
                settings.vrrp.clone(),
                shutdown,
            )),
        ];
        Ok(Mesh {
            handle,
            peers,
            tasks,
        })
    }

    /// The mesh part of `/v1/status`.
    pub fn status(&self) -> Arc<dyn MeshStatus> {
        Arc::new(PeersView(self.peers.clone()))
    }

    /// The gossip state, for inspection in tests and simulations.
    pub fn chitchat(&self) -> Arc<Mutex<chitchat::Chitchat>> {
        self.handle.chitchat()
    }

    /// Leaves the mesh once the tasks have seen the shutdown signal.
    pub async fn stop(self) {
        for t in self.tasks {
            let _ = t.await;
        }
        let _ = self.handle.initiate_shutdown();
        let _ =
            tokio::time::timeout(Duration::from_secs(5), self.handle.termination_watcher()).await;
    }
}

/// Writes own entries into this peer's key space, and pushes configuration
/// changes to live peers at once instead of waiting for the next gossip round.
async fn publish(
    handle: Arc<ChitchatHandle>,
    mut inbox: mpsc::UnboundedReceiver<OwnEvent>,
    mut shutdown: watch::Receiver<bool>,
) {
    let chitchat = handle.chitchat();
    let mut batch = Vec::new();
    loop {
        tokio::select! {
            // Fixed branch order: seeded simulations replay exactly.
            biased;
            n = inbox.recv_many(&mut batch, 4096) => if n == 0 { return },
            () = crate::shutdown::signalled(&mut shutdown) => return,
        }
        let mut urgent = false;
        let targets: Vec<SocketAddr> = {
            let mut cc = chitchat.lock().await;
            let me = cc.self_chitchat_id().clone();
            let state = cc.self_node_state();
            for event in batch.drain(..) {
                match event {
                    OwnEvent::Set(key, entry, push) => {
                        urgent |= push;
                        state.set(codec::encode_key(&key), codec::encode_value(&entry));
                    }
                    OwnEvent::Remove(key) => {
                        let k = codec::encode_key(&key);
                        if state.contains_key(&k) {
                            state.delete(&k);
                        }
                    }
                }
            }
            cc.live_nodes()
                .filter(|id| **id != me)
                .map(|id| id.gossip_advertise_addr)
                .collect()
        };
        if urgent {
            for addr in targets {
                let _ = handle.gossip(addr);
            }
        }
    }
}

/// What the sync task last merged from one peer's key space.
#[derive(Default)]
struct Seen {
    max_version: u64,
    /// Chitchat key → version merged.
    keys: HashMap<String, u64>,
}

/// Merges other peers' key spaces into the registry, and refreshes the peer list.
/// What the sync task works with.
struct Sync {
    chitchat: Arc<Mutex<chitchat::Chitchat>>,
    me: ChitchatId,
    identities: Option<Arc<quic::Identities>>,
    registry: Arc<SharedRegistry>,
    wake: Arc<Notify>,
    peers: Arc<ArcSwap<Vec<PeerStatus>>>,
    metrics: Option<Arc<crate::metrics::Metrics>>,
}

async fn sync(task: Sync, mut shutdown: watch::Receiver<bool>) {
    let Sync {
        chitchat,
        me,
        identities,
        registry,
        wake,
        peers,
        metrics,
    } = task;
    let mut seen: HashMap<ChitchatId, Seen> = HashMap::new();
    let mut bad_nodes: HashSet<ChitchatId> = HashSet::new();
    let mut mesh_events = crate::events::diff::MeshWatch::default();
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
        let mut changes: Vec<(Key, Origin, Option<crate::registry::Entry>)> = Vec::new();
        let statuses = {
            let cc = chitchat.lock().await;
            let live: HashSet<&ChitchatId> = cc.live_nodes().collect();
            let states = cc.node_states();
            for (id, state) in states {
                if *id == me {
                    continue;
                }
                let Ok(node) = id.node_id.parse::<PeerId>() else {
                    if bad_nodes.insert(id.clone()) {
                        tracing::warn!(node = ?id.node_id, "ignoring a peer with an invalid node id");
                    }
                    continue;
                };
                let origin = Origin::new(node, id.generation_id);
                if let Some(certified) = identities
                    .as_ref()
                    .and_then(|i| i.node_at(id.gossip_advertise_addr))
                    .filter(|n| *n != origin.node)
                {
                    if bad_nodes.insert(id.clone()) {
                        if let Some(m) = &metrics {
                            m.refused_connection(crate::metrics::refused_connection::IDENTITY);
                        }
                        tracing::warn!(
                            addr = %id.gossip_advertise_addr,
                            certificate = %certified,
                            gossips_as = %origin.node,
                            "refusing a peer whose certificate names another node than it gossips as"
                        );
                    }
                    // Forget anything merged from it before it was found out.
                    if let Some(s) = seen.remove(id) {
                        for k in s.keys.keys() {
                            if let Ok(key) = codec::decode_key(&k[codec::ENTRY_PREFIX.len()..]) {
                                changes.push((key, origin.clone(), None));
                            }
                        }
                    }
                    continue;
                }
                let s = seen.entry(id.clone()).or_default();
                if state.max_version() == s.max_version {
                    continue;
                }
                let mut present: HashSet<&str> = HashSet::with_capacity(s.keys.len());
                for (k, vv) in state.key_values_including_deleted() {
                    let Some(rest) = k.strip_prefix(codec::ENTRY_PREFIX) else {
                        continue;
                    };
                    present.insert(k);
                    if s.keys.get(k) == Some(&vv.version) {
                        continue;
                    }
                    s.keys.insert(k.to_owned(), vv.version);
                    let key = match codec::decode_key(rest) {
                        Ok(key) => key,
                        Err(e) => {
                            if let Some(m) = &metrics {
                                m.refused_entry(crate::metrics::refused_entry::MALFORMED);
                            }
                            tracing::warn!(peer = %origin, error = %e, "ignoring a gossiped entry");
                            continue;
                        }
                    };
                    if vv.is_deleted() {
                        changes.push((key, origin.clone(), None));
                        continue;
                    }
                    match codec::decode_value(&vv.value) {
                        Ok(entry) => changes.push((key, origin.clone(), Some(entry))),
                        Err(e) => {
                            if let Some(m) = &metrics {
                                m.refused_entry(crate::metrics::refused_entry::MALFORMED);
                            }
                            tracing::warn!(peer = %origin, error = %e, "ignoring a gossiped entry")
                        }
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
            }
            // A peer whose state chitchat dropped (dead past the grace period).
            seen.retain(|id, s| {
                let keep = states.contains_key(id);
                if !keep {
                    if let Ok(node) = id.node_id.parse::<PeerId>() {
                        let origin = Origin::new(node, id.generation_id);
                        for k in s.keys.keys() {
                            if let Ok(key) = codec::decode_key(&k[codec::ENTRY_PREFIX.len()..]) {
                                changes.push((key, origin.clone(), None));
                            }
                        }
                    }
                }
                keep
            });
            let trusted: BTreeMap<ChitchatId, &chitchat::NodeState> = states
                .iter()
                .filter(|(id, _)| !bad_nodes.contains(id))
                .map(|(id, st)| (id.clone(), st))
                .collect();
            peer_statuses(&trusted, &live)
        };
        if let Some(m) = &metrics {
            m.observe_peers(&statuses);
        }
        mesh_events.update(registry.events(), &me.node_id, &statuses);
        peers.store(Arc::new(statuses));
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
            let config_changed = registry.with(|r| {
                let mut any = false;
                for (key, origin, entry) in changes {
                    any |= r.merge_remote(key, origin, entry, now).affects_config;
                }
                any
            });
            if config_changed {
                registry.notify();
            }
        }
    }
}

/// Live peers that report VRRP MASTER, for the instance with the most of them.
pub fn vrrp_masters(peers: &[PeerStatus]) -> Vec<String> {
    let mut by_instance: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for p in peers.iter().filter(|p| p.live) {
        if let Some(v) = &p.vrrp_state {
            let mut words = v.split(' ');
            if words.next() == Some("MASTER") {
                by_instance
                    .entry(words.next().unwrap_or(""))
                    .or_default()
                    .push(p.node_id.clone());
            }
        }
    }
    by_instance
        .into_values()
        .max_by_key(Vec::len)
        .unwrap_or_default()
}

/// A display-safe copy of a value another peer published about itself.
fn meta(state: &chitchat::NodeState, key: &str) -> Option<String> {
    let v = state.get(key)?;
    let clean: String = v.chars().filter(|c| !c.is_control()).take(128).collect();
    Some(clean)
}

/// One row per node id (its newest incarnation), this peer included.
fn peer_statuses(
    states: &BTreeMap<ChitchatId, &chitchat::NodeState>,
    live: &HashSet<&ChitchatId>,
) -> Vec<PeerStatus> {
    let mut newest: BTreeMap<&str, (&ChitchatId, &chitchat::NodeState)> = BTreeMap::new();
    for (id, state) in states {
        let state: &chitchat::NodeState = state;
        let slot = newest.entry(&id.node_id).or_insert((id, state));
        if id.generation_id > slot.0.generation_id {
            *slot = (id, state);
        }
    }
    newest
        .into_values()
        .map(|(id, state)| {
            let digest = meta(state, META_DIGEST);
            let mut parts = digest.as_deref().unwrap_or("").split(' ');
            let registry_digest = parts.next().filter(|s| !s.is_empty()).map(str::to_owned);
            let config_digest = parts.next().filter(|s| *s != "-").map(str::to_owned);
            PeerStatus {
                node_id: id
                    .node_id
                    .chars()
                    .filter(|c| !c.is_control())
                    .take(63)
                    .collect(),
                live: live.contains(id),
                generation: id.generation_id,
                gossip_addr: id.gossip_advertise_addr.to_string(),
                api_addr: meta(state, META_API),
                registry_digest,
                config_digest,
                vrrp_state: meta(state, META_VRRP),
            }
        })
        .collect()
}

/// Publishes this peer's digests (registry, and config HAProxy runs) and VRRP state.
async fn announce(
    chitchat: Arc<Mutex<chitchat::Chitchat>>,
    registry: Arc<SharedRegistry>,
    mut apply: watch::Receiver<ApplyStatus>,
    mut vrrp: watch::Receiver<Option<String>>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last = (u64::MAX, String::new(), tokio::time::Instant::now());
    let mut digest = String::new();
    loop {
        tokio::select! {
            // Fixed branch order: seeded simulations replay exactly.
            biased;
            _ = tick.tick() => {}
            r = apply.changed() => if r.is_err() { return },
            r = vrrp.changed() => if r.is_err() { return },
            () = crate::shutdown::signalled(&mut shutdown) => return,
        }
        let generation = registry.with(|r| r.generation());
        let config = apply
            .borrow()
            .config_digest
            .clone()
            .unwrap_or_else(|| "-".into());
        // Leases end without a new generation: recompute at least every second.
        if (generation, &config) != (last.0, &last.1) || last.2.elapsed() >= Duration::from_secs(1)
        {
            let now = registry.now_ms();
            digest = format!("{} {config}", registry.with(|r| r.summary(now)).digest);
            last = (generation, config, tokio::time::Instant::now());
        }
        let vrrp_state = vrrp.borrow().clone();
        let mut cc = chitchat.lock().await;
        let state = cc.self_node_state();
        state.set(META_DIGEST, &digest);
        match vrrp_state {
            Some(v) => state.set(META_VRRP, v),
            None => {
                if state.contains_key(META_VRRP) {
                    state.delete(META_VRRP);
                }
            }
        }
    }
}
