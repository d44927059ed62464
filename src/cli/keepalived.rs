//! `lbmesh keepalived check|notify|config`: what keepalived runs, and its config.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Subcommand};

use super::{ApiArgs, absolute};
use crate::status::NodeStatus;

#[derive(Debug, Subcommand)]
pub enum KeepalivedCmd {
    /// keepalived's vrrp_script: exit 0 when this VM can serve, 1 (with the reason) when not.
    Check {
        #[command(flatten)]
        api: ApiArgs,
        /// Seconds to wait for an answer.
        #[arg(long, default_value_t = 2)]
        timeout: u64,
        /// Only check that the daemon answers (it decides health itself,
        /// through keepalived's track file).
        #[arg(long)]
        alive: bool,
    },
    /// keepalived's notify script: tells lbmesh this peer's VRRP state.
    Notify {
        #[command(flatten)]
        api: ApiArgs,
        /// INSTANCE or GROUP, as keepalived passes it.
        kind: String,
        /// The vrrp_instance name.
        name: String,
        /// MASTER, BACKUP, FAULT or STOP.
        state: String,
        priority: Option<String>,
    },
    /// Print a keepalived.conf for this peer.
    Config(KeepalivedConfigArgs),
}

#[derive(Debug, Args)]
pub struct KeepalivedConfigArgs {
    /// The floating IP with its prefix, e.g. 198.18.0.100/24.
    #[arg(long)]
    pub vip: String,
    /// The interface that carries the VIP and VRRP.
    #[arg(long)]
    pub interface: String,
    /// This peer's VRRP priority (1-254); give each peer a different one.
    #[arg(long)]
    pub priority: u8,
    #[arg(long, default_value_t = 51)]
    pub router_id: u8,
    /// Seconds between VRRPv3 adverts.
    #[arg(long, default_value_t = 0.04)]
    pub advert_int: f64,
    /// Adverts missed before a backup takes over: failover takes this many
    /// advert intervals (0.24 s by default) plus a skew, and a master
    /// survives one fewer lost in a row.
    #[arg(long, default_value_t = 6)]
    pub down_timer_adverts: u8,
    /// The track file the daemon writes (keepalived.track-file in lbmesh's
    /// config) [default: the config's, else asked from the daemon].
    #[arg(long, env = "LBMESH_TRACK_FILE")]
    pub track_file: Option<PathBuf>,
    /// Use unicast VRRP (clouds without multicast): this peer's address.
    #[arg(long)]
    pub unicast_src: Option<IpAddr>,
    /// A unicast peer (repeatable). With --unicast-src and none given, the mesh's peers are used.
    #[arg(long = "peer")]
    pub peers: Vec<IpAddr>,
    #[arg(long, default_value = "VI_LBMESH")]
    pub instance: String,
    /// How the check and notify commands reach the local daemon; written
    /// into the file with absolute paths.
    #[command(flatten)]
    pub api: ApiArgs,
    /// Report through this FIFO instead of a notify command [default:
    /// keepalived.notify-fifo in the config, if set].
    #[arg(long)]
    pub notify_fifo: Option<PathBuf>,
    /// The lbmesh binary keepalived runs [default: this one].
    #[arg(long)]
    pub lbmesh: Option<PathBuf>,
}

/// `lbmesh keepalived …`; returns the process exit code.
pub async fn keepalived(cmd: KeepalivedCmd) -> anyhow::Result<std::process::ExitCode> {
    use crate::keepalived::{Notification, check};
    match cmd {
        KeepalivedCmd::Check {
            api,
            timeout,
            alive,
        } => {
            let timeout = Duration::from_secs(timeout.clamp(1, 60));
            let answer = match api.client(timeout, false) {
                Ok(client) => check(&client, alive).await,
                Err(e) => Err(format!("{e:#}")),
            };
            match answer {
                Ok(()) => Ok(std::process::ExitCode::SUCCESS),
                Err(why) => {
                    println!("{why}");
                    Ok(std::process::ExitCode::FAILURE)
                }
            }
        }
        KeepalivedCmd::Notify {
            api,
            kind,
            name,
            state,
            priority,
        } => {
            let n = Notification::new(&kind, &name, &state, priority.as_deref())
                .map_err(anyhow::Error::msg)?;
            let client = api.client(Duration::from_secs(5), true)?;
            let _: serde_json::Value = client.post("/v1/vrrp", &n).await?;
            Ok(std::process::ExitCode::SUCCESS)
        }
        KeepalivedCmd::Config(a) => {
            print!("{}", config(a).await?);
            Ok(std::process::ExitCode::SUCCESS)
        }
    }
}

/// keepalived.conf for this peer: what the flags say, the rest from the
/// daemon's config or, failing that, from the running daemon.
async fn config(a: KeepalivedConfigArgs) -> anyhow::Result<String> {
    use crate::keepalived::{KeepalivedParams, render};
    let advert = Duration::try_from_secs_f64(a.advert_int)
        .map_err(|_| anyhow::anyhow!("--advert-int must be a positive number"))?;
    let has_config = a.api.config_file()?.is_some();
    let settings = a.api.settings()?;
    let notify_fifo = match &a.notify_fifo {
        Some(f) => Some(absolute(f)?),
        None => settings.keepalived.notify_fifo.clone(),
    };
    let mut params = KeepalivedParams {
        instance: a.instance,
        interface: a.interface,
        vip: a.vip,
        virtual_router_id: a.router_id,
        priority: a.priority,
        advert_int: advert,
        down_timer_adverts: a.down_timer_adverts,
        track_file: match (&a.track_file, has_config) {
            (Some(t), _) => absolute(t)?,
            (None, true) => settings.keepalived.track_file.clone(),
            (None, false) => PathBuf::new(),
        },
        unicast_src: a.unicast_src,
        unicast_peers: a.peers.clone(),
        lbmesh: match &a.lbmesh {
            Some(p) => absolute(p)?,
            None => std::env::current_exe().context("where this lbmesh binary is")?,
        },
        target: a.api.as_args()?,
        notify_fifo,
    };
    params.validate_fields().map_err(anyhow::Error::msg)?;
    // The notify command must be able to authenticate: keepalived runs it
    // as root from /, with none of this shell's variables.
    if params.notify_fifo.is_none() {
        let token = a.api.target()?.token_file.context(
            "the notify command needs the API token: give --config or --token-file, or use --notify-fifo",
        )?;
        crate::secret::Token::load(&token).with_context(|| {
            format!(
                "the notify command could not authenticate with {}; give the right --config or \
                 --token-file, or use --notify-fifo",
                token.display()
            )
        })?;
    }
    if let Some(h) = &settings.keepalived.handoff {
        same_vip(&params, &h.vip.to_string(), &h.interface)?;
    }
    let need_peers = params.unicast_src.is_some() && params.unicast_peers.is_empty();
    let need_track = a.track_file.is_none() && !has_config;
    if need_peers || need_track {
        let client = a.api.client(Duration::from_secs(10), true).context(
            "asking the daemon for the mesh's peers and its track file (or give --peer and --track-file)",
        )?;
        let status: NodeStatus = client.get("/v1/status").await.context(
            "asking the daemon for the mesh's peers and its track file (or give --peer and --track-file)",
        )?;
        if let Some(h) = status
            .vrrp
            .failover
            .as_ref()
            .and_then(|f| f.handoff.as_ref())
        {
            same_vip(&params, &h.vip, &h.interface)?;
        }
        if need_peers {
            params.unicast_peers = mesh_peer_ips(&client.target().base(), &status)?;
        }
        if need_track {
            params.track_file = status
                .vrrp
                .failover
                .as_ref()
                .map(|f| PathBuf::from(&f.track_file))
                .context("the daemon reports no track file; give --track-file")?;
        }
    }
    params.validate().map_err(anyhow::Error::msg)?;
    Ok(render(&params))
}

/// The daemon hands over connections through the VIP it was configured
/// with (`keepalived.vip`, `keepalived.interface`): keepalived must move that one.
fn same_vip(
    params: &crate::keepalived::KeepalivedParams,
    vip: &str,
    interface: &str,
) -> anyhow::Result<()> {
    let ours = params
        .vip
        .split_once('/')
        .map_or(params.vip.as_str(), |(a, _)| a);
    anyhow::ensure!(
        ours == vip && params.interface == interface,
        "--vip {} --interface {} differ from the daemon's keepalived.vip {vip} and \
         keepalived.interface {interface}: keepalived must move the address whose connections lbmesh hands over",
        params.vip,
        params.interface,
    );
    Ok(())
}

/// The gossip addresses of the mesh's peers, as unicast VRRP peers.
fn mesh_peer_ips(api: &str, status: &NodeStatus) -> anyhow::Result<Vec<IpAddr>> {
    let ips: Vec<IpAddr> = status
        .peers
        .iter()
        .filter_map(|p| p.gossip_addr.parse::<SocketAddr>().ok())
        .map(|a| a.ip())
        .collect();
    anyhow::ensure!(
        !ips.is_empty(),
        "the mesh at {api} reports no peers; give --peer"
    );
    Ok(ips)
}
