//! This VM's own health, measured as Lifeguard (memberlist's local health
//! multiplier) does: how late this process's timers fire. A VM starved of
//! CPU (busy neighbours, steal, a paused hypervisor) wakes its timers late;
//! the score rises by one for every late wake-up and falls by one for every
//! second of timely ones, so a starved VM is more patient before it gives up
//! the VIP because of its own health checks.

use std::time::Duration;

use tokio::sync::watch;

/// How often the timer is armed.
pub const TICK: Duration = Duration::from_millis(20);
/// A wake-up this much later than asked is late.
pub const LATE: Duration = Duration::from_millis(25);
/// The highest score; the multiplier is 1 + score.
pub const MAX_SCORE: u64 = 8;
const RECOVER_TICKS: u32 = 50;

/// The saturating score, pure: fed one observed lateness per tick.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Score {
    score: u64,
    timely: u32,
}

impl Score {
    pub fn observe(&mut self, lateness: Duration) {
        if lateness > LATE {
            self.score = (self.score + 1).min(MAX_SCORE);
            self.timely = 0;
        } else {
            self.timely += 1;
            if self.timely >= RECOVER_TICKS {
                self.timely = 0;
                self.score = self.score.saturating_sub(1);
            }
        }
    }

    pub fn score(self) -> u64 {
        self.score
    }

    /// How many times longer than usual to wait before acting on this
    /// VM's own failing checks.
    pub fn multiplier(self) -> u64 {
        1 + self.score
    }
}

/// Measures until shutdown, publishing the score on `out`.
pub async fn measure(out: watch::Sender<Score>, mut shutdown: watch::Receiver<bool>) {
    let mut score = Score::default();
    loop {
        let asked = tokio::time::Instant::now() + TICK;
        tokio::select! {
            () = tokio::time::sleep_until(asked) => {}
            () = crate::shutdown::signalled(&mut shutdown) => return,
        }
        let before = score.score();
        score.observe(tokio::time::Instant::now().saturating_duration_since(asked));
        if score.score() != before {
            if score.score() > before && before == 0 {
                tracing::warn!("this VM is starved of CPU: its timers fire late");
            } else if score.score() == 0 {
                tracing::info!("this VM's timers fire on time again");
            }
            out.send_replace(score);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn late_ticks_raise_the_score_and_timely_seconds_lower_it() {
        let mut s = Score::default();
        assert_eq!(s.multiplier(), 1);
        for _ in 0..20 {
            s.observe(Duration::from_millis(100));
        }
        assert_eq!(s.score(), MAX_SCORE);
        for _ in 0..RECOVER_TICKS * 3 {
            s.observe(Duration::from_millis(1));
        }
        assert_eq!(s.score(), MAX_SCORE - 3);
        // A late tick restarts the recovery count.
        for _ in 0..RECOVER_TICKS - 1 {
            s.observe(Duration::ZERO);
        }
        s.observe(LATE + Duration::from_millis(1));
        assert_eq!(s.score(), MAX_SCORE - 2);
    }
}
