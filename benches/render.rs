//! Rendering the HAProxy config, and planning an apply, at two sizes:
//! 10,000 servers (100 frontends of 100) and 100,000 servers (5,000
//! frontends of 20).
//!
//! `cargo bench --bench render` times, on one registry of each size:
//! - `view`: `Registry::view`, the snapshot every apply plans from;
//! - `render`: `render` of that view: a fresh slot layout, the whole config
//!   text and the digest of what it serves;
//! - `write`: only streaming the text of an existing layout to a sink, as
//!   the applier writes the config file;
//! - `concat_baseline`: appending the same text line by line to one string,
//!   which is what the original design's `cat` of include files amounts to.
//!   It is the floor for producing those bytes, so `render / concat_baseline`
//!   is the price of building the config from the registry;
//! - `plan_unchanged`: the planner's decision for a view HAProxy already
//!   serves; `plan_server_in_and_out`: two decisions, a server added and
//!   then removed again (two Runtime API steps): the work done on every
//!   registry change.

use std::collections::BTreeSet;
use std::hint::black_box;
use std::path::Path;
use std::time::Instant;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use lbmesh::haproxy::plan::{Install, Observed, Outcome, PlanSettings, Planner, Step};
use lbmesh::haproxy::render::{RenderSettings, render, write_config};

#[path = "fixture/mod.rs"]
mod fixture;

use fixture::{NOW_MS, registry, server};

fn bench_size(c: &mut Criterion, name: &str, frontends: u16, servers: u16, samples: usize) {
    let mut registry = registry(frontends, servers);
    let settings = RenderSettings::with_sockets_in(Path::new("/run/lbmesh"));
    let excluded = BTreeSet::new();
    let view = registry.view(NOW_MS);
    let out = render(&view, &excluded, &settings);
    let lines: Vec<&str> = out.text.lines().collect();
    eprintln!(
        "{name}: config for {} servers on {} frontends: {} bytes, {} lines",
        view.server_count(),
        view.frontends.len(),
        out.text.len(),
        lines.len()
    );

    // A planner that has installed this view.
    let mut planner = Planner::new(PlanSettings::default());
    let observed = Observed { instance: Some(1) };
    let t0 = Instant::now();
    match planner.poll(&view, &observed, t0) {
        Step::Install { .. } => {}
        other => panic!("expected an install, got {other:?}"),
    }
    planner.handle(Outcome::Installed(Install::Done { instance: 1 }), t0);
    registry.apply(server(0, servers), NOW_MS).unwrap();
    let one_more = registry.view(NOW_MS);

    let mut group = c.benchmark_group(name);
    group.sample_size(samples);
    group.throughput(Throughput::Bytes(out.text.len() as u64));
    group.bench_function("view", |b| b.iter(|| black_box(registry.view(NOW_MS))));
    group.bench_function("render", |b| {
        b.iter(|| black_box(render(black_box(&view), &excluded, &settings)))
    });
    group.bench_function("write", |b| {
        b.iter(|| write_config(black_box(&out.backends), &settings, &mut std::io::sink()))
    });
    group.bench_function("concat_baseline", |b| {
        b.iter(|| {
            let mut s = String::new();
            for line in black_box(&lines) {
                s.push_str(line);
                s.push('\n');
            }
            black_box(s)
        })
    });
    group.bench_function("plan_unchanged", |b| {
        b.iter(|| {
            let step = planner.poll(black_box(&view), &observed, t0);
            assert!(matches!(step, Step::Wait { .. }), "{step:?}");
        })
    });
    group.bench_function("plan_server_in_and_out", |b| {
        b.iter(|| {
            for v in [&one_more, &view] {
                let step = planner.poll(black_box(v), &observed, t0);
                assert!(matches!(step, Step::Runtime { .. }), "{step:?}");
                planner.handle(Outcome::Runtime(Ok(())), t0);
            }
        })
    });
    group.finish();
}

fn bench_render(c: &mut Criterion) {
    bench_size(c, "10k_servers", 100, 100, 100);
    bench_size(c, "100k_servers", 5_000, 20, 20);
}

criterion_group!(benches, bench_render);
criterion_main!(benches);
