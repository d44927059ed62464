//! Render of whatever registry a stream of commands builds, fresh and after
//! churn: the config is deterministic, nothing a client sent can add a line
//! or a directive, and a layout that follows the registry (Runtime API fits
//! and reload reshapes) serves exactly the servers the registry holds.
//! With LBMESH_FUZZ_RENDER_DIR set, each config is also written there, so a
//! sample can be checked with `haproxy -c` (scripts/fuzz does).
#![no_main]

use std::collections::BTreeSet;
use std::time::Duration;

use lbmesh::haproxy::layout::Layout;
use lbmesh::haproxy::render::{RenderSettings, render, render_text, wanted_servers};
use lbmesh::registry::{Command, Key, Limits, PortPolicy, Registry};
use libfuzzer_sys::fuzz_target;

const T0: u64 = 1_800_000_000_000;

fn command(c: &[u8]) -> Command {
    let frontend = u16::from_be_bytes([c[0], c[1]]).max(1);
    let ip = if c[6] & 1 == 0 {
        std::net::IpAddr::from([198, 18, c[2], c[3]])
    } else {
        std::net::IpAddr::from([0x2001, 0xdb8, 0, 0, 0, 0, u16::from(c[2]), u16::from(c[3])])
    };
    let key = Key {
        frontend,
        server: (ip, u16::from_be_bytes([c[4], c[5]]).max(1)).into(),
    };
    let name = ["traefik", "mqtt", "a.b_c-9", "x"][usize::from(c[7] % 4)]
        .parse()
        .unwrap();
    if c[6] & 2 == 0 {
        Command::Register {
            key,
            name,
            send_proxy: c[6] & 4 != 0,
            ttl: Some(Duration::from_secs(u64::from(c[7]) + 1)),
        }
    } else {
        Command::Delete { key, name }
    }
}

fuzz_target!(|data: &[u8]| {
    let mut r = Registry::new(
        "fuzz".parse().unwrap(),
        Limits {
            min_ttl: Duration::from_secs(1),
            ..Limits::default()
        },
        PortPolicy::new(vec![], [9000]),
    );
    let settings = RenderSettings::with_sockets_in(std::path::Path::new("/run/lbmesh"));
    let policy = settings.slot_policy();
    // A 0xff byte splits the stream: what HAProxy runs, then the churn.
    let split = data.iter().position(|b| *b == 0xff).unwrap_or(data.len());
    let mut before: Option<Layout> = None;
    for (part, bytes) in [&data[..split], data.get(split + 1..).unwrap_or_default()]
        .into_iter()
        .enumerate()
    {
        for (i, c) in bytes.chunks_exact(8).enumerate() {
            let _ = r.apply(command(c), T0 + (part * 100_000 + i * 100) as u64);
        }
        r.check_invariants().unwrap();
        let now = T0 + (part as u64 + 1) * 100_000 - 1;
        let view = r.view(now);
        let a = render(&view, &BTreeSet::new(), &settings);
        let b = render(&view, &BTreeSet::new(), &settings);
        assert_eq!(a.text, b.text, "render is deterministic");
        check_lines(&a.text);
        assert_eq!(a.server_count(), view.server_count());
        save(data, part, &a.text);
        if let Some(old) = before.take() {
            // What the planner does with a running layout: fit the new pool
            // into the slots (Runtime API) or reshape them (reload).
            let mut next = Layout::new();
            for f in view.frontends.values() {
                let want = wanted_servers(&view, f.port);
                let wanted: BTreeSet<_> = want.iter().copied().collect();
                match old.get(&f.port) {
                    Some(prev) => {
                        let fit = prev.fit(&f.owner, &want);
                        let placed: BTreeSet<_> = fit.backend.servers().collect();
                        assert!(placed.is_subset(&wanted));
                        assert_eq!(placed.len() + fit.overflow, want.len());
                        let shaped = prev.reshape(&f.owner, &want, &policy);
                        let served: BTreeSet<_> = shaped.servers().collect();
                        assert_eq!(served, wanted, "a reload serves the pool");
                        assert!(shaped.slots.len() >= want.len());
                        next.insert(f.port, shaped);
                    }
                    None => {
                        next.insert(f.port, a.backends[&f.port].clone());
                    }
                }
            }
            let text = render_text(&next, &settings);
            check_lines(&text);
            save(data, 2, &text);
        }
        before = Some(a.backends);
    }
});

/// Nothing quoted but the socket paths: no client text reaches a directive.
fn check_lines(text: &str) {
    for line in text.lines() {
        assert!(
            !line.contains('"') || line.contains("/run/lbmesh"),
            "{line}"
        );
    }
}

fn save(data: &[u8], part: usize, text: &str) {
    if let Ok(dir) = std::env::var("LBMESH_FUZZ_RENDER_DIR") {
        let name = format!("{}/{:016x}-{part}.cfg", dir, fxhash(data));
        let _ = std::fs::write(name, text);
    }
}

fn fxhash(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf29ce484222325u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x100000001b3)
    })
}
