//! The command line: `lbmesh serve`, `lbmesh status`, and friends.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};

use crate::config::{FileConfig, HaproxyMode, Overrides, Settings};
use crate::secret::Token;
use crate::status::NodeStatus;

#[derive(Debug, Parser)]
#[command(
    name = "lbmesh",
    version,
    about = "A mesh of redundant HAProxy load balancers fed by phone-home calls"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Cmd,
}

#[derive(Debug, Subcommand)]
pub enum Cmd {
    /// Run the daemon: phone-home API, registry, HAProxy.
    Serve(Box<ServeArgs>),
    /// Show this peer (and the mesh it sees) as a table.
    Status(StatusArgs),
    /// Register a NodePort with the mesh and keep it registered: a drop-in for
    /// the original phone-home container (same environment variables).
    PhoneHome(Box<crate::phone_home::PhoneHomeArgs>),
    /// Integration with keepalived: health check, notify hook, config.
    #[command(subcommand)]
    Keepalived(KeepalivedCmd),
    /// The cluster certificate authority for peer links.
    #[command(subcommand)]
    Ca(CaCmd),
}

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
    /// Seconds between VRRPv3 adverts; a dead master is replaced after about three.
    #[arg(long, default_value_t = 0.25)]
    pub advert_int: f64,
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

#[derive(Debug, Subcommand)]
pub enum CaCmd {
    /// Create a cluster CA: ca.crt (give to every peer) and ca.key (mode 0600; keep it safe).
    Init(CaInitArgs),
    /// Issue a peer certificate for a node id, signed by the cluster CA.
    Issue(CaIssueArgs),
}

#[derive(Debug, Args)]
pub struct CaInitArgs {
    /// Where ca.crt and ca.key are written.
    #[arg(long, env = "LBMESH_CA_DIR", default_value = "lbmesh-ca")]
    pub dir: PathBuf,
    /// A name for the cluster, written into the CA certificate.
    #[arg(long, default_value = "lbmesh")]
    pub cluster_id: String,
    /// How long the CA is valid.
    #[arg(long, default_value_t = 3650)]
    pub days: u32,
}

#[derive(Debug, Args)]
pub struct CaIssueArgs {
    /// The node id the certificate binds ([A-Za-z0-9_.-], up to 63).
    #[arg(long)]
    pub node_id: String,
    /// Where ca.crt and ca.key are.
    #[arg(long, env = "LBMESH_CA_DIR", default_value = "lbmesh-ca")]
    pub dir: PathBuf,
    /// Where NODE.crt and NODE.key are written [default: the CA directory].
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Also valid for this DNS name or IP address (to serve the API with it); repeatable.
    #[arg(long = "name")]
    pub names: Vec<String>,
    /// How long the certificate is valid.
    #[arg(long, default_value_t = 825)]
    pub days: u32,
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// TOML config file; flags and LBMESH_* variables override its keys.
    #[arg(long, env = "LBMESH_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// This peer's id in the mesh ([A-Za-z0-9_.-], up to 63); defaults to the host name.
    #[arg(long, env = "LBMESH_NODE_ID", value_name = "ID")]
    pub node_id: Option<String>,
    /// Where the phone-home API listens [default: 127.0.0.1:9000].
    #[arg(long, env = "LBMESH_API_LISTEN", value_name = "ADDR:PORT")]
    pub api_listen: Option<SocketAddr>,
    /// Where gossip with other peers listens [default: 127.0.0.1:7946].
    #[arg(long, env = "LBMESH_GOSSIP_LISTEN", value_name = "ADDR:PORT")]
    pub gossip_listen: Option<SocketAddr>,
    /// The gossip address other peers reach this one at, if gossip-listen is a wildcard.
    #[arg(long, env = "LBMESH_GOSSIP_ADVERTISE", value_name = "ADDR:PORT")]
    pub gossip_advertise: Option<SocketAddr>,
    /// A peer to join (repeatable; the variable takes a comma-separated list).
    #[arg(
        long = "seed",
        env = "LBMESH_SEED",
        value_name = "ADDR:PORT",
        value_delimiter = ','
    )]
    pub seeds: Vec<String>,
    /// Where the registry, token and HAProxy files live [default: ./lbmesh-data].
    #[arg(long, env = "LBMESH_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// The API token file; generated (mode 0600) if missing [default: DATA_DIR/token].
    #[arg(long, env = "LBMESH_TOKEN_FILE", value_name = "FILE")]
    pub token_file: Option<PathBuf>,
    /// The address HAProxy frontends listen on [default: 127.0.0.1]; 0.0.0.0 or :: for every address.
    #[arg(long, env = "LBMESH_BIND_ADDRESS", value_name = "ADDR")]
    pub bind_address: Option<IpAddr>,
    /// Run HAProxy as lbmesh's child (supervised) or reload an existing service (external).
    #[arg(long, env = "LBMESH_HAPROXY_MODE", value_enum)]
    pub haproxy_mode: Option<HaproxyMode>,
    /// The haproxy binary [default: haproxy, from PATH].
    #[arg(long, env = "LBMESH_HAPROXY_BINARY", value_name = "PATH")]
    pub haproxy_binary: Option<PathBuf>,
    /// Serve the API over HTTPS with this certificate chain (PEM).
    #[arg(
        long,
        env = "LBMESH_TLS_CERT",
        value_name = "FILE",
        requires = "tls_key"
    )]
    pub tls_cert: Option<PathBuf>,
    /// The private key (PEM) for --tls-cert.
    #[arg(
        long,
        env = "LBMESH_TLS_KEY",
        value_name = "FILE",
        requires = "tls_cert"
    )]
    pub tls_key: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// The peer's API.
    #[arg(long, env = "LBMESH_API", default_value = "http://127.0.0.1:9000")]
    pub api: String,
    /// The API token file.
    #[arg(long, env = "LBMESH_TOKEN_FILE", default_value = "lbmesh-data/token")]
    pub token_file: PathBuf,
    /// Print the JSON status instead of a table.
    #[arg(long)]
    pub json: bool,
}

impl ServeArgs {
    /// Resolves the settings: defaults < config file < env < flags.
    pub fn settings(&self) -> anyhow::Result<Settings> {
        let file = match &self.config {
            Some(p) => FileConfig::load(p)?,
            None => FileConfig::default(),
        };
        let overrides = Overrides {
            node_id: self.node_id.clone(),
            api_listen: self.api_listen,
            gossip_listen: self.gossip_listen,
            gossip_advertise: self.gossip_advertise,
            seeds: self.seeds.clone(),
            data_dir: self.data_dir.clone(),
            token_file: self.token_file.clone(),
            bind_address: self.bind_address,
            haproxy_mode: self.haproxy_mode,
            haproxy_binary: self.haproxy_binary.clone(),
            tls_cert: self.tls_cert.clone(),
            tls_key: self.tls_key.clone(),
        };
        let cwd = std::env::current_dir().context("current directory")?;
        Ok(Settings::resolve(file, overrides, &cwd)?)
    }
}

/// Resolves on SIGTERM or SIGINT.
pub async fn termination() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        // Without signal handlers, run until killed.
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}

pub async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let settings = args.settings()?;
    let listener = tokio::net::TcpListener::bind(settings.api.listen)
        .await
        .with_context(|| format!("cannot listen on {} (api-listen)", settings.api.listen))?;
    crate::daemon::run(settings, listener, termination()).await
}

pub fn ca(cmd: CaCmd) -> anyhow::Result<()> {
    use crate::tls::{CA_CERT, CA_KEY, Ca};
    let days = |d: u32| -> anyhow::Result<Duration> {
        anyhow::ensure!((1..=36500).contains(&d), "--days must be from 1 to 36500");
        Ok(Duration::from_secs(u64::from(d) * 86_400))
    };
    match cmd {
        CaCmd::Init(a) => {
            let ca = Ca::generate(&a.cluster_id, days(a.days)?)?;
            ca.save(&a.dir)?;
            println!(
                "created the cluster CA:\n  {}  (copy to every peer)\n  {}  (mode 0600; needed only to issue certificates)",
                a.dir.join(CA_CERT).display(),
                a.dir.join(CA_KEY).display()
            );
        }
        CaCmd::Issue(a) => {
            let node: crate::registry::PeerId =
                a.node_id
                    .parse()
                    .map_err(|e: crate::registry::FieldError| {
                        anyhow::anyhow!("--node-id: {}", e.problem)
                    })?;
            for n in &a.names {
                anyhow::ensure!(
                    !n.is_empty()
                        && n.bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b".-:".contains(&b)),
                    "--name {n:?}: must be a DNS name or an IP address"
                );
            }
            let ca = Ca::load(&a.dir)?;
            let (cert, key) = ca.issue(&node, &a.names, days(a.days)?)?;
            let out = a.out.unwrap_or_else(|| a.dir.clone());
            std::fs::create_dir_all(&out).with_context(|| format!("create {}", out.display()))?;
            let (cert_path, key_path) = (
                out.join(format!("{node}.crt")),
                out.join(format!("{node}.key")),
            );
            crate::store::write_atomic_mode(&key_path, key.as_bytes(), Some(0o600))?;
            crate::store::write_atomic_mode(&cert_path, cert.as_bytes(), Some(0o644))?;
            println!(
                "issued a certificate for node {node}:\n  {}\n  {}  (mode 0600)\nOn that peer set mesh.ca-cert = \"{}\", mesh.cert and mesh.key to these.",
                cert_path.display(),
                key_path.display(),
                a.dir.join(CA_CERT).display()
            );
        }
    }
    Ok(())
}

/// `lbmesh keepalived …`; returns the process exit code.
pub async fn keepalived(cmd: KeepalivedCmd) -> anyhow::Result<std::process::ExitCode> {
    use crate::keepalived::{KeepalivedParams, Notification, check, render};
    match cmd {
        KeepalivedCmd::Check { api, timeout } => {
            match check(&api, Duration::from_secs(timeout.clamp(1, 60))).await {
                Ok(()) => Ok(std::process::ExitCode::SUCCESS),
                Err(why) => {
                    println!("{why}");
                    Ok(std::process::ExitCode::FAILURE)
                }
            }
        }
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
            let mut peers = a.peers.clone();
            if a.unicast_src.is_some() && peers.is_empty() {
                peers = mesh_peer_ips(&a.api, a.token_file.as_deref()).await?;
            }
            let params = KeepalivedParams {
                instance: a.instance,
                interface: a.interface,
                vip: a.vip,
                virtual_router_id: a.router_id,
                priority: a.priority,
                advert_int: advert,
                unicast_src: a.unicast_src,
                unicast_peers: peers,
                lbmesh: match a.lbmesh {
                    Some(p) => p,
                    None => std::env::current_exe().context("where this lbmesh binary is")?,
                },
                api: a.api,
                token_file: a.token_file,
                notify_fifo: a.notify_fifo,
            };
            params.validate().map_err(anyhow::Error::msg)?;
            print!("{}", render(&params));
            Ok(std::process::ExitCode::SUCCESS)
        }
    }
}

/// The gossip addresses of the mesh's peers, as unicast VRRP peers.
async fn mesh_peer_ips(
    api: &str,
    token_file: Option<&std::path::Path>,
) -> anyhow::Result<Vec<IpAddr>> {
    let token_file =
        token_file.context("--token-file is needed to read the mesh's peers (or give --peer)")?;
    let token = Token::load(token_file)?;
    let url = format!("{}/v1/status", api.trim_end_matches('/'));
    let status: NodeStatus = http_client(Duration::from_secs(10))?
        .get(&url)
        .bearer_auth(token.expose())
        .send()
        .await
        .with_context(|| {
            format!("cannot reach {url} to list the mesh's peers; give --peer instead")
        })?
        .error_for_status()?
        .json()
        .await?;
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

pub async fn phone_home(args: crate::phone_home::PhoneHomeArgs) -> anyhow::Result<()> {
    let cfg = args.validate()?;
    crate::phone_home::Client::new(cfg)?
        .run(termination())
        .await
}

/// An HTTP client for lbmesh's own API.
pub fn http_client(timeout: Duration) -> anyhow::Result<reqwest::Client> {
    reqwest::Client::builder()
        .timeout(timeout)
        .use_rustls_tls()
        .build()
        .context("build HTTP client")
}

pub async fn status(args: StatusArgs) -> anyhow::Result<()> {
    let token = Token::load(&args.token_file)
        .with_context(|| "lbmesh status needs the API token (--token-file or LBMESH_TOKEN_FILE)")?;
    let url = format!("{}/v1/status", args.api.trim_end_matches('/'));
    let resp = http_client(Duration::from_secs(10))?
        .get(&url)
        .bearer_auth(token.expose())
        .send()
        .await
        .with_context(|| format!("cannot reach {url}; is lbmesh serve running there?"))?;
    if !resp.status().is_success() {
        let code = resp.status();
        let body = resp.text().await.unwrap_or_default();
        anyhow::bail!("{url} answered {code}: {body}");
    }
    let status: NodeStatus = resp.json().await.context("unexpected status format")?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&status)?);
    } else {
        print!("{}", format_status(&status));
    }
    Ok(())
}

/// The status as a table for people.
pub fn format_status(s: &NodeStatus) -> String {
    use std::fmt::Write;
    let mut o = String::new();
    let h = &s.haproxy;
    let _ = writeln!(
        o,
        "peer {} (lbmesh {}, up {})",
        s.node_id,
        s.version,
        humantime::format_duration(Duration::from_secs(s.uptime_seconds))
    );
    let _ = writeln!(
        o,
        "registry  digest {}  generation {}  frontends {}  servers {}  conflicts {}",
        s.registry.digest,
        s.registry.generation,
        s.registry.frontends,
        s.registry.servers,
        s.registry.conflicts
    );
    let _ = writeln!(
        o,
        "haproxy   {} {}{}  config {}  {}  reloads {}  runtime updates {}  restarts {}",
        h.mode,
        if h.running { "running" } else { "NOT RUNNING" },
        h.master_pid
            .map(|p| format!(" (master pid {p})"))
            .unwrap_or_default(),
        h.config_digest.as_deref().unwrap_or("-"),
        if h.in_step { "in step" } else { "OUT OF STEP" },
        h.reloads,
        h.runtime_updates,
        h.restarts
    );
    if let Some(l) = &h.last_apply {
        let _ = writeln!(
            o,
            "last apply {} {} in {} ms at {}{}",
            l.method,
            if l.ok { "ok" } else { "FAILED" },
            l.duration_ms,
            l.at,
            l.error
                .as_deref()
                .map(|e| format!(": {e}"))
                .unwrap_or_default()
        );
    }
    for (port, why) in &h.quarantined {
        let _ = writeln!(o, "quarantined frontend {port}: {why}");
    }
    if !s.storage_ok {
        let _ = writeln!(
            o,
            "STORAGE FAILED: writes are refused until lbmesh restarts"
        );
    }
    if !s.peers.is_empty() {
        let _ = writeln!(o);
        let _ = writeln!(
            o,
            "{:<20} {:<5} {:>14} {:<22} {:<17} {:<17} VRRP",
            "PEER", "LIVE", "GENERATION", "GOSSIP", "REGISTRY", "CONFIG"
        );
        for p in &s.peers {
            let _ = writeln!(
                o,
                "{:<20} {:<5} {:>14} {:<22} {:<17} {:<17} {}",
                p.node_id,
                if p.live { "yes" } else { "no" },
                p.generation,
                p.gossip_addr,
                p.registry_digest.as_deref().unwrap_or("-"),
                p.config_digest.as_deref().unwrap_or("-"),
                p.vrrp_state.as_deref().unwrap_or("-")
            );
        }
        let _ = writeln!(
            o,
            "mesh {}",
            if s.converged {
                "converged: every live peer has the same digests"
            } else {
                "NOT converged"
            }
        );
    }
    o
}
