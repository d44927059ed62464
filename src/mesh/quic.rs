//! Gossip over QUIC with mutual TLS: a chitchat [`Transport`] on quinn.
//!
//! Every message travels on its own unidirectional stream of a connection
//! (a *link*) authenticated both ways against the cluster CA, so gossip is
//! encrypted, integrity-protected and replay-proof, and a host without a
//! cluster certificate cannot read it, send it or appear as a peer. Sending
//! never blocks chitchat's loop: each destination has a queue and a task that
//! connects and writes; when a peer is unreachable its messages are dropped,
//! as UDP would.
//!
//! A peer that crashes and starts again at the same address is heard at once,
//! because no link to a dead incarnation lingers:
//! - the stateless-reset key comes from the peer's private key, so a restarted
//!   endpoint resets its predecessor's links as soon as any packet (a message
//!   or a keep-alive) reaches it;
//! - a message leaves on the newest open link with its destination, whichever
//!   side opened it, so a reply takes the link a restarted peer just opened;
//! - a new handshake from a peer closes the links it replaces ([`Links::add`]);
//! - a failed write closes its link and the message is tried once more;
//! - a sender waiting for a connect to a peer that is down takes the link
//!   that peer opens when it comes back;
//! - keep-alive and idle timeout are a few gossip intervals, well inside the
//!   failure detector's window.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
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
use crate::tls::{PEER_NAME, PeerTls, node_id_of, serial_of};

pub use super::trust::Identities;

/// Logs a refusal at most once a minute per remote address and reason, so a
/// flood cannot fill the log but every distinct reason is seen.
#[derive(Default)]
struct RefusalLog {
    last: Mutex<HashMap<(IpAddr, String), Instant>>,
    /// Counts every refusal, logged or not.
    metrics: Option<Arc<crate::metrics::Metrics>>,
}

impl RefusalLog {
    /// A handshake that failed: refused by this peer for the certificate's
    /// fault, or by the other side (it does not trust this peer: a host of
    /// another cluster, or this peer's own certificate refused), counted apart.
    /// A peer that simply gave up its connect (it took a link this peer
    /// opened meanwhile) closes without a TLS alert: not a refusal.
    fn failed_handshake(&self, remote: SocketAddr, why: &str) {
        let reason = if !why.contains("by peer") {
            crate::metrics::refused_connection::of_handshake(why)
        } else if why.contains("cryptographic handshake failed") {
            crate::metrics::refused_connection::REFUSED_BY_PEER
        } else {
            tracing::debug!(%remote, %why, "a peer abandoned its gossip handshake");
            return;
        };
        self.refused(remote, reason, why);
    }

    /// Counts and (at most once a minute per address and reason) logs a
    /// refused connection; `reason` is one of [`crate::metrics::refused_connection`].
    fn refused(&self, remote: SocketAddr, reason: &'static str, why: &str) {
        if let Some(m) = &self.metrics {
            m.refused_connection(reason);
        }
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
            if reason == crate::metrics::refused_connection::REFUSED_BY_PEER {
                tracing::warn!(%remote, reason = %why, "the other side refused a gossip connection with this peer");
            } else {
                tracing::warn!(%remote, reason = %why, "refused a gossip connection");
            }
        }
    }
}

/// A peer that connects to us has no open link with us; a link of ours with
/// it set up longer than this before its handshake leads to an earlier
/// incarnation (a connect racing ours is far younger).
const RACING_CONNECT: Duration = Duration::from_secs(1);

/// How long a destination that could not be reached is not tried again;
/// its messages are dropped meanwhile.
const RETRY_AFTER: Duration = Duration::from_millis(500);

/// The application close code of a link replaced by a newer one.
const SUPERSEDED: u32 = 2;

/// One authenticated connection with a peer.
struct Link {
    conn: quinn::Connection,
    /// Whether this peer opened it.
    ours: bool,
    established: Instant,
}

/// Every open link, by the peer address at its other end.
struct Links {
    by_addr: Mutex<HashMap<SocketAddr, Vec<Link>>>,
    /// Counts links added, for senders waiting on a connect.
    added: tokio::sync::watch::Sender<u64>,
}

impl Default for Links {
    fn default() -> Self {
        Self {
            by_addr: Mutex::default(),
            added: tokio::sync::watch::channel(0).0,
        }
    }
}

impl Links {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<SocketAddr, Vec<Link>>> {
        self.by_addr.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The newest open link with `addr`.
    fn newest(&self, addr: SocketAddr) -> Option<quinn::Connection> {
        let mut all = self.lock();
        let links = all.get_mut(&addr)?;
        links.retain(|l| l.conn.close_reason().is_none());
        let newest = links.last().map(|l| l.conn.clone());
        if links.is_empty() {
            all.remove(&addr);
        }
        newest
    }

    /// Records a new authenticated link. A peer opens one only when it has
    /// no open link with us, so its handshake (begun at `began`) replaces
    /// every link it opened before and every link we opened to it well
    /// before: those lead to an earlier incarnation, or one it gave up.
    fn add(&self, addr: SocketAddr, conn: quinn::Connection, ours: bool, began: Instant) {
        let mut all = self.lock();
        let links = all.entry(addr).or_default();
        links.retain(|l| {
            let open = l.conn.close_reason().is_none();
            let replaced = !ours && (!l.ours || l.established + RACING_CONNECT < began);
            if open && replaced {
                tracing::debug!(peer = %addr, "a new handshake replaces an older gossip link");
                l.conn
                    .close(SUPERSEDED.into(), b"superseded by a new handshake");
            }
            open && !replaced
        });
        links.push(Link {
            conn,
            ours,
            established: Instant::now(),
        });
        drop(all);
        self.added.send_modify(|n| *n += 1);
    }

    /// Resolves once a link with `addr` is open (e.g. one the peer opened).
    async fn opened(&self, addr: SocketAddr) -> quinn::Connection {
        let mut added = self.added.subscribe();
        loop {
            if let Some(c) = self.newest(addr) {
                return c;
            }
            if added.changed().await.is_err() {
                return std::future::pending().await;
            }
        }
    }

    /// Closes every link whose peer certificate has a serial in `revoked`
    /// (hex); returns how many.
    fn close_revoked(&self, revoked: &[String]) -> usize {
        let mut closed = 0;
        for links in self.lock().values() {
            for l in links {
                let serial = l
                    .conn
                    .peer_identity()
                    .and_then(|any| any.downcast::<Vec<CertificateDer<'static>>>().ok())
                    .and_then(|certs| certs.first().and_then(|c| serial_of(c).ok()));
                if serial.is_some_and(|s| revoked.contains(&s)) {
                    l.conn.close(REVOKED.into(), b"certificate revoked");
                    closed += 1;
                }
            }
        }
        closed
    }

    /// Forgets a link that has closed.
    fn remove(&self, addr: SocketAddr, conn: &quinn::Connection) {
        let mut all = self.lock();
        if let Some(links) = all.get_mut(&addr) {
            links.retain(|l| l.conn.stable_id() != conn.stable_id());
            if links.is_empty() {
                all.remove(&addr);
            }
        }
    }
}

/// How fast a dead link is noticed, from the gossip interval.
#[derive(Debug, Clone, Copy)]
struct Liveness {
    keep_alive: Duration,
    idle_timeout: Duration,
}

impl Liveness {
    /// chitchat declares a peer dead after roughly 15 to 20 gossip
    /// intervals without news; links notice within about 10, and a
    /// keep-alive every 2 keeps a quiet link open.
    fn for_gossip_interval(gossip: Duration) -> Liveness {
        Liveness {
            keep_alive: (gossip * 2).clamp(Duration::from_millis(100), Duration::from_secs(1)),
            idle_timeout: (gossip * 10).clamp(Duration::from_secs(2), Duration::from_secs(10)),
        }
    }
}

/// The QUIC transport of one peer.
#[derive(Clone)]
pub struct QuicTransport {
    tls: PeerTls,
    liveness: Liveness,
    identities: Arc<Identities>,
    refusals: Arc<RefusalLog>,
    /// The revocation list to load and reload, and the CA that signs it.
    crl: Option<(PathBuf, PathBuf)>,
}

impl QuicTransport {
    /// A transport for a mesh that gossips every `gossip_interval`.
    pub fn new(tls: PeerTls, gossip_interval: Duration) -> Self {
        Self {
            tls,
            liveness: Liveness::for_gossip_interval(gossip_interval),
            identities: Arc::default(),
            refusals: Arc::default(),
            crl: None,
        }
    }

    /// Refuses the certificates the revocation list at `crl` (signed by the
    /// CA at `ca_cert`) revokes, reloading it when it changes: links of a
    /// certificate revoked while connected are closed.
    pub fn with_crl(self, crl: PathBuf, ca_cert: PathBuf) -> Self {
        Self {
            crl: Some((crl, ca_cert)),
            ..self
        }
    }

    /// Counts refused connections in `lbmesh_peer_connections_refused_total`.
    pub fn with_metrics(self, metrics: Arc<crate::metrics::Metrics>) -> Self {
        Self {
            refusals: Arc::new(RefusalLog {
                metrics: Some(metrics),
                ..RefusalLog::default()
            }),
            ..self
        }
    }

    /// Records who authenticated where in `identities` (e.g. one kept in
    /// the data directory) instead of a fresh one.
    pub fn with_identities(self, identities: Arc<Identities>) -> Self {
        Self { identities, ..self }
    }

    pub fn identities(&self) -> Arc<Identities> {
        self.identities.clone()
    }

    fn transport_config(&self) -> Arc<quinn::TransportConfig> {
        let mut t = quinn::TransportConfig::default();
        t.max_idle_timeout(Some(
            quinn::IdleTimeout::try_from(self.liveness.idle_timeout).expect("at most 10 s fits"),
        ));
        t.keep_alive_interval(Some(self.liveness.keep_alive));
        // Peers sit on one network: a lost handshake packet is sent again
        // after a LAN round trip or so, not after quinn's 333 ms guess.
        t.initial_rtt(Duration::from_millis(50));
        t.max_concurrent_uni_streams(1024u32.into());
        t.max_concurrent_bidi_streams(0u32.into());
        Arc::new(t)
    }

    /// The same stateless-reset key on every start with the same private
    /// key: a restarted endpoint can reset links its predecessor held.
    fn endpoint_config(&self) -> quinn::EndpointConfig {
        let secret = self.tls.derived_secret(b"lbmesh gossip stateless reset v1");
        quinn::EndpointConfig::new(Arc::new(ring::hmac::Key::new(
            ring::hmac::HMAC_SHA256,
            &secret,
        )))
    }
}

/// The application close code of a link whose certificate was revoked.
const REVOKED: u32 = 3;

fn modified(p: &std::path::Path) -> Option<std::time::SystemTime> {
    std::fs::metadata(p).and_then(|m| m.modified()).ok()
}

/// The endpoint's server and client configs for `tls`.
fn endpoint_configs(
    tls: &PeerTls,
    transport: &Arc<quinn::TransportConfig>,
) -> anyhow::Result<(quinn::ServerConfig, quinn::ClientConfig)> {
    let server_crypto = QuicServerConfig::try_from(Arc::new(tls.server_config()?))?;
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(server_crypto));
    server.transport_config(transport.clone());
    let client_crypto = QuicClientConfig::try_from(Arc::new(tls.client_config()?))?;
    let mut client = quinn::ClientConfig::new(Arc::new(client_crypto));
    client.transport_config(transport.clone());
    Ok((server, client))
}

/// Reloads the revocation list when its file changes (checked every 2 s):
/// new handshakes refuse what it revokes, and open links of a revoked
/// certificate are closed at once. A list that does not load (torn copy,
/// wrong signer) is logged and the current one kept.
async fn watch_crl(
    peers: Arc<Peers>,
    tls: PeerTls,
    transport: Arc<quinn::TransportConfig>,
    (crl, ca, mut seen): (PathBuf, PathBuf, Option<std::time::SystemTime>),
) {
    loop {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let now = modified(&crl);
        if now.is_none() || now == seen {
            continue;
        }
        let loaded = crate::tls::load_crl(&crl, &ca)
            .map_err(anyhow::Error::from)
            .and_then(|(der, serials)| {
                let (server, client) = endpoint_configs(&tls.with_crl(der), &transport)?;
                Ok((server, client, serials))
            });
        match loaded {
            Ok((server, client, serials)) => {
                seen = now;
                peers.endpoint.set_server_config(Some(server));
                peers.client.store(Arc::new(client));
                let closed = peers.links.close_revoked(&serials);
                if let Some(m) = &peers.refusals.metrics {
                    for _ in 0..closed {
                        m.refused_connection(crate::metrics::refused_connection::REVOKED);
                    }
                }
                tracing::warn!(
                    crl = %crl.display(),
                    revoked = serials.len(),
                    closed_links = closed,
                    "loaded a new peer certificate revocation list"
                );
            }
            Err(e) => {
                tracing::warn!(crl = %crl.display(), error = %format!("{e:#}"), "cannot load the changed revocation list; keeping the current one")
            }
        }
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
        let mut tls = self.tls.clone();
        let mut crl_stamp = None;
        if let Some((crl, ca)) = &self.crl {
            if crl.exists() {
                crl_stamp = modified(crl);
                let (der, serials) = crate::tls::load_crl(crl, ca)?;
                tracing::info!(crl = %crl.display(), revoked = serials.len(), "loaded the peer certificate revocation list");
                tls = tls.with_crl(der);
            }
        }
        let transport = self.transport_config();
        let (server, client) = endpoint_configs(&tls, &transport)?;
        let runtime =
            quinn::default_runtime().ok_or_else(|| anyhow::anyhow!("no async runtime"))?;
        let mut endpoint = quinn::Endpoint::new(
            self.endpoint_config(),
            Some(server),
            std::net::UdpSocket::bind(listen_addr)?,
            runtime,
        )?;
        endpoint.set_default_client_config(client.clone());

        let (inbox_tx, inbox) = mpsc::channel(4096);
        let peers = Arc::new(Peers {
            client: arc_swap::ArcSwap::from_pointee(client.clone()),
            endpoint: endpoint.clone(),
            inbox: inbox_tx,
            links: Links::default(),
            write_timeout: self.liveness.idle_timeout,
            identities: self.identities.clone(),
            refusals: self.refusals.clone(),
        });
        let accept = tokio::spawn(accept_loop(peers.clone()));
        let crl_watch = self.crl.clone().map(|(crl, ca)| {
            tokio::spawn(watch_crl(
                peers.clone(),
                self.tls.clone(),
                transport,
                (crl, ca, crl_stamp),
            ))
        });
        Ok(Box::new(QuicSocket {
            peers,
            inbox,
            senders: HashMap::new(),
            accept,
            crl_watch,
        }))
    }
}

/// What the accept loop, the readers and the senders of one endpoint share.
struct Peers {
    endpoint: quinn::Endpoint,
    /// The client side of new links (replaced when the revocation list changes).
    client: arc_swap::ArcSwap<quinn::ClientConfig>,
    inbox: mpsc::Sender<(SocketAddr, ChitchatMessage)>,
    links: Links,
    write_timeout: Duration,
    identities: Arc<Identities>,
    refusals: Arc<RefusalLog>,
}

impl Peers {
    /// Checks who an established connection is, records it as a link and
    /// starts reading from it; None (and the connection closed) if it is not a peer.
    fn admit(
        self: &Arc<Self>,
        addr: SocketAddr,
        conn: quinn::Connection,
        ours: bool,
        began: Instant,
    ) -> Option<quinn::Connection> {
        let node = match peer_node(&conn) {
            Ok(n) => n,
            Err(why) => {
                conn.close(1u32.into(), b"not a peer certificate");
                self.refusals
                    .refused(addr, crate::metrics::refused_connection::IDENTITY, &why);
                return None;
            }
        };
        self.identities.opened(addr, node.clone(), conn.stable_id());
        {
            let (identities, conn) = (self.identities.clone(), conn.clone());
            tokio::spawn(async move {
                conn.closed().await;
                identities.closed(conn.stable_id());
            });
        }
        self.links.add(addr, conn.clone(), ours, began);
        tokio::spawn(read_link(self.clone(), addr, node, conn.clone()));
        Some(conn)
    }

    /// Opens a link to `to`.
    async fn connect(self: &Arc<Self>, to: SocketAddr) -> Option<quinn::Connection> {
        let began = Instant::now();
        let client = self.client.load().as_ref().clone();
        match connect(&self.endpoint, client, to).await {
            Ok(c) => self.admit(to, c, true, began),
            Err(why) => {
                tracing::debug!(%to, %why, "cannot reach peer");
                if why.contains("certificate") || why.contains("handshake") {
                    self.refusals.failed_handshake(to, &why);
                }
                None
            }
        }
    }
}

async fn accept_loop(peers: Arc<Peers>) {
    while let Some(incoming) = peers.endpoint.accept().await {
        let began = Instant::now();
        let peers = peers.clone();
        tokio::spawn(async move {
            let remote = incoming.remote_address();
            match tokio::time::timeout(Duration::from_secs(10), incoming).await {
                Ok(Ok(conn)) => {
                    peers.admit(remote, conn, false, began);
                }
                Ok(Err(e)) => peers.refusals.failed_handshake(remote, &e.to_string()),
                Err(_) => peers.refusals.refused(
                    remote,
                    crate::metrics::refused_connection::HANDSHAKE_TIMEOUT,
                    "handshake timed out",
                ),
            }
        });
    }
}

/// Hands every message that arrives on one link to chitchat, screened for
/// what `node` (its certificate) may say (see [`super::trust`]).
async fn read_link(peers: Arc<Peers>, remote: SocketAddr, node: PeerId, conn: quinn::Connection) {
    while let Ok(mut stream) = conn.accept_uni().await {
        let bytes = match stream.read_to_end(MAX_MESSAGE + 1024).await {
            Ok(b) => b,
            Err(_) => continue,
        };
        match ChitchatMessage::deserialize(&mut &bytes[..]) {
            Ok(mut msg) => {
                peers.identities.screen(&node, &mut msg);
                if peers.inbox.try_send((remote, msg)).is_err() && peers.inbox.is_closed() {
                    return;
                }
            }
            Err(e) => {
                tracing::debug!(%remote, error = %e, "undecodable gossip message");
            }
        }
    }
    peers.links.remove(remote, &conn);
}

struct QuicSocket {
    peers: Arc<Peers>,
    inbox: mpsc::Receiver<(SocketAddr, ChitchatMessage)>,
    senders: HashMap<SocketAddr, mpsc::Sender<Vec<u8>>>,
    accept: JoinHandle<()>,
    crl_watch: Option<JoinHandle<()>>,
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
                tokio::spawn(sender(self.peers.clone(), to, rx));
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
        if let Some(w) = &self.crl_watch {
            w.abort();
        }
        self.peers.endpoint.close(0u32.into(), b"shutting down");
    }
}

/// Delivers queued messages to one peer on its newest link, opening one
/// when there is none.
async fn sender(peers: Arc<Peers>, to: SocketAddr, mut queue: mpsc::Receiver<Vec<u8>>) {
    let mut retry_at = tokio::time::Instant::now();
    while let Some(bytes) = queue.recv().await {
        // A failed write closes its link; the message gets one more try.
        for _ in 0..2 {
            let conn = match peers.links.newest(to) {
                Some(c) => c,
                // The peer was unreachable moments ago: drop.
                None if tokio::time::Instant::now() < retry_at => break,
                // A connect to a peer that is down can take seconds; a peer
                // that comes back opens a link itself, and that one serves.
                None => match tokio::select! {
                    c = peers.connect(to) => c,
                    c = peers.links.opened(to) => Some(c),
                } {
                    Some(c) => c,
                    None => {
                        retry_at = tokio::time::Instant::now() + RETRY_AFTER;
                        break;
                    }
                },
            };
            let sent = async {
                let mut s = conn.open_uni().await.map_err(|e| e.to_string())?;
                s.write_all(&bytes).await.map_err(|e| e.to_string())?;
                s.finish().map_err(|e| e.to_string())
            };
            match tokio::time::timeout(peers.write_timeout, sent)
                .await
                .unwrap_or_else(|_| Err("write timed out".into()))
            {
                Ok(()) => break,
                Err(why) => {
                    tracing::debug!(%to, %why, "gossip send failed; closing the link");
                    conn.close(0u32.into(), b"send failed");
                    peers.links.remove(to, &conn);
                }
            }
        }
    }
}

async fn connect(
    endpoint: &quinn::Endpoint,
    client: quinn::ClientConfig,
    to: SocketAddr,
) -> Result<quinn::Connection, String> {
    let connecting = endpoint
        .connect_with(client, to, PEER_NAME)
        .map_err(|e| e.to_string())?;
    match tokio::time::timeout(Duration::from_secs(3), connecting).await {
        Ok(Ok(c)) => Ok(c),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("connect timed out".into()),
    }
}
