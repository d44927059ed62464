//! A whole-mesh restart with one peer gone for good loses nothing: every peer
//! keeps on disk the entries it holds from the others, and carries on those
//! of a peer that is gone until their leases end. In-process peers with
//! memory disks on tokio's paused clock.

mod common;

use std::time::Duration;

use lbmesh::clock::Clock;
use lbmesh::mesh::cluster::{Cluster, ClusterSettings};
use lbmesh::registry::Command;
use tokio::time::Instant;

use common::{key, serves, until};

/// How often the test looks while it waits.
const POLL: Duration = Duration::from_millis(50);

fn add(server: &str, ttl: Duration) -> Command {
    Command::Register {
        key: key(443, server),
        name: "traefik".parse().unwrap(),
        send_proxy: false,
        ttl: Some(ttl),
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
    assert!(!serves(&c, 2, 443, "198.18.10.1:30443"));

    // Peer 0 is gone for good, disk and all; then the rest restart at once.
    c.kill(0).await;
    c.wipe(0);
    c.kill(1).await;
    c.kill(2).await;
    c.net.heal();
    c.start_node(1).await.unwrap();
    c.start_node(2).await.unwrap();
    until(
        Duration::from_secs(15),
        POLL,
        "peer 2 to learn the write peer 1 carries on",
        || serves(&c, 2, 443, "198.18.10.1:30443"),
    )
    .await;
    let carrier = c.nodes[2].view().frontends[&443].servers[&key(443, "198.18.10.1:30443").server]
        .origin
        .to_string();
    assert_eq!(carrier, "p1");
    // A peer that joins later learns it too (its wall clock set to the others').
    let behind = c.nodes[1].clock.now_ms() - c.settings.start_ms;
    c.add_node(3, behind as i64).await.unwrap();
    until(
        Duration::from_secs(15),
        POLL,
        "the new peer to learn it",
        || serves(&c, 3, 443, "198.18.10.1:30443"),
    )
    .await;

    // It stays until its lease ends, and no longer.
    tokio::time::sleep_until(acked + lease - Duration::from_secs(2)).await;
    for i in 1..4 {
        assert!(
            serves(&c, i, 443, "198.18.10.1:30443"),
            "peer {i} dropped it early"
        );
    }
    tokio::time::sleep_until(acked + lease + Duration::from_secs(1)).await;
    for i in 1..4 {
        assert!(!serves(&c, i, 443, "198.18.10.1:30443"), "peer {i} kept it");
    }
    c.stop().await;
}
