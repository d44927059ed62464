//! Time as an input: wall-clock sources and the hybrid logical clock that orders writes.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A source of wall-clock time in Unix milliseconds. Library code never reads
/// the system clock directly; tests and simulations pass their own.
pub trait Clock: Send + Sync + 'static {
    fn now_ms(&self) -> u64;
}

/// The host's wall clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64)
    }
}

/// A wall clock that follows tokio's (pausable) time from a fixed start,
/// shifted by a skew: lets tests and simulations run leases on virtual time.
#[derive(Debug, Clone)]
pub struct TokioClock {
    start_ms: u64,
    start: tokio::time::Instant,
    skew_ms: i64,
}

impl TokioClock {
    pub fn new(start_ms: u64, skew_ms: i64) -> Self {
        Self {
            start_ms,
            start: tokio::time::Instant::now(),
            skew_ms,
        }
    }
}

impl Clock for TokioClock {
    fn now_ms(&self) -> u64 {
        let elapsed = self.start.elapsed().as_millis() as i64;
        (self.start_ms as i64 + elapsed + self.skew_ms).max(0) as u64
    }
}

/// Bits of a stamp that count events within one millisecond.
const LOGICAL_BITS: u32 = 16;

/// A hybrid logical clock stamp: wall milliseconds in the high bits, an event
/// counter in the low bits. Stamps from one peer strictly increase, and a peer
/// that has seen a stamp only issues larger ones afterwards.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Default,
    serde::Serialize,
    serde::Deserialize,
)]
#[serde(transparent)]
pub struct Stamp(pub u64);

impl Stamp {
    pub fn wall_ms(self) -> u64 {
        self.0 >> LOGICAL_BITS
    }

    pub fn from_wall_ms(ms: u64) -> Self {
        Self(ms << LOGICAL_BITS)
    }

    /// The stamp `d` later on the wall-clock axis.
    pub fn plus(self, d: Duration) -> Self {
        Self(
            self.0
                .saturating_add((d.as_millis() as u64).saturating_mul(1 << LOGICAL_BITS)),
        )
    }
}

/// Issues [`Stamp`]s for one peer.
#[derive(Debug, Default, Clone)]
pub struct Hlc {
    last: Stamp,
}

impl Hlc {
    /// A stamp for a local event happening at wall time `now_ms`.
    pub fn tick(&mut self, now_ms: u64) -> Stamp {
        let physical = Stamp::from_wall_ms(now_ms);
        // Saturating: a stamp restored from a damaged file may be the largest.
        self.last = Stamp(physical.0.max(self.last.0.saturating_add(1)));
        self.last
    }

    /// Records a stamp seen from elsewhere so later local stamps exceed it.
    pub fn observe(&mut self, seen: Stamp) {
        self.last = self.last.max(seen);
    }

    pub fn last(&self) -> Stamp {
        self.last
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hlc_is_monotonic_and_follows_observed_stamps() {
        let mut hlc = Hlc::default();
        let a = hlc.tick(1_000);
        let b = hlc.tick(1_000);
        let c = hlc.tick(999); // wall clock stepped back
        assert!(a < b && b < c);
        assert_eq!(a.wall_ms(), 1_000);
        hlc.observe(Stamp::from_wall_ms(5_000));
        let d = hlc.tick(1_001);
        assert!(d > Stamp::from_wall_ms(5_000));
        assert_eq!(d.wall_ms(), 5_000);
    }

    #[test]
    fn the_largest_stamp_does_not_overflow_the_clock() {
        let mut hlc = Hlc::default();
        hlc.observe(Stamp(u64::MAX));
        assert_eq!(hlc.tick(1_000), Stamp(u64::MAX));
        assert_eq!(hlc.tick(1_000), Stamp(u64::MAX));
    }

    #[test]
    fn plus_moves_on_the_wall_axis() {
        let s = Stamp::from_wall_ms(10);
        assert_eq!(s.plus(Duration::from_millis(5)).wall_ms(), 15);
    }
}
