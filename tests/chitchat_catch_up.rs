//! The vendored chitchat lets a node that joins a large state pull it one
//! message after the other, instead of one message per gossip round, and
//! sends no second SYN to a peer while the answer to the first is on its way.

use std::net::SocketAddr;
use std::time::Duration;

use chitchat::{ChitchatConfig, ChitchatHandle, ChitchatId, FailureDetectorConfig, spawn_chitchat};
use lbmesh::mesh::transport::MemoryNetwork;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

/// Long next to the time a message takes: progress within one round can
/// only come from pulling.
const ROUND: Duration = Duration::from_secs(10);

fn addr(n: u8) -> SocketAddr {
    SocketAddr::from(([198, 18, 0, n], 7946))
}

async fn node(
    net: &MemoryNetwork,
    n: u8,
    seeds: &[u8],
    keys: Vec<(String, String)>,
) -> ChitchatHandle {
    let config = ChitchatConfig {
        chitchat_id: ChitchatId::new(format!("lb{n}"), 1, addr(n)),
        cluster_id: "pull".into(),
        gossip_interval: ROUND,
        listen_addr: addr(n),
        seed_nodes: seeds.iter().map(|s| addr(*s).to_string()).collect(),
        failure_detector_config: FailureDetectorConfig {
            initial_interval: ROUND * 5,
            ..FailureDetectorConfig::default()
        },
        marked_for_deletion_grace_period: Duration::from_secs(3600),
        catchup_callback: None,
        extra_liveness_predicate: None,
    };
    spawn_chitchat(config, keys, net).await.unwrap()
}

/// Keys whose values do not compress: each message carries a few hundred.
fn keys(n: usize, seed: u64) -> Vec<(String, String)> {
    let mut rng = SmallRng::seed_from_u64(seed);
    (0..n)
        .map(|i| {
            let value: String = (0..48)
                .map(|_| char::from(b"0123456789abcdef"[rng.random_range(0..16)]))
                .collect();
            (format!("k{i:05}"), value)
        })
        .collect()
}

/// How many of lb1's keys `h` holds.
async fn held(h: &ChitchatHandle) -> usize {
    let cc = h.chitchat();
    let cc = cc.lock().await;
    cc.node_states()
        .iter()
        .find(|(id, _)| &*id.node_id == "lb1")
        .map_or(0, |(_, s)| {
            s.key_values().filter(|(k, _)| k.starts_with('k')).count()
        })
}

#[tokio::test(start_paused = true)]
async fn a_joining_node_pulls_a_large_state_within_one_round() {
    let net = MemoryNetwork::new(11);
    net.set_delay(Duration::from_millis(2)..Duration::from_millis(5));
    let state = keys(40_000, 3);
    let a = node(&net, 1, &[], state.clone()).await;
    let b = node(&net, 2, &[1], Vec::new()).await;
    // B's first round reaches A at once; the next is a round later.
    let mut waited = Duration::ZERO;
    while held(&b).await < state.len() {
        tokio::time::sleep(Duration::from_millis(10)).await;
        waited += Duration::from_millis(10);
        assert!(
            waited < ROUND / 2,
            "after {waited:?} B holds {} of A's {} keys",
            held(&b).await,
            state.len()
        );
    }
    let (sent, _, bytes) = net.counters();
    // The state takes many messages (of at most 64 KiB each)...
    assert!(bytes > 10 * 65_507, "{bytes} bytes");
    // ...each asked for once: a SYN, its answer and B's reply per message.
    assert!(
        sent < 3 * (bytes / 50_000 + 2),
        "{sent} messages for {bytes} bytes"
    );

    // Once B holds everything, the pulling stops: only rounds remain (one
    // exchange each way per round, three messages each).
    let (before, _, _) = net.counters();
    tokio::time::sleep(ROUND * 3).await;
    let (after, _, _) = net.counters();
    assert!(
        after - before <= 3 * 2 * 4,
        "{} messages in three rounds",
        after - before
    );
    drop((a, b));
}

#[tokio::test(start_paused = true)]
async fn a_node_asks_a_slow_peer_once_until_it_answers() {
    let net = MemoryNetwork::new(12);
    // Each message takes most of a round: a node that asked anew at every
    // push would have the same delta computed and sent again each time.
    net.set_delay(ROUND / 2..ROUND / 2 + Duration::from_millis(1));
    let a = node(&net, 1, &[], keys(10, 4)).await;
    let b = node(&net, 2, &[1], Vec::new()).await;
    tokio::time::sleep(Duration::from_millis(1)).await;
    let (first, _, _) = net.counters();
    for _ in 0..20 {
        b.gossip(addr(1)).unwrap();
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let (pushed, _, _) = net.counters();
    assert_eq!(pushed, first, "pushes while B's SYN awaits its answer");
    // The answer to that one SYN brings everything.
    tokio::time::sleep(ROUND + Duration::from_millis(100)).await;
    assert_eq!(held(&b).await, 10);
    drop((a, b));
}
