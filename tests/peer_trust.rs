//! A certified peer speaks only for itself. A rogue holding a valid
//! certificate (for "lb3", a node that is not running: a stolen, not yet
//! revoked certificate) talks chitchat over QUIC to real daemons and tries
//! to invent peers and to relay a forged VRRP claim for a real peer. Every
//! check has a control: the same channel works for what the rogue may say
//! about itself.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use chitchat::transport::{Socket, Transport};
use chitchat::{
    ChitchatId, ChitchatMessage, DeletionStatus, DeltaSerializer, Digest, VersionedValue,
};
use common::*;
use lbmesh::mesh::quic::QuicTransport;
use lbmesh::mesh::trust::MAX_UNVERIFIED;
use lbmesh::tls::{PeerTls, PeerTlsFiles};
use serde_json::Value;

const GHOSTS: usize = MAX_UNVERIFIED + 20;

/// What the rogue says about one node: its heartbeat and key-values.
struct About {
    id: ChitchatId,
    kvs: Vec<(String, String, u64)>,
}

/// A SynAck carrying `about` (digest and delta), as chitchat would send it.
fn message(about: &[About], heartbeat: u64) -> ChitchatMessage {
    let mut digest = Digest::default();
    let mut delta = DeltaSerializer::with_mtu(60_000);
    for a in about {
        let max = a.kvs.iter().map(|kv| kv.2).max().unwrap_or(0);
        digest.add_node(a.id.clone(), heartbeat.into(), 0, max);
        assert!(delta.try_add_node(a.id.clone(), 0, 0));
        for (k, v, version) in &a.kvs {
            assert!(delta.try_add_kv(
                k,
                VersionedValue {
                    value: v.clone(),
                    version: *version,
                    status: DeletionStatus::Set,
                }
            ));
        }
    }
    ChitchatMessage::SynAck {
        digest,
        delta: delta.finish(),
    }
}

/// Sends `about` to `to` every 100 ms for `for_`, heartbeats rising.
async fn say(
    socket: &mut Box<dyn Socket>,
    to: SocketAddr,
    about: impl Fn() -> Vec<About>,
    beat: &mut u64,
    for_: Duration,
) {
    let end = Instant::now() + for_;
    while Instant::now() < end {
        *beat += 1;
        socket.send(to, message(&about(), *beat)).await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn peer_ids(s: &Value) -> Vec<String> {
    s["peers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["node_id"].as_str().unwrap().to_owned())
        .collect()
}

fn metric(d: &Daemon, name: &str) -> Option<f64> {
    d.metrics()
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{name} "))?.trim().parse().ok())
}

fn notify(d: &Daemon, state: &str) {
    let out = std::process::Command::new(BIN)
        .args(["keepalived", "notify", "--api", &d.url("")])
        .arg("--token-file")
        .arg(&d.token_file)
        .args(["INSTANCE", "VI_LBMESH", state, "150"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn may_hold(d: &Daemon) -> bool {
    d.status()["vrrp"]["failover"]["may_hold"] == true
}

/// Waits up to `within` for `f`; returns how long it took.
fn wait_for(within: Duration, what: &str, d: &Daemon, mut f: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !f() {
        assert!(
            start.elapsed() < within,
            "timed out waiting for {what}; log:\n{}",
            d.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    start.elapsed()
}

#[test]
fn a_stolen_certificate_speaks_only_for_its_own_node() {
    let m = mesh_of(2, "quic");
    m.converged(&[0, 1]);
    let (victim, lb2) = (&m.peers[0], &m.peers[1]);
    issue_peer_cert(m.dir.path(), "lb3");
    let ca = m.dir.path().join("ca");
    let files = PeerTlsFiles {
        ca_cert: ca.join("ca.crt"),
        cert: ca.join("lb3.crt"),
        key: ca.join("lb3.key"),
    };
    let tls = PeerTls::load(&files, &"lb3".parse().unwrap()).unwrap();
    notify(victim, "MASTER");
    notify(lb2, "BACKUP");
    wait_for(Duration::from_secs(10), "lb1 to hold", victim, || {
        may_hold(victim)
    });
    let lb2_row = victim.status()["peers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["node_id"] == "lb2")
        .cloned()
        .unwrap();
    let lb2_id = ChitchatId::new(
        "lb2",
        lb2_row["incarnation"].as_u64().unwrap(),
        lb2_row["gossip_addr"].as_str().unwrap().parse().unwrap(),
    );

    let ip = test_ip();
    let rogue_addr: SocketAddr = format!("{ip}:{}", free_udp_port(&ip)).parse().unwrap();
    let me = ChitchatId::new("lb3", now_ms(), rogue_addr);
    let (own_port, ghost_port) = (free_port("127.0.0.1"), free_port("127.0.0.1"));
    let ghosts: Vec<ChitchatId> = (0..GHOSTS)
        .map(|n| {
            let addr = format!("127.0.0.9:{}", 20_000 + n).parse().unwrap();
            ChitchatId::new(format!("ghost{n}"), 1, addr)
        })
        .collect();

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut beat = 0u64;
    let transport = QuicTransport::new(tls, Duration::from_millis(100));
    let mut socket = rt.block_on(transport.open(rogue_addr)).unwrap();

    // (a) Invented node ids at unused addresses, each with a server.
    let (own_key, own_value) = rogue_entry(own_port);
    let (ghost_key, ghost_value) = rogue_entry(ghost_port);
    rt.block_on(say(
        &mut socket,
        victim.gossip,
        || {
            let mut about = vec![About {
                id: me.clone(),
                kvs: vec![(own_key.clone(), own_value.clone(), 1)],
            }];
            about.extend(ghosts.iter().map(|g| About {
                id: g.clone(),
                kvs: vec![(ghost_key.clone(), ghost_value.clone(), 1)],
            }));
            about
        },
        &mut beat,
        Duration::from_secs(3),
    ));
    // Control: what lb3 says about itself is served.
    wait_for(Duration::from_secs(10), "lb3's own server", victim, || {
        victim.frontend_ports().contains(&(own_port as u64))
    });
    let s = victim.status();
    assert!(peer_ids(&s).contains(&"lb3".to_owned()), "{s}");
    assert!(
        !victim.frontend_ports().contains(&(ghost_port as u64)),
        "a server of an invented node is served"
    );
    assert!(
        !peer_ids(&s).iter().any(|p| p.starts_with("ghost")),
        "an invented node is shown as a peer: {s}"
    );
    let unverified = s["mesh"]["unverified_peers"].as_array().unwrap();
    assert_eq!(unverified.len(), MAX_UNVERIFIED, "{s}");
    assert!(
        unverified
            .iter()
            .all(|u| u.as_str().unwrap().starts_with("ghost"))
    );
    assert_eq!(
        metric(victim, "lbmesh_unverified_peers"),
        Some(MAX_UNVERIFIED as f64)
    );
    assert!(metric(victim, "lbmesh_unverified_gossip_dropped").unwrap() > 0.0);
    // lb2 did not take them either.
    assert!(!lb2.frontend_ports().contains(&(ghost_port as u64)));

    // (b) A forged claim relayed for lb2 (connected): "MASTER, newer than
    // lb1", at a version far beyond lb2's own. The holder keeps the VIP.
    let forged = || {
        vec![
            About {
                id: me.clone(),
                kvs: vec![(own_key.clone(), own_value.clone(), 1)],
            },
            About {
                id: lb2_id.clone(),
                kvs: vec![(
                    "meta/vrrp".to_owned(),
                    format!("MASTER VI_LBMESH {}", now_ms()),
                    1_000_000,
                )],
            },
        ]
    };
    rt.block_on(say(
        &mut socket,
        victim.gossip,
        forged,
        &mut beat,
        Duration::from_secs(1),
    ));
    // While and right after it is sent, lb2's row keeps lb2's own claim.
    for _ in 0..10 {
        let s = victim.status();
        let row = s["peers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["node_id"] == "lb2")
            .unwrap();
        assert!(
            row["vrrp_state"].as_str().unwrap().starts_with("BACKUP"),
            "the forged claim reached lb2's row: {row}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let s = victim.status();
    assert!(
        may_hold(victim),
        "lb1 gave up the VIP: {}",
        s["vrrp"]["failover"]
    );
    assert_eq!(s["vrrp"]["failover"]["split_brain_stepdowns"], 0, "{s}");

    // Control: lb3's claim about itself (connected, first hand) makes lb1
    // step down …
    let claim = format!("MASTER VI_LBMESH {}", now_ms());
    let own_claim = || {
        vec![About {
            id: me.clone(),
            kvs: vec![
                (own_key.clone(), own_value.clone(), 1),
                ("meta/vrrp".to_owned(), claim.clone(), 2),
            ],
        }]
    };
    rt.block_on(say(
        &mut socket,
        victim.gossip,
        own_claim,
        &mut beat,
        Duration::from_secs(3),
    ));
    wait_for(
        Duration::from_secs(10),
        "lb1 to step down for lb3",
        victim,
        || {
            victim.status()["vrrp"]["failover"]["reason"]
                .as_str()
                .is_some_and(|r| r.contains("lb3 holds the VIP"))
        },
    );
    // … and once the claimant's link is gone (it sends no VRRP adverts and
    // is no longer authenticated), lb1 holds again, within a bound.
    drop(socket);
    let back = wait_for(Duration::from_secs(15), "lb1 to hold again", victim, || {
        may_hold(victim)
    });
    println!(
        "lb1 held again {} ms after the claimant left",
        back.as_millis()
    );
    assert!(
        victim
            .log()
            .contains("split brain over (no live peer holds the VIP)")
    );
    drop(rt);
}
