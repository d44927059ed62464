//! Who may hold the floating IP. keepalived runs VRRP; this module decides,
//! every tick, whether keepalived may run this peer's instance or must hold
//! it in FAULT, and tells keepalived through its track file (read at once,
//! by inotify): health, a drain asked by the operator, and split brains the
//! mesh sees. The decision is the pure [`planner`]; this is its shell.
//! [`handoff`] keeps connections through the VIP alive when it moves.

pub mod adverts;
pub mod claim;
pub mod handoff;
pub mod local_health;
pub mod planner;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use self::claim::Claim;
use self::planner::{Event, Inputs, Peer, Planner, Verdict};
use crate::clock::{Clock, SystemClock};

/// How often the decision is made.
pub const TICK: Duration = Duration::from_millis(50);

/// What `/v1/status` shows about this peer's part in failover.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailoverStatus {
    /// Whether keepalived may run this peer's instance (else it is in FAULT).
    pub may_hold: bool,
    /// Why not, when it may not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub drained: bool,
    /// The file keepalived's `track_file` reads.
    pub track_file: String,
    /// Lifeguard-style local health score (0 healthy, up to 8 starved).
    pub local_health: u64,
    /// Times this peer stepped down from a split brain.
    pub split_brain_stepdowns: u64,
    /// Connection handoff, when `keepalived.vip` is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handoff: Option<handoff::HandoffStatus>,
}

/// Errors of the drain flag and the track file.
#[derive(Debug, thiserror::Error)]
pub enum FailoverError {
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: crate::store::StoreError,
    },
    #[error("cannot remove {path}: {source}")]
    Remove {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// The handle the API and status use.
#[derive(Clone)]
pub struct Failover {
    status: Arc<ArcSwap<FailoverStatus>>,
    drained: Arc<watch::Sender<bool>>,
    drain_file: PathBuf,
    track_file: PathBuf,
    handoff: handoff::SharedStatus,
}

impl Failover {
    /// `data_dir/drained` remembers a drain across restarts (an upgrade
    /// restarts a drained peer, which must stay drained until undrained).
    pub fn new(data_dir: &std::path::Path, track_file: PathBuf) -> Failover {
        let drain_file = data_dir.join("drained");
        let drained = drain_file.exists();
        Failover {
            status: Arc::new(ArcSwap::from_pointee(FailoverStatus {
                drained,
                track_file: track_file.display().to_string(),
                ..FailoverStatus::default()
            })),
            drained: Arc::new(watch::channel(drained).0),
            drain_file,
            track_file,
            handoff: Arc::default(),
        }
    }

    pub fn status(&self) -> FailoverStatus {
        FailoverStatus {
            handoff: self.handoff.load().as_ref().clone(),
            ..self.status.load().as_ref().clone()
        }
    }

    /// Where the connection handoff task publishes its status.
    pub fn handoff_status(&self) -> handoff::SharedStatus {
        self.handoff.clone()
    }

    pub fn is_drained(&self) -> bool {
        *self.drained.borrow()
    }

    /// Drains (true) or undrains (false) this peer; durable before it acts.
    pub fn set_drained(&self, drained: bool) -> Result<(), FailoverError> {
        if drained {
            crate::store::write_atomic_mode(&self.drain_file, b"drained\n", Some(0o600)).map_err(
                |source| FailoverError::Write {
                    path: self.drain_file.clone(),
                    source,
                },
            )?;
        } else if let Err(e) = std::fs::remove_file(&self.drain_file) {
            if e.kind() != std::io::ErrorKind::NotFound {
                return Err(FailoverError::Remove {
                    path: self.drain_file.clone(),
                    source: e,
                });
            }
        }
        if self.drained.send_replace(drained) != drained {
            tracing::info!(drained, "drain changed by the operator");
        }
        Ok(())
    }
}

/// What the failover task reads each tick.
pub struct Sources {
    pub me: String,
    pub vrrp: crate::keepalived::Vrrp,
    pub mesh: crate::mesh::MeshView,
    pub api: crate::api::ApiState,
    pub metrics: Arc<crate::metrics::Metrics>,
}

fn track_value(v: &Verdict) -> &'static [u8] {
    match v {
        Verdict::MayHold => b"0\n",
        Verdict::Fault(_) => b"1\n",
    }
}

/// Decides every [`TICK`] until shutdown and keeps the track file in step.
pub async fn run(f: Failover, src: Sources, mut shutdown: watch::Receiver<bool>) {
    let heard: adverts::Heard = Arc::default();
    let (health_tx, health_rx) = watch::channel(local_health::Score::default());
    let listener = tokio::spawn(adverts::listen(heard.clone(), shutdown.clone()));
    let measurer = tokio::spawn(local_health::measure(health_tx, shutdown.clone()));
    // The first answer before the first decision, as every later one.
    let first = crate::api::health_problems(&src.api).await;
    let (problems_tx, problems_rx) = watch::channel(first);
    let prober = tokio::spawn(probe_health(src.api.clone(), problems_tx, shutdown.clone()));
    let mut planner = Planner::default();
    let mut written: Option<Vec<u8>> = None;
    let mut last_verify = tokio::time::Instant::now();
    let mut last_verdict = None;
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = crate::shutdown::signalled(&mut shutdown) => break,
        }
        let own: Option<Claim> = src.vrrp.claim();
        let peers: Vec<Peer> = src
            .mesh
            .snapshot()
            .peers
            .iter()
            .filter(|p| p.node_id != src.me)
            .map(|p| Peer {
                addr: p.gossip_addr.parse::<SocketAddr>().ok().map(|a| a.ip()),
                claim: p.vrrp_state.as_deref().and_then(Claim::parse),
                node: p.node_id.clone(),
                live: p.live,
                authenticated: p.authenticated,
            })
            .collect();
        if problems_rx.has_changed().is_err() {
            // The prober ended: only shutdown may end it, and deciding on
            // its last answer for ever would be worse than stopping.
            if *shutdown.borrow() {
                break;
            }
            panic!("the failover health prober ended");
        }
        let problems = problems_rx.borrow().clone();
        let score = *health_rx.borrow();
        let adverts: BTreeMap<_, _> = heard.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let drained = f.is_drained();
        let (verdict, event) = planner.step(
            &Inputs {
                me: &src.me,
                own: own.as_ref(),
                peers: &peers,
                drained,
                problems: &problems,
                patience: score.multiplier(),
                adverts: &adverts,
            },
            SystemClock.now_ms(),
        );
        match &event {
            Some(Event::SteppedDown { holder, rivals }) => {
                src.metrics.split_brain_stepdowns.inc();
                tracing::error!(
                    holder = %holder,
                    masters = ?rivals,
                    "split brain: another live peer also holds the VIP; {holder} (the newest MASTER) keeps it and this peer steps down"
                );
            }
            Some(Event::HolderChanged { from, holder }) => {
                tracing::warn!(
                    from = %from,
                    holder = %holder,
                    "split brain: {from} gave the VIP up and {holder} holds it; this peer stays out"
                );
            }
            Some(Event::Rejoined { why }) => {
                tracing::info!("split brain over ({why}): this peer may hold the VIP again");
            }
            None => {}
        }
        if last_verdict.as_ref() != Some(&verdict) {
            match &verdict {
                Verdict::MayHold => tracing::info!("this peer may hold the VIP"),
                Verdict::Fault(why) => {
                    tracing::warn!(reason = %why, "this peer may not hold the VIP (keepalived FAULT)")
                }
            }
            src.metrics
                .vrrp_may_hold
                .set(i64::from(verdict == Verdict::MayHold));
        }
        // Write on change; re-read once a second in case someone else (a
        // keepalived start, an operator) wrote the file.
        let want = track_value(&verdict);
        let verify = last_verify.elapsed() >= Duration::from_secs(1);
        if verify {
            last_verify = tokio::time::Instant::now();
            written = std::fs::read(&f.track_file).ok();
        }
        if written.as_deref() != Some(want) {
            match crate::store::write_atomic_mode(&f.track_file, want, Some(0o644)) {
                Ok(()) => written = Some(want.to_vec()),
                Err(e) => {
                    tracing::error!(file = %f.track_file.display(), error = %e, "cannot write keepalived's track file")
                }
            }
        }
        let previous = f.status.load();
        let status = FailoverStatus {
            may_hold: verdict == Verdict::MayHold,
            reason: match &verdict {
                Verdict::MayHold => None,
                Verdict::Fault(why) => Some(why.to_string()),
            },
            drained,
            track_file: f.track_file.display().to_string(),
            local_health: score.score(),
            split_brain_stepdowns: previous.split_brain_stepdowns
                + u64::from(matches!(event, Some(Event::SteppedDown { .. }))),
            handoff: None,
        };
        if **previous != status {
            f.status.store(Arc::new(status));
        }
        last_verdict = Some(verdict);
    }
    let _ = listener.await;
    let _ = measurer.await;
    let _ = prober.await;
}

/// Probes this peer's health every [`TICK`] in a task of its own, so that a
/// hung HAProxy (whose probe waits out its timeout) never holds up the
/// decisions on claims and adverts; the failover loop reads the latest
/// answer.
async fn probe_health(
    api: crate::api::ApiState,
    out: watch::Sender<Vec<String>>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = crate::shutdown::signalled(&mut shutdown) => return,
        }
        let problems = tokio::select! {
            p = crate::api::health_problems(&api) => p,
            () = crate::shutdown::signalled(&mut shutdown) => return,
        };
        out.send_replace(problems);
    }
}
