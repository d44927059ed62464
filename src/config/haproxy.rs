//! The `[haproxy]` section with `bind-address`: how HAProxy runs and what its
//! config says. The defaults live with the structs they fill
//! (`RenderSettings::with_sockets_in`, `ApplyTiming::default`,
//! `ExecSettings::default`).

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use super::{ConfigError, Overrides, Paths, invalid, positive};
use crate::haproxy::apply::ApplyTiming;
use crate::haproxy::execute::ExecSettings;
use crate::haproxy::render::RenderSettings;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum HaproxyMode {
    /// lbmesh runs HAProxy as its child.
    Supervised,
    /// HAProxy runs as its own service; lbmesh runs `reload-command`.
    External,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct HaproxyFile {
    pub mode: Option<HaproxyMode>,
    pub binary: Option<PathBuf>,
    pub config_path: Option<PathBuf>,
    pub reload_command: Option<Vec<String>>,
    pub runtime_socket: Option<PathBuf>,
    pub master_socket: Option<PathBuf>,
    pub health_socket: Option<PathBuf>,
    pub log_socket: Option<PathBuf>,
    #[serde(default, with = "humantime_serde")]
    pub hard_stop_after: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub min_reload_interval: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub coalesce: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub check_interval: Option<Duration>,
    pub check_fall: Option<u32>,
    pub check_rise: Option<u32>,
    #[serde(default, with = "humantime_serde")]
    pub timeout_connect: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub timeout_client: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub timeout_server: Option<Duration>,
    pub min_slots: Option<usize>,
    #[serde(default, with = "humantime_serde")]
    pub empty_frontend_grace: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub check_timeout: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub reload_timeout: Option<Duration>,
    pub max_old_workers: Option<usize>,
}

/// How HAProxy is run and reloaded, and what its config says.
#[derive(Debug, Clone)]
pub struct HaproxySettings {
    pub mode: HaproxyMode,
    pub binary: PathBuf,
    pub config_path: PathBuf,
    /// External mode's reload command; empty when supervised.
    pub reload_command: Vec<String>,
    pub master_socket: PathBuf,
    /// What goes into haproxy.cfg (bind address, sockets, timeouts, checks, slots).
    pub render: RenderSettings,
    pub timing: ApplyTiming,
    /// Timeouts of `haproxy -c` and reloads, and the bound on old workers.
    pub exec: ExecSettings,
}

/// Paths end up inside the HAProxy config in double quotes, and sockets have
/// a length limit; refuse what would break either.
fn check_socket_path(key: &'static str, p: &Path) -> Result<(), ConfigError> {
    let s = p.to_string_lossy();
    if s.chars().any(|c| c.is_control() || c == '"' || c == '\\') {
        return Err(invalid(
            key,
            s,
            "must not contain quotes, backslashes or control characters",
        ));
    }
    if s.len() > 100 {
        return Err(invalid(
            key,
            s,
            "unix socket paths must be at most 100 bytes",
        ));
    }
    Ok(())
}

pub(super) fn resolve(
    h: HaproxyFile,
    bind_address: Option<IpAddr>,
    o: &Overrides,
    data_dir: &Path,
    paths: Paths<'_>,
) -> Result<HaproxySettings, ConfigError> {
    let d = RenderSettings::with_sockets_in(data_dir);
    let timing = ApplyTiming::default();
    let exec = ExecSettings::default();
    let mode = o.haproxy_mode.or(h.mode).unwrap_or(HaproxyMode::Supervised);
    let reload_command = h.reload_command.unwrap_or_default();
    if mode == HaproxyMode::External && reload_command.is_empty() {
        return Err(invalid(
            "haproxy.reload-command",
            "",
            "is required in external mode, e.g. [\"systemctl\", \"reload\", \"haproxy\"]",
        ));
    }
    let runtime_socket = paths.abs(h.runtime_socket.unwrap_or(d.runtime_socket));
    let master_socket = paths.abs(
        h.master_socket
            .unwrap_or_else(|| data_dir.join("haproxy-master.sock")),
    );
    let health_socket = paths.abs(h.health_socket.unwrap_or(d.health_socket));
    check_socket_path("haproxy.runtime-socket", &runtime_socket)?;
    check_socket_path("haproxy.master-socket", &master_socket)?;
    check_socket_path("haproxy.health-socket", &health_socket)?;
    let log_socket = paths.abs(
        h.log_socket
            .unwrap_or_else(|| data_dir.join("haproxy-log.sock")),
    );
    check_socket_path("haproxy.log-socket", &log_socket)?;
    let check_fall = h.check_fall.unwrap_or(d.check_fall);
    let check_rise = h.check_rise.unwrap_or(d.check_rise);
    for (key, v) in [
        ("haproxy.check-fall", check_fall),
        ("haproxy.check-rise", check_rise),
    ] {
        if !(1..=100).contains(&v) {
            return Err(invalid(key, v, "must be from 1 to 100"));
        }
    }
    let min_slots = h.min_slots.unwrap_or(d.min_slots);
    if !(1..=1024).contains(&min_slots) {
        return Err(invalid(
            "haproxy.min-slots",
            min_slots,
            "must be from 1 to 1024",
        ));
    }
    let max_old_workers = h.max_old_workers.unwrap_or(exec.max_old_workers);
    if !(1..=1000).contains(&max_old_workers) {
        return Err(invalid(
            "haproxy.max-old-workers",
            max_old_workers,
            "must be from 1 to 1000",
        ));
    }
    let render = RenderSettings {
        bind_address: bind_address.unwrap_or(d.bind_address),
        runtime_socket,
        health_socket,
        log_socket: Some(log_socket),
        hard_stop_after: positive(
            "haproxy.hard-stop-after",
            h.hard_stop_after.unwrap_or(d.hard_stop_after),
        )?,
        check_interval: positive(
            "haproxy.check-interval",
            h.check_interval.unwrap_or(d.check_interval),
        )?,
        check_fall,
        check_rise,
        timeout_connect: positive(
            "haproxy.timeout-connect",
            h.timeout_connect.unwrap_or(d.timeout_connect),
        )?,
        timeout_client: positive(
            "haproxy.timeout-client",
            h.timeout_client.unwrap_or(d.timeout_client),
        )?,
        timeout_server: positive(
            "haproxy.timeout-server",
            h.timeout_server.unwrap_or(d.timeout_server),
        )?,
        min_slots,
    };
    Ok(HaproxySettings {
        mode,
        binary: o
            .haproxy_binary
            .clone()
            .or(h.binary)
            .unwrap_or_else(|| PathBuf::from("haproxy")),
        config_path: paths.abs(
            h.config_path
                .unwrap_or_else(|| data_dir.join("haproxy.cfg")),
        ),
        reload_command,
        master_socket,
        render,
        timing: ApplyTiming {
            coalesce: h.coalesce.unwrap_or(timing.coalesce),
            min_reload_interval: h.min_reload_interval.unwrap_or(timing.min_reload_interval),
            empty_frontend_grace: h
                .empty_frontend_grace
                .unwrap_or(timing.empty_frontend_grace),
        },
        exec: ExecSettings {
            check_timeout: positive(
                "haproxy.check-timeout",
                h.check_timeout.unwrap_or(exec.check_timeout),
            )?,
            reload_timeout: positive(
                "haproxy.reload-timeout",
                h.reload_timeout.unwrap_or(exec.reload_timeout),
            )?,
            max_old_workers,
        },
    })
}
