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
        "registry  digest {}  changes {}  frontends {}  servers {}  conflicts {}",
        s.registry.digest,
        s.registry.changes,
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
    if !s.conflicts.is_empty() {
        let _ = writeln!(
            o,
            "conflicts: live servers left out because another name owns their frontend"
        );
        for c in &s.conflicts {
            let _ = writeln!(
                o,
                "  frontend {}  server {}  name {}  (owner {})",
                c.frontend, c.server, c.name, c.owner
            );
        }
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
            "PEER", "LIVE", "INCARNATION", "GOSSIP", "REGISTRY", "CONFIG"
        );
        for p in &s.peers {
            let _ = writeln!(
                o,
                "{:<20} {:<5} {:>14} {:<22} {:<17} {:<17} {}",
                p.node_id,
                if p.live { "yes" } else { "no" },
                p.incarnation,
                p.gossip_addr,
                p.registry_digest.as_deref().unwrap_or("-"),
                p.config_digest.as_deref().unwrap_or("-"),
                p.vrrp_state.as_deref().unwrap_or("-")
            );
        }
        let state = &s.mesh;
        let _ = match (
            s.converged,
            state.converged_since_ms,
            state.lagging_since_ms,
        ) {
            (true, Some(since), _) => writeln!(
                o,
                "mesh converged since {}: every live peer has the same digests",
                crate::status::rfc3339(since)
            ),
            (true, None, _) => writeln!(o, "mesh converged: every live peer has the same digests"),
            (false, _, Some(since)) => writeln!(
                o,
                "mesh NOT converged; this peer has served another config than most live peers since {}",
                crate::status::rfc3339(since)
            ),
            (false, _, None) => writeln!(o, "mesh NOT converged"),
        };
        let masters = &s.vrrp.masters;
        match masters.len() {
            0 => {}
            1 => {
                let _ = writeln!(o, "floating IP on {}", masters[0]);
            }
            _ => {
                let _ = writeln!(
                    o,
                    "SPLIT BRAIN: {} all hold the floating IP (VRRP MASTER); the network decides who gets the traffic",
                    masters.join(", ")
                );
            }
        }
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(extra: serde_json::Value) -> NodeStatus {
        let mut v = serde_json::json!({
            "node_id": "lb1", "version": "0.1.0", "uptime_seconds": 5,
            "registry": {"digest": "d1", "changes": 3, "frontends": 1, "servers": 1, "conflicts": 0},
            "haproxy": {"mode": "supervised", "running": true, "master_pid": 7, "restarts": 0,
                "config_digest": "c1", "wanted_config_digest": "c1", "in_step": true,
                "last_apply": null, "quarantined": {}, "reloads": 1, "runtime_updates": 0},
            "storage_ok": true,
            "peers": [
                {"node_id": "lb1", "live": true, "incarnation": 1, "gossip_addr": "198.18.0.1:7946",
                 "api_addr": null, "registry_digest": "d1", "config_digest": "c1", "vrrp_state": "MASTER VI_1"},
                {"node_id": "lb2", "live": true, "incarnation": 2, "gossip_addr": "198.18.0.2:7946",
                 "api_addr": null, "registry_digest": "d1", "config_digest": "c1", "vrrp_state": "BACKUP VI_1"}
            ],
            "converged": true,
        });
        for (k, x) in extra.as_object().unwrap() {
            v[k] = x.clone();
        }
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn says_who_holds_the_vip_and_split_brain() {
        let one = format_status(&status(serde_json::json!({
            "vrrp": {"state": "MASTER VI_1", "masters": ["lb1"], "split_brain": false}
        })));
        assert!(one.contains("floating IP on lb1"), "{one}");
        assert!(!one.contains("SPLIT BRAIN"), "{one}");
        let two = format_status(&status(serde_json::json!({
            "vrrp": {"state": "MASTER VI_1", "masters": ["lb1", "lb2"], "split_brain": true}
        })));
        assert!(
            two.contains("SPLIT BRAIN: lb1, lb2 all hold the floating IP"),
            "{two}"
        );
    }

    #[test]
    fn lists_conflicts() {
        let out = format_status(&status(serde_json::json!({
            "conflicts": [{"frontend": 443, "server": "203.0.113.9:30443", "name": "other", "owner": "web"}]
        })));
        assert!(
            out.contains("frontend 443  server 203.0.113.9:30443  name other  (owner web)"),
            "{out}"
        );
        assert!(!format_status(&status(serde_json::json!({}))).contains("conflicts:"));
    }

    #[test]
    fn reads_an_older_peer_that_said_generation() {
        let mut v = serde_json::to_value(status(serde_json::json!({}))).unwrap();
        v["registry"]["generation"] = v["registry"]["changes"].take();
        v["registry"].as_object_mut().unwrap().remove("changes");
        for p in v["peers"].as_array_mut().unwrap() {
            let p = p.as_object_mut().unwrap();
            let inc = p.remove("incarnation").unwrap();
            p.insert("generation".into(), inc);
        }
        let s: NodeStatus = serde_json::from_value(v).unwrap();
        assert_eq!((s.registry.changes, s.peers[1].incarnation), (3, 2));
        let out = format_status(&s);
        assert!(
            out.contains("changes 3") && out.contains("INCARNATION"),
            "{out}"
        );
    }
}
