//! Where a peer's memory goes with 100,000 servers (5,000 frontends of 20),
//! measured by a counting allocator: the bytes each structure holds live once
//! built, and the peak while it is built.
//!
//! - `registry`: the registry holding them as this peer's own entries;
//! - `gossip state`: chitchat's copy of the same entries (one key-value per
//!   server, as the mesh publishes them);
//! - `view`: `Registry::view`, the whole view built in one pass;
//! - `view in runs`: the same read in runs (`RegistryView::from_runs`), as
//!   `SharedRegistry::view` builds the snapshot an apply plans from;
//! - `render`: the slot layout and config text rendered from that view.
//!
//! `cargo bench --bench memory` (or `-- 10000` for another server count).
//! The daemon's RSS at the same size is `bench/scale.py`'s; this splits it.

use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::{BTreeSet, HashSet};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use lbmesh::haproxy::render::{RenderSettings, render};
use lbmesh::mesh::codec::{encode_key, encode_value};

#[path = "fixture/mod.rs"]
mod fixture;

use fixture::NOW_MS;

struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            let now = LIVE.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
            PEAK.fetch_max(now, Ordering::Relaxed);
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Runs `f`; prints the bytes it left allocated and its peak above the start.
fn measure<T>(what: &str, servers: usize, f: impl FnOnce() -> T) -> T {
    let before = LIVE.load(Ordering::Relaxed);
    PEAK.store(before, Ordering::Relaxed);
    let out = f();
    let live = LIVE.load(Ordering::Relaxed) - before;
    let peak = PEAK.load(Ordering::Relaxed) - before;
    println!(
        "{what:<14} {:>8.1} MiB live ({:>5} bytes per server), peak while built {:>8.1} MiB",
        live as f64 / 1048576.0,
        live / servers.max(1),
        peak as f64 / 1048576.0
    );
    out
}

fn main() {
    let servers: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(100_000);
    let per_frontend: u16 = 20;
    let frontends = servers.div_ceil(usize::from(per_frontend));
    println!("{servers} servers on {frontends} frontends");

    let registry = measure("registry", servers, || {
        let frontends = u16::try_from(frontends).expect("at most 65,535 frontends of 20");
        fixture::registry(frontends, per_frontend)
    });

    let gossip = measure("gossip state", servers, || {
        let kvs: Vec<(String, String)> = registry
            .own_entries()
            .map(|(k, e)| (encode_key(k), encode_value(e)))
            .collect();
        let config = chitchat::ChitchatConfig {
            chitchat_id: chitchat::ChitchatId {
                node_id: "lb1".into(),
                generation_id: 1,
                gossip_advertise_addr: "127.0.0.1:7946".parse().unwrap(),
            },
            cluster_id: "lbmesh".into(),
            gossip_interval: Duration::from_millis(100),
            listen_addr: "127.0.0.1:7946".parse().unwrap(),
            seed_nodes: Vec::new(),
            failure_detector_config: chitchat::FailureDetectorConfig::default(),
            marked_for_deletion_grace_period: Duration::from_secs(3600),
            catchup_callback: None,
            extra_liveness_predicate: None,
        };
        let (_seeds_tx, seeds) = tokio::sync::watch::channel(HashSet::new());
        chitchat::Chitchat::with_chitchat_id_and_seeds(config, seeds, kvs)
    });

    let view = measure("view", servers, || registry.view(NOW_MS));
    drop(view);
    let view = measure("view in runs", servers, || {
        lbmesh::registry::RegistryView::from_runs(|from| {
            registry.frontends_from(from, lbmesh::registry::LISTING_RUN_KEYS, NOW_MS)
        })
    });
    assert_eq!(view, registry.view(NOW_MS), "the same view");
    let settings = RenderSettings::with_sockets_in(Path::new("/run/lbmesh"));
    let rendered = measure("render", servers, || {
        render(&view, &BTreeSet::new(), &settings)
    });
    println!(
        "config text {:.1} MiB of the render",
        rendered.text.len() as f64 / 1048576.0
    );
    drop((rendered, view, gossip, registry));
}
