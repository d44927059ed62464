//! Rendering the HAProxy config for 10,000 servers (100 frontends of 100).
//!
//! `cargo bench --bench render` times, on one registry:
//! - `view`: `Registry::view`, the snapshot every apply renders from;
//! - `render`: `render` of that view, the whole config text;
//! - `concat_baseline`: appending the same text line by line to one string,
//!   which is what the original design's `cat` of include files amounts to.
//!   It is the floor for producing those bytes, so `render / concat_baseline`
//!   is the price of building the config from the registry.

use std::collections::BTreeSet;
use std::hint::black_box;
use std::path::Path;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use lbmesh::haproxy::render::{RenderSettings, render};
use lbmesh::registry::{Command, Key, Limits, PortPolicy, Registry};

const NOW_MS: u64 = 1_700_000_000_000;
const FRONTENDS: u16 = 100;
const SERVERS_PER_FRONTEND: u16 = 100;

/// Frontend f is port 10000+f owned by "svc<port>"; its server s is
/// 127.77.f.(s+1):30443, the address scheme of bench/lbclient.py.
fn registry() -> Registry {
    let mut registry = Registry::new(
        "lb1".parse().unwrap(),
        Limits {
            max_servers: 20_000,
            ..Limits::default()
        },
        PortPolicy::new(vec![], []),
    );
    for s in 0..SERVERS_PER_FRONTEND {
        for f in 0..FRONTENDS {
            let frontend = 10_000 + f;
            registry
                .apply(
                    Command::Register {
                        key: Key {
                            frontend,
                            server: format!("127.77.{f}.{}:30443", s + 1).parse().unwrap(),
                        },
                        name: format!("svc{frontend}").parse().unwrap(),
                        send_proxy: false,
                        ttl: None,
                    },
                    NOW_MS,
                )
                .unwrap();
        }
    }
    registry
}

fn bench_render(c: &mut Criterion) {
    let registry = registry();
    let settings = RenderSettings::with_sockets_in(Path::new("/run/lbmesh"));
    let excluded = BTreeSet::new();
    let view = registry.view(NOW_MS);
    assert_eq!(view.server_count(), 10_000);
    let text = render(&view, &excluded, &settings).text;
    let lines: Vec<&str> = text.lines().collect();
    eprintln!(
        "config for {} servers: {} bytes, {} lines",
        view.server_count(),
        text.len(),
        lines.len()
    );

    let mut group = c.benchmark_group("10k_servers");
    group.throughput(Throughput::Bytes(text.len() as u64));
    group.bench_function("view", |b| b.iter(|| black_box(registry.view(NOW_MS))));
    group.bench_function("render", |b| {
        b.iter(|| black_box(render(black_box(&view), &excluded, &settings)))
    });
    group.bench_function("concat_baseline", |b| {
        b.iter(|| {
            let mut out = String::new();
            for line in black_box(&lines) {
                out.push_str(line);
                out.push('\n');
            }
            black_box(out)
        })
    });
    group.finish();
}

criterion_group!(benches, bench_render);
criterion_main!(benches);
