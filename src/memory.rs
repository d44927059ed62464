//! Giving memory the daemon freed back to the system.
//!
//! glibc's allocator returns freed memory to the system only from the top of
//! each heap, so the large short-lived structures the daemon builds (a view
//! of the whole registry and the config rendered from it, a snapshot of the
//! store: tens of megabytes each with 100,000 servers) leave the process
//! resident at its peak long after they are freed. Two things keep it near what it holds:
//!
//! - [`tune_allocator`] fixes the size above which a block gets its own
//!   mapping (unmapped when freed) at 256 KiB. glibc otherwise raises that
//!   threshold to the largest block freed so far (up to 32 MiB), after which
//!   a multi-megabyte buffer (a config text, a store snapshot) lands in the
//!   heap, between live data, and stays resident;
//! - whoever finishes bulk work calls [`bulk_work_done`]; the task of
//!   [`release_when_asked`] then asks glibc to release its free pages
//!   (`malloc_trim`), at most once per interval and on a blocking thread,
//!   since the call walks every arena.
//!
//! Elsewhere than on glibc both do nothing.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::sync::watch;

static WANTED: AtomicBool = AtomicBool::new(false);

/// Notes that a large transient structure was just freed.
pub fn bulk_work_done() {
    WANTED.store(true, Ordering::Relaxed);
}

/// Releases free memory after bulk work, at most once per `every`, until
/// shutdown.
pub async fn release_when_asked(every: Duration, mut shutdown: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = crate::shutdown::signalled(&mut shutdown) => return,
        }
        if WANTED.swap(false, Ordering::Relaxed) {
            // A failed blocking task (it cannot panic) only skips one release.
            let _ = tokio::task::spawn_blocking(release).await;
        }
    }
}

/// Blocks of this size and more are mapped on their own.
const MMAP_THRESHOLD: usize = 256 * 1024;

/// Sets the allocator up for a long-running daemon; call once, first thing.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
pub fn tune_allocator() {
    // SAFETY: `mallopt` takes no pointer; it only sets a tunable, and glibc
    // serialises it with every other allocator call.
    let ok = unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD as libc::c_int) };
    debug_assert_eq!(ok, 1, "glibc accepts a 256 KiB mmap threshold");
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn tune_allocator() {}

/// Asks the allocator to return its free pages; whether it gave any back.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
pub fn release() -> bool {
    // SAFETY: `malloc_trim` takes no pointer and has no precondition; glibc
    // serialises it with every other allocator call.
    unsafe { libc::malloc_trim(0) == 1 }
}

/// Other allocators return free memory themselves or have no such call.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn release() -> bool {
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Memory freed below live allocations stays resident until released.
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[test]
    fn release_returns_memory_freed_below_live_data() {
        fn rss_kib() -> u64 {
            let status = std::fs::read_to_string("/proc/self/status").unwrap();
            let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
            line.split_whitespace().nth(1).unwrap().parse().unwrap()
        }
        // Many small blocks (below glibc's mmap threshold), one in twenty
        // kept, so what is freed lies between live blocks.
        let mut blocks: Vec<Vec<u8>> = (0..200_000).map(|i| vec![i as u8; 600]).collect();
        let mut kept = Vec::new();
        for (i, b) in blocks.drain(..).enumerate() {
            if i % 20 == 0 {
                kept.push(b);
            }
        }
        let before = rss_kib();
        release();
        let after = rss_kib();
        assert!(
            after + 20_000 < before,
            "RSS {before} KiB before the release, {after} KiB after"
        );
        drop(kept);
    }
}
