//! Start-up checks that change nothing: everything `lbmesh serve` needs
//! (the haproxy binary, certificates, keys, the token file, directories,
//! the gossip port) is checked before any file is written, and the files a
//! start creates are removed again if it fails after all.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::config::{ApiTls, GossipTls, Settings};

#[derive(Debug, thiserror::Error)]
pub enum PreflightError {
    #[error(
        "HAProxy is not installed: {binary:?} is not in PATH. Install it (apt-get install haproxy) or set haproxy.binary (--haproxy-binary) to its path"
    )]
    HaproxyMissing { binary: PathBuf },
    #[error("haproxy.binary {binary}: {problem}")]
    HaproxyBroken { binary: PathBuf, problem: String },
    #[error("{what} {path}: {problem}")]
    File {
        what: &'static str,
        path: PathBuf,
        problem: String,
    },
    #[error(
        "gossip-listen {addr}: {error}; is another lbmesh (or something else) using that port?"
    )]
    GossipPort {
        addr: std::net::SocketAddr,
        error: std::io::Error,
    },
    #[error(
        "keepalived.vip: connections through the floating IP cannot be handed over: {0} \
         (needs nftables with the socket and dup expressions: apt-get install nftables)"
    )]
    Handoff(#[from] crate::failover::handoff::HandoffError),
}

/// Checks every input `lbmesh serve` needs before it writes anything.
pub async fn check(settings: &Settings) -> Result<(), PreflightError> {
    check_haproxy(&settings.haproxy.binary).await?;
    check_token_file(&settings.token_file)?;
    check_data_dir(&settings.data_dir)?;
    match &settings.api.tls {
        Some(ApiTls::Files { cert, key }) => {
            crate::api::tls_acceptor(cert, key).map_err(|e| PreflightError::File {
                what: "api.tls-cert",
                path: cert.clone(),
                problem: format!("{e:#}"),
            })?;
        }
        Some(ApiTls::SelfSigned { .. }) | None => {}
    }
    if let GossipTls::Quic { files, create, .. } = &settings.gossip.tls {
        let present = files.ca_cert.exists() && files.cert.exists() && files.key.exists();
        if present || !*create {
            crate::tls::PeerTls::load(files, &settings.node_id).map_err(|e| {
                PreflightError::File {
                    what: "mesh.cert",
                    path: files.cert.clone(),
                    problem: format!(
                        "{e}\nA mesh needs a cluster CA and a certificate per peer: \
                         `lbmesh ca init` once, `lbmesh ca issue --node-id {}` for this peer, \
                         then set mesh.ca-cert, mesh.cert and mesh.key (see the README).",
                        settings.node_id
                    ),
                }
            })?;
        }
    }
    if let Some(h) = &settings.keepalived.handoff {
        crate::failover::handoff::check(h).await?;
    }
    if let Some(fifo) = &settings.keepalived.notify_fifo {
        let dir = fifo.parent().unwrap_or(Path::new("/"));
        if !dir.is_dir() {
            return Err(PreflightError::File {
                what: "keepalived.notify-fifo",
                path: fifo.clone(),
                problem: format!(
                    "its directory {} does not exist (under systemd, RuntimeDirectory=lbmesh makes /run/lbmesh)",
                    dir.display()
                ),
            });
        }
    }
    // A port in use fails here rather than after a token or CA was made.
    // (Bound and released at once; a race with another process is harmless:
    // joining the mesh then fails with the same message.)
    std::net::UdpSocket::bind(settings.gossip.listen).map_err(|error| {
        PreflightError::GossipPort {
            addr: settings.gossip.listen,
            error,
        }
    })?;
    Ok(())
}

/// The haproxy binary exists and runs (`haproxy -v`).
pub async fn check_haproxy(binary: &Path) -> Result<(), PreflightError> {
    let found = if binary.components().count() > 1 {
        binary.is_file().then(|| binary.to_owned())
    } else {
        std::env::var_os("PATH").and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|d| d.join(binary))
                .find(|p| p.is_file())
        })
    };
    let Some(path) = found else {
        if binary.components().count() > 1 {
            return Err(PreflightError::HaproxyBroken {
                binary: binary.to_owned(),
                problem:
                    "no such file. Install HAProxy (apt-get install haproxy) or fix haproxy.binary"
                        .into(),
            });
        }
        return Err(PreflightError::HaproxyMissing {
            binary: binary.to_owned(),
        });
    };
    let run = tokio::process::Command::new(&path)
        .arg("-v")
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output();
    let broken = |problem: String| PreflightError::HaproxyBroken {
        binary: path.clone(),
        problem,
    };
    match tokio::time::timeout(Duration::from_secs(10), run).await {
        Err(_) => Err(broken("`haproxy -v` did not answer within 10 s".into())),
        Ok(Err(e)) => Err(broken(format!("cannot run it: {e}"))),
        Ok(Ok(out)) if !out.status.success() => Err(broken(format!(
            "`haproxy -v` failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))),
        Ok(Ok(_)) => Ok(()),
    }
}

/// An existing token file must be readable and valid; a missing one will be
/// generated, so its directory must be usable.
fn check_token_file(path: &Path) -> Result<(), PreflightError> {
    let file_err = |problem: String| PreflightError::File {
        what: "token-file",
        path: path.to_owned(),
        problem,
    };
    match std::fs::metadata(path) {
        Ok(_) => crate::secret::Token::load(path)
            .map(|_| ())
            .map_err(|e| file_err(e.to_string())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            match nearest_existing(path.parent().unwrap_or(Path::new("/"))) {
                Some(d) if d.is_dir() => Ok(()),
                Some(d) => Err(file_err(format!(
                    "cannot be created: {} is not a directory",
                    d.display()
                ))),
                None => Err(file_err("cannot be created".into())),
            }
        }
        Err(e) => Err(file_err(e.to_string())),
    }
}

fn check_data_dir(dir: &Path) -> Result<(), PreflightError> {
    match nearest_existing(dir) {
        Some(d) if d.is_dir() => Ok(()),
        _ => Err(PreflightError::File {
            what: "data-dir",
            path: dir.to_owned(),
            problem: "is not a directory and cannot be created".into(),
        }),
    }
}

/// `path` or its nearest ancestor that exists.
fn nearest_existing(path: &Path) -> Option<&Path> {
    path.ancestors().find(|p| p.exists())
}

/// Files and directories a start creates; removed again unless the start
/// succeeds ([`Created::keep`]), so a failed start leaves nothing behind.
#[derive(Debug, Default)]
pub struct Created {
    paths: Vec<PathBuf>,
}

impl Created {
    /// Notes `path` if it does not exist yet; call before creating it.
    pub fn will_create(&mut self, path: &Path) {
        // The topmost missing ancestor: `create_dir_all` makes them all.
        let mut top = None;
        for p in path.ancestors() {
            if p.exists() {
                break;
            }
            top = Some(p);
        }
        if let Some(p) = top {
            self.paths.push(p.to_owned());
        }
    }

    /// The start succeeded: keep everything.
    pub fn keep(mut self) {
        self.paths.clear();
    }
}

impl Drop for Created {
    fn drop(&mut self) {
        for p in self.paths.iter().rev() {
            let r = if p.is_dir() {
                std::fs::remove_dir_all(p)
            } else {
                std::fs::remove_file(p)
            };
            match r {
                Ok(()) => {
                    tracing::info!(path = %p.display(), "start-up failed; removed what it had created")
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    tracing::warn!(path = %p.display(), error = %e, "start-up failed; cannot remove what it created")
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_missing_haproxy_says_how_to_install_it() {
        let e = check_haproxy(Path::new("haproxy-that-is-not-installed"))
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains("apt-get install haproxy"), "{e}");
        let e = check_haproxy(Path::new("/nonexistent/haproxy"))
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains("no such file"), "{e}");
        // A file that is not a program.
        let dir = tempfile::tempdir().unwrap();
        let fake = dir.path().join("haproxy");
        std::fs::write(&fake, "not a program").unwrap();
        let e = check_haproxy(&fake).await.unwrap_err().to_string();
        assert!(e.contains("cannot run it"), "{e}");
    }

    #[test]
    fn created_paths_go_unless_kept() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a/b/token");
        let mut c = Created::default();
        c.will_create(&a);
        std::fs::create_dir_all(a.parent().unwrap()).unwrap();
        std::fs::write(&a, "x").unwrap();
        drop(c);
        assert!(!dir.path().join("a").exists());
        let mut c = Created::default();
        c.will_create(&a);
        std::fs::create_dir_all(a.parent().unwrap()).unwrap();
        std::fs::write(&a, "x").unwrap();
        c.keep();
        assert!(a.exists());
    }
}
