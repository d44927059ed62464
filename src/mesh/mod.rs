//! The mesh: replicates every peer's registry entries to every other peer by
//! gossip (chitchat), and reports who is in the mesh and whether it agrees.
//!
//! Each peer writes only its own chitchat key space: one key per server it
//! accepted a write for (see [`codec`]). Every peer reads all key spaces,
//! including those of dead peers and earlier incarnations, and merges them
//! with the registry's deterministic rule, so all peers compute the same
//! registry. chitchat's key listeners run under its lock and never see
//! deletions, so they only wake the sync task ([`sync`]); the sync task
//! diffs node states by version. The mesh task ([`observe`]) publishes this
//! peer's digests and computes the one [`MeshSnapshot`] of the mesh.

pub mod ack;
pub mod addresses;
pub mod cluster;
pub mod codec;
pub mod duplicates;
mod observe;
pub mod quic;
pub mod snapshot;
mod sync;
pub mod transport;
pub mod trust;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use chitchat::transport::Transport;
use chitchat::{ChitchatConfig, ChitchatHandle, ChitchatId, FailureDetectorConfig, spawn_chitchat};
use tokio::sync::{Mutex, Notify, mpsc, watch};
use tokio::task::JoinHandle;

use self::snapshot::CatchUpRule;
pub use self::snapshot::{CaughtUp, MeshSnapshot, MeshState};
use crate::haproxy::apply::ApplyStatus;
use crate::shared::{Confirmed, Gossiped, OwnEvent, Published, Replication, SharedRegistry};

/// Keys a peer publishes about itself.
pub const META_API: &str = "meta/api";
pub const META_DIGEST: &str = "meta/digest";
pub const META_VRRP: &str = "meta/vrrp";

#[derive(Debug, Clone)]
pub struct MeshSettings {
    /// This peer in this incarnation.
    pub origin: crate::registry::Origin,
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
    /// lbmesh's listening ports on this VM: no backend may point at them.
    pub own_ports: std::collections::BTreeSet<u16>,
    /// Reads this VM's interface addresses, published so that no peer
    /// accepts a backend that loops back here (none in simulations).
    pub local_addrs: Option<addresses::ReadAddrs>,
    /// The floating IP this mesh serves (`keepalived.vip`): never a
    /// backend, whichever VM holds it, and while none does.
    pub floating_ips: std::collections::BTreeSet<std::net::IpAddr>,
}

impl MeshSettings {
    /// The seeds that are not this peer, as addresses where they parse.
    fn other_seeds(&self) -> Vec<String> {
        self.seeds
            .iter()
            .map(|s| match s.parse::<SocketAddr>() {
                Ok(a) => a.to_string(),
                Err(_) => s.clone(),
            })
            .filter(|s| *s != self.listen.to_string() && *s != self.advertise.to_string())
            .collect()
    }
}

/// The mesh snapshot, for whoever reads it; cheap to clone.
#[derive(Clone)]
pub struct MeshView {
    current: Arc<ArcSwap<MeshSnapshot>>,
    updates: watch::Receiver<u64>,
    poke: Arc<Notify>,
    caught_up: watch::Receiver<bool>,
}

impl MeshView {
    /// The latest snapshot.
    pub fn snapshot(&self) -> Arc<MeshSnapshot> {
        self.current.load_full()
    }

    /// Whether this peer has caught up with the mesh (see [`CaughtUp`]);
    /// it changes once, from false to true.
    pub fn caught_up(&self) -> watch::Receiver<bool> {
        self.caught_up.clone()
    }

    /// A snapshot for which `ready` holds (e.g. computed after a write this
    /// caller knows of), asking the mesh task for one at once; the latest
    /// after `within` if none comes.
    pub async fn fresh(
        &self,
        ready: impl Fn(&MeshSnapshot) -> bool,
        within: Duration,
    ) -> Arc<MeshSnapshot> {
        let snap = self.snapshot();
        if ready(&snap) {
            return snap;
        }
        let mut updates = self.updates.clone();
        let wait = async {
            loop {
                self.poke.notify_one();
                if updates.changed().await.is_err() || ready(&self.snapshot()) {
                    return;
                }
            }
        };
        let _ = tokio::time::timeout(within, wait).await;
        self.snapshot()
    }
}

/// A running mesh membership.
pub struct Mesh {
    handle: Arc<ChitchatHandle>,
    view: MeshView,
    tasks: Vec<JoinHandle<()>>,
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
        let (published_tx, published) = watch::channel(Published::default());
        let (confirmed_tx, confirmed) = watch::channel(Confirmed::default());
        let (gossiped_tx, gossiped) = watch::channel(Gossiped::default());
        let (stored_tx, stored_rx) = mpsc::unbounded_channel();
        let own = registry.attach_mesh(
            outbox,
            Replication {
                published,
                confirmed,
                gossiped,
            },
        );
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
        if let Some(i) = &settings.identities {
            i.set_own(
                settings.origin.node.clone(),
                settings.advertise,
                settings.origin.generation,
            );
        }
        let handle = Arc::new(spawn_chitchat(config, initial, transport).await?);
        let chitchat = handle.chitchat();
        let wake = Arc::new(Notify::new());
        let wake_acks = Arc::new(Notify::new());
        {
            let cc = chitchat.lock().await;
            let wake = wake.clone();
            cc.subscribe_event(codec::ENTRY_PREFIX, move |_| wake.notify_one())
                .forever();
            let wake = wake_acks.clone();
            cc.subscribe_event(codec::ACK_PREFIX, move |_| wake.notify_one())
                .forever();
        }
        tracing::info!(
            node = %settings.origin.node,
            incarnation = settings.origin.generation,
            gossip = %settings.listen,
            seeds = ?settings.seeds,
            entries = own.len(),
            "joined the mesh"
        );
        // What peers publish about catching up wakes the mesh task.
        let observe_wake = Arc::new(Notify::new());
        {
            let wake = observe_wake.clone();
            chitchat
                .lock()
                .await
                .subscribe_event(snapshot::META_SYNC, move |_| wake.notify_one())
                .forever();
        }
        let holds = Arc::new(ArcSwap::from_pointee(BTreeMap::new()));
        let current = Arc::new(ArcSwap::from_pointee(MeshSnapshot::default()));
        let (updates_tx, updates) = watch::channel(0);
        let (caught_up_tx, caught_up) = watch::channel(false);
        let poke = Arc::new(Notify::new());
        let registry_policy = registry.with(|r| addresses::policy_digest(r));
        let mut observe = observe::Observe {
            handle: handle.clone(),
            me: id.clone(),
            api_url: settings.api_url.clone(),
            identities: settings.identities.clone(),
            registry: registry.clone(),
            apply,
            vrrp: settings.vrrp.clone(),
            holds: holds.clone(),
            rule: CatchUpRule {
                started_ms: registry.now_ms(),
                other_seeds: settings.other_seeds(),
                wait_alone: CatchUpRule::wait_for_gossip_interval(settings.gossip_interval),
            },
            snapshot: current.clone(),
            updates: updates_tx,
            caught_up: caught_up_tx,
            poke: poke.clone(),
            wake: observe_wake.clone(),
            metrics: settings.metrics.clone(),
            digest: None,
            published: None,
            events: Default::default(),
            guard: observe::GuardInputs {
                policy: registry_policy,
                own_ports: settings.own_ports.clone(),
                local_addrs: settings.local_addrs,
                floating_ips: settings.floating_ips.clone(),
                published_at: None,
            },
            beats: Default::default(),
            duplicates: BTreeMap::new(),
            catch_up_pushed: None,
            catch_up_push_every: settings.gossip_interval,
        };
        // The first snapshot before anyone can read one.
        observe.step(true).await;
        let tasks = vec![
            tokio::spawn(publish(
                handle.clone(),
                inbox,
                published_tx,
                shutdown.clone(),
            )),
            tokio::spawn(ack::publish_watermarks(
                handle.clone(),
                registry.clone(),
                stored_rx,
                shutdown.clone(),
            )),
            tokio::spawn(
                ack::Follow {
                    chitchat: chitchat.clone(),
                    me: id.clone(),
                    identities: settings.identities.clone(),
                    wake: wake_acks,
                    confirmed: confirmed_tx,
                    gossiped: gossiped_tx,
                }
                .run(shutdown.clone()),
            ),
            tokio::spawn(sync::run(
                sync::Sync {
                    chitchat: chitchat.clone(),
                    me: id,
                    identities: settings.identities.clone(),
                    registry,
                    wake,
                    holds,
                    held: observe_wake,
                    metrics: settings.metrics.clone(),
                    stored: stored_tx,
                },
                shutdown.clone(),
            )),
            tokio::spawn(observe.run(shutdown)),
        ];
        Ok(Mesh {
            handle,
            view: MeshView {
                current,
                updates,
                poke,
                caught_up,
            },
            tasks,
        })
    }

    /// The mesh snapshot, for the API, the health check and the status page.
    pub fn view(&self) -> MeshView {
        self.view.clone()
    }

    /// The gossip state, for inspection in tests and simulations.
    pub fn chitchat(&self) -> Arc<Mutex<chitchat::Chitchat>> {
        self.handle.chitchat()
    }

    /// Hands the mesh's tasks to a caller that supervises them (the
    /// daemon); they end on the shutdown signal.
    pub fn take_tasks(&mut self) -> Vec<JoinHandle<()>> {
        std::mem::take(&mut self.tasks)
    }

    /// Resolves when gossip itself stops: after [`Mesh::stop`], or on its own
    /// (an error), which a supervisor treats as fatal.
    pub fn gossip_ended(&self) -> impl std::future::Future<Output = anyhow::Result<()>> + use<> {
        self.handle.termination_watcher()
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

/// Writes own entries into this peer's key space, pushes those a client or
/// HAProxy waits for to live peers at once instead of waiting for the next
/// gossip round, and reports the gossip version each write got.
async fn publish(
    handle: Arc<ChitchatHandle>,
    mut inbox: mpsc::UnboundedReceiver<(u64, OwnEvent)>,
    published: watch::Sender<Published>,
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
        let last = batch.last().map_or(0, |(seq, _)| *seq);
        let targets: Vec<SocketAddr> = {
            let mut cc = chitchat.lock().await;
            let me = cc.self_chitchat_id().clone();
            let state = cc.self_node_state();
            for (_, event) in batch.drain(..) {
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
            published.send_replace(Published {
                seq: last,
                version: state.max_version(),
            });
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
