//! Gossip over QUIC with mutual TLS: a chitchat [`Transport`] on quinn.
//!
//! Every message travels on its own unidirectional stream of a connection
//! authenticated both ways against the cluster CA, so gossip is encrypted,
//! integrity-protected and replay-proof, and a host without a cluster
//! certificate cannot read it, send it or appear as a peer. Sending never
//! blocks chitchat's loop: each destination has a queue and a task that
//! connects and writes; when a peer is unreachable its messages are dropped,
//! as UDP would.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use chitchat::transport::{Socket, Transport};
use chitchat::{ChitchatMessage, Deserializable, Serializable};
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use rustls_pki_types::CertificateDer;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::transport::MAX_MESSAGE;
use crate::registry::PeerId;
use crate::tls::{PEER_NAME, PeerTls, node_id_of};

/// Which node each authenticated peer address presented a certificate for.
#[derive(Debug, Default)]
pub struct Identities {
    by_addr: Mutex<HashMap<SocketAddr, PeerId>>,
}

impl Identities {
    fn record(&self, addr: SocketAddr, node: PeerId) {
        self.by_addr
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(addr, node);
    }

    /// The node id the certificate at `addr` named, if a connection with it
    /// was authenticated.
    pub fn node_at(&self, addr: SocketAddr) -> Option<PeerId> {
        self.by_addr
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&addr)
            .cloned()
    }
}

/// Logs a refusal at most once a minute per remote address and reason, so a
/// flood cannot fill the log but every distinct reason is seen.
#[derive(Default)]
struct RefusalLog {
    last: Mutex<HashMap<(IpAddr, String), Instant>>,
}

impl RefusalLog {
    fn refused(&self, remote: SocketAddr, why: &str) {
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        if last.len() > 10_000 {
            last.clear();
        }
        // Numbers (times, counts) vary between attempts; the reason does not.
        let key = (
            remote.ip(),
            why.chars().filter(|c| !c.is_ascii_digit()).collect(),
        );
        let due = last
            .get(&key)
            .is_none_or(|t| now.duration_since(*t) > Duration::from_secs(60));
        if due {
            last.insert(key, now);
            tracing::warn!(%remote, reason = %why, "refused a gossip connection");
        }
    }
}

/// The QUIC transport of one peer.
#[derive(Clone)]
pub struct QuicTransport {
    tls: PeerTls,
    identities: Arc<Identities>,
    refusals: Arc<RefusalLog>,
}

impl QuicTransport {
    pub fn new(tls: PeerTls) -> Self {
        Self {
            tls,
            identities: Arc::default(),
            refusals: Arc::default(),
        }
    }

    pub fn identities(&self) -> Arc<Identities> {
        self.identities.clone()
    }

    fn transport_config() -> Arc<quinn::TransportConfig> {
        let mut t = quinn::TransportConfig::default();
        t.max_idle_timeout(Some(
            quinn::IdleTimeout::try_from(Duration::from_secs(15)).expect("15 s fits"),
        ));
        t.keep_alive_interval(Some(Duration::from_secs(3)));
        t.max_concurrent_uni_streams(1024u32.into());
        t.max_concurrent_bidi_streams(0u32.into());
        Arc::new(t)
    }
}

fn peer_node(conn: &quinn::Connection) -> Result<PeerId, String> {
    let certs = conn
        .peer_identity()
        .and_then(|any| any.downcast::<Vec<CertificateDer<'static>>>().ok())
        .ok_or("no peer certificate")?;
    let leaf = certs.first().ok_or("empty certificate chain")?;
    node_id_of(leaf)
}

#[async_trait]
impl Transport for QuicTransport {
    async fn open(&self, listen_addr: SocketAddr) -> anyhow::Result<Box<dyn Socket>> {
        let server_crypto = QuicServerConfig::try_from(Arc::new(self.tls.server_config()?))?;
        let mut server = quinn::ServerConfig::with_crypto(Arc::new(server_crypto));
        server.transport_config(Self::transport_config());
        let client_crypto = QuicClientConfig::try_from(Arc::new(self.tls.client_config()?))?;
        let mut client = quinn::ClientConfig::new(Arc::new(client_crypto));
        client.transport_config(Self::transport_config());
        let mut endpoint = quinn::Endpoint::server(server, listen_addr)?;
        endpoint.set_default_client_config(client);

        let (inbox_tx, inbox) = mpsc::channel(4096);
        let accept = tokio::spawn(accept_loop(
            endpoint.clone(),
            inbox_tx,
            self.identities.clone(),
            self.refusals.clone(),
        ));
        Ok(Box::new(QuicSocket {
            endpoint,
            inbox,
            senders: HashMap::new(),
            identities: self.identities.clone(),
            refusals: self.refusals.clone(),
            accept,
        }))
    }
}

async fn accept_loop(
    endpoint: quinn::Endpoint,
    inbox: mpsc::Sender<(SocketAddr, ChitchatMessage)>,
    identities: Arc<Identities>,
    refusals: Arc<RefusalLog>,
) {
    while let Some(incoming) = endpoint.accept().await {
        let (inbox, identities, refusals) = (inbox.clone(), identities.clone(), refusals.clone());
        tokio::spawn(async move {
            let remote = incoming.remote_address();
            let conn = match tokio::time::timeout(Duration::from_secs(10), incoming).await {
                Ok(Ok(c)) => c,
                Ok(Err(e)) => return refusals.refused(remote, &e.to_string()),
                Err(_) => return refusals.refused(remote, "handshake timed out"),
            };
            let node = match peer_node(&conn) {
                Ok(n) => n,
                Err(why) => {
                    conn.close(1u32.into(), b"not a peer certificate");
                    return refusals.refused(remote, &why);
                }
            };
            identities.record(remote, node);
            while let Ok(mut stream) = conn.accept_uni().await {
                let bytes = match stream.read_to_end(MAX_MESSAGE + 1024).await {
                    Ok(b) => b,
                    Err(_) => continue,
                };
                match ChitchatMessage::deserialize(&mut &bytes[..]) {
                    Ok(msg) => {
                        if inbox.try_send((remote, msg)).is_err() && inbox.is_closed() {
                            return;
                        }
                    }
                    Err(e) => {
                        tracing::debug!(%remote, error = %e, "undecodable gossip message");
                    }
                }
            }
        });
    }
}

struct QuicSocket {
    endpoint: quinn::Endpoint,
    inbox: mpsc::Receiver<(SocketAddr, ChitchatMessage)>,
    senders: HashMap<SocketAddr, mpsc::Sender<Vec<u8>>>,
    identities: Arc<Identities>,
    refusals: Arc<RefusalLog>,
    accept: JoinHandle<()>,
}

#[async_trait]
impl Socket for QuicSocket {
    async fn send(&mut self, to: SocketAddr, msg: ChitchatMessage) -> anyhow::Result<()> {
        let bytes = msg.serialize_to_vec();
        anyhow::ensure!(
            bytes.len() <= MAX_MESSAGE,
            "message of {} bytes exceeds {MAX_MESSAGE}",
            bytes.len()
        );
        let queue = match self.senders.get(&to) {
            Some(q) if !q.is_closed() => q.clone(),
            _ => {
                let (tx, rx) = mpsc::channel(64);
                tokio::spawn(sender(
                    self.endpoint.clone(),
                    to,
                    rx,
                    self.identities.clone(),
                    self.refusals.clone(),
                ));
                self.senders.insert(to, tx.clone());
                tx
            }
        };
        // A full queue means the peer is slow or gone: drop, as UDP would.
        let _ = queue.try_send(bytes);
        Ok(())
    }

    async fn recv(&mut self) -> anyhow::Result<(SocketAddr, ChitchatMessage)> {
        self.inbox
            .recv()
            .await
            .ok_or_else(|| anyhow::anyhow!("QUIC endpoint closed"))
    }
}

impl Drop for QuicSocket {
    fn drop(&mut self) {
        self.accept.abort();
        self.endpoint.close(0u32.into(), b"shutting down");
    }
}

/// Delivers queued messages to one peer, (re)connecting as needed.
async fn sender(
    endpoint: quinn::Endpoint,
    to: SocketAddr,
    mut queue: mpsc::Receiver<Vec<u8>>,
    identities: Arc<Identities>,
    refusals: Arc<RefusalLog>,
) {
    let mut conn: Option<quinn::Connection> = None;
    let mut retry_at = tokio::time::Instant::now();
    while let Some(bytes) = queue.recv().await {
        if conn.as_ref().is_some_and(|c| c.close_reason().is_some()) {
            conn = None;
        }
        if conn.is_none() {
            if tokio::time::Instant::now() < retry_at {
                continue; // the peer was unreachable moments ago: drop
            }
            match connect(&endpoint, to).await {
                Ok(c) => match peer_node(&c) {
                    Ok(node) => {
                        identities.record(to, node);
                        conn = Some(c);
                    }
                    Err(why) => {
                        c.close(1u32.into(), b"not a peer certificate");
                        refusals.refused(to, &why);
                    }
                },
                Err(why) => {
                    tracing::debug!(%to, %why, "cannot reach peer");
                    if why.contains("certificate") || why.contains("handshake") {
                        refusals.refused(to, &why);
                    }
                }
            }
            if conn.is_none() {
                retry_at = tokio::time::Instant::now() + Duration::from_millis(500);
                continue;
            }
        }
        let c = conn.as_ref().expect("connected above");
        let sent = async {
            let mut s = c.open_uni().await.map_err(|e| e.to_string())?;
            s.write_all(&bytes).await.map_err(|e| e.to_string())?;
            s.finish().map_err(|e| e.to_string())
        };
        if let Err(why) = tokio::time::timeout(Duration::from_secs(5), sent)
            .await
            .unwrap_or_else(|_| Err("write timed out".into()))
        {
            tracing::debug!(%to, %why, "gossip send failed; reconnecting");
            conn = None;
        }
    }
}

async fn connect(endpoint: &quinn::Endpoint, to: SocketAddr) -> Result<quinn::Connection, String> {
    let connecting = endpoint.connect(to, PEER_NAME).map_err(|e| e.to_string())?;
    match tokio::time::timeout(Duration::from_secs(3), connecting).await {
        Ok(Ok(c)) => Ok(c),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("connect timed out".into()),
    }
}
