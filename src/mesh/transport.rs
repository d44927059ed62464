//! Transports for gossip: chitchat's UDP, and an in-memory network with
//! partitions, loss, delay and (optionally) connections for tests and
//! simulations.
//!
//! Why chitchat 0.11: from 0.12 on the message codec is private to the crate,
//! so no transport can be written outside it; 0.11 exposes
//! [`chitchat::Serializable`] and [`chitchat::Deserializable`], which the
//! in-memory network here and the QUIC transport use.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::ops::Range;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use chitchat::transport::Socket;
pub use chitchat::transport::{Transport, UdpTransport};
use chitchat::{ChitchatMessage, Deserializable, Serializable};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use tokio::sync::mpsc;

/// The largest message, as for UDP.
pub const MAX_MESSAGE: usize = 65_507;

type Inbox = mpsc::UnboundedSender<(SocketAddr, ChitchatMessage)>;

/// How messages travel in a [`MemoryNetwork`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Links {
    /// Datagrams, as UDP: a message reaches whoever listens at its address now.
    #[default]
    Datagrams,
    /// Connections, as QUIC: a message travels on a connection opened to one
    /// socket (one incarnation of a peer); after that peer restarts, the
    /// connection leads nowhere until it is noticed, by these rules.
    Connections(LinkRules),
}

/// How a connection to a dead incarnation is noticed (see [`super::quic`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinkRules {
    /// The restarted peer resets a connection to its predecessor at its
    /// first packet (a stateless reset): that message is lost, the next one
    /// opens a new connection.
    pub reset: bool,
    /// A message leaves on the newest connection with its destination,
    /// whichever side opened it (otherwise on one this side opened).
    pub newest: bool,
    /// A connection to a dead incarnation is dropped once nothing has got
    /// through it for this long.
    pub idle_timeout: Duration,
}

impl LinkRules {
    /// lbmesh's QUIC transport.
    pub const LBMESH: LinkRules = LinkRules {
        reset: true,
        newest: true,
        idle_timeout: Duration::from_secs(2),
    };
    /// quinn's defaults as lbmesh first used them: a restarted peer is not
    /// heard until the 15 s idle timeout.
    pub const IDLE_TIMEOUT_ONLY: LinkRules = LinkRules {
        reset: false,
        newest: false,
        idle_timeout: Duration::from_secs(15),
    };
}

/// One end of a connection: an address and the socket (incarnation) there.
type End = (SocketAddr, u64);

/// A connection between two sockets, opened by `from`.
struct Conn {
    from: End,
    to: End,
    opened: tokio::time::Instant,
    /// When a message last got through.
    last_ok: tokio::time::Instant,
}

struct NetState {
    /// Open sockets, each with an id so a closing socket never removes its successor.
    sockets: HashMap<SocketAddr, (u64, Inbox)>,
    next_id: u64,
    /// One-way links that drop everything: (from, to).
    blocked: HashSet<(SocketAddr, SocketAddr)>,
    loss: f64,
    delay: Range<Duration>,
    links: Links,
    conns: Vec<Conn>,
    rng: SmallRng,
    sent: u64,
    dropped: u64,
    bytes: u64,
}

/// An in-memory network of gossip sockets. Cloning shares the network.
/// Randomness (loss, delay) comes from a seeded generator, so with tokio's
/// paused clock a run can be replayed.
#[derive(Clone)]
pub struct MemoryNetwork {
    state: Arc<Mutex<NetState>>,
}

impl MemoryNetwork {
    pub fn new(seed: u64) -> Self {
        Self {
            state: Arc::new(Mutex::new(NetState {
                sockets: HashMap::new(),
                next_id: 0,
                blocked: HashSet::new(),
                loss: 0.0,
                delay: Duration::ZERO..Duration::ZERO,
                links: Links::Datagrams,
                conns: Vec::new(),
                rng: SmallRng::seed_from_u64(seed),
                sent: 0,
                dropped: 0,
                bytes: 0,
            })),
        }
    }

    fn with<T>(&self, f: impl FnOnce(&mut NetState) -> T) -> T {
        f(&mut self.state.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Drops every message from `from` to `to` (one way).
    pub fn block(&self, from: SocketAddr, to: SocketAddr) {
        self.with(|s| s.blocked.insert((from, to)));
    }

    /// Cuts both directions between every address of `a` and every one of `b`.
    pub fn partition(&self, a: &[SocketAddr], b: &[SocketAddr]) {
        for x in a {
            for y in b {
                self.block(*x, *y);
                self.block(*y, *x);
            }
        }
    }

    /// Restores every link.
    pub fn heal(&self) {
        self.with(|s| s.blocked.clear());
    }

    /// Loses each message with probability `p`.
    pub fn set_loss(&self, p: f64) {
        self.with(|s| s.loss = p.clamp(0.0, 1.0));
    }

    /// Delays each message by a uniform time in `range` (reordering them).
    pub fn set_delay(&self, range: Range<Duration>) {
        self.with(|s| s.delay = range);
    }

    /// How messages travel from now on.
    pub fn set_links(&self, links: Links) {
        self.with(|s| {
            s.links = links;
            s.conns.clear();
        });
    }

    /// (messages sent, messages dropped, bytes sent).
    pub fn counters(&self) -> (u64, u64, u64) {
        self.with(|s| (s.sent, s.dropped, s.bytes))
    }

    fn send(&self, from: End, to: SocketAddr, msg: ChitchatMessage) -> anyhow::Result<()> {
        // Through the wire format, as a real transport would.
        let bytes = msg.serialize_to_vec();
        anyhow::ensure!(
            bytes.len() <= MAX_MESSAGE,
            "message of {} bytes exceeds {MAX_MESSAGE}",
            bytes.len()
        );
        let msg = ChitchatMessage::deserialize(&mut &bytes[..])?;
        let decision = self.with(|s| {
            s.sent += 1;
            s.bytes += bytes.len() as u64;
            let lost = s.loss > 0.0 && s.rng.random_bool(s.loss);
            if lost || s.blocked.contains(&(from.0, to)) || !s.link_carries(from, to) {
                s.dropped += 1;
                return None;
            }
            let delay = if s.delay.is_empty() {
                Duration::ZERO
            } else {
                s.rng.random_range(s.delay.clone())
            };
            Some((s.sockets.get(&to).map(|(_, tx)| tx.clone()), delay))
        });
        if let Some((Some(inbox), delay)) = decision {
            let from = from.0;
            if delay.is_zero() {
                let _ = inbox.send((from, msg));
            } else {
                tokio::spawn(async move {
                    tokio::time::sleep(delay).await;
                    let _ = inbox.send((from, msg));
                });
            }
        }
        Ok(())
    }
}

impl NetState {
    /// Whether a message from socket `from` to address `to` gets there, by
    /// the connection it would travel on (always, for datagrams).
    fn link_carries(&mut self, from: End, to: SocketAddr) -> bool {
        let Links::Connections(rules) = self.links else {
            return true;
        };
        let now = tokio::time::Instant::now();
        let there = self.sockets.get(&to).map(|(id, _)| *id);
        // The newest connection this socket may send on, and its other end.
        let chosen = self
            .conns
            .iter()
            .enumerate()
            .filter_map(|(i, c)| {
                if c.from == from && c.to.0 == to {
                    Some((i, c.to.1))
                } else if rules.newest && c.to == from && c.from.0 == to {
                    Some((i, c.from.1))
                } else {
                    None
                }
            })
            .max_by_key(|(i, _)| self.conns[*i].opened);
        let Some((i, remote)) = chosen else {
            // Nobody listens there: the handshake fails, the message is dropped.
            let Some(id) = there else { return false };
            self.conns.push(Conn {
                from,
                to: (to, id),
                opened: now,
                last_ok: now,
            });
            return true;
        };
        if there == Some(remote) {
            self.conns[i].last_ok = now;
            return true;
        }
        // The other end is a dead incarnation.
        let idle = now.duration_since(self.conns[i].last_ok) >= rules.idle_timeout;
        if (rules.reset && there.is_some()) || idle {
            self.conns.swap_remove(i);
        }
        false
    }
}

#[async_trait]
impl Transport for MemoryNetwork {
    async fn open(&self, listen_addr: SocketAddr) -> anyhow::Result<Box<dyn Socket>> {
        let (tx, rx) = mpsc::unbounded_channel();
        let id = self.with(|s| {
            if s.sockets.contains_key(&listen_addr) {
                anyhow::bail!("address {listen_addr} in use");
            }
            s.next_id += 1;
            s.sockets.insert(listen_addr, (s.next_id, tx));
            Ok(s.next_id)
        })?;
        Ok(Box::new(MemorySocket {
            addr: listen_addr,
            id,
            net: self.clone(),
            inbox: rx,
        }))
    }
}

struct MemorySocket {
    addr: SocketAddr,
    id: u64,
    net: MemoryNetwork,
    inbox: mpsc::UnboundedReceiver<(SocketAddr, ChitchatMessage)>,
}

#[async_trait]
impl Socket for MemorySocket {
    async fn send(&mut self, to: SocketAddr, msg: ChitchatMessage) -> anyhow::Result<()> {
        self.net.send((self.addr, self.id), to, msg)
    }

    async fn recv(&mut self) -> anyhow::Result<(SocketAddr, ChitchatMessage)> {
        self.inbox
            .recv()
            .await
            .ok_or_else(|| anyhow::anyhow!("network closed"))
    }
}

impl Drop for MemorySocket {
    fn drop(&mut self) {
        self.net.with(|s| {
            if s.sockets
                .get(&self.addr)
                .is_some_and(|(id, _)| *id == self.id)
            {
                s.sockets.remove(&self.addr);
            }
            // Connections whose ends are both gone are forgotten; one whose
            // other end lives on stays, until that end notices.
            let NetState { sockets, conns, .. } = s;
            let alive = |e: &End| sockets.get(&e.0).is_some_and(|(id, _)| *id == e.1);
            conns.retain(|c| alive(&c.from) || alive(&c.to));
        });
    }
}
