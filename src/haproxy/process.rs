//! Running HAProxy: as lbmesh's supervised child (`haproxy -W`), or as an
//! existing service reloaded by a configured command. Every wait here has a
//! deadline, and each failure says what it was.

use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::{Notify, watch};
use tokio::time::{Instant, sleep};

use super::plan::Check;
use super::render::port_of_name;
use super::runtime;

/// Why HAProxy did not do what it was asked.
#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    #[error("could not run {what}: {error}")]
    Spawn { what: String, error: std::io::Error },
    /// It said no; `alerts` are its alert lines meanwhile.
    #[error("{message}")]
    Failed {
        message: String,
        alerts: Vec<String>,
    },
    #[error("{0}")]
    TimedOut(String),
}

impl ProcessError {
    fn failed(message: impl Into<String>) -> Self {
        Self::Failed {
            message: message.into(),
            alerts: Vec::new(),
        }
    }
}

/// How HAProxy is run.
#[derive(Debug, Clone)]
pub enum Mode {
    /// lbmesh starts `haproxy -W` as its child, starts it again when it
    /// dies and stops it on shutdown.
    Supervised {
        master_socket: PathBuf,
        pid_file: PathBuf,
    },
    /// HAProxy is a service of its own; lbmesh runs `reload_command` after
    /// writing the config.
    External { reload_command: Vec<String> },
}

/// Checks a config file with `haproxy -c`, giving up after `timeout`.
pub async fn validate(binary: &Path, config: &Path, timeout: Duration) -> Check {
    let run = Command::new(binary)
        .arg("-c")
        .arg("-f")
        .arg(config)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    match tokio::time::timeout(timeout, run).await {
        Err(_) => Check::TimedOut(timeout),
        Ok(Err(e)) => Check::CannotRun(format!("could not run {} -c: {e}", binary.display())),
        Ok(Ok(out)) if out.status.success() => Check::Valid,
        Ok(Ok(out)) => {
            let mut text = String::from_utf8_lossy(&out.stderr).into_owned();
            text.push_str(&String::from_utf8_lossy(&out.stdout));
            Check::Invalid(text.trim().to_owned())
        }
    }
}

/// The frontends HAProxy's alert lines say it could not bind, with the reason.
pub fn bind_failures(alerts: &[String]) -> BTreeMap<u16, String> {
    alerts
        .iter()
        .filter_map(|line| {
            let at = line.find("cannot bind socket")?;
            let (_, after) = line.split_once("for frontend ")?;
            let name = after.split([':', ' ']).next()?;
            Some((port_of_name(name)?, line[at..].trim().to_owned()))
        })
        .collect()
}

/// The last alert lines HAProxy wrote, numbered.
#[derive(Debug, Default)]
struct Alerts {
    next: u64,
    lines: VecDeque<(u64, String)>,
}

const KEPT_ALERTS: usize = 64;

/// Shared view of the HAProxy process, for health and status.
#[derive(Debug)]
pub struct ProcessState {
    /// PID of the master process; 0 when none runs.
    master_pid: AtomicU32,
    restarts: AtomicU64,
    /// How many times a master exited.
    exits: AtomicU64,
    /// How the last one ended.
    last_exit: Mutex<String>,
    alerts: Mutex<Alerts>,
    /// Bumped whenever a master starts or exits, to wake whoever waits.
    changed: watch::Sender<u64>,
    /// On shutdown, leave the master serving for the next lbmesh to adopt.
    leave_running: AtomicBool,
}

impl Default for ProcessState {
    fn default() -> Self {
        Self {
            leave_running: AtomicBool::new(false),
            master_pid: AtomicU32::new(0),
            restarts: AtomicU64::new(0),
            exits: AtomicU64::new(0),
            last_exit: Mutex::default(),
            alerts: Mutex::default(),
            changed: watch::channel(0).0,
        }
    }
}

impl ProcessState {
    pub fn master_pid(&self) -> Option<u32> {
        match self.master_pid.load(Ordering::Relaxed) {
            0 => None,
            p => Some(p),
        }
    }

    /// How many times lbmesh started HAProxy again after the first time.
    pub fn restarts(&self) -> u64 {
        self.restarts.load(Ordering::Relaxed)
    }

    pub fn exits(&self) -> u64 {
        self.exits.load(Ordering::Relaxed)
    }

    /// How the last master that exited ended.
    pub fn last_exit(&self) -> String {
        self.last_exit
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Wakes on every start and exit of a master.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    fn bump(&self) {
        self.changed.send_modify(|n| *n += 1);
    }

    fn exited(&self, how: String) {
        self.master_pid.store(0, Ordering::Relaxed);
        *self.last_exit.lock().unwrap_or_else(|p| p.into_inner()) = how;
        self.exits.fetch_add(1, Ordering::Relaxed);
        self.bump();
    }

    fn record_alert(&self, line: &str) {
        let mut a = self.alerts.lock().unwrap_or_else(|p| p.into_inner());
        let n = a.next;
        a.next += 1;
        a.lines.push_back((n, line.to_owned()));
        if a.lines.len() > KEPT_ALERTS {
            a.lines.pop_front();
        }
    }

    /// A mark to read the alerts written after it with [`ProcessState::alerts_since`].
    fn alert_mark(&self) -> u64 {
        self.alerts.lock().unwrap_or_else(|p| p.into_inner()).next
    }

    fn alerts_since(&self, mark: u64) -> Vec<String> {
        self.alerts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .lines
            .iter()
            .filter(|(n, _)| *n >= mark)
            .map(|(_, l)| l.clone())
            .collect()
    }
}

/// A handle to the HAProxy that serves this peer's frontends.
#[derive(Clone)]
pub struct Haproxy {
    pub binary: PathBuf,
    pub config_path: PathBuf,
    pub runtime_socket: PathBuf,
    pub health_socket: PathBuf,
    pub mode: Mode,
    state: Arc<ProcessState>,
    start: Arc<Notify>,
}

impl Haproxy {
    pub fn new(
        binary: PathBuf,
        config_path: PathBuf,
        runtime_socket: PathBuf,
        health_socket: PathBuf,
        mode: Mode,
    ) -> Self {
        Self {
            binary,
            config_path,
            runtime_socket,
            health_socket,
            mode,
            state: Arc::default(),
            start: Arc::default(),
        }
    }

    pub fn is_supervised(&self) -> bool {
        matches!(self.mode, Mode::Supervised { .. })
    }

    /// In supervised mode, takes over a master left running by an earlier
    /// lbmesh that was killed hard, rather than dropping its connections.
    /// Call before [`Haproxy::supervise`] and the first reload.
    pub fn adopt_existing(&self) -> Option<u32> {
        let Mode::Supervised { pid_file, .. } = &self.mode else {
            return None;
        };
        let pid = adoptable_master(pid_file, &self.config_path)?;
        tracing::info!(
            pid,
            "adopting the HAProxy master left running by a previous lbmesh"
        );
        self.state.master_pid.store(pid, Ordering::Relaxed);
        Some(pid)
    }

    pub fn state(&self) -> &Arc<ProcessState> {
        &self.state
    }

    /// Makes [`Haproxy::supervise`] leave the master running when it is
    /// shut down, with its pid file, for the next lbmesh to adopt: the
    /// connections it serves outlive the daemon (an upgrade of a drained VM).
    pub fn leave_running_on_shutdown(&self) {
        self.state.leave_running.store(true, Ordering::Relaxed);
    }

    fn leaving(&self) -> bool {
        self.state.leave_running.load(Ordering::Relaxed)
    }

    /// Whether a worker answers on the runtime socket.
    pub async fn is_serving(&self) -> bool {
        runtime::worker_pid(&self.runtime_socket).await.is_ok()
    }

    /// Which HAProxy runs: the master's PID when supervised, the serving
    /// worker's when HAProxy is an outside service; `None` when none runs.
    pub async fn instance(&self) -> Option<u32> {
        match &self.mode {
            Mode::Supervised { .. } => self.state.master_pid(),
            Mode::External { .. } => {
                // One missed answer (the service reloading) is not a dead HAProxy.
                match runtime::worker_pid(&self.runtime_socket).await {
                    Ok(pid) => Some(pid),
                    Err(_) => {
                        sleep(Duration::from_millis(200)).await;
                        runtime::worker_pid(&self.runtime_socket).await.ok()
                    }
                }
            }
        }
    }

    /// Old workers still serving connections after reloads; `None` when
    /// that cannot be known (an outside service's master is not ours to ask).
    pub async fn old_workers(&self) -> Option<usize> {
        let Mode::Supervised { master_socket, .. } = &self.mode else {
            return None;
        };
        self.state.master_pid()?;
        runtime::old_workers(master_socket).await.ok()
    }

    /// Makes HAProxy run the config now at `config_path`: starts it if it
    /// does not run (supervised mode), reloads it otherwise, and checks that
    /// a new worker took over, all within `within`. Returns the new
    /// [`Haproxy::instance`].
    pub async fn reload(&self, within: Duration) -> Result<u32, ProcessError> {
        let deadline = Instant::now() + within;
        let mark = self.state.alert_mark();
        let result = match &self.mode {
            Mode::Supervised { master_socket, .. } => match self.state.master_pid() {
                None => self.start(deadline, within).await,
                Some(pid) => {
                    self.signal_reload(pid, master_socket, deadline, within)
                        .await
                }
            },
            Mode::External { reload_command } => {
                self.run_reload_command(reload_command, deadline, within)
                    .await
            }
        };
        result.map_err(|e| match e {
            ProcessError::Failed {
                message,
                mut alerts,
            } => {
                alerts.extend(self.state.alerts_since(mark));
                ProcessError::Failed { message, alerts }
            }
            other => other,
        })
    }

    /// Asks the supervisor for a master and waits until its worker serves.
    async fn start(&self, deadline: Instant, within: Duration) -> Result<u32, ProcessError> {
        let exits = self.state.exits();
        self.start.notify_one();
        loop {
            if self.state.exits() > exits {
                return Err(ProcessError::failed(format!(
                    "HAProxy did not start: {}",
                    self.state.last_exit()
                )));
            }
            if let Some(master) = self.state.master_pid() {
                if self.worker_of(master).await.is_some() {
                    return Ok(master);
                }
            }
            if Instant::now() > deadline {
                return Err(ProcessError::TimedOut(format!(
                    "HAProxy started but no worker answered within {} s",
                    within.as_secs()
                )));
            }
            sleep(Duration::from_millis(20)).await;
        }
    }

    /// The worker answering on the runtime socket, if `master` is its parent
    /// (a worker of a master that was killed may linger for a moment).
    async fn worker_of(&self, master: u32) -> Option<u32> {
        let worker = runtime::worker_pid(&self.runtime_socket).await.ok()?;
        (parent_pid(worker) == Some(master)).then_some(worker)
    }

    async fn signal_reload(
        &self,
        pid: u32,
        master_socket: &Path,
        deadline: Instant,
        within: Duration,
    ) -> Result<u32, ProcessError> {
        let before = runtime::worker_pid(&self.runtime_socket).await.ok();
        let (r0, f0) = runtime::master_reloads(master_socket)
            .await
            .map_err(|e| ProcessError::failed(e.to_string()))?;
        kill(Pid::from_raw(pid as i32), Signal::SIGUSR2)
            .map_err(|e| ProcessError::failed(format!("signal master {pid}: {e}")))?;
        loop {
            sleep(Duration::from_millis(20)).await;
            // The master re-executes itself on reload; its CLI is briefly away.
            if let Ok((r, f)) = runtime::master_reloads(master_socket).await {
                if r > r0 {
                    if f > f0 {
                        return Err(ProcessError::failed(
                            "HAProxy could not load the new config; the previous workers keep serving",
                        ));
                    }
                    break;
                }
            }
            if self.state.master_pid() != Some(pid) {
                return Err(ProcessError::failed(format!(
                    "HAProxy exited while reloading: {}",
                    self.state.last_exit()
                )));
            }
            if Instant::now() > deadline {
                return Err(ProcessError::TimedOut(format!(
                    "the HAProxy master did not finish reloading within {} s",
                    within.as_secs()
                )));
            }
        }
        self.wait_new_worker(before, deadline, within).await?;
        Ok(pid)
    }

    async fn run_reload_command(
        &self,
        reload_command: &[String],
        deadline: Instant,
        within: Duration,
    ) -> Result<u32, ProcessError> {
        let before = runtime::worker_pid(&self.runtime_socket).await.ok();
        let (program, args) = reload_command
            .split_first()
            .ok_or_else(|| ProcessError::failed("reload-command is empty"))?;
        let run = Command::new(program)
            .args(args)
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output();
        let out = tokio::time::timeout_at(deadline, run)
            .await
            .map_err(|_| {
                ProcessError::TimedOut(format!(
                    "the reload command ({}) did not finish within {} s; it was stopped",
                    reload_command.join(" "),
                    within.as_secs()
                ))
            })?
            .map_err(|error| ProcessError::Spawn {
                what: program.clone(),
                error,
            })?;
        if !out.status.success() {
            return Err(ProcessError::failed(format!(
                "{} exited with {}: {}",
                reload_command.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        self.wait_new_worker(before, deadline, within).await
    }

    /// Waits until the runtime socket is answered by a worker other than `before`.
    async fn wait_new_worker(
        &self,
        before: Option<u32>,
        deadline: Instant,
        within: Duration,
    ) -> Result<u32, ProcessError> {
        loop {
            match runtime::worker_pid(&self.runtime_socket).await {
                Ok(pid) if Some(pid) != before => return Ok(pid),
                _ if Instant::now() > deadline => {
                    return Err(ProcessError::TimedOut(format!(
                        "no new HAProxy worker took over within {} s; the previous one keeps serving",
                        within.as_secs()
                    )));
                }
                _ => sleep(Duration::from_millis(20)).await,
            }
        }
    }

    /// Supervises HAProxy in supervised mode until `shutdown` fires; returns
    /// at once in external mode. Starts a master each time one is asked for
    /// (by [`Haproxy::reload`] when none runs), never on its own: whoever
    /// asks has written a config that passed `haproxy -c` and probed its
    /// ports first. An exit is recorded for the asker to see. On shutdown it
    /// stops the master, unless told to leave it running
    /// ([`Haproxy::leave_running_on_shutdown`]).
    pub async fn supervise(self, mut shutdown: watch::Receiver<bool>) {
        let Mode::Supervised {
            master_socket,
            pid_file,
        } = &self.mode
        else {
            return;
        };
        raise_fd_limit();
        let mut adopted = self.state.master_pid();
        let mut started_once = adopted.is_some();
        loop {
            if let Some(pid) = adopted.take() {
                tokio::select! {
                    () = wait_gone(pid) => {
                        tracing::warn!(pid, "the adopted HAProxy master exited");
                        self.state.exited(format!("the adopted master {pid} exited"));
                        continue;
                    }
                    () = crate::shutdown::signalled(&mut shutdown) => {
                        if self.leaving() {
                            tracing::info!(pid, "leaving HAProxy serving for the next lbmesh to adopt");
                            return;
                        }
                        stop_pid(pid).await;
                        break;
                    }
                }
            }
            tokio::select! {
                () = self.start.notified() => {}
                () = crate::shutdown::signalled(&mut shutdown) => break,
            }
            let mut child = match self.spawn(master_socket) {
                Ok(c) => c,
                Err(e) => {
                    self.state.exited(e.to_string());
                    continue;
                }
            };
            if std::mem::replace(&mut started_once, true) {
                self.state.restarts.fetch_add(1, Ordering::Relaxed);
            }
            let pid = child.id().unwrap_or(0);
            self.state.master_pid.store(pid, Ordering::Relaxed);
            self.state.bump();
            if let Err(e) = crate::store::write_atomic(pid_file, format!("{pid}\n").as_bytes()) {
                tracing::warn!(error = %e, "cannot write HAProxy pid file");
            }
            let exited = tokio::select! {
                status = child.wait() => Some(status),
                () = crate::shutdown::signalled(&mut shutdown) => None,
            };
            match exited {
                Some(status) => {
                    let how = match status {
                        Ok(s) => format!("HAProxy exited ({s})"),
                        Err(e) => format!("HAProxy could not be waited for: {e}"),
                    };
                    tracing::warn!(pid, "{how}");
                    self.state.exited(how);
                }
                None if self.leaving() => {
                    tracing::info!(pid, "leaving HAProxy serving for the next lbmesh to adopt");
                    // Not dropped: dropping the handle would kill it.
                    std::mem::forget(child);
                    return;
                }
                None => {
                    stop_pid(pid).await;
                    let _ = child.wait().await;
                    break;
                }
            }
        }
        self.state.master_pid.store(0, Ordering::Relaxed);
        let _ = std::fs::remove_file(pid_file);
    }

    fn spawn(&self, master_socket: &Path) -> Result<Child, ProcessError> {
        let _ = std::fs::remove_file(master_socket);
        let mut child = Command::new(&self.binary)
            .arg("-W")
            .arg("-db")
            .arg("-f")
            .arg(&self.config_path)
            .arg("-S")
            .arg(master_socket)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|error| ProcessError::Spawn {
                what: self.binary.display().to_string(),
                error,
            })?;
        if let Some(stderr) = child.stderr.take() {
            let master = child.id();
            let state = self.state.clone();
            tokio::spawn(async move {
                let mut lines = BufReader::new(stderr).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    // Alerts say why a start or reload failed (which port
                    // could not be bound); the planner reads them.
                    if is_load_alert(&line) {
                        state.record_alert(&line);
                    }
                    let line = super::log::parse_stderr(&line);
                    super::log::emit(super::log::stderr_level(&line, master), &line.text);
                }
            });
        }
        tracing::info!(pid = child.id(), config = %self.config_path.display(), "started HAProxy");
        Ok(child)
    }
}

/// Whether an HAProxy stderr line is an alert about loading a config (a
/// port it cannot bind, a limit it cannot raise), as opposed to a running
/// worker's news about its servers, which also comes at alert level and,
/// with many servers down, would crowd the others out.
fn is_load_alert(line: &str) -> bool {
    line.contains("[ALERT]")
        && !line.contains("has no server available")
        && !(line.contains("Server ") && line.contains(" is DOWN"))
}

/// Raises this process's soft limit on open files to its hard limit, for
/// HAProxy to inherit: HAProxy takes a file descriptor for every server
/// slot with health checks, besides its connections.
fn raise_fd_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => tracing::info!(
                from = soft,
                to = hard,
                "raised the open-files limit HAProxy inherits"
            ),
            Err(e) => tracing::warn!(error = %e, soft, hard, "cannot raise the open-files limit"),
        },
        Ok(_) | Err(_) => {}
    }
}

/// The parent of `pid`, from `/proc`.
fn parent_pid(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parentheses: read after the last ')'.
    stat.rsplit(')')
        .next()?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

fn alive(pid: u32) -> bool {
    kill(Pid::from_raw(pid as i32), None).is_ok()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| {
                s.rsplit(')')
                    .next()
                    .is_some_and(|r| r.trim_start().starts_with('Z'))
            })
            .unwrap_or(false)
}

/// The PID in `pid_file` if it is a live HAProxy master running `config`.
fn adoptable_master(pid_file: &Path, config: &Path) -> Option<u32> {
    let pid: u32 = std::fs::read_to_string(pid_file)
        .ok()?
        .trim()
        .parse()
        .ok()?;
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
    let runs_config = args
        .windows(2)
        .any(|w| w[0] == b"-f" && w[1] == config.as_os_str().as_encoded_bytes());
    let is_haproxy = args.first().is_some_and(|a| a.ends_with(b"haproxy"));
    (runs_config && is_haproxy && alive(pid)).then_some(pid)
}

async fn wait_gone(pid: u32) {
    while alive(pid) {
        sleep(Duration::from_millis(250)).await;
    }
}

/// Stops a master: SIGTERM, then SIGKILL if it lingers.
async fn stop_pid(pid: u32) {
    let p = Pid::from_raw(pid as i32);
    let _ = kill(p, Signal::SIGTERM);
    let deadline = Instant::now() + Duration::from_secs(5);
    while alive(pid) && Instant::now() < deadline {
        sleep(Duration::from_millis(20)).await;
    }
    if alive(pid) {
        let _ = kill(p, Signal::SIGKILL);
    }
    tracing::info!(pid, "stopped HAProxy");
}

/// Asks HAProxy's health frontend (a unix socket in the rendered config)
/// for a 200: proves a worker is up and processing requests.
pub async fn health_probe(h: &Haproxy) -> Result<(), String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let path = h.health_socket.clone();
    let talk = async {
        let mut s = tokio::net::UnixStream::connect(&path)
            .await
            .map_err(|e| format!("{}: {e}", path.display()))?;
        s.write_all(b"GET / HTTP/1.0\r\n\r\n")
            .await
            .map_err(|e| e.to_string())?;
        let mut buf = [0u8; 64];
        let n = s.read(&mut buf).await.map_err(|e| e.to_string())?;
        let head = String::from_utf8_lossy(&buf[..n]);
        if head.starts_with("HTTP/1.0 200") || head.starts_with("HTTP/1.1 200") {
            Ok(())
        } else {
            Err(format!(
                "unexpected answer {:?}",
                head.lines().next().unwrap_or("")
            ))
        }
    };
    tokio::time::timeout(Duration::from_secs(2), talk)
        .await
        .map_err(|_| "no answer within 2 s".to_string())?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bind_failures_name_the_frontend_haproxy_could_not_bind() {
        let alerts = vec![
            "[ALERT]    (18568) : Binding [/run/lbmesh/haproxy.cfg:12] for frontend 8702_frontend: cannot bind socket (Address already in use) for [127.0.0.1:8702]".to_owned(),
            "[ALERT]    (18568) : [haproxy.main()] Some protocols failed to start their listeners! Exiting.".to_owned(),
            "[ALERT]    (1) : Binding [x:3] for frontend lbmesh_health: cannot bind socket (Permission denied) for [unix@/x]".to_owned(),
        ];
        let got = bind_failures(&alerts);
        assert_eq!(got.keys().copied().collect::<Vec<_>>(), vec![8702]);
        assert_eq!(
            got[&8702],
            "cannot bind socket (Address already in use) for [127.0.0.1:8702]"
        );
    }

    #[test]
    fn a_worker_losing_its_servers_does_not_crowd_out_why_a_load_failed() {
        assert!(is_load_alert(
            "[ALERT]    (11780) : [haproxy.main()] Cannot raise FD limit to 31716, limit is 20000."
        ));
        assert!(!is_load_alert(
            "[ALERT]    (23330) : backend '21248_backend' has no server available!"
        ));
        assert!(!is_load_alert(
            "[ALERT]    (23330) : Server 21192_backend/s5 is DOWN, reason: Layer4 connection problem"
        ));
        assert!(!is_load_alert(
            "[WARNING]  (1) : Reexecuting Master process"
        ));
    }

    #[test]
    fn parent_pid_reads_proc() {
        assert_eq!(
            parent_pid(std::process::id()),
            Some(std::os::unix::process::parent_id())
        );
        assert_eq!(parent_pid(u32::MAX), None);
    }
}
