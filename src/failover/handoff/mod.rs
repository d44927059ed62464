//! Connections through the floating IP outlive its moves (a drain, an
//! upgrade, a failover to a live VM): the daemon keeps the VIP on `lo`, the
//! ARP settings of its interface and an nftables table of its own
//! ([`rules`]) in step with the mesh's peers.
//!
//! The table and the address live as long as the HAProxy that serves those
//! connections: they are removed when lbmesh stops its HAProxy, and kept
//! when it leaves HAProxy serving for the next daemon to adopt (and in
//! external mode, where HAProxy is another service's).

pub mod rules;

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use serde::{Deserialize, Serialize};
use tokio::io::AsyncWriteExt;
use tokio::sync::watch;

pub use self::rules::HandoffSettings;
use self::rules::{PeerRow, Targets};
use crate::clock::{Clock, SystemClock};

/// How often the peers are looked at.
const TICK: Duration = Duration::from_millis(500);
/// How long a starting daemon waits for the mesh to show its peers before
/// it installs the rules with none.
const FIRST_WAIT: Duration = Duration::from_secs(5);
/// The longest `nft` or `ip` may take.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum HandoffError {
    #[error("keepalived.interface {interface:?}: {problem}")]
    Interface { interface: String, problem: String },
    #[error("cannot run {program}: {error}")]
    Spawn {
        program: &'static str,
        error: std::io::Error,
    },
    #[error("{program} failed: {output}")]
    Failed {
        program: &'static str,
        output: String,
    },
    #[error("{program} did not finish within {} s", COMMAND_TIMEOUT.as_secs())]
    TimedOut { program: &'static str },
}

/// What `/v1/status` shows of connection handoff.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HandoffStatus {
    pub vip: String,
    pub interface: String,
    /// Whether the rules and the address on `lo` are in place.
    pub installed: bool,
    /// Peers that get the packets of connections this VM did not see start.
    pub forwarding_to: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Where the handoff task publishes its status.
pub type SharedStatus = Arc<ArcSwap<Option<HandoffStatus>>>;

/// Runs `program args`, feeding it `stdin`, within [`COMMAND_TIMEOUT`].
async fn command(
    program: &'static str,
    args: &[&str],
    stdin: Option<&str>,
) -> Result<(), HandoffError> {
    let mut child = tokio::process::Command::new(program)
        .args(args)
        .stdin(if stdin.is_some() {
            std::process::Stdio::piped()
        } else {
            std::process::Stdio::null()
        })
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|error| HandoffError::Spawn { program, error })?;
    if let (Some(text), Some(mut input)) = (stdin, child.stdin.take()) {
        input
            .write_all(text.as_bytes())
            .await
            .map_err(|error| HandoffError::Spawn { program, error })?;
    }
    let out = tokio::time::timeout(COMMAND_TIMEOUT, child.wait_with_output())
        .await
        .map_err(|_| HandoffError::TimedOut { program })?
        .map_err(|error| HandoffError::Spawn { program, error })?;
    if out.status.success() {
        Ok(())
    } else {
        let text = String::from_utf8_lossy(&out.stderr);
        Err(HandoffError::Failed {
            program,
            output: format!("{} ({})", text.trim(), out.status),
        })
    }
}

/// Whether the interface exists and the kernel and `nft` take the rules
/// (`nft -c` checks without changing anything): for the start-up checks.
pub async fn check(s: &HandoffSettings) -> Result<(), HandoffError> {
    if !std::path::Path::new("/sys/class/net")
        .join(&s.interface)
        .exists()
    {
        return Err(HandoffError::Interface {
            interface: s.interface.clone(),
            problem: "no such network interface on this VM".into(),
        });
    }
    command("nft", &["-c", "-f", "-"], Some(&rules::ruleset(s, &[]))).await
}

/// Only the holder answers ARP for the VIP: every VM has it on `lo`, and
/// ARP for it is answered on an interface only where it is that
/// interface's address (the holder's, by keepalived); requests from this VM
/// never name the VIP as their source.
fn arp_settings(interface: &str) -> Result<(), HandoffError> {
    for (key, value) in [("arp_ignore", "1\n"), ("arp_announce", "2\n")] {
        let path = format!("/proc/sys/net/ipv4/conf/{interface}/{key}");
        std::fs::write(&path, value).map_err(|e| HandoffError::Interface {
            interface: interface.to_owned(),
            problem: format!("cannot set {key}: {e}"),
        })?;
    }
    Ok(())
}

fn lo_address(s: &HandoffSettings) -> String {
    format!("{}/32", s.vip)
}

/// Removes the table and the VIP from `lo`. Call once HAProxy no longer
/// serves: packets of connections that still end here would be reset.
pub async fn remove(s: &HandoffSettings) -> Result<(), HandoffError> {
    // The address first: without it, late packets are not this VM's and
    // the kernel drops them, where without the table it would reset them.
    let addr = lo_address(s);
    match command("ip", &["-4", "addr", "del", &addr, "dev", "lo"], None).await {
        Err(HandoffError::Failed { output, .. }) if output.contains("Cannot assign") => {}
        other => other?,
    }
    command("nft", &["-f", "-"], Some(&rules::removal())).await?;
    tracing::info!(vip = %s.vip, "connection handoff removed (table {}, the VIP on lo)", rules::TABLE);
    Ok(())
}

fn ipv4_of(gossip_addr: &str) -> Option<Ipv4Addr> {
    match gossip_addr.parse::<std::net::SocketAddr>().ok()?.ip() {
        IpAddr::V4(v4) => Some(v4),
        IpAddr::V6(v6) => v6.to_ipv4_mapped(),
    }
}

/// Keeps the rules in step with the mesh's peers until shutdown; leaves
/// them in place when it returns (see [`remove`]).
pub async fn run(
    s: HandoffSettings,
    me: String,
    mesh: crate::mesh::MeshView,
    status: SharedStatus,
    mut shutdown: watch::Receiver<bool>,
) {
    let started = tokio::time::Instant::now();
    let mut targets = Targets::default();
    let mut installed: Option<Vec<Ipv4Addr>> = None;
    let mut address = false;
    let mut last_error: Option<String> = None;
    let publish = |installed: bool, to: &[Ipv4Addr], error: Option<String>| {
        status.store(Arc::new(Some(HandoffStatus {
            vip: s.vip.to_string(),
            interface: s.interface.clone(),
            installed,
            forwarding_to: to.iter().map(ToString::to_string).collect(),
            error,
        })));
    };
    publish(false, &[], None);
    if let Err(e) = arp_settings(&s.interface) {
        tracing::error!(error = %e, "connection handoff: cannot set the interface's ARP settings");
    }
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = crate::shutdown::signalled(&mut shutdown) => return,
        }
        let snap = mesh.snapshot();
        let want = targets.observe(
            &me,
            snap.peers.iter().map(|p| PeerRow {
                node: &p.node_id,
                addr: ipv4_of(&p.gossip_addr),
                live: p.live,
            }),
            SystemClock.now_ms(),
        );
        if installed.as_ref() == Some(&want) && address {
            continue;
        }
        // A start waits a moment for its peers rather than resetting the
        // packets it should pass on.
        if installed.is_none() && want.is_empty() && started.elapsed() < FIRST_WAIT {
            continue;
        }
        let result = async {
            if installed.as_ref() != Some(&want) {
                command("nft", &["-f", "-"], Some(&rules::ruleset(&s, &want))).await?;
                tracing::info!(vip = %s.vip, peers = ?want, "connection handoff: packets of connections this VM did not see start go to its peers");
                installed = Some(want.clone());
            }
            if !address {
                command(
                    "ip",
                    &["-4", "addr", "replace", &lo_address(&s), "dev", "lo"],
                    None,
                )
                .await?;
                address = true;
            }
            Ok::<_, HandoffError>(())
        }
        .await;
        let error = result.err().map(|e| e.to_string());
        if error != last_error {
            if let Some(e) = &error {
                tracing::error!(error = %e, "connection handoff: cannot install the rules; retrying");
            }
            last_error = error.clone();
        }
        publish(
            installed.is_some() && address,
            installed.as_deref().unwrap_or_default(),
            error,
        );
    }
}
