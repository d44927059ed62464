//! HAProxy's Runtime API and master CLI over their unix sockets.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

use super::layout::Backend;
use super::render::{backend_name, slot_name};

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("{path}: {error}")]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("{path}: no answer within {timeout:?}")]
    Timeout { path: PathBuf, timeout: Duration },
    #[error("HAProxy refused {command:?}: {answer}")]
    Refused { command: String, answer: String },
}

const TIMEOUT: Duration = Duration::from_secs(5);

/// Sends one line of `;`-separated commands and returns everything HAProxy
/// answers before it closes the connection.
pub async fn send(socket: &Path, line: &str) -> Result<String, RuntimeError> {
    let io = |error| RuntimeError::Io {
        path: socket.to_owned(),
        error,
    };
    let talk = async {
        let mut s = UnixStream::connect(socket).await.map_err(io)?;
        s.write_all(line.as_bytes()).await.map_err(io)?;
        s.write_all(b"\n").await.map_err(io)?;
        // The master CLI answers only once it sees the end of the input.
        s.shutdown().await.map_err(io)?;
        let mut out = String::new();
        s.read_to_string(&mut out).await.map_err(io)?;
        Ok(out)
    };
    tokio::time::timeout(TIMEOUT, talk)
        .await
        .map_err(|_| RuntimeError::Timeout {
            path: socket.to_owned(),
            timeout: TIMEOUT,
        })?
}

/// Answers of `set server` that mean it did not happen.
fn is_refusal(answer: &str) -> bool {
    let a = answer.to_ascii_lowercase();
    [
        "no such",
        "require",
        "unknown",
        "invalid",
        "failed",
        "not allowed",
        "cannot",
        "can't",
    ]
    .iter()
    .any(|w| a.contains(w))
}

/// The Runtime API commands that turn `from` into `to` (same shape).
/// Servers are put in before others are taken out, so a pool that swaps
/// its last server never has a moment with none.
pub fn slot_commands(port: u16, from: &Backend, to: &Backend) -> Vec<String> {
    let be = backend_name(port);
    let mut adds = Vec::new();
    let mut removals = Vec::new();
    for (i, (a, b)) in from.slots.iter().zip(&to.slots).enumerate() {
        if a.server == b.server {
            continue;
        }
        let srv = format!("{be}/{}", slot_name(i));
        match b.server {
            Some(addr) => {
                adds.push(format!(
                    "set server {srv} addr {} port {}",
                    addr.ip(),
                    addr.port()
                ));
                if a.server.is_none() {
                    adds.push(format!("set server {srv} state ready"));
                }
            }
            None => {
                removals.push(format!("set server {srv} state maint"));
                removals.push(format!("set server {srv} addr 0.0.0.0 port 1"));
            }
        }
    }
    adds.extend(removals);
    adds
}

/// Runs commands one connection per command batch, failing on the first refusal.
pub async fn run_commands(socket: &Path, cmds: &[String]) -> Result<(), RuntimeError> {
    // HAProxy reads a command line into a bounded buffer; stay well inside it.
    let mut line = String::new();
    let mut batch: Vec<&str> = Vec::new();
    for (i, cmd) in cmds.iter().enumerate() {
        if !line.is_empty() {
            line.push(';');
        }
        line.push_str(cmd);
        batch.push(cmd);
        if line.len() > 4000 || i + 1 == cmds.len() {
            let answer = send(socket, &line).await?;
            if is_refusal(&answer) {
                return Err(RuntimeError::Refused {
                    command: batch.join("; "),
                    answer: answer.trim().to_owned(),
                });
            }
            line.clear();
            batch.clear();
        }
    }
    Ok(())
}

/// The PID of the worker answering on the runtime socket; changes on reload.
pub async fn worker_pid(socket: &Path) -> Result<u32, RuntimeError> {
    let info = send(socket, "show info").await?;
    info.lines()
        .find_map(|l| l.strip_prefix("Pid: "))
        .and_then(|p| p.trim().parse().ok())
        .ok_or_else(|| RuntimeError::Refused {
            command: "show info".into(),
            answer: "no Pid line".into(),
        })
}

/// Reload counters from the master CLI's `show proc`: (reloads, failed).
pub async fn master_reloads(master_socket: &Path) -> Result<(u64, u64), RuntimeError> {
    let out = send(master_socket, "show proc").await?;
    parse_show_proc(&out).ok_or_else(|| RuntimeError::Refused {
        command: "show proc".into(),
        answer: out.lines().take(3).collect::<Vec<_>>().join(" | "),
    })
}

/// How many old workers (still serving connections after a reload) the
/// master CLI's `show proc` lists.
pub async fn old_workers(master_socket: &Path) -> Result<usize, RuntimeError> {
    let out = send(master_socket, "show proc").await?;
    Ok(count_old_workers(&out))
}

fn count_old_workers(out: &str) -> usize {
    let mut in_old = false;
    let mut n = 0;
    for line in out.lines() {
        let line = line.trim();
        if let Some(section) = line.strip_prefix('#') {
            in_old = section.trim() == "old workers";
        } else if in_old && !line.is_empty() {
            n += 1;
        }
    }
    n
}

fn parse_show_proc(out: &str) -> Option<(u64, u64)> {
    let line = out.lines().find(|l| l.contains("master"))?;
    let mut words = line.split_whitespace();
    let _pid = words.next()?;
    if words.next()? != "master" {
        return None;
    }
    let reloads = words.next()?.parse().ok()?;
    let rest: String = words.collect::<Vec<_>>().join(" ");
    let failed = rest
        .strip_prefix("[failed:")
        .and_then(|r| r.split(']').next())
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0);
    Some((reloads, failed))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::haproxy::layout::Slot;

    #[test]
    fn show_proc_parses() {
        let out = "#<PID>          <type>          <reloads>       <uptime>        <version>\n\
                   2375            master          2 [failed: 1]   0d00h00m21s     2.6.12-1+deb12u4\n\
                   # workers\n\
                   2484            worker          1               0d00h00m12s     2.6.12-1+deb12u4\n";
        assert_eq!(parse_show_proc(out), Some((2, 1)));
        assert_eq!(parse_show_proc("garbage"), None);
        assert_eq!(count_old_workers(out), 0);
        let with_old = "#<PID>          <type>          <reloads>       <uptime>        <version>\n\
                        1484            master          2 [failed: 0]   0d00h00m06s     2.6.12-1+deb12u4\n\
                        # workers\n\
                        1649            worker          0               0d00h00m03s     2.6.12-1+deb12u4\n\
                        # old workers\n\
                        1506            worker          2               0d00h00m06s     2.6.12-1+deb12u4\n\
                        1507            worker          1               0d00h00m04s     2.6.12-1+deb12u4\n\
                        # programs\n\n";
        assert_eq!(count_old_workers(with_old), 2);
    }

    #[test]
    fn slot_commands_cover_add_move_remove() {
        let s = |a: &str| Slot {
            send_proxy: false,
            server: Some(a.parse().unwrap()),
        };
        let empty = Slot {
            send_proxy: false,
            server: None,
        };
        let owner: crate::registry::ServiceName = "svc".parse().unwrap();
        let from = Backend {
            owner: owner.clone(),
            slots: vec![
                s("198.18.0.1:1"),
                empty,
                s("198.18.0.3:3"),
                s("198.18.0.4:4"),
            ],
        };
        let to = Backend {
            owner,
            slots: vec![
                s("198.18.0.1:1"),
                s("[2001:db8::2]:2"),
                empty,
                s("198.18.0.5:5"),
            ],
        };
        assert_eq!(
            slot_commands(443, &from, &to),
            vec![
                "set server 443_backend/s2 addr 2001:db8::2 port 2",
                "set server 443_backend/s2 state ready",
                "set server 443_backend/s4 addr 198.18.0.5 port 5",
                "set server 443_backend/s3 state maint",
                "set server 443_backend/s3 addr 0.0.0.0 port 1",
            ]
        );
        assert!(is_refusal("No such server.\n"));
        assert!(!is_refusal(
            "IP changed from '0.0.0.0' to '127.0.0.1' by 'stats socket command'\n"
        ));
    }
}
