//! Failover of the floating IP, in network namespaces (root):
//!
//! 1. Hard crashes of the VIP holder (link down, every process killed):
//!    from the crash to the first client connection through the VIP that
//!    succeeds again (a new attempt every 5 ms, each on its own, 0.5 s
//!    timeout so no success owes anything to a retransmitted SYN); p50, p99
//!    and max.
//! 2. A quiet run in which the VMs' CPUs are saturated (stress-ng, at the
//!    priority of lbmesh) and 5 % of the packets between the VMs are
//!    dropped (nftables `numgen random`): VIP moves, and samples of an ARP
//!    observer in which not exactly one VM answered for the VIP.
//!
//! cargo bench --bench failover   (30 crashes, 600 s quiet run)
//! LBMESH_BENCH_CRASHES=30 LBMESH_BENCH_QUIET_SECS=0 cargo bench --bench failover
//! Other timer settings, same lab (flags of `lbmesh keepalived config`):
//! LBMESH_LAB_KEEPALIVED_ARGS="--advert-int 0.25 --down-timer-adverts 3" …
//! LBMESH_LAB_KEEPALIVED_ARGS="--advert-int 1 --down-timer-adverts 3" …

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "../tests/netns/lab.rs"]
mod lab;

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
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
    let crashes = env_num("LBMESH_BENCH_CRASHES", 30);
    let quiet = Duration::from_secs(env_num("LBMESH_BENCH_QUIET_SECS", 600));
    println!(
        "keepalived config flags: {:?}",
        std::env::var("LBMESH_LAB_KEEPALIVED_ARGS").unwrap_or_default()
    );

    let mut lab = lab::Lab::start(&bin, 3, 1);
    let holder = lab.wait_vip_holder(Duration::from_secs(15));
    lab.phone_home(0, holder, 443, &lab.nodes[0].1.clone());
    let mut times = Vec::new();
    for n in 0..crashes {
        let holder = lab.wait_vip_holder(Duration::from_secs(15));
        let start = Instant::now();
        while lab.client_greeting(443).is_none() {
            assert!(
                start.elapsed() < Duration::from_secs(15),
                "VIP serves before crash {n}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        let mut prober = lab.concurrent_prober(443, 5, 0.5);
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
        std::thread::sleep(Duration::from_secs(2));
    }
    if !times.is_empty() {
        let mut sorted = times.clone();
        sorted.sort_by(f64::total_cmp);
        println!(
            "failover over {} crashes: p50 {:.3} s, p99 {:.3} s, max {:.3} s, min {:.3} s",
            sorted.len(),
            percentile(&sorted, 50.0),
            percentile(&sorted, 99.0),
            sorted[sorted.len() - 1],
            sorted[0]
        );
    }
    if quiet.is_zero() {
        return;
    }

    // Quiet run under CPU saturation and 5 % loss between the VMs.
    let cpus = std::thread::available_parallelism().map_or(2, |n| n.get());
    let holder = lab.wait_vip_holder(Duration::from_secs(15));
    let mut stress = Command::new("ip")
        .args(["netns", "exec", &lab.lbs[holder].ns, "stress-ng", "--cpu"])
        .arg((2 * cpus).to_string())
        .args(["--timeout"])
        .arg(format!("{}s", quiet.as_secs() + 5))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("stress-ng (apt-get install stress-ng)");
    for i in 0..lab.lbs.len() {
        lab.block(
            i,
            "lmloss",
            "ip saddr 198.18.0.11-198.18.0.19 ip daddr 198.18.0.11-198.18.0.19 numgen random mod 100 < 5",
        );
    }
    let mut obs = lab.arp_observer(50);
    let start = Instant::now();
    let (mut samples, mut not_one, mut moves) = (0u64, 0u64, 0u64);
    let mut last_holder = holder;
    let mut last_check = Instant::now();
    while start.elapsed() < quiet {
        let (_, n) = obs.next().expect("the ARP observer runs");
        samples += 1;
        if n != 1 {
            not_one += 1;
            println!(
                "{:>6.1} s: {n} VMs answer for the VIP",
                start.elapsed().as_secs_f64()
            );
        }
        if last_check.elapsed() >= Duration::from_secs(1) {
            last_check = Instant::now();
            if let Some(h) = lab.vip_holder().filter(|h| *h != last_holder) {
                moves += 1;
                println!(
                    "{:>6.1} s: the VIP moved from lb{} to lb{}",
                    start.elapsed().as_secs_f64(),
                    last_holder + 1,
                    h + 1
                );
                last_holder = h;
            }
        }
    }
    let _ = stress.kill();
    let _ = stress.wait();
    println!(
        "quiet run of {} s, CPUs saturated ({} stress-ng workers) and 5 % loss between VMs: \
         {moves} VIP moves, {not_one} of {samples} ARP samples without exactly one holder",
        quiet.as_secs(),
        2 * cpus
    );
}
