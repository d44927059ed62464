//! The event log and HAProxy's log, as an operator reads them: real
//! `lbmesh serve` processes with a real HAProxy, JSON log lines, `GET /v1/events`.

mod common;

use std::net::TcpListener;
use std::time::Duration;

use common::*;
use serde_json::{Value, json};

/// The daemon's JSON log lines (stdout's few plain lines left out).
fn json_lines(log: &str) -> Vec<Value> {
    log.lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

/// Events of kind `event` from `GET /v1/events`.
fn events(d: &Daemon, event: &str) -> Vec<Value> {
    let (code, v) = d.get("/v1/events?limit=1000");
    assert_eq!(code, 200, "{v}");
    v["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["event"] == event)
        .cloned()
        .collect()
}

fn wait_event(d: &Daemon, what: &str, f: impl Fn(&Value) -> bool) -> Value {
    eventually(Duration::from_secs(15), what, || {
        let (_, v) = d.get("/v1/events?limit=1000");
        v["events"].as_array()?.iter().find(|e| f(e)).cloned()
    })
}

fn wait_log_line(d: &Daemon, what: &str, from: usize, f: impl Fn(&Value) -> bool) -> Value {
    eventually(Duration::from_secs(15), what, || {
        json_lines(&d.log()[from..]).into_iter().find(|l| f(l))
    })
}

#[test]
fn every_event_of_a_peer_is_a_json_line_and_listed_by_the_api() {
    let mut d = Daemon::start(DaemonOpts {
        env: vec![
            ("LBMESH_LOG_FORMAT".into(), "json".into()),
            ("LBMESH_LOG".into(), "info".into()),
        ],
        ..DaemonOpts::default()
    });
    let a = Backend::start_on(&d.ip, "a");
    let b = Backend::start_on(&d.ip, "b");
    let port = free_port(&d.ip);

    // An accepted write: one line, with who accepted it and who asked.
    d.add("web", port, a.addr);
    let write = &events(&d, "write")[0];
    assert_eq!(write["action"], "registered", "{write}");
    assert_eq!(write["frontend"], port);
    assert_eq!(write["server"], a.addr.to_string());
    assert_eq!(write["name"], "web");
    assert_eq!(write["peer"], "lb1");
    assert!(write["lease_seconds"].as_u64().unwrap() > 60, "{write}");
    let client: std::net::IpAddr = write["client"].as_str().unwrap().parse().unwrap();
    assert!(client.is_loopback(), "{write}");
    let line = wait_log_line(&d, "the write's log line", 0, |l| {
        l["event"] == "write" && l["frontend"] == port
    });
    assert_eq!(line["level"], "INFO");
    assert_eq!(line["target"], "lbmesh::events");
    assert_eq!(line["client"], write["client"]);
    let started = wait_event(&d, "the first reload", |e| e["event"] == "reload");
    assert_eq!(started["cause"], "start", "{started}");

    // A renewal is not an info line, nor an event.
    d.add("web", port, a.addr);
    // A second server goes through the Runtime API; a delete is a write too.
    d.add("web", port, b.addr);
    wait_event(&d, "a runtime change", |e| {
        e["event"] == "runtime_change" && e["cause"] == "registry" && e["ok"] == true
    });
    d.delete("web", port, b.addr);
    let actions: Vec<Value> = events(&d, "write")
        .iter()
        .map(|e| e["action"].clone())
        .collect();
    assert_eq!(
        actions,
        vec![json!("registered"), json!("registered"), json!("deleted")]
    );
    assert!(
        !json_lines(&d.log())
            .iter()
            .any(|l| l["action"] == "renewed"),
        "a renewal was logged at info"
    );

    // A lease that ends.
    let (code, v) = http(
        "PUT",
        &d.url(&format!(
            "/v1/frontends/{port}/servers/{}/{}",
            b.addr.ip(),
            b.addr.port()
        )),
        Some(&d.token),
        Some("application/json"),
        Some(br#"{"name":"web","ttl_seconds":1}"#.to_vec()),
    );
    assert_eq!(code, 200, "{v}");
    let expired = wait_event(&d, "the lease to expire", |e| e["event"] == "lease_expired");
    assert_eq!(expired["server"], b.addr.to_string(), "{expired}");
    assert_eq!(expired["frontend"], port);
    assert_eq!(expired["name"], "web");
    wait_event(&d, "the expiry applied", |e| {
        e["cause"] == "expiry" && e["ok"] == true
    });

    // A frontend whose port is taken on this VM: quarantined, then released.
    let busy_port = free_port(&d.ip);
    let squatter = TcpListener::bind((d.ip.as_str(), busy_port)).unwrap();
    let (code, v) = d.hook(
        &json!({"name": "busy", "frontend-port": busy_port.to_string(),
            "backend-port": a.addr.port().to_string(), "dst-ip": a.addr.ip().to_string(),
            "action": "add"}),
        "",
    );
    assert_eq!(code, 200, "{v}");
    let q = wait_event(&d, "the quarantine", |e| e["event"] == "quarantined");
    assert_eq!(q["frontend"], busy_port, "{q}");
    assert!(
        q["reason"].as_str().unwrap().contains("cannot listen"),
        "{q}"
    );
    let line = wait_log_line(&d, "the quarantine's log line", 0, |l| {
        l["event"] == "quarantined"
    });
    assert_eq!(line["level"], "ERROR");
    drop(squatter);
    wait_event(&d, "the quarantine to be lifted", |e| {
        e["event"] == "quarantine_lifted" && e["frontend"] == busy_port
    });

    // HAProxy's own log: a server its check finds down is an error line.
    a.stop();
    let down = wait_log_line(&d, "HAProxy's server-down alert", 0, |l| {
        l["target"] == "haproxy" && l["message"].as_str().is_some_and(|m| m.contains("is DOWN"))
    });
    assert_eq!(down["level"], "ERROR", "{down}");

    // HAProxy dies: restarted, counted and reported.
    let master = d.haproxy_master_pid().unwrap();
    signal(master, "KILL");
    wait_event(&d, "the HAProxy restart", |e| {
        e["event"] == "haproxy_restarted"
    });
    let metrics = sh(&format!("curl -s {}", d.url("/metrics")), &[]);
    assert!(
        metrics.contains("# TYPE lbmesh_haproxy_restarts counter")
            && metrics.contains("lbmesh_haproxy_restarts_total 1"),
        "{metrics}"
    );

    // lbmesh crashes and adopts the running HAProxy: HAProxy's messages still arrive.
    d.in_step();
    d.crash();
    let from = d.log().len();
    d.spawn();
    assert!(d.log()[from..].contains("adopting the HAProxy master"));
    // Once HAProxy's check has the server down again, bring it back.
    eventually(Duration::from_secs(15), "HAProxy to see a down", || {
        let (_, f) = d.get(&format!("/v1/frontends/{port}"));
        f["servers"]
            .as_array()?
            .iter()
            .any(|s| s["address"] == a.addr.to_string() && s["health"] == "down")
            .then_some(())
    });
    let a_again = Backend::start_at(a.addr, "a");
    let up = wait_log_line(&d, "HAProxy's server-up notice after adoption", from, |l| {
        l["target"] == "haproxy" && l["message"].as_str().is_some_and(|m| m.contains("is UP"))
    });
    assert_eq!(up["level"], "INFO", "{up}");
    a_again.stop();

    // The API: a token, and a cursor.
    let (code, _) = http("GET", &d.url("/v1/events"), None, None, None);
    assert_eq!(code, 401);
    let (_, v) = d.get("/v1/events");
    let last = v["last_seq"].as_u64().unwrap();
    let (_, v) = d.get(&format!("/v1/events?after={last}"));
    assert_eq!(v["events"], json!([]), "{v}");
    let (code, v) = d.get("/v1/events?limit=0");
    assert_eq!(code, 400, "{v}");
    assert_eq!(v["field"], "limit", "{v}");
}

#[test]
fn a_bad_log_filter_or_format_stops_lbmesh_with_a_clear_message() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    for (var, value, says) in [
        ("LBMESH_LOG", "lbmesh=loud", "is not a valid log filter"),
        ("LBMESH_LOG_FORMAT", "yaml", "is not a log format"),
    ] {
        let out = std::process::Command::new(BIN)
            .args(["serve", "--data-dir"])
            .arg(&data)
            .args(["--api-listen", "127.0.0.1:0"])
            .env(var, value)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{stderr}");
        assert!(stderr.contains(says) && stderr.contains(value), "{stderr}");
        assert!(!data.exists(), "lbmesh started anyway");
    }
}

#[test]
fn peers_and_the_floating_ip_are_events() {
    let mut m = mesh_of(3, "udp");
    m.converged(&[0, 1, 2]);
    for id in ["lb2", "lb3"] {
        wait_event(&m.peers[0], "peers joining", |e| {
            e["event"] == "peer_joined" && e["peer"] == id
        });
    }

    // keepalived makes lb2 MASTER: lb2 logs its transition, lb1 sees the VIP move.
    let notify = |i: usize, state: &str| {
        let p = &m.peers[i];
        sh(
            &format!(
                "{BIN} keepalived notify --api {} --token-file {} INSTANCE VI_LBMESH {state}",
                p.url(""),
                p.token_file.display()
            ),
            &[],
        )
    };
    notify(1, "MASTER");
    let t = wait_event(&m.peers[1], "lb2's VRRP transition", |e| {
        e["event"] == "vrrp_state"
    });
    assert_eq!(
        (t["state"].as_str(), t["instance"].as_str()),
        (Some("MASTER"), Some("VI_LBMESH"))
    );
    let moved = wait_event(&m.peers[0], "the VIP to move", |e| {
        e["event"] == "vip_moved"
    });
    assert_eq!(moved["to"], "lb2", "{moved}");
    // Two masters: split brain, an error; one again: over.
    notify(2, "MASTER");
    let sb = wait_event(&m.peers[0], "split brain", |e| e["event"] == "split_brain");
    assert_eq!(sb["masters"], json!(["lb2", "lb3"]));
    assert_eq!(sb["level"], "error");
    // The text status says so too.
    let text = sh(
        &format!(
            "{BIN} status --api {} --token-file {}",
            m.peers[0].url(""),
            m.peers[0].token_file.display()
        ),
        &[],
    );
    assert!(
        text.contains("SPLIT BRAIN: lb2, lb3 all hold the floating IP"),
        "{text}"
    );
    notify(1, "BACKUP");
    wait_event(&m.peers[0], "the split brain to end", |e| {
        e["event"] == "split_brain_over" && e["masters"] == json!(["lb3"])
    });

    // lb3 crashes: dead for the others; it restarts: back, as a new incarnation.
    m.peers[2].crash();
    let dead = wait_event(&m.peers[0], "lb3 dead", |e| {
        e["event"] == "peer_dead" && e["peer"] == "lb3"
    });
    assert_eq!(dead["level"], "warn");
    m.peers[2].spawn();
    let back = wait_event(&m.peers[0], "lb3 back", |e| {
        e["event"] == "peer_back" && e["peer"] == "lb3"
    });
    assert_eq!(back["restarted"], true, "{back}");
    assert!(
        back["incarnation"].as_u64() > dead["incarnation"].as_u64(),
        "{back} {dead}"
    );
}
