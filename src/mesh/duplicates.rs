//! Two live peers claiming one node id (a stolen certificate, or a cloned
//! VM): both keep beating, which a restart never does, since an old
//! incarnation stops beating before the new one starts. Pure: time is an argument.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use chitchat::ChitchatId;

/// How long two incarnations must both be beating before they count as two
/// peers: longer than any restart's overlap seen from afar.
pub const WINDOW: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, Copy)]
struct Beats {
    heartbeat: u64,
    /// When this incarnation's heartbeat was first seen to move.
    first: Option<Instant>,
    /// When it last moved.
    last: Option<Instant>,
}

/// Watches heartbeats per incarnation.
#[derive(Debug, Default)]
pub struct DuplicateWatch {
    beats: HashMap<ChitchatId, Beats>,
}

impl DuplicateWatch {
    /// Records the heartbeat an incarnation has at `now`.
    pub fn observe(&mut self, id: &ChitchatId, heartbeat: u64, now: Instant) {
        match self.beats.get_mut(id) {
            None => {
                self.beats.insert(
                    id.clone(),
                    Beats {
                        heartbeat,
                        first: None,
                        last: None,
                    },
                );
            }
            Some(b) if heartbeat > b.heartbeat => {
                b.heartbeat = heartbeat;
                b.first.get_or_insert(now);
                b.last = Some(now);
            }
            Some(_) => {}
        }
    }

    /// Forgets incarnations `keep` says are gone.
    pub fn retain(&mut self, mut keep: impl FnMut(&ChitchatId) -> bool) {
        self.beats.retain(|id, _| keep(id));
    }

    /// Node ids with two or more incarnations that have both been beating,
    /// at the same time, for longer than [`WINDOW`] up to `now`.
    pub fn duplicates(&self, now: Instant) -> BTreeMap<String, Vec<ChitchatId>> {
        let mut by_node: BTreeMap<&str, Vec<(&ChitchatId, Instant, Instant)>> = BTreeMap::new();
        for (id, b) in &self.beats {
            if let (Some(first), Some(last)) = (b.first, b.last) {
                if now.saturating_duration_since(last) <= WINDOW {
                    by_node
                        .entry(&id.node_id)
                        .or_default()
                        .push((id, first, last));
                }
            }
        }
        let mut out = BTreeMap::new();
        for (node, ids) in by_node {
            let mut dup: Vec<ChitchatId> = Vec::new();
            for (i, a) in ids.iter().enumerate() {
                for b in &ids[i + 1..] {
                    let overlap = a.2.min(b.2).saturating_duration_since(a.1.max(b.1));
                    if overlap >= WINDOW {
                        for id in [a.0, b.0] {
                            if !dup.contains(id) {
                                dup.push(id.clone());
                            }
                        }
                    }
                }
            }
            if !dup.is_empty() {
                dup.sort();
                out.insert(node.to_owned(), dup);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(node: &str, generation: u64, port: u16) -> ChitchatId {
        ChitchatId::new(node, generation, ([198, 18, 0, 1], port).into())
    }

    #[test]
    fn two_beating_incarnations_are_a_duplicate_a_restart_is_not() {
        let t0 = Instant::now();
        let s = |ms: u64| t0 + Duration::from_millis(ms);
        let mut w = DuplicateWatch::default();
        let (real, impostor) = (id("lb1", 1, 7946), id("lb1", 2, 7000));
        let (old, new) = (id("lb2", 1, 7946), id("lb2", 5, 7946));
        // lb2 restarts at 3 s: the old incarnation stops, the new one beats.
        for step in 0..=100u64 {
            let now = s(step * 200);
            w.observe(&real, step, now);
            if step >= 10 {
                w.observe(&impostor, step, now);
            }
            w.observe(&old, step.min(15), now);
            if step >= 16 {
                w.observe(&new, step, now);
            }
        }
        let d = w.duplicates(s(100 * 200));
        assert_eq!(d.keys().collect::<Vec<_>>(), vec!["lb1"]);
        assert_eq!(d["lb1"].len(), 2);
        // Not before both have beaten together for the window.
        let mut early = DuplicateWatch::default();
        for step in 0..=20u64 {
            early.observe(&real, step, s(step * 200));
            early.observe(&impostor, step, s(step * 200));
        }
        assert!(early.duplicates(s(20 * 200)).is_empty());
        // Once the impostor stops, it is over after the window.
        let later = s(100 * 200) + WINDOW + Duration::from_secs(1);
        w.observe(&real, 1000, later);
        assert!(w.duplicates(later).is_empty());
    }
}
