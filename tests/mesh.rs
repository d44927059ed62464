//! Three `lbmesh serve` processes on 127.0.0.1, .2 and .3, each with its own
//! real HAProxy bound to its own address, replicating by gossip.

mod common;

use std::time::{Duration, Instant};

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
    // The whole mesh starts together, as after a power cut.
    for p in m.peers.iter_mut() {
        p.spawn_process();
    }
    for p in &m.peers {
        p.wait_healthy();
    }
    // Nobody had caught up: the first did with the whole mesh, the others
    // with it or likewise; none waited to be alone.
    let how: Vec<String> = m
        .peers
        .iter()
        .map(|p| p.status()["mesh"]["caught_up_by"]["by"].to_string())
        .collect();
    assert!(how.iter().any(|h| h == "\"whole-mesh\""), "{how:?}");
    assert!(
        how.iter().all(|h| h == "\"whole-mesh\"" || h == "\"peer\""),
        "{how:?}"
    );
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

/// The registry digest a peer reports, and the node ids it sees live; None
/// while its API does not answer.
fn view_of(d: &Daemon) -> Option<(serde_json::Value, Vec<String>)> {
    let (code, s) = d.get("/v1/status");
    if code != 200 {
        return None;
    }
    let live = s["peers"]
        .as_array()?
        .iter()
        .filter(|p| p["live"] == true)
        .filter_map(|p| p["node_id"].as_str().map(str::to_owned))
        .collect();
    Some((s["registry"]["digest"].clone(), live))
}

/// kill -9 one peer and start it again a second later: it holds the mesh's
/// entries and sees every peer at once, and what it accepts reaches the
/// others at once.
fn a_restarted_peer_rejoins_at_once(transport: &str) {
    let mut m = mesh_of(3, transport);
    m.converged(&[0, 1, 2]);
    let port = free_port("127.0.0.1");
    let servers: Vec<Backend> = ["a", "b", "c", "d"]
        .iter()
        .map(|n| Backend::start(&format!("nodeport-{n}")))
        .collect();
    m.peers[0].add("traefik", port, servers[0].addr);
    m.peers[2].add("traefik", port, servers[1].addr);
    m.converged(&[0, 1, 2]);

    m.peers[1].crash();
    std::thread::sleep(Duration::from_secs(1));
    // A write the crashed peer has not seen.
    m.peers[0].add("traefik", port, servers[2].addr);
    let (want, _) = view_of(&m.peers[0]).expect("peer 1 answers");
    let started = Instant::now();
    m.peers[1].spawn_process();
    let caught_up = eventually(
        Duration::from_secs(30),
        "the restarted peer to hold every entry and see every peer",
        || {
            let (digest, live) = view_of(&m.peers[1])?;
            (digest == want
                && ["lb1", "lb2", "lb3"]
                    .iter()
                    .all(|n| live.iter().any(|l| l == n)))
            .then(|| started.elapsed())
        },
    );
    let written = Instant::now();
    let (code, v) = m.peers[1].hook(
        &serde_json::json!({
            "name": "traefik", "frontend-port": port.to_string(),
            "backend-port": servers[3].addr.port().to_string(),
            "dst-ip": servers[3].addr.ip().to_string(), "action": "add"
        }),
        "",
    );
    assert_eq!(code, 200, "{v}");
    let spread = eventually(
        Duration::from_secs(30),
        "the restarted peer's write at the others",
        || {
            [0, 2]
                .iter()
                .all(|&i| {
                    let (_, f) = m.peers[i].get(&format!("/v1/frontends/{port}"));
                    f["servers"].as_array().is_some_and(|s| s.len() == 4)
                })
                .then(|| written.elapsed())
        },
    );
    eprintln!(
        "{transport}: restarted peer caught up {:.2} s after it started; its write reached both others in {:.2} s",
        caught_up.as_secs_f64(),
        spread.as_secs_f64()
    );
    assert!(
        caught_up < Duration::from_secs(3),
        "{transport}: the restarted peer caught up only after {caught_up:?}"
    );
    assert!(
        spread < Duration::from_secs(2),
        "{transport}: the restarted peer's write took {spread:?} to reach the others"
    );
}

#[test]
fn a_restarted_peer_rejoins_at_once_on_quic() {
    a_restarted_peer_rejoins_at_once("quic");
}

#[test]
fn a_restarted_peer_rejoins_at_once_on_udp() {
    a_restarted_peer_rejoins_at_once("udp");
}

/// `lbmesh keepalived check` against one peer: (passed, what it printed).
fn keepalived_check(d: &Daemon) -> (bool, String) {
    let out = std::process::Command::new(BIN)
        .args(["keepalived", "check", "--api", &d.url("")])
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

fn servers(d: &Daemon) -> u64 {
    d.status()["registry"]["servers"].as_u64().unwrap()
}

#[test]
fn a_peer_that_lost_its_disk_fails_the_check_until_it_holds_what_the_mesh_holds() {
    let mut m = mesh_of(3, "quic");
    m.converged(&[0, 1, 2]);
    let port = free_port("127.0.0.1");
    let a = Backend::start("nodeport-a");
    let b = Backend::start("nodeport-b");
    m.peers[0].add("traefik", port, a.addr);
    m.peers[2].add("traefik", port, b.addr);
    m.converged(&[0, 1, 2]);

    // Peer 2 dies with its disk (and its HAProxy); the others freeze, so
    // it starts again among peers it cannot hear yet.
    let haproxy = m.peers[1].haproxy_master_pid();
    m.peers[1].crash();
    if let Some(pid) = haproxy {
        signal(pid, "KILL");
    }
    std::fs::remove_dir_all(&m.peers[1].data_dir).unwrap();
    let frozen = [m.peers[0].pid(), m.peers[2].pid()];
    for pid in frozen {
        signal(pid, "STOP");
    }
    m.peers[1].spawn_process();
    let api_up = eventually(
        Duration::from_secs(20),
        "the API of the restarted peer",
        || (m.peers[1].get("/healthz").0 != 0).then(Instant::now),
    );
    // keepalived asks every second; for three seconds it hears no.
    while api_up.elapsed() < Duration::from_secs(3) {
        let (ok, out) = keepalived_check(&m.peers[1]);
        assert!(!ok, "a peer holding nothing passed the check: {out}");
        assert!(out.contains("has not caught up with the mesh"), "{out}");
        std::thread::sleep(Duration::from_millis(300));
    }
    assert_eq!(servers(&m.peers[1]), 0, "the peers were frozen");

    // A peer whose catch-up waits still serves what it is given: its
    // applier holds a change back while it catches up, for a few seconds
    // at most.
    let c = Backend::start("nodeport-c");
    let own = free_port("127.0.0.1");
    m.peers[1].add("mqtt", own, c.addr);
    assert_eq!(
        greeting(m.peers[1].frontend(own)).as_deref(),
        Some("nodeport-c")
    );
    assert!(!keepalived_check(&m.peers[1]).0);

    for pid in frozen {
        signal(pid, "CONT");
    }
    // The moment it passes, it holds every server the mesh holds.
    eventually(Duration::from_secs(20), "the check to pass", || {
        keepalived_check(&m.peers[1]).0.then_some(())
    });
    assert_eq!(servers(&m.peers[1]), 3, "{}", m.peers[1].status());
    let s = m.peers[1].status();
    assert_eq!(s["mesh"]["caught_up"], true, "{s}");
    assert_eq!(s["mesh"]["caught_up_by"]["by"], "peer", "{s}");
}

#[test]
fn a_single_peer_whose_only_seed_is_itself_is_not_held_back() {
    let m = mesh_of(1, "quic");
    let s = m.peers[0].status();
    assert_eq!(s["mesh"]["caught_up_by"]["by"], "no-seeds", "{s}");
    assert!(keepalived_check(&m.peers[0]).0);
}

#[test]
fn a_lag_that_began_while_nobody_asked_is_reported_with_its_true_age() {
    let m = mesh_with(3, "quic", "[keepalived]\nmax-lag = \"2s\"\n");
    m.converged(&[0, 1, 2]);
    // Peer 2 cannot bind the new frontend (its port is taken there), so its
    // HAProxy config differs from the other two once they run it.
    let port = free_port(&m.peers[1].ip);
    let _squatter = std::net::TcpListener::bind((m.peers[1].ip.as_str(), port)).unwrap();
    let a = Backend::start("nodeport-a");
    let unix_ms = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64
    };
    let before = m.peers[0].status()["haproxy"]["config_digest"].clone();
    m.peers[0].add("traefik", port, a.addr);
    // The difference begins when peers 1 and 3 both run the new config;
    // peer 2 is not asked anything.
    let began = eventually(Duration::from_secs(20), "peers 1 and 3 to apply", || {
        [0, 2]
            .iter()
            .all(|&i| {
                let c = m.peers[i].status()["haproxy"]["config_digest"].clone();
                c != before && c == m.peers[0].status()["haproxy"]["config_digest"]
            })
            .then(unix_ms)
    });
    std::thread::sleep(Duration::from_secs(4));
    let (code, health) = m.peers[1].get("/healthz");
    let asked = unix_ms();
    assert_eq!(code, 503, "{health}");
    let line = health["problems"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| p.as_str())
        .find(|p| p.contains("has differed from what most live peers serve"))
        .unwrap_or_else(|| panic!("no lag reported: {health}"))
        .to_owned();
    let secs: u64 = line
        .rsplit("for ")
        .next()
        .and_then(|t| t.trim_end_matches(" s").parse().ok())
        .unwrap_or_else(|| panic!("{line}"));
    let s = m.peers[1].status();
    let since = s["mesh"]["lagging_since_ms"].as_u64().expect("lagging");
    // Gossip and digest publication take a moment to bring the news.
    assert!(
        since + 500 >= began && since <= began + 1_500,
        "the difference began at {began}, the lag is timed from {since}: {s}"
    );
    assert!(
        secs + 1 >= (asked - since) / 1000 && secs >= 3,
        "a lag of {} ms reported as {secs} s: {line}",
        asked - since
    );
}

#[test]
fn right_after_an_applied_write_the_own_row_is_current_and_converged_tells_the_truth() {
    let m = mesh_of(3, "quic");
    m.converged(&[0, 1, 2]);
    let port = free_port("127.0.0.1");
    let backends: Vec<Backend> = (0..5)
        .map(|i| Backend::start(&format!("nodeport-{i}")))
        .collect();
    for b in &backends {
        m.peers[0].add("traefik", port, b.addr);
        let s = m.peers[0].status();
        let digest = &s["registry"]["digest"];
        let peers = s["peers"].as_array().unwrap();
        let me = peers.iter().find(|p| p["node_id"] == "lb1").unwrap();
        assert_eq!(&me["registry_digest"], digest, "own row behind: {s}");
        assert_eq!(me["config_digest"], s["haproxy"]["config_digest"], "{s}");
        if s["converged"] == true {
            for p in peers.iter().filter(|p| p["live"] == true) {
                assert_eq!(&p["registry_digest"], digest, "converged while {s}");
            }
        }
    }
}
