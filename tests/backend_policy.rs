//! The backend address policy against real daemons and HAProxy: loopback and
//! cloud metadata refused by default, no forwarding loop by one registration
//! or by two, and a peer with a narrower policy that does not serve what
//! another peer accepted.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use serde_json::{Value, json};

fn hook_add(d: &Daemon, name: &str, frontend: u16, ip: &str, port: u16) -> (u16, Value) {
    d.hook(
        &json!({
            "name": name, "frontend-port": frontend.to_string(),
            "backend-port": port.to_string(), "dst-ip": ip, "action": "add"
        }),
        "",
    )
}

#[test]
fn loopback_and_metadata_need_the_operator_and_a_loop_is_never_built() {
    // The default policy: every unicast address but loopback and link-local.
    let strict = Daemon::start(DaemonOpts {
        toml: "[haproxy]\ncheck-interval = \"300ms\"\n".into(),
        ..DaemonOpts::default()
    });
    let backend = Backend::start("local");
    let f = free_port(&strict.ip);
    for ip in [
        "127.0.0.1",
        "::ffff:127.0.0.1",
        "169.254.169.254",
        "64:ff9b::a9fe:a9fe",
    ] {
        let (code, v) = hook_add(&strict, "svc", f, ip, backend.addr.port());
        assert_eq!(code, 403, "{ip}: {v}");
        assert!(
            v["message"].as_str().unwrap().contains("allowed-backends"),
            "{ip}: {v}"
        );
    }
    assert!(
        strict.get("/v1/frontends").1["frontends"]
            .as_array()
            .unwrap()
            .is_empty()
    );

    // Control: the operator lists loopback, and the same registration is served.
    let lab = Daemon::start(DaemonOpts::default());
    let f1 = free_port(&lab.ip);
    lab.add("svc", f1, backend.addr);
    assert_eq!(greeting(lab.frontend(f1)).as_deref(), Some("local"));

    // One registration: a backend that is this load balancer on a frontend
    // port, or on lbmesh's own ports.
    let lb_ip = lab.ip.clone();
    for (what, ip, port) in [
        ("its own frontend", lb_ip.as_str(), f1),
        ("another loopback address, same frontend", "127.0.0.1", f1),
        ("the API port", lb_ip.as_str(), lab.api.port()),
        ("the gossip port", lb_ip.as_str(), lab.gossip.port()),
    ] {
        let f2 = free_port(&lab.ip);
        let (code, v) = hook_add(&lab, "loop", f2, ip, port);
        assert_eq!(code, 403, "{what}: {v}");
        assert_eq!(v["error"], "forwarding_loop", "{what}: {v}");
        // A backend pointing at its own new frontend port.
        let (code, v) = hook_add(&lab, "loop", f2, ip, f2);
        assert_eq!(code, 403, "{what} (self): {v}");
    }

    // Two registrations: A → LB:B is fine while B is no frontend; then B
    // cannot be opened at all (by anyone), and B → LB:A is refused.
    let (a, b) = (free_port(&lab.ip), free_port(&lab.ip));
    let (code, v) = hook_add(&lab, "first", a, &lb_ip, b);
    assert_eq!(code, 200, "{v}");
    let (code, v) = hook_add(&lab, "second", b, &lb_ip, a);
    assert_eq!(code, 403, "{v}");
    assert_eq!(v["error"], "forwarding_loop", "{v}");
    let (code, v) = hook_add(&lab, "second", b, "127.0.0.1", backend.addr.port());
    assert_eq!(code, 403, "opening frontend B while A points at it: {v}");
    assert!(
        v["message"]
            .as_str()
            .unwrap()
            .contains(&format!("frontend port {b} cannot be opened")),
        "{v}"
    );
    // The first frontend stays what it is, and the others keep serving.
    lab.in_step();
    assert!(!lab.haproxy_config().contains(&format!("bind {lb_ip}:{b}")));
    assert_eq!(greeting(lab.frontend(f1)).as_deref(), Some("local"));
    let s = lab.status();
    assert_eq!(s["haproxy"]["in_step"], true);
}

#[test]
fn a_peer_with_a_narrower_policy_does_not_serve_what_it_would_refuse() {
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "policy-test-token-0123456789abcdef\n").unwrap();
    let ips = [test_ip(), test_ip()];
    let ports: Vec<u16> = ips.iter().map(|ip| free_udp_port(ip)).collect();
    let seeds: Vec<SocketAddr> = ips
        .iter()
        .zip(&ports)
        .map(|(ip, p)| format!("{ip}:{p}").parse().unwrap())
        .collect();
    let wide_port = free_port(&ips[0]);
    let narrow_port = free_port(&ips[0]);
    let start = |i: usize, registry: &str| {
        Daemon::start(DaemonOpts {
            ip: ips[i].clone(),
            node_id: format!("lb{}", i + 1),
            gossip_port: Some(ports[i]),
            seeds: seeds.clone(),
            token_file: Some(token.clone()),
            mesh: "transport = \"udp\"\ngossip-interval = \"100ms\"".into(),
            toml: fast_toml(registry, ""),
            ..DaemonOpts::default()
        })
    };
    let lb1 = start(0, "");
    // lb2 allows only one frontend port and no loopback backends beyond 127.0.0.1/32.
    let lb2 = start(1, &format!("allowed-ports = [\"{narrow_port}\"]"));
    let backend = Backend::start("b");
    // Accepted by lb1, outside lb2's frontend ports.
    lb1.add("wide", wide_port, backend.addr);
    // Inside both policies: served everywhere (the mesh still replicates).
    lb1.add("narrow", narrow_port, backend.addr);
    let refused = eventually(
        Duration::from_secs(20),
        "lb2 to list the refused entry",
        || {
            let s = lb2.status();
            let r = s["refused"].as_array()?.clone();
            (!r.is_empty() && s["haproxy"]["in_step"] == true).then_some((s, r))
        },
    );
    let (s2, list) = refused;
    assert_eq!(list.len(), 1, "{list:?}");
    assert_eq!(list[0]["peer"], "lb1");
    assert_eq!(list[0]["reason"], "port_not_allowed");
    assert_eq!(list[0]["frontend_port"], wide_port);
    assert_eq!(s2["refused_total"], 1);
    // Not rendered, not served on lb2; served on lb1.
    let cfg2 = lb2.haproxy_config();
    assert!(!cfg2.contains(&format!(":{wide_port}")), "{cfg2}");
    assert!(cfg2.contains(&format!(":{narrow_port}")), "{cfg2}");
    assert_eq!(greeting(lb1.frontend(wide_port)).as_deref(), Some("b"));
    assert_eq!(
        greeting(format!("{}:{wide_port}", lb2.ip).parse().unwrap()),
        None
    );
    assert_eq!(
        greeting(format!("{}:{narrow_port}", lb2.ip).parse().unwrap()).as_deref(),
        Some("b")
    );
    // Counted in metrics with the peer and the reason.
    let metrics = lb2_metrics(&lb2);
    assert!(
        metrics.contains("lbmesh_refused_entries{peer=\"lb1\",reason=\"port_not_allowed\"} 1"),
        "{metrics}"
    );
    // The difference of policies is visible on both peers.
    for d in [&lb1, &lb2] {
        let s = eventually(Duration::from_secs(10), "policy digests published", || {
            let s = d.status();
            (s["policies_differ"] == true).then_some(s)
        });
        let digests: Vec<&Value> = s["peers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| &p["policy_digest"])
            .collect();
        assert_eq!(digests.len(), 2);
        assert_ne!(digests[0], digests[1], "{s}");
    }
    // A delete accepted by lb2 still withdraws the server on lb1.
    let (code, v) = lb2.hook(
        &json!({
            "name": "wide", "frontend-port": wide_port.to_string(),
            "backend-port": backend.addr.port().to_string(),
            "dst-ip": backend.addr.ip().to_string(), "action": "delete"
        }),
        "",
    );
    assert_eq!(code, 200, "{v}");
    eventually(
        Duration::from_secs(20),
        "lb1 to drop the deleted server",
        || (greeting(lb1.frontend(wide_port)).is_none()).then_some(()),
    );
}

fn lb2_metrics(d: &Daemon) -> String {
    let out = std::process::Command::new("curl")
        .args(["-s", &d.url("/metrics")])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}
