//! This peer's own entries between acceptance and disk, renewals answered
//! from memory, and entries carried on for peers that are gone for good.
//!
//! A registration, delete or option change is applied at once (the next
//! command sees it) but stays *unsettled* until it is on disk. If the disk
//! write fails, [`Registry::revert`] puts back what each key held, so a write
//! that cannot reach the disk changes nothing.
//!
//! A renewal that only moves an own lease end forward is answered from memory
//! ([`Registry::renew`]): the entry it makes (stamped when it was answered)
//! is kept beside the published one and persisted in the background. It is
//! published once the lease moved by a tenth of the TTL (at most
//! `max_clock_skew`, so peers agree on expiry within the skew bound), or when
//! the published end comes within twice the skew bound: gossip per server is
//! bounded whatever the renewal rate. Published late, it is still the entry of
//! the moment it was answered, so it never beats a delete made after it.

use std::collections::BTreeSet;

use super::{Change, Command, Entry, Key, Op, Origin, Outcome, Registry};

/// What a change needs before it is answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// Durable on disk (and, with replicated acknowledgements, confirmed by
    /// another peer) before the answer.
    Disk,
    /// Answered from memory, persisted within a second.
    Memory,
}

/// What an own key held before its unsettled write.
#[derive(Debug, Clone)]
pub(super) struct Before {
    entry: Option<Entry>,
    lease: Option<Entry>,
}

/// The lease end of an own entry that is not the published one.
fn lease_end(e: &Entry) -> u64 {
    match e.op {
        Op::Add { expires_ms, .. } => expires_ms,
        Op::Delete { .. } => 0,
    }
}

impl Registry {
    /// Remembers what `key` holds now, before a write that is not yet on disk.
    pub(super) fn unsettle(&mut self, key: Key) {
        if self.unsettled.contains_key(&key) {
            return;
        }
        let before = Before {
            entry: self
                .keys
                .get(&key)
                .and_then(|ke| ke.by_peer.get(&self.origin))
                .cloned(),
            lease: self.leases.remove(&key),
        };
        self.unsettled.insert(key, before);
    }

    /// The unsettled writes reached the disk.
    pub fn settle(&mut self) {
        self.unsettled.clear();
    }

    /// The unsettled writes did not reach the disk: puts back what each key
    /// held. Returns whether HAProxy must follow.
    pub fn revert(&mut self, now_ms: u64) -> bool {
        let mut config = false;
        for (key, before) in std::mem::take(&mut self.unsettled) {
            let served = self.served_as(&key, now_ms);
            let origin = self.origin.clone();
            self.set_entry(key, origin, before.entry);
            if let Some(l) = before.lease {
                self.leases.insert(key, l);
                self.dirty.insert(key);
            }
            config |= self.served_as(&key, now_ms) != served;
        }
        self.generation += 1;
        if config {
            self.config_generation += 1;
        }
        config
    }

    /// Whether an own write of `key` is waiting for the disk.
    pub fn is_unsettled(&self, key: &Key) -> bool {
        self.unsettled.contains_key(key)
    }

    /// Renews an own, settled, live lease from memory when `cmd` asks for
    /// nothing else (same name and options, a lease end no earlier than the
    /// acknowledged one). `None`: the command is a write (or is refused), and
    /// goes through [`Registry::apply`].
    pub fn renew(&mut self, cmd: &Command, now_ms: u64) -> Option<Change> {
        let Command::Register {
            key,
            name,
            send_proxy,
            ttl,
        } = cmd
        else {
            return None;
        };
        if self.unsettled.contains_key(key) {
            return None;
        }
        let ttl = ttl.unwrap_or(self.limits.default_ttl);
        if ttl < self.limits.min_ttl || ttl > self.limits.max_ttl {
            return None;
        }
        self.policy.check(key.frontend).ok()?;
        let ke = self.keys.get(key)?;
        if ke.winner.as_ref() != Some(&self.origin) {
            return None;
        }
        let held = ke.by_peer.get(&self.origin)?.clone();
        let Op::Add {
            name: held_name,
            send_proxy: held_proxy,
            since_ms,
            expires_ms: published,
        } = held.op
        else {
            return None;
        };
        if held_name != *name || held_proxy != *send_proxy || published <= now_ms {
            return None;
        }
        if !self.is_owner(key.frontend, name, now_ms) {
            return None;
        }
        let end = now_ms.saturating_add(ttl.as_millis() as u64);
        if end < self.leases.get(key).map_or(published, lease_end) {
            return None; // a shorter lease is a write
        }
        let step = (ttl / 10).min(self.limits.max_clock_skew).as_millis() as u64;
        // The entry a renewal writes, whether it is published now or later.
        let entry = Entry {
            stamp: self.hlc.tick(now_ms),
            observed: self.newest_delete(key),
            op: Op::Add {
                name: held_name,
                send_proxy: held_proxy,
                since_ms,
                expires_ms: end,
            },
        };
        let written = end - published >= step;
        if written {
            self.publish_own(*key, entry.clone());
        } else {
            self.leases.insert(*key, entry.clone());
        }
        self.dirty.insert(*key);
        Some(Change {
            outcome: Outcome::Renewed,
            key: *key,
            name: name.clone(),
            written,
            entry,
            generation: self.generation,
            config_generation: self.config_generation,
            affects_config: false,
            forgotten: Vec::new(),
            durability: Durability::Memory,
        })
    }

    /// Replaces an own entry outside a write (a renewal that moved far
    /// enough, or an adopted entry): no backup, no config change.
    fn publish_own(&mut self, key: Key, entry: Entry) {
        let origin = self.origin.clone();
        self.set_entry(key, origin, Some(entry));
        self.leases.remove(&key);
        self.generation += 1;
    }

    /// Publishes the renewals answered from memory whose published entry
    /// ends within twice the skew bound; returns them.
    pub fn publish_due_leases(&mut self, now_ms: u64) -> Vec<(Key, Entry)> {
        let horizon = now_ms + 2 * self.limits.max_clock_skew.as_millis() as u64;
        let due: Vec<Key> = self
            .leases
            .keys()
            .filter(|k| {
                self.keys
                    .get(k)
                    .and_then(|ke| ke.by_peer.get(&self.origin))
                    .is_none_or(|e| lease_end(e) <= horizon)
            })
            .copied()
            .collect();
        let mut out = Vec::with_capacity(due.len());
        for key in due {
            if let Some(entry) = self.leases.get(&key).cloned() {
                self.publish_own(key, entry.clone());
                out.push((key, entry));
            }
        }
        out
    }

    /// The own entries to persist for keys renewed since the last call, with
    /// their acknowledged lease ends. Give the keys back with
    /// [`Registry::mark_dirty`] if they could not be written.
    pub fn take_dirty(&mut self) -> Vec<(Key, Entry)> {
        let keys = std::mem::take(&mut self.dirty);
        keys.into_iter()
            .filter_map(|k| Some((k, self.own_acknowledged(&k)?)))
            .collect()
    }

    pub fn mark_dirty(&mut self, keys: impl IntoIterator<Item = Key>) {
        self.dirty.extend(keys);
    }

    /// The own entry of `key` as acknowledged: a renewal answered from
    /// memory counts as published, an unsettled write as not yet made.
    pub fn own_acknowledged(&self, key: &Key) -> Option<Entry> {
        match self.unsettled.get(key) {
            Some(before) => before.lease.clone().or_else(|| before.entry.clone()),
            None => self
                .leases
                .get(key)
                .cloned()
                .or_else(|| self.keys.get(key)?.by_peer.get(&self.origin).cloned()),
        }
    }

    /// The acknowledged lease end of an own key renewed from memory.
    pub fn lease_of(&self, key: &Key) -> Option<u64> {
        self.leases.get(key).map(lease_end)
    }

    /// Takes over, as this peer's own, entries it holds from an incarnation
    /// whose key space no peer gossips any more (`present` lists those that
    /// are gossiped): a peer gone for good whose entries this peer kept on
    /// disk. An entry is taken only if it still matters and no gossiped key
    /// space holds an entry of that key at least as new. The taken entries
    /// are unsettled until on disk; returns them, to persist and publish.
    pub fn adopt_orphans(&mut self, present: &BTreeSet<Origin>, now_ms: u64) -> Vec<(Key, Entry)> {
        let mut taken: Vec<(Key, Entry)> = Vec::new();
        for (key, ke) in &self.keys {
            if self.unsettled.contains_key(key) {
                continue;
            }
            let covered = ke
                .by_peer
                .iter()
                .filter(|(o, _)| **o == self.origin || present.contains(*o))
                .map(|(_, e)| e.stamp)
                .max();
            let orphan = ke
                .by_peer
                .iter()
                .filter(|(o, e)| {
                    **o != self.origin
                        && !present.contains(*o)
                        && self.entry_matters(e, now_ms)
                        && covered.is_none_or(|c| e.stamp > c)
                })
                .max_by_key(|(o, e)| (e.stamp, (*o).clone()));
            if let Some((_, e)) = orphan {
                taken.push((*key, e.clone()));
            }
        }
        for (key, entry) in &taken {
            self.unsettle(*key);
            let origin = self.origin.clone();
            self.set_entry(*key, origin, Some(entry.clone()));
            self.generation += 1;
        }
        taken
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::time::Duration;

    use super::super::{Command, Key, Limits, Op, Origin, Outcome, PortPolicy, Registry};
    use super::Durability;

    const T0: u64 = 1_700_000_000_000;

    fn reg() -> Registry {
        Registry::new(
            "lb1".parse().unwrap(),
            Limits::default(),
            PortPolicy::new(vec![], [9000]),
        )
    }

    fn key(server: &str) -> Key {
        Key {
            frontend: 443,
            server: server.parse().unwrap(),
        }
    }

    fn add(server: &str, ttl_s: u64, send_proxy: bool) -> Command {
        Command::Register {
            key: key(server),
            name: "traefik".parse().unwrap(),
            send_proxy,
            ttl: Some(Duration::from_secs(ttl_s)),
        }
    }

    const S: &str = "203.0.113.7:30443";

    /// A registry holding `S`, registered at T0 with a 600 s lease, on disk.
    fn registered() -> Registry {
        let mut r = reg();
        r.apply(add(S, 600, false), T0).unwrap();
        r.settle();
        r
    }

    #[test]
    fn a_renewal_moves_only_the_acknowledged_lease_until_it_moved_far_enough() {
        let mut r = registered();
        let digest = r.view(T0).digest();
        // 600 s lease: published again once it moved by 10 s (the skew bound
        // caps a tenth of the TTL).
        let c = r.renew(&add(S, 600, false), T0 + 9_999).unwrap();
        assert_eq!(c.outcome, Outcome::Renewed);
        assert_eq!(c.durability, Durability::Memory);
        assert!(!c.written, "nothing to gossip");
        assert_eq!(c.entry.live_until(0), Some(T0 + 609_999), "answered lease");
        assert_eq!(r.view(T0 + 9_999).digest(), digest, "peers see no change");
        assert_eq!(r.lease_of(&key(S)), Some(T0 + 609_999));
        assert_eq!(
            r.own_acknowledged(&key(S)).unwrap().live_until(0),
            Some(T0 + 609_999),
            "persisted as acknowledged"
        );
        let c = r.renew(&add(S, 600, false), T0 + 10_000).unwrap();
        assert!(c.written, "moved by 10 s: published");
        assert_eq!(r.lease_of(&key(S)), None);
        assert_eq!(
            r.view(T0 + 10_000).frontends[&443].servers[&key(S).server].expires_ms,
            T0 + 610_000
        );
        // Both are flushed in the background, once.
        assert_eq!(r.take_dirty().len(), 1);
        assert!(r.take_dirty().is_empty());
    }

    #[test]
    fn anything_but_a_plain_renewal_of_an_own_settled_lease_is_a_write() {
        type Case = Box<dyn Fn(&mut Registry) -> Command>;
        let cases: Vec<(&str, Case)> = vec![
            ("other options", Box::new(|_| add(S, 600, true))),
            ("a shorter lease", Box::new(|_| add(S, 60, false))),
            ("a TTL out of bounds", Box::new(|_| add(S, 1, false))),
            (
                "a server not registered",
                Box::new(|_| add("203.0.113.8:1", 600, false)),
            ),
            (
                "a delete",
                Box::new(|_| Command::Delete {
                    key: key(S),
                    name: "traefik".parse().unwrap(),
                }),
            ),
            (
                "an own write not yet on disk",
                Box::new(|r: &mut Registry| {
                    r.apply(add(S, 700, false), T0 + 1).unwrap();
                    add(S, 700, false)
                }),
            ),
            (
                "a lease another peer decides",
                Box::new(|r: &mut Registry| {
                    let mut e = r.own_acknowledged(&key(S)).unwrap();
                    e.stamp = e.stamp.plus(Duration::from_millis(5));
                    r.merge_remote(key(S), "lb2".parse::<Origin>().unwrap(), Some(e), T0 + 1);
                    add(S, 600, false)
                }),
            ),
        ];
        for (why, cmd) in cases {
            let mut r = registered();
            let cmd = cmd(&mut r);
            assert!(r.renew(&cmd, T0 + 1_000).is_none(), "{why}");
        }
    }

    #[test]
    fn a_lease_renewed_from_memory_is_published_before_its_published_end_matters() {
        let mut r = registered();
        r.renew(&add(S, 600, false), T0 + 5_000).unwrap();
        assert!(
            r.publish_due_leases(T0 + 5_000).is_empty(),
            "far from its end"
        );
        // 20 s (twice the skew bound) before the published end: published.
        let due = r.publish_due_leases(T0 + 580_000);
        assert_eq!(due.len(), 1);
        assert_eq!(due[0].1.live_until(0), Some(T0 + 605_000));
        assert_eq!(
            r.view(T0 + 600_001).frontends[&443].servers[&key(S).server].expires_ms,
            T0 + 605_000,
            "still served after the first lease end"
        );
    }

    #[test]
    fn garbage_collection_keeps_a_lease_renewed_from_memory() {
        let mut r = registered();
        r.renew(&add(S, 600, false), T0 + 5_000).unwrap();
        assert!(r.collect_garbage(T0 + 600_001).is_empty());
        assert_eq!(r.collect_garbage(T0 + 605_001).len(), 1);
    }

    #[test]
    fn a_write_that_did_not_reach_the_disk_is_put_back() {
        let mut r = registered();
        r.renew(&add(S, 600, false), T0 + 5_000).unwrap();
        let before = r.view(T0 + 6_000);
        r.apply(add(S, 600, true), T0 + 6_000).unwrap();
        r.apply(add("203.0.113.8:30443", 600, false), T0 + 6_000)
            .unwrap();
        assert!(r.is_unsettled(&key(S)));
        assert_eq!(
            r.own_acknowledged(&key(S)).unwrap().live_until(0),
            Some(T0 + 605_000),
            "compaction writes what was acknowledged, not the write in flight"
        );
        assert!(r.revert(T0 + 6_000), "HAProxy must follow");
        let after = r.view(T0 + 6_000);
        assert_eq!(after.frontends, before.frontends);
        assert_eq!(r.lease_of(&key(S)), Some(T0 + 605_000));
        r.check_invariants().unwrap();
        // Settled writes stay.
        r.apply(add(S, 600, true), T0 + 7_000).unwrap();
        r.settle();
        assert!(!r.revert(T0 + 7_000));
        assert!(r.view(T0 + 7_000).frontends[&443].servers[&key(S).server].send_proxy);
    }

    #[test]
    fn entries_of_a_peer_no_one_gossips_are_taken_over_once() {
        let mut r = reg();
        let gone: Origin = "lb3".parse().unwrap();
        let live: Origin = "lb2".parse().unwrap();
        let entry = |server: &str, at: u64| {
            let mut other = reg();
            other.apply(add(server, 600, false), at).unwrap().entry
        };
        // Held from disk: two of the gone peer's, one also newer at a live peer.
        r.set_entry(
            key("198.18.0.1:1"),
            gone.clone(),
            Some(entry("198.18.0.1:1", T0)),
        );
        r.set_entry(
            key("198.18.0.2:1"),
            gone.clone(),
            Some(entry("198.18.0.2:1", T0)),
        );
        r.set_entry(
            key("198.18.0.2:1"),
            live.clone(),
            Some(entry("198.18.0.2:1", T0 + 1)),
        );
        // An expired one is not carried on.
        r.set_entry(
            key("198.18.0.3:1"),
            gone.clone(),
            Some(entry("198.18.0.3:1", T0 - 700_000)),
        );
        let present: BTreeSet<Origin> = [live.clone()].into();
        let taken = r.adopt_orphans(&present, T0 + 1_000);
        assert_eq!(taken.len(), 1);
        assert_eq!(taken[0].0, key("198.18.0.1:1"));
        r.settle();
        let v = r.view(T0 + 1_000);
        assert_eq!(
            v.frontends[&443].servers[&key("198.18.0.1:1").server].expires_ms,
            T0 + 600_000,
            "the lease end is kept: it ends when it would have"
        );
        assert!(r.adopt_orphans(&present, T0 + 2_000).is_empty(), "once");
        // A peer whose key space is gossiped again is left to itself.
        let mut r2 = reg();
        r2.set_entry(
            key("198.18.0.1:1"),
            gone.clone(),
            Some(entry("198.18.0.1:1", T0)),
        );
        assert!(r2.adopt_orphans(&[gone].into(), T0 + 1_000).is_empty());
        r.check_invariants().unwrap();
    }

    #[test]
    fn leases_expire_after_a_failed_write_is_put_back() {
        let mut r = registered();
        r.apply(
            Command::Delete {
                key: key(S),
                name: "traefik".parse().unwrap(),
            },
            T0 + 1_000,
        )
        .unwrap();
        r.revert(T0 + 1_000);
        assert!(r.view(T0 + 1_000).frontends.contains_key(&443));
        assert!(!r.view(T0 + 600_000).frontends.contains_key(&443));
    }

    /// A renewal by a name that does not own the frontend is a write (and
    /// refused there), also when the owner is remembered between renewals:
    /// a change of any of the frontend's keys, or the end of the first lease
    /// among them, decides again.
    #[test]
    fn a_renewal_by_a_name_that_lost_the_frontend_is_a_write() {
        // Another peer's server on the same frontend under the name "other",
        // registered before ours, with a lease ending at `end`.
        let other = |r: &mut Registry, since_ms: u64, end: u64| {
            let mut e = r.own_acknowledged(&key(S)).unwrap();
            e.op = Op::Add {
                name: "other".parse().unwrap(),
                send_proxy: false,
                since_ms,
                expires_ms: end,
            };
            r.merge_remote(
                key("203.0.113.9:1"),
                "lb2".parse::<Origin>().unwrap(),
                Some(e),
                T0 + 1_500,
            );
        };
        let mut r = registered();
        assert!(r.renew(&add(S, 600, false), T0 + 1_000).is_some());
        other(&mut r, T0 - 1_000, T0 + 5_000);
        assert!(
            r.renew(&add(S, 600, false), T0 + 2_000).is_none(),
            "an older name arrived"
        );
        assert!(r.renew(&add(S, 600, false), T0 + 4_999).is_none());
        assert!(
            r.renew(&add(S, 600, false), T0 + 5_000).is_some(),
            "its lease ended: the frontend is ours again"
        );
        // A newer name never takes the frontend.
        let mut r = registered();
        other(&mut r, T0 + 1, T0 + 500_000);
        assert!(r.renew(&add(S, 600, false), T0 + 2_000).is_some());
    }
}
