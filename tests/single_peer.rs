//! `lbmesh serve` on one VM, against a real HAProxy and real sockets.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::*;
use serde_json::json;

/// The original client's curl line, exactly as the phone-home script ran it.
const ORIGINAL_CURL: &str = r#"curl \
    -H "Content-Type:application/json" \
    -H "X-Funkypenguin-Token:$WEBHOOK_TOKEN" \
    -X POST \
    -d "{\"dst-ip\":\"$DST_IP\",\"frontend-port\":\"$FRONTEND_PORT\",\"backend-port\":\"$BACKEND_PORT\",\"action\":\"$ACTION\",\"name\":\"$NAME\",\"send-proxy\":\"$SEND_PROXY\"}" \
    $WEBHOOK"#;

fn original_curl(
    d: &Daemon,
    action: &str,
    name: &str,
    frontend: u16,
    backend: std::net::SocketAddr,
) -> String {
    sh(
        ORIGINAL_CURL,
        &[
            ("WEBHOOK", &d.url("/hooks/update-haproxy")),
            ("WEBHOOK_TOKEN", &d.token),
            ("DST_IP", &backend.ip().to_string()),
            ("FRONTEND_PORT", &frontend.to_string()),
            ("BACKEND_PORT", &backend.port().to_string()),
            ("ACTION", action),
            ("NAME", name),
            ("SEND_PROXY", ""),
        ],
    )
}

#[test]
fn the_original_curl_registers_and_traffic_reaches_the_backend() {
    let d = Daemon::start(DaemonOpts::default());
    let backend = Backend::start("nodeport-a");
    let port = free_port("127.0.0.1");
    let out = original_curl(&d, "add", "traefik", port, backend.addr);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["result"], "registered", "{out}");
    assert!(
        v["lease_seconds"].as_u64().unwrap() > 600,
        "lease must outlive the 600 s interval"
    );
    // The 200 came back once stored; HAProxy follows within moments.
    let got = eventually(
        Duration::from_secs(10),
        "traffic through the frontend",
        || greeting(d.frontend(port)),
    );
    assert_eq!(got, "nodeport-a");
    // The same call again is a renewal, with no reload.
    let reloads = d.in_step()["haproxy"]["reloads"].as_u64().unwrap();
    let out = original_curl(&d, "add", "traefik", port, backend.addr);
    assert!(out.contains("\"renewed\""), "{out}");
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(d.status()["haproxy"]["reloads"].as_u64().unwrap(), reloads);
    // The original delete removes it.
    let out = original_curl(&d, "delete", "traefik", port, backend.addr);
    assert!(out.contains("\"deleted\""), "{out}");
    eventually(Duration::from_secs(10), "the frontend to close", || {
        greeting(d.frontend(port)).is_none().then_some(())
    });
}

#[test]
fn a_form_encoded_body_works_too() {
    let d = Daemon::start(DaemonOpts::default());
    let backend = Backend::start("form");
    let port = free_port("127.0.0.1");
    let body = format!(
        "name=mqtt&frontend-port={port}&backend-port={}&dst-ip=127.0.0.1&action=add",
        backend.addr.port()
    );
    let (code, v) = http(
        "POST",
        &d.url("/hooks/update-haproxy?wait=applied"),
        Some(&d.token),
        Some("application/x-www-form-urlencoded"),
        Some(body.into_bytes()),
    );
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["applied"], true);
    assert_eq!(greeting(d.frontend(port)).as_deref(), Some("form"));
}

#[test]
fn a_second_server_shares_the_load_without_a_reload_and_a_dead_one_is_taken_out() {
    let d = Daemon::start(DaemonOpts::default());
    let a = Backend::start("a");
    let b = Backend::start("b");
    let port = free_port("127.0.0.1");
    d.add("traefik", port, a.addr);
    let reloads = d.status()["haproxy"]["reloads"].as_u64().unwrap();
    d.add("traefik", port, b.addr);
    let st = d.status();
    assert_eq!(
        st["haproxy"]["reloads"].as_u64().unwrap(),
        reloads,
        "a server-only change must not reload: {st}"
    );
    assert!(st["haproxy"]["runtime_updates"].as_u64().unwrap() >= 1);
    // `stick on src` pins each client address to one server, so spread the
    // clients over many loopback source addresses.
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    for i in 2..42 {
        if let Some(g) = greeting_from(&format!("127.0.3.{i}"), d.frontend(port)) {
            *seen.entry(g).or_default() += 1;
        }
    }
    assert_eq!(seen.len(), 2, "both servers should take clients: {seen:?}");
    assert!(seen.values().all(|n| *n >= 5), "load is shared: {seen:?}");

    // Kill b: the health check takes it out and every client lands on a.
    b.stop();
    drop(b);
    std::thread::sleep(Duration::from_secs(2));
    for i in 2..22 {
        assert_eq!(
            greeting_from(&format!("127.0.4.{i}"), d.frontend(port)).as_deref(),
            Some("a"),
            "client {i} after b died"
        );
    }
}

#[test]
fn leases_expire_and_deletes_remove() {
    let d = Daemon::start(DaemonOpts {
        toml: fast_toml("", "empty-frontend-grace = \"1s\""),
        ..DaemonOpts::default()
    });
    let a = Backend::start("a");
    let b = Backend::start("b");
    let (p1, p2) = (free_port("127.0.0.1"), free_port("127.0.0.1"));
    let (code, v) = d.hook(
        &json!({"name":"short","frontend-port":p1.to_string(),"backend-port":a.addr.port().to_string(),
                "dst-ip":"127.0.0.1","action":"add","ttl":"2"}),
        "?wait=applied",
    );
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["lease_seconds"], 2);
    d.add("long", p2, b.addr);
    assert_eq!(greeting(d.frontend(p1)).as_deref(), Some("a"));
    // After the lease, the server leaves at once; its frontend, now empty,
    // stays bound for its grace period, then a reload removes it.
    eventually(Duration::from_secs(10), "the lease to expire", || {
        greeting(d.frontend(p1)).is_none().then_some(())
    });
    eventually(Duration::from_secs(10), "the empty frontend to go", || {
        (!d.haproxy_config().contains(&format!("{p1}_frontend"))).then_some(())
    });
    let (_, list) = d.get("/v1/frontends");
    let ports: Vec<u64> = list["frontends"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["port"].as_u64().unwrap())
        .collect();
    assert_eq!(ports, vec![p2 as u64]);
    // Delete through the typed API.
    let (code, v) = http(
        "DELETE",
        &d.url(&format!(
            "/v1/frontends/{p2}/servers/127.0.0.1/{}?name=long&wait=applied",
            b.addr.port()
        )),
        Some(&d.token),
        None,
        None,
    );
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["result"], "deleted");
    assert!(greeting(d.frontend(p2)).is_none());
    let held = d.status()["haproxy"]["held"].clone();
    assert!(held[p2.to_string()].as_u64().is_some(), "{held}");
    eventually(Duration::from_secs(10), "the empty frontend to go", || {
        (!d.haproxy_config().contains("_frontend")).then_some(())
    });
}

#[test]
fn a_restart_keeps_what_was_registered() {
    let mut d = Daemon::start(DaemonOpts::default());
    let a = Backend::start("kept");
    let port = free_port("127.0.0.1");
    d.add("traefik", port, a.addr);
    let digest = d.status()["registry"]["digest"].clone();
    let status = d.stop();
    assert!(status.success(), "clean exit on SIGTERM: {status}");
    // A clean stop takes HAProxy down with it.
    assert!(greeting(d.frontend(port)).is_none());
    d.spawn();
    assert_eq!(d.status()["registry"]["digest"], digest);
    assert_eq!(greeting(d.frontend(port)).as_deref(), Some("kept"));
}

#[test]
fn a_crashed_daemon_leaves_haproxy_serving_and_adopts_it_on_restart() {
    let mut d = Daemon::start(DaemonOpts::default());
    let a = Backend::start("survivor");
    let port = free_port("127.0.0.1");
    d.add("traefik", port, a.addr);
    let master = d.haproxy_master_pid().unwrap();
    d.crash();
    // Traffic keeps flowing while lbmesh is down.
    assert_eq!(greeting(d.frontend(port)).as_deref(), Some("survivor"));
    d.spawn();
    assert_eq!(
        d.status()["haproxy"]["master_pid"].as_u64(),
        Some(master as u64),
        "adopted, not restarted"
    );
    assert_eq!(greeting(d.frontend(port)).as_deref(), Some("survivor"));
}

/// A TCP echo server: the backend of a long-lived connection.
fn echo_backend() -> std::net::SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let mut conn = conn;
                let mut buf = [0u8; 256];
                use std::io::{Read, Write};
                while let Ok(n) = conn.read(&mut buf) {
                    if n == 0 || conn.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            });
        }
    });
    addr
}

fn echo(conn: &mut std::net::TcpStream, what: &str) -> Option<String> {
    use std::io::{Read, Write};
    conn.write_all(what.as_bytes()).ok()?;
    let mut buf = vec![0u8; what.len()];
    conn.read_exact(&mut buf).ok()?;
    String::from_utf8(buf).ok()
}

#[test]
fn a_drained_daemon_stopped_leaves_haproxy_serving_and_the_next_carries_on_without_a_reload() {
    let mut d = Daemon::start(DaemonOpts {
        toml: fast_toml("", ""),
        ..DaemonOpts::default()
    });
    let port = free_port(&d.ip);
    d.add("echo", port, echo_backend());
    let mut conn = std::net::TcpStream::connect(d.frontend(port)).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    assert_eq!(echo(&mut conn, "one").as_deref(), Some("one"));
    let master = d.haproxy_master_pid().unwrap();

    let (code, r) = http(
        "POST",
        &d.url("/v1/drain?timeout=0"),
        Some(&d.token),
        None,
        None,
    );
    assert_eq!(code, 200, "{r}");
    assert_eq!(r["connections"], 1, "{r}");
    let status = d.stop();
    assert!(status.success(), "clean exit on SIGTERM: {status}");
    assert!(
        d.log().contains("HAProxy keeps serving them"),
        "{}",
        d.log()
    );
    // lbmesh is gone; HAProxy and the connection are not.
    assert_eq!(echo(&mut conn, "two").as_deref(), Some("two"));

    d.spawn();
    assert_eq!(
        d.status()["haproxy"]["master_pid"].as_u64(),
        Some(master as u64),
        "adopted"
    );
    assert!(d.log().contains("without a reload"), "{}", d.log());
    // A server change after the restart goes through the Runtime API.
    d.add("echo", port, echo_backend());
    let st = d.in_step();
    assert_eq!(st["haproxy"]["reloads"], 0, "{st}");
    assert!(st["haproxy"]["runtime_updates"].as_u64() >= Some(1), "{st}");
    // Past hard-stop-after (5 s here): a reload would have handed the
    // connection to an old worker that is gone by now.
    std::thread::sleep(Duration::from_secs(6));
    assert_eq!(echo(&mut conn, "three").as_deref(), Some("three"));

    // Undrained, a stop takes HAProxy and its connections down.
    let (code, _) = http("POST", &d.url("/v1/undrain"), Some(&d.token), None, None);
    assert_eq!(code, 200);
    assert!(d.stop().success());
    assert_eq!(echo(&mut conn, "four"), None);
    assert_eq!(
        d.haproxy_master_pid(),
        None,
        "the pid file goes with HAProxy"
    );
}

#[test]
fn haproxy_killed_under_the_daemon_comes_back() {
    let d = Daemon::start(DaemonOpts::default());
    let a = Backend::start("phoenix");
    let port = free_port("127.0.0.1");
    d.add("traefik", port, a.addr);
    let master = d.haproxy_master_pid().unwrap();
    signal(master, "KILL");
    // Kill the worker too: a lone worker would otherwise keep the port.
    std::thread::sleep(Duration::from_millis(100));
    let _ = std::process::Command::new("pkill")
        .args([
            "-KILL",
            "-f",
            &d.data_dir.join("haproxy.cfg").to_string_lossy(),
        ])
        .status();
    let new_master = eventually(Duration::from_secs(15), "a new HAProxy master", || {
        d.haproxy_master_pid().filter(|p| *p != master)
    });
    assert_ne!(new_master, master);
    eventually(Duration::from_secs(15), "traffic again", || {
        greeting(d.frontend(port))
    });
    assert_eq!(greeting(d.frontend(port)).as_deref(), Some("phoenix"));
    let st = d.status();
    assert!(st["haproxy"]["restarts"].as_u64().unwrap() >= 1, "{st}");
    eventually(Duration::from_secs(10), "healthy again", || {
        (d.get("/healthz").0 == 200).then_some(())
    });
}

#[test]
fn a_frontend_that_cannot_bind_is_quarantined_while_others_apply() {
    let d = Daemon::start(DaemonOpts::default());
    let a = Backend::start("ok");
    let squatter = std::net::TcpListener::bind((d.ip.as_str(), 0)).unwrap();
    let taken = squatter.local_addr().unwrap().port();
    let good = free_port("127.0.0.1");
    let (code, v) = d.hook(
        &json!({"name":"blocked","frontend-port":taken.to_string(),"backend-port":a.addr.port().to_string(),"dst-ip":"127.0.0.1","action":"add"}),
        "?wait=applied",
    );
    assert_eq!(code, 200, "stored even though it cannot be served: {v}");
    assert_eq!(v["applied"], false);
    assert!(
        v["apply_error"].as_str().unwrap().contains("quarantined"),
        "{v}"
    );
    d.add("fine", good, a.addr);
    assert_eq!(greeting(d.frontend(good)).as_deref(), Some("ok"));
    let st = d.status();
    assert!(
        st["haproxy"]["quarantined"][taken.to_string()].is_string(),
        "{st}"
    );
    // Still healthy: the VM serves everything it can.
    assert_eq!(d.get("/healthz").0, 200);
    // Once the port is free, the frontend is served.
    drop(squatter);
    eventually(
        Duration::from_secs(20),
        "the quarantined frontend to be served",
        || greeting(d.frontend(taken)),
    );
    eventually(
        Duration::from_secs(5),
        "the quarantine to be lifted in status",
        || {
            d.status()["haproxy"]["quarantined"]
                .as_object()
                .unwrap()
                .is_empty()
                .then_some(())
        },
    );
}

#[test]
fn a_burst_of_registrations_is_coalesced_into_few_reloads() {
    let d = Daemon::start(DaemonOpts::default());
    let a = Backend::start("burst");
    let reloads = d.status()["haproxy"]["reloads"].as_u64().unwrap();
    let ports: Vec<u16> = (0..30).map(|_| free_port("127.0.0.1")).collect();
    std::thread::scope(|s| {
        for chunk in ports.chunks(10) {
            let d = &d;
            let a = &a;
            s.spawn(move || {
                for p in chunk {
                    let (code, v) = d.hook(
                        &json!({"name":format!("svc{p}"),"frontend-port":p.to_string(),"backend-port":a.addr.port().to_string(),"dst-ip":"127.0.0.1","action":"add"}),
                        "",
                    );
                    assert_eq!(code, 200, "{v}");
                }
            });
        }
    });
    for p in &ports {
        eventually(Duration::from_secs(10), "every frontend served", || {
            greeting(d.frontend(*p))
        });
    }
    let used = d.status()["haproxy"]["reloads"].as_u64().unwrap() - reloads;
    assert!(used <= 10, "{used} reloads for 30 new frontends");
}

#[test]
fn metrics_and_status_report_what_happened() {
    let d = Daemon::start(DaemonOpts::default());
    let a = Backend::start("m");
    let port = free_port("127.0.0.1");
    d.add("traefik", port, a.addr);
    let (code, _) = d.hook(&json!({"name":"x"}), "");
    assert_eq!(code, 400);
    let text = std::process::Command::new("curl")
        .args(["-s", &d.url("/metrics")])
        .output()
        .unwrap()
        .stdout;
    let text = String::from_utf8(text).unwrap();
    for needle in [
        "lbmesh_http_requests_total{route=\"hook\",outcome=\"registered\"} 1",
        "lbmesh_http_requests_total{route=\"hook\",outcome=\"invalid_field\"} 1",
        "lbmesh_frontends 1",
        "lbmesh_servers 1",
        "lbmesh_haproxy_reloads_total{cause=\"start\",result=\"ok\"} 1",
        "lbmesh_apply_duration_seconds_count",
        "lbmesh_validation_failures_total 0",
    ] {
        assert!(text.contains(needle), "metrics lack {needle:?}:\n{text}");
    }
    let out = sh(
        &format!(
            "{BIN} status --api http://{} --token-file {}",
            d.api,
            d.data_dir.join("token").display()
        ),
        &[],
    );
    assert!(out.contains("frontends 1  servers 1"), "{out}");
    assert!(out.contains("in step"), "{out}");
}

#[test]
fn a_config_haproxy_rejects_is_never_installed_and_the_last_good_one_keeps_serving() {
    // An haproxy that rejects every config check while a flag file exists,
    // as a newer HAProxy or a broken package might.
    let tools = tempfile::tempdir().unwrap();
    let flag = tools.path().join("reject");
    let wrapper = tools.path().join("haproxy");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\nif [ \"$1\" = -c ] && [ -e {} ]; then echo '[ALERT] rejected by the test' >&2; exit 1; fi\nexec haproxy \"$@\"\n",
            flag.display()
        ),
    )
    .unwrap();
    sh(&format!("chmod 755 {}", wrapper.display()), &[]);
    let d = Daemon::start(DaemonOpts {
        toml: fast_toml("", &format!("binary = \"{}\"", wrapper.display())),
        ..DaemonOpts::default()
    });
    let a = Backend::start("good");
    let port = free_port("127.0.0.1");
    d.add("traefik", port, a.addr);
    let good = d.haproxy_config();
    let metrics = |d: &Daemon| sh(&format!("curl -s {}", d.url("/metrics")), &[]);
    assert!(metrics(&d).contains("lbmesh_validation_failures_total 0"));

    std::fs::write(&flag, "").unwrap();
    let other = free_port("127.0.0.1");
    let (code, v) = d.hook(
        &json!({"name":"late","frontend-port":other.to_string(),"backend-port":a.addr.port().to_string(),"dst-ip":"127.0.0.1","action":"add"}),
        "?wait=applied&timeout=5",
    );
    assert_eq!(code, 200, "stored: {v}");
    assert_eq!(v["applied"], false, "{v}");
    // Nothing was installed; the old config still serves; the failure is reported.
    assert_eq!(d.haproxy_config(), good);
    assert_eq!(greeting(d.frontend(port)).as_deref(), Some("good"));
    assert!(greeting(d.frontend(other)).is_none());
    let st = d.status();
    assert_eq!(st["haproxy"]["in_step"], false, "{st}");
    assert!(
        st["haproxy"]["last_apply"]["error"]
            .as_str()
            .unwrap()
            .contains("keeping the last good config"),
        "{st}"
    );
    assert!(!metrics(&d).contains("lbmesh_validation_failures_total 0"));
    eventually(
        Duration::from_secs(15),
        "the health check to report it",
        || (d.get("/healthz").0 == 503).then_some(()),
    );

    // Once HAProxy accepts configs again, the pending change applies.
    std::fs::remove_file(&flag).unwrap();
    eventually(Duration::from_secs(15), "the frontend to be served", || {
        greeting(d.frontend(other))
    });
    d.in_step();
}
