//! Keeps HAProxy serving the registry: coalesce changes, render, validate,
//! then change servers through the Runtime API or write, reload and verify.
//!
//! Failure handling, in order: a frontend that cannot bind (port taken on this
//! VM, which `haproxy -c` does not see) is quarantined and reported while the
//! others still apply; a config `haproxy -c` rejects is never installed, and
//! the last good one keeps running.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tokio::sync::watch;
use tokio::time::{Instant, sleep, sleep_until};

use super::process::{Haproxy, ProcessError, validate};
use super::render::{RenderSettings, Rendered, digest_of, plan, render};
use super::runtime;
use crate::events::{Cause, EventKind};
use crate::metrics::{ApplyLabels, CauseLabels, Metrics};
use crate::registry::RegistryView;
use crate::shared::SharedRegistry;
use crate::store::write_atomic;

/// Timing of the apply loop.
#[derive(Debug, Clone)]
pub struct ApplyTiming {
    /// After a change, wait this long for more before applying (bursts → one apply).
    pub coalesce: Duration,
    /// At most one reload per this interval; Runtime API changes are not limited.
    pub min_reload_interval: Duration,
    /// How often to retry quarantined frontends and failed applies.
    pub retry: Duration,
}

impl Default for ApplyTiming {
    fn default() -> Self {
        Self {
            coalesce: Duration::from_millis(20),
            min_reload_interval: Duration::from_millis(500),
            retry: Duration::from_secs(10),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Method {
    /// Nothing to do: HAProxy already served this.
    None,
    /// Servers changed through the Runtime API, no reload.
    Runtime,
    /// The config was rewritten and HAProxy reloaded (or started).
    Reload,
}

impl Method {
    fn label(self) -> &'static str {
        match self {
            Method::None => "none",
            Method::Runtime => "runtime",
            Method::Reload => "reload",
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

/// What this peer's HAProxy serves, published after every apply.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ApplyStatus {
    /// Config generation of the view last applied (successfully or not).
    pub config_generation: u64,
    /// Digest of that view.
    pub registry_digest: String,
    /// Digest of the config HAProxy runs, comparable between peers.
    pub config_digest: Option<String>,
    /// Digest the registry asks for; differs from `config_digest` while an
    /// apply is pending or failing.
    pub wanted_config_digest: Option<String>,
    pub frontends: usize,
    pub servers: usize,
    pub last: Option<ApplyReport>,
    /// Frontend ports left out, with the reason.
    pub quarantined: BTreeMap<u16, String>,
    pub reloads: u64,
    pub runtime_updates: u64,
}

impl ApplyStatus {
    /// Whether the last apply succeeded and covered everything asked for.
    pub fn in_step(&self) -> bool {
        self.last.as_ref().is_some_and(|l| l.ok)
            && self.config_digest.is_some()
            && self.config_digest == self.wanted_config_digest
    }
}

pub struct Applier {
    registry: Arc<SharedRegistry>,
    haproxy: Haproxy,
    settings: RenderSettings,
    timing: ApplyTiming,
    metrics: Arc<Metrics>,
    status: watch::Sender<ApplyStatus>,
    /// What HAProxy runs now.
    running: Option<Rendered>,
    quarantine: BTreeMap<u16, String>,
    last_reload: Option<Instant>,
    /// Why the current apply runs, for events and metrics.
    cause: Cause,
}

impl Applier {
    pub fn new(
        registry: Arc<SharedRegistry>,
        haproxy: Haproxy,
        settings: RenderSettings,
        timing: ApplyTiming,
        metrics: Arc<Metrics>,
    ) -> (Self, watch::Receiver<ApplyStatus>) {
        let (status, rx) = watch::channel(ApplyStatus::default());
        (
            Self {
                registry,
                haproxy,
                settings,
                timing,
                metrics,
                status,
                running: None,
                quarantine: BTreeMap::new(),
                last_reload: None,
                cause: Cause::Start,
            },
            rx,
        )
    }

    /// Applies until `shutdown` fires.
    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        let mut changes = self.registry.subscribe();
        let mut wake_at = Instant::now();
        let mut wake_for_expiry = false;
        let mut first = true;
        loop {
            let woke = tokio::select! {
                r = changes.changed() => {
                    if r.is_err() { break; }
                    sleep(self.timing.coalesce).await;
                    Cause::Registry
                }
                () = sleep_until(wake_at) => if wake_for_expiry { Cause::Expiry } else { Cause::Retry },
                () = crate::shutdown::signalled(&mut shutdown) => break,
            };
            self.cause = if std::mem::take(&mut first) {
                Cause::Start
            } else {
                woke
            };
            changes.mark_unchanged();
            let view = self.registry.view();
            // A reload can wait seconds for HAProxy; shutdown must not.
            let next_expiry = tokio::select! {
                n = self.apply(view) => n,
                () = crate::shutdown::signalled(&mut shutdown) => break,
            };
            let calm = self.status.borrow().in_step() && self.quarantine.is_empty();
            // Retry soon while out of step or while a frontend waits for its
            // port (a bind probe is cheap); otherwise wake for the next lease end.
            let retry = if calm {
                self.timing.retry
            } else {
                self.timing.retry.min(Duration::from_secs(1))
            };
            wake_at = Instant::now() + retry;
            wake_for_expiry = false;
            if let Some(ms) = next_expiry {
                let now = self.registry.now_ms();
                let expiry = Instant::now() + Duration::from_millis(ms.saturating_sub(now));
                if expiry < wake_at {
                    wake_at = expiry;
                    wake_for_expiry = true;
                }
            }
        }
    }

    /// Makes HAProxy serve `view`, as far as possible. Returns when the view
    /// it ended up applying changes next (a lease end).
    pub async fn apply(&mut self, mut view: RegistryView) -> Option<u64> {
        let started = Instant::now();
        let haproxy_up = self.haproxy.is_serving().await;
        self.metrics.haproxy_up.set(haproxy_up as i64);
        self.release_quarantine(&view);
        let mut target = render(&view, &self.excluded(), &self.settings);
        if !haproxy_up && self.running.is_some() && self.haproxy.is_supervised() {
            // The supervisor brings HAProxy back on the last good config on
            // disk; a reload now would race with that start.
            let wanted = target.digest.clone();
            self.publish(
                &view,
                wanted,
                Method::None,
                Err("HAProxy is not running; waiting for the supervisor to restart it".into()),
                started,
            );
            return view.next_expiry_ms;
        }
        let first = self.running.is_none();
        if let Some(running) = &self.running {
            if running.text == target.text && haproxy_up {
                let wanted = target.digest.clone();
                self.publish(&view, wanted, Method::None, Ok(()), started);
                return view.next_expiry_ms;
            }
            if haproxy_up && running.same_shape(&target) {
                match self.runtime_update(&target).await {
                    Ok(()) => {
                        let wanted = target.digest.clone();
                        self.running = Some(target);
                        self.publish(&view, wanted, Method::Runtime, Ok(()), started);
                        return view.next_expiry_ms;
                    }
                    Err(e) => {
                        self.count_change(Method::Runtime, false);
                        self.registry.events().emit(EventKind::RuntimeChange {
                            cause: self.cause,
                            ok: false,
                            duration_ms: started.elapsed().as_millis() as u64,
                            error: Some(format!("{e}; reloading instead")),
                        });
                    }
                }
            }
        }
        // A reload: respect the minimum interval, then use the freshest view.
        if let Some(last) = self.last_reload {
            let ready = last + self.timing.min_reload_interval;
            if Instant::now() < ready {
                sleep_until(ready).await;
                view = self.registry.view();
                target = render(&view, &self.excluded(), &self.settings);
            }
        }
        if self.probe_new_frontends(&target) {
            target = render(&view, &self.excluded(), &self.settings);
            if haproxy_up && self.running.as_ref().is_some_and(|r| r.text == target.text) {
                let wanted = target.digest.clone();
                self.publish(&view, wanted, Method::None, Ok(()), started);
                return view.next_expiry_ms;
            }
        }
        let result = self.install_and_reload(&view, target, first).await;
        let wanted = digest_of(&plan(&view, &self.excluded(), self.settings.min_slots));
        self.publish(&view, wanted, Method::Reload, result, started);
        view.next_expiry_ms
    }

    fn excluded(&self) -> BTreeSet<u16> {
        self.quarantine.keys().copied().collect()
    }

    /// Un-quarantines ports that left the registry or can bind again.
    fn release_quarantine(&mut self, view: &RegistryView) {
        let bind = self.settings.bind_address;
        self.quarantine.retain(|port, _| {
            view.frontends.contains_key(port) && probe_bind(bind, *port).is_err()
        });
    }

    /// Quarantines frontends that are new to HAProxy and cannot bind. Returns
    /// whether any was.
    fn probe_new_frontends(&mut self, target: &Rendered) -> bool {
        let running: BTreeSet<u16> = self
            .running
            .as_ref()
            .map(|r| r.backends.keys().copied().collect())
            .unwrap_or_default();
        let mut any = false;
        for port in target.backends.keys() {
            if running.contains(port) {
                continue;
            }
            if let Err(why) = probe_bind(self.settings.bind_address, *port) {
                self.quarantine.insert(*port, why);
                any = true;
            }
        }
        any
    }

    async fn runtime_update(&mut self, target: &Rendered) -> Result<(), String> {
        let running = self.running.as_ref().expect("checked by caller");
        let cmds: Vec<String> = running
            .backends
            .iter()
            .zip(&target.backends)
            .flat_map(|((port, from), (_, to))| runtime::slot_commands(*port, from, to))
            .collect();
        runtime::run_commands(&self.haproxy.runtime_socket, &cmds)
            .await
            .map_err(|e| e.to_string())?;
        // Keep the file in step so a restart or the next reload serves the same.
        write_atomic(&self.haproxy.config_path, target.text.as_bytes())
            .map_err(|e| e.to_string())?;
        Ok(())
    }

    async fn install_and_reload(
        &mut self,
        view: &RegistryView,
        mut target: Rendered,
        first: bool,
    ) -> Result<(), String> {
        let config = self.haproxy.config_path.clone();
        let candidate = sibling(&config, "candidate");
        // Up to two rounds: a failed reload may reveal a frontend to quarantine.
        for round in 0..2 {
            write_atomic(&candidate, target.text.as_bytes()).map_err(|e| e.to_string())?;
            if let Err(e) = validate(&self.haproxy.binary, &candidate).await {
                self.metrics.validation_failures.inc();
                let _ = std::fs::remove_file(&candidate);
                let culprits = self.isolate_invalid(view).await;
                if culprits.is_empty() || round == 1 {
                    return Err(format!("keeping the last good config: {e}"));
                }
                target = render(view, &self.excluded(), &self.settings);
                continue;
            }
            let previous = std::fs::read(&config).ok();
            std::fs::rename(&candidate, &config)
                .map_err(|e| format!("install {}: {e}", config.display()))?;
            self.last_reload = Some(Instant::now());
            match self.haproxy.reload().await {
                Ok(()) => {
                    self.count_change(Method::Reload, true);
                    let mut s = self.status.borrow().clone();
                    s.reloads += 1;
                    self.status.send_replace(s);
                    self.running = Some(target);
                    return Ok(());
                }
                Err(e) => {
                    self.count_change(Method::Reload, false);
                    // Put the last good config back so a restart serves it.
                    if let (Some(prev), false) = (previous, first) {
                        let _ = write_atomic(&config, &prev);
                    }
                    if round == 0 && self.probe_all_unserved(&target) {
                        target = render(view, &self.excluded(), &self.settings);
                        continue;
                    }
                    return Err(e.to_string());
                }
            }
        }
        Err("gave up after quarantining".into())
    }

    /// After a failed reload: quarantine every frontend not currently served
    /// that cannot bind.
    fn probe_all_unserved(&mut self, target: &Rendered) -> bool {
        let before = self.quarantine.len();
        let served: BTreeSet<u16> = self
            .running
            .as_ref()
            .map(|r| r.backends.keys().copied().collect())
            .unwrap_or_default();
        for port in target.backends.keys().filter(|p| !served.contains(p)) {
            if let Err(why) = probe_bind(self.settings.bind_address, *port) {
                self.quarantine.insert(*port, why);
            }
        }
        self.quarantine.len() > before
    }

    /// Finds frontends whose config alone fails `haproxy -c` and quarantines them.
    async fn isolate_invalid(&mut self, view: &RegistryView) -> Vec<u16> {
        let mut culprits = Vec::new();
        let ports: Vec<u16> = view
            .frontends
            .keys()
            .filter(|p| !self.quarantine.contains_key(p))
            .copied()
            .collect();
        let probe = sibling(&self.haproxy.config_path, "probe");
        for port in ports {
            let mut one = view.clone();
            one.frontends.retain(|p, _| *p == port);
            let text = render(&one, &BTreeSet::new(), &self.settings).text;
            if write_atomic(&probe, text.as_bytes()).is_err() {
                break;
            }
            if let Err(ProcessError::Invalid(why)) = validate(&self.haproxy.binary, &probe).await {
                let why = why
                    .lines()
                    .find(|l| l.contains("ALERT"))
                    .unwrap_or("rejected by haproxy -c")
                    .to_owned();
                self.quarantine.insert(port, why);
                culprits.push(port);
            }
        }
        let _ = std::fs::remove_file(&probe);
        culprits
    }

    /// Counts a reload or Runtime API change by its cause and result.
    fn count_change(&self, method: Method, ok: bool) {
        let family = match method {
            Method::Reload => &self.metrics.reloads,
            Method::Runtime => &self.metrics.runtime_changes,
            Method::None => return,
        };
        family
            .get_or_create(&CauseLabels {
                cause: self.cause.as_str(),
                result: if ok { "ok" } else { "failed" },
            })
            .inc();
    }

    fn publish(
        &mut self,
        view: &RegistryView,
        wanted: String,
        method: Method,
        result: Result<(), String>,
        started: Instant,
    ) {
        let elapsed = started.elapsed();
        let ok = result.is_ok();
        self.metrics
            .applies
            .get_or_create(&ApplyLabels {
                method: method.label(),
                result: if ok { "ok" } else { "failed" },
            })
            .inc();
        if method != Method::None {
            self.metrics.apply_seconds.observe(elapsed.as_secs_f64());
        }
        let duration_ms = elapsed.as_millis() as u64;
        let (cause, error) = (self.cause, result.as_ref().err().cloned());
        match method {
            Method::Reload => self.registry.events().emit(EventKind::Reload {
                cause,
                ok,
                duration_ms,
                error,
            }),
            Method::Runtime => {
                self.count_change(Method::Runtime, ok);
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
        let mut s = self.status.borrow().clone();
        for event in crate::events::diff::quarantine(&s.quarantined, &self.quarantine) {
            self.registry.events().emit(event);
        }
        s.config_generation = view.config_generation;
        s.registry_digest = view.digest();
        s.config_digest = self.running.as_ref().map(|r| r.digest.clone());
        s.wanted_config_digest = Some(wanted);
        s.frontends = view.frontends.len();
        s.servers = view.server_count();
        s.quarantined = self.quarantine.clone();
        if method == Method::Runtime {
            s.runtime_updates += 1;
        }
        s.last = Some(ApplyReport {
            at_ms: self.registry.now_ms(),
            method,
            ok,
            error: result.err(),
            duration_ms: elapsed.as_millis() as u64,
        });
        self.metrics.frontends.set(s.frontends as i64);
        self.metrics.servers.set(s.servers as i64);
        self.metrics.quarantined.set(s.quarantined.len() as i64);
        self.status.send_replace(s);
    }
}

fn sibling(path: &std::path::Path, suffix: &str) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".{suffix}"));
    path.with_file_name(name)
}

/// Tries to bind `ip:port` the way HAProxy would (SO_REUSEPORT), then lets go.
pub fn probe_bind(ip: IpAddr, port: u16) -> Result<(), String> {
    use socket2::{Domain, Socket, Type};
    let addr = SocketAddr::new(ip, port);
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)
        .map_err(|e| format!("socket: {e}"))?;
    let _ = socket.set_reuse_address(true);
    let _ = socket.set_reuse_port(true);
    if ip.is_ipv6() {
        let _ = socket.set_only_v6(false);
    }
    socket
        .bind(&addr.into())
        .and_then(|()| socket.listen(1))
        .map_err(|e| format!("cannot listen on {addr}: {e}"))
}
