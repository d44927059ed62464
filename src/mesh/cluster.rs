//! An in-process mesh for tests and simulations: peers with their registry,
//! store and gossip, on an in-memory network, without HAProxy.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use super::transport::MemoryNetwork;
use super::{Mesh, MeshSettings};
use crate::clock::{Clock, TokioClock};
use crate::haproxy::apply::ApplyStatus;
use crate::registry::{Command, Limits, Origin, PeerId, PortPolicy, Registry, RegistryView};
use crate::shared::{Accepted, AckPolicy, SharedRegistry, SubmitError};
use crate::store::{MemoryDisk, Store, next_generation};

/// How the in-process peers are set up.
#[derive(Debug, Clone)]
pub struct ClusterSettings {
    pub gossip_interval: Duration,
    pub limits: Limits,
    /// Wall-clock start of every peer's clock (Unix ms).
    pub start_ms: u64,
    /// Keep each peer's store in memory (deterministic, for simulations)
    /// instead of a data directory under the cluster's base directory.
    pub memory: bool,
    /// When writes are acknowledged.
    pub ack: AckPolicy,
}

impl Default for ClusterSettings {
    fn default() -> Self {
        Self {
            gossip_interval: Duration::from_millis(100),
            limits: Limits {
                max_servers: 100_000,
                ..Limits::default()
            },
            start_ms: 1_800_000_000_000,
            memory: false,
            ack: AckPolicy::default(),
        }
    }
}

/// One in-process peer.
pub struct Node {
    pub id: PeerId,
    pub addr: SocketAddr,
    pub dir: PathBuf,
    /// The peer's wall clock: it keeps running across restarts, like a VM's.
    pub clock: Arc<TokioClock>,
    /// The peer's disk when stores are in memory.
    pub disk: MemoryDisk,
    /// The generation of the last start (memory stores keep none on disk).
    last_generation: u64,
    registry: Option<Arc<SharedRegistry>>,
    committer: Option<tokio::task::JoinHandle<()>>,
    mesh: Option<Mesh>,
    shutdown: Option<watch::Sender<bool>>,
    _apply: watch::Sender<ApplyStatus>,
}

impl Node {
    pub fn is_up(&self) -> bool {
        self.registry.is_some()
    }

    /// The running peer's registry. Panics if the peer is down.
    pub fn registry(&self) -> &Arc<SharedRegistry> {
        self.registry.as_ref().expect("peer is up")
    }

    pub fn mesh(&self) -> &Mesh {
        self.mesh.as_ref().expect("peer is up")
    }

    pub fn view(&self) -> RegistryView {
        self.registry().view()
    }

    pub async fn submit(&self, cmd: Command) -> Result<Accepted, SubmitError> {
        self.registry().submit(cmd).await
    }
}

/// A mesh of in-process peers sharing one [`MemoryNetwork`].
pub struct Cluster {
    pub net: MemoryNetwork,
    pub nodes: Vec<Node>,
    pub settings: ClusterSettings,
    base: PathBuf,
}

impl Cluster {
    /// Starts `n` peers named `p0`…, addresses 198.18.0.1… (never real sockets).
    pub async fn start(
        base: &Path,
        n: usize,
        seed: u64,
        settings: ClusterSettings,
    ) -> anyhow::Result<Cluster> {
        let mut c = Cluster {
            net: MemoryNetwork::new(seed),
            nodes: Vec::new(),
            settings,
            base: base.to_owned(),
        };
        for i in 0..n {
            c.add_node(i, 0).await?;
        }
        Ok(c)
    }

    pub fn addrs(&self) -> Vec<SocketAddr> {
        self.nodes.iter().map(|n| n.addr).collect()
    }

    fn seeds(&self) -> Vec<String> {
        // Every peer knows the first three as seeds, like a typical install.
        (0..3.min(self.nodes.len().max(1)))
            .map(|i| node_addr(i).to_string())
            .collect()
    }

    /// Adds peer `i` (the next index) with a clock `skew_ms` off.
    pub async fn add_node(&mut self, i: usize, skew_ms: i64) -> anyhow::Result<()> {
        assert_eq!(i, self.nodes.len(), "peers are added in order");
        let (apply, _) = watch::channel(ApplyStatus::default());
        self.nodes.push(Node {
            id: format!("p{i}").parse().expect("valid id"),
            addr: node_addr(i),
            dir: self.base.join(format!("p{i}")),
            clock: Arc::new(TokioClock::new(self.settings.start_ms, skew_ms)),
            disk: MemoryDisk::default(),
            last_generation: 0,
            registry: None,
            committer: None,
            mesh: None,
            shutdown: None,
            _apply: apply,
        });
        self.boot(i).await
    }

    async fn boot(&mut self, i: usize) -> anyhow::Result<()> {
        let seeds = self.seeds();
        let settings = self.settings.clone();
        let net = self.net.clone();
        let node = &mut self.nodes[i];
        let clock: Arc<dyn Clock> = node.clock.clone();
        let (generation, (store, recovered)) = if settings.memory {
            let g = clock.now_ms().max(node.last_generation + 1);
            (g, Store::memory(node.disk.clone()))
        } else {
            let g = next_generation(&node.dir_created()?, clock.now_ms())?;
            (g, Store::open(&node.dir)?)
        };
        node.last_generation = generation;
        let origin = Origin::new(node.id.clone(), generation);
        let registry = Registry::new(
            origin.clone(),
            settings.limits.clone(),
            PortPolicy::new(vec![], []),
        );
        let shared = Arc::new(SharedRegistry::new(
            registry,
            store,
            recovered,
            clock,
            settings.ack,
        ));
        let (shutdown, shutdown_rx) = watch::channel(false);
        let mesh = Mesh::start(
            MeshSettings {
                origin,
                listen: node.addr,
                advertise: node.addr,
                seeds,
                cluster_id: "sim".into(),
                gossip_interval: settings.gossip_interval,
                dead_node_grace: settings.limits.max_ttl + Duration::from_secs(3600),
                deleted_key_grace: Duration::from_secs(3600),
                api_url: format!("http://{}", node.addr),
                identities: None,
                vrrp: watch::channel(None).1,
                metrics: None,
                own_ports: Default::default(),
                local_addrs: None,
                floating_ips: Default::default(),
            },
            &net,
            shared.clone(),
            node._apply.subscribe(),
            shutdown_rx,
        )
        .await?;
        node.committer = Some(tokio::spawn(shared.clone().run(shutdown.subscribe())));
        node.registry = Some(shared);
        node.mesh = Some(mesh);
        node.shutdown = Some(shutdown);
        Ok(())
    }

    /// Stops peer `i` like a crash: gossip stops, nothing more is written.
    pub async fn kill(&mut self, i: usize) {
        let node = &mut self.nodes[i];
        if let Some(s) = node.shutdown.take() {
            let _ = s.send(true);
        }
        if let Some(c) = node.committer.take() {
            let _ = c.await;
        }
        if let Some(m) = node.mesh.take() {
            m.stop().await;
        }
        node.registry = None;
    }

    /// Starts peer `i` again as a new incarnation; `wipe` loses its data directory.
    pub async fn restart(&mut self, i: usize, wipe: bool) -> anyhow::Result<()> {
        self.kill(i).await;
        if wipe {
            self.wipe(i);
        }
        self.boot(i).await
    }

    /// Loses peer `i`'s data (its disk), as a replaced VM would.
    pub fn wipe(&mut self, i: usize) {
        let _ = std::fs::remove_dir_all(&self.nodes[i].dir);
        self.nodes[i]
            .disk
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
    }

    /// Starts a stopped peer `i` (after [`Cluster::kill`]).
    pub async fn start_node(&mut self, i: usize) -> anyhow::Result<()> {
        self.boot(i).await
    }

    /// Registry digests of the running peers.
    pub fn digests(&self) -> Vec<(PeerId, String)> {
        self.nodes
            .iter()
            .filter(|n| n.is_up())
            .map(|n| (n.id.clone(), n.view().digest()))
            .collect()
    }

    /// Whether every running peer computes the same registry.
    pub fn converged(&self) -> bool {
        let d = self.digests();
        d.windows(2).all(|w| w[0].1 == w[1].1)
    }

    /// Waits (in tokio time) until converged; returns how long it took.
    pub async fn wait_converged(&self, within: Duration) -> Option<Duration> {
        let start = tokio::time::Instant::now();
        while start.elapsed() <= within {
            if self.converged() {
                return Some(start.elapsed());
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        None
    }

    pub async fn stop(mut self) {
        for i in 0..self.nodes.len() {
            self.kill(i).await;
        }
    }
}

impl Node {
    fn dir_created(&self) -> std::io::Result<PathBuf> {
        std::fs::create_dir_all(&self.dir)?;
        Ok(self.dir.clone())
    }
}

/// Peer `i`'s gossip address: 198.18.x.y, the benchmarking range.
pub fn node_addr(i: usize) -> SocketAddr {
    SocketAddr::from(([198, 18, (i / 250) as u8, (i % 250 + 1) as u8], 7946))
}
