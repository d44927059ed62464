//! Three `lbmesh serve` processes on 127.0.0.1, .2 and .3, each with its own
//! real HAProxy bound to its own address, replicating by gossip.

mod common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use common::*;

struct Mesh {
    _dir: tempfile::TempDir,
    peers: Vec<Daemon>,
}

/// `transport` is "quic" (with a cluster CA) or "udp".
fn mesh_with(transport: &str) -> Mesh {
    let dir = tempfile::tempdir().unwrap();
    let token: PathBuf = dir.path().join("token");
    std::fs::write(&token, "mesh-test-token-0123456789abcdef\n").unwrap();
    let ips = ["127.0.0.1", "127.0.0.2", "127.0.0.3"];
    let ports: Vec<u16> = ips.iter().map(|ip| free_udp_port(ip)).collect();
    let seeds: Vec<SocketAddr> = ips
        .iter()
        .zip(&ports)
        .map(|(ip, p)| format!("{ip}:{p}").parse().unwrap())
        .collect();
    let peers = ips
        .iter()
        .enumerate()
        .map(|(i, ip)| {
            Daemon::start(DaemonOpts {
                ip: ip.to_string(),
                node_id: format!("lb{}", i + 1),
                gossip_port: Some(ports[i]),
                seeds: seeds.clone(),
                token_file: Some(token.clone()),
                mesh: if transport == "quic" {
                    issue_peer_cert(dir.path(), &format!("lb{}", i + 1))
                } else {
                    "transport = \"udp\"".into()
                },
                ..DaemonOpts::default()
            })
        })
        .collect();
    Mesh { _dir: dir, peers }
}

fn mesh() -> Mesh {
    mesh_with("quic")
}

impl Mesh {
    /// Waits until every running peer sees the others it should and reports
    /// a converged mesh: same registry and config digests on all live peers.
    fn converged(&self, live: &[usize]) {
        for &i in live {
            let p = &self.peers[i];
            eventually(Duration::from_secs(20), "the mesh to converge", || {
                let s = p.status();
                let peers = s["peers"].as_array()?;
                let live_ids: Vec<&str> = peers
                    .iter()
                    .filter(|x| x["live"] == true)
                    .filter_map(|x| x["node_id"].as_str())
                    .collect();
                let want: Vec<String> = live.iter().map(|j| format!("lb{}", j + 1)).collect();
                (s["converged"] == true
                    && s["haproxy"]["in_step"] == true
                    && want.iter().all(|w| live_ids.contains(&w.as_str())))
                .then_some(())
            });
        }
        let digests: Vec<serde_json::Value> = live
            .iter()
            .map(|&i| self.peers[i].status()["registry"]["digest"].clone())
            .collect();
        assert!(
            digests.windows(2).all(|w| w[0] == w[1]),
            "registry digests differ: {digests:?}"
        );
    }
}

#[test]
fn a_registration_at_one_peer_is_served_by_all_and_survives_crashes_deletes_and_restarts() {
    let mut m = mesh();
    m.converged(&[0, 1, 2]);
    let a = Backend::start("nodeport-a");
    let b = Backend::start("nodeport-b");
    let port = free_port("127.0.0.1");

    // The original curl to peer 2 → traffic through all three frontends.
    let out = sh(
        r#"curl -s -H "Content-Type:application/json" -H "X-Funkypenguin-Token:$WEBHOOK_TOKEN" -X POST -d "{\"dst-ip\":\"127.0.0.1\",\"frontend-port\":\"$FRONTEND_PORT\",\"backend-port\":\"$BACKEND_PORT\",\"action\":\"add\",\"name\":\"traefik\"}" $WEBHOOK"#,
        &[
            ("WEBHOOK", &m.peers[1].url("/hooks/update-haproxy")),
            ("WEBHOOK_TOKEN", &m.peers[1].token),
            ("FRONTEND_PORT", &port.to_string()),
            ("BACKEND_PORT", &a.addr.port().to_string()),
        ],
    );
    assert!(out.contains("\"registered\""), "{out}");
    for p in &m.peers {
        let got = eventually(
            Duration::from_secs(10),
            "traffic through every peer",
            || greeting(p.frontend(port)),
        );
        assert_eq!(got, "nodeport-a", "through {}", p.ip);
    }
    // A second server, accepted at peer 1.
    m.peers[0].add("traefik", port, b.addr);
    m.converged(&[0, 1, 2]);

    // SIGKILL peer 2: peers 1 and 3 keep serving what it accepted.
    m.peers[1].crash();
    std::thread::sleep(Duration::from_secs(2));
    for i in [0, 2] {
        let seen: Vec<String> = (2..30)
            .filter_map(|c| greeting_from(&format!("127.0.5.{c}"), m.peers[i].frontend(port)))
            .collect();
        assert!(
            seen.iter().any(|g| g == "nodeport-a"),
            "peer {} lost peer 2's server: {seen:?}",
            i + 1
        );
    }

    // Delete at peer 3 the server that peer 1 accepted: gone everywhere.
    m.peers[2].delete("traefik", port, b.addr);
    m.converged(&[0, 2]);
    for i in [0, 2] {
        for c in 2..20 {
            assert_eq!(
                greeting_from(&format!("127.0.6.{c}"), m.peers[i].frontend(port)).as_deref(),
                Some("nodeport-a"),
                "peer {} still sends to the deleted server",
                i + 1
            );
        }
    }

    // Stop all three (peer 2 is down already) and start them again.
    for i in [0, 2] {
        assert!(m.peers[i].stop().success());
    }
    // The crashed peer's HAProxy is still running; restarting adopts it.
    for p in m.peers.iter_mut() {
        p.spawn();
    }
    m.converged(&[0, 1, 2]);
    for p in &m.peers {
        let got = eventually(Duration::from_secs(10), "traffic after the restart", || {
            greeting(p.frontend(port))
        });
        assert_eq!(
            got, "nodeport-a",
            "through {} after restarting everything",
            p.ip
        );
    }
    let s = m.peers[2].status();
    assert_eq!(s["registry"]["servers"], 1, "{s}");
}

#[test]
fn status_shows_every_peer_and_the_cli_prints_the_mesh() {
    let m = mesh();
    m.converged(&[0, 1, 2]);
    let out = sh(
        &format!(
            "{BIN} status --api {} --token-file {}",
            m.peers[0].url(""),
            m.peers[0].token_file.display()
        ),
        &[],
    );
    for id in ["lb1", "lb2", "lb3"] {
        assert!(out.contains(id), "{out}");
    }
    assert!(out.contains("mesh converged"), "{out}");
}
