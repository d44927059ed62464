//! The metrics an operator alerts on, read from `/metrics` of a real
//! three-peer mesh with real HAProxy while things happen to it; and every
//! metric that `deploy/prometheus/` and `deploy/grafana/` name exists.

mod common;

use std::collections::BTreeSet;
use std::net::TcpListener;
use std::path::Path;
use std::time::Duration;

use common::*;
use serde_json::json;

fn metrics(d: &Daemon) -> String {
    sh(&format!("curl -s {}", d.url("/metrics")), &[])
}

/// The value of the sample `series` (name with its labels, as exposed).
fn value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

fn wait_value(d: &Daemon, series: &str, ok: impl Fn(f64) -> bool) -> f64 {
    eventually(Duration::from_secs(20), series, || {
        value(&metrics(d), series).filter(|v| ok(*v))
    })
}

/// `lbmesh_…` names in a file.
fn names_in(path: &Path) -> BTreeSet<String> {
    let text = std::fs::read_to_string(path).unwrap();
    let mut out = BTreeSet::new();
    let mut rest = text.as_str();
    while let Some(i) = rest.find("lbmesh_") {
        let name: String = rest[i..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        rest = &rest[i + name.len()..];
        out.insert(name);
    }
    out
}

/// Whether `/metrics` has `name`: a sample of it, or, for a family with no
/// labelled series yet, its `# TYPE` line.
fn exposes(text: &str, name: &str) -> bool {
    let sample = text.lines().any(|l| {
        l.strip_prefix(name)
            .is_some_and(|r| r.starts_with('{') || r.starts_with(' '))
    });
    let base = ["_total", "_bucket", "_count", "_sum"]
        .iter()
        .find_map(|s| name.strip_suffix(s))
        .unwrap_or(name);
    sample || text.contains(&format!("# TYPE {base} "))
}

#[test]
fn mesh_haproxy_and_replication_metrics_follow_what_happens() {
    let mut m = mesh_of(3, "quic");
    m.converged(&[0, 1, 2]);
    let (lb1, lb2, lb3) = (&m.peers[0], &m.peers[1], &m.peers[2]);
    let text = metrics(lb1);
    assert_eq!(
        value(&text, "lbmesh_peers{state=\"live\"}"),
        Some(3.0),
        "{text}"
    );
    assert_eq!(value(&text, "lbmesh_peers{state=\"dead\"}"), Some(0.0));
    assert_eq!(value(&text, "lbmesh_converged"), Some(1.0));
    assert_eq!(value(&text, "lbmesh_lag_seconds"), Some(0.0));
    assert_eq!(
        value(
            &text,
            "lbmesh_haproxy_reloads_total{cause=\"start\",result=\"ok\"}"
        ),
        Some(1.0)
    );

    // A write at lb2, replicated to the others; one server answers, one not.
    let up = Backend::start("up");
    let down = format!("127.0.0.1:{}", free_port("127.0.0.1"))
        .parse()
        .unwrap();
    let port = free_port("127.0.0.1");
    // Each write answered `"replicated": true` is counted once (an answer
    // may honestly say false while a peer's link is still being set up).
    let replicated = [lb2.add("web", port, up.addr), lb2.add("web", port, down)]
        .iter()
        .filter(|v| v["replicated"] == true)
        .count();
    assert!(replicated >= 1, "no write was replicated");
    let text = metrics(lb2);
    assert!(
        value(&text, "lbmesh_replication_seconds_count").unwrap() >= replicated as f64,
        "{text}"
    );
    wait_value(lb1, "lbmesh_propagation_seconds_count", |v| v >= 2.0);
    // lb1 learned them by gossip: a reload for the frontend, a Runtime API
    // change for the second server (or one reload for both).
    let text = metrics(lb1);
    let changes = value(
        &text,
        "lbmesh_haproxy_reloads_total{cause=\"registry\",result=\"ok\"}",
    )
    .unwrap()
        + value(
            &text,
            "lbmesh_haproxy_runtime_changes_total{cause=\"registry\",result=\"ok\"}",
        )
        .unwrap();
    assert!(changes >= 1.0, "{text}");
    // HAProxy's own checks, per frontend.
    wait_value(
        lb1,
        &format!("lbmesh_haproxy_servers{{frontend=\"{port}\",state=\"up\"}}"),
        |v| v == 1.0,
    );
    wait_value(
        lb1,
        &format!("lbmesh_haproxy_servers{{frontend=\"{port}\",state=\"down\"}}"),
        |v| v == 1.0,
    );

    // A frontend lb3 cannot bind: lb3 serves another config than the majority,
    // lags, and the mesh is not converged.
    let busy = free_port(&lb3.ip);
    let _squatter = TcpListener::bind((lb3.ip.as_str(), busy)).unwrap();
    let (code, v) = lb1.hook(
        &json!({"name": "mqtt", "frontend-port": busy.to_string(),
            "backend-port": up.addr.port().to_string(), "dst-ip": "127.0.0.1", "action": "add"}),
        "",
    );
    assert_eq!(code, 200, "{v}");
    wait_value(lb3, "lbmesh_quarantined_frontends", |v| v == 1.0);
    wait_value(lb3, "lbmesh_lag_seconds", |v| v >= 1.0);
    wait_value(lb1, "lbmesh_converged", |v| v == 0.0);

    // A host with a certificate from another CA tries to join. It refuses
    // lb1's certificate first (the client checks the server's first), so lb1
    // counts a refusal by the other side and the stranger an unknown CA.
    let stranger_dir = tempfile::tempdir().unwrap();
    let stranger = Daemon::start(DaemonOpts {
        node_id: "lb9".into(),
        seeds: vec![lb1.gossip],
        mesh: issue_peer_cert(stranger_dir.path(), "lb9"),
        ..DaemonOpts::default()
    });
    wait_value(
        lb1,
        "lbmesh_peer_connections_refused_total{reason=\"refused_by_peer\"}",
        |v| v >= 1.0,
    );
    wait_value(
        &stranger,
        "lbmesh_peer_connections_refused_total{reason=\"unknown_ca\"}",
        |v| v >= 1.0,
    );
    drop(stranger);

    // lb2 crashes: dead for lb1.
    m.peers[1].crash();
    wait_value(&m.peers[0], "lbmesh_peers{state=\"dead\"}", |v| v == 1.0);
    wait_value(&m.peers[0], "lbmesh_peers{state=\"live\"}", |v| v == 2.0);

    // Every metric the alert rules and the dashboard use exists.
    let deploy = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy");
    let text = metrics(&m.peers[0]);
    let mut checked = 0;
    for file in [
        deploy.join("prometheus/lbmesh-alerts.yml"),
        deploy.join("grafana/lbmesh-dashboard.json"),
    ] {
        let names = names_in(&file);
        assert!(names.len() > 10, "{}: {names:?}", file.display());
        for name in names {
            assert!(
                exposes(&text, &name),
                "{} uses {name}, which /metrics does not have:\n{text}",
                file.display()
            );
            checked += 1;
        }
    }
    assert!(checked > 30);
}

#[test]
fn the_alert_rules_and_the_dashboard_are_well_formed() {
    let deploy = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy");
    let rules = std::fs::read_to_string(deploy.join("prometheus/lbmesh-alerts.yml")).unwrap();
    let doc = &yaml_rust2::YamlLoader::load_from_str(&rules).unwrap()[0];
    let mut alerts = BTreeSet::new();
    for group in doc["groups"].as_vec().unwrap() {
        for rule in group["rules"].as_vec().unwrap() {
            let name = rule["alert"].as_str().expect("every rule is an alert");
            assert!(alerts.insert(name.to_owned()), "{name} twice");
            assert!(
                rule["expr"].as_str().is_some_and(|e| e.contains("lbmesh_")),
                "{name}"
            );
            assert!(
                ["warning", "critical"]
                    .contains(&rule["labels"]["severity"].as_str().unwrap_or("")),
                "{name} has no severity"
            );
            assert!(rule["annotations"]["summary"].as_str().is_some(), "{name}");
        }
    }
    assert!(alerts.len() >= 15, "{alerts:?}");

    let dash: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(deploy.join("grafana/lbmesh-dashboard.json")).unwrap(),
    )
    .unwrap();
    let panels = dash["panels"].as_array().unwrap();
    let mut ids = BTreeSet::new();
    for p in panels {
        assert!(
            ids.insert(p["id"].as_u64().unwrap()),
            "panel ids are unique"
        );
        let g = &p["gridPos"];
        assert!(
            g["x"].as_u64().unwrap() + g["w"].as_u64().unwrap() <= 24,
            "{p}"
        );
        if p["type"] != "row" {
            let targets = p["targets"].as_array().unwrap();
            assert!(!targets.is_empty(), "{p}");
            for t in targets {
                assert!(t["expr"].as_str().unwrap().contains("lbmesh_"), "{t}");
            }
        }
    }
}
