//! Renewals answered from memory are persisted in the background: after a
//! kill -9 and a restart, every lease end is at least the acknowledged one
//! minus the persistence delay (a second).

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::*;

fn renew(d: &Daemon, port: u16, server: SocketAddr) -> serde_json::Value {
    let (code, v) = d.hook(
        &serde_json::json!({
            "name": "traefik", "frontend-port": port.to_string(),
            "backend-port": server.port().to_string(), "dst-ip": server.ip().to_string(),
            "action": "add", "ttl": "600"
        }),
        "",
    );
    assert_eq!(code, 200, "{v}");
    v
}

fn seconds(rfc3339: &serde_json::Value) -> u64 {
    let t = humantime::parse_rfc3339(rfc3339.as_str().unwrap()).unwrap();
    t.duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
}

#[test]
fn after_kill_9_every_lease_end_is_at_least_the_acknowledged_one_minus_a_second() {
    let mut d = Daemon::start(DaemonOpts::default());
    let port = free_port("127.0.0.1");
    let servers: Vec<SocketAddr> = (1..=20)
        .map(|i| format!("198.18.3.{i}:30443").parse().unwrap())
        .collect();
    for s in &servers {
        assert_eq!(renew(&d, port, *s)["result"], "registered");
    }
    // Renew for six seconds: far less than the lease moves before a renewal
    // is published, so every one is answered from memory.
    let mut acked = vec![0u64; servers.len()];
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(6) {
        for (i, s) in servers.iter().enumerate() {
            let v = renew(&d, port, *s);
            assert_eq!(v["result"], "renewed", "{v}");
            acked[i] = seconds(&v["expires_at"]);
        }
    }
    d.crash();
    d.spawn();
    let (code, v) = d.get(&format!("/v1/frontends/{port}"));
    assert_eq!(code, 200, "{v}");
    for (i, s) in servers.iter().enumerate() {
        let restored = v["servers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["address"] == s.to_string())
            .map(|x| seconds(&x["expires_at"]))
            .unwrap_or_else(|| panic!("{s} lost: {v}"));
        // One second of persistence delay, one of rounding to whole seconds.
        assert!(
            restored + 2 >= acked[i],
            "{s}: restored lease end {restored} is more than a second before the acknowledged {}",
            acked[i]
        );
    }
}
