//! Peer links: only holders of a cluster certificate, under their own node
//! id, can read or change the registry. Every check is paired with a control
//! that shows the attack works where the protection is off, so a test that
//! passes proves the protection and not a broken attack.

mod common;

use std::net::{SocketAddr, UdpSocket};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use chitchat::transport::{Transport, UdpTransport};
use chitchat::{
    ChitchatConfig, ChitchatId, ChitchatMessage, Deserializable, FailureDetectorConfig,
    spawn_chitchat,
};
use common::*;
use lbmesh::mesh::quic::QuicTransport;
use lbmesh::tls::{PeerTls, PeerTlsFiles};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// A chitchat peer in this process, gossiping with `victim` as `node_id`.
async fn rogue_peer(
    node_id: &str,
    transport: &dyn Transport,
    victim: SocketAddr,
    frontend: u16,
) -> chitchat::ChitchatHandle {
    let addr: SocketAddr = format!("127.0.0.9:{}", free_udp_port("127.0.0.9"))
        .parse()
        .unwrap();
    let config = ChitchatConfig {
        chitchat_id: ChitchatId::new(node_id, 1, addr),
        cluster_id: "lbmesh".into(),
        gossip_interval: Duration::from_millis(100),
        listen_addr: addr,
        seed_nodes: vec![victim.to_string()],
        failure_detector_config: FailureDetectorConfig::default(),
        marked_for_deletion_grace_period: Duration::from_secs(3600),
        catchup_callback: None,
        extra_liveness_predicate: None,
    };
    spawn_chitchat(config, vec![rogue_entry(frontend)], transport)
        .await
        .unwrap()
}

fn peer_ids(d: &Daemon) -> Vec<String> {
    d.status()["peers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["node_id"].as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn a_rogue_speaking_plain_chitchat_udp_changes_nothing() {
    let quic = Daemon::start(DaemonOpts::default());
    let udp = Daemon::start(DaemonOpts {
        mesh: "transport = \"udp\"".into(),
        node_id: "lb2".into(),
        ..DaemonOpts::default()
    });
    let port = free_port("127.0.0.1");
    let rt = runtime();
    rt.block_on(async {
        let a = rogue_peer("rogue", &UdpTransport, quic.gossip, port).await;
        let b = rogue_peer("rogue", &UdpTransport, udp.gossip, port).await;
        tokio::time::sleep(Duration::from_secs(3)).await;
        // Control: the same rogue gets into a peer that runs plain UDP.
        assert!(
            udp.frontend_ports().contains(&(port as u64)),
            "control: the rogue's entry should reach a UDP peer"
        );
        assert!(peer_ids(&udp).contains(&"rogue".to_string()));
        // The QUIC peer saw nothing.
        assert!(
            quic.frontend_ports().is_empty(),
            "{:?}",
            quic.frontend_ports()
        );
        assert_eq!(peer_ids(&quic), vec!["lb1".to_string()]);
        let _ = a.shutdown().await;
        let _ = b.shutdown().await;
    });
}

/// Connects to `victim` over QUIC presenting `cert`/`key`, trusting `ca`
/// for the server, and tries to send a gossip message. Returns the error.
fn quic_attempt(victim: SocketAddr, ca: &Path, cert: &str, key: &str) -> String {
    let rt = runtime();
    rt.block_on(async {
        let mut roots = rustls::RootCertStore::empty();
        for c in rustls_pemfile::certs(&mut std::fs::read_to_string(ca).unwrap().as_bytes()) {
            roots.add(c.unwrap()).unwrap();
        }
        let chain: Vec<_> = rustls_pemfile::certs(&mut cert.as_bytes())
            .map(|c| c.unwrap())
            .collect();
        let key = rustls_pemfile::private_key(&mut key.as_bytes())
            .unwrap()
            .unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)
            .unwrap();
        cfg.alpn_protocols = vec![lbmesh::tls::GOSSIP_ALPN.to_vec()];
        let client = quinn::ClientConfig::new(Arc::new(
            quinn::crypto::rustls::QuicClientConfig::try_from(Arc::new(cfg)).unwrap(),
        ));
        let mut ep = quinn::Endpoint::client("127.0.0.9:0".parse().unwrap()).unwrap();
        ep.set_default_client_config(client);
        let result = async {
            let conn = ep
                .connect(victim, lbmesh::tls::PEER_NAME)
                .map_err(|e| e.to_string())?
                .await
                .map_err(|e| e.to_string())?;
            // TLS 1.3 lets the client finish before the server checked its
            // certificate; the refusal shows on first use.
            let mut s = conn.open_uni().await.map_err(|e| e.to_string())?;
            s.write_all(b"\x00\x00").await.map_err(|e| e.to_string())?;
            s.finish().map_err(|e| e.to_string())?;
            match tokio::time::timeout(Duration::from_secs(3), conn.closed()).await {
                Ok(reason) => Err(reason.to_string()),
                Err(_) => Ok(()),
            }
        }
        .await;
        ep.close(0u32.into(), b"");
        match result {
            Ok(()) => "accepted".to_string(),
            Err(e) => e,
        }
    })
}

#[test]
fn quic_clients_without_a_valid_cluster_certificate_are_refused_and_logged() {
    let victim = Daemon::start(DaemonOpts::default());
    let tls_dir = victim.data_dir.join("tls");
    let ca_cert = tls_dir.join("ca.crt");
    let cluster_ca = lbmesh::tls::Ca::load(&tls_dir).unwrap();
    let day = Duration::from_secs(86_400);

    // Control: a certificate from the cluster CA is accepted.
    let (cert, key) = cluster_ca.issue(&"lb2".parse().unwrap(), &[], day).unwrap();
    assert_eq!(
        quic_attempt(victim.gossip, &ca_cert, &cert, &key),
        "accepted"
    );

    let foreign = lbmesh::tls::Ca::generate("elsewhere", day).unwrap();
    let (f_cert, f_key) = foreign.issue(&"lb2".parse().unwrap(), &[], day).unwrap();
    let self_signed =
        rcgen::generate_simple_self_signed(vec![lbmesh::tls::PEER_NAME.to_string()]).unwrap();
    let past = time::OffsetDateTime::now_utc() - time::Duration::days(10);
    let (e_cert, e_key) = cluster_ca
        .issue_between(
            &"lb2".parse().unwrap(),
            &[],
            past,
            past + time::Duration::days(1),
        )
        .unwrap();
    for (what, cert, key, logged) in [
        ("foreign CA", f_cert, f_key, "UnknownIssuer"),
        (
            "self-signed",
            self_signed.cert.pem(),
            self_signed.signing_key.serialize_pem(),
            "UnknownIssuer",
        ),
        ("expired", e_cert, e_key, "certificate expired"),
    ] {
        let got = quic_attempt(victim.gossip, &ca_cert, &cert, &key);
        assert_ne!(got, "accepted", "{what} certificate was accepted");
        eventually(
            Duration::from_secs(5),
            &format!("a log line for the {what} refusal"),
            || {
                victim
                    .log()
                    .lines()
                    .any(|l| l.contains("refused a gossip connection") && l.contains(logged))
                    .then_some(())
            },
        );
    }
    assert!(victim.frontend_ports().is_empty());
    assert_eq!(peer_ids(&victim), vec!["lb1".to_string()]);
    // Counted by reason: two certificates of an unknown CA, one expired.
    let metrics = victim.metrics();
    for (reason, n) in [("unknown_ca", 2), ("expired", 1), ("revoked", 0)] {
        assert!(
            metrics.contains(&format!(
                "lbmesh_peer_connections_refused_total{{reason=\"{reason}\"}} {n}\n"
            )),
            "{reason}: {metrics}"
        );
    }
}

#[test]
fn a_certificate_for_another_node_is_refused() {
    let victim = Daemon::start(DaemonOpts::default());
    let tls_dir = victim.data_dir.join("tls");
    let dir = tempfile::tempdir().unwrap();
    sh(
        &format!(
            "{BIN} ca issue --dir {} --node-id lb2 --out {}",
            tls_dir.display(),
            dir.path().display()
        ),
        &[],
    );
    let files = PeerTlsFiles {
        ca_cert: tls_dir.join("ca.crt"),
        cert: dir.path().join("lb2.crt"),
        key: dir.path().join("lb2.key"),
    };

    // Locally: lbmesh will not start as lb3 with lb2's certificate.
    let cfg = dir.path().join("lb3.toml");
    std::fs::write(
        &cfg,
        format!(
            "node-id = \"lb3\"\napi-listen = \"127.0.0.1:{}\"\ngossip-listen = \"127.0.0.1:{}\"\ndata-dir = \"{}\"\nseeds = [\"{}\"]\n[mesh]\nca-cert = \"{}\"\ncert = \"{}\"\nkey = \"{}\"\n",
            free_port("127.0.0.1"),
            free_udp_port("127.0.0.1"),
            dir.path().join("data3").display(),
            victim.gossip,
            files.ca_cert.display(),
            files.cert.display(),
            files.key.display()
        ),
    )
    .unwrap();
    let out = std::process::Command::new(BIN)
        .args(["serve", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("names node \"lb2\", but this peer is \"lb3\""),
        "{err}"
    );

    // Remotely: a process holding lb2's certificate but gossiping as lb9.
    let tls = PeerTls::load(&files, &"lb2".parse().unwrap()).unwrap();
    let rt = runtime();
    let (p_bad, p_good) = (free_port("127.0.0.1"), free_port("127.0.0.1"));
    rt.block_on(async {
        let liar = rogue_peer(
            "lb9",
            &QuicTransport::new(tls.clone(), Duration::from_millis(100)),
            victim.gossip,
            p_bad,
        )
        .await;
        tokio::time::sleep(Duration::from_secs(3)).await;
        assert!(
            !victim.frontend_ports().contains(&(p_bad as u64)),
            "an entry from the liar was merged"
        );
        assert!(!peer_ids(&victim).contains(&"lb9".to_string()));
        let _ = liar.shutdown().await;
        // Control: the same certificate under its own name is a peer.
        let honest = rogue_peer(
            "lb2",
            &QuicTransport::new(tls, Duration::from_millis(100)),
            victim.gossip,
            p_good,
        )
        .await;
        tokio::time::sleep(Duration::from_secs(3)).await;
        assert!(
            victim.frontend_ports().contains(&(p_good as u64)),
            "control: lb2 as itself should be merged"
        );
        assert!(peer_ids(&victim).contains(&"lb2".to_string()));
        let _ = honest.shutdown().await;
    });
    assert!(
        victim
            .log()
            .contains("refusing a peer whose certificate names another node than it gossips as")
    );
}

/// The UDP payloads of a pcap file (Ethernet or Linux cooked, IPv4).
fn udp_payloads(pcap: &[u8]) -> Vec<Vec<u8>> {
    let link = u32::from_le_bytes(pcap[20..24].try_into().unwrap());
    let l2 = match link {
        1 => 14,   // Ethernet (tcpdump -i lo)
        113 => 16, // Linux cooked
        _ => panic!("unexpected link type {link}"),
    };
    let mut out = Vec::new();
    let mut i = 24;
    while i + 16 <= pcap.len() {
        let caplen = u32::from_le_bytes(pcap[i + 8..i + 12].try_into().unwrap()) as usize;
        let pkt = &pcap[i + 16..(i + 16 + caplen).min(pcap.len())];
        i += 16 + caplen;
        if pkt.len() < l2 + 28 {
            continue;
        }
        let ip = &pkt[l2..];
        let ihl = ((ip[0] & 0x0f) as usize) * 4;
        if ip[9] == 17 && ip.len() >= ihl + 8 {
            out.push(ip[ihl + 8..].to_vec());
        }
    }
    out
}

/// Whether the capture shows `needle`: in the raw bytes, or inside any
/// payload that decodes as a (compressed) chitchat message.
fn capture_shows(pcap: &[u8], needle: &str) -> bool {
    if pcap.windows(needle.len()).any(|w| w == needle.as_bytes()) {
        return true;
    }
    udp_payloads(pcap).iter().any(|p| {
        ChitchatMessage::deserialize(&mut &p[..])
            .map(|m| format!("{m:?}").contains(needle))
            .unwrap_or(false)
    })
}

fn capture_registration(transport: &str, name: &str) -> (Vec<u8>, usize) {
    let m = mesh_of(2, transport);
    m.converged(&[0, 1]);
    let pcap = m.dir.path().join("gossip.pcap");
    let ports: Vec<String> = m
        .peers
        .iter()
        .map(|p| format!("port {}", p.gossip.port()))
        .collect();
    let mut dump = std::process::Command::new("tcpdump")
        .args(["-i", "lo", "-U", "-w"])
        .arg(&pcap)
        .arg(format!("udp and ({})", ports.join(" or ")))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("tcpdump (scripts/test installs it)");
    std::thread::sleep(Duration::from_millis(800));
    let backend = Backend::start("b");
    let port = free_port("127.0.0.1");
    m.peers[0].add(name, port, backend.addr);
    eventually(
        Duration::from_secs(10),
        "the other peer to serve it",
        || greeting(m.peers[1].frontend(port)),
    );
    std::thread::sleep(Duration::from_millis(500));
    signal(dump.id(), "INT");
    let _ = dump.wait();
    let bytes = std::fs::read(&pcap).unwrap();
    let packets = udp_payloads(&bytes).len();
    (bytes, packets)
}

#[test]
fn registry_contents_are_never_on_the_wire_in_clear() {
    let name = "zebra-distinctive-7731";
    let (quic, quic_packets) = capture_registration("quic", name);
    assert!(
        quic_packets > 5,
        "the capture saw the gossip ({quic_packets} packets)"
    );
    assert!(
        !capture_shows(&quic, name),
        "the backend's name is readable in QUIC gossip"
    );
    // Control: plain UDP gossip does show it, so the search works.
    let (udp, _) = capture_registration("udp", name);
    assert!(
        capture_shows(&udp, name),
        "control: the name should be visible in UDP gossip"
    );
}

/// A UDP relay between two peers that also replays and corrupts what it relays.
struct Meddler {
    front: SocketAddr,
    stop: Arc<AtomicBool>,
    replayed: Arc<AtomicUsize>,
    tampered: Arc<AtomicUsize>,
    recorded: Arc<std::sync::Mutex<Vec<Vec<u8>>>>,
    back: Arc<UdpSocket>,
    target: SocketAddr,
}

impl Meddler {
    /// Relays datagrams arriving at a new address to `target` and back.
    fn start(target: SocketAddr) -> Meddler {
        let front = Arc::new(UdpSocket::bind("127.0.0.8:0").unwrap());
        let back = Arc::new(UdpSocket::bind("127.0.0.8:0").unwrap());
        front
            .set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        back.set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        let m = Meddler {
            front: front.local_addr().unwrap(),
            stop: Arc::default(),
            replayed: Arc::default(),
            tampered: Arc::default(),
            recorded: Arc::default(),
            back: back.clone(),
            target,
        };
        let client: Arc<std::sync::Mutex<Option<SocketAddr>>> = Arc::default();
        {
            let (front, back, stop, client) =
                (front.clone(), back.clone(), m.stop.clone(), client.clone());
            let (replayed, tampered, recorded) =
                (m.replayed.clone(), m.tampered.clone(), m.recorded.clone());
            std::thread::spawn(move || {
                let mut buf = [0u8; 65_536];
                let mut n_pkts = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    if let Ok((n, from)) = front.recv_from(&mut buf) {
                        *client.lock().unwrap() = Some(from);
                        let pkt = buf[..n].to_vec();
                        let _ = back.send_to(&pkt, target);
                        n_pkts += 1;
                        // Replay every packet, and corrupt every third copy.
                        let _ = back.send_to(&pkt, target);
                        replayed.fetch_add(1, Ordering::Relaxed);
                        if n_pkts % 3 == 0 && pkt.len() > 40 {
                            let mut bad = pkt.clone();
                            let mid = bad.len() / 2;
                            bad[mid] ^= 0x5a;
                            let _ = back.send_to(&bad, target);
                            tampered.fetch_add(1, Ordering::Relaxed);
                        }
                        recorded.lock().unwrap().push(pkt);
                    }
                }
            });
        }
        {
            let (front, back, stop) = (front, back, m.stop.clone());
            std::thread::spawn(move || {
                let mut buf = [0u8; 65_536];
                while !stop.load(Ordering::Relaxed) {
                    if let Ok((n, _)) = back.recv_from(&mut buf) {
                        if let Some(c) = *client.lock().unwrap() {
                            let _ = front.send_to(&buf[..n], c);
                        }
                    }
                }
            });
        }
        m
    }

    /// Sends every recorded datagram again, long after the fact.
    fn replay_all(&self) -> usize {
        let rec = self.recorded.lock().unwrap();
        for p in rec.iter() {
            let _ = self.back.send_to(p, self.target);
        }
        rec.len()
    }
}

impl Drop for Meddler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

#[test]
fn tampered_and_replayed_packets_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "mesh-test-token-0123456789abcdef\n").unwrap();
    // Peer 2 listens where peer 1 cannot reach it except through the meddler.
    let p2_gossip: SocketAddr = format!("127.0.0.2:{}", free_udp_port("127.0.0.2"))
        .parse()
        .unwrap();
    let meddler = Meddler::start(p2_gossip);
    // Peer 1 catches up with peer 2 once that one runs.
    let p1 = Daemon::launch(DaemonOpts {
        node_id: "lb1".into(),
        seeds: vec![meddler.front],
        token_file: Some(token.clone()),
        mesh: issue_peer_cert(dir.path(), "lb1"),
        ..DaemonOpts::default()
    });
    let p2 = Daemon::start(DaemonOpts {
        ip: "127.0.0.2".into(),
        node_id: "lb2".into(),
        gossip_port: Some(p2_gossip.port()),
        token_file: Some(token),
        // Peer 1 reaches peer 2 only at the meddler's address.
        mesh: format!(
            "{}\nadvertise = \"{}\"",
            issue_peer_cert(dir.path(), "lb2"),
            meddler.front
        ),
        ..DaemonOpts::default()
    });
    p1.wait_healthy();
    let backend = Backend::start("b");
    let port = free_port("127.0.0.1");
    p1.add("traefik", port, backend.addr);
    eventually(
        Duration::from_secs(15),
        "the add to reach peer 2 through the meddler",
        || p2.frontend_ports().contains(&(port as u64)).then_some(()),
    );
    p1.delete("traefik", port, backend.addr);
    eventually(
        Duration::from_secs(15),
        "the delete to reach peer 2",
        || (!p2.frontend_ports().contains(&(port as u64))).then_some(()),
    );
    assert!(
        meddler.replayed.load(Ordering::Relaxed) > 0
            && meddler.tampered.load(Ordering::Relaxed) > 0
    );
    // Replay the whole conversation, including the add: nothing comes back.
    let digest = p2.status()["registry"]["digest"].clone();
    assert!(meddler.replay_all() > 0);
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        !p2.frontend_ports().contains(&(port as u64)),
        "a replayed add resurrected the server"
    );
    assert_eq!(p2.status()["registry"]["digest"], digest);
    assert!(greeting(p2.frontend(port)).is_none());
}
