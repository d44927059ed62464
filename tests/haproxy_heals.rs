//! HAProxy that cannot start, or a config it rejects, heals itself: against
//! the real HAProxy, with a real squatter on a frontend's port, a broken
//! config file, and `haproxy` wrappers that reject, hang or fail.

mod common;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

/// PIDs of the processes running HAProxy on `config` (master and workers).
fn haproxy_pids(config: &Path) -> Vec<u32> {
    let want = config.as_os_str().as_encoded_bytes();
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| c.split(|b| *b == 0).any(|arg| arg == want))
        })
        .collect()
}

/// Kills every HAProxy process of `d` at once, as an OOM killer or an
/// operator's `kill -9` would; returns when they are gone.
fn kill_haproxy(d: &Daemon) {
    let config = d.data_dir.join("haproxy.cfg");
    let pids = haproxy_pids(&config);
    assert!(!pids.is_empty(), "HAProxy runs");
    for pid in &pids {
        signal(*pid, "STOP");
    }
    for pid in &pids {
        signal(*pid, "KILL");
    }
    eventually(Duration::from_secs(5), "HAProxy to be gone", || {
        pids.iter()
            .all(|p| !Path::new(&format!("/proc/{p}/cmdline")).exists() || is_zombie(*p))
            .then_some(())
    });
}

fn is_zombie(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            s.rsplit(')')
                .next()
                .is_some_and(|r| r.trim_start().starts_with('Z'))
        })
        .unwrap_or(true)
}

/// Polls every 10 ms until `frontend` greets with `want`; the time it took.
fn time_until_served(frontend: std::net::SocketAddr, want: &str, within: Duration) -> Duration {
    let start = Instant::now();
    loop {
        if greeting(frontend).as_deref() == Some(want) {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < within,
            "{frontend} not served again within {within:?}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A `haproxy` that runs `script` (a shell fragment, `$1` = `-c` for
/// checks, `$3` the config file) before handing over to the real one.
fn wrapper(dir: &Path, script: &str) -> PathBuf {
    let path = dir.join("haproxy");
    std::fs::write(&path, format!("#!/bin/sh\n{script}\nexec haproxy \"$@\"\n")).unwrap();
    sh(&format!("chmod 755 {}", path.display()), &[]);
    path
}

fn daemon_with(haproxy_keys: &str) -> Daemon {
    Daemon::start(DaemonOpts {
        toml: fast_toml("", haproxy_keys),
        ..DaemonOpts::default()
    })
}

fn register(
    d: &Daemon,
    name: &str,
    port: u16,
    backend: &Backend,
    query: &str,
) -> serde_json::Value {
    let (code, v) = d.hook(
        &json!({"name": name, "frontend-port": port.to_string(),
                "backend-port": backend.addr.port().to_string(),
                "dst-ip": backend.addr.ip().to_string(), "action": "add"}),
        query,
    );
    assert_eq!(code, 200, "{v}");
    v
}

#[test]
fn haproxy_killed_while_a_port_is_squatted_serves_every_other_frontend_within_2_s() {
    let d = Daemon::start(DaemonOpts::default());
    let (a, b) = (Backend::start("victim"), Backend::start("bystander"));
    let (squatted, other) = (free_port(&d.ip), free_port(&d.ip));
    d.add("victim", squatted, a.addr);
    d.add("bystander", other, b.addr);
    assert_eq!(greeting(d.frontend(other)).as_deref(), Some("bystander"));

    // Another process takes the port the moment HAProxy lets go of it
    // (lbmesh is frozen for that moment, so the squatter is surely first).
    signal(d.pid(), "STOP");
    let killed = Instant::now();
    kill_haproxy(&d);
    let squatter = eventually(Duration::from_secs(2), "the squatter to bind", || {
        TcpListener::bind((d.ip.as_str(), squatted)).ok()
    });
    signal(d.pid(), "CONT");
    // Before lbmesh healed this, its supervisor restarted HAProxy on the
    // config on disk, which binds the squatted port, so every start failed
    // and the applier waited for the supervisor: every frontend stayed down
    // (40 s and counting when it was first seen). Now lbmesh starts HAProxy
    // itself on a fresh config, without what cannot bind.
    time_until_served(d.frontend(other), "bystander", Duration::from_secs(10));
    let took = killed.elapsed();
    eprintln!("the untouched frontend was served again {took:?} after HAProxy was killed");
    assert!(
        took < Duration::from_secs(2),
        "the untouched frontend was down {took:?} after HAProxy died"
    );
    let st = d.status();
    let why = st["haproxy"]["quarantined"][squatted.to_string()]
        .as_str()
        .unwrap_or_else(|| panic!("{squatted} is reported quarantined: {st}"));
    assert!(why.contains("cannot"), "{why}");
    // Healthy again: the VM serves everything it can.
    eventually(Duration::from_secs(5), "healthz to answer 200", || {
        (d.get("/healthz").0 == 200).then_some(())
    });

    // The control: HAProxy itself will not start on a config that binds the
    // squatted port, which is what restarting on the old file meant.
    let control = tempfile::tempdir().unwrap();
    let cfg = control.path().join("control.cfg");
    std::fs::write(
        &cfg,
        format!(
            "defaults\n    mode tcp\n    timeout connect 1s\n    timeout client 1s\n    timeout server 1s\n\
             frontend f\n    bind {}:{squatted}\n    default_backend b\nbackend b\n    server s 127.0.0.1:1 disabled\n",
            d.ip
        ),
    )
    .unwrap();
    let out = std::process::Command::new("timeout")
        .args(["5", "haproxy", "-db", "-f"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("cannot bind socket"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Once the port is free again, the frontend comes back.
    drop(squatter);
    time_until_served(d.frontend(squatted), "victim", Duration::from_secs(10));
    eventually(
        Duration::from_secs(5),
        "the quarantine to be lifted",
        || {
            d.status()["haproxy"]["quarantined"]
                .as_object()?
                .is_empty()
                .then_some(())
        },
    );
    assert!(d.log().contains("HAProxy exited"), "the exit is logged");
}

#[test]
fn a_broken_config_file_on_disk_does_not_keep_haproxy_down() {
    let d = Daemon::start(DaemonOpts::default());
    let a = Backend::start("back");
    let port = free_port(&d.ip);
    d.add("svc", port, a.addr);
    let config = d.data_dir.join("haproxy.cfg");
    std::fs::write(&config, "this is not an HAProxy config\n").unwrap();
    // The control: HAProxy rejects the file an old-style restart would use.
    let check = std::process::Command::new("haproxy")
        .arg("-c")
        .arg("-f")
        .arg(&config)
        .output()
        .unwrap();
    assert!(!check.status.success());

    kill_haproxy(&d);
    let took = time_until_served(d.frontend(port), "back", Duration::from_secs(10));
    assert!(took < Duration::from_secs(2), "down for {took:?}");
    assert!(d.haproxy_config().contains(&format!("{port}_frontend")));
    d.in_step();
}

#[test]
fn an_haproxy_that_rejects_every_config_is_not_blamed_on_frontends_nor_run_in_a_loop() {
    let tools = tempfile::tempdir().unwrap();
    let (flag, log) = (tools.path().join("reject"), tools.path().join("checks"));
    let bin = wrapper(
        tools.path(),
        &format!(
            "if [ \"$1\" = -c ]; then echo \"$3\" >> {log}; fi\n\
             if [ \"$1\" = -c ] && [ -e {flag} ]; then echo '[ALERT] (1) : broken package' >&2; exit 1; fi",
            log = log.display(),
            flag = flag.display()
        ),
    );
    let d = daemon_with(&format!("binary = \"{}\"", bin.display()));
    let a = Backend::start("ok");
    let ports: Vec<u16> = (0..10).map(|_| free_port(&d.ip)).collect();
    for p in &ports {
        register(&d, &format!("svc{p}"), *p, &a, "");
    }
    d.in_step();
    let checks = || {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .count()
    };

    std::fs::write(&flag, "").unwrap();
    let before = checks();
    let late = free_port(&d.ip);
    let v = register(&d, "late", late, &a, "?wait=applied&timeout=3");
    assert_eq!(v["applied"], false, "{v}");
    let error = v["apply_error"].as_str().unwrap();
    assert!(error.contains("no frontend is to blame"), "{error}");
    assert!(error.contains("broken package"), "{error}");
    std::thread::sleep(Duration::from_secs(4));
    // Backing off (1 s, 2 s, 4 s) with two checks per try; blaming each of
    // the 11 frontends in turn, every second, took 50 or more.
    let used = checks() - before;
    assert!(used <= 8, "{used} runs of haproxy -c in about 7 s");
    let st = d.status();
    assert!(
        st["haproxy"]["quarantined"].as_object().unwrap().is_empty(),
        "no frontend is blamed: {st}"
    );
    for p in &ports {
        assert_eq!(
            greeting(d.frontend(*p)).as_deref(),
            Some("ok"),
            "the old config serves"
        );
    }

    std::fs::remove_file(&flag).unwrap();
    time_until_served(d.frontend(late), "ok", Duration::from_secs(20));
    d.in_step();
}

#[test]
fn a_frontend_haproxy_rejects_is_found_and_left_out_while_the_others_apply() {
    let tools = tempfile::tempdir().unwrap();
    let bad = tools.path().join("bad-port");
    std::fs::write(&bad, "none\n").unwrap();
    // Rejects any config that binds the port named in the file.
    let bin = wrapper(
        tools.path(),
        &format!(
            "if [ \"$1\" = -c ] && grep -q \"^    bind .*:$(cat {bad})\\$\" \"$3\"; then\n\
             echo \"[ALERT] (1) : config : frontend $(cat {bad}) rejected by the test\" >&2; exit 1; fi",
            bad = bad.display()
        ),
    );
    let d = daemon_with(&format!("binary = \"{}\"", bin.display()));
    let (a, b) = (Backend::start("a"), Backend::start("b"));
    let ports: Vec<u16> = (0..5).map(|_| free_port(&d.ip)).collect();
    let rejected = ports[3];
    std::fs::write(&bad, format!("{rejected}\n")).unwrap();
    for p in &ports {
        register(&d, &format!("svc{p}"), *p, &a, "");
    }
    eventually(
        Duration::from_secs(15),
        "the rejected frontend to be found",
        || {
            let st = d.status();
            let why = st["haproxy"]["quarantined"][rejected.to_string()]
                .as_str()?
                .to_owned();
            (st["haproxy"]["quarantined"].as_object()?.len() == 1).then_some(why)
        },
    );
    let why = d.status()["haproxy"]["quarantined"][rejected.to_string()].clone();
    assert!(
        why.as_str()
            .unwrap()
            .contains(&format!("frontend {rejected} rejected by the test")),
        "{why}"
    );
    for p in ports.iter().filter(|p| **p != rejected) {
        time_until_served(d.frontend(*p), "a", Duration::from_secs(10));
    }
    assert!(greeting(d.frontend(rejected)).is_none());
    d.in_step();

    // Once HAProxy would take it and its servers change, it is served.
    std::fs::write(&bad, "none\n").unwrap();
    register(&d, &format!("svc{rejected}"), rejected, &b, "");
    eventually(Duration::from_secs(10), "the frontend to be served", || {
        greeting_from("127.0.9.1", d.frontend(rejected))
    });
    d.in_step();
}

#[test]
fn a_check_that_hangs_is_reported_as_a_timeout_and_blames_no_frontend() {
    let tools = tempfile::tempdir().unwrap();
    let flag = tools.path().join("hang");
    let bin = wrapper(
        tools.path(),
        &format!(
            "if [ \"$1\" = -c ] && [ -e {} ]; then exec sleep 37; fi",
            flag.display()
        ),
    );
    let d = daemon_with(&format!(
        "binary = \"{}\"\ncheck-timeout = \"1s\"",
        bin.display()
    ));
    let a = Backend::start("a");
    let first = free_port(&d.ip);
    d.add("first", first, a.addr);

    std::fs::write(&flag, "").unwrap();
    let v = register(
        &d,
        "second",
        free_port(&d.ip),
        &a,
        "?wait=applied&timeout=4",
    );
    assert_eq!(v["applied"], false, "{v}");
    let error = v["apply_error"].as_str().unwrap();
    assert!(error.contains("did not finish within 1 s"), "{error}");
    assert!(
        !error.contains("rejects"),
        "a timeout is not a rejection: {error}"
    );
    let st = d.status();
    assert!(
        st["haproxy"]["quarantined"].as_object().unwrap().is_empty(),
        "{st}"
    );
    assert_eq!(greeting(d.frontend(first)).as_deref(), Some("a"));
    // The hung check was stopped, not left behind.
    std::thread::sleep(Duration::from_millis(300));
    let sleeping = sh("pgrep -f -x 'sleep 37' || true", &[]);
    assert!(
        sleeping.trim().lines().count() <= 1,
        "hung checks pile up: {sleeping}"
    );
}

#[test]
fn an_external_reload_command_that_hangs_is_stopped_and_reported() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("haproxy.cfg");
    let runtime = dir.path().join("admin.sock");
    let flag = dir.path().join("hang");
    std::fs::write(
        &cfg,
        format!(
            "global\n    stats socket \"{}\" mode 600 level admin expose-fd listeners\ndefaults\n    mode tcp\n    timeout connect 5s\n    timeout client 5s\n    timeout server 5s\n",
            runtime.display()
        ),
    )
    .unwrap();
    let service = service_haproxy(&cfg, &runtime);
    let pid = service.id();
    let d = daemon_with(&format!(
        "mode = \"external\"\nconfig-path = \"{}\"\nruntime-socket = \"{}\"\nreload-timeout = \"1s\"\n\
         reload-command = [\"sh\", \"-c\", \"kill -USR2 {pid}; if [ -e {} ]; then exec sleep 41; fi\"]",
        cfg.display(),
        runtime.display(),
        flag.display()
    ));
    let a = Backend::start("a");
    d.add("first", free_port(&d.ip), a.addr);

    std::fs::write(&flag, "").unwrap();
    let v = register(
        &d,
        "second",
        free_port(&d.ip),
        &a,
        "?wait=applied&timeout=4",
    );
    assert_eq!(v["applied"], false, "{v}");
    let error = v["apply_error"].as_str().unwrap();
    assert!(
        error.contains("did not finish within 1 s; it was stopped"),
        "{error}"
    );
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        sh("pgrep -f -x 'sleep 41' || true", &[]).trim().is_empty(),
        "the hung reload command was stopped"
    );
    std::fs::remove_file(&flag).unwrap();
    d.in_step();
}
