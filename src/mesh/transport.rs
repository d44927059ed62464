//! Transports for gossip: chitchat's UDP, and an in-memory network with
//! partitions, loss and delay for tests and simulations.
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

struct NetState {
    /// Open sockets, each with an id so a closing socket never removes its successor.
    sockets: HashMap<SocketAddr, (u64, Inbox)>,
    next_id: u64,
    /// One-way links that drop everything: (from, to).
    blocked: HashSet<(SocketAddr, SocketAddr)>,
    loss: f64,
    delay: Range<Duration>,
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

    /// (messages sent, messages dropped, bytes sent).
    pub fn counters(&self) -> (u64, u64, u64) {
        self.with(|s| (s.sent, s.dropped, s.bytes))
    }

    fn send(&self, from: SocketAddr, to: SocketAddr, msg: ChitchatMessage) -> anyhow::Result<()> {
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
            if lost || s.blocked.contains(&(from, to)) {
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
        self.net.send(self.addr, to, msg)
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
        });
    }
}
