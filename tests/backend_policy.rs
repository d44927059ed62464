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

/// Two peers over gossip, each with its own `[registry]` keys; the data
/// directory holding the shared token lives as long as the peers.
fn pair(lb1_registry: &str, lb2_registry: &str) -> (tempfile::TempDir, Daemon, Daemon) {
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
    let lb1 = start(0, lb1_registry);
    let lb2 = start(1, lb2_registry);
    (dir, lb1, lb2)
}

#[test]
fn a_peer_with_a_narrower_policy_does_not_serve_what_it_would_refuse() {
    let ip = test_ip();
    let wide_port = free_port(&ip);
    let narrow_port = free_port(&ip);
    // lb2 allows only one frontend port.
    let (_dir, lb1, lb2) = pair("", &format!("allowed-ports = [\"{narrow_port}\"]"));
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
    let metrics = lb2.metrics();
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

/// The frontend ports lb2's HAProxy config binds.
fn bound_ports(d: &Daemon) -> Vec<u16> {
    let mut ports: Vec<u16> = d
        .haproxy_config()
        .lines()
        .filter_map(|l| l.trim().strip_prefix("bind "))
        .filter_map(|b| {
            b.split_whitespace()
                .next()?
                .rsplit_once(':')?
                .1
                .parse()
                .ok()
        })
        .collect();
    ports.sort_unstable();
    ports.dedup();
    ports
}

#[test]
fn a_peer_with_narrower_bounds_serves_only_what_fits_them() {
    // lb2 serves at most 2 frontends, 2 servers per frontend, 4 in all.
    let (_dir, lb1, lb2) = pair(
        "",
        "max-frontends = 2\nmax-servers-per-frontend = 2\nmax-servers = 4",
    );
    let backends: Vec<Backend> = (0..5).map(|i| Backend::start(&format!("b{i}"))).collect();
    let [a, b, c] = [0, 1, 2].map(|_| free_port(&lb1.ip));
    // Accepted by lb1 oldest first: three servers on a, one on b, one on c.
    for (name, port, backend) in [
        ("a", a, &backends[0]),
        ("a", a, &backends[1]),
        ("a", a, &backends[2]),
        ("b", b, &backends[0]),
        ("c", c, &backends[0]),
    ] {
        lb1.add(name, port, backend.addr);
        std::thread::sleep(Duration::from_millis(20));
    }
    let s2 = eventually(
        Duration::from_secs(20),
        "lb2 to leave out what is beyond its bounds",
        || {
            let s = lb2.status();
            (s["refused_total"] == 2 && s["haproxy"]["in_step"] == true).then_some(s)
        },
    );
    let mut list: Vec<(u64, String, String)> = s2["refused"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["frontend_port"].as_u64().unwrap(),
                r["peer"].as_str().unwrap().to_owned(),
                r["reason"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    list.sort();
    let mut want = vec![
        (
            u64::from(a),
            "lb1".into(),
            "max_servers_per_frontend".into(),
        ),
        (u64::from(c), "lb1".into(), "max_frontends".into()),
    ];
    want.sort();
    assert_eq!(list, want, "{s2}");
    // The newest server of a is the one left out.
    let left = s2["refused"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["frontend_port"] == a)
        .unwrap();
    assert_eq!(left["server"], backends[2].addr.to_string(), "{s2}");
    // lb2 renders and serves a and b only; lb1 serves all three.
    assert_eq!(bound_ports(&lb2), vec![a.min(b), a.max(b)]);
    assert_eq!(bound_ports(&lb1).len(), 3);
    assert!(greeting(lb2.frontend(a)).is_some());
    assert_eq!(greeting(lb2.frontend(c)), None);
    assert_eq!(greeting(lb1.frontend(c)).as_deref(), Some("b0"));
    let metrics = lb2.metrics();
    for reason in ["max_frontends", "max_servers_per_frontend"] {
        assert!(
            metrics.contains(&format!(
                "lbmesh_refused_entries{{peer=\"lb1\",reason=\"{reason}\"}} 1\n"
            )),
            "{reason}: {metrics}"
        );
    }
    // lb2 holds five servers, more than its max-servers (4), and serves
    // three. Its own client is refused for what it serves (two frontends)...
    let d = free_port(&lb2.ip);
    let (code, v) = hook_add(&lb2, "d", d, "127.0.0.1", backends[4].addr.port());
    assert_eq!(code, 409, "{v}");
    assert_eq!(v["error"], "registry_full", "{v}");
    assert_eq!(
        v["message"], "registry full: 2 frontends served (max-frontends)",
        "{v}"
    );
    // ...never for what it holds and leaves out: the fourth place is free.
    let (code, v) = hook_add(&lb2, "b", b, "127.0.0.1", backends[3].addr.port());
    assert_eq!(code, 200, "{v}");
}
