//! A stolen peer certificate on a running mesh: the impostor that joins as
//! lb2 while lb2 is alive is reported as a duplicate node id, and
//! `lbmesh ca revoke --node-id lb2` shuts it out of the running peers
//! within seconds; lb2 with a newly issued certificate comes back.

mod common;

use std::time::Duration;

use common::*;
use serde_json::Value;

fn frontend_on(d: &Daemon, port: u16) -> bool {
    d.get("/v1/frontends").1["frontends"]
        .as_array()
        .is_some_and(|f| f.iter().any(|x| x["port"] == port))
}

#[test]
fn a_stolen_certificate_is_reported_then_revoked_on_a_running_mesh() {
    let mut mesh = mesh_of(2, "quic");
    mesh.converged(&[0, 1]);
    let ca = mesh.dir.path().join("ca");
    // The impostor holds copies of lb2's certificate and key.
    let stolen = mesh.dir.path().join("stolen");
    std::fs::create_dir_all(&stolen).unwrap();
    for f in ["lb2.crt", "lb2.key"] {
        std::fs::copy(ca.join(f), stolen.join(f)).unwrap();
    }
    let lb1 = &mesh.peers[0];
    let impostor = Daemon::start(DaemonOpts {
        node_id: "lb2".into(),
        seeds: vec![lb1.gossip],
        token_file: Some(mesh.dir.path().join("token")),
        mesh: format!(
            "ca-cert = \"{}\"\ncert = \"{}\"\nkey = \"{}\"",
            ca.join("ca.crt").display(),
            stolen.join("lb2.crt").display(),
            stolen.join("lb2.key").display()
        ),
        ..DaemonOpts::default()
    });
    // Two live peers claim lb2: lb1 says so.
    let s = eventually(Duration::from_secs(30), "lb1 to report lb2 twice", || {
        let s = lb1.status();
        (s["duplicate_node_ids"] == serde_json::json!(["lb2"])).then_some(s)
    });
    let rows: Vec<&Value> = s["peers"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["node_id"] == "lb2")
        .collect();
    assert_eq!(rows.len(), 2, "{s}");
    assert!(rows.iter().all(|r| r["duplicate"] == true), "{s}");
    assert!(lb1.log().contains("two live peers claim one node id"));

    // Control: while the certificate is good, what the impostor accepts
    // reaches lb1.
    let backend = Backend::start("b");
    let before = free_port(&impostor.ip);
    impostor.add("imp", before, backend.addr);
    eventually(
        Duration::from_secs(20),
        "the impostor's write on lb1",
        || frontend_on(lb1, before).then_some(()),
    );

    let out = sh(
        &format!("{BIN} ca revoke --dir {} --node-id lb2", ca.display()),
        &[],
    );
    assert!(
        out.contains("revoked 1 certificate(s) of node lb2"),
        "{out}"
    );
    eventually(
        Duration::from_secs(15),
        "lb1 to load the revocation list",
        || {
            lb1.log()
                .contains("loaded a new peer certificate revocation list")
                .then_some(())
        },
    );
    // From now on nothing the impostor accepts reaches lb1.
    let after = free_port(&impostor.ip);
    impostor.add("imp", after, backend.addr);
    std::thread::sleep(Duration::from_secs(5));
    assert!(
        !frontend_on(lb1, after),
        "a write through the revoked certificate reached lb1"
    );
    assert!(
        impostor.log().contains("certificate") || lb1.log().contains("Revoked"),
        "no refusal logged"
    );
    // Counted with its reason.
    eventually(
        Duration::from_secs(15),
        "lb1 to count a revoked peer",
        || {
            let m = lb1.metrics();
            let n: u64 = m
                .lines()
                .find_map(|l| {
                    l.strip_prefix("lbmesh_peer_connections_refused_total{reason=\"revoked\"} ")
                })
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            (n > 0).then_some(())
        },
    );

    // The real lb2 gets a new certificate and is back in the mesh.
    sh(
        &format!("{BIN} ca issue --dir {} --node-id lb2", ca.display()),
        &[],
    );
    let lb2 = &mut mesh.peers[1];
    lb2.stop();
    lb2.spawn();
    let f = free_port(&lb2.ip);
    lb2.add("real", f, backend.addr);
    let lb1 = &mesh.peers[0];
    eventually(Duration::from_secs(30), "lb2's write on lb1 again", || {
        frontend_on(lb1, f).then_some(())
    });
    assert!(!frontend_on(lb1, after));
}
