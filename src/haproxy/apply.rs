//! Keeps HAProxy serving the registry: the loop that feeds the planner what
//! the registry and HAProxy look like, has the executor perform each step,
//! and publishes what HAProxy serves.
//!
//! The loop runs on a thread of its own with a single-threaded runtime:
//! rendering 100,000 servers, writing and syncing the config and waiting on
//! `haproxy -c` never take a worker thread from the API or the mesh.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::watch;

use super::execute::{ExecSettings, Executor};
use super::plan::{Method, Observed, Outcome, PlanSettings, Planner, Report, Step};
use super::process::Haproxy;
use super::render::RenderSettings;
use crate::events::{Cause, EventKind};
use crate::metrics::{ApplyLabels, CauseLabels, Metrics};
use crate::registry::RegistryView;
use crate::shared::SharedRegistry;

/// Timing of the apply loop.
#[derive(Debug, Clone)]
pub struct ApplyTiming {
    /// After a change, wait this long for more before applying (bursts → one apply).
    pub coalesce: Duration,
    /// At most one reload per this interval; Runtime API changes are not limited.
    pub min_reload_interval: Duration,
    /// How long a frontend whose last server left stays bound before a reload removes it.
    pub empty_frontend_grace: Duration,
}

impl Default for ApplyTiming {
    fn default() -> Self {
        Self {
            coalesce: Duration::from_millis(20),
            min_reload_interval: Duration::from_millis(500),
            empty_frontend_grace: Duration::from_secs(60),
        }
    }
}

/// The outcome of the most recent apply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ApplyReport {
    pub at_ms: u64,
    pub method: Method,
    pub ok: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub duration_ms: u64,
}

/// What this peer's HAProxy serves, published after every step.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ApplyStatus {
    /// Config generation of the view last planned for.
    pub config_generation: u64,
    /// Digest of that view.
    pub registry_digest: String,
    /// Digest of what HAProxy serves (frontends with their servers),
    /// comparable between peers.
    pub config_digest: Option<String>,
    /// Digest of what it should serve now; differs from `config_digest`
    /// while an apply is pending or failing.
    pub wanted_config_digest: Option<String>,
    pub frontends: usize,
    pub servers: usize,
    pub last: Option<ApplyReport>,
    /// Frontend ports left out, with the reason.
    pub quarantined: BTreeMap<u16, String>,
    /// Frontends whose change waits for its turn to reload, with the reason.
    pub deferred: BTreeMap<u16, String>,
    /// Frontends still bound with no servers, and the milliseconds left of
    /// their grace period before a reload may remove them.
    pub held: BTreeMap<u16, u64>,
    pub reloads: u64,
    pub runtime_updates: u64,
}

impl ApplyStatus {
    /// Whether the last apply succeeded and HAProxy serves what it should now.
    pub fn in_step(&self) -> bool {
        self.last.as_ref().is_some_and(|l| l.ok)
            && self.config_digest.is_some()
            && self.config_digest == self.wanted_config_digest
    }

    /// Whether a change to `frontend` in config generation `generation` is
    /// settled: planned for, and not waiting for a reload.
    pub fn settled(&self, generation: u64, frontend: u16) -> bool {
        self.config_generation >= generation
            && self.last.is_some()
            && !self.deferred.contains_key(&frontend)
    }
}

/// The longest a registry change waits for this peer to catch up with the
/// mesh before it is applied anyway (see [`Applier::hold_until_caught_up`]).
pub const CATCH_UP_HOLD: Duration = Duration::from_secs(5);

pub struct Applier {
    registry: Arc<SharedRegistry>,
    haproxy: Haproxy,
    planner: Planner,
    executor: Executor,
    coalesce: Duration,
    metrics: Arc<Metrics>,
    status: watch::Sender<ApplyStatus>,
    /// Whether this peer has caught up with the mesh (none: not in a mesh).
    caught_up: Option<watch::Receiver<bool>>,
}

/// The registry as last read, with what is costly to derive from it.
struct Snapshot {
    view: RegistryView,
    digest: String,
}

impl Snapshot {
    /// What says when the view is out of date: its config generation and
    /// the next lease end.
    fn marks(&self) -> (u64, Option<u64>) {
        (self.view.config_generation, self.view.next_expiry_ms)
    }
}

impl Applier {
    pub fn new(
        registry: Arc<SharedRegistry>,
        haproxy: Haproxy,
        settings: RenderSettings,
        timing: ApplyTiming,
        exec: ExecSettings,
        metrics: Arc<Metrics>,
    ) -> (Self, watch::Receiver<ApplyStatus>) {
        let (status, rx) = watch::channel(ApplyStatus::default());
        let planner = Planner::new(PlanSettings {
            slots: settings.slot_policy(),
            min_reload_interval: timing.min_reload_interval,
            empty_frontend_grace: timing.empty_frontend_grace,
            ..PlanSettings::default()
        });
        let executor = Executor {
            haproxy: haproxy.clone(),
            render: settings,
            settings: exec,
        };
        (
            Self {
                registry,
                haproxy,
                planner,
                executor,
                coalesce: timing.coalesce,
                metrics,
                status,
                caught_up: None,
            },
            rx,
        )
    }

    /// While this peer catches up with the mesh (`caught_up` is false), a
    /// registry change waits for the rest, up to [`CATCH_UP_HOLD`]: a peer
    /// receiving a large registry would otherwise render and check every
    /// part of it as it arrives (seconds of CPU at 100,000 servers, taken
    /// from the catch-up itself), and a peer that has not caught up fails
    /// its keepalived check anyway. What it holds at start is applied at
    /// once, and a peer whose catch-up waits (no peer reachable) still
    /// applies each change, late by at most the hold.
    pub fn hold_until_caught_up(&mut self, caught_up: watch::Receiver<bool>) {
        self.caught_up = Some(caught_up);
    }

    /// Waits while [`Applier::hold_until_caught_up`] says so, or until
    /// HAProxy starts or exits (`process`); false if shutdown came first.
    async fn catch_up_hold(
        &mut self,
        process: &mut watch::Receiver<u64>,
        shutdown: &mut watch::Receiver<bool>,
    ) -> bool {
        let Some(caught_up) = self.caught_up.as_mut() else {
            return true;
        };
        if *caught_up.borrow_and_update() {
            return true;
        }
        tokio::select! {
            // A closed channel (the mesh stopped) holds nothing back.
            _ = caught_up.wait_for(|c| *c) => true,
            () = tokio::time::sleep(CATCH_UP_HOLD) => true,
            // Seen again at the top of the loop.
            _ = process.changed() => true,
            () = crate::shutdown::signalled(shutdown) => false,
        }
    }

    /// Applies until `shutdown` fires, on a thread of its own.
    pub async fn run(self, shutdown: watch::Receiver<bool>) {
        let (done_tx, done_rx) = tokio::sync::oneshot::channel();
        let spawned = std::thread::Builder::new()
            .name("lbmesh-haproxy".into())
            .spawn(move || {
                match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt.block_on(self.run_here(shutdown)),
                    Err(e) => tracing::error!(error = %e, "cannot start the HAProxy applier"),
                }
                let _ = done_tx.send(());
            });
        match spawned {
            Ok(_) => {
                let _ = done_rx.await;
            }
            Err(e) => tracing::error!(error = %e, "cannot start the HAProxy applier thread"),
        }
    }

    async fn run_here(mut self, mut shutdown: watch::Receiver<bool>) {
        let mut changes = self.registry.subscribe();
        let mut process = self.haproxy.state().subscribe();
        // The view planned from, kept from one step to the next but not
        // while waiting: with many servers it is tens of megabytes, and a
        // wait usually ends with a change that needs a new one anyway.
        let mut kept = Some(self.snapshot());
        let mut seen = kept.as_ref().map_or((0, None), Snapshot::marks);
        self.adopt().await;
        // Why the next change to HAProxy happens: what changed last.
        let mut cause = Cause::Start;
        let mut exits_seen = self.haproxy.state().exits();
        loop {
            let (generation, next_expiry_ms) = seen;
            if *changes.borrow_and_update() != generation {
                kept = None;
                cause = Cause::Registry;
            } else if next_expiry_ms.is_some_and(|t| t <= self.registry.now_ms()) {
                kept = None;
                cause = Cause::Expiry;
            }
            let snapshot = match kept.take() {
                Some(s) => s,
                None => self.snapshot(),
            };
            seen = snapshot.marks();
            // (The stats observer counts restarts and reports each.)
            let exits = self.haproxy.state().exits();
            if exits > exits_seen {
                exits_seen = exits;
                cause = Cause::Retry;
            }
            let observed = Observed {
                instance: self.haproxy.instance().await,
            };
            self.metrics
                .haproxy_up
                .set(observed.instance.is_some() as i64);
            let quarantined_before = self.quarantine_reasons();
            let step = self.planner.poll(&snapshot.view, &observed, Instant::now());
            let until = match step {
                Step::Wait { until } => until,
                step => {
                    let started = Instant::now();
                    let outcome = tokio::select! {
                        o = self.executor.run(step) => o,
                        // A reload can wait seconds for HAProxy; shutdown must not.
                        () = crate::shutdown::signalled(&mut shutdown) => break,
                    };
                    if let Outcome::Checked(check) = &outcome {
                        if matches!(check, super::plan::Check::Invalid(_)) {
                            self.metrics.validation_failures.inc();
                        }
                    }
                    let rejected = matches!(
                        outcome,
                        Outcome::Installed(super::plan::Install::Rejected(
                            super::plan::Check::Invalid(_)
                        ))
                    );
                    if rejected {
                        self.metrics.validation_failures.inc();
                    }
                    let report = self.planner.handle(outcome, Instant::now());
                    self.quarantine_events(&quarantined_before);
                    self.publish(&snapshot, report, started, cause);
                    kept = Some(snapshot);
                    continue;
                }
            };
            self.quarantine_events(&quarantined_before);
            self.publish(&snapshot, None, Instant::now(), cause);
            drop(snapshot);
            crate::memory::bulk_work_done();
            // Wake for a registry change, an HAProxy start or exit, the
            // planner's deadline, or the next lease end.
            let now_ms = self.registry.now_ms();
            let expiry = seen
                .1
                .map(|t| Instant::now() + Duration::from_millis(t.saturating_sub(now_ms)));
            let deadline = match (until, expiry) {
                (Some(u), Some(e)) => Some(u.min(e)),
                (u, e) => u.or(e),
            };
            let sleep = async {
                match deadline {
                    Some(d) => tokio::time::sleep_until(d.into()).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                r = changes.changed() => {
                    if r.is_err() { break; }
                    tokio::time::sleep(self.coalesce).await;
                    if !self.catch_up_hold(&mut process, &mut shutdown).await {
                        break;
                    }
                }
                r = process.changed() => {
                    if r.is_err() { break; }
                    cause = Cause::Retry;
                }
                // A lease end is noticed at the top of the loop.
                () = sleep => cause = Cause::Retry,
                () = crate::shutdown::signalled(&mut shutdown) => break,
            }
        }
    }

    /// An HAProxy left running by an earlier lbmesh (supervised mode) is
    /// carried on from what it serves when that can be read back, so its
    /// connections stay with their worker.
    async fn adopt(&mut self) {
        let Some(pid) = self.haproxy.state().master_pid() else {
            return;
        };
        let Some(layout) = super::adopt::read_back(
            &self.haproxy.config_path,
            &self.haproxy.runtime_socket,
            &self.executor.render,
        )
        .await
        else {
            return;
        };
        tracing::info!(
            pid,
            "carrying on with the adopted HAProxy's config, without a reload"
        );
        self.planner.adopt(layout, pid);
        let report = Report {
            method: Method::None,
            result: Ok(()),
        };
        let snapshot = self.snapshot();
        self.publish(&snapshot, Some(report), Instant::now(), Cause::Start);
    }

    fn snapshot(&self) -> Snapshot {
        let view = self.registry.view();
        let digest = view.digest();
        Snapshot { view, digest }
    }

    fn quarantine_reasons(&self) -> BTreeMap<u16, String> {
        self.planner
            .quarantined()
            .iter()
            .map(|(port, q)| (*port, q.reason().to_owned()))
            .collect()
    }

    fn quarantine_events(&self, before: &BTreeMap<u16, String>) {
        for event in crate::events::diff::quarantine(before, &self.quarantine_reasons()) {
            self.registry.events().emit(event);
        }
    }

    fn publish(&mut self, snap: &Snapshot, report: Option<Report>, started: Instant, cause: Cause) {
        let plan = self.planner.status();
        let elapsed = started.elapsed();
        let mut s = self.status.borrow().clone();
        s.config_generation = snap.view.config_generation;
        s.registry_digest = snap.digest.clone();
        s.config_digest = plan.config_digest.clone();
        s.wanted_config_digest = Some(plan.wanted_digest.clone());
        s.frontends = plan.frontends;
        s.servers = plan.servers;
        s.quarantined = plan.quarantined.clone();
        s.deferred = plan.deferred.clone();
        s.held = plan.held.clone();
        if let Some(r) = report {
            self.count(&r, elapsed, cause);
            match r.method {
                Method::Reload if r.result.is_ok() => s.reloads += 1,
                Method::Runtime if r.result.is_ok() => s.runtime_updates += 1,
                _ => {}
            }
            s.last = Some(ApplyReport {
                at_ms: self.registry.now_ms(),
                method: r.method,
                ok: r.result.is_ok(),
                error: r.result.err(),
                duration_ms: elapsed.as_millis() as u64,
            });
        }
        self.metrics.frontends.set(s.frontends as i64);
        self.metrics.servers.set(s.servers as i64);
        self.metrics.quarantined.set(s.quarantined.len() as i64);
        self.status.send_if_modified(|old| {
            if *old == s {
                return false;
            }
            *old = s;
            true
        });
    }

    /// Metrics and the event log for one step's report.
    fn count(&self, r: &Report, elapsed: Duration, cause: Cause) {
        let ok = r.result.is_ok();
        self.metrics
            .applies
            .get_or_create(&ApplyLabels {
                method: r.method.label(),
                result: if ok { "ok" } else { "failed" },
            })
            .inc();
        let duration_ms = elapsed.as_millis() as u64;
        let error = r.result.as_ref().err().cloned();
        let labels = CauseLabels {
            cause: cause.as_str(),
            result: if ok { "ok" } else { "failed" },
        };
        match r.method {
            Method::Reload => {
                self.metrics.apply_seconds.observe(elapsed.as_secs_f64());
                self.metrics.reloads.get_or_create(&labels).inc();
                self.registry.events().emit(EventKind::Reload {
                    cause,
                    ok,
                    duration_ms,
                    error,
                });
            }
            Method::Runtime => {
                self.metrics.apply_seconds.observe(elapsed.as_secs_f64());
                self.metrics.runtime_changes.get_or_create(&labels).inc();
                self.registry.events().emit(EventKind::RuntimeChange {
                    cause,
                    ok,
                    duration_ms,
                    error,
                });
            }
            Method::None => {
                if let Some(e) = error {
                    tracing::error!(error = %e, "apply failed");
                }
            }
        }
    }
}
