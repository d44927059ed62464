//! `lbmesh serve`: resolve the settings, bind the API, run the daemon.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use anyhow::Context;
use clap::Args;

use crate::config::{FileConfig, HaproxyMode, Overrides, Settings};

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

pub async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    // Every file the daemon (and its HAProxy) creates is private: the
    // registry, keys, token and sockets are nobody else's business.
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o077));
    let settings = args.settings()?;
    let listener = tokio::net::TcpListener::bind(settings.api.listen)
        .await
        .with_context(|| format!("cannot listen on {} (api-listen)", settings.api.listen))?;
    crate::daemon::run(settings, listener, super::termination()).await
}
