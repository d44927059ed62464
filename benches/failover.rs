//! Failover time of the floating IP: from a hard crash of the VIP holder
//! (link down, every process killed) to the first client connection through
//! the VIP that succeeds again, over repeated crashes; then a quiet run that
//! counts VIP moves (there should be none). Needs root: network namespaces.
//!
//! cargo bench --bench failover            (10 crashes, 300 s quiet run)
//! LBMESH_BENCH_CRASHES=3 LBMESH_BENCH_QUIET_SECS=30 cargo bench --bench failover

#[path = "../tests/netns/lab.rs"]
mod lab;

use std::path::PathBuf;
use std::time::{Duration, Instant};

fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    let bin = std::env::var_os("LBMESH_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/release/lbmesh"));
    assert!(
        bin.exists(),
        "{} missing: cargo build --release first",
        bin.display()
    );
    let crashes = env_num("LBMESH_BENCH_CRASHES", 10);
    let quiet = Duration::from_secs(env_num("LBMESH_BENCH_QUIET_SECS", 300));

    let mut lab = lab::Lab::start(&bin, 3, 1);
    let holder = lab.wait_vip_holder(Duration::from_secs(15));
    lab.phone_home(0, holder, 443, &lab.nodes[0].1.clone());
    let mut times = Vec::new();
    for n in 0..crashes {
        let holder = lab.wait_vip_holder(Duration::from_secs(15));
        assert!(
            lab.client_greeting(443).is_some(),
            "VIP serves before crash {n}"
        );
        let mut prober = lab.prober(443);
        std::thread::sleep(Duration::from_millis(300));
        let t = lab.crash(holder);
        let back = prober
            .first_success_after(t, Duration::from_secs(30))
            .expect("connections succeed again");
        drop(prober);
        times.push(back - t);
        println!(
            "crash {:>2}: lb{} down, connections back after {:.3} s",
            n + 1,
            holder + 1,
            back - t
        );
        lab.recover(holder);
        // Let the recovered peer settle as BACKUP before the next crash.
        std::thread::sleep(Duration::from_secs(3));
    }
    let mut sorted = times.clone();
    sorted.sort_by(f64::total_cmp);
    if !sorted.is_empty() {
        println!(
            "failover over {} crashes: median {:.3} s, worst {:.3} s, best {:.3} s",
            sorted.len(),
            sorted[sorted.len() / 2],
            sorted[sorted.len() - 1],
            sorted[0]
        );
    }

    // Quiet run: nothing happens; the VIP must not move.
    let start = Instant::now();
    let mut holder = lab.wait_vip_holder(Duration::from_secs(15));
    let mut moves = 0;
    let mut gaps = 0;
    while start.elapsed() < quiet {
        match lab.vip_holder() {
            Some(h) if h != holder => {
                moves += 1;
                holder = h;
            }
            Some(_) => {}
            None => gaps += 1,
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    println!(
        "quiet run of {} s: {moves} VIP moves, {gaps} samples without exactly one holder",
        quiet.as_secs()
    );
}
