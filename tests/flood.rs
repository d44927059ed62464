//! A connection flood from one address without a token: 5,000 idle and
//! trickling connections. With the API's caps and timeouts, registrations
//! and `lbmesh keepalived check` keep succeeding and the daemon's memory
//! stays bounded; with the caps and timeouts lifted (the control), the same
//! flood starves both. Every call of the test's own has a timeout, so a
//! starved daemon counts as a failure, never as a hung test.

mod common;

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::*;

const ATTACK: usize = 5_000;

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn keepalived_check(d: &Daemon) -> bool {
    std::process::Command::new("timeout")
        .args(["5", BIN, "keepalived", "check", "--api", &d.url("")])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Opens up to `n` connections from `from` to `to`; every other one sends
/// a request head a byte at a time. Returns the sockets (kept open). A
/// daemon that stops accepting fills its backlog, and every further connect
/// waits for its timeout: the flood stops after 20 failures in a row or 30 s.
fn flood(from: &str, to: SocketAddr, n: usize) -> Vec<TcpStream> {
    let mut held = Vec::with_capacity(n);
    let (started, mut failed) = (Instant::now(), 0);
    for i in 0..n {
        if failed >= 20 || started.elapsed() > Duration::from_secs(30) {
            break;
        }
        let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        s.bind(&SocketAddr::new(from.parse().unwrap(), 0).into())
            .unwrap();
        if s.connect_timeout(&to.into(), Duration::from_millis(200))
            .is_err()
        {
            failed += 1;
            continue;
        }
        failed = 0;
        // Writes never block the test: a starved daemon reads nothing.
        s.set_nonblocking(true).unwrap();
        let mut s: TcpStream = s.into();
        if i % 2 == 0 {
            let _ = s.write_all(b"POST /hooks/update-haproxy HTTP/1.1\r\nHost: x\r\n");
        }
        held.push(s);
    }
    held
}

/// Trickles one more byte on every other held connection.
fn trickle(held: &mut [TcpStream]) {
    for s in held.iter_mut().step_by(2) {
        let _ = s.write_all(b"X");
    }
}

/// Runs the attack against `d` for `rounds` registrations and reports
/// (registrations that succeeded, checks that passed (one every other
/// round), peak RSS in KiB).
fn attack(d: &Daemon, attacker: &str, rounds: usize) -> (usize, usize, u64) {
    // Descriptors for the attacker's sockets.
    sh(
        &format!("prlimit --pid {} --nofile=20000:20000", std::process::id()),
        &[],
    );
    let mut held = flood(attacker, d.api, ATTACK);
    let backend = Backend::start("b");
    let (mut ok, mut checks, mut peak) = (0, 0, 0);
    let started = Instant::now();
    for i in 0..rounds {
        trickle(&mut held);
        let port = free_port(&d.ip);
        let body = serde_json::json!({
            "name": format!("svc{i}"), "frontend-port": port.to_string(),
            "backend-port": backend.addr.port().to_string(),
            "dst-ip": backend.addr.ip().to_string(), "action": "add"
        });
        // Applied first, so the check after it asks about a settled peer;
        // at most 5 s, so a starved daemon counts as a failure, not a hang.
        let out = std::process::Command::new("curl")
            .args(["-s", "-m", "5", "-o", "/dev/null", "-w", "%{http_code}"])
            .args(["-H", "Content-Type: application/json"])
            .args(["-H", &format!("X-Funkypenguin-Token: {}", d.token)])
            .args(["--data-binary", &body.to_string()])
            .arg(d.url("/hooks/update-haproxy?wait=applied&timeout=4"))
            .output()
            .unwrap();
        let code = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        ok += usize::from(code == "200");
        if i % 2 == 0 {
            checks += usize::from(keepalived_check(d));
        }
        peak = peak.max(rss_kib(d.pid()));
        std::thread::sleep(Duration::from_millis(300));
    }
    eprintln!(
        "attack: {} connections held by the attacker, {ok}/{rounds} registrations, {checks}/{} checks, peak RSS {peak} KiB, {:.1}s",
        held.len(),
        rounds.div_ceil(2),
        started.elapsed().as_secs_f64()
    );
    (ok, checks, peak)
}

fn daemon(api: &str) -> Daemon {
    let d = Daemon::start(DaemonOpts {
        toml: format!("{}\n[api]\n{api}\n", fast_toml("", "")),
        ..DaemonOpts::default()
    });
    // A daemon as systemd starts it by default: 1,024 descriptors.
    sh(
        &format!("prlimit --pid {} --nofile=1024:1024", d.pid()),
        &[],
    );
    d
}

#[test]
fn a_connection_flood_from_one_address_starves_nothing() {
    let guarded = daemon("header-timeout = \"2s\"\nidle-timeout = \"3s\"");
    let before = rss_kib(guarded.pid());
    let (ok, checks, peak) = attack(&guarded, &test_ip(), 10);
    assert_eq!(ok, 10, "registrations failed during the flood");
    assert_eq!(checks, 5, "keepalived's check failed during the flood");
    assert!(
        peak < before + 64 * 1024,
        "RSS grew from {before} KiB to {peak} KiB"
    );
    let metrics = guarded.metrics();
    assert!(
        metrics.contains("lbmesh_api_connections_refused_total{reason=\"per_source_cap\"}"),
        "{metrics}"
    );
}

/// The control: the same flood against a daemon whose caps and timeouts are
/// lifted (as before they existed) starves registrations and the check.
#[test]
fn without_the_caps_and_timeouts_the_same_flood_starves_the_api() {
    let unguarded = daemon(
        "max-connections = 1000000\nmax-connections-per-source = 1000000\n\
         header-timeout = \"1d\"\nbody-timeout = \"1d\"\nidle-timeout = \"1d\"",
    );
    let (ok, checks, _) = attack(&unguarded, &test_ip(), 4);
    assert_eq!(ok, 0, "registrations got through an unguarded flood");
    assert_eq!(checks, 0, "keepalived's check passed an unguarded flood");
}
