//! Chaos in network namespaces: three load-balancer VMs on QUIC with
//! keepalived, phone-home clients on two Kubernetes nodes, a registrar that
//! writes through random peers and deletes about a fifth of what it added,
//! and a prober of VIP:443 every 50 ms; every 10 s a random VM crashes hard
//! (every process frozen, link cut, every process killed) and boots 3 s
//! later, one crash in four with its data directory wiped.
//!
//! It prints and asserts: no acknowledged registration lost and no
//! acknowledged delete undone on any peer; no VIP outage longer than 1.5 s,
//! and none that does not follow a crash of the holder; convergence within
//! 2 s of the last fault; one HAProxy master per VM at the end.
//! `LBMESH_CHAOS_SEED` replays a run's choices; `LBMESH_CHAOS_SECS` sets how
//! long the crashes go on (default 180). A failing run keeps its logs and
//! prints where. Root only.

mod common;
#[path = "netns/lab.rs"]
mod lab;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::{Reaped, bin};
use lab::{Lab, NODEPORT, TOKEN, VIP, in_ns};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

const CRASH_EVERY: Duration = Duration::from_secs(10);
const BOOT_AFTER: Duration = Duration::from_secs(3);
const MAX_OUTAGE: f64 = 1.5;
const CONVERGE_WITHIN: Duration = Duration::from_secs(2);
/// Frontends the registrar writes to (the phone-home clients use 443).
const PORTS: [u16; 4] = [10001, 10002, 10003, 10004];

fn log_to(path: &Path) -> (Stdio, Stdio) {
    let f = std::fs::File::create(path).unwrap();
    (f.try_clone().unwrap().into(), f.into())
}

/// `lbmesh phone-home` on every Kubernetes node: frontend 443 to the node's
/// NodePort, every 2 s, failing over between the three VMs.
fn phone_home(lab: &Lab, children: &mut Vec<Reaped>) {
    let webhook: Vec<String> = lab
        .lbs
        .iter()
        .map(|l| format!("{}/hooks/update-haproxy", l.api()))
        .collect();
    for (i, (ns, ip)) in lab.nodes.iter().enumerate() {
        let (out, err) = log_to(&lab.dir.path().join(format!("phone-home-k{}.log", i + 1)));
        let child = in_ns(ns, &bin().to_string_lossy())
            .arg("phone-home")
            .env("WEBHOOK", webhook.join(","))
            .env("WEBHOOK_TOKEN", TOKEN)
            .env("WEBHOOK_TIMEOUT", "2")
            .env("FRONTEND_PORT", "443")
            .env("BACKEND_PORT", NODEPORT.to_string())
            .env("NAME", "traefik")
            .env("REPEAT_INTERVAL", "2")
            .env("DST_IP", ip)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap();
        children.push(Reaped(child));
    }
}

/// Writes through random peers for `secs`: a new server each time, and
/// about one delete for four adds of a server it added. Logs every attempt
/// and its answer.
const REGISTRAR: &str = r#"
import json, random, sys, time, urllib.request, urllib.error
seed, secs, out, token, lbs = int(sys.argv[1]), float(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5].split(',')
rng = random.Random(seed)
log = open(out, 'w', buffering=1)
added, n, end = [], 0, time.time() + secs
def call(action, port, ip):
    lb = rng.choice(lbs)
    body = {'name': 'svc%d' % port, 'frontend-port': str(port), 'backend-port': '30080',
            'dst-ip': ip, 'action': action}
    req = urllib.request.Request('http://%s:9000/hooks/update-haproxy' % lb, method='POST',
        data=json.dumps(body).encode(),
        headers={'Content-Type': 'application/json', 'X-Funkypenguin-Token': token})
    try:
        with urllib.request.urlopen(req, timeout=1.5) as r:
            code = r.status
    except urllib.error.HTTPError as e:
        code = e.code
    except Exception:
        code = 0
    log.write('%s %s %d %s %s %d %.3f\n' % ('ack' if code == 200 else 'fail', action, port, ip, lb, code, time.time()))
    return code == 200
while time.time() < end:
    if added and rng.random() < 0.2:
        port, ip = added.pop(rng.randrange(len(added)))
        call('delete', port, ip)
    else:
        n += 1
        port, ip = 10001 + n % 4, '198.19.%d.%d' % (n // 250, n % 250 + 1)
        if call('add', port, ip):
            added.append((port, ip))
    time.sleep(0.2)
log.write('done\n')
"#;

/// Starts a connection to VIP:443 every 50 ms, each on its own (so one slow
/// answer delays no other) with a 1 s timeout, and logs `ok|fail <start>
/// <end> <why>`. Runs at realtime priority: it measures the VIP, not its
/// own wait for a CPU.
const PROBER: &str = r#"
import asyncio, sys, time
log = open(sys.argv[1], 'w', buffering=1)
async def one():
    t = time.time()
    why = '-'
    try:
        r, w = await asyncio.wait_for(asyncio.open_connection(sys.argv[2], 443), 1.0)
        d = await asyncio.wait_for(r.read(64), 1.0)
        w.close()
        ok = len(d) > 0
        why = '-' if ok else 'closed'
    except asyncio.TimeoutError:
        ok, why = False, 'timeout'
    except Exception as e:
        ok, why = False, type(e).__name__
    log.write('%s %.3f %.3f %s\n' % ('ok' if ok else 'fail', t, time.time(), why))
async def main():
    while True:
        asyncio.ensure_future(one())
        await asyncio.sleep(0.05)
asyncio.run(main())
"#;

/// What the registrar was told: for each server, whether it must be there
/// (None: its last write got no answer, either is right).
fn told(registrar_log: &str) -> (BTreeMap<(u16, String), Option<bool>>, usize, usize) {
    let mut want = BTreeMap::new();
    let (mut adds, mut deletes) = (0, 0);
    for line in registrar_log.lines() {
        let w: Vec<&str> = line.split(' ').collect();
        let [outcome, action, port, ip, ..] = w[..] else {
            continue;
        };
        let key = (port.parse().unwrap(), ip.to_owned());
        let acked = outcome == "ack";
        match (action, acked) {
            ("add", true) => adds += 1,
            ("delete", true) => deletes += 1,
            _ => {}
        }
        want.insert(key, acked.then_some(action == "add"));
    }
    (want, adds, deletes)
}

/// The servers peer `i` holds on the registrar's frontends.
fn held(lab: &Lab, i: usize) -> Option<Vec<(u16, String)>> {
    let (code, list) = lab.api_get(i, "/v1/frontends");
    if code != 200 {
        return None;
    }
    let mut out = Vec::new();
    for f in list["frontends"].as_array()? {
        let port = f["port"].as_u64()? as u16;
        if !PORTS.contains(&port) {
            continue;
        }
        for s in f["servers"].as_array()? {
            let addr = s["address"].as_str()?;
            out.push((port, addr.rsplit_once(':')?.0.to_owned()));
        }
    }
    Some(out)
}

/// Stretches of probes that failed, in the order they started: (first
/// failed start, next successful start, why the first failed).
fn outages(prober_log: &str) -> Vec<(f64, f64, String)> {
    let mut probes: Vec<(f64, bool, String)> = prober_log
        .lines()
        .filter_map(|l| {
            let w: Vec<&str> = l.split(' ').collect();
            let [state, start, _, why] = w[..] else {
                return None;
            };
            Some((start.parse().ok()?, state == "ok", why.to_owned()))
        })
        .collect();
    probes.sort_by(|a, b| a.0.total_cmp(&b.0));
    let mut out = Vec::new();
    let mut down: Option<(f64, String)> = None;
    for (t, ok, why) in probes {
        match (ok, &down) {
            (false, None) => down = Some((t, why)),
            (true, Some((start, why))) => {
                out.push((*start, t, why.clone()));
                down = None;
            }
            _ => {}
        }
    }
    if let Some((start, why)) = down {
        out.push((start, f64::INFINITY, why));
    }
    out
}

/// HAProxy master processes in a namespace: HAProxy processes whose parent
/// is not HAProxy.
fn haproxy_masters(lab: &Lab, ns: &str) -> usize {
    let comm = |pid: &str| std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
    lab.pids_matching(ns, "haproxy.cfg")
        .into_iter()
        .filter(|pid| comm(&pid.to_string()).trim() == "haproxy")
        .filter(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let ppid = stat
                .rsplit(')')
                .next()
                .and_then(|r| r.split_whitespace().nth(1))
                .unwrap_or("0");
            comm(ppid).trim() != "haproxy"
        })
        .count()
}

/// Keeps the run's logs when the test panics before its final verdict
/// (which keeps them itself); dropped before the lab removes them.
struct KeepOnPanic {
    dir: PathBuf,
    seed: u64,
}

impl Drop for KeepOnPanic {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let kept = keep_logs(&self.dir, self.seed);
            eprintln!(
                "chaos run with seed {} failed (replay: LBMESH_CHAOS_SEED={}); logs kept in {}",
                self.seed,
                self.seed,
                kept.display()
            );
        }
    }
}

/// Copies every log and config of the run to a directory that outlives it.
fn keep_logs(from: &Path, seed: u64) -> PathBuf {
    let to = std::env::temp_dir().join(format!("lbmesh-chaos-{seed}-{}", std::process::id()));
    fn walk(from: &Path, to: &Path) {
        let _ = std::fs::create_dir_all(to);
        for e in std::fs::read_dir(from).into_iter().flatten().flatten() {
            let p = e.path();
            let name = e.file_name();
            if p.is_dir() {
                walk(&p, &to.join(&name));
            } else if ["log", "conf", "toml", "cfg"]
                .iter()
                .any(|x| p.extension().is_some_and(|e| e == *x))
            {
                let _ = std::fs::copy(&p, to.join(&name));
            }
        }
    }
    walk(from, &to);
    to
}

#[test]
fn hard_crashes_every_ten_seconds_lose_nothing_acknowledged_and_keep_the_vip_up() {
    let seed: u64 = std::env::var("LBMESH_CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| rand::rng().random());
    let secs: u64 = std::env::var("LBMESH_CHAOS_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(180);
    eprintln!("chaos: seed {seed} (replay with LBMESH_CHAOS_SEED={seed}), {secs} s of crashes");
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut lab = Lab::start(bin(), 3, 2);
    // Children of the test itself, killed (and reaped) whatever happens.
    let mut children: Vec<Reaped> = Vec::new();
    let dir = lab.dir.path().to_owned();
    let _evidence = KeepOnPanic {
        dir: dir.clone(),
        seed,
    };

    lab.wait_vip_holder(Duration::from_secs(15));
    phone_home(&lab, &mut children);
    let deadline = Instant::now() + Duration::from_secs(20);
    while lab.client_greeting(443).is_none() {
        assert!(Instant::now() < deadline, "VIP:443 never served");
        std::thread::sleep(Duration::from_millis(100));
    }
    let prober_log = dir.join("prober.log");
    children.push(Reaped(
        in_ns(&lab.client, "chrt")
            .args(["-r", "30", "python3", "-u", "-c", PROBER])
            .arg(&prober_log)
            .arg(VIP)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    ));
    // A crash at the start and every CRASH_EVERY after, the last at `secs`
    // or later: faults span the whole run.
    let rounds = (secs.div_ceil(CRASH_EVERY.as_secs()) + 1) as u32;
    // Writes go on until the last crash; the last boot is then the last fault.
    let writing = CRASH_EVERY * (rounds - 1) + Duration::from_secs(1);
    let registrar_log = dir.join("registrar.log");
    let lb_ips: Vec<String> = lab.lbs.iter().map(|l| l.ip.clone()).collect();
    let mut registrar = in_ns(&lab.client, "python3")
        .args(["-u", "-c", REGISTRAR])
        .arg(seed.to_string())
        .arg(writing.as_secs().to_string())
        .arg(&registrar_log)
        .arg(TOKEN)
        .arg(lb_ips.join(","))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();

    // The faults: (frozen at, VM, whether it held the VIP, wiped).
    let mut crashes: Vec<(f64, usize, bool, bool)> = Vec::new();
    let start = Instant::now();
    let mut last_boot = Instant::now();
    for k in 0..rounds {
        let at = start + CRASH_EVERY * k + Duration::from_secs(1);
        std::thread::sleep(at.saturating_duration_since(Instant::now()));
        let victim = rng.random_range(0..lab.lbs.len());
        let wipe = k % 4 == 3;
        let held_vip = lab.vip_holder() == Some(victim);
        let t = lab.hard_crash(victim);
        eprintln!(
            "chaos: {:>5.1} s crash {} ({}){}",
            start.elapsed().as_secs_f64(),
            lab.lbs[victim].name,
            if held_vip { "VIP holder" } else { "backup" },
            if wipe { ", data directory wiped" } else { "" }
        );
        crashes.push((t, victim, held_vip, wipe));
        std::thread::sleep(BOOT_AFTER);
        if wipe {
            std::fs::remove_dir_all(lab.lbs[victim].dir.join("data")).unwrap();
        }
        lab.boot(victim);
        last_boot = Instant::now();
    }

    // Convergence after the last fault.
    let mut failures: Vec<String> = Vec::new();
    let converged = loop {
        let all = (0..3).all(|i| {
            let (_, st) = lab.api_get(i, "/v1/status");
            st["converged"] == true
                && st["peers"]
                    .as_array()
                    .is_some_and(|p| p.iter().filter(|x| x["live"] == true).count() == 3)
        });
        if all {
            break Some(last_boot.elapsed());
        }
        if last_boot.elapsed() > Duration::from_secs(60) {
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    match converged {
        Some(t) => {
            eprintln!(
                "chaos: converged {:.2} s after the last fault",
                t.as_secs_f64()
            );
            if t > CONVERGE_WITHIN {
                failures.push(format!(
                    "converged {:.2} s after the last fault (at most {CONVERGE_WITHIN:?})",
                    t.as_secs_f64()
                ));
            }
        }
        None => failures.push("the mesh did not converge within 60 s of the last fault".into()),
    }

    // Nothing acknowledged lost or undone, on every peer.
    let _ = registrar.wait();
    let log = std::fs::read_to_string(&registrar_log).unwrap_or_default();
    let (want, adds, deletes) = told(&log);
    eprintln!(
        "chaos: the registrar was told {adds} registrations and {deletes} deletes ({} writes without an answer)",
        want.values().filter(|w| w.is_none()).count()
    );
    if adds < 100 {
        failures.push(format!(
            "only {adds} acknowledged registrations: the test proves little"
        ));
    }
    for i in 0..3 {
        let Some(has) = held(&lab, i) else {
            failures.push(format!("{} does not answer /v1/frontends", lab.lbs[i].name));
            continue;
        };
        let has: std::collections::BTreeSet<(u16, String)> = has.into_iter().collect();
        let lost = want
            .iter()
            .filter(|(k, w)| **w == Some(true) && !has.contains(*k))
            .count();
        let undone = want
            .iter()
            .filter(|(k, w)| **w == Some(false) && has.contains(*k))
            .count();
        eprintln!(
            "chaos: {}: {lost} acknowledged registrations lost, {undone} acknowledged deletes undone",
            lab.lbs[i].name
        );
        if lost + undone > 0 {
            failures.push(format!(
                "{} lost {lost} acknowledged registrations and undid {undone} acknowledged deletes",
                lab.lbs[i].name
            ));
        }
        let (_, f) = lab.api_get(i, "/v1/frontends/443");
        let nodes = f["servers"].as_array().map_or(0, Vec::len);
        if nodes != lab.nodes.len() {
            failures.push(format!(
                "{} serves {nodes} of the {} phone-home nodes on 443",
                lab.lbs[i].name,
                lab.nodes.len()
            ));
        }
    }

    // The VIP: every outage short, and each right after its holder crashed.
    let probes = std::fs::read_to_string(&prober_log).unwrap_or_default();
    let samples = probes.lines().count();
    let outages = outages(&probes);
    let longest = outages.iter().map(|(a, b, _)| b - a).fold(0.0, f64::max);
    eprintln!(
        "chaos: {samples} probes of VIP:443, {} outages, longest {longest:.2} s; {} crashes, {} of the VIP holder",
        outages.len(),
        crashes.len(),
        crashes.iter().filter(|c| c.2).count()
    );
    for (a, b, why) in &outages {
        let after = crashes
            .iter()
            .filter(|c| c.2 && *a >= c.0 - 0.3 && *a <= c.0 + MAX_OUTAGE)
            .map(|c| format!("{:.2} s after {} crashed", a - c.0, lab.lbs[c.1].name))
            .next();
        eprintln!(
            "chaos:   outage of {:.2} s at {:.1} s ({why}){}",
            b - a,
            a - crashes.first().map_or(*a, |c| c.0),
            after
                .as_deref()
                .map(|s| format!(", {s}"))
                .unwrap_or_default()
        );
        if b - a > MAX_OUTAGE {
            failures.push(format!(
                "a VIP outage of {:.2} s (at most {MAX_OUTAGE} s)",
                b - a
            ));
        }
        if after.is_none() {
            failures.push(format!(
                "a VIP outage of {:.2} s that follows no crash of the VIP holder",
                b - a
            ));
        }
    }
    if samples < (secs as usize) * 5 {
        failures.push(format!("only {samples} probes: the prober did not run"));
    }

    // One HAProxy master per VM.
    for lb in &lab.lbs {
        let masters = haproxy_masters(&lab, &lb.ns);
        eprintln!("chaos: {}: {masters} HAProxy master", lb.name);
        if masters != 1 {
            failures.push(format!("{} runs {masters} HAProxy masters", lb.name));
        }
    }

    if !failures.is_empty() {
        drop(_evidence);
        drop(children);
        let kept = keep_logs(&dir, seed);
        drop(lab);
        panic!(
            "chaos run with seed {seed} failed (replay: LBMESH_CHAOS_SEED={seed}; logs kept in {}):\n  {}",
            kept.display(),
            failures.join("\n  ")
        );
    }
}
