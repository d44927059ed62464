//! A peer's gossip is outside input: a SYN-ACK whose delta carries a
//! key-value newer than the max version it then declares used to reach an
//! assertion in chitchat and stop the gossip server (lbmesh stops with it).
//! The vendored chitchat refuses such a message and keeps gossiping.

use std::net::SocketAddr;
use std::time::Duration;

use chitchat::transport::UdpTransport;
use chitchat::{
    ChitchatConfig, ChitchatHandle, ChitchatId, ChitchatMessage, DeletionStatus, DeltaSerializer,
    Digest, FailureDetectorConfig, Heartbeat, Serializable, VersionedValue, spawn_chitchat,
};

fn free_udp() -> SocketAddr {
    let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    s.local_addr().unwrap()
}

async fn node(addr: SocketAddr) -> ChitchatHandle {
    let config = ChitchatConfig {
        chitchat_id: ChitchatId::new("lb1", 0, addr),
        cluster_id: "malformed".into(),
        gossip_interval: Duration::from_millis(100),
        listen_addr: addr,
        seed_nodes: vec![],
        failure_detector_config: FailureDetectorConfig::default(),
        marked_for_deletion_grace_period: Duration::from_secs(3600),
        catchup_callback: None,
        extra_liveness_predicate: None,
    };
    spawn_chitchat(config, vec![], &UdpTransport).await.unwrap()
}

/// A SYN-ACK from `rogue` with one key-value at version 10; with
/// `max_version`, a SetMaxVersion op follows it (5: below the key-value).
fn syn_ack(rogue: &ChitchatId, max_version: Option<u64>) -> Vec<u8> {
    let mut w = DeltaSerializer::with_mtu(60_000);
    assert!(w.try_add_node(rogue.clone(), 0, 0));
    assert!(w.try_add_kv(
        "k",
        VersionedValue {
            value: "v".into(),
            version: 10,
            status: DeletionStatus::Set,
        }
    ));
    let mut digest = Digest::default();
    digest.add_node(rogue.clone(), Heartbeat::from(1u64), 0, 10);
    let digest_len = digest.serialized_len();
    let legit = ChitchatMessage::SynAck {
        digest,
        delta: w.finish(),
    }
    .serialize_to_vec();
    let Some(max_version) = max_version else {
        return legit;
    };
    // The delta is a stream of blocks after the message tag and the digest:
    // [kind 2 = uncompressed][u16 length][ops] ... [0 = end]. Append the op
    // [2 = SetMaxVersion][u64] to the first block.
    let (head, stream) = legit.split_at(4 + digest_len);
    assert_eq!(stream[0], 2, "an uncompressed block");
    let len = u16::from_le_bytes([stream[1], stream[2]]) as usize;
    let mut ops = stream[3..3 + len].to_vec();
    ops.push(2);
    ops.extend(max_version.to_le_bytes());
    let mut raw = head.to_vec();
    raw.push(2);
    raw.extend((ops.len() as u16).to_le_bytes());
    raw.extend(&ops);
    raw.push(0);
    raw
}

#[tokio::test]
async fn a_delta_beyond_its_own_max_version_is_refused_and_gossip_goes_on() {
    let addr = free_udp();
    let handle = node(addr).await;
    let rogue_addr = free_udp();
    let rogue = ChitchatId::new("rogue", 0, rogue_addr);
    let udp = tokio::net::UdpSocket::bind(rogue_addr).await.unwrap();

    udp.send_to(&syn_ack(&rogue, Some(5)), addr).await.unwrap();
    let ended = tokio::time::timeout(Duration::from_secs(2), handle.termination_watcher()).await;
    assert!(
        ended.is_err(),
        "the gossip server stopped on one malformed message: {:?}",
        ended.map(|r| r.map_err(|e| e.to_string()))
    );
    {
        let cc = handle.chitchat();
        let cc = cc.lock().await;
        let held = cc
            .node_state(&rogue)
            .and_then(|s| s.get("k").map(str::to_owned));
        assert_eq!(held, None, "nothing of the malformed message is applied");
    }

    // The control: the same message without the bad op is taken.
    udp.send_to(&syn_ack(&rogue, None), addr).await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let held = {
            let cc = handle.chitchat();
            let cc = cc.lock().await;
            cc.node_state(&rogue)
                .and_then(|s| s.get("k").map(str::to_owned))
        };
        if held.as_deref() == Some("v") {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the well-formed message was not applied"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    handle.shutdown().await.unwrap();
}
