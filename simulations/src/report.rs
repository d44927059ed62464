//! The convergence report: simulated time for a burst of registrations to
//! reach every peer, against mesh size and message loss.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use lbmesh::mesh::cluster::{Cluster, ClusterSettings};
use lbmesh::registry::{Command, Key, Limits};
use plotters::prelude::*;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use tokio::time::Instant;

pub const PEERS: [usize; 5] = [3, 5, 10, 25, 50];
pub const LOSS: [f64; 3] = [0.0, 0.1, 0.3];
const BURST: usize = 200;
const SEEDS: u64 = 3;

/// Simulated time until every peer holds all `servers` registrations made
/// at once at random peers, with `loss` message loss. None: not within 60 s.
pub fn measure(peers: usize, loss: f64, servers: usize, seed: u64) -> Option<Duration> {
    chitchat::rng::seed_thread(seed);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("runtime");
    let out = rt.block_on(async {
        let settings = ClusterSettings {
            gossip_interval: Duration::from_millis(100),
            limits: Limits {
                max_servers: servers + 10,
                max_servers_per_frontend: 4096,
                max_frontends: 10_000,
                ..Limits::default()
            },
            memory: true,
            ..ClusterSettings::default()
        };
        let base = std::env::temp_dir().join("lbmesh-sim-report");
        let c = Cluster::start(&base, peers, seed, settings).await.ok()?;
        c.wait_converged(Duration::from_secs(60)).await?;
        c.net.set_loss(loss);
        let mut rng = SmallRng::seed_from_u64(seed);
        for i in 0..servers {
            let p = rng.random_range(0..peers);
            c.nodes[p]
                .submit(Command::Register {
                    key: Key {
                        frontend: 10_000 + (i / 100) as u16,
                        server: std::net::SocketAddr::from((
                            [198, 19, (i / 250) as u8, (i % 250 + 1) as u8],
                            30_000,
                        )),
                    },
                    name: format!("svc{}", i / 100).parse().expect("valid"),
                    send_proxy: false,
                    ttl: None,
                })
                .await
                .ok()?;
        }
        let start = Instant::now();
        let done = loop {
            let all = c.nodes.iter().all(|n| {
                n.registry()
                    .with(|r| r.view(n.registry().now_ms()).server_count())
                    == servers
            });
            if all && c.converged() {
                break Some(start.elapsed());
            }
            if start.elapsed() > Duration::from_secs(60) {
                break None;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        c.stop().await;
        done
    });
    chitchat::rng::unseed_thread();
    out
}

fn median(mut v: Vec<Duration>) -> Option<Duration> {
    v.sort();
    v.get(v.len() / 2).copied()
}

fn cell(d: Option<Duration>) -> String {
    d.map_or("> 60 s".into(), |d| format!("{:.2} s", d.as_secs_f64()))
}

pub fn write(big_servers: usize, dir: PathBuf) -> anyhow::Result<()> {
    std::fs::create_dir_all(&dir)?;
    let mut rows: Vec<(usize, Vec<Option<Duration>>)> = Vec::new();
    for peers in PEERS {
        let mut row = Vec::new();
        for loss in LOSS {
            let times: Vec<Duration> = (1..=SEEDS)
                .filter_map(|s| measure(peers, loss, BURST, s))
                .collect();
            let m = if times.len() as u64 == SEEDS {
                median(times)
            } else {
                None
            };
            println!("peers {peers:>2} loss {:>3.0} %: {}", loss * 100.0, cell(m));
            row.push(m);
        }
        rows.push((peers, row));
    }
    let wall = std::time::Instant::now();
    let big = measure(50, 0.1, big_servers, 1);
    let big_wall = wall.elapsed();
    println!(
        "50 peers, {big_servers} servers, 10 % loss: {} ({:.0} s of wall time)",
        cell(big),
        big_wall.as_secs_f64()
    );

    let mut md = String::new();
    let _ = writeln!(
        md,
        "# Convergence in simulation\n\n\
         Simulated time from a burst of {BURST} registrations, made at once at random peers,\n\
         until every peer holds all of them and every peer's registry digest agrees.\n\
         Real lbmesh peers (registry, store, chitchat gossip every 100 ms) on an in-memory\n\
         network with the given message loss, on tokio's paused clock; median of {SEEDS} seeds.\n\
         The simulated network models loss, delay and partitions but not bandwidth: a\n\
         message arrives whole at once whatever its size. Figures on a real network\n\
         (loopback, QUIC) are in BENCHMARKS.md.\n\n\
         Made with: `cargo run --release -p simulations -- --report`\n\n\
         | peers | 0 % loss | 10 % loss | 30 % loss |\n|---:|---:|---:|---:|"
    );
    for (peers, row) in &rows {
        let _ = writeln!(
            md,
            "| {peers} | {} |",
            row.iter().map(|d| cell(*d)).collect::<Vec<_>>().join(" | ")
        );
    }
    let _ = writeln!(
        md,
        "\nA catch-up at scale: 50 peers, {big_servers} servers registered at once at random\n\
         peers, 10 % loss: **{}** of simulated time (target: within 5 s; {:.0} s of wall time\n\
         to simulate).\n\n![convergence against peers and loss](convergence.svg)",
        cell(big),
        big_wall.as_secs_f64()
    );
    std::fs::write(dir.join("convergence.md"), md)?;
    plot(&rows, &dir.join("convergence.svg"))?;
    println!(
        "wrote {} and {}",
        dir.join("convergence.md").display(),
        dir.join("convergence.svg").display()
    );
    Ok(())
}

fn plot(rows: &[(usize, Vec<Option<Duration>>)], path: &Path) -> anyhow::Result<()> {
    let max = rows
        .iter()
        .flat_map(|(_, r)| r.iter().flatten())
        .map(Duration::as_secs_f64)
        .fold(0.5f64, f64::max);
    let root = SVGBackend::new(path, (720, 440)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!("Convergence of a burst of {BURST} registrations (simulated)"),
            ("sans-serif", 18),
        )
        .margin(16)
        .x_label_area_size(40)
        .y_label_area_size(56)
        .build_cartesian_2d(0f64..52f64, 0f64..max * 1.15)?;
    chart
        .configure_mesh()
        .x_desc("peers")
        .y_desc("seconds until every peer agrees")
        .draw()?;
    let colors = [BLUE, GREEN, RED];
    for (j, loss) in LOSS.iter().enumerate() {
        let points: Vec<(f64, f64)> = rows
            .iter()
            .filter_map(|(p, r)| r[j].map(|d| (*p as f64, d.as_secs_f64())))
            .collect();
        let color = colors[j];
        chart
            .draw_series(LineSeries::new(points.clone(), color.stroke_width(2)))?
            .label(format!("{:.0} % loss", loss * 100.0))
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2))
            });
        chart.draw_series(points.iter().map(|p| Circle::new(*p, 3, color.filled())))?;
    }
    chart
        .configure_series_labels()
        .border_style(BLACK)
        .background_style(WHITE.mix(0.8))
        .draw()?;
    root.present()?;
    Ok(())
}
