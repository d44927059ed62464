//! Server health as HAProxy's own checks see it: `show stat` on the Runtime
//! API, read every few seconds, per frontend and server; published for the
//! status page and `/v1/frontends`, and counted in `lbmesh_haproxy_servers`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tokio::sync::watch;

use super::process::Haproxy;
use super::runtime;
use crate::events::{EventKind, Events};
use crate::metrics::{Metrics, ServerStateLabels};

/// Client connections the running HAProxy worker serves now on the
/// registry's frontends (not its health frontend nor the query itself);
/// `None` when no worker answers.
pub async fn client_sessions(h: &Haproxy) -> Option<u64> {
    // Frontends only: `show stat -1 1 -1`; CSV with pxname first, scur fifth.
    let csv = runtime::send(&h.runtime_socket, "show stat -1 1 -1")
        .await
        .ok()?;
    Some(frontend_sessions(&csv))
}

/// Sums the current sessions of the registry's frontends in `show stat` CSV.
pub fn frontend_sessions(csv: &str) -> u64 {
    csv.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let cols: Vec<&str> = l.split(',').collect();
            let (name, kind, scur) = (cols.first()?, cols.get(1)?, cols.get(4)?);
            (*kind == "FRONTEND" && name.ends_with("_frontend"))
                .then(|| scur.parse::<u64>().ok())
                .flatten()
        })
        .sum()
}

/// What HAProxy's health check says of one server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Health {
    /// Serving (including "UP 1/3", going down but not yet down).
    Up,
    /// Not serving: the check fails (including "DOWN 1/2", coming up).
    Down,
    /// Taken out by an operator or by lbmesh.
    Maint,
    /// Serving established sessions only.
    Drain,
    /// Up, with no check configured or the check disabled.
    NoCheck,
}

impl Health {
    pub const ALL: [Health; 5] = [
        Health::Up,
        Health::Down,
        Health::Maint,
        Health::Drain,
        Health::NoCheck,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Health::Up => "up",
            Health::Down => "down",
            Health::Maint => "maint",
            Health::Drain => "drain",
            Health::NoCheck => "no_check",
        }
    }

    /// Reads the `status` column of `show stat`.
    fn parse(status: &str) -> Option<Health> {
        let word = status.split_whitespace().next()?;
        Some(match word {
            "UP" | "NOLB" => Health::Up,
            "DOWN" => Health::Down,
            "MAINT" => Health::Maint,
            "DRAIN" => Health::Drain,
            "no" => Health::NoCheck,
            _ => return None,
        })
    }
}

/// Per frontend port, the health of each server HAProxy serves it with.
pub type FrontendHealth = BTreeMap<u16, BTreeMap<SocketAddr, Health>>;

/// The last reading of HAProxy's stats.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServerHealth {
    /// Unix ms of the reading; 0 before the first.
    pub at_ms: u64,
    pub frontends: FrontendHealth,
}

/// Reads `show stat` CSV into per-frontend server health. Only lbmesh's
/// backends (`<port>_backend`) count, and empty slots (`0.0.0.0:1`) do not.
pub fn parse(csv: &str) -> Result<FrontendHealth, String> {
    let mut lines = csv.lines();
    let header = lines
        .next()
        .and_then(|h| h.strip_prefix("# "))
        .ok_or_else(|| "show stat answered without a CSV header".to_string())?;
    let column = |name: &str| {
        header
            .split(',')
            .position(|c| c == name)
            .ok_or_else(|| format!("show stat has no {name} column"))
    };
    let (px, sv, status, addr, kind) = (
        column("pxname")?,
        column("svname")?,
        column("status")?,
        column("addr")?,
        column("type")?,
    );
    let mut out = FrontendHealth::new();
    for line in lines {
        let f: Vec<&str> = line.split(',').collect();
        let get = |i: usize| f.get(i).copied().unwrap_or("");
        // type 2 is a server.
        if get(kind) != "2" || get(sv).is_empty() {
            continue;
        }
        let Some(port) = get(px)
            .strip_suffix("_backend")
            .and_then(|p| p.parse::<u16>().ok())
        else {
            continue;
        };
        let Ok(addr) = get(addr).parse::<SocketAddr>() else {
            continue;
        };
        if addr.ip().is_unspecified() && addr.port() == 1 {
            continue;
        }
        if let Some(h) = Health::parse(get(status)) {
            out.entry(port).or_default().insert(addr, h);
        }
    }
    Ok(out)
}

/// Counts per frontend and health, every health present (zero included).
pub fn counts(health: &FrontendHealth) -> BTreeMap<(u16, Health), i64> {
    let mut out = BTreeMap::new();
    for (port, servers) in health {
        for h in Health::ALL {
            out.insert((*port, h), 0);
        }
        for h in servers.values() {
            *out.entry((*port, *h)).or_default() += 1;
        }
    }
    out
}

/// Watches HAProxy every `every` until `shutdown` fires: reads its stats,
/// publishing each reading and setting `lbmesh_haproxy_servers` (a failed
/// reading keeps the last), and counts supervisor restarts in
/// `lbmesh_haproxy_restarts_total` with an event for each.
pub async fn observe(
    haproxy: Haproxy,
    metrics: Arc<Metrics>,
    events: Events,
    every: Duration,
    publish: watch::Sender<Arc<ServerHealth>>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut shown: Vec<ServerStateLabels> = Vec::new();
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = crate::shutdown::signalled(&mut shutdown) => return,
        }
        let restarts = haproxy.state().restarts();
        let counted = metrics.haproxy_restarts.get();
        if restarts > counted {
            metrics.haproxy_restarts.inc_by(restarts - counted);
            events.emit(EventKind::HaproxyRestarted { restarts });
        }
        // Servers only (type 4), every proxy, every server.
        let answer = match runtime::send(&haproxy.runtime_socket, "show stat -1 4 -1").await {
            Ok(a) => a,
            Err(e) => {
                tracing::debug!(error = %e, "cannot read HAProxy's stats");
                continue;
            }
        };
        let frontends = match parse(&answer) {
            Ok(f) => f,
            Err(e) => {
                tracing::debug!(error = %e, "cannot read HAProxy's stats");
                continue;
            }
        };
        let counts = counts(&frontends);
        let now: Vec<ServerStateLabels> = counts
            .keys()
            .map(|(port, h)| ServerStateLabels {
                frontend: port.to_string(),
                state: h.as_str(),
            })
            .collect();
        for gone in shown.iter().filter(|l| !now.contains(l)) {
            metrics.haproxy_servers.remove(gone);
        }
        for (labels, n) in now.iter().zip(counts.values()) {
            metrics.haproxy_servers.get_or_create(labels).set(*n);
        }
        shown = now;
        publish.send_replace(Arc::new(ServerHealth {
            at_ms: events.now_ms(),
            frontends,
        }));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_registry_frontends_sessions_count() {
        let csv = "# pxname,svname,qcur,qmax,scur,smax\n\
                   lbmesh_health,FRONTEND,,,3,4\n\
                   443_frontend,FRONTEND,,,2,9\n\
                   8443_frontend,FRONTEND,,,5,9\n\
                   443_backend,BACKEND,0,0,7,9\n";
        assert_eq!(frontend_sessions(csv), 7);
        assert_eq!(frontend_sessions(""), 0);
    }

    const SHOW_STAT: &str = "# pxname,svname,qcur,status,type,addr,check_status\n\
        443_backend,s1,0,MAINT,2,0.0.0.0:1,\n\
        443_backend,s2,0,UP,2,203.0.113.7:30443,L4OK\n\
        443_backend,s3,0,DOWN 1/2,2,203.0.113.8:30443,L4CON\n\
        443_backend,s4,0,UP 1/3,2,[2001:db8::1]:30443,L4CON\n\
        8443_backend,s1,0,MAINT (via x/y),2,203.0.113.9:31883,\n\
        8443_backend,BACKEND,0,UP,1,,\n\
        lbmesh_health,FRONTEND,0,OPEN,0,,\n\
        other,s1,0,UP,2,10.0.0.1:80,\n\
        8080_backend,s1,0,no check,2,203.0.113.9:8080,\n";

    #[test]
    fn reads_server_health_per_frontend() {
        let h = parse(SHOW_STAT).unwrap();
        let a = |s: &str| s.parse::<SocketAddr>().unwrap();
        assert_eq!(
            h[&443],
            BTreeMap::from([
                (a("203.0.113.7:30443"), Health::Up),
                (a("203.0.113.8:30443"), Health::Down),
                (a("[2001:db8::1]:30443"), Health::Up),
            ])
        );
        assert_eq!(h[&8443][&a("203.0.113.9:31883")], Health::Maint);
        assert_eq!(h[&8080][&a("203.0.113.9:8080")], Health::NoCheck);
        assert_eq!(h.len(), 3);
        let c = counts(&h);
        assert_eq!(c[&(443, Health::Up)], 2);
        assert_eq!(c[&(443, Health::Down)], 1);
        assert_eq!(c[&(443, Health::Maint)], 0);
    }

    #[test]
    fn refuses_what_is_not_show_stat() {
        assert!(parse("Unknown command").is_err());
        assert!(parse("# pxname,svname\n").is_err());
        assert_eq!(
            parse("# pxname,svname,status,addr,type\n").unwrap(),
            FrontendHealth::new()
        );
    }
}
