//! The `[keepalived]` section: the notify FIFO, transition hooks, the lag
//! the health check tolerates, the track file lbmesh writes, and the
//! floating IP whose connections outlive its moves.

use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::{ConfigError, Paths, invalid, positive};
use crate::failover::handoff::HandoffSettings;
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
    /// The floating IP (as in `lbmesh keepalived config --vip`, the prefix
    /// optional): connections through it outlive its moves.
    pub vip: Option<String>,
    /// The interface that carries the floating IP and VRRP.
    pub interface: Option<String>,
}

/// How lbmesh works with keepalived.
#[derive(Debug, Clone)]
pub struct KeepalivedSettings {
    pub notify_fifo: Option<PathBuf>,
    pub hooks: Hooks,
    pub max_lag: Duration,
    /// Where lbmesh tells keepalived whether this peer may hold the VIP.
    pub track_file: PathBuf,
    /// Connection handoff, when the floating IP is configured.
    pub handoff: Option<HandoffSettings>,
}

/// The longest interface name Linux takes (IFNAMSIZ - 1).
const MAX_INTERFACE: usize = 15;

/// `keepalived.vip` and `keepalived.interface`: both or neither. Every VM
/// serves connections through the VIP that it keeps after handing the VIP
/// over, so HAProxy must listen on every address (the VIP among them).
fn resolve_handoff(
    vip: Option<String>,
    interface: Option<String>,
    bind_address: IpAddr,
) -> Result<Option<HandoffSettings>, ConfigError> {
    let (vip_text, interface) = match (vip, interface) {
        (None, None) => return Ok(None),
        (Some(v), Some(i)) => (v, i),
        (Some(v), None) => {
            return Err(invalid(
                "keepalived.vip",
                v,
                "needs keepalived.interface too (the interface that carries it, e.g. \"eth0\")",
            ));
        }
        (None, Some(i)) => {
            return Err(invalid(
                "keepalived.interface",
                i,
                "needs keepalived.vip too (the floating IP)",
            ));
        }
    };
    let address = vip_text
        .split_once('/')
        .map_or(vip_text.as_str(), |(a, _)| a);
    let vip: Ipv4Addr = match address.parse::<IpAddr>() {
        Ok(IpAddr::V4(v)) => v,
        Ok(IpAddr::V6(_)) => {
            return Err(invalid(
                "keepalived.vip",
                &vip_text,
                "only an IPv4 floating IP keeps its connections across moves",
            ));
        }
        Err(_) => {
            return Err(invalid(
                "keepalived.vip",
                &vip_text,
                "must be an IPv4 address, e.g. \"198.18.0.100\"",
            ));
        }
    };
    if vip.is_unspecified() || vip.is_loopback() || vip.is_multicast() || vip.is_broadcast() {
        return Err(invalid(
            "keepalived.vip",
            &vip_text,
            "must be a unicast address other than 0.0.0.0 and 127.0.0.0/8",
        ));
    }
    if interface.is_empty()
        || interface.len() > MAX_INTERFACE
        || !interface
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
    {
        return Err(invalid(
            "keepalived.interface",
            &interface,
            "must be an interface name: 1 to 15 characters from A-Z a-z 0-9 _ . -",
        ));
    }
    if !bind_address.is_unspecified() {
        return Err(invalid(
            "bind-address",
            bind_address,
            "must be 0.0.0.0 or :: when keepalived.vip is set: every VM serves, through the \
             floating IP, the connections it keeps after handing it over",
        ));
    }
    Ok(Some(HandoffSettings { vip, interface }))
}

pub(super) fn resolve(
    k: KeepalivedFile,
    paths: Paths<'_>,
    data_dir: &std::path::Path,
    bind_address: IpAddr,
) -> Result<KeepalivedSettings, ConfigError> {
    let handoff = resolve_handoff(k.vip, k.interface, bind_address)?;
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
        handoff,
    })
}
