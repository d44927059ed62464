//! Churn against a real lbmesh and HAProxy, sized by the caller: the bounded
//! tests of `tests/haproxy_churn.rs` and the full runs of `benches/churn.rs`
//! share it.
//!
//! - [`churn`]: server registrations added and withdrawn at a set rate
//!   across many frontends, a few frontends coming and going, while TCP
//!   clients connect through the frontends that always have a server.
//! - [`flap`]: one registration added and deleted at full speed while a
//!   long-lived connection to another frontend stays open.
//!
//! Both watch HAProxy's processes the whole time (one master, how many
//! workers) and count reloads from lbmesh's status.
#![allow(dead_code)]

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;

use crate::common::{Daemon, DaemonOpts, eventually, free_port};

/// A seeded xorshift generator: a run is repeatable from its seed.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed.max(1))
    }
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// Many TCP servers in one runtime, each greeting a connection with its
/// name and closing it: the NodePorts of the churned services.
pub struct Servers {
    pub addrs: Vec<SocketAddr>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl Servers {
    pub fn start(n: usize) -> Servers {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let addrs = runtime.block_on(async {
            let mut addrs = Vec::with_capacity(n);
            for i in 0..n {
                let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
                addrs.push(l.local_addr().unwrap());
                tokio::spawn(async move {
                    use tokio::io::AsyncWriteExt;
                    let greeting = format!("server-{i}\n");
                    while let Ok((mut s, _)) = l.accept().await {
                        let g = greeting.clone();
                        tokio::spawn(async move {
                            let _ = s.write_all(g.as_bytes()).await;
                        });
                    }
                });
            }
            addrs
        });
        Servers {
            addrs,
            runtime: Some(runtime),
        }
    }
}

impl Drop for Servers {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

/// A server that echoes every line back and keeps the connection open.
pub struct Echo {
    pub addr: SocketAddr,
    stop: Arc<AtomicBool>,
}

impl Echo {
    pub fn start() -> Echo {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let st = stop.clone();
        std::thread::spawn(move || {
            while !st.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((mut conn, _)) => {
                        let _ = conn.set_nonblocking(false);
                        std::thread::spawn(move || {
                            let mut buf = [0u8; 1024];
                            while let Ok(n) = conn.read(&mut buf) {
                                if n == 0 || conn.write_all(&buf[..n]).is_err() {
                                    break;
                                }
                            }
                        });
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        });
        Echo { addr, stop }
    }
}

impl Drop for Echo {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// One connection through a frontend: connects, reads the greeting.
fn connect_once(frontend: SocketAddr) -> Result<(), String> {
    let mut s = TcpStream::connect_timeout(&frontend, Duration::from_secs(3))
        .map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let mut buf = [0u8; 64];
    match s.read(&mut buf) {
        Ok(0) => Err("closed without a greeting".into()),
        Ok(n) if buf[..n].starts_with(b"server-") => Ok(()),
        Ok(n) => Err(format!(
            "unexpected greeting {:?}",
            String::from_utf8_lossy(&buf[..n])
        )),
        Err(e) => Err(format!("read: {e}")),
    }
}

/// HAProxy's processes for a daemon: masters (children of lbmesh) and
/// workers (children of a master), old workers included.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Processes {
    pub masters: usize,
    pub workers: usize,
}

pub fn haproxy_processes(daemon_pid: u32, config: &Path) -> Processes {
    let want = config.as_os_str().as_encoded_bytes();
    let mut masters = BTreeSet::new();
    let mut others = Vec::new();
    for pid in std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
    {
        let runs_config = std::fs::read(format!("/proc/{pid}/cmdline"))
            .is_ok_and(|c| c.split(|b| *b == 0).any(|arg| arg == want));
        if !runs_config {
            continue;
        }
        let Some((state, ppid)) = stat(pid) else {
            continue;
        };
        if state == 'Z' {
            continue;
        }
        if ppid == daemon_pid {
            masters.insert(pid);
        } else {
            others.push(ppid);
        }
    }
    Processes {
        masters: masters.len(),
        workers: others.iter().filter(|p| masters.contains(p)).count(),
    }
}

fn stat(pid: u32) -> Option<(char, u32)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let mut rest = s.rsplit(')').next()?.split_whitespace();
    let state = rest.next()?.chars().next()?;
    Some((state, rest.next()?.parse().ok()?))
}

/// Samples HAProxy's processes every 100 ms until dropped; keeps the largest counts.
pub struct Watch {
    stop: Arc<AtomicBool>,
    max_masters: Arc<AtomicUsize>,
    max_workers: Arc<AtomicUsize>,
    samples: Arc<AtomicU64>,
    handle: Option<std::thread::JoinHandle<()>>,
}

impl Watch {
    pub fn start(daemon_pid: u32, config: PathBuf) -> Watch {
        let stop = Arc::new(AtomicBool::new(false));
        let (max_masters, max_workers) =
            (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let samples = Arc::new(AtomicU64::new(0));
        let (st, mm, mw, n) = (
            stop.clone(),
            max_masters.clone(),
            max_workers.clone(),
            samples.clone(),
        );
        let handle = std::thread::spawn(move || {
            while !st.load(Ordering::Relaxed) {
                let p = haproxy_processes(daemon_pid, &config);
                mm.fetch_max(p.masters, Ordering::Relaxed);
                mw.fetch_max(p.workers, Ordering::Relaxed);
                n.fetch_add(1, Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        Watch {
            stop,
            max_masters,
            max_workers,
            samples,
            handle: Some(handle),
        }
    }

    /// (largest number of masters, of workers, samples taken).
    pub fn finish(mut self) -> (usize, usize, u64) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
        (
            self.max_masters.load(Ordering::Relaxed),
            self.max_workers.load(Ordering::Relaxed),
            self.samples.load(Ordering::Relaxed),
        )
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// The original hook of one daemon, callable from any thread.
#[derive(Clone)]
struct Hook {
    url: String,
    token: String,
}

/// How the daemon answered one change.
enum Answer {
    Accepted,
    /// An answer other than 200: its status and body.
    Refused(u16, String),
    /// No answer at all (connection refused, reset or timed out).
    Failed,
}

impl Hook {
    fn of(d: &Daemon) -> Hook {
        Hook {
            url: d.url("/hooks/update-haproxy"),
            token: d.token.clone(),
        }
    }

    /// Registers or withdraws `server` on `port`.
    fn change(&self, name: &str, port: u16, server: SocketAddr, add: bool) -> Answer {
        let mut body = json!({
            "name": name, "frontend-port": port.to_string(),
            "backend-port": server.port().to_string(), "dst-ip": server.ip().to_string(),
            "action": if add { "add" } else { "delete" },
        });
        if add {
            body["ttl"] = json!("3600");
        }
        match crate::common::http(
            "POST",
            &self.url,
            Some(&self.token),
            Some("application/json"),
            Some(body.to_string().into_bytes()),
        ) {
            (200, _) => Answer::Accepted,
            (0, _) => Answer::Failed,
            (code, body) => Answer::Refused(code, body.to_string()),
        }
    }
}

/// Registers or withdraws `server` on `port` through the original hook.
fn change(d: &Daemon, name: &str, port: u16, server: SocketAddr, add: bool) -> bool {
    matches!(
        Hook::of(d).change(name, port, server, add),
        Answer::Accepted
    )
}

fn status_counter(d: &Daemon, key: &str) -> u64 {
    d.status()["haproxy"][key].as_u64().unwrap_or(0)
}

/// The size of a churn run.
#[derive(Debug, Clone)]
pub struct ChurnPlan {
    /// Frontends that always keep at least one server; clients use these.
    pub steady_frontends: usize,
    /// Frontends that come and go: all their servers leave, stay away past
    /// the grace period, and come back.
    pub transient_frontends: usize,
    /// Servers each steady frontend draws from (at least 2: a change never
    /// withdraws a frontend's last server).
    pub servers_per_frontend: usize,
    /// Registrations plus withdrawals per minute on the steady frontends.
    pub changes_per_minute: u64,
    pub duration: Duration,
    /// Threads sending the changes. Each owns every n-th steady frontend
    /// and every n-th slot of the schedule, so the offered rate is the
    /// plan's as long as one answer takes less than n slots.
    pub change_senders: usize,
    /// Client threads connecting through the steady frontends.
    pub clients: usize,
    /// Each client's pause between connections.
    pub client_pause: Duration,
    /// `haproxy.empty-frontend-grace` of the daemon.
    pub grace: Duration,
    pub seed: u64,
}

impl ChurnPlan {
    /// The time between two changes on the steady frontends, all senders together.
    pub fn interval(&self) -> Duration {
        Duration::from_nanos(60_000_000_000 / self.changes_per_minute.max(1))
    }

    /// When slot `n` of the schedule falls, after the start; None past the
    /// plan's duration.
    fn slot(&self, n: u64) -> Option<Duration> {
        let at = Duration::from_nanos(self.interval().as_nanos() as u64 * n);
        (at < self.duration).then_some(at)
    }

    /// Changes on the steady frontends the schedule holds.
    pub fn planned_changes(&self) -> u64 {
        let interval = self.interval().as_nanos().max(1);
        self.duration.as_nanos().div_ceil(interval) as u64
    }
}

/// What a churn run saw.
#[derive(Debug, Clone, Default)]
pub struct ChurnReport {
    /// How long the changes went on, and the whole run with its settling.
    pub churn_seconds: f64,
    pub seconds: f64,
    /// Changes on the steady frontends: scheduled by the plan, sent before
    /// the end of the run (fewer when the senders fell behind), accepted.
    pub planned_changes: u64,
    pub sent_changes: u64,
    pub steady_changes: u64,
    /// Accepted changes, on steady and transient frontends together.
    pub changes: u64,
    /// Changes answered with an error status, and changes without an answer.
    pub refused_changes: u64,
    pub failed_changes: u64,
    /// The first refused or failed changes, with when they happened.
    pub change_errors: Vec<String>,
    /// How long the daemon took to answer a change on a steady frontend,
    /// in milliseconds: median, 99th percentile, largest.
    pub change_latency_ms: [f64; 3],
    /// The most any change was sent after its slot, in milliseconds.
    pub max_lag_ms: f64,
    pub frontend_additions: u64,
    pub frontend_removals: u64,
    pub reloads: u64,
    pub runtime_updates: u64,
    pub connections: u64,
    pub failed_connections: u64,
    /// The first failures, with when they happened.
    pub failures: Vec<String>,
    pub max_masters: usize,
    pub max_workers: usize,
    pub process_samples: u64,
}

impl ChurnReport {
    /// Accepted changes on the steady frontends per minute of churn.
    pub fn steady_per_minute(&self) -> f64 {
        self.steady_changes as f64 * 60.0 / self.churn_seconds.max(f64::MIN_POSITIVE)
    }
}

/// A daemon set up for churn: room for the servers, the given grace period
/// and health-check interval, other HAProxy settings at their defaults.
pub fn churn_daemon(grace: Duration, check_interval: &str) -> Daemon {
    let toml = format!(
        "[registry]\nmin-ttl = \"1s\"\nmax-servers = 100000\nmax-frontends = 5000\n\
         allowed-backends = [\"0.0.0.0/0\", \"::/0\", \"127.0.0.0/8\"]\n\
         [haproxy]\ncheck-interval = \"{check_interval}\"\ncheck-fall = 2\ncheck-rise = 1\n\
         empty-frontend-grace = \"{}ms\"\nhard-stop-after = \"30s\"\n",
        grace.as_millis()
    );
    Daemon::start(DaemonOpts {
        toml,
        ..DaemonOpts::default()
    })
}

/// The changes' answers, counted by every sender.
#[derive(Default)]
struct Tally {
    sent: AtomicU64,
    steady: AtomicU64,
    transient: AtomicU64,
    refused: AtomicU64,
    failed: AtomicU64,
    errors: Mutex<Vec<String>>,
}

impl Tally {
    /// Counts one answer; true if the change was accepted.
    fn count(&self, answer: Answer, steady: bool, what: &str, started: Instant) -> bool {
        let error = match answer {
            Answer::Accepted => {
                let n = if steady {
                    &self.steady
                } else {
                    &self.transient
                };
                n.fetch_add(1, Ordering::Relaxed);
                return true;
            }
            Answer::Refused(code, body) => {
                self.refused.fetch_add(1, Ordering::Relaxed);
                format!("{code} {body}")
            }
            Answer::Failed => {
                self.failed.fetch_add(1, Ordering::Relaxed);
                "no answer".to_owned()
            }
        };
        let mut list = self.errors.lock().unwrap();
        if list.len() < 20 {
            list.push(format!(
                "{:.3}s {what}: {error}",
                started.elapsed().as_secs_f64()
            ));
        }
        false
    }
}

/// What one sender saw: answer latencies in microseconds, and its largest lag.
struct SenderLog {
    latencies_us: Vec<u32>,
    max_lag: Duration,
}

/// One sender of changes on the steady frontends. It owns `frontends`
/// (each with its pool of servers) and sends a change at each of its slots:
/// `first`, `first + step`, ... intervals after `started`, until the plan's
/// duration. Late, it sends at once and catches up. Which change it sends
/// follows from its seed and the answers alone, never from timing.
struct Sender {
    hook: Hook,
    frontends: Vec<(u16, Vec<SocketAddr>)>,
    seed: u64,
    first: u64,
    step: u64,
}

impl Sender {
    fn run(self, plan: &ChurnPlan, started: Instant, tally: &Tally) -> SenderLog {
        let mut rng = Rng::new(self.seed);
        // Every steady frontend starts with all its servers registered.
        let mut registered: Vec<Vec<bool>> = self
            .frontends
            .iter()
            .map(|(_, pool)| vec![true; pool.len()])
            .collect();
        let mut log = SenderLog {
            latencies_us: Vec::new(),
            max_lag: Duration::ZERO,
        };
        let mut slot = self.first;
        while let Some(offset) = plan.slot(slot) {
            if started.elapsed() >= plan.duration {
                break;
            }
            slot += self.step;
            let at = started + offset;
            match at.checked_duration_since(Instant::now()) {
                Some(wait) => std::thread::sleep(wait),
                None => log.max_lag = log.max_lag.max(at.elapsed()),
            }
            // One server change, never a frontend's last server.
            let (f, s, add) = loop {
                let f = rng.below(self.frontends.len());
                let s = rng.below(registered[f].len());
                let add = !registered[f][s];
                if add || registered[f].iter().filter(|r| **r).count() > 1 {
                    break (f, s, add);
                }
            };
            let (port, pool) = &self.frontends[f];
            tally.sent.fetch_add(1, Ordering::Relaxed);
            let asked = Instant::now();
            let answer = self.hook.change(&format!("svc{port}"), *port, pool[s], add);
            log.latencies_us
                .push(asked.elapsed().as_micros().min(u32::MAX as u128) as u32);
            let what = format!(
                "{} {} on {port}",
                if add { "add" } else { "delete" },
                pool[s]
            );
            if tally.count(answer, true, &what, started) {
                registered[f][s] = add;
            }
        }
        log
    }
}

/// Runs churn on `d` as `plan` says.
pub fn churn(d: &Daemon, plan: &ChurnPlan) -> ChurnReport {
    let k = plan.servers_per_frontend;
    assert!(
        plan.steady_frontends >= 1 && k >= 2,
        "churn needs a steady frontend with two servers: {plan:?}"
    );
    let servers = Servers::start(plan.steady_frontends * k + plan.transient_frontends * 2);
    // A frontend port that is also a server's port on 127.0.0.1 (an
    // address of this VM) would be refused as a forwarding loop.
    let taken: BTreeSet<u16> = servers.addrs.iter().map(SocketAddr::port).collect();
    let frontend_port = || loop {
        let p = free_port(&d.ip);
        if !taken.contains(&p) {
            break p;
        }
    };
    let steady: Vec<u16> = (0..plan.steady_frontends)
        .map(|_| frontend_port())
        .collect();
    let transient: Vec<u16> = (0..plan.transient_frontends)
        .map(|_| frontend_port())
        .collect();
    let pool = |f: usize| &servers.addrs[f * k..(f + 1) * k];
    // Every steady frontend starts with all its servers: its slots are
    // sized for the whole pool before the measured run.
    for (f, port) in steady.iter().enumerate() {
        for s in pool(f) {
            assert!(change(d, &format!("svc{port}"), *port, *s, true));
        }
    }
    d.in_step();
    for port in &steady {
        eventually(
            Duration::from_secs(20),
            "every steady frontend to serve",
            || connect_once(d.frontend(*port)).ok(),
        );
    }

    let reloads0 = status_counter(d, "reloads");
    let runtime0 = status_counter(d, "runtime_updates");
    let watch = Watch::start(d.pid(), d.data_dir.join("haproxy.cfg"));
    let stop = Arc::new(AtomicBool::new(false));
    let connections = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let failures = Arc::new(Mutex::new(Vec::new()));
    let started = Instant::now();
    let clients: Vec<_> = (0..plan.clients)
        .map(|c| {
            let frontends: Vec<SocketAddr> = steady.iter().map(|p| d.frontend(*p)).collect();
            let (stop, connections, failed, failures) = (
                stop.clone(),
                connections.clone(),
                failed.clone(),
                failures.clone(),
            );
            let pause = plan.client_pause;
            let seed = plan.seed ^ ((c as u64 + 1) * 0x9e37_79b9);
            std::thread::spawn(move || {
                let mut rng = Rng::new(seed);
                while !stop.load(Ordering::Relaxed) {
                    let f = frontends[rng.below(frontends.len())];
                    connections.fetch_add(1, Ordering::Relaxed);
                    if let Err(e) = connect_once(f) {
                        failed.fetch_add(1, Ordering::Relaxed);
                        let mut list = failures.lock().unwrap();
                        if list.len() < 20 {
                            list.push(format!("{:.3}s {f}: {e}", started.elapsed().as_secs_f64()));
                        }
                    }
                    std::thread::sleep(pause);
                }
            })
        })
        .collect();

    // The churn itself: the senders share the schedule, each its own
    // frontends and slots, while this thread moves the transient frontends.
    let hook = Hook::of(d);
    let tally = Tally::default();
    let n = plan.change_senders.clamp(1, plan.steady_frontends.max(1));
    let mut report = ChurnReport {
        planned_changes: plan.planned_changes(),
        ..ChurnReport::default()
    };
    let logs: Vec<SenderLog> = std::thread::scope(|scope| {
        let senders: Vec<_> = (0..n)
            .map(|c| {
                let sender = Sender {
                    hook: hook.clone(),
                    frontends: (c..steady.len())
                        .step_by(n)
                        .map(|f| (steady[f], pool(f).to_vec()))
                        .collect(),
                    seed: plan.seed ^ (c as u64 + 1).wrapping_mul(0xbf58_476d_1ce4_e5b9),
                    first: c as u64,
                    step: n as u64,
                };
                let tally = &tally;
                scope.spawn(move || sender.run(plan, started, tally))
            })
            .collect();
        // Transient frontends: up for a cycle, down for a cycle (past the grace).
        let mut transient_up: Vec<Option<bool>> = vec![None; plan.transient_frontends];
        let mut transient_since: Vec<Instant> = vec![started; plan.transient_frontends];
        let cycle = plan.grace * 2 + Duration::from_secs(2);
        while started.elapsed() < plan.duration {
            for t in 0..plan.transient_frontends {
                let offset = cycle.mul_f64(t as f64 / plan.transient_frontends.max(1) as f64);
                if started.elapsed() < offset
                    || transient_since[t].elapsed() < cycle && transient_up[t].is_some()
                {
                    continue;
                }
                let up = !transient_up[t].unwrap_or(false);
                let port = transient[t];
                let base = plan.steady_frontends * k + t * 2;
                for s in &servers.addrs[base..base + 2] {
                    let answer = hook.change(&format!("svc{port}"), port, *s, up);
                    let what = format!("{} {s} on {port}", if up { "add" } else { "delete" });
                    tally.count(answer, false, &what, started);
                }
                if up {
                    report.frontend_additions += 1;
                } else {
                    report.frontend_removals += 1;
                }
                transient_up[t] = Some(up);
                transient_since[t] = Instant::now();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        senders.into_iter().map(|s| s.join().unwrap()).collect()
    });
    report.churn_seconds = started.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        let _ = c.join();
    }
    report.sent_changes = tally.sent.load(Ordering::Relaxed);
    report.steady_changes = tally.steady.load(Ordering::Relaxed);
    report.changes = report.steady_changes + tally.transient.load(Ordering::Relaxed);
    report.refused_changes = tally.refused.load(Ordering::Relaxed);
    report.failed_changes = tally.failed.load(Ordering::Relaxed);
    report.change_errors = tally.errors.lock().unwrap().clone();
    let mut latencies: Vec<u32> = logs.iter().flat_map(|l| l.latencies_us.clone()).collect();
    latencies.sort_unstable();
    let ms = |q: f64| {
        latencies
            .get(((latencies.len() as f64 * q) as usize).min(latencies.len().saturating_sub(1)))
            .map_or(0.0, |us| *us as f64 / 1000.0)
    };
    report.change_latency_ms = [ms(0.5), ms(0.99), ms(1.0)];
    report.max_lag_ms = logs
        .iter()
        .map(|l| l.max_lag.as_secs_f64() * 1000.0)
        .fold(0.0, f64::max);
    // A removal lands after the grace period: wait for it before counting.
    std::thread::sleep(plan.grace + Duration::from_secs(1));
    let (max_masters, max_workers, samples) = watch.finish();
    report.seconds = started.elapsed().as_secs_f64();
    report.reloads = status_counter(d, "reloads") - reloads0;
    report.runtime_updates = status_counter(d, "runtime_updates") - runtime0;
    report.connections = connections.load(Ordering::Relaxed);
    report.failed_connections = failed.load(Ordering::Relaxed);
    report.failures = failures.lock().unwrap().clone();
    report.max_masters = max_masters;
    report.max_workers = max_workers;
    report.process_samples = samples;
    report
}

/// What a flap run saw.
#[derive(Debug, Clone, Default)]
pub struct FlapReport {
    pub seconds: f64,
    /// Delete-then-add pairs sent.
    pub flaps: u64,
    pub reloads: u64,
    /// Lines echoed over the long-lived connection, and whether it stayed open.
    pub echoes: u64,
    pub long_lived_open: bool,
    /// New connections to the long-lived connection's frontend, and failures.
    pub probes: u64,
    pub failed_probes: u64,
    pub max_masters: usize,
    pub max_workers: usize,
}

/// Flaps one registration at full speed for `duration` while a long-lived
/// connection through another frontend echoes a line every 200 ms.
///
/// The flapped registration exists once before the connection opens: its
/// frontend's first appearance is a frontend addition, which takes a
/// reload, and an old worker keeps its connections only until
/// `hard-stop-after`. What is measured is the flapping after that.
pub fn flap(d: &Daemon, duration: Duration) -> FlapReport {
    let echo = Echo::start();
    let steady = free_port(&d.ip);
    assert!(change(d, "steady", steady, echo.addr, true));
    let flapped = free_port(&d.ip);
    let servers = Servers::start(1);
    let target = servers.addrs[0];
    assert!(change(d, "flapper", flapped, target, true));
    d.in_step();
    let frontend = d.frontend(steady);
    let mut conn = eventually(Duration::from_secs(10), "the long-lived connection", || {
        let mut c = TcpStream::connect(frontend).ok()?;
        c.set_read_timeout(Some(Duration::from_secs(3))).ok()?;
        c.write_all(b"hello\n").ok()?;
        let mut buf = [0u8; 6];
        c.read_exact(&mut buf).ok()?;
        (&buf == b"hello\n").then_some(c)
    });
    let reloads0 = status_counter(d, "reloads");
    let watch = Watch::start(d.pid(), d.data_dir.join("haproxy.cfg"));
    let stop = Arc::new(AtomicBool::new(false));
    let flaps = Arc::new(AtomicU64::new(0));
    let flapper = {
        let (stop, flaps) = (stop.clone(), flaps.clone());
        let hook = Hook::of(d);
        std::thread::spawn(move || {
            let flip = |add| {
                matches!(
                    hook.change("flapper", flapped, target, add),
                    Answer::Accepted
                )
            };
            while !stop.load(Ordering::Relaxed) {
                if flip(false) && flip(true) {
                    flaps.fetch_add(1, Ordering::Relaxed);
                }
            }
        })
    };
    let started = Instant::now();
    let mut report = FlapReport {
        long_lived_open: true,
        ..FlapReport::default()
    };
    let mut n = 0u64;
    while started.elapsed() < duration {
        let line = format!("ping {n}\n");
        n += 1;
        let mut buf = vec![0u8; line.len()];
        let ok = conn.write_all(line.as_bytes()).is_ok()
            && conn.read_exact(&mut buf).is_ok()
            && buf == line.as_bytes();
        if !ok {
            report.long_lived_open = false;
            break;
        }
        report.echoes += 1;
        // A new connection to the same frontend works too.
        report.probes += 1;
        let probe =
            TcpStream::connect_timeout(&frontend, Duration::from_secs(2)).and_then(|mut c| {
                c.set_read_timeout(Some(Duration::from_secs(2)))?;
                c.write_all(b"x\n")?;
                let mut b = [0u8; 2];
                c.read_exact(&mut b)?;
                Ok(b)
            });
        if !matches!(probe, Ok(b) if &b == b"x\n") {
            report.failed_probes += 1;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    stop.store(true, Ordering::Relaxed);
    let _ = flapper.join();
    let (max_masters, max_workers, _) = watch.finish();
    report.seconds = started.elapsed().as_secs_f64();
    report.flaps = flaps.load(Ordering::Relaxed);
    report.reloads = status_counter(d, "reloads") - reloads0;
    report.max_masters = max_masters;
    report.max_workers = max_workers;
    report
}
