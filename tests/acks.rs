//! Replicated acknowledgements: a write is answered once another live peer
//! holds it on disk, or after the bound with `"replicated": false`; an
//! acknowledged write survives the loss of the peer (and disk) that took it.
//! In-process peers on the in-memory network with memory disks (so a test
//! can look at another peer's disk at the instant of the answer) on tokio's
//! paused clock, and real processes.

mod common;

use std::time::Duration;

use lbmesh::mesh::cluster::{Cluster, ClusterSettings};
use lbmesh::registry::Command;
use lbmesh::shared::{AckMode, AckPolicy};
use tokio::time::Instant;

use common::{key, serves, until};

/// How long a change may take to spread, and how often the test looks.
const SETTLE: Duration = Duration::from_secs(10);
const POLL: Duration = Duration::from_millis(20);

fn add(server: &str) -> Command {
    Command::Register {
        key: key(443, server),
        name: "traefik".parse().unwrap(),
        send_proxy: false,
        ttl: None,
    }
}

fn del(server: &str) -> Command {
    Command::Delete {
        key: key(443, server),
        name: "traefik".parse().unwrap(),
    }
}

fn settings(mode: AckMode) -> ClusterSettings {
    ClusterSettings {
        memory: true,
        ack: AckPolicy {
            mode,
            timeout: Duration::from_secs(1),
        },
        ..ClusterSettings::default()
    }
}

/// A mesh whose peers all see each other live.
async fn mesh(dir: &tempfile::TempDir, n: usize, mode: AckMode) -> Cluster {
    let c = Cluster::start(dir.path(), n, 7, settings(mode))
        .await
        .unwrap();
    c.wait_converged(Duration::from_secs(10)).await.unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    c
}

#[tokio::test(start_paused = true)]
async fn a_write_is_answered_once_another_peer_has_it_on_disk() {
    let dir = tempfile::tempdir().unwrap();
    let c = mesh(&dir, 3, AckMode::Replicated).await;
    for (i, cmd) in [add("198.18.10.1:30443"), del("198.18.10.1:30443")]
        .into_iter()
        .enumerate()
    {
        let a = c.nodes[0].submit(cmd).await.unwrap();
        assert_eq!(a.replicated, Some(true), "write {i}");
        // At the instant of the answer, another peer's disk holds it.
        let origin = c.nodes[0].registry().with(|r| r.origin().clone());
        let holders: Vec<usize> = (1..3)
            .filter(|p| {
                c.nodes[*p]
                    .disk
                    .lock()
                    .unwrap()
                    .get(&(a.change.key, Some(origin.clone())))
                    == Some(&a.change.entry)
            })
            .collect();
        assert!(
            !holders.is_empty(),
            "write {i}: no other peer has it on disk"
        );
    }
    c.stop().await;
}

#[tokio::test(start_paused = true)]
async fn cut_off_from_every_peer_the_answer_says_it_is_not_replicated() {
    let dir = tempfile::tempdir().unwrap();
    let c = mesh(&dir, 3, AckMode::Replicated).await;
    let addrs = c.addrs();
    c.net.partition(&addrs[..1], &addrs[1..]);
    c.net.partition(&addrs[1..], &addrs[..1]);
    // The others still look live: the write waits (at most the bound, less
    // if they are declared dead first), then says so.
    let start = Instant::now();
    let a = c.nodes[0].submit(add("198.18.10.1:30443")).await.unwrap();
    assert_eq!(a.replicated, Some(false));
    let waited = start.elapsed();
    assert!(
        (Duration::from_millis(100)..=Duration::from_secs(1)).contains(&waited),
        "{waited:?}"
    );
    assert!(
        serves(&c, 0, 443, "198.18.10.1:30443"),
        "still applied here"
    );
    // Once they are known dead, nothing is waited for.
    tokio::time::sleep(Duration::from_secs(60)).await;
    let start = Instant::now();
    let a = c.nodes[0].submit(add("198.18.10.2:30443")).await.unwrap();
    assert_eq!(a.replicated, Some(false));
    assert!(start.elapsed() < Duration::from_millis(50));
    // Healed: confirmed again.
    c.net.heal();
    until(SETTLE, POLL, "the mesh to heal", || c.converged()).await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let a = c.nodes[0].submit(add("198.18.10.3:30443")).await.unwrap();
    assert_eq!(a.replicated, Some(true));
    c.stop().await;
}

#[tokio::test(start_paused = true)]
async fn local_acknowledgements_do_not_wait_for_peers() {
    let dir = tempfile::tempdir().unwrap();
    let c = mesh(&dir, 2, AckMode::Local).await;
    let addrs = c.addrs();
    c.net.partition(&addrs[..1], &addrs[1..]);
    let start = Instant::now();
    let a = c.nodes[0].submit(add("198.18.10.1:30443")).await.unwrap();
    assert_eq!(a.replicated, None);
    assert!(start.elapsed() < Duration::from_millis(50));
    c.stop().await;
}

#[tokio::test(start_paused = true)]
async fn an_acknowledged_write_survives_its_peer_and_disk_and_a_restart_of_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = mesh(&dir, 3, AckMode::Replicated).await;
    assert_eq!(
        c.nodes[1]
            .submit(add("198.18.10.9:30443"))
            .await
            .unwrap()
            .replicated,
        Some(true)
    );
    until(SETTLE, POLL, "the server everywhere", || {
        (0..3).all(|i| serves(&c, i, 443, "198.18.10.9:30443"))
    })
    .await;
    let a = c.nodes[0].submit(add("198.18.10.1:30443")).await.unwrap();
    assert_eq!(a.replicated, Some(true));
    let d = c.nodes[0].submit(del("198.18.10.9:30443")).await.unwrap();
    assert_eq!(d.replicated, Some(true));
    // Peer 0 and its disk are gone for good, right after answering.
    c.kill(0).await;
    c.wipe(0);
    until(SETTLE, POLL, "the others to hold both writes", || {
        (1..3).all(|i| {
            serves(&c, i, 443, "198.18.10.1:30443") && !serves(&c, i, 443, "198.18.10.9:30443")
        })
    })
    .await;
    // Both others restart at once: what they held from peer 0 is on their disks.
    c.kill(1).await;
    c.kill(2).await;
    c.start_node(1).await.unwrap();
    c.start_node(2).await.unwrap();
    for i in 1..3 {
        assert!(
            serves(&c, i, 443, "198.18.10.1:30443"),
            "peer {i} lost the add"
        );
        assert!(
            !serves(&c, i, 443, "198.18.10.9:30443"),
            "peer {i} undid the delete"
        );
    }
    c.stop().await;
}

/// Real processes: two peers over QUIC, then one of them crashed; and a
/// peer set to local acknowledgements.
#[test]
fn real_peers_say_whether_another_peer_holds_the_write() {
    let mut m = common::mesh_of(2, "quic");
    m.converged(&[0, 1]);
    let port = common::free_port("127.0.0.1");
    let v = m.peers[0].add("traefik", port, "127.0.0.1:30001".parse().unwrap());
    assert_eq!(v["replicated"], true, "{v}");
    let v = m.peers[1].delete("traefik", port, "127.0.0.1:30001".parse().unwrap());
    assert_eq!(v["replicated"], true, "{v}");

    m.peers[1].crash();
    let start = std::time::Instant::now();
    let v = m.peers[0].add("traefik", port, "127.0.0.1:30002".parse().unwrap());
    assert_eq!(v["replicated"], false, "{v}");
    // The bound (registry.ack-timeout, 1 s by default) and HAProxy's apply.
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "{:?}",
        start.elapsed()
    );

    let local = common::Daemon::start(common::DaemonOpts {
        toml: common::fast_toml("ack = \"local\"", ""),
        ..common::DaemonOpts::default()
    });
    let v = local.add("traefik", port, "127.0.0.1:30003".parse().unwrap());
    assert!(v.get("replicated").is_none(), "{v}");
}
