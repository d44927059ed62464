//! Replicated acknowledgements, the waiting side: a write is confirmed once
//! a live peer reports (by gossip) that it has stored this peer's key space
//! durably up to the write's version. The mesh feeds the two watches.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::registry::Origin;

/// When a write is acknowledged (`registry.ack`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AckMode {
    /// Once it is on this peer's disk and, when another peer is live, on one
    /// other peer's disk (or the bound passed: the answer then says so).
    #[default]
    Replicated,
    /// Once it is on this peer's disk.
    Local,
}

/// How writes are acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AckPolicy {
    pub mode: AckMode,
    /// How long a write waits for another peer before it is answered with
    /// `"replicated": false`.
    pub timeout: Duration,
}

impl Default for AckPolicy {
    fn default() -> Self {
        Self {
            mode: AckMode::Replicated,
            timeout: Duration::from_secs(1),
        }
    }
}

/// Own writes as published into gossip.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Published {
    /// The last own write published (see `OwnEvent`'s sequence numbers).
    pub seq: u64,
    /// This peer's gossip version once that write was published.
    pub version: u64,
}

/// What live peers confirm of this peer's key space.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Confirmed {
    /// Other peers that are live now.
    pub live_peers: usize,
    /// The highest version of this incarnation's key space a live peer has
    /// stored durably.
    pub version: u64,
}

/// Which incarnations' key spaces the mesh gossips.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Gossiped {
    pub origins: Arc<BTreeSet<Origin>>,
    /// This peer has been in touch with a live peer long enough to have
    /// received every key space the mesh still holds.
    pub settled: bool,
}

/// The mesh's side of replicated acknowledgements.
#[derive(Debug, Clone)]
pub struct Replication {
    pub published: watch::Receiver<Published>,
    pub confirmed: watch::Receiver<Confirmed>,
    pub gossiped: watch::Receiver<Gossiped>,
}

impl Replication {
    /// Waits until own write `seq` is confirmed by a live peer, at most
    /// `timeout`. False at once when no other peer is live.
    pub async fn wait(&self, seq: u64, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut confirmed = self.confirmed.clone();
        if confirmed.borrow().live_peers == 0 {
            return false;
        }
        let mut published = self.published.clone();
        let version =
            match tokio::time::timeout_at(deadline, published.wait_for(|p| p.seq >= seq)).await {
                Ok(Ok(p)) => p.version,
                _ => return false,
            };
        match tokio::time::timeout_at(
            deadline,
            confirmed.wait_for(|c| c.live_peers == 0 || c.version >= version),
        )
        .await
        {
            Ok(Ok(c)) => c.version >= version,
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_write_is_confirmed_once_a_live_peer_stored_its_version() {
        let (pub_tx, published) = watch::channel(Published::default());
        let (conf_tx, confirmed) = watch::channel(Confirmed {
            live_peers: 1,
            version: 0,
        });
        let rep = Replication {
            published,
            confirmed,
            gossiped: watch::channel(Gossiped::default()).1,
        };
        let waiter = tokio::spawn({
            let rep = rep.clone();
            async move { rep.wait(3, Duration::from_secs(1)).await }
        });
        tokio::time::sleep(Duration::from_millis(10)).await;
        pub_tx.send_replace(Published {
            seq: 3,
            version: 40,
        });
        tokio::time::sleep(Duration::from_millis(10)).await;
        conf_tx.send_replace(Confirmed {
            live_peers: 1,
            version: 39,
        });
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert!(!waiter.is_finished(), "39 does not cover version 40");
        conf_tx.send_replace(Confirmed {
            live_peers: 1,
            version: 41,
        });
        assert!(waiter.await.unwrap());
    }

    #[tokio::test(start_paused = true)]
    async fn no_live_peer_or_no_answer_within_the_bound_is_not_replicated() {
        let (_pub_tx, published) = watch::channel(Published { seq: 9, version: 9 });
        let (conf_tx, confirmed) = watch::channel(Confirmed::default());
        let rep = Replication {
            published,
            confirmed,
            gossiped: watch::channel(Gossiped::default()).1,
        };
        let start = Instant::now();
        assert!(!rep.wait(1, Duration::from_secs(1)).await);
        assert_eq!(start.elapsed(), Duration::ZERO, "alone: answered at once");
        conf_tx.send_replace(Confirmed {
            live_peers: 2,
            version: 3,
        });
        assert!(!rep.wait(1, Duration::from_secs(1)).await);
        assert_eq!(start.elapsed(), Duration::from_secs(1), "waited the bound");
    }
}
