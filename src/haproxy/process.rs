//! Running HAProxy: as lbmesh's supervised child (`haproxy -W`), or as an
//! existing service reloaded by a configured command.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::{Notify, watch};
use tokio::time::{Instant, sleep};

use super::runtime;

#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    #[error("could not run {what}: {error}")]
    Spawn { what: String, error: std::io::Error },
    #[error("haproxy rejected the config:\n{0}")]
    Invalid(String),
    #[error("reload failed: {0}")]
    Reload(String),
    #[error("haproxy is not running")]
    NotRunning,
}

/// How HAProxy is run.
#[derive(Debug, Clone)]
pub enum Mode {
    /// lbmesh starts `haproxy -W` as its child, restarts it when it dies and
    /// stops it on shutdown.
    Supervised {
        master_socket: PathBuf,
        pid_file: PathBuf,
    },
    /// HAProxy is a service of its own; lbmesh runs `reload_command` after
    /// writing the config.
    External { reload_command: Vec<String> },
}

/// Checks a config file with `haproxy -c`.
pub async fn validate(binary: &Path, config: &Path) -> Result<(), ProcessError> {
    let out = tokio::time::timeout(
        Duration::from_secs(60),
        Command::new(binary)
            .arg("-c")
            .arg("-f")
            .arg(config)
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .map_err(|_| ProcessError::Invalid("haproxy -c took longer than 60 s".into()))?
    .map_err(|error| ProcessError::Spawn {
        what: format!("{} -c", binary.display()),
        error,
    })?;
    if out.status.success() {
        Ok(())
    } else {
        let mut text = String::from_utf8_lossy(&out.stderr).into_owned();
        text.push_str(&String::from_utf8_lossy(&out.stdout));
        Err(ProcessError::Invalid(text.trim().to_owned()))
    }
}

/// Shared view of the HAProxy process, for health and status.
#[derive(Debug, Default)]
pub struct ProcessState {
    /// PID of the master process; 0 when none runs.
    master_pid: AtomicU32,
    restarts: AtomicU64,
}

impl ProcessState {
    pub fn master_pid(&self) -> Option<u32> {
        match self.master_pid.load(Ordering::Relaxed) {
            0 => None,
            p => Some(p),
        }
    }
    pub fn restarts(&self) -> u64 {
        self.restarts.load(Ordering::Relaxed)
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

    /// Whether a worker answers on the runtime socket.
    pub async fn is_serving(&self) -> bool {
        runtime::worker_pid(&self.runtime_socket).await.is_ok()
    }

    /// Makes HAProxy run the config now at `config_path`: starts it if it is
    /// not running (supervised mode), reloads it otherwise, and checks that a
    /// new worker took over.
    pub async fn reload(&self) -> Result<(), ProcessError> {
        match &self.mode {
            Mode::Supervised { master_socket, .. } => {
                let Some(pid) = self.state.master_pid() else {
                    self.start.notify_one();
                    return self.wait_serving(Duration::from_secs(15)).await;
                };
                let before_pid = runtime::worker_pid(&self.runtime_socket).await.ok();
                let (r0, f0) = runtime::master_reloads(master_socket)
                    .await
                    .map_err(|e| ProcessError::Reload(e.to_string()))?;
                kill(Pid::from_raw(pid as i32), Signal::SIGUSR2)
                    .map_err(|e| ProcessError::Reload(format!("signal master {pid}: {e}")))?;
                let deadline = Instant::now() + Duration::from_secs(30);
                loop {
                    sleep(Duration::from_millis(20)).await;
                    // The master re-executes itself on reload; its CLI is briefly away.
                    if let Ok((r, f)) = runtime::master_reloads(master_socket).await {
                        if r > r0 {
                            if f > f0 {
                                return Err(ProcessError::Reload(
                                    "HAProxy could not load the new config (see its log); the previous workers keep serving".into(),
                                ));
                            }
                            break;
                        }
                    }
                    if Instant::now() > deadline {
                        return Err(ProcessError::Reload(
                            "no answer from the master within 30 s".into(),
                        ));
                    }
                }
                self.wait_new_worker(before_pid).await
            }
            Mode::External { reload_command } => {
                let before_pid = runtime::worker_pid(&self.runtime_socket).await.ok();
                let (program, args) = reload_command
                    .split_first()
                    .ok_or_else(|| ProcessError::Reload("reload-command is empty".into()))?;
                let out = Command::new(program)
                    .args(args)
                    .stdin(Stdio::null())
                    .kill_on_drop(true)
                    .output()
                    .await
                    .map_err(|error| ProcessError::Spawn {
                        what: program.clone(),
                        error,
                    })?;
                if !out.status.success() {
                    return Err(ProcessError::Reload(format!(
                        "{} exited with {}: {}",
                        reload_command.join(" "),
                        out.status,
                        String::from_utf8_lossy(&out.stderr).trim()
                    )));
                }
                self.wait_new_worker(before_pid).await
            }
        }
    }

    async fn wait_serving(&self, within: Duration) -> Result<(), ProcessError> {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if self.is_serving().await {
                return Ok(());
            }
            sleep(Duration::from_millis(20)).await;
        }
        Err(ProcessError::NotRunning)
    }

    /// Waits until the runtime socket is answered by a worker other than `before`.
    async fn wait_new_worker(&self, before: Option<u32>) -> Result<(), ProcessError> {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            match runtime::worker_pid(&self.runtime_socket).await {
                Ok(pid) if Some(pid) != before => return Ok(()),
                _ if Instant::now() > deadline => {
                    return Err(ProcessError::Reload(
                        "no new HAProxy worker took over within 15 s; the previous one keeps serving".into(),
                    ));
                }
                _ => sleep(Duration::from_millis(20)).await,
            }
        }
    }

    /// Supervises HAProxy in supervised mode until `shutdown` fires; returns
    /// at once in external mode. Waits for the first [`Haproxy::reload`] so
    /// HAProxy only ever starts on a validated config.
    pub async fn supervise(self, mut shutdown: watch::Receiver<bool>) {
        let Mode::Supervised {
            master_socket,
            pid_file,
        } = &self.mode
        else {
            return;
        };
        let mut adopted = self.state.master_pid();
        if adopted.is_none() {
            tokio::select! {
                () = self.start.notified() => {}
                () = crate::shutdown::signalled(&mut shutdown) => return,
            }
        }
        let mut backoff = Duration::from_millis(200);
        loop {
            if let Some(pid) = adopted.take() {
                tokio::select! {
                    () = wait_gone(pid) => {
                        tracing::warn!(pid, "adopted HAProxy master exited; starting a new one");
                    }
                    () = crate::shutdown::signalled(&mut shutdown) => {
                        stop_pid(pid).await;
                        break;
                    }
                }
            } else {
                let mut child = match self.spawn(master_socket) {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::error!(error = %e, "cannot start HAProxy");
                        tokio::select! {
                            () = sleep(backoff) => { backoff = (backoff * 2).min(Duration::from_secs(30)); continue; }
                            () = crate::shutdown::signalled(&mut shutdown) => break,
                        }
                    }
                };
                let pid = child.id().unwrap_or(0);
                self.state.master_pid.store(pid, Ordering::Relaxed);
                if let Err(e) = crate::store::write_atomic(pid_file, format!("{pid}\n").as_bytes())
                {
                    tracing::warn!(error = %e, "cannot write HAProxy pid file");
                }
                let started = Instant::now();
                tokio::select! {
                    status = child.wait() => {
                        tracing::error!(?status, "HAProxy exited; restarting it");
                    }
                    () = crate::shutdown::signalled(&mut shutdown) => {
                        stop_pid(pid).await;
                        let _ = child.wait().await;
                        break;
                    }
                }
                if started.elapsed() > Duration::from_secs(10) {
                    backoff = Duration::from_millis(200);
                }
            }
            self.state.master_pid.store(0, Ordering::Relaxed);
            self.state.restarts.fetch_add(1, Ordering::Relaxed);
            tokio::select! {
                () = sleep(backoff) => {}
                () = crate::shutdown::signalled(&mut shutdown) => break,
            }
            backoff = (backoff * 2).min(Duration::from_secs(30));
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
            tokio::spawn(async move {
                let mut lines = BufReader::new(stderr).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    let line = super::log::parse_stderr(&line);
                    super::log::emit(super::log::stderr_level(&line, master), &line.text);
                }
            });
        }
        tracing::info!(pid = child.id(), config = %self.config_path.display(), "started HAProxy");
        Ok(child)
    }
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
