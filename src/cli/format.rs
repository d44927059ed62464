//! Output for people: the status table. Pure functions of what the API answered.

use std::time::Duration;

use crate::status::NodeStatus;

/// The status as a table for people.
pub fn format_status(s: &NodeStatus) -> String {
    use std::fmt::Write;
    let mut o = String::new();
    let h = &s.haproxy;
    let _ = writeln!(
        o,
        "peer {} (lbmesh {}, up {})",
        s.node_id,
        s.version,
        humantime::format_duration(Duration::from_secs(s.uptime_seconds))
    );
    let _ = writeln!(
        o,
        "registry  digest {}  generation {}  frontends {}  servers {}  conflicts {}",
        s.registry.digest,
        s.registry.generation,
        s.registry.frontends,
        s.registry.servers,
        s.registry.conflicts
    );
    let _ = writeln!(
        o,
        "haproxy   {} {}{}  config {}  {}  reloads {}  runtime updates {}  restarts {}",
        h.mode,
        if h.running { "running" } else { "NOT RUNNING" },
        h.master_pid
            .map(|p| format!(" (master pid {p})"))
            .unwrap_or_default(),
        h.config_digest.as_deref().unwrap_or("-"),
        if h.in_step { "in step" } else { "OUT OF STEP" },
        h.reloads,
        h.runtime_updates,
        h.restarts
    );
    if let Some(l) = &h.last_apply {
        let _ = writeln!(
            o,
            "last apply {} {} in {} ms at {}{}",
            l.method,
            if l.ok { "ok" } else { "FAILED" },
            l.duration_ms,
            l.at,
            l.error
                .as_deref()
                .map(|e| format!(": {e}"))
                .unwrap_or_default()
        );
    }
    for (port, why) in &h.quarantined {
        let _ = writeln!(o, "quarantined frontend {port}: {why}");
    }
    if !s.storage_ok {
        let _ = writeln!(
            o,
            "STORAGE FAILED: writes are refused until lbmesh restarts"
        );
    }
    if !s.peers.is_empty() {
        let _ = writeln!(o);
        let _ = writeln!(
            o,
            "{:<20} {:<5} {:>14} {:<22} {:<17} {:<17} VRRP",
            "PEER", "LIVE", "GENERATION", "GOSSIP", "REGISTRY", "CONFIG"
        );
        for p in &s.peers {
            let _ = writeln!(
                o,
                "{:<20} {:<5} {:>14} {:<22} {:<17} {:<17} {}",
                p.node_id,
                if p.live { "yes" } else { "no" },
                p.generation,
                p.gossip_addr,
                p.registry_digest.as_deref().unwrap_or("-"),
                p.config_digest.as_deref().unwrap_or("-"),
                p.vrrp_state.as_deref().unwrap_or("-")
            );
        }
        let _ = writeln!(
            o,
            "mesh {}",
            if s.converged {
                "converged: every live peer has the same digests"
            } else {
                "NOT converged"
            }
        );
    }
    o
}
