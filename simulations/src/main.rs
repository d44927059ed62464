//! Deterministic failure-injection simulations of the lbmesh mesh.
//!
//! cargo run --release -p simulations -- [--scenario NAME|FILE]... [--peers N] [--seeds K]
//!
//! Each run starts N real lbmesh peers (registry, store, chitchat gossip) in
//! one thread on an in-memory network and tokio's paused clock, drives
//! phone-home clients and faults through a scenario, and checks the
//! invariants after every step. A failing run prints its seed; `--seed S`
//! (or LBMESH_SIM_SEED) replays it exactly.

mod report;
mod scenario;
mod world;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Mutex;
use std::time::Duration;

use clap::Parser;
use rand::SeedableRng;
use rand::rngs::SmallRng;

use crate::scenario::{BUILT_IN, LinkModel, Scenario};
use crate::world::{Outcome, RunConfig};

#[derive(Debug, Parser)]
#[command(
    name = "simulations",
    about = "Deterministic failure-injection simulations of the lbmesh mesh"
)]
struct Args {
    /// Built-in scenario names or scenario files (TOML); repeatable [default: all built-in].
    #[arg(long = "scenario")]
    scenarios: Vec<String>,
    /// Peers in the mesh.
    #[arg(long, default_value_t = 5)]
    peers: usize,
    /// How many seeds to run per scenario.
    #[arg(long, default_value_t = 20)]
    seeds: u64,
    /// The first seed.
    #[arg(long, default_value_t = 1)]
    first_seed: u64,
    /// Replay exactly this seed, printing every step.
    #[arg(long, env = "LBMESH_SIM_SEED")]
    seed: Option<u64>,
    /// Threads running seeds in parallel [default: the number of CPUs].
    #[arg(long)]
    jobs: Option<usize>,
    /// Turn on a deliberately wrong merge rule (adds beat deletes), to see
    /// the invariants catch it.
    #[arg(long)]
    wrong_merge: bool,
    /// How messages travel, for every scenario (default: each scenario's own).
    #[arg(long, value_enum)]
    links: Option<LinkModel>,
    /// Peers acknowledge a write once it is on their own disk (`registry.ack
    /// = "local"`); a write only a lost disk held may then be lost.
    #[arg(long)]
    ack_local: bool,
    /// The VIP holder must serve every change older than this (milliseconds).
    #[arg(long, default_value_t = 5_000)]
    vip_bound_ms: u64,
    /// List the built-in scenarios.
    #[arg(long)]
    list: bool,
    /// Measure convergence against peers and loss; write docs/convergence.{md,svg}.
    #[arg(long)]
    report: bool,
    /// With --report: servers registered in the big run.
    #[arg(long, default_value_t = 10_000)]
    report_servers: usize,
    /// Skip validating rendered configs with haproxy -c.
    #[arg(long)]
    no_haproxy: bool,
}

fn load(name: &str, peers: usize, seed: u64) -> anyhow::Result<Scenario> {
    let mut rng = SmallRng::seed_from_u64(seed);
    if let Some(s) = scenario::built_in(name, peers, &mut rng) {
        return Ok(s);
    }
    let text = std::fs::read_to_string(name).map_err(|e| {
        anyhow::anyhow!(
            "{name:?} is neither a built-in scenario ({}) nor a readable file: {e}",
            BUILT_IN.join(", ")
        )
    })?;
    Scenario::from_toml(&text).map_err(|e| anyhow::anyhow!("{name}: {e}"))
}

/// Checks rendered configs with the real HAProxy; returns the failures.
fn haproxy_check(configs: &BTreeMap<String, String>) -> Vec<String> {
    let dir = std::env::temp_dir().join(format!("lbmesh-sim-configs-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&dir);
    let mut bad = Vec::new();
    for (digest, text) in configs {
        let path = dir.join(format!("{digest}.cfg"));
        if std::fs::write(&path, text).is_err() {
            bad.push(format!("{digest}: cannot write {}", path.display()));
            continue;
        }
        match std::process::Command::new("haproxy")
            .arg("-c")
            .arg("-f")
            .arg(&path)
            .output()
        {
            Ok(o) if o.status.success() => {}
            Ok(o) => bad.push(format!(
                "{digest}: {}",
                String::from_utf8_lossy(&o.stderr).trim()
            )),
            Err(e) => bad.push(format!(
                "haproxy -c could not run ({e}); install HAProxy or pass --no-haproxy"
            )),
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    bad
}

fn main() -> ExitCode {
    let args = Args::parse();
    if args.list {
        for n in BUILT_IN {
            println!("{n}");
        }
        return ExitCode::SUCCESS;
    }
    if args.report {
        return match report::write(args.report_servers, PathBuf::from("docs")) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("simulations: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    if args.peers < 2 || args.peers > 250 {
        eprintln!("simulations: --peers must be from 2 to 250");
        return ExitCode::from(2);
    }
    let names: Vec<String> = if args.scenarios.is_empty() {
        BUILT_IN.iter().map(|s| s.to_string()).collect()
    } else {
        args.scenarios.clone()
    };
    let seeds: Vec<u64> = match args.seed {
        Some(s) => vec![s],
        None => (args.first_seed..args.first_seed + args.seeds).collect(),
    };
    let replay = args.seed.is_some();
    let jobs = args
        .jobs
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
        .max(1);

    let mut work = Vec::new();
    for name in &names {
        for &seed in &seeds {
            match load(name, args.peers, seed) {
                Ok(s) => work.push((name.clone(), seed, s)),
                Err(e) => {
                    eprintln!("simulations: {e:#}");
                    return ExitCode::from(2);
                }
            }
        }
    }
    let queue = Mutex::new(work.into_iter());
    let results: Mutex<Vec<(String, u64, Outcome)>> = Mutex::new(Vec::new());
    let started = std::time::Instant::now();
    std::thread::scope(|s| {
        for _ in 0..jobs {
            s.spawn(|| {
                loop {
                    let next = queue.lock().unwrap().next();
                    let Some((name, seed, scenario)) = next else {
                        break;
                    };
                    let cfg = RunConfig {
                        peers: args.peers,
                        seed,
                        wrong_merge: args.wrong_merge,
                        verbose: replay,
                        vip_bound: Duration::from_millis(args.vip_bound_ms),
                        links: args.links,
                        ack_local: args.ack_local,
                    };
                    if replay {
                        println!(
                            "replaying scenario {name} with seed {seed}, {} peers:",
                            args.peers
                        );
                    }
                    let out = world::run(&scenario, &cfg);
                    results.lock().unwrap().push((name, seed, out));
                }
            });
        }
    });
    let mut results = results.into_inner().unwrap();
    results.sort_by(|a, b| (&a.0, a.1).cmp(&(&b.0, b.1)));

    let mut violations = 0;
    let mut configs = BTreeMap::new();
    let mut per_scenario: BTreeMap<&str, (usize, Duration, Duration)> = BTreeMap::new();
    for (name, seed, out) in &results {
        let e = per_scenario.entry(name).or_default();
        e.0 += 1;
        e.1 += out.sim_time;
        e.2 =
            e.2.max(out.converge.iter().copied().max().unwrap_or_default());
        for (d, t) in &out.configs {
            if configs.len() < 200 {
                configs.entry(d.clone()).or_insert_with(|| t.clone());
            }
        }
        if let Some(v) = &out.violation {
            violations += 1;
            println!(
                "FAIL scenario {name} seed {seed} step {} ({}): {}",
                v.step, v.step_text, v.what
            );
            let mut flags = String::new();
            if args.wrong_merge {
                flags.push_str(" --wrong-merge");
            }
            if args.ack_local {
                flags.push_str(" --ack-local");
            }
            if let Some(l) = args.links {
                flags.push_str(&format!(
                    " --links {}",
                    clap::ValueEnum::to_possible_value(&l)
                        .map(|v| v.get_name().to_owned())
                        .unwrap_or_default()
                ));
            }
            println!(
                "     replay: cargo run --release -p simulations -- --scenario {name} --peers {} --seed {seed}{flags}",
                args.peers,
            );
        }
    }
    for (name, (runs, sim, worst)) in &per_scenario {
        println!(
            "scenario {name:<16} runs {runs:>4}  simulated {:>8.1} s  slowest convergence {:>5.2} s",
            sim.as_secs_f64(),
            worst.as_secs_f64()
        );
    }
    if !args.no_haproxy {
        let bad = haproxy_check(&configs);
        for b in &bad {
            println!("FAIL haproxy -c rejected a rendered config: {b}");
        }
        violations += bad.len();
        println!(
            "checked {} distinct rendered configs with haproxy -c",
            configs.len()
        );
    }
    let wall = started.elapsed();
    println!(
        "wall {:.1} s ({:.0} runs/min on {jobs} threads)",
        wall.as_secs_f64(),
        results.len() as f64 / wall.as_secs_f64().max(0.001) * 60.0
    );
    println!(
        "scenarios {} seeds {} peers {} violations {violations}",
        names.len(),
        seeds.len(),
        args.peers
    );
    if violations == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
