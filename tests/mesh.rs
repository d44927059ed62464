//! Three `lbmesh serve` processes on 127.0.0.1, .2 and .3, each with its own
//! real HAProxy bound to its own address, replicating by gossip.

mod common;

use std::time::Duration;

use common::*;

fn mesh() -> Mesh {
    mesh_of(3, "quic")
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
