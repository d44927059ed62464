//! The vendored chitchat copies the live nodes' states into its live-nodes
//! watch only while someone besides chitchat holds a receiver. Whoever asks
//! for one must still see what upstream shows: every live node with its
//! latest key-values, then each change.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::Duration;

use chitchat::{
    ChitchatConfig, ChitchatHandle, ChitchatId, FailureDetectorConfig, NodeState, spawn_chitchat,
};
use lbmesh::mesh::transport::MemoryNetwork;

fn addr(n: u8) -> SocketAddr {
    SocketAddr::from(([198, 18, 0, n], 7946))
}

async fn node(net: &MemoryNetwork, n: u8, seed: u8) -> ChitchatHandle {
    let config = ChitchatConfig {
        chitchat_id: ChitchatId::new(format!("lb{n}"), 1, addr(n)),
        cluster_id: "watch".into(),
        gossip_interval: Duration::from_millis(100),
        listen_addr: addr(n),
        seed_nodes: vec![addr(seed).to_string()],
        failure_detector_config: FailureDetectorConfig {
            initial_interval: Duration::from_millis(500),
            ..FailureDetectorConfig::default()
        },
        marked_for_deletion_grace_period: Duration::from_secs(3600),
        catchup_callback: None,
        extra_liveness_predicate: None,
    };
    spawn_chitchat(config, Vec::new(), net).await.unwrap()
}

/// Waits (on the paused clock) until `f` holds for node `h`'s chitchat.
async fn until(h: &ChitchatHandle, what: &str, f: impl Fn(&mut chitchat::Chitchat) -> bool) {
    for _ in 0..600 {
        if f(&mut *h.chitchat().lock().await) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{what}: not within 30 s");
}

fn key_of(
    states: &std::collections::BTreeMap<ChitchatId, NodeState>,
    node: &str,
) -> Option<String> {
    states
        .iter()
        .find(|(id, _)| &*id.node_id == node)
        .and_then(|(_, s)| s.get("k").map(str::to_owned))
}

fn sees(c: &chitchat::Chitchat, node: &str, value: &str) -> bool {
    c.node_states()
        .iter()
        .any(|(id, s)| &*id.node_id == node && s.get("k") == Some(value))
}

#[tokio::test(start_paused = true)]
async fn a_watcher_sees_every_live_node_with_its_latest_keys_then_each_change() {
    let net = MemoryNetwork::new(7);
    let a = node(&net, 1, 2).await;
    let b = node(&net, 2, 1).await;
    until(&a, "a sees two live nodes", |c| c.live_nodes().count() == 2).await;

    // Changes while nobody watches.
    b.with_chitchat(|c| c.self_node_state().set("k", "1")).await;
    until(&a, "a holds b's k=1", |c| sees(c, "lb2", "1")).await;

    // A watcher handed out now starts from the current state.
    let mut watch = a.chitchat().lock().await.live_nodes_watcher();
    {
        let states = watch.borrow_and_update();
        let live: HashSet<&str> = states.keys().map(|id| &*id.node_id).collect();
        assert_eq!(live, HashSet::from(["lb1", "lb2"]));
        assert_eq!(key_of(&states, "lb2").as_deref(), Some("1"));
    }

    // And then each change reaches it.
    b.with_chitchat(|c| c.self_node_state().set("k", "2")).await;
    tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            watch.changed().await.unwrap();
            if key_of(&watch.borrow_and_update(), "lb2").as_deref() == Some("2") {
                break;
            }
        }
    })
    .await
    .expect("the watcher saw b's k=2");
    drop(watch);

    // Unwatched again, then a new watcher: fresh, not the last copy sent.
    b.with_chitchat(|c| c.self_node_state().set("k", "3")).await;
    until(&a, "a holds b's k=3", |c| sees(c, "lb2", "3")).await;
    // The watch follows the liveness update of each gossip round, upstream
    // as here.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let watch = a.chitchat().lock().await.live_nodes_watcher();
    assert_eq!(key_of(&watch.borrow(), "lb2").as_deref(), Some("3"));
}
