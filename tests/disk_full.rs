//! A write that cannot reach the disk changes nothing: a real `lbmesh serve`
//! whose data directory is a small tmpfs, filled while it runs, next to a
//! second peer that must never see the refused write.

mod common;

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::*;

/// A tmpfs of its own, unmounted when dropped (even when the test fails).
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(size: &str) -> Tmpfs {
        let dir = tempfile::tempdir().unwrap();
        let ok = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(dir.path())
            .status()
            .unwrap()
            .success();
        assert!(ok, "mount a tmpfs (needs root)");
        Tmpfs { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn filler(&self) -> PathBuf {
        self.path().join("filler")
    }

    /// Writes until the file system is full.
    fn fill(&self) {
        let mut f = std::fs::File::create(self.filler()).unwrap();
        let chunk = vec![0u8; 64 * 1024];
        while f.write_all(&chunk).is_ok() {}
        // Whatever is left, byte by byte in small writes.
        while f.write_all(&[0u8; 512]).is_ok() {}
    }

    fn free(&self) {
        std::fs::remove_file(self.filler()).unwrap();
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

fn body(port: u16, server: SocketAddr) -> serde_json::Value {
    serde_json::json!({
        "name": "traefik", "frontend-port": port.to_string(),
        "backend-port": server.port().to_string(), "dst-ip": server.ip().to_string(),
        "action": "add"
    })
}

fn listed(d: &Daemon, port: u16, server: SocketAddr) -> bool {
    let (_, v) = d.get("/v1/frontends");
    v["frontends"].as_array().is_some_and(|fs| {
        fs.iter().any(|f| {
            f["port"] == port
                && f["servers"]
                    .as_array()
                    .is_some_and(|s| s.iter().any(|s| s["address"] == server.to_string()))
        })
    })
}

/// Registers new servers until one is refused with 503; returns that one.
fn refused_write(d: &Daemon, port: u16, first: u16) -> SocketAddr {
    for p in first..first + 200 {
        let s: SocketAddr = format!("127.0.0.1:{p}").parse().unwrap();
        let (code, v) = d.hook(&body(port, s), "");
        match code {
            200 => continue,
            503 => {
                assert_eq!(v["error"], "storage_failed", "{v}");
                return s;
            }
            _ => panic!("{code}: {v}"),
        }
    }
    panic!("200 writes on a full file system all succeeded");
}

#[test]
fn a_write_that_cannot_reach_the_disk_changes_nothing_and_writes_resume_when_space_returns() {
    let fs = Tmpfs::mount("4m");
    let (ip_a, ip_b) = (test_ip(), test_ip());
    let (ga, gb) = (free_udp_port(&ip_a), free_udp_port(&ip_b));
    let seeds: Vec<SocketAddr> = vec![
        format!("{ip_a}:{ga}").parse().unwrap(),
        format!("{ip_b}:{gb}").parse().unwrap(),
    ];
    let shared = tempfile::tempdir().unwrap();
    let token = shared.path().join("token");
    std::fs::write(&token, "disk-full-test-token-0123456789ab\n").unwrap();
    let peer = |ip: &str, gossip: u16, node: &str, data_dir: Option<PathBuf>| {
        Daemon::start(DaemonOpts {
            ip: ip.to_string(),
            node_id: node.into(),
            gossip_port: Some(gossip),
            seeds: seeds.clone(),
            token_file: Some(token.clone()),
            mesh: "transport = \"udp\"".into(),
            data_dir,
            ..DaemonOpts::default()
        })
    };
    let mut a = peer(&ip_a, ga, "lb1", Some(fs.path().join("data")));
    let b = peer(&ip_b, gb, "lb2", None);
    let port = free_port("127.0.0.1");
    // Both peers live on each side, so the first write is acknowledged by
    // the other (a renewal is answered from memory, never "replicated").
    for d in [&a, &b] {
        eventually(Duration::from_secs(20), "both peers live", || {
            let (_, v) = d.get("/v1/status");
            let live = v["peers"]
                .as_array()
                .map_or(0, |p| p.iter().filter(|p| p["live"] == true).count());
            (live == 2).then_some(())
        });
    }
    // The writer may learn of the other peer a moment after status shows
    // it: a new server per attempt, until one is acknowledged by both.
    let mut next = 30_000;
    let x = eventually(Duration::from_secs(10), "a replicated write", || {
        next += 1;
        let x: SocketAddr = format!("127.0.0.1:{next}").parse().unwrap();
        let (code, v) = a.hook(&body(port, x), "");
        assert_eq!(code, 200, "{v}");
        (v["replicated"] == true).then_some(x)
    });

    // A full file system may still take a few records into the log's last
    // page; the write it refuses is the one to look for.
    fs.fill();
    let y = refused_write(&a, port, 31_000);
    let (code, v) = a.hook(&body(port, y), "");
    assert_eq!(code, 503, "{v}");
    assert_eq!(v["error"], "storage_failed", "{v}");
    // Changed nothing: not listed, not gossiped, not in HAProxy's config.
    std::thread::sleep(Duration::from_secs(1));
    assert!(
        !listed(&a, port, y),
        "applied on the peer with the full disk"
    );
    assert!(!listed(&b, port, y), "gossiped to the other peer");
    assert!(!a.haproxy_config().contains(&y.to_string()));
    assert!(listed(&a, port, x) && listed(&b, port, x));
    let (code, v) = a.get("/healthz");
    assert_eq!(code, 503, "{v}");
    assert!(v.to_string().contains("write to disk failed"), "{v}");

    // Space returns: writes succeed again, without a restart.
    fs.free();
    let (code, v) = a.hook(&body(port, y), "");
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["replicated"], true, "{v}");
    eventually(Duration::from_secs(10), "the write on both peers", || {
        (listed(&a, port, y) && listed(&b, port, y)).then_some(())
    });
    eventually(Duration::from_secs(10), "a healthy peer again", || {
        (a.get("/healthz").0 == 200).then_some(())
    });

    // SIGTERM on a full disk: a clean exit.
    fs.fill();
    refused_write(&a, port, 32_000);
    let status = a.stop();
    assert!(status.success(), "{status:?}; log:\n{}", a.log());
    assert!(!a.log().contains("panicked"), "{}", a.log());
    drop(b);
}
