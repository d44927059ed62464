//! In-process mesh tests: several peers (registry, store, gossip) on an
//! in-memory network, driven as steps: write, partition, heal, kill,
//! restart, assert-eventually.

mod common;

use std::time::Duration;

use lbmesh::mesh::cluster::{Cluster, ClusterSettings};
use lbmesh::registry::Command;

use common::{key, serves, until};

fn add(frontend: u16, server: &str, name: &str) -> Command {
    Command::Register {
        key: key(frontend, server),
        name: name.parse().unwrap(),
        send_proxy: false,
        ttl: None,
    }
}

fn del(frontend: u16, server: &str, name: &str) -> Command {
    Command::Delete {
        key: key(frontend, server),
        name: name.parse().unwrap(),
    }
}

const SETTLE: Duration = Duration::from_secs(10);
/// How often the test looks while it waits.
const POLL: Duration = Duration::from_millis(20);

async fn cluster(dir: &tempfile::TempDir, n: usize) -> Cluster {
    let c = Cluster::start(dir.path(), n, 7, ClusterSettings::default())
        .await
        .unwrap();
    c.wait_converged(SETTLE)
        .await
        .expect("empty mesh converges");
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_at_any_peer_reaches_every_peer_and_a_delete_anywhere_removes_it() {
    let dir = tempfile::tempdir().unwrap();
    let c = cluster(&dir, 3).await;
    c.nodes[0]
        .submit(add(443, "198.18.10.1:30443", "traefik"))
        .await
        .unwrap();
    until(SETTLE, POLL, "the add everywhere", || {
        (0..3).all(|i| serves(&c, i, 443, "198.18.10.1:30443"))
    })
    .await;
    // Delete at peer 2 an add that peer 0 accepted.
    c.nodes[2]
        .submit(del(443, "198.18.10.1:30443", "traefik"))
        .await
        .unwrap();
    until(SETTLE, POLL, "the delete everywhere", || {
        (0..3).all(|i| !serves(&c, i, 443, "198.18.10.1:30443"))
    })
    .await;
    c.wait_converged(SETTLE).await.expect("digests agree");
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_heals_into_one_registry() {
    let dir = tempfile::tempdir().unwrap();
    let c = cluster(&dir, 3).await;
    let a = c.addrs();
    c.net.partition(&a[..1], &a[1..]);
    c.nodes[0]
        .submit(add(443, "198.18.10.1:30443", "traefik"))
        .await
        .unwrap();
    c.nodes[1]
        .submit(add(8443, "198.18.10.2:30843", "mqtt"))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        !serves(&c, 1, 443, "198.18.10.1:30443"),
        "the partition holds"
    );
    assert!(
        serves(&c, 2, 8443, "198.18.10.2:30843"),
        "the majority side syncs"
    );
    c.net.heal();
    until(SETTLE, POLL, "both writes everywhere", || {
        (0..3).all(|i| {
            serves(&c, i, 443, "198.18.10.1:30443") && serves(&c, i, 8443, "198.18.10.2:30843")
        })
    })
    .await;
    c.wait_converged(SETTLE).await.expect("digests agree");
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_peers_registrations_stay_and_a_restart_keeps_them() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = cluster(&dir, 3).await;
    c.nodes[1]
        .submit(add(443, "198.18.10.1:30443", "traefik"))
        .await
        .unwrap();
    until(SETTLE, POLL, "replicated", || {
        (0..3).all(|i| serves(&c, i, 443, "198.18.10.1:30443"))
    })
    .await;
    c.kill(1).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(serves(&c, 0, 443, "198.18.10.1:30443") && serves(&c, 2, 443, "198.18.10.1:30443"));
    // Back with its data: a new incarnation that republishes what it accepted.
    c.restart(1, false).await.unwrap();
    assert!(
        serves(&c, 1, 443, "198.18.10.1:30443"),
        "restored from disk at once"
    );
    c.nodes[1]
        .submit(del(443, "198.18.10.1:30443", "traefik"))
        .await
        .unwrap();
    until(
        SETTLE,
        POLL,
        "the delete of the new incarnation everywhere",
        || (0..3).all(|i| !serves(&c, i, 443, "198.18.10.1:30443")),
    )
    .await;
    c.wait_converged(SETTLE).await.expect("digests agree");
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_lost_its_disk_learns_everything_back() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = cluster(&dir, 3).await;
    c.nodes[0]
        .submit(add(443, "198.18.10.1:30443", "traefik"))
        .await
        .unwrap();
    c.nodes[2]
        .submit(add(443, "198.18.10.2:30443", "traefik"))
        .await
        .unwrap();
    until(SETTLE, POLL, "replicated", || {
        serves(&c, 2, 443, "198.18.10.1:30443") && serves(&c, 0, 443, "198.18.10.2:30443")
    })
    .await;
    c.restart(0, true).await.unwrap();
    until(SETTLE, POLL, "the wiped peer catches up", || {
        serves(&c, 0, 443, "198.18.10.1:30443") && serves(&c, 0, 443, "198.18.10.2:30443")
    })
    .await;
    c.wait_converged(SETTLE).await.expect("digests agree");
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_joiner_catches_up_on_thousands_of_servers() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = cluster(&dir, 2).await;
    for i in 0..3000u32 {
        let server = format!("198.19.{}.{}:30000", i / 250, i % 250 + 1);
        c.nodes[(i % 2) as usize]
            .submit(add(
                10_000 + (i % 30) as u16,
                &server,
                &format!("svc{}", i % 30),
            ))
            .await
            .unwrap();
    }
    c.wait_converged(Duration::from_secs(30))
        .await
        .expect("first two agree");
    c.add_node(2, 0).await.unwrap();
    let took = c
        .wait_converged(Duration::from_secs(30))
        .await
        .expect("the new peer catches up");
    assert_eq!(c.nodes[2].view().server_count(), 3000);
    eprintln!("catch-up of 3000 servers took {took:?}");
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seconds_of_clock_skew_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = Cluster::start(dir.path(), 0, 3, ClusterSettings::default())
        .await
        .unwrap();
    c.add_node(0, 3_000).await.unwrap(); // 3 s fast
    c.add_node(1, -3_000).await.unwrap(); // 3 s slow
    c.add_node(2, 0).await.unwrap();
    c.wait_converged(SETTLE).await.unwrap();
    // Partitioned, so the slow peer has not seen the add when it deletes.
    let a = c.addrs();
    c.net.partition(&a[..1], &a[1..]);
    c.nodes[0]
        .submit(add(443, "198.18.10.1:30443", "traefik"))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    c.nodes[1]
        .submit(del(443, "198.18.10.1:30443", "traefik"))
        .await
        .unwrap();
    c.net.heal();
    c.wait_converged(SETTLE).await.expect("digests agree");
    for i in 0..3 {
        assert!(
            !serves(&c, i, 443, "198.18.10.1:30443"),
            "peer {i}: the later delete wins despite the skew"
        );
    }
    // A re-registration after the delete, seen by the fast peer, wins again.
    until(SETTLE, POLL, "the fast peer has seen the delete", || {
        !serves(&c, 0, 443, "198.18.10.1:30443")
    })
    .await;
    c.nodes[0]
        .submit(add(443, "198.18.10.1:30443", "traefik"))
        .await
        .unwrap();
    until(SETTLE, POLL, "re-registered everywhere", || {
        (0..3).all(|i| serves(&c, i, 443, "198.18.10.1:30443"))
    })
    .await;
    c.stop().await;
}
