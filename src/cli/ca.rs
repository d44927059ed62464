//! `lbmesh ca init|issue|revoke`: the cluster certificate authority for peer links.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Subcommand};

#[derive(Debug, Subcommand)]
pub enum CaCmd {
    /// Create a cluster CA: ca.crt (give to every peer) and ca.key (mode 0600; keep it safe).
    Init(CaInitArgs),
    /// Issue a peer certificate for a node id, signed by the cluster CA.
    Issue(CaIssueArgs),
    /// Revoke every certificate issued so far for a node id (a stolen key):
    /// writes crl.pem beside ca.crt, which running peers load within seconds.
    Revoke(CaRevokeArgs),
}

#[derive(Debug, Args)]
pub struct CaRevokeArgs {
    /// The node id whose certificates are revoked; issue it a new one afterwards.
    #[arg(long)]
    pub node_id: String,
    /// Where ca.crt and ca.key are.
    #[arg(long, env = "LBMESH_CA_DIR", default_value = "lbmesh-ca")]
    pub dir: PathBuf,
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
            Ca::record_issued(&a.dir, &node, &cert)?;
            println!(
                "issued a certificate for node {node}:\n  {}\n  {}  (mode 0600)\nOn that peer set mesh.ca-cert = \"{}\", mesh.cert and mesh.key to these.",
                cert_path.display(),
                key_path.display(),
                a.dir.join(CA_CERT).display()
            );
        }
        CaCmd::Revoke(a) => {
            let node: crate::registry::PeerId =
                a.node_id
                    .parse()
                    .map_err(|e: crate::registry::FieldError| {
                        anyhow::anyhow!("--node-id: {}", e.problem)
                    })?;
            let ca = Ca::load(&a.dir)?;
            let n = ca.revoke(&a.dir, &node)?;
            let crl = a.dir.join(crate::tls::CRL);
            if n == 0 {
                println!(
                    "no certificate of node {node} left to revoke (see {}); {} is up to date",
                    a.dir.join(crate::tls::ISSUED).display(),
                    crl.display()
                );
            } else {
                println!(
                    "revoked {n} certificate(s) of node {node}:
  {}
Copy it beside ca.crt on every peer (mesh.crl); running peers refuse those certificates within seconds.
Issue node {node} a new certificate with `lbmesh ca issue --node-id {node}`.",
                    crl.display()
                );
            }
        }
    }
    Ok(())
}
