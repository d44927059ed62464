//! Failover of the floating IP on real VRRP in network namespaces: hard
//! crashes of the holder, split brains healed through the mesh, and a
//! planned handoff with `lbmesh drain`. Runs as root; every test keeps the
//! logs of its VMs and prints them when it fails.

#[path = "netns/lab.rs"]
mod lab;

use std::path::Path;
use std::time::{Duration, Instant};

use lab::Lab;

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_lbmesh"))
}

fn eventually<T>(within: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            start.elapsed() < within,
            "timed out after {within:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A lab of three VMs with traffic through VIP:443.
fn serving_lab() -> (Lab, usize) {
    let lab = Lab::start(bin(), 3, 1);
    let holder = lab.wait_vip_holder(Duration::from_secs(15));
    lab.phone_home(0, holder, 443, &lab.nodes[0].1.clone());
    eventually(Duration::from_secs(10), "traffic through the VIP", || {
        lab.client_greeting(443)
    });
    (lab, holder)
}

fn failover_of(lab: &Lab, i: usize) -> serde_json::Value {
    lab.api_get(i, "/v1/status").1["vrrp"]["failover"].clone()
}

#[test]
fn hard_crashes_of_the_holder_move_traffic_fast() {
    let (mut lab, _) = serving_lab();
    let mut times = Vec::new();
    for n in 0..4 {
        let holder = lab.wait_vip_holder(Duration::from_secs(15));
        let mut prober = lab.concurrent_prober(443, 5, 0.5);
        std::thread::sleep(Duration::from_millis(200));
        let t = lab.crash(holder);
        let back = prober
            .first_success_after(t, Duration::from_secs(10))
            .unwrap_or_else(|| panic!("no connection succeeded after crash {n}"));
        eprintln!(
            "crash {n}: lb{} down, traffic back after {:.3} s",
            holder + 1,
            back - t
        );
        times.push(back - t);
        drop(prober);
        lab.recover(holder);
        std::thread::sleep(Duration::from_secs(1));
    }
    times.sort_by(f64::total_cmp);
    // The benchmark measures p99 against 0.3 s on 30 crashes; on a shared CI
    // machine the bound is loose, but under the 0.9 s of 0.25 s adverts.
    assert!(
        times[times.len() - 1] < 0.85,
        "failover times {times:?} (s): the worst is over 0.85 s"
    );
}

/// The first moment, from now, at which exactly one VM has answered for
/// the VIP in every sample for `stable`; panics after `within`.
fn one_holder_again(obs: &mut lab::ArpObserver, within: Duration, stable: Duration) -> f64 {
    let start = Instant::now();
    let mut since: Option<f64> = None;
    while let Some((t, n)) = obs.next() {
        assert!(
            start.elapsed() < within,
            "no single VIP holder within {within:?}"
        );
        match (n, since) {
            (1, None) => since = Some(t),
            (1, Some(s)) if t - s >= stable.as_secs_f64() => return s,
            (1, Some(_)) => {}
            _ => since = None,
        }
    }
    panic!("the ARP observer stopped");
}

#[test]
fn a_split_brain_heals_within_a_second_and_a_gossip_cut_moves_nothing() {
    let (lab, holder) = serving_lab();
    let mut obs = lab.arp_observer(50);
    // The observer runs and sees one holder before anything is cut.
    eventually(
        Duration::from_secs(10),
        "the observer to see one holder",
        || obs.next().filter(|(_, n)| *n == 1),
    );
    // VRRP cut between every VM while gossip flows: the backups take over.
    for i in 0..3 {
        lab.block(i, "lmvrrp", "ip protocol 112");
    }
    let (two_at, _) = eventually(
        Duration::from_secs(5),
        "two VMs answering for the VIP",
        || obs.next().filter(|(_, n)| *n >= 2),
    );
    let one_at = one_holder_again(&mut obs, Duration::from_secs(10), Duration::from_secs(2));
    eprintln!("split brain over {:.3} s after it began", one_at - two_at);
    assert!(
        one_at - two_at <= 1.0,
        "two VMs answered for the VIP for {:.3} s",
        one_at - two_at
    );
    let new_holder = lab.wait_vip_holder(Duration::from_secs(1));
    assert_eq!(
        lab.client_greeting(443).as_deref(),
        Some("node-k1"),
        "traffic follows the holder the mesh kept"
    );
    // Reported in status and metrics by the peers that stepped down.
    let stepped: Vec<usize> = (0..3)
        .filter(|i| failover_of(&lab, *i)["split_brain_stepdowns"].as_u64() > Some(0))
        .collect();
    assert!(!stepped.is_empty(), "no peer reports stepping down");
    for i in &stepped {
        assert_ne!(*i, new_holder);
        let f = failover_of(&lab, *i);
        assert!(
            f["reason"].as_str().unwrap_or("").contains("split brain"),
            "{f}"
        );
        let (_, metrics) = metrics_text(&lab, *i);
        assert!(
            metrics.contains("lbmesh_split_brain_stepdowns_total 1"),
            "{metrics}"
        );
    }
    assert!(lab.log(stepped[0]).contains("split brain"));

    // VRRP comes back: the peers that stepped down rejoin as backups.
    for i in 0..3 {
        lab.unblock(i, "lmvrrp");
    }
    eventually(
        Duration::from_secs(10),
        "every peer may hold the VIP again",
        || {
            (0..3)
                .all(|i| failover_of(&lab, i)["may_hold"] == true)
                .then_some(())
        },
    );
    assert_eq!(lab.wait_vip_holder(Duration::from_secs(1)), new_holder);

    // The other way round: gossip cut, VRRP flows. Nothing moves.
    for i in 0..3 {
        lab.block(i, "lmgossip", "udp dport 7946");
    }
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(5) {
        let (_, n) = obs.next().expect("observer runs");
        assert_eq!(n, 1, "with gossip cut, {n} VMs answered for the VIP");
    }
    assert_eq!(lab.wait_vip_holder(Duration::from_secs(1)), new_holder);
    for i in 0..3 {
        lab.unblock(i, "lmgossip");
    }
    let _ = holder;
}

fn metrics_text(lab: &Lab, i: usize) -> (bool, String) {
    let out = std::process::Command::new("ip")
        .args(["netns", "exec", &lab.lbs[i].ns, "curl", "-s", "-m", "3"])
        .arg(format!("{}/metrics", lab.lbs[i].api()))
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[test]
fn drain_hands_the_vip_over_without_a_failed_connection_and_undrain_brings_the_vm_back() {
    let (lab, holder) = serving_lab();
    let mut prober = lab.concurrent_prober(443, 20, 3.0);
    std::thread::sleep(Duration::from_millis(500));
    let t = lab::now();
    let (code, r) = lab.api_post(holder, "/v1/drain?timeout=10", 20);
    assert_eq!(code, 200, "{r}");
    assert_eq!(r["vip_released"], true, "{r}");
    assert_eq!(r["connections"], 0, "{r}");
    let new_holder = lab.wait_vip_holder(Duration::from_secs(2));
    assert_ne!(new_holder, holder);
    assert_eq!(
        r["holders"],
        serde_json::json!([lab.lbs[new_holder].name.clone()])
    );
    std::thread::sleep(Duration::from_secs(1));
    let _ = prober.first_success_after(t, Duration::from_secs(1));
    let (ok, failed) = prober.stop_and_count(t);
    assert!(ok > 20, "{ok} connections succeeded");
    assert_eq!(
        failed,
        0,
        "{failed} of {} connections failed during the drain",
        ok + failed
    );
    assert_eq!(failover_of(&lab, holder)["drained"], true);
    assert_eq!(failover_of(&lab, holder)["may_hold"], false);

    // A drained VM stays out: even when the new holder crashes, and after a
    // restart of its own daemon.
    let mut lab = lab;
    let lb = &lab.lbs[holder];
    for p in lab.pids_matching(&lb.ns, "serve --config") {
        let _ = std::process::Command::new("kill")
            .args(["-9", &p.to_string()])
            .status();
    }
    lab.start_lbmesh(holder);
    lab.wait_healthy(holder, Duration::from_secs(30));
    assert_eq!(failover_of(&lab, holder)["drained"], true);
    lab.crash(new_holder);
    let third = lab.wait_vip_holder(Duration::from_secs(5));
    assert!(third != holder && third != new_holder);
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(lab.vip_holder(), Some(third));

    // Undrain: back as a backup that takes over when the holder dies.
    let (code, r) = lab.api_post(holder, "/v1/undrain", 5);
    assert_eq!(code, 200, "{r}");
    eventually(
        Duration::from_secs(5),
        "the undrained VM may hold the VIP",
        || (failover_of(&lab, holder)["may_hold"] == true).then_some(()),
    );
    lab.crash(third);
    assert_eq!(lab.wait_vip_holder(Duration::from_secs(5)), holder);
    assert_eq!(
        eventually(Duration::from_secs(5), "traffic", || lab
            .client_greeting(443)),
        "node-k1"
    );
}
