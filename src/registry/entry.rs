//! The replicated record and the rule that picks one winner per key on every peer.
//!
//! Each peer keeps only its own latest entry per key; the registry a peer
//! serves is, for every key, the winner among all peers' latest entries. The
//! rule below is a pure function of that set, so every peer that holds the
//! same entries computes the same registry.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::types::{Origin, ServiceName};
use crate::clock::Stamp;

/// One accepted registration, renewal or delete of one server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// When the accepting peer took the write (hybrid logical clock).
    pub stamp: Stamp,
    /// For adds: the newest delete of the same key the accepting peer knew
    /// of when it took the write. An add beats the deletes it has seen.
    /// (Not the newest stamp of any kind: a stamp from a fast clock can
    /// exceed a later delete's stamp without the add having seen it.)
    pub observed: Stamp,
    pub op: Op,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Op {
    /// The server is in the pool until `expires_ms` (wall clock, Unix ms).
    Add {
        name: ServiceName,
        send_proxy: bool,
        /// When this lease chain began; the oldest live claim owns a frontend.
        since_ms: u64,
        expires_ms: u64,
    },
    /// The server was withdrawn; kept as a tombstone so older adds lose.
    Delete { name: ServiceName },
}

impl Entry {
    pub fn name(&self) -> &ServiceName {
        match &self.op {
            Op::Add { name, .. } | Op::Delete { name } => name,
        }
    }

    /// The lease end of a live add, if this is one at `now_ms`.
    pub fn live_until(&self, now_ms: u64) -> Option<u64> {
        match self.op {
            Op::Add { expires_ms, .. } if expires_ms > now_ms => Some(expires_ms),
            _ => None,
        }
    }

    pub fn is_delete(&self) -> bool {
        matches!(self.op, Op::Delete { .. })
    }
}

/// Picks the entry that decides a key.
///
/// Last writer wins on `(stamp, peer id)`, with one refinement for clock skew:
/// adds only beat the newest delete if one of them is newer than it and either
/// had seen it (its peer knew the delete when it took the add) or is newer by
/// more than `max_skew`. Without that, a peer whose clock runs a few seconds
/// fast could resurrect a server that was deleted after it was added. When the
/// adds win, the newest add decides (it carries the latest lease).
pub fn winner<'a, I>(entries: I, max_skew: Duration) -> Option<(&'a Origin, &'a Entry)>
where
    I: IntoIterator<Item = (&'a Origin, &'a Entry)>,
{
    let entries: Vec<(&Origin, &Entry)> = entries.into_iter().collect();
    #[cfg(feature = "fault-injection")]
    if fault::ADDS_WIN.with(std::cell::Cell::get) {
        // The bug: any add beats any delete, however old.
        if let Some(a) = entries
            .iter()
            .filter(|(_, e)| !e.is_delete())
            .max_by(|x, y| (x.1.stamp, x.0).cmp(&(y.1.stamp, y.0)))
        {
            return Some(*a);
        }
    }
    let newest = |want_delete: bool| {
        entries
            .iter()
            .filter(|(_, e)| e.is_delete() == want_delete)
            .max_by(|x, y| (x.1.stamp, x.0).cmp(&(y.1.stamp, y.0)))
            .copied()
    };
    match (newest(false), newest(true)) {
        (None, d) => d,
        (a, None) => a,
        (Some(a), Some(d)) => {
            let skew_ms = max_skew.as_millis() as u64;
            let beats_delete = |(p, e): &(&Origin, &Entry)| {
                !e.is_delete()
                    && (e.stamp, *p) > (d.1.stamp, d.0)
                    && (e.observed >= d.1.stamp
                        || e.stamp.wall_ms() > d.1.stamp.wall_ms().saturating_add(skew_ms))
            };
            if entries.iter().any(beats_delete) {
                Some(a)
            } else {
                Some(d)
            }
        }
    }
}

/// Deliberate bugs, compiled only with the `fault-injection` feature, so
/// the simulations can show that they catch a wrong merge rule.
#[cfg(feature = "fault-injection")]
pub mod fault {
    use std::cell::Cell;

    thread_local! {
        /// When set on a thread, adds win over deletes whatever their stamps
        /// (per thread, so parallel simulations do not see each other's bug).
        pub static ADDS_WIN: Cell<bool> = const { Cell::new(false) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(s: &str) -> Origin {
        s.parse().unwrap()
    }

    fn add(wall: u64, observed: u64) -> Entry {
        Entry {
            stamp: Stamp::from_wall_ms(wall),
            observed: Stamp::from_wall_ms(observed),
            op: Op::Add {
                name: "svc".parse().unwrap(),
                send_proxy: false,
                since_ms: wall,
                expires_ms: wall + 1_000_000,
            },
        }
    }

    fn del(wall: u64) -> Entry {
        Entry {
            stamp: Stamp::from_wall_ms(wall),
            observed: Stamp::default(),
            op: Op::Delete {
                name: "svc".parse().unwrap(),
            },
        }
    }

    const SKEW: Duration = Duration::from_secs(5);

    #[test]
    fn winner_table() {
        let (a, b, c) = (peer("a"), peer("b"), peer("c"));
        // (entries, expected winner peer)
        type Case<'a> = (Vec<(&'a Origin, Entry)>, Option<&'a Origin>, &'static str);
        let cases: Vec<Case> = vec![
            (vec![], None, "empty"),
            (vec![(&a, add(100, 0))], Some(&a), "single add"),
            (
                vec![(&a, add(100, 0)), (&b, add(200, 0))],
                Some(&b),
                "newer add wins",
            ),
            (
                vec![(&a, add(100, 0)), (&b, add(100, 0))],
                Some(&b),
                "peer id breaks ties",
            ),
            (
                vec![(&a, add(100, 0)), (&b, del(200))],
                Some(&b),
                "newer delete wins",
            ),
            (
                vec![(&a, add(10_000, 0)), (&b, del(9_000))],
                Some(&b),
                "add from a fast clock within skew, not having seen the delete, loses",
            ),
            (
                vec![(&a, add(10_000, 9_000)), (&b, del(9_000))],
                Some(&a),
                "add that saw the delete wins (re-registration)",
            ),
            (
                vec![(&a, add(20_000, 0)), (&b, del(9_000))],
                Some(&a),
                "add newer by more than the skew wins",
            ),
            (
                vec![(&a, add(100, 0)), (&b, del(50)), (&c, add(300, 0))],
                Some(&b),
                "within the skew, adds that never saw the delete lose to it",
            ),
            (
                vec![(&a, add(100, 0)), (&b, del(50)), (&c, add(30_000, 0))],
                Some(&c),
                "three peers, one add well after the delete",
            ),
            (
                vec![
                    (&a, add(9_500, 9_000)),
                    (&b, del(9_000)),
                    (&c, add(9_600, 0)),
                ],
                Some(&c),
                "a re-registration that saw the delete lets the newest add decide",
            ),
        ];
        for (entries, expected, why) in cases {
            let got = winner(entries.iter().map(|(p, e)| (*p, e)), SKEW).map(|(p, _)| p);
            assert_eq!(got, expected, "{why}");
        }
    }

    #[test]
    fn winner_ignores_input_order() {
        let (a, b, c) = (peer("a"), peer("b"), peer("c"));
        let set = [(&a, add(100, 0)), (&b, del(3_000)), (&c, add(4_000, 0))];
        let forward = winner(set.iter().map(|(p, e)| (*p, e)), SKEW).map(|(p, _)| p.clone());
        let backward = winner(set.iter().rev().map(|(p, e)| (*p, e)), SKEW).map(|(p, _)| p.clone());
        assert_eq!(forward, backward);
        assert_eq!(forward, Some(b));
    }
}
