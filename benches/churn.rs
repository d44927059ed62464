//! Churn at full size against a real lbmesh and HAProxy (the release build):
//!
//! 1. server churn: 10,000 registrations and withdrawals per minute across
//!    100 frontends (90 that always keep a server, 10 that come and go past
//!    their grace period) for 5 minutes, while TCP clients connect through
//!    the frontends; counts failed connections, reloads against frontend
//!    additions and removals, and HAProxy's processes;
//! 2. one registration flapped at full speed for 2 minutes while a
//!    long-lived connection to another frontend echoes every 200 ms.
//!
//! cargo bench --bench churn
//! LBMESH_CHURN_SECS=60 LBMESH_FLAP_SECS=30 LBMESH_CHURN_SEED=7 cargo bench --bench churn
//!
//! The changes come from `LBMESH_CHURN_SENDERS` (8) threads, each on its
//! own frontends and its own slots of the schedule; the run reports the
//! rate reached next to the planned one, and refused and failed changes.

#[path = "../tests/churn/mod.rs"]
mod churn;
#[path = "../tests/common/mod.rs"]
mod common;

use std::time::Duration;

use churn::{ChurnPlan, churn, churn_daemon, flap};

fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn load() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .next()
        .unwrap_or("?")
        .to_owned()
}

fn main() {
    // `cargo bench` passes harness flags such as --bench; nothing to parse.
    let seed = env_num("LBMESH_CHURN_SEED", 1);
    let grace = Duration::from_secs(env_num("LBMESH_CHURN_GRACE_SECS", 10));
    let plan = ChurnPlan {
        steady_frontends: 90,
        transient_frontends: 10,
        servers_per_frontend: 10,
        changes_per_minute: env_num("LBMESH_CHURN_PER_MINUTE", 10_000),
        duration: Duration::from_secs(env_num("LBMESH_CHURN_SECS", 300)),
        change_senders: env_num("LBMESH_CHURN_SENDERS", 8) as usize,
        clients: 4,
        client_pause: Duration::from_millis(5),
        grace,
        seed,
    };
    // `cargo bench` builds the daemon with the bench profile (release
    // settings), `--profile dev` with debug ones; say which one runs.
    println!(
        "daemon: {} ({} build)",
        common::BIN,
        if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        }
    );
    println!("churn: {plan:?}\nload average before: {}", load());
    let d = churn_daemon(grace, "2s");
    let r = churn(&d, &plan);
    drop(d);
    println!("{r:#?}");
    println!(
        "CHURN planned={} ({}/min) sent={} accepted={} ({:.0}/min) transient={} refused={} failed={} latency_ms(p50/p99/max)={:.1}/{:.1}/{:.1} max_lag_ms={:.0} connections={} failed_connections={} frontend_additions={} frontend_removals={} reloads={} runtime_updates={} max_masters={} max_workers={} seconds={:.1} load={}",
        r.planned_changes,
        plan.changes_per_minute,
        r.sent_changes,
        r.steady_changes,
        r.steady_per_minute(),
        r.changes - r.steady_changes,
        r.refused_changes,
        r.failed_changes,
        r.change_latency_ms[0],
        r.change_latency_ms[1],
        r.change_latency_ms[2],
        r.max_lag_ms,
        r.connections,
        r.failed_connections,
        r.frontend_additions,
        r.frontend_removals,
        r.reloads,
        r.runtime_updates,
        r.max_masters,
        r.max_workers,
        r.seconds,
        load()
    );
    // The planned rate held: every scheduled change was sent and accepted.
    let rate_held = r.steady_changes == r.planned_changes;
    println!(
        "rate held: {rate_held} ({} of {} planned changes accepted)",
        r.steady_changes, r.planned_changes
    );

    let flap_secs = env_num("LBMESH_FLAP_SECS", 120);
    let d = common::Daemon::start(common::DaemonOpts::default());
    let f = flap(&d, Duration::from_secs(flap_secs));
    drop(d);
    println!("{f:#?}");
    println!(
        "FLAP seconds={:.1} flaps={} ({:.0}/s) reloads={} long_lived_open={} echoes={} probes={} failed_probes={} max_masters={} max_workers={} load={}",
        f.seconds,
        f.flaps,
        f.flaps as f64 / f.seconds,
        f.reloads,
        f.long_lived_open,
        f.echoes,
        f.probes,
        f.failed_probes,
        f.max_masters,
        f.max_workers,
        load()
    );
    let ok = rate_held
        && r.refused_changes == 0
        && r.failed_changes == 0
        && r.failed_connections == 0
        && r.reloads <= r.frontend_additions + r.frontend_removals
        && r.max_masters == 1
        && r.max_workers <= 2
        && f.long_lived_open
        && f.failed_probes == 0
        && f.max_masters == 1
        && f.max_workers <= 2;
    println!("targets met: {ok}");
    if !ok {
        std::process::exit(1);
    }
}
