//! A whole-mesh restart with one peer gone for good loses nothing: every peer
//! keeps on disk the entries it holds from the others, and carries on those
//! of a peer that is gone until their leases end. In-process peers with
//! memory disks on tokio's paused clock.

use std::net::SocketAddr;
use std::time::Duration;

use lbmesh::clock::Clock;
use lbmesh::mesh::cluster::{Cluster, ClusterSettings};
use lbmesh::registry::{Command, Key};
use tokio::time::Instant;

fn key(server: &str) -> Key {
    Key {
        frontend: 443,
        server: server.parse::<SocketAddr>().unwrap(),
    }
}

fn add(server: &str, ttl: Duration) -> Command {
    Command::Register {
        key: key(server),
        name: "traefik".parse().unwrap(),
        send_proxy: false,
        ttl: Some(ttl),
    }
}

fn serves(c: &Cluster, i: usize, server: &str) -> bool {
    c.nodes[i]
        .view()
        .frontends
        .get(&443)
        .is_some_and(|f| f.servers.contains_key(&key(server).server))
}

async fn eventually(what: &str, within: Duration, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < within, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(start_paused = true)]
async fn a_peer_gone_for_good_has_its_entries_carried_on_until_their_leases_end() {
    let dir = tempfile::tempdir().unwrap();
    let settings = ClusterSettings {
        memory: true,
        ..ClusterSettings::default()
    };
    let mut c = Cluster::start(dir.path(), 3, 11, settings).await.unwrap();
    c.wait_converged(Duration::from_secs(10)).await.unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    // Peer 2 is cut off while peer 0 takes a write: only peer 1 holds it.
    let addrs = c.addrs();
    c.net.partition(&addrs[2..], &addrs[..2]);
    c.net.partition(&addrs[..2], &addrs[2..]);
    let lease = Duration::from_secs(120);
    let a = c.nodes[0]
        .submit(add("198.18.10.1:30443", lease))
        .await
        .unwrap();
    assert_eq!(a.replicated, Some(true));
    let acked = Instant::now();
    assert!(!serves(&c, 2, "198.18.10.1:30443"));

    // Peer 0 is gone for good, disk and all; then the rest restart at once.
    c.kill(0).await;
    c.wipe(0);
    c.kill(1).await;
    c.kill(2).await;
    c.net.heal();
    c.start_node(1).await.unwrap();
    c.start_node(2).await.unwrap();
    eventually(
        "peer 2 to learn the write peer 1 carries on",
        Duration::from_secs(15),
        || serves(&c, 2, "198.18.10.1:30443"),
    )
    .await;
    let carrier = c.nodes[2].view().frontends[&443].servers[&key("198.18.10.1:30443").server]
        .origin
        .to_string();
    assert_eq!(carrier, "p1");
    // A peer that joins later learns it too (its wall clock set to the others').
    let behind = c.nodes[1].clock.now_ms() - c.settings.start_ms;
    c.add_node(3, behind as i64).await.unwrap();
    eventually("the new peer to learn it", Duration::from_secs(15), || {
        serves(&c, 3, "198.18.10.1:30443")
    })
    .await;

    // It stays until its lease ends, and no longer.
    tokio::time::sleep_until(acked + lease - Duration::from_secs(2)).await;
    for i in 1..4 {
        assert!(
            serves(&c, i, "198.18.10.1:30443"),
            "peer {i} dropped it early"
        );
    }
    tokio::time::sleep_until(acked + lease + Duration::from_secs(1)).await;
    for i in 1..4 {
        assert!(!serves(&c, i, "198.18.10.1:30443"), "peer {i} kept it");
    }
    c.stop().await;
}
