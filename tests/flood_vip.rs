//! A connection flood from many addresses against the VIP holder's API, on
//! VMs set up the way the README installs them: keepalived's check reaches
//! the daemon at the VM's own address, not at loopback. The flood fills the
//! API's public connection slots; the check must still be answered (the
//! reserve for callers on the VM) so that the VIP stays where it is.
//! Runs as root; keeps the VMs' logs and prints them when it fails.

mod common;
#[path = "netns/lab.rs"]
mod lab;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::bin;
use lab::Lab;

/// Source addresses of the attack, each holding up to the per-source cap:
/// 24 × 64 connections are more than the API's 1,024 public slots.
const SOURCES: u8 = 24;
const PER_SOURCE: usize = 64;
const ATTACK_SECS: u64 = 12;

/// Holds `PER_SOURCE` connections from each source address to the API,
/// trickles a header byte on every other one each second, reopens those
/// the daemon closes, and prints how many it held at the end.
const ATTACKER: &str = r#"
import resource, socket, sys, time
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
host, port, per, secs = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
sources = sys.argv[5:]
held = {}
def open_one(src, i):
    s = socket.socket()
    s.setblocking(False)
    s.bind((src, 0))
    try:
        s.connect((host, port))
    except BlockingIOError:
        pass
    held[(src, i)] = s
end = time.time() + secs
while time.time() < end:
    for src in sources:
        for i in range(per):
            s = held.get((src, i))
            if s is not None:
                try:
                    if i % 2 == 0:
                        s.send(b"X")
                    continue
                except BlockingIOError:
                    continue
                except OSError:
                    s.close()
            open_one(src, i)
    time.sleep(1)
print(len(held))
"#;

/// The VM's metrics, read from the VM itself (the reserve lets it in).
fn metrics_text(vm: &lab::LbVm) -> String {
    let out = Command::new("ip")
        .args(["netns", "exec", &vm.ns, "curl", "-s", "-m", "3", "-H"])
        .arg(format!("X-Funkypenguin-Token: {}", lab::TOKEN))
        .arg(format!("{}/metrics", vm.api()))
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0.0)
}

#[test]
fn a_flood_from_many_addresses_does_not_move_the_vip() {
    let lab = Lab::start(bin(), 2, 0);
    let holder = lab.wait_vip_holder(Duration::from_secs(20));
    let vm = &lab.lbs[holder];
    let sources: Vec<String> = (0..SOURCES)
        .map(|i| format!("198.18.0.{}", 200 + i))
        .collect();
    for s in &sources {
        let ok = Command::new("ip")
            .args([
                "-n",
                &lab.client,
                "addr",
                "add",
                &format!("{s}/24"),
                "dev",
                "eth0",
            ])
            .status()
            .unwrap()
            .success();
        assert!(ok, "cannot add {s} to the client");
    }
    let attacker = Command::new("ip")
        .args(["netns", "exec", &lab.client, "python3", "-c", ATTACKER])
        .args([
            &vm.ip,
            "9000",
            &PER_SOURCE.to_string(),
            &ATTACK_SECS.to_string(),
        ])
        .args(&sources)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();

    // While it runs: the VIP stays, and keepalived's own check, run by hand
    // exactly as keepalived runs it (the VM's address), passes.
    let started = Instant::now();
    let (mut samples, mut moved, mut checks, mut passed) = (0, 0, 0, 0);
    std::thread::sleep(Duration::from_secs(3));
    while started.elapsed() < Duration::from_secs(ATTACK_SECS - 1) {
        samples += 1;
        if lab.vip_holder() != Some(holder) {
            moved += 1;
        }
        checks += 1;
        let (ok, out) = lab.lbmesh_cli(holder, bin(), &["keepalived", "check", "--alive"]);
        if ok {
            passed += 1;
        } else {
            eprintln!("check failed: {out}");
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let metrics = metrics_text(&lab.lbs[holder]);
    let out = attacker.wait_with_output().unwrap();
    let held: usize = String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or(0);
    let refused = metric(
        &metrics,
        "lbmesh_api_connections_refused_total{reason=\"connection_cap\"}",
    );
    eprintln!(
        "flood: {held} attacking sockets from {SOURCES} addresses, {refused} refused at the cap; \
         {passed} of {checks} checks passed; VIP away in {moved} of {samples} samples"
    );
    let logs = || format!("{}\n{metrics}", lab.log(holder));
    assert!(
        refused > 0.0,
        "the flood never filled the public slots:\n{}",
        logs()
    );
    assert_eq!(
        passed,
        checks,
        "keepalived's check failed under the flood:\n{}",
        logs()
    );
    assert_eq!(moved, 0, "the VIP moved under the flood:\n{}", logs());
    assert_eq!(lab.vip_holder(), Some(holder));
}
