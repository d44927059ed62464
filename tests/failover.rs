//! Failover of the floating IP on real VRRP in network namespaces: hard
//! crashes of the holder, split brains healed through the mesh, and a
//! planned handoff with `lbmesh drain`. Runs as root; every test keeps the
//! logs of its VMs and prints them when it fails.

mod common;
#[path = "netns/lab.rs"]
mod lab;

use std::time::{Duration, Instant};

use common::{bin, eventually};
use lab::Lab;

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

/// Lets VRRP through again on every VM and waits until every peer may hold
/// the VIP.
fn vrrp_comes_back(lab: &Lab) {
    for i in 0..3 {
        lab.unblock(i, "lmvrrp");
    }
    eventually(
        Duration::from_secs(10),
        "every peer may hold the VIP again",
        || {
            (0..3)
                .all(|i| failover_of(lab, i)["may_hold"] == true)
                .then_some(())
        },
    );
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
    vrrp_comes_back(&lab);
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

    // Both cut: nothing can tell the sides apart, and each VM keeps what
    // VRRP gives it. When gossip comes back, the mesh heals the split.
    for i in 0..3 {
        lab.block(i, "lmvrrp", "ip protocol 112");
    }
    eventually(
        Duration::from_secs(5),
        "two VMs answering for the VIP with both channels cut",
        || obs.next().filter(|(_, n)| *n >= 2),
    );
    let start = Instant::now();
    let mut single = 0;
    while start.elapsed() < Duration::from_secs(3) {
        let (_, n) = obs.next().expect("observer runs");
        single += usize::from(n == 1);
    }
    eprintln!("both cut for 3 s: {single} samples with a single holder");
    assert_eq!(single, 0, "with both channels cut, a side gave the VIP up");
    let back = lab::now();
    for i in 0..3 {
        lab.unblock(i, "lmgossip");
    }
    let one_at = one_holder_again(&mut obs, Duration::from_secs(15), Duration::from_secs(2));
    eprintln!(
        "both cut, then gossip back: one holder {:.3} s after gossip came back",
        one_at - back
    );
    // The peers must first see each other live again, then confirm the
    // split for 0.3 s.
    assert!(
        one_at - back <= 3.0,
        "two VMs answered for the VIP {:.3} s after gossip came back",
        one_at - back
    );
    vrrp_comes_back(&lab);
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

/// Times keepalived's log of VM `i` says it entered MASTER state.
fn master_entries(lab: &Lab, i: usize) -> usize {
    std::fs::read_to_string(lab.lbs[i].dir.join("keepalived.log"))
        .unwrap_or_default()
        .matches("Entering MASTER STATE")
        .count()
}

/// Waits until the observer has seen the same single VM answer for the VIP
/// for a second; its MAC.
fn settled(obs: &mut lab::ArpObserver) -> Option<String> {
    let mut holder = None;
    eventually(
        Duration::from_secs(10),
        "one VM answering for the VIP",
        || {
            let w = obs.watch(Duration::from_secs(1), &mut holder, "settling");
            (w.samples > 0 && w.two_or_more == 0 && w.none == 0 && w.moves == 0).then_some(())
        },
    );
    holder
}

fn add(total: &mut lab::Watch, w: &lab::Watch) {
    total.samples += w.samples;
    total.two_or_more += w.two_or_more;
    total.none += w.none;
    total.moves += w.moves;
}

/// A backup whose VM stalls (keepalived and lbmesh frozen for longer than
/// VRRP's master-down interval, as a hypervisor pause or a starved VM does)
/// or whose CPUs are saturated does not take the VIP, and there is never a
/// moment when two VMs answer for it. The backup outranks the holder: the
/// worst case, since VRRP gives the VIP to the higher priority of two
/// MASTERs.
#[test]
fn a_stalled_or_starved_backup_does_not_take_the_vip() {
    let (lab, mut holder) = serving_lab();
    // lb1 has the highest priority; make it a backup if it holds the VIP.
    if holder == 0 {
        let (code, r) = lab.api_post(0, "/v1/drain?timeout=5", 10);
        assert_eq!(code, 200, "{r}");
        holder = lab.wait_vip_holder(Duration::from_secs(5));
        let (code, r) = lab.api_post(0, "/v1/undrain", 5);
        assert_eq!(code, 200, "{r}");
        eventually(Duration::from_secs(10), "lb1 back as a backup", || {
            (failover_of(&lab, 0)["may_hold"] == true).then_some(())
        });
    }
    let backup = 0;
    assert_ne!(holder, backup);
    let mut obs = lab.arp_observer(20);
    let mut mac = settled(&mut obs);
    let before = master_entries(&lab, backup);
    let mut total = lab::Watch::default();
    // The master-down interval is 6 × 0.04 s plus a skew: about 0.25 s.
    for stall in [0.5, 1.0, 2.0] {
        let frozen = lab.stall(
            backup,
            &[Lab::KEEPALIVED, Lab::LBMESH],
            Duration::from_secs_f64(stall),
        );
        let w = obs.watch(Duration::from_secs(2), &mut mac, "after a stall");
        eprintln!(
            "lb{} (backup) frozen for {:.3} s: {w:?} in the 2 s after",
            backup + 1,
            frozen.as_secs_f64()
        );
        add(&mut total, &w);
    }
    {
        let stress = lab.saturate_cpus(backup, 10);
        let w = obs.watch(Duration::from_secs(8), &mut mac, "CPUs saturated");
        eprintln!(
            "lb{} (backup) with {} stress-ng workers for 8 s: {w:?}",
            backup + 1,
            stress.workers
        );
        add(&mut total, &w);
    }
    let entered = master_entries(&lab, backup) - before;
    eprintln!("starved backup: {total:?}; it entered MASTER state {entered} times");
    assert_eq!(entered, 0, "the starved backup became VRRP MASTER");
    assert_eq!(total.two_or_more, 0, "two VMs answered for the VIP");
    assert_eq!(total.moves, 0, "the VIP moved");
    assert_eq!(lab.vip_holder(), Some(holder));
}

/// The holder keeps the VIP through a brief stall of its lbmesh (frozen for
/// 0.8 s), alone and while its CPUs are saturated; through a health problem
/// shorter than a second; and, while its own timers fire late (its local
/// health score is up), through a longer one. A problem that lasts moves
/// the VIP: the grace has an end.
#[test]
fn a_stalled_or_starved_holder_keeps_the_vip() {
    let (lab, holder) = serving_lab();
    let mut obs = lab.arp_observer(20);
    let mut mac = settled(&mut obs);
    let mut total = lab::Watch::default();
    for _ in 0..2 {
        let frozen = lab.stall(holder, &[Lab::LBMESH], Duration::from_millis(800));
        let w = obs.watch(Duration::from_secs(2), &mut mac, "holder stalled");
        eprintln!(
            "lb{} (holder) lbmesh frozen for {:.3} s: {w:?} in the 2 s after; local health {}",
            holder + 1,
            frozen.as_secs_f64(),
            failover_of(&lab, holder)["local_health"]
        );
        add(&mut total, &w);
    }
    {
        let stress = lab.saturate_cpus(holder, 8);
        let w = obs.watch(Duration::from_secs(2), &mut mac, "CPUs saturated");
        add(&mut total, &w);
        let frozen = lab.stall(holder, &[Lab::LBMESH], Duration::from_millis(800));
        let w = obs.watch(Duration::from_secs(4), &mut mac, "CPUs saturated, stalled");
        eprintln!(
            "lb{} (holder) with {} stress-ng workers, lbmesh frozen for {:.3} s: {w:?}; local health {}",
            holder + 1,
            stress.workers,
            frozen.as_secs_f64(),
            failover_of(&lab, holder)["local_health"]
        );
        add(&mut total, &w);
    }
    assert_eq!(total.two_or_more, 0, "two VMs answered for the VIP");
    assert_eq!(total.moves, 0, "the VIP moved");
    assert_eq!(lab.vip_holder(), Some(holder));

    // Health problems: HAProxy's health socket out of reach for a while.
    let socket = lab.lbs[holder].dir.join("data/haproxy-health.sock");
    assert!(socket.exists(), "{}", socket.display());
    let hidden = socket.with_extension("hidden");
    let problem = |d: Duration| {
        std::fs::rename(&socket, &hidden).unwrap();
        std::thread::sleep(d);
        std::fs::rename(&hidden, &socket).unwrap();
    };
    problem(Duration::from_millis(600));
    let w = obs.watch(Duration::from_secs(2), &mut mac, "short problem");
    eprintln!(
        "a 0.6 s health problem on the holder (local health {}): {w:?}",
        failover_of(&lab, holder)["local_health"]
    );
    assert_eq!((w.moves, w.two_or_more), (0, 0), "{w:?}");
    assert_eq!(lab.vip_holder(), Some(holder));

    // Late timers: lbmesh frozen briefly, again and again.
    for _ in 0..8 {
        lab.stall(holder, &[Lab::LBMESH], Duration::from_millis(60));
        std::thread::sleep(Duration::from_millis(30));
    }
    let score = failover_of(&lab, holder)["local_health"]
        .as_u64()
        .unwrap_or(0);
    problem(Duration::from_millis(2_500));
    let w = obs.watch(
        Duration::from_secs(2),
        &mut mac,
        "long problem, late timers",
    );
    eprintln!("a 2.5 s health problem on the holder with local health {score}: {w:?}");
    assert!(score >= 4, "local health {score} after eight stalls");
    assert_eq!((w.moves, w.two_or_more), (0, 0), "{w:?}");
    assert_eq!(lab.vip_holder(), Some(holder));

    // A problem that lasts: the holder gives the VIP up within the longest
    // grace (nine seconds, at the highest local-health score).
    std::fs::rename(&socket, &hidden).unwrap();
    let t = Instant::now();
    let moved = eventually(
        Duration::from_secs(11),
        "the VIP to leave an unhealthy holder",
        || lab.vip_holder().filter(|h| *h != holder),
    );
    std::fs::rename(&hidden, &socket).unwrap();
    eprintln!(
        "a lasting health problem on the holder: the VIP moved to {} after {:.1} s",
        lab.lbs[moved].name,
        t.elapsed().as_secs_f64()
    );
    assert!(
        failover_of(&lab, holder)["reason"]
            .as_str()
            .unwrap_or("")
            .contains("HAProxy does not answer")
            || lab.log(holder).contains("HAProxy does not answer")
    );
}
