//! Churn hurts no one else, within a reload budget: bounded runs of the
//! churn driver (`tests/churn/mod.rs`) against a real lbmesh and HAProxy.
//! `cargo bench --bench churn` runs the full sizes.
//!
//! Before this, flapping one registration for 60 s reloaded HAProxy about
//! twice a second, grew it to 52 processes and 460 MB, and cut a
//! long-lived connection to an untouched frontend after 30 s, when
//! `mworker-max-reloads` killed the worker holding it.

mod churn;
mod common;

use std::time::Duration;

use churn::{ChurnPlan, churn, churn_daemon, flap};
use common::*;

fn seed() -> u64 {
    let seed = std::env::var("LBMESH_CHURN_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    eprintln!("churn seed {seed} (replay with LBMESH_CHURN_SEED={seed})");
    seed
}

#[test]
fn server_churn_reloads_only_for_frontends_that_come_and_go_and_fails_no_connection() {
    let grace = Duration::from_secs(2);
    let d = churn_daemon(grace, "1s");
    let plan = ChurnPlan {
        steady_frontends: 18,
        transient_frontends: 2,
        servers_per_frontend: 6,
        changes_per_minute: 3_000,
        duration: Duration::from_secs(40),
        change_senders: 4,
        clients: 3,
        client_pause: Duration::from_millis(5),
        grace,
        seed: seed(),
    };
    let r = churn(&d, &plan);
    eprintln!("{r:#?}");
    assert!(r.changes >= 1_500, "the churn ran: {r:?}");
    assert_eq!(r.refused_changes, 0, "{:#?}", r.change_errors);
    assert_eq!(r.failed_changes, 0, "{:#?}", r.change_errors);
    assert!(
        r.connections >= 1_000,
        "clients connected throughout: {r:?}"
    );
    assert_eq!(
        r.failed_connections, 0,
        "failed connections: {:#?}",
        r.failures
    );
    assert!(
        r.frontend_additions >= 2 && r.frontend_removals >= 2,
        "frontends came and went: {r:?}"
    );
    assert!(
        r.reloads <= r.frontend_additions + r.frontend_removals,
        "{} reloads for {} frontend additions and {} removals",
        r.reloads,
        r.frontend_additions,
        r.frontend_removals
    );
    assert!(
        r.runtime_updates >= 100,
        "servers changed at runtime: {r:?}"
    );
    assert!(r.process_samples >= 100);
    assert_eq!(r.max_masters, 1, "{r:?}");
    assert!(r.max_workers <= 2, "HAProxy workers: {r:?}");
}

#[test]
fn one_registration_flapped_at_full_speed_costs_no_reload_and_cuts_no_other_connection() {
    let d = Daemon::start(DaemonOpts::default());
    let r = flap(&d, Duration::from_secs(30));
    eprintln!("{r:#?}");
    assert!(r.flaps >= 100, "it flapped: {r:?}");
    assert!(
        r.long_lived_open,
        "the long-lived connection was cut: {r:?}"
    );
    assert!(r.echoes >= 100, "{r:?}");
    assert_eq!(r.failed_probes, 0, "{r:?}");
    // Its frontend stays bound through its grace period while it flaps: no
    // reload at all (any reload would also cut the long-lived connection
    // 5 s later, at the test's hard-stop-after).
    assert_eq!(r.reloads, 0, "reloads while flapping");
    assert_eq!(r.max_masters, 1, "{r:?}");
    assert!(r.max_workers <= 2, "HAProxy workers: {r:?}");
}
