//! The apply planner: given the registry view, what HAProxy runs, what
//! failed before and `now`, it decides the next step (a Runtime API change,
//! a reload or start, a bind probe, a config check while bisecting a rejected
//! config, or a wait). Pure: no sockets, files, processes or clock; the
//! executor performs each step and hands the outcome back to [`Planner::handle`].
//!
//! The rules, in the order they apply:
//! - Server changes go through the Runtime API into free slots, at once.
//! - A reload is needed for a new frontend, a frontend to remove, a backend
//!   that needs more slots (grown ahead of need), or to bring HAProxy back.
//!   All pending changes ride on one reload, at most one per
//!   `min_reload_interval`, and none while too many old workers hold
//!   connections (the executor reports that).
//! - A frontend whose last server left stays bound, serving nothing, for
//!   `empty_frontend_grace`: a pool that empties and refills costs nothing.
//! - Each frontend's own reloads are rate-limited: one that keeps causing
//!   reloads waits twice as long each time. Its changes still ride along on
//!   reloads that others cause.
//! - A frontend that cannot bind is quarantined, and probed until it can.
//!   A config `haproxy -c` rejects is bisected down to the frontends that
//!   make it invalid, which are quarantined until their servers change; if
//!   even a config without frontends is rejected, or the check times out, no
//!   frontend is blamed: the failure is reported and retried with backoff.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use super::layout::{self, Backend, FrontendDigest, Layout, SlotPolicy, SlotServer};
use super::runtime::slot_commands;
use crate::registry::{RegistryView, ServiceName};

/// What the planner's rules are tuned by.
#[derive(Debug, Clone)]
pub struct PlanSettings {
    pub slots: SlotPolicy,
    /// At most one reload per this interval.
    pub min_reload_interval: Duration,
    /// How long a frontend without servers stays bound before a reload removes it.
    pub empty_frontend_grace: Duration,
    /// The longest a frontend that keeps causing reloads must wait for its next one.
    pub max_frontend_backoff: Duration,
    /// How often quarantined ports are probed.
    pub probe_interval: Duration,
    /// The first wait after a failure nobody can fix by quarantining; doubles up to `max_retry`.
    pub retry: Duration,
    pub max_retry: Duration,
    /// How long the config file may lag Runtime API changes before it is rewritten.
    pub file_sync_delay: Duration,
}

impl Default for PlanSettings {
    fn default() -> Self {
        Self {
            slots: SlotPolicy { min_slots: 4 },
            min_reload_interval: Duration::from_millis(500),
            empty_frontend_grace: Duration::from_secs(60),
            max_frontend_backoff: Duration::from_secs(600),
            probe_interval: Duration::from_secs(1),
            retry: Duration::from_secs(1),
            max_retry: Duration::from_secs(60),
            file_sync_delay: Duration::from_secs(1),
        }
    }
}

/// What the loop observed of HAProxy before asking for a step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Observed {
    /// The running HAProxy (the master's PID when supervised, the serving
    /// worker's otherwise); `None` when none runs. A new value means an
    /// HAProxy that runs something this planner did not give it.
    pub instance: Option<u32>,
}

/// The next thing to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Nothing until `until`, or until the registry or HAProxy changes.
    Wait { until: Option<Instant> },
    /// Move servers in and out of slots with these Runtime API commands.
    Runtime { commands: Vec<String> },
    /// Try to bind these quarantined ports.
    Probe { ports: Vec<u16> },
    /// `haproxy -c` of a config holding only the frontends of `layout`.
    Check { layout: Layout },
    /// Write and check `layout`, install it, and have HAProxy run it (a
    /// reload, or a start if none runs). `new_ports` are not bound by the
    /// running HAProxy: probe them first.
    Install { layout: Layout, new_ports: Vec<u16> },
    /// Rewrite the config file to match what Runtime API changes made HAProxy serve.
    SyncFile { layout: Layout },
}

/// How a `haproxy -c` went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Check {
    Valid,
    /// Rejected, with HAProxy's output.
    Invalid(String),
    /// The check did not finish in time: says nothing about the config.
    TimedOut(Duration),
    /// The binary could not be run.
    CannotRun(String),
}

/// How an [`Step::Install`] went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Install {
    /// HAProxy runs the layout; `instance` as in [`Observed`].
    Done { instance: u32 },
    /// These new ports cannot be bound; nothing was changed.
    CannotBind(BTreeMap<u16, String>),
    /// Too many old workers still hold connections; nothing was changed.
    Busy { old_workers: usize },
    /// The check did not pass; nothing was installed.
    Rejected(Check),
    /// HAProxy did not take the config. `bind` holds the ports it said it
    /// could not bind; the previous config is back in place.
    Failed {
        bind: BTreeMap<u16, String>,
        error: String,
    },
    /// The reload or start did not finish in time.
    TimedOut(String),
    /// The config file could not be written.
    WriteFailed(String),
}

/// The result of a step, handed back to [`Planner::handle`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Runtime(Result<(), String>),
    Probed(BTreeMap<u16, Result<(), String>>),
    Checked(Check),
    Installed(Install),
    FileSynced(Result<(), String>),
}

/// How a step changed what HAProxy serves, for status and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Method {
    /// Nothing changed in HAProxy.
    None,
    /// Servers changed through the Runtime API, no reload.
    Runtime,
    /// The config was rewritten and HAProxy reloaded (or started).
    Reload,
}

impl Method {
    pub fn label(self) -> &'static str {
        match self {
            Method::None => "none",
            Method::Runtime => "runtime",
            Method::Reload => "reload",
        }
    }
}

/// What a handled step amounted to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    pub method: Method,
    pub result: Result<(), String>,
}

/// Why a frontend is left out of the config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Quarantine {
    /// Its port cannot be bound on this VM; probed until it can.
    Bind(String),
    /// `haproxy -c` rejects it with `servers`; lifted when they change.
    Invalid {
        why: String,
        servers: Vec<SlotServer>,
    },
}

impl Quarantine {
    pub fn reason(&self) -> &str {
        match self {
            Quarantine::Bind(why) | Quarantine::Invalid { why, .. } => why,
        }
    }
}

/// What HAProxy runs, as far as the planner knows.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Served {
    layout: Layout,
    instance: u32,
    /// The digest of each frontend that has servers, kept in step with `layout`.
    digests: BTreeMap<u16, FrontendDigest>,
    /// Their combination: the digest of what HAProxy serves.
    digest: String,
}

impl Served {
    fn new(layout: Layout, instance: u32) -> Self {
        let digests = layout
            .iter()
            .filter_map(|(port, b)| Some((*port, layout::backend_digest(*port, b)?)))
            .collect();
        let mut s = Self {
            layout,
            instance,
            digests,
            digest: String::new(),
        };
        s.digest = layout::combine(s.digests.iter().map(|(p, d)| (*p, d)));
        s
    }

    /// Takes in backends changed through the Runtime API.
    fn patch(&mut self, changed: Layout) {
        for (port, b) in changed {
            match layout::backend_digest(port, &b) {
                Some(d) => self.digests.insert(port, d),
                None => self.digests.remove(&port),
            };
            self.layout.insert(port, b);
        }
        self.digest = layout::combine(self.digests.iter().map(|(p, d)| (*p, d)));
    }
}

/// A frontend's record of the reloads it caused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct History {
    last: Instant,
    /// Reloads in a row, each soon after the one before.
    strikes: u32,
}

/// A failure no quarantine can fix: wait, then try again.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Trouble {
    failures: u32,
    retry_at: Instant,
}

/// Bisecting a config `haproxy -c` rejected.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Bisect {
    target: Layout,
    /// Groups of ports still to check; `None` is the baseline (no frontends).
    todo: Vec<Option<Vec<u16>>>,
    /// The group being checked.
    checking: Option<Option<Vec<u16>>>,
    found: BTreeMap<u16, String>,
    /// The first line of HAProxy's complaint about the whole config.
    complaint: String,
}

/// Why a reload is wanted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Cause {
    /// A frontend HAProxy does not serve yet.
    Add,
    /// A frontend without servers past its grace period.
    Remove,
    /// A backend short of slots.
    Grow,
}

/// The step in flight, to read its outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
enum InFlight {
    /// The backends the commands change, as they will be.
    Runtime(Layout),
    Install {
        layout: Layout,
        /// Frontends whose changes triggered this reload (not those riding along).
        triggers: Vec<u16>,
    },
    Probe,
    Check,
    SyncFile,
}

/// The planner's published state, for status.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PlanStatus {
    /// Digest of what HAProxy serves ([`layout::digest`]); `None` when nothing is known to run.
    pub config_digest: Option<String>,
    /// Digest of what it should serve now; changes waiting for their turn
    /// (see `deferred`) are left out.
    pub wanted_digest: String,
    pub frontends: usize,
    pub servers: usize,
    pub quarantined: BTreeMap<u16, String>,
    /// Frontends with a change that waits for a reload, and why.
    pub deferred: BTreeMap<u16, String>,
    /// Frontends bound without servers, with the milliseconds until a
    /// reload may remove them.
    pub held: BTreeMap<u16, u64>,
}

/// The frontends to serve, with their owner and servers (sorted).
type Wanted = BTreeMap<u16, (ServiceName, Vec<SlotServer>)>;

/// What the Runtime API can do with the slots HAProxy has.
#[derive(Debug, Default)]
struct Fitted {
    /// Backends whose servers change, as they will be.
    changed: Layout,
    /// Frontends short of slots for their pool.
    short: BTreeSet<u16>,
    /// Frontends that need more slots (short, or soon to be).
    grow: Vec<(u16, Cause)>,
}

/// The apply planner; see the module documentation.
#[derive(Debug)]
pub struct Planner {
    s: PlanSettings,
    served: Option<Served>,
    /// Since when the config file lags what Runtime API changes made HAProxy serve.
    file_stale: Option<Instant>,
    /// Served frontends the registry no longer has servers for, since when.
    emptied: BTreeMap<u16, Instant>,
    quarantine: BTreeMap<u16, Quarantine>,
    next_probe: Option<Instant>,
    last_reload: Option<Instant>,
    /// A Runtime API change failed: HAProxy's slots are in doubt until a reload.
    resync: bool,
    /// Too many old workers: no reload before this.
    busy: Option<(Instant, usize)>,
    history: BTreeMap<u16, History>,
    trouble: Option<Trouble>,
    bisect: Option<Bisect>,
    in_flight: Option<InFlight>,
    status: PlanStatus,
}

impl Planner {
    pub fn new(s: PlanSettings) -> Self {
        Self {
            s,
            served: None,
            file_stale: None,
            emptied: BTreeMap::new(),
            quarantine: BTreeMap::new(),
            next_probe: None,
            last_reload: None,
            resync: false,
            busy: None,
            history: BTreeMap::new(),
            trouble: None,
            bisect: None,
            in_flight: None,
            status: PlanStatus::default(),
        }
    }

    pub fn status(&self) -> &PlanStatus {
        &self.status
    }

    /// Carries on from an HAProxy this planner did not start: `instance`
    /// serves `layout` (read back from it), so what follows is planned from
    /// there, without a reload.
    pub fn adopt(&mut self, layout: Layout, instance: u32) {
        self.served = Some(Served::new(layout, instance));
    }

    pub fn quarantined(&self) -> &BTreeMap<u16, Quarantine> {
        &self.quarantine
    }

    /// Decides the next step for `view`, given what runs.
    pub fn poll(&mut self, view: &RegistryView, observed: &Observed, now: Instant) -> Step {
        debug_assert!(self.in_flight.is_none(), "poll before handle");
        if self
            .served
            .as_ref()
            .is_some_and(|s| Some(s.instance) != observed.instance)
        {
            // HAProxy died, or runs something it was not given here.
            self.served = None;
            self.file_stale = None;
            self.emptied.clear();
        }
        let wanted = self.wanted(view);
        self.track_emptied(&wanted, now);
        let none = Layout::new();
        let current = self.served.as_ref().map_or(&none, |s| &s.layout);

        // Servers first: the Runtime API is never rate-limited.
        let fit = self.fit_runtime(current, &wanted);
        // After a failed change, the reload puts the slots right.
        if !self.resync && !fit.changed.is_empty() {
            let commands = fit
                .changed
                .iter()
                .flat_map(|(port, to)| slot_commands(*port, &current[port], to))
                .collect();
            self.status = self.status_for(view, &wanted, &fit, &BTreeMap::new(), now);
            self.in_flight = Some(InFlight::Runtime(fit.changed));
            return Step::Runtime { commands };
        }
        let mut causes = fit.grow.clone();
        if self.served.is_some() {
            causes.extend(
                wanted
                    .keys()
                    .filter(|p| !current.contains_key(p))
                    .map(|p| (*p, Cause::Add)),
            );
            causes.extend(
                self.emptied
                    .iter()
                    .filter(|(_, since)| now >= **since + self.s.empty_frontend_grace)
                    .map(|(p, _)| (*p, Cause::Remove)),
            );
        }

        if self.bisect.is_some() {
            self.status = self.status_for(view, &wanted, &fit, &self.bisect_deferred(), now);
            return self.next_check();
        }

        // A reload is due when nothing known runs, when slots are in doubt,
        // or when some frontend's change may cause one.
        let mut due: Option<Instant> = (self.served.is_none() || self.resync).then_some(now);
        let mut triggers = Vec::new();
        let mut deferred = BTreeMap::new();
        for (port, cause) in &causes {
            let at = self.frontend_ready_at(*port, now);
            due = earlier(due, Some(at));
            if at <= now {
                triggers.push(*port);
            } else {
                deferred.insert(*port, self.why_deferred(*cause, at - now));
            }
        }
        // Nothing runs: nothing to wait for but the retry of a failure.
        let gate = if self.served.is_none() {
            self.trouble.as_ref().map(|t| t.retry_at)
        } else {
            self.gate()
        };
        match (due, gate) {
            (Some(d), g) if d <= now && g.is_none_or(|g| g <= now) => {
                let target = self.reload_target(current, &wanted, now);
                let new_ports: Vec<u16> = target
                    .keys()
                    .filter(|p| !current.contains_key(p))
                    .copied()
                    .collect();
                triggers.sort_unstable();
                triggers.dedup();
                self.status = self.status_for(view, &wanted, &fit, &BTreeMap::new(), now);
                self.in_flight = Some(InFlight::Install {
                    layout: target.clone(),
                    triggers,
                });
                return Step::Install {
                    layout: target,
                    new_ports,
                };
            }
            (Some(_), Some(g)) if g > now && self.trouble.is_none() => {
                let reason = self.why_gated(g - now);
                for (port, _) in &causes {
                    deferred.entry(*port).or_insert_with(|| reason.clone());
                }
            }
            _ => {}
        }
        if self.trouble.is_some() {
            // Failing, not waiting by choice: everything pending counts.
            deferred.clear();
        }
        self.status = self.status_for(view, &wanted, &fit, &deferred, now);

        // No reload now: probe quarantined ports, sync the file, or wait.
        let probe: Vec<u16> = self
            .quarantine
            .iter()
            .filter(|(_, q)| matches!(q, Quarantine::Bind(_)))
            .map(|(p, _)| *p)
            .collect();
        if !probe.is_empty() && self.next_probe.is_none_or(|t| t <= now) {
            self.in_flight = Some(InFlight::Probe);
            return Step::Probe { ports: probe };
        }
        let sync_at = self.file_stale.map(|t| t + self.s.file_sync_delay);
        if sync_at.is_some_and(|t| t <= now) && self.served.is_some() {
            self.in_flight = Some(InFlight::SyncFile);
            return Step::SyncFile {
                layout: current.clone(),
            };
        }
        let mut until = sync_at;
        if !probe.is_empty() {
            until = earlier(until, self.next_probe);
        }
        if let Some(d) = due {
            until = earlier(until, later(Some(d), gate));
        }
        for since in self.emptied.values() {
            let at = *since + self.s.empty_frontend_grace;
            if at > now {
                until = earlier(until, Some(at));
            }
        }
        Step::Wait { until }
    }

    /// Reads the outcome of the step [`Planner::poll`] returned. Returns a
    /// report when the step changed HAProxy or failed.
    pub fn handle(&mut self, outcome: Outcome, now: Instant) -> Option<Report> {
        let in_flight = self.in_flight.take()?;
        let report = match (in_flight, outcome) {
            (InFlight::Runtime(changed), Outcome::Runtime(result)) => Some(match result {
                Ok(()) => {
                    if let Some(s) = &mut self.served {
                        s.patch(changed);
                    }
                    self.file_stale.get_or_insert(now);
                    Report {
                        method: Method::Runtime,
                        result: Ok(()),
                    }
                }
                Err(e) => {
                    // Some commands may have run: a reload puts every slot right.
                    self.resync = true;
                    Report {
                        method: Method::Runtime,
                        result: Err(format!("{e}; reloading instead")),
                    }
                }
            }),
            (InFlight::Probe, Outcome::Probed(results)) => {
                for (port, result) in results {
                    match result {
                        Ok(()) => {
                            self.quarantine.remove(&port);
                        }
                        Err(why) => {
                            self.quarantine.insert(port, Quarantine::Bind(why));
                        }
                    }
                }
                self.next_probe = Some(now + self.s.probe_interval);
                None
            }
            (InFlight::SyncFile, Outcome::FileSynced(result)) => {
                // A failed write is tried again after the same delay.
                self.file_stale = if result.is_ok() { None } else { Some(now) };
                result.err().map(|e| Report {
                    method: Method::None,
                    result: Err(format!("could not rewrite the config file: {e}")),
                })
            }
            (InFlight::Check, Outcome::Checked(check)) => self.bisect_step(check, now),
            (InFlight::Install { layout, triggers }, Outcome::Installed(install)) => {
                Some(self.installed(layout, triggers, install, now))
            }
            (flight, outcome) => {
                debug_assert!(false, "outcome {outcome:?} for {flight:?}");
                None
            }
        };
        self.status.config_digest = self.served.as_ref().map(|s| s.digest.clone());
        self.status.quarantined = self.quarantine_reasons();
        self.status.held = self.held(now);
        report
    }

    fn quarantine_reasons(&self) -> BTreeMap<u16, String> {
        self.quarantine
            .iter()
            .map(|(p, q)| (*p, q.reason().to_owned()))
            .collect()
    }

    /// Frontends bound without servers, and the milliseconds until a reload may remove them.
    fn held(&self, now: Instant) -> BTreeMap<u16, u64> {
        self.emptied
            .iter()
            .map(|(p, since)| {
                let end = *since + self.s.empty_frontend_grace;
                (*p, end.saturating_duration_since(now).as_millis() as u64)
            })
            .collect()
    }

    /// The frontends the registry wants served here, with their servers sorted.
    fn wanted(&mut self, view: &RegistryView) -> Wanted {
        let mut wanted: Wanted = view
            .frontends
            .values()
            .map(|f| {
                let servers = f
                    .servers
                    .iter()
                    .map(|(addr, s)| SlotServer {
                        addr: *addr,
                        send_proxy: s.send_proxy,
                    })
                    .collect();
                (f.port, (f.owner.clone(), servers))
            })
            .collect();
        // A frontend leaves quarantine when it leaves the registry, or, if
        // HAProxy rejected it, when its servers change.
        self.quarantine
            .retain(|port, q| match (wanted.get(port), q) {
                (None, _) => false,
                (Some((_, now)), Quarantine::Invalid { servers, .. }) => now == servers,
                (Some(_), Quarantine::Bind(_)) => true,
            });
        wanted.retain(|port, _| !self.quarantine.contains_key(port));
        wanted
    }

    fn track_emptied(&mut self, wanted: &Wanted, now: Instant) {
        let Some(served) = &self.served else {
            self.emptied.clear();
            return;
        };
        self.emptied
            .retain(|port, _| served.layout.contains_key(port) && !wanted.contains_key(port));
        for port in served.layout.keys() {
            if !wanted.contains_key(port) {
                self.emptied.entry(*port).or_insert(now);
            }
        }
    }

    /// What the Runtime API can do for `wanted` in the slots `served` has.
    fn fit_runtime(&self, served: &Layout, wanted: &Wanted) -> Fitted {
        let mut out = Fitted::default();
        for (port, b) in served {
            let fit = match wanted.get(port) {
                Some((owner, servers)) => {
                    let fit = b.fit(owner, servers);
                    if fit.overflow > 0 {
                        out.short.insert(*port);
                    }
                    if fit.overflow > 0 || self.s.slots.wants_growth(b.slots.len(), servers.len()) {
                        out.grow.push((*port, Cause::Grow));
                    }
                    fit
                }
                None => b.fit(&b.owner, &[]),
            };
            if fit
                .backend
                .slots
                .iter()
                .zip(&b.slots)
                .any(|(x, y)| x.server != y.server)
            {
                out.changed.insert(*port, fit.backend);
            }
        }
        out
    }

    /// The layout a reload installs: every wanted frontend, reshaped where
    /// it exists; frontends without servers kept while in their grace period.
    fn reload_target(&self, current: &Layout, wanted: &Wanted, now: Instant) -> Layout {
        let mut target: Layout = wanted
            .iter()
            .map(|(port, (owner, servers))| {
                let b = match current.get(port) {
                    Some(b) => b.reshape(owner, servers, &self.s.slots),
                    None => Backend::fresh(owner.clone(), servers, &self.s.slots),
                };
                (*port, b)
            })
            .collect();
        for (port, since) in &self.emptied {
            if now < *since + self.s.empty_frontend_grace {
                if let Some(b) = current.get(port) {
                    target.insert(*port, b.reshape(&b.owner, &[], &self.s.slots));
                }
            }
        }
        target
    }

    /// When `port` may next cause a reload of its own.
    fn frontend_ready_at(&self, port: u16, now: Instant) -> Instant {
        self.history
            .get(&port)
            .map_or(now, |h| h.last + self.backoff(h.strikes))
    }

    /// A frontend's wait after `strikes` reloads in a row.
    fn backoff(&self, strikes: u32) -> Duration {
        doubled(self.s.min_reload_interval, strikes).min(self.s.max_frontend_backoff)
    }

    /// No reload before this, whoever asks.
    fn gate(&self) -> Option<Instant> {
        let mut gate = self.last_reload.map(|t| t + self.s.min_reload_interval);
        gate = later(gate, self.busy.map(|(t, _)| t));
        later(gate, self.trouble.as_ref().map(|t| t.retry_at))
    }

    fn why_deferred(&self, cause: Cause, wait: Duration) -> String {
        let what = match cause {
            Cause::Add => "added",
            Cause::Remove => "removed",
            Cause::Grow => "given more slots",
        };
        format!(
            "this frontend changed too often: it will be {what} by the next reload, in {} s at the latest",
            wait.as_secs_f64().ceil() as u64
        )
    }

    fn why_gated(&self, wait: Duration) -> String {
        match self.busy {
            Some((_, workers)) => format!(
                "{workers} old HAProxy workers still hold connections; the next reload waits until one finishes"
            ),
            None => format!(
                "waiting for the next reload (at most one per min-reload-interval), in {} ms",
                wait.as_millis()
            ),
        }
    }

    /// The frontends whose change waits for a bisection's verdict: whoever
    /// waits for them learns the verdict, not one step of it.
    fn bisect_deferred(&self) -> BTreeMap<u16, String> {
        let Some(b) = &self.bisect else {
            return BTreeMap::new();
        };
        let current = self.served.as_ref().map(|s| &s.layout);
        b.target
            .iter()
            .filter(|(p, x)| {
                current
                    .and_then(|c| c.get(p))
                    .is_none_or(|c| !c.same_shape(x))
            })
            .map(|(p, _)| {
                (
                    *p,
                    "haproxy -c rejected the new config; checking which frontends it rejects"
                        .to_owned(),
                )
            })
            .collect()
    }

    fn next_check(&mut self) -> Step {
        let b = self.bisect.as_mut().expect("bisecting");
        let group = b.todo.pop().unwrap_or(None);
        let layout = match &group {
            None => Layout::new(),
            Some(ports) => ports
                .iter()
                .filter_map(|p| b.target.get(p).map(|x| (*p, x.clone())))
                .collect(),
        };
        b.checking = Some(group);
        self.in_flight = Some(InFlight::Check);
        Step::Check { layout }
    }

    /// Reads one check of a bisection.
    fn bisect_step(&mut self, check: Check, now: Instant) -> Option<Report> {
        let mut b = self.bisect.take()?;
        let group = b.checking.take().flatten();
        match (check, group) {
            (Check::Valid, None) => {
                // Even the baseline passes: split the frontends.
                push_halves(&mut b.todo, b.target.keys().copied().collect());
            }
            (Check::Valid, Some(_)) => {}
            (Check::Invalid(out), None) => {
                return Some(self.fail_with(
                    format!(
                        "keeping the last good config: haproxy -c rejects even a config without frontends, so no frontend is to blame: {}",
                        complaint(&out)
                    ),
                    now,
                ));
            }
            (Check::Invalid(out), Some(ports)) if ports.len() == 1 => {
                b.found.insert(ports[0], complaint(&out));
            }
            (Check::Invalid(_), Some(ports)) => push_halves(&mut b.todo, ports),
            (unjudged, _) => return Some(self.fail_with(unjudged_error(&unjudged), now)),
        }
        if !b.todo.is_empty() {
            self.bisect = Some(b);
            return None;
        }
        if b.found.is_empty() {
            return Some(self.fail_with(
                format!(
                    "keeping the last good config: haproxy -c rejects it, but no frontend on its own: {}",
                    b.complaint
                ),
                now,
            ));
        }
        for (port, why) in b.found {
            let mut servers: Vec<SlotServer> = b.target[&port].servers().collect();
            servers.sort_unstable();
            self.quarantine
                .insert(port, Quarantine::Invalid { why, servers });
        }
        // The next poll installs the config without them.
        None
    }

    fn installed(
        &mut self,
        target: Layout,
        triggers: Vec<u16>,
        install: Install,
        now: Instant,
    ) -> Report {
        let reload = |result| Report {
            method: Method::Reload,
            result,
        };
        let nothing = Report {
            method: Method::None,
            result: Ok(()),
        };
        match install {
            Install::Done { instance } => {
                for port in triggers {
                    let strikes = match self.history.get(&port) {
                        // Soon after its previous reload: one more strike.
                        Some(h) if now < h.last + self.backoff(h.strikes) * 4 + CALM => {
                            h.strikes + 1
                        }
                        _ => 0,
                    };
                    self.history.insert(port, History { last: now, strikes });
                }
                let forget = self.s.max_frontend_backoff * 4 + CALM;
                self.history.retain(|_, h| now < h.last + forget);
                self.emptied.retain(|port, _| target.contains_key(port));
                self.served = Some(Served::new(target, instance));
                self.last_reload = Some(now);
                self.file_stale = None;
                self.resync = false;
                self.trouble = None;
                self.busy = None;
                reload(Ok(()))
            }
            Install::CannotBind(ports) => {
                for (port, why) in ports {
                    self.quarantine.insert(port, Quarantine::Bind(why));
                }
                self.next_probe = Some(now + self.s.probe_interval);
                // Nothing was tried: the next poll installs without them.
                nothing
            }
            Install::Busy { old_workers } => {
                self.busy = Some((now + self.s.probe_interval, old_workers));
                nothing
            }
            Install::Rejected(Check::Invalid(out)) => {
                let complaint = complaint(&out);
                self.bisect = Some(Bisect {
                    complaint: complaint.clone(),
                    target,
                    todo: vec![None],
                    checking: None,
                    found: BTreeMap::new(),
                });
                self.status.deferred = self.bisect_deferred();
                reload(Err(format!(
                    "keeping the last good config: haproxy -c rejects the new one ({complaint}); looking for the frontends to leave out"
                )))
            }
            Install::Rejected(unjudged) => self.fail_with(unjudged_error(&unjudged), now),
            Install::Failed { bind, error } => {
                let learned = bind
                    .keys()
                    .any(|p| !self.quarantine.contains_key(p) && target.contains_key(p));
                if learned {
                    for (port, why) in bind {
                        self.quarantine.insert(port, Quarantine::Bind(why));
                    }
                    self.next_probe = Some(now + self.s.probe_interval);
                    reload(Err(format!(
                        "{error}; leaving out the frontends that cannot bind"
                    )))
                } else {
                    self.fail_with(error, now)
                }
            }
            Install::TimedOut(error) | Install::WriteFailed(error) => self.fail_with(error, now),
        }
    }

    /// A failure nothing here can fix: retry later, twice as late each time.
    fn fail_with(&mut self, error: String, now: Instant) -> Report {
        let failures = self.trouble.as_ref().map_or(0, |t| t.failures) + 1;
        let wait = doubled(self.s.retry, failures - 1).min(self.s.max_retry);
        self.trouble = Some(Trouble {
            failures,
            retry_at: now + wait,
        });
        Report {
            method: Method::Reload,
            result: Err(error),
        }
    }

    /// The status for `view`, with `fit` applied (or about to be) and
    /// `deferred` frontends waiting for their turn.
    fn status_for(
        &self,
        view: &RegistryView,
        wanted: &Wanted,
        fit: &Fitted,
        deferred: &BTreeMap<u16, String>,
        now: Instant,
    ) -> PlanStatus {
        let served = self.served.as_ref();
        let served_digest = |port: &u16| served.and_then(|s| s.digests.get(port));
        let ports: BTreeSet<u16> = wanted
            .keys()
            .chain(served.into_iter().flat_map(|s| s.layout.keys()))
            .copied()
            .collect();
        let mut digests: Vec<(u16, FrontendDigest)> = Vec::with_capacity(ports.len());
        for port in ports {
            let d = if deferred.contains_key(&port) {
                // What it serves until its turn comes.
                served_digest(&port).copied()
            } else if let Some((_, servers)) = wanted.get(&port) {
                let same = served.is_some_and(|s| s.layout.contains_key(&port))
                    && !fit.changed.contains_key(&port)
                    && !fit.short.contains(&port);
                match same {
                    true => served_digest(&port).copied(),
                    false => layout::frontend_digest(port, servers),
                }
            } else {
                None
            };
            if let Some(d) = d {
                digests.push((port, d));
            }
        }
        PlanStatus {
            config_digest: served.map(|s| s.digest.clone()),
            wanted_digest: layout::combine(digests.iter().map(|(p, d)| (*p, d))),
            frontends: view.frontends.len(),
            servers: view.server_count(),
            quarantined: self.quarantine_reasons(),
            deferred: deferred.clone(),
            held: self.held(now),
        }
    }
}

/// A frontend's reloads count as "in a row" while this close together
/// (beyond four times its current wait).
const CALM: Duration = Duration::from_secs(60);

fn doubled(base: Duration, times: u32) -> Duration {
    base.saturating_mul(1u32.checked_shl(times.min(31)).unwrap_or(u32::MAX))
}

fn earlier(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

fn later(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, b) => a.or(b),
    }
}

/// Queues the two halves of a group that failed its check.
fn push_halves(todo: &mut Vec<Option<Vec<u16>>>, mut ports: Vec<u16>) {
    if ports.len() <= 1 {
        todo.push(Some(ports));
        return;
    }
    let second = ports.split_off(ports.len() / 2);
    todo.push(Some(second));
    todo.push(Some(ports));
}

/// The line of HAProxy's output that says what is wrong.
fn complaint(out: &str) -> String {
    out.lines()
        .find(|l| l.contains("[ALERT]"))
        .or_else(|| out.lines().find(|l| !l.trim().is_empty()))
        .unwrap_or("rejected by haproxy -c")
        .trim()
        .to_owned()
}

fn unjudged_error(check: &Check) -> String {
    match check {
        Check::TimedOut(after) => format!(
            "keeping the last good config: haproxy -c did not finish within {} s, so the config was not judged",
            after.as_secs()
        ),
        Check::CannotRun(e) => format!("keeping the last good config: {e}"),
        Check::Valid => "keeping the last good config".into(),
        Check::Invalid(out) => format!("keeping the last good config: {}", complaint(out)),
    }
}

#[cfg(test)]
mod tests;
