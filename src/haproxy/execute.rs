//! Performs the planner's steps against the real HAProxy: Runtime API
//! commands, bind probes, `haproxy -c`, config files, reloads and starts.
//! Each step reports what happened as the planner's [`Outcome`], and every
//! wait has a deadline. It runs on the applier's own thread (see
//! [`super::apply`]), so blocking file and process work never holds up the
//! API.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{BufWriter, Write};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::layout::Layout;
use super::plan::{Check, Install, Outcome, Step};
use super::process::{Haproxy, ProcessError, bind_failures, validate};
use super::render::{RenderSettings, write_config};
use super::runtime;

/// Bounds on the executor's waits and on old workers.
#[derive(Debug, Clone)]
pub struct ExecSettings {
    /// How long `haproxy -c` may take.
    pub check_timeout: Duration,
    /// How long a reload (the external command, or the master's reload and
    /// a new worker taking over) or a start may take.
    pub reload_timeout: Duration,
    /// No reload while this many old workers still hold connections.
    pub max_old_workers: usize,
}

impl Default for ExecSettings {
    fn default() -> Self {
        Self {
            check_timeout: Duration::from_secs(60),
            reload_timeout: Duration::from_secs(30),
            max_old_workers: 8,
        }
    }
}

pub struct Executor {
    pub haproxy: Haproxy,
    pub render: RenderSettings,
    pub settings: ExecSettings,
}

impl Executor {
    /// Performs `step` ([`Step::Wait`] is the caller's to do).
    pub async fn run(&self, step: Step) -> Outcome {
        match step {
            Step::Wait { .. } => unreachable!("the apply loop waits itself"),
            Step::Runtime { commands, .. } => Outcome::Runtime(
                runtime::run_commands(&self.haproxy.runtime_socket, &commands)
                    .await
                    .map_err(|e| e.to_string()),
            ),
            Step::Probe { ports } => Outcome::Probed(
                ports
                    .into_iter()
                    .map(|p| (p, probe_bind(self.render.bind_address, p)))
                    .collect(),
            ),
            Step::Check { layout } => Outcome::Checked(self.check(&layout).await),
            Step::Install { layout, new_ports } => {
                Outcome::Installed(self.install(&layout, &new_ports).await)
            }
            Step::SyncFile { layout } => Outcome::FileSynced(
                self.write(&layout, &self.haproxy.config_path)
                    .map_err(|e| format!("{}: {e}", self.haproxy.config_path.display())),
            ),
        }
    }

    /// `haproxy -c` of `layout` alone, in a scratch file.
    async fn check(&self, layout: &Layout) -> Check {
        let probe = sibling(&self.haproxy.config_path, "probe");
        if let Err(e) = self.write(layout, &probe) {
            return Check::CannotRun(format!("could not write {}: {e}", probe.display()));
        }
        let check = validate(&self.haproxy.binary, &probe, self.settings.check_timeout).await;
        let _ = fs::remove_file(&probe);
        check
    }

    async fn install(&self, layout: &Layout, new_ports: &[u16]) -> Install {
        let cannot: BTreeMap<u16, String> = new_ports
            .iter()
            .filter_map(|p| {
                probe_bind(self.render.bind_address, *p)
                    .err()
                    .map(|e| (*p, e))
            })
            .collect();
        if !cannot.is_empty() {
            return Install::CannotBind(cannot);
        }
        if let Some(n) = self.haproxy.old_workers().await {
            if n >= self.settings.max_old_workers {
                return Install::Busy { old_workers: n };
            }
        }
        let config = &self.haproxy.config_path;
        let candidate = sibling(config, "candidate");
        if let Err(e) = self.write(layout, &candidate) {
            return Install::WriteFailed(format!("could not write {}: {e}", candidate.display()));
        }
        let check = validate(
            &self.haproxy.binary,
            &candidate,
            self.settings.check_timeout,
        )
        .await;
        if check != Check::Valid {
            let _ = fs::remove_file(&candidate);
            return Install::Rejected(check);
        }
        // Keep the running config to put back if HAProxy will not take the new one.
        let previous = sibling(config, "previous");
        let _ = fs::remove_file(&previous);
        let have_previous = fs::hard_link(config, &previous).is_ok();
        if let Err(e) = fs::rename(&candidate, config).and_then(|()| sync_dir(config)) {
            return Install::WriteFailed(format!("could not install {}: {e}", config.display()));
        }
        let result = self.haproxy.reload(self.settings.reload_timeout).await;
        if result.is_err() && have_previous {
            let _ = fs::rename(&previous, config);
        } else {
            let _ = fs::remove_file(&previous);
        }
        match result {
            Ok(instance) => Install::Done { instance },
            Err(ProcessError::Failed { message, alerts }) => Install::Failed {
                bind: bind_failures(&alerts),
                error: failure_with_alert(message, &alerts),
            },
            Err(ProcessError::TimedOut(e)) => Install::TimedOut(e),
            Err(e @ ProcessError::Spawn { .. }) => Install::Failed {
                bind: BTreeMap::new(),
                error: e.to_string(),
            },
        }
    }

    /// Writes the config of `layout` to `path`, private to this user, and
    /// flushes it to disk.
    fn write(&self, layout: &Layout, path: &Path) -> std::io::Result<()> {
        use std::os::unix::fs::OpenOptionsExt;
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(path)?;
        let mut out = BufWriter::with_capacity(256 * 1024, file);
        write_config(layout, &self.render, &mut out)?;
        out.flush()?;
        let file = out.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        Ok(())
    }
}

/// `message` with the alert that says why, and what to do when that is known.
fn failure_with_alert(message: String, alerts: &[String]) -> String {
    // Lines that only say that loading failed, not why.
    let generic = [
        "Some protocols failed",
        "Loading failure",
        "Fatal errors found",
    ];
    let Some(why) = alerts
        .iter()
        .map(|a| a.split_once(" : ").map_or(a.as_str(), |(_, m)| m).trim())
        .find(|a| !generic.iter().any(|g| a.contains(g)))
    else {
        return message;
    };
    let hint = if why.contains("FD limit") {
        " (every server slot with health checks takes a file descriptor: raise the open-files limit, e.g. LimitNOFILE=1048576 in the unit)"
    } else {
        ""
    };
    format!("{message}: {why}{hint}")
}

fn sibling(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".{suffix}"));
    path.with_file_name(name)
}

fn sync_dir(file: &Path) -> std::io::Result<()> {
    File::open(file.parent().unwrap_or(Path::new("."))).and_then(|d| d.sync_all())
}

/// Tries to bind `ip:port` the way HAProxy would (SO_REUSEPORT, so a port
/// HAProxy itself holds passes), then lets go.
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failure_says_why_from_haproxy_alerts() {
        let alerts = [
            "[ALERT]    (11780) : [haproxy.main()] Cannot raise FD limit to 31716, limit is 20000.".to_owned(),
            "[ALERT]    (11780) : [haproxy.main()] Some protocols failed to start their listeners! Exiting.".to_owned(),
        ];
        let e = failure_with_alert("HAProxy could not load the new config".into(), &alerts);
        assert!(
            e.starts_with("HAProxy could not load the new config: [haproxy.main()] Cannot raise FD limit to 31716, limit is 20000."),
            "{e}"
        );
        assert!(e.contains("LimitNOFILE"), "{e}");
        assert_eq!(failure_with_alert("failed".into(), &alerts[1..]), "failed");
        let bind = ["[ALERT]    (1) : Binding [x:12] for frontend 8702_frontend: cannot bind socket (Address already in use) for [127.0.0.1:8702]".to_owned()];
        assert!(failure_with_alert("failed".into(), &bind).contains("cannot bind socket"));
    }
}
