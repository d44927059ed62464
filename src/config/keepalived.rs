//! The `[keepalived]` section: the notify FIFO, transition hooks, the lag
//! the health check tolerates and the track file lbmesh writes.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::{ConfigError, Paths, invalid, positive};
use crate::keepalived::Hooks;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct KeepalivedFile {
    /// keepalived's notify_fifo, read by the daemon (alternative to the notify command).
    pub notify_fifo: Option<PathBuf>,
    /// Commands run when this peer becomes MASTER, BACKUP or FAULT.
    pub on_master: Option<Vec<String>>,
    pub on_backup: Option<Vec<String>>,
    pub on_fault: Option<Vec<String>>,
    /// How long this peer's HAProxy config may differ from the mesh majority
    /// before the health check fails.
    #[serde(default, with = "humantime_serde")]
    pub max_lag: Option<Duration>,
    /// The file lbmesh writes for keepalived's `track_file`.
    pub track_file: Option<PathBuf>,
}

/// How lbmesh works with keepalived.
#[derive(Debug, Clone)]
pub struct KeepalivedSettings {
    pub notify_fifo: Option<PathBuf>,
    pub hooks: Hooks,
    pub max_lag: Duration,
    /// Where lbmesh tells keepalived whether this peer may hold the VIP.
    pub track_file: PathBuf,
}

pub(super) fn resolve(
    k: KeepalivedFile,
    paths: Paths<'_>,
    data_dir: &std::path::Path,
) -> Result<KeepalivedSettings, ConfigError> {
    for (key, hook) in [
        ("keepalived.on-master", &k.on_master),
        ("keepalived.on-backup", &k.on_backup),
        ("keepalived.on-fault", &k.on_fault),
    ] {
        if hook
            .as_ref()
            .is_some_and(|h| h.is_empty() || h[0].is_empty())
        {
            return Err(invalid(
                key,
                "[]",
                "must name a program, e.g. [\"/usr/local/bin/move-ip\", \"--to-me\"]",
            ));
        }
    }
    let hooks = Hooks {
        on_master: k.on_master.unwrap_or_default(),
        on_backup: k.on_backup.unwrap_or_default(),
        on_fault: k.on_fault.unwrap_or_default(),
    };
    let max_lag = positive(
        "keepalived.max-lag",
        k.max_lag.unwrap_or(Duration::from_secs(10)),
    )?;
    Ok(KeepalivedSettings {
        notify_fifo: k.notify_fifo.map(|p| paths.abs(p)),
        hooks,
        max_lag,
        track_file: paths.abs(
            k.track_file
                .unwrap_or_else(|| data_dir.join("keepalived.track")),
        ),
    })
}
