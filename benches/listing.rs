//! The registry side of `GET /v1/frontends` at 100,000 servers (5,000
//! frontends of 20), against the whole view it replaced.
//!
//! `cargo bench --bench listing` times, on one registry:
//! - `run`: one run of the listing (`Registry::frontends_from` with
//!   [`LISTING_RUN_KEYS`]) from the middle of the ports: the longest a
//!   listing holds the registry lock at a time, and so the longest a write
//!   waits behind it;
//! - `all_runs`: every run, one after the other: the registry work of a
//!   whole listing;
//! - `view`: `Registry::view`, which the listing (and the applier, and
//!   status with refusals) used to build under the lock;
//! - `summary_run`: one run of the summary (`Registry::summarize` with
//!   [`LISTING_RUN_KEYS`]), the longest `/v1/status` and the mesh's digest
//!   hold the lock at a time when the kept summary no longer holds;
//! - `summary`: the whole pass (every run, or `Registry::summary` without
//!   its memo), which they used to hold the lock for.

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use lbmesh::registry::LISTING_RUN_KEYS;

#[path = "fixture/mod.rs"]
mod fixture;

use fixture::{NOW_MS, registry};

fn bench_listing(c: &mut Criterion) {
    let registry = registry(5_000, 20);
    let mut group = c.benchmark_group("100k_servers");
    group.sample_size(20);
    group.bench_function("run", |b| {
        b.iter(|| black_box(registry.frontends_from(12_500, LISTING_RUN_KEYS, NOW_MS)))
    });
    group.bench_function("all_runs", |b| {
        b.iter(|| {
            let (mut from, mut frontends) = (Some(0), 0);
            while let Some(port) = from {
                let run = registry.frontends_from(port, LISTING_RUN_KEYS, NOW_MS);
                frontends += run.frontends.len();
                from = run.next;
            }
            assert_eq!(frontends, 5_000);
        })
    });
    group.bench_function("view", |b| b.iter(|| black_box(registry.view(NOW_MS))));
    group.bench_function("summary_run", |b| {
        b.iter(|| {
            let mut runs = registry.start_summary(NOW_MS);
            registry.summarize(&mut runs, LISTING_RUN_KEYS);
            black_box(runs.next)
        })
    });
    group.bench_function("summary", |b| {
        b.iter(|| {
            let mut runs = registry.start_summary(NOW_MS);
            while runs.next.is_some() {
                registry.summarize(&mut runs, LISTING_RUN_KEYS);
            }
            black_box(registry.finish_summary(runs))
        })
    });
    group.finish();
}

criterion_group!(benches, bench_listing);
criterion_main!(benches);
