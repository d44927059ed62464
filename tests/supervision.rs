//! The daemon supervises its own tasks: a subsystem that ends or panics on
//! its own stops the daemon, in order, with a non-zero exit, so that a
//! service manager restarts it instead of leaving it running half-dead.
//!
//! No input from outside can end a subsystem, so the fault is injected:
//! `LBMESH_FAULT_TASK` exists only in debug builds with the
//! `fault-injection` feature, which the workspace build turns on (the
//! simulations need it); this file is built only then.
#![cfg(debug_assertions)]

mod common;

use std::time::Duration;

use common::*;

/// Starts a healthy daemon whose `task` then fails `how` ("end" or
/// "panic"); returns its exit status and log.
fn kill_task(
    task: &str,
    how: &str,
    toml_extra: &str,
) -> (std::process::ExitStatus, String, Daemon) {
    let mut d = Daemon::start(DaemonOpts {
        env: vec![("LBMESH_FAULT_TASK".into(), format!("{task}:{how}"))],
        toml: format!("{}{toml_extra}", fast_toml("", "")),
        ..Default::default()
    });
    let haproxy = d.haproxy_master_pid();
    let status = d.wait_exit(Duration::from_secs(30)).unwrap_or_else(|| {
        panic!(
            "lbmesh kept running without its {task} task; log:\n{}",
            d.log()
        )
    });
    let log = d.log();
    assert!(!status.success(), "exit {status:?}; log:\n{log}");
    assert_eq!(status.code(), Some(1), "log:\n{log}");
    let why = if how == "panic" {
        format!("the {task} task panicked: fault injected by LBMESH_FAULT_TASK")
    } else {
        format!("the {task} task ended")
    };
    assert!(log.contains(&why), "the log says why ({why}):\n{log}");
    assert!(
        log.contains("stopping everything else and exiting"),
        "{log}"
    );
    // The last line on stderr is the reason, for the service manager's log.
    assert!(
        log.trim_end().lines().last().unwrap_or("").contains(&why),
        "{log}"
    );
    if task != "haproxy-supervisor" {
        // An orderly stop: HAProxy was stopped too, and the registry compacted.
        let pid = haproxy.expect("HAProxy was running");
        assert!(
            !std::path::Path::new(&format!("/proc/{pid}")).exists()
                || std::fs::read_to_string(format!("/proc/{pid}/stat"))
                    .is_ok_and(|s| s.contains(") Z")),
            "HAProxy {pid} still runs after lbmesh exited; log:\n{log}"
        );
        assert!(log.contains("stopped HAProxy"), "{log}");
    }
    (status, log, d)
}

#[test]
fn the_api_server_ending_stops_the_daemon_with_an_error() {
    kill_task("api", "end", "");
}

#[test]
fn a_panicking_applier_stops_the_daemon_with_an_error() {
    kill_task("applier", "panic", "");
}

#[test]
fn a_mesh_task_that_panics_stops_the_daemon_with_an_error() {
    kill_task("mesh", "panic", "");
}

#[test]
fn the_haproxy_supervisor_ending_stops_the_daemon_with_an_error() {
    kill_task("haproxy-supervisor", "end", "");
}

#[test]
fn the_notify_fifo_reader_ending_stops_the_daemon_with_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("notify.fifo");
    kill_task(
        "notify-fifo",
        "end",
        &format!("\n[keepalived]\nnotify-fifo = \"{}\"\n", fifo.display()),
    );
}

#[test]
fn without_a_fault_the_same_daemon_runs_and_stops_cleanly() {
    let mut d = Daemon::start(DaemonOpts {
        env: vec![("LBMESH_FAULT_TASK".into(), "no-such-task".into())],
        ..Default::default()
    });
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(d.get("/healthz").0, 200, "{}", d.log());
    let status = d.stop();
    assert!(status.success(), "{status:?}; log:\n{}", d.log());
}
