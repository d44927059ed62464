//! One simulated run: real lbmesh peers (registry, store, gossip) on an
//! in-memory network and tokio's paused clock, phone-home clients, and an
//! oracle of what every client was told.

use std::collections::{BTreeMap, BTreeSet};
use std::hash::{Hash, Hasher};
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use lbmesh::clock::{Clock, Stamp, TokioClock};
use lbmesh::haproxy::render::{RenderSettings, render};
use lbmesh::mesh::cluster::{Cluster, ClusterSettings};
use lbmesh::registry::{Command, Durability, Key, Limits, RegistryView, ServiceName};
use lbmesh::shared::{AckMode, AckPolicy};
use rand::rngs::SmallRng;
use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng};
use tokio::time::Instant;

use crate::scenario::{CONVERGE_WITHIN, LinkModel, Pick, Scenario, Step};

/// How a run is set up.
#[derive(Debug, Clone)]
pub struct RunConfig {
    pub peers: usize,
    pub seed: u64,
    /// Turn on the deliberately wrong merge rule (adds beat deletes).
    pub wrong_merge: bool,
    /// Print every step.
    pub verbose: bool,
    /// The VIP holder must serve every change older than this, once the
    /// network has been calm since the change.
    pub vip_bound: Duration,
    /// How messages travel, instead of the scenario's choice.
    pub links: Option<LinkModel>,
    /// Peers acknowledge writes once on their own disk (`registry.ack =
    /// "local"`): a write only a lost disk held may be gone. Otherwise (as
    /// lbmesh runs by default) only a write answered `"replicated": false`
    /// may be lost with its disk.
    pub ack_local: bool,
}

/// A broken invariant, with where it broke.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    pub step: usize,
    pub step_text: String,
    pub what: String,
}

/// What a run produced.
#[derive(Debug, Clone, Default)]
pub struct Outcome {
    pub violation: Option<Violation>,
    /// A hash of every peer's registry digest after every step: equal for
    /// two runs of the same seed.
    pub trace: u64,
    /// How long each quiet step took to converge.
    pub converge: Vec<Duration>,
    /// Every distinct HAProxy config a peer rendered, by digest.
    pub configs: BTreeMap<String, String>,
    pub sim_time: Duration,
    pub steps: usize,
}

#[derive(Debug, Clone)]
struct Client {
    name: ServiceName,
    frontend: u16,
    ip: IpAddr,
    nodeport: u16,
    /// Peers in the order this client tries them.
    peers: Vec<usize>,
    ttl: Duration,
    active: bool,
}

impl Client {
    fn key(&self) -> Key {
        Key {
            frontend: self.frontend,
            server: SocketAddr::new(self.ip, self.nodeport),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    /// Served until at least `until_ms` and at most about `last_ms`
    /// (reference time, ms). They differ for a renewal answered from memory:
    /// other peers may hold the lease end it last published, up to a tenth
    /// of the TTL (at most the skew bound) earlier.
    Served {
        until_ms: u64,
        last_ms: u64,
    },
    Gone,
    /// Either outcome is correct (an add racing a delete it could not see
    /// within the allowed clock skew, or a write lost with a wiped disk).
    Either,
}

#[derive(Debug, Clone, Copy)]
struct Acked {
    at: Instant,
    expect: Expect,
    /// For deletes: the delete's stamp and peer, to tell whether a later add saw it.
    delete: Option<(Stamp, usize)>,
    /// The peer that acknowledged it.
    peer: usize,
    /// Whether the answer said another peer held it durably (None: nothing
    /// was waited for).
    replicated: Option<bool>,
}

/// Which acknowledged writes a check covers, and on which peers.
#[derive(Debug, Clone, Copy)]
enum Scope {
    /// Every running peer, every write.
    Everyone,
    /// The VIP holder, writes since the network calmed down older than the bound.
    VipHolder(usize, Duration),
    /// One peer, every write.
    Peer(usize),
}

pub struct World {
    cfg: RunConfig,
    cluster: Cluster,
    rng: SmallRng,
    clock: TokioClock,
    clients: Vec<Client>,
    oracle: BTreeMap<Key, Acked>,
    crashed: BTreeSet<usize>,
    /// Peers gone for good.
    gone: BTreeSet<usize>,
    /// Whether a network fault is active, and since when the network is calm.
    faulty: bool,
    calm_since: Instant,
    partitions: bool,
    max_abs_skew: Duration,
    render: RenderSettings,
    out: Outcome,
    trace: std::collections::hash_map::DefaultHasher,
    next_ip: u32,
}

fn violation(step: usize, s: &Step, what: String) -> Violation {
    Violation {
        step,
        step_text: format!("{s:?}"),
        what,
    }
}

impl World {
    pub async fn new(cfg: RunConfig, scenario: &Scenario, base: &Path) -> anyhow::Result<World> {
        let settings = ClusterSettings {
            gossip_interval: Duration::from_millis(100),
            limits: Limits {
                max_servers: 100_000,
                max_servers_per_frontend: 4096,
                max_frontends: 10_000,
                ..Limits::default()
            },
            memory: true,
            ack: AckPolicy {
                mode: if cfg.ack_local {
                    AckMode::Local
                } else {
                    AckMode::Replicated
                },
                ..AckPolicy::default()
            },
            ..ClusterSettings::default()
        };
        let start_ms = settings.start_ms;
        let mut cluster = Cluster::start(base, 0, cfg.seed, settings).await?;
        cluster
            .net
            .set_links(cfg.links.unwrap_or(scenario.links).links());
        let mut max_abs_skew = 0i64;
        for i in 0..cfg.peers {
            let skew = scenario.skew_ms.get(i).copied().unwrap_or(0);
            max_abs_skew = max_abs_skew.max(skew.abs());
            cluster.add_node(i, skew).await?;
        }
        Ok(World {
            rng: SmallRng::seed_from_u64(cfg.seed ^ 0x5eed_5eed),
            clock: TokioClock::new(start_ms, 0),
            cluster,
            clients: Vec::new(),
            oracle: BTreeMap::new(),
            crashed: BTreeSet::new(),
            gone: BTreeSet::new(),
            faulty: false,
            calm_since: Instant::now(),
            partitions: false,
            max_abs_skew: Duration::from_millis(max_abs_skew as u64),
            render: RenderSettings::with_sockets_in(Path::new("/run/lbmesh-sim")),
            out: Outcome::default(),
            trace: Default::default(),
            next_ip: 0,
            cfg,
        })
    }

    fn up(&self) -> Vec<usize> {
        (0..self.cluster.nodes.len())
            .filter(|i| !self.crashed.contains(i) && !self.gone.contains(i))
            .collect()
    }

    /// Whether running peer `p` says it has caught up with the mesh.
    fn caught_up(&self, p: usize) -> bool {
        self.cluster.nodes[p]
            .mesh()
            .view()
            .snapshot()
            .state
            .caught_up
    }

    /// The peer keepalived lets hold the VIP: the lowest-numbered running
    /// peer that has caught up (the others fail the check).
    fn vip_holder(&self) -> Option<usize> {
        self.up().into_iter().find(|p| self.caught_up(*p))
    }

    fn pick(&mut self, p: Pick) -> Option<usize> {
        let up = self.up();
        match p {
            Pick::Random => up.choose(&mut self.rng).copied(),
            Pick::VipHolder => self.vip_holder(),
            Pick::Index(i) => up.contains(&i).then_some(i),
        }
    }

    fn max_skew(&self) -> Duration {
        self.cluster.settings.limits.max_clock_skew
    }

    /// A client's call at the first live peer in its order. Records what the
    /// client was told in the oracle.
    async fn call(&mut self, c: usize, delete: bool) -> Result<(), String> {
        self.call_at(c, delete, None).await.map(|_| ())
    }

    /// A client's call at peer `at`, or where the client would call.
    /// Returns the peer that answered.
    async fn call_at(
        &mut self,
        c: usize,
        delete: bool,
        at: Option<usize>,
    ) -> Result<Option<usize>, String> {
        let client = self.clients[c].clone();
        let key = client.key();
        // Half the calls go to the client's own peer (failing over past dead
        // ones), half to any live peer, as when clients call the VIP or a
        // list of peers: an add and its delete often land on different peers.
        let up = self.up();
        let peer = if at.is_some() {
            at
        } else if self.rng.random_bool(0.5) {
            up.choose(&mut self.rng).copied()
        } else {
            client.peers.iter().copied().find(|p| up.contains(p))
        };
        let Some(peer) = peer else {
            return Ok(None); // every peer down: the client gets no answer
        };
        let cmd = if delete {
            Command::Delete {
                key,
                name: client.name.clone(),
            }
        } else {
            Command::Register {
                key,
                name: client.name.clone(),
                send_proxy: false,
                ttl: Some(client.ttl),
            }
        };
        let registry = self.cluster.nodes[peer].registry().clone();
        let seen_before = registry.with(|r| r.newest_delete(&key));
        let accepted = registry.submit(cmd).await.map_err(|e| {
            format!(
                "peer p{peer} refused a valid {}: {e}",
                if delete { "delete" } else { "add" }
            )
        })?;
        let (change, replicated) = (accepted.change, accepted.replicated);
        let now = Instant::now();
        let prev = self.oracle.get(&key).copied();
        let acked = if delete {
            Acked {
                at: now,
                expect: Expect::Gone,
                delete: Some((change.entry.stamp, peer)),
                peer,
                replicated,
            }
        } else {
            // An add racing a delete it had not seen, within the skew the
            // merge rule allows for, may lose to it: either outcome is right.
            let racing = prev.and_then(|p| p.delete).is_some_and(|(stamp, _)| {
                let window = self.max_skew() + self.max_abs_skew * 2 + Duration::from_secs(1);
                seen_before < stamp && now.duration_since(prev.map_or(now, |p| p.at)) < window
            });
            Acked {
                at: now,
                expect: if racing {
                    Expect::Either
                } else {
                    let last_ms = self.clock.now_ms() + client.ttl.as_millis() as u64;
                    let until_ms = if change.durability == Durability::Memory {
                        let step = (client.ttl / 10).min(self.max_skew()).as_millis() as u64;
                        let before = match prev.map(|p| p.expect) {
                            Some(Expect::Served { until_ms, .. }) => until_ms,
                            _ => 0,
                        };
                        before.max(last_ms - step)
                    } else {
                        last_ms
                    };
                    Expect::Served { until_ms, last_ms }
                },
                delete: None,
                peer,
                replicated,
            }
        };
        if change.outcome == lbmesh::registry::Outcome::Absent && !delete {
            return Err("an add answered absent".into());
        }
        self.oracle.insert(key, acked);
        Ok(Some(peer))
    }

    fn new_client(&mut self) -> usize {
        let n = self.clients.len();
        let mut peers: Vec<usize> = (0..self.cluster.nodes.len()).collect();
        // Each client prefers a peer of its own, then the others in order.
        let first = self.rng.random_range(0..peers.len());
        peers.rotate_left(first);
        let ttl = if self.rng.random_bool(0.2) {
            Duration::from_secs(20)
        } else {
            Duration::from_secs(600)
        };
        self.clients.push(Client {
            // Every three clients are the nodes of one service: one frontend, one name.
            name: format!("svc{}", n / 3).parse().expect("valid name"),
            frontend: 10_000 + (n / 3) as u16,
            ip: IpAddr::from([198, 19, (n / 250) as u8, (n % 250 + 1) as u8]),
            nodeport: 30_000 + (n % 7) as u16,
            peers,
            ttl,
            active: true,
        });
        n
    }

    /// A node address no client has used yet.
    fn fresh_ip(&mut self) -> IpAddr {
        self.next_ip += 1;
        let m = self.next_ip;
        IpAddr::from([198, 18, 100 + (m / 250) as u8, (m % 250 + 1) as u8])
    }

    fn active_clients(&self) -> Vec<usize> {
        (0..self.clients.len())
            .filter(|c| self.clients[*c].active)
            .collect()
    }

    fn some(&mut self, fraction: f64) -> Vec<usize> {
        let active = self.active_clients();
        let n = ((active.len() as f64) * fraction).round() as usize;
        active.choose_multiple(&mut self.rng, n).copied().collect()
    }

    async fn apply(&mut self, i: usize, step: &Step) -> Result<(), Violation> {
        let v = |what: String| violation(i, step, what);
        match step {
            Step::Clients { n } | Step::Herd { n } => {
                let new: Vec<usize> = (0..*n).map(|_| self.new_client()).collect();
                for c in new {
                    self.call(c, false).await.map_err(v)?;
                    if matches!(step, Step::Clients { .. }) {
                        tokio::time::sleep(Duration::from_millis(self.rng.random_range(0..50)))
                            .await;
                    }
                }
            }
            Step::Renew => {
                for c in self.active_clients() {
                    self.call(c, false).await.map_err(v)?;
                }
            }
            Step::Delete { fraction } => {
                for c in self.some(*fraction) {
                    self.call(c, true).await.map_err(v)?;
                    self.clients[c].active = false;
                }
            }
            Step::MoveNodes { fraction } => {
                for c in self.some(*fraction) {
                    let old = self.clients[c].clone();
                    self.clients[c].ip = self.fresh_ip();
                    self.call(c, false).await.map_err(v)?;
                    // The client withdraws the server at its old address.
                    let moved = std::mem::replace(&mut self.clients[c], old);
                    self.call(c, true).await.map_err(v)?;
                    self.clients[c] = moved;
                }
            }
            Step::Crash { peer, wipe } => {
                if let Some(p) = self.pick(*peer) {
                    if self.up().len() > 1 {
                        self.cluster.kill(p).await;
                        self.crashed.insert(p);
                        if *wipe {
                            self.wipe(p);
                        }
                        self.fault_changed(true);
                    }
                }
            }
            Step::WriteThenCrash { wipe } => {
                let up = self.up();
                if up.len() > 1 {
                    let at = up.choose(&mut self.rng).copied();
                    let c = self.new_client();
                    if let Some(p) = self.call_at(c, false, at).await.map_err(v)? {
                        self.cluster.kill(p).await;
                        self.crashed.insert(p);
                        if *wipe {
                            self.wipe(p);
                        }
                        self.fault_changed(true);
                    }
                }
            }
            Step::Lose { peer } => {
                if let Some(p) = self.pick(*peer) {
                    if self.up().len() > 1 {
                        self.cluster.kill(p).await;
                        self.wipe(p);
                        self.gone.insert(p);
                    }
                }
            }
            Step::CaughtUp { within_ms } => {
                let within = Duration::from_millis(*within_ms);
                let start = Instant::now();
                for p in self.up() {
                    loop {
                        if self.caught_up(p) && self.check_oracle(Scope::Peer(p)).is_ok() {
                            break;
                        }
                        if start.elapsed() > within {
                            let snap = self.cluster.nodes[p].mesh().view().snapshot();
                            let why = match &snap.state.catching_up {
                                Some(why) => format!("it has not caught up: {why}"),
                                None => self
                                    .check_oracle(Scope::Peer(p))
                                    .err()
                                    .unwrap_or_else(|| "it has not caught up".into()),
                            };
                            return Err(v(format!(
                                "p{p} was not in step with the mesh within {within:?}: {why}"
                            )));
                        }
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
                if self.cfg.verbose {
                    println!(
                        "           every running peer caught up after {:.2} s",
                        start.elapsed().as_secs_f64()
                    );
                }
            }
            Step::Restart => {
                for p in std::mem::take(&mut self.crashed) {
                    self.cluster
                        .start_node(p)
                        .await
                        .map_err(|e| v(e.to_string()))?;
                }
                self.fault_changed(self.partitions);
            }
            Step::FullRestart => {
                for p in self.up() {
                    self.cluster.kill(p).await;
                }

                for p in self.up() {
                    self.cluster
                        .start_node(p)
                        .await
                        .map_err(|e| v(e.to_string()))?;
                }
                self.fault_changed(self.partitions);
            }
            Step::Partition { a, b } => {
                let addrs = self.cluster.addrs();
                let pick = |ix: &[usize]| {
                    ix.iter()
                        .filter_map(|i| addrs.get(*i).copied())
                        .collect::<Vec<_>>()
                };
                self.cluster.net.partition(&pick(a), &pick(b));
                self.partitions = true;
                self.fault_changed(true);
            }
            Step::OneWay { from, to } => {
                let addrs = self.cluster.addrs();
                if let (Some(f), Some(t)) = (addrs.get(*from), addrs.get(*to)) {
                    self.cluster.net.block(*f, *t);
                    self.partitions = true;
                    self.fault_changed(true);
                }
            }
            Step::Heal => {
                self.heal();
            }
            Step::Loss { p } => {
                self.cluster.net.set_loss(*p);
                self.fault_changed(true);
            }
            Step::Delay { max_ms } => {
                self.cluster
                    .net
                    .set_delay(Duration::ZERO..Duration::from_millis(*max_ms));
                self.fault_changed(true);
            }
            Step::Sleep { ms } => tokio::time::sleep(Duration::from_millis(*ms)).await,
            Step::Quiet => {
                self.heal();
                let start = Instant::now();
                loop {
                    if self.converged() {
                        break;
                    }
                    if start.elapsed() > CONVERGE_WITHIN {
                        return Err(v(format!(
                            "live peers did not converge within {CONVERGE_WITHIN:?}: {:?}",
                            self.digests()
                        )));
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                self.out.converge.push(start.elapsed());
                if self.cfg.verbose {
                    let (mut served, mut gone, mut either) = (0, 0, 0);
                    for a in self.oracle.values() {
                        match a.expect {
                            Expect::Served { .. } => served += 1,
                            Expect::Gone => gone += 1,
                            Expect::Either => either += 1,
                        }
                    }
                    println!(
                        "           converged after {:.2} s; clients were told: {served} registered, {gone} deleted, {either} either",
                        start.elapsed().as_secs_f64()
                    );
                }
                self.check_oracle(Scope::Everyone).map_err(v)?;
            }
        }
        Ok(())
    }

    fn heal(&mut self) {
        self.cluster.net.heal();
        self.cluster.net.set_loss(0.0);
        self.cluster.net.set_delay(Duration::ZERO..Duration::ZERO);
        self.partitions = false;
        self.fault_changed(!self.crashed.is_empty());
    }

    fn fault_changed(&mut self, faulty: bool) {
        self.faulty = faulty;
        self.calm_since = Instant::now();
    }

    /// Loses a peer's disk. A write it answered `"replicated": false` may
    /// be lost with it; with local acknowledgements, so may any write only
    /// it had.
    fn wipe(&mut self, p: usize) {
        for a in self.oracle.values_mut() {
            if a.peer == p && a.replicated == Some(false) {
                a.expect = Expect::Either;
            }
        }
        if !self.cfg.ack_local {
            self.cluster.wipe(p);
            return;
        }
        let others: Vec<RegistryView> = self
            .up()
            .iter()
            .filter(|q| **q != p)
            .map(|q| self.cluster.nodes[*q].view())
            .collect();
        let disk = self.cluster.nodes[p].disk.clone();
        let own: Vec<Key> = disk
            .lock()
            .unwrap()
            .keys()
            .filter(|(_, origin)| origin.is_none())
            .map(|(key, _)| *key)
            .collect();
        for key in own {
            let known_elsewhere = others.iter().any(|v| {
                v.frontends
                    .get(&key.frontend)
                    .is_some_and(|f| f.servers.contains_key(&key.server))
            });
            if !known_elsewhere {
                if let Some(a) = self.oracle.get_mut(&key) {
                    a.expect = Expect::Either;
                }
            }
        }
        self.cluster.wipe(p);
    }

    fn views(&self) -> Vec<(usize, RegistryView)> {
        self.up()
            .into_iter()
            .map(|i| (i, self.cluster.nodes[i].view()))
            .collect()
    }

    fn digests(&self) -> Vec<(usize, String, String)> {
        self.views()
            .into_iter()
            .map(|(i, v)| {
                (
                    i,
                    v.digest(),
                    render(&v, &BTreeSet::new(), &self.render).digest,
                )
            })
            .collect()
    }

    fn converged(&self) -> bool {
        let d = self.digests();
        d.windows(2).all(|w| w[0].1 == w[1].1 && w[0].2 == w[1].2)
    }

    /// Checks that the peers in `scope` hold what the clients were told.
    fn check_oracle(&self, scope: Scope) -> Result<(), String> {
        let now_ms = self.clock.now_ms();
        let margin = (self.max_abs_skew * 2 + Duration::from_secs(1)).as_millis() as u64;
        let views: Vec<(usize, RegistryView)> = match scope {
            Scope::Everyone => self.views(),
            Scope::VipHolder(p, _) | Scope::Peer(p) => vec![(p, self.cluster.nodes[p].view())],
        };
        for (key, acked) in &self.oracle {
            if let Scope::VipHolder(_, bound) = scope {
                if acked.at < self.calm_since || acked.at.elapsed() < bound {
                    continue;
                }
            }
            for (p, view) in &views {
                let served = view
                    .frontends
                    .get(&key.frontend)
                    .is_some_and(|f| f.servers.contains_key(&key.server));
                match acked.expect {
                    Expect::Served { until_ms, .. } if now_ms + margin < until_ms && !served => {
                        return Err(format!(
                            "p{p} lost {key}: a client was told it is registered until {} ms from start",
                            until_ms - self.cluster.settings.start_ms
                        ));
                    }
                    Expect::Served { last_ms, .. } if now_ms > last_ms + margin && served => {
                        return Err(format!("p{p} still serves {key} after its lease ended"));
                    }
                    Expect::Gone if served => {
                        return Err(format!("p{p} serves {key}, which a client deleted"));
                    }
                    _ => {}
                }
            }
        }
        Ok(())
    }

    /// The checks after every step.
    fn check_step(&mut self, i: usize, step: &Step) -> Result<(), Violation> {
        for (p, view) in self.views() {
            self.cluster.nodes[p]
                .registry()
                .with(|r| r.check_invariants())
                .map_err(|e| violation(i, step, format!("p{p} bookkeeping: {e}")))?;
            let rendered = render(&view, &BTreeSet::new(), &self.render);
            if self.out.configs.len() < 64 {
                self.out
                    .configs
                    .entry(rendered.digest.clone())
                    .or_insert(rendered.text);
            }
            view.digest().hash(&mut self.trace);
        }
        // The VIP holder serves every change older than the bound, once calm.
        if !self.faulty {
            if let Some(holder) = self.vip_holder() {
                self.check_oracle(Scope::VipHolder(holder, self.cfg.vip_bound))
                    .map_err(|e| {
                        violation(
                            i,
                            step,
                            format!("VIP holder lags more than {:?}: {e}", self.cfg.vip_bound),
                        )
                    })?;
            }
        }
        Ok(())
    }

    pub async fn run(mut self, scenario: &Scenario) -> Outcome {
        let start = Instant::now();
        if self
            .cluster
            .wait_converged(Duration::from_secs(30))
            .await
            .is_none()
        {
            self.out.violation = Some(Violation {
                step: 0,
                step_text: "start".into(),
                what: "the empty mesh did not converge".into(),
            });
        }
        for (i, step) in scenario.steps.iter().enumerate() {
            if self.out.violation.is_some() {
                break;
            }
            if self.cfg.verbose {
                println!(
                    "  step {i:>2} at {:>7.3} s: {step:?}",
                    start.elapsed().as_secs_f64()
                );
            }
            let r = match self.apply(i, step).await {
                Ok(()) => self.check_step(i, step),
                Err(e) => Err(e),
            };
            if let Err(v) = r {
                self.out.violation = Some(v);
            }
            self.out.steps = i + 1;
        }
        self.out.sim_time = start.elapsed();
        self.out.trace = self.trace.finish();
        let out = std::mem::take(&mut self.out);
        self.cluster.stop().await;
        out
    }
}

/// Runs `scenario` once with `cfg.seed` on this thread, deterministically.
pub fn run(scenario: &Scenario, cfg: &RunConfig) -> Outcome {
    chitchat::rng::seed_thread(cfg.seed);
    lbmesh::registry::entry::fault::ADDS_WIN.with(|f| f.set(cfg.wrong_merge));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("runtime");
    let base = std::env::temp_dir().join(format!("lbmesh-sim-{}", std::process::id()));
    let out = rt.block_on(async {
        match World::new(cfg.clone(), scenario, &base).await {
            Ok(w) => w.run(scenario).await,
            Err(e) => Outcome {
                violation: Some(Violation {
                    step: 0,
                    step_text: "start".into(),
                    what: format!("cannot start: {e}"),
                }),
                ..Outcome::default()
            },
        }
    });
    drop(rt);
    lbmesh::registry::entry::fault::ADDS_WIN.with(|f| f.set(false));
    chitchat::rng::unseed_thread();
    out
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;

    use super::*;
    use crate::scenario::{BUILT_IN, built_in};

    fn cfg(seed: u64, wrong_merge: bool) -> RunConfig {
        RunConfig {
            peers: 5,
            seed,
            wrong_merge,
            verbose: false,
            vip_bound: Duration::from_secs(5),
            links: None,
            ack_local: false,
        }
    }

    fn scenario(name: &str, seed: u64) -> Scenario {
        built_in(name, 5, &mut SmallRng::seed_from_u64(seed)).unwrap()
    }

    #[test]
    fn a_seed_replays_exactly() {
        for name in ["partition", "lossy", "crash-restart", "stale-links"] {
            let a = run(&scenario(name, 7), &cfg(7, false));
            let b = run(&scenario(name, 7), &cfg(7, false));
            assert_eq!(a.trace, b.trace, "{name}: same seed, different run");
            assert_eq!(a.sim_time, b.sim_time);
            assert_eq!(
                a.configs.keys().collect::<Vec<_>>(),
                b.configs.keys().collect::<Vec<_>>()
            );
            let c = run(&scenario(name, 8), &cfg(8, false));
            assert_ne!(a.trace, c.trace, "{name}: another seed should differ");
        }
    }

    #[test]
    fn every_scenario_holds_its_invariants_on_a_few_seeds() {
        for name in BUILT_IN {
            for seed in 1..=3 {
                let out = run(&scenario(name, seed), &cfg(seed, false));
                assert!(
                    out.violation.is_none(),
                    "{name} seed {seed}: {:?}",
                    out.violation
                );
            }
        }
    }

    #[test]
    fn connections_that_outlive_a_restarted_peer_are_caught_and_lbmesh_rules_pass() {
        let deaf = RunConfig {
            links: Some(LinkModel::QuicIdleTimeoutOnly),
            ..cfg(4, false)
        };
        let v = run(&scenario("stale-links", 4), &deaf)
            .violation
            .expect("a restarted peer that hears nobody for 15 s must be caught");
        assert!(v.what.contains("has not caught up"), "{v:?}");
        assert!(matches!(
            scenario("stale-links", 4).steps[v.step],
            Step::CaughtUp { .. }
        ));
        let out = run(&scenario("stale-links", 4), &cfg(4, false));
        assert!(out.violation.is_none(), "{:?}", out.violation);
    }

    #[test]
    fn a_wrong_merge_rule_is_caught_and_its_seed_replays_the_failure() {
        let failing = (1..=10)
            .find_map(|seed| {
                run(&scenario("basic", seed), &cfg(seed, true))
                    .violation
                    .map(|v| (seed, v))
            })
            .expect("adds beating deletes must break an invariant");
        let (seed, first) = failing;
        assert!(first.what.contains("which a client deleted"), "{first:?}");
        let again = run(&scenario("basic", seed), &cfg(seed, true)).violation;
        assert_eq!(
            again.as_ref(),
            Some(&first),
            "the seed replays the same failure at the same step"
        );
        // And the correct rule passes that very seed.
        assert!(
            run(&scenario("basic", seed), &cfg(seed, false))
                .violation
                .is_none()
        );
    }
}
