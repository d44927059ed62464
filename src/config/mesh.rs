//! The `[mesh]` section with `gossip-listen` and `seeds`: how this peer finds
//! and talks to the others.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use super::{ConfigError, Paths, invalid};
use crate::registry::PeerId;

pub const DEFAULT_LISTEN: &str = "127.0.0.1:7946";

/// How peers talk to each other.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MeshTransport {
    /// QUIC with mutual TLS against the cluster CA (the default).
    Quic,
    /// Plain chitchat UDP: no authentication, no encryption. Only for
    /// networks where every host that can reach the gossip port is trusted.
    Udp,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct MeshFile {
    pub transport: Option<MeshTransport>,
    /// The cluster CA certificate (PEM).
    pub ca_cert: Option<PathBuf>,
    /// This peer's certificate and key from `lbmesh ca issue`.
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    /// The revocation list from `lbmesh ca revoke` [default: crl.pem beside ca-cert].
    pub crl: Option<PathBuf>,
    pub cluster_id: Option<String>,
    /// The gossip address other peers use, when gossip-listen is a wildcard.
    pub advertise: Option<SocketAddr>,
    #[serde(default, with = "humantime_serde")]
    pub gossip_interval: Option<Duration>,
}

/// Where gossip listens, whom it joins, and how the link is secured.
#[derive(Debug, Clone)]
pub struct GossipSettings {
    pub listen: SocketAddr,
    /// The address other peers reach this one at.
    pub advertise: SocketAddr,
    pub seeds: Vec<String>,
    pub cluster_id: String,
    pub interval: Duration,
    pub tls: GossipTls,
}

/// Peer-link security.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GossipTls {
    /// Plain UDP (mesh.transport = "udp").
    None,
    /// QUIC with mutual TLS using these files; `create` makes a CA and a
    /// certificate there on first start when they are missing and no seeds
    /// are configured (a single peer).
    Quic {
        files: crate::tls::PeerTlsFiles,
        create: bool,
        /// The revocation list loaded, and reloaded when it changes, if it exists.
        crl: PathBuf,
    },
}

/// The top-level keys and other sections' values this section depends on.
pub(super) struct Given<'a> {
    pub listen: Option<SocketAddr>,
    /// `--gossip-advertise`, which beats `mesh.advertise`.
    pub advertise: Option<SocketAddr>,
    pub seeds: Vec<String>,
    pub api_listen: SocketAddr,
    pub node_id: &'a PeerId,
    pub data_dir: &'a Path,
}

pub(super) fn resolve(
    file: MeshFile,
    given: Given<'_>,
    paths: Paths<'_>,
) -> Result<GossipSettings, ConfigError> {
    let listen = given
        .listen
        .unwrap_or_else(|| DEFAULT_LISTEN.parse().expect("valid default"));
    let api_listen = given.api_listen;
    if api_listen.port() != 0
        && api_listen.port() == listen.port()
        && api_listen.ip() == listen.ip()
    {
        return Err(invalid(
            "gossip-listen",
            listen,
            "must differ from api-listen",
        ));
    }
    let advertise = match given.advertise.or(file.advertise) {
        Some(a) if a.ip().is_unspecified() || a.port() == 0 => {
            return Err(invalid(
                "mesh.advertise",
                a,
                "must be a concrete address and port other peers can reach",
            ));
        }
        Some(a) => a,
        None if listen.ip().is_unspecified() => {
            return Err(invalid(
                "gossip-listen",
                listen,
                "listens on every address; set mesh.advertise (--gossip-advertise) to the address peers reach this one at",
            ));
        }
        None => listen,
    };
    let cluster_id = file.cluster_id.unwrap_or_else(|| "lbmesh".into());
    if cluster_id.is_empty()
        || cluster_id.len() > 63
        || !cluster_id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
    {
        return Err(invalid(
            "mesh.cluster-id",
            &cluster_id,
            "must be 1 to 63 characters from A-Z a-z 0-9 _ . -",
        ));
    }
    let interval = file.gossip_interval.unwrap_or(Duration::from_millis(200));
    if !(Duration::from_millis(10)..=Duration::from_secs(10)).contains(&interval) {
        return Err(invalid(
            "mesh.gossip-interval",
            humantime::format_duration(interval),
            "must be from 10ms to 10s",
        ));
    }
    let seeds = given.seeds;
    for s in &seeds {
        if s.rsplit_once(':')
            .and_then(|(h, p)| (!h.is_empty()).then(|| p.parse::<u16>().ok()).flatten())
            .is_none()
        {
            return Err(invalid("seed", s, "must be HOST:PORT"));
        }
    }
    let tls = match file.transport.unwrap_or(MeshTransport::Quic) {
        MeshTransport::Udp => GossipTls::None,
        MeshTransport::Quic => {
            let tls_dir = given.data_dir.join("tls");
            let node_id = given.node_id;
            let given_files = [&file.ca_cert, &file.cert, &file.key];
            if given_files.iter().any(|g| g.is_some()) && !given_files.iter().all(|g| g.is_some()) {
                return Err(invalid(
                    "mesh.ca-cert",
                    "",
                    "mesh.ca-cert, mesh.cert and mesh.key go together; give all three",
                ));
            }
            let explicit = file.cert.is_some();
            let files = crate::tls::PeerTlsFiles {
                ca_cert: paths.abs(
                    file.ca_cert
                        .unwrap_or_else(|| tls_dir.join(crate::tls::CA_CERT)),
                ),
                cert: paths.abs(
                    file.cert
                        .unwrap_or_else(|| tls_dir.join(format!("{node_id}.crt"))),
                ),
                key: paths.abs(
                    file.key
                        .unwrap_or_else(|| tls_dir.join(format!("{node_id}.key"))),
                ),
            };
            let crl = paths.abs(
                file.crl
                    .unwrap_or_else(|| files.ca_cert.with_file_name(crate::tls::CRL)),
            );
            GossipTls::Quic {
                files,
                create: !explicit && seeds.is_empty(),
                crl,
            }
        }
    };
    Ok(GossipSettings {
        listen,
        advertise,
        seeds,
        cluster_id,
        interval,
        tls,
    })
}
