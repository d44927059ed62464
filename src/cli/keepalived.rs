//! `lbmesh keepalived check|notify|config`: what keepalived runs, and its config.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Subcommand};

use crate::secret::Token;
use crate::status::NodeStatus;

#[derive(Debug, Subcommand)]
pub enum KeepalivedCmd {
    /// keepalived's vrrp_script: exit 0 when this VM can serve, 1 (with the reason) when not.
    Check {
        /// The local lbmesh API.
        #[arg(long, env = "LBMESH_API", default_value = "http://127.0.0.1:9000")]
        api: String,
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
        #[arg(long, env = "LBMESH_API", default_value = "http://127.0.0.1:9000")]
        api: String,
        #[arg(long, env = "LBMESH_TOKEN_FILE", default_value = "lbmesh-data/token")]
        token_file: PathBuf,
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
    /// config) [default: asked from the daemon, with --token-file].
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
    /// The local lbmesh API, for the check and notify commands.
    #[arg(long, env = "LBMESH_API", default_value = "http://127.0.0.1:9000")]
    pub api: String,
    #[arg(long, env = "LBMESH_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
    /// Report through this FIFO (keepalived.notify-fifo in lbmesh's config) instead of a notify command.
    #[arg(long)]
    pub notify_fifo: Option<PathBuf>,
    /// The lbmesh binary keepalived runs [default: this one].
    #[arg(long)]
    pub lbmesh: Option<PathBuf>,
}

/// `lbmesh keepalived …`; returns the process exit code.
pub async fn keepalived(cmd: KeepalivedCmd) -> anyhow::Result<std::process::ExitCode> {
    use crate::keepalived::{KeepalivedParams, Notification, check, render};
    match cmd {
        KeepalivedCmd::Check {
            api,
            timeout,
            alive,
        } => match check(&api, Duration::from_secs(timeout.clamp(1, 60)), alive).await {
            Ok(()) => Ok(std::process::ExitCode::SUCCESS),
            Err(why) => {
                println!("{why}");
                Ok(std::process::ExitCode::FAILURE)
            }
        },
        KeepalivedCmd::Notify {
            api,
            token_file,
            kind,
            name,
            state,
            priority,
        } => {
            let n = Notification::new(&kind, &name, &state, priority.as_deref())
                .map_err(anyhow::Error::msg)?;
            let token = Token::load(&token_file)?;
            let url = format!("{}/v1/vrrp", api.trim_end_matches('/'));
            let resp = reqwest::Client::builder()
                .timeout(Duration::from_secs(5))
                .use_rustls_tls()
                .danger_accept_invalid_certs(true)
                .build()?
                .post(&url)
                .bearer_auth(token.expose())
                .json(&n)
                .send()
                .await
                .with_context(|| format!("cannot reach {url}"))?;
            if !resp.status().is_success() {
                let code = resp.status();
                anyhow::bail!(
                    "{url} answered {code}: {}",
                    resp.text().await.unwrap_or_default()
                );
            }
            Ok(std::process::ExitCode::SUCCESS)
        }
        KeepalivedCmd::Config(a) => {
            let advert = Duration::try_from_secs_f64(a.advert_int)
                .map_err(|_| anyhow::anyhow!("--advert-int must be a positive number"))?;
            let mut params = KeepalivedParams {
                instance: a.instance,
                interface: a.interface,
                vip: a.vip,
                virtual_router_id: a.router_id,
                priority: a.priority,
                advert_int: advert,
                down_timer_adverts: a.down_timer_adverts,
                track_file: a.track_file.clone().unwrap_or_default(),
                unicast_src: a.unicast_src,
                unicast_peers: a.peers.clone(),
                lbmesh: match a.lbmesh {
                    Some(p) => p,
                    None => std::env::current_exe().context("where this lbmesh binary is")?,
                },
                api: a.api,
                token_file: a.token_file,
                notify_fifo: a.notify_fifo,
            };
            params.validate_fields().map_err(anyhow::Error::msg)?;
            let need_peers = params.unicast_src.is_some() && params.unicast_peers.is_empty();
            if need_peers || a.track_file.is_none() {
                let status = daemon_status(&params.api, params.token_file.as_deref()).await?;
                if need_peers {
                    params.unicast_peers = mesh_peer_ips(&params.api, Some(&status))?;
                }
                if a.track_file.is_none() {
                    params.track_file = status
                        .vrrp
                        .failover
                        .as_ref()
                        .map(|f| PathBuf::from(&f.track_file))
                        .context("the daemon reports no track file; give --track-file")?;
                }
            }
            params.validate().map_err(anyhow::Error::msg)?;
            print!("{}", render(&params));
            Ok(std::process::ExitCode::SUCCESS)
        }
    }
}

/// The local daemon's status, for what `keepalived config` learns from it.
async fn daemon_status(
    api: &str,
    token_file: Option<&std::path::Path>,
) -> anyhow::Result<NodeStatus> {
    let token_file = token_file.context(
        "--token-file is needed to ask the daemon for the mesh's peers and its track file \
         (or give --peer and --track-file)",
    )?;
    let token = Token::load(token_file)?;
    let url = format!("{}/v1/status", api.trim_end_matches('/'));
    Ok(super::http_client(Duration::from_secs(10))?
        .get(&url)
        .bearer_auth(token.expose())
        .send()
        .await
        .with_context(|| format!("cannot reach {url}; give --peer and --track-file instead"))?
        .error_for_status()?
        .json()
        .await?)
}

/// The gossip addresses of the mesh's peers, as unicast VRRP peers.
fn mesh_peer_ips(api: &str, status: Option<&NodeStatus>) -> anyhow::Result<Vec<IpAddr>> {
    let ips: Vec<IpAddr> = status
        .map(|s| s.peers.as_slice())
        .unwrap_or_default()
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
