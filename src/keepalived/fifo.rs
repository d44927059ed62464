//! The reader of keepalived's notify FIFO.

use std::path::PathBuf;
use std::time::Duration;

use tokio::io::AsyncBufReadExt;
use tokio::sync::watch;

use super::{Notification, Vrrp};

/// Reads keepalived's notify FIFO (`notify_fifo` in keepalived.conf) and
/// reports every line, in order. Reopens the FIFO when keepalived restarts.
pub async fn read_fifo(path: PathBuf, vrrp: Vrrp, mut shutdown: watch::Receiver<bool>) {
    if !path.exists() {
        if let Err(e) = nix::unistd::mkfifo(&path, nix::sys::stat::Mode::from_bits_truncate(0o600))
        {
            tracing::warn!(fifo = %path.display(), error = %e, "cannot create the notify FIFO");
        }
    }
    loop {
        // Read-write, so the FIFO never reads as closed while keepalived restarts.
        let file = tokio::net::unix::pipe::OpenOptions::new()
            .read_write(true)
            .open_receiver(&path);
        let file = match file {
            Ok(f) => f,
            Err(e) => {
                tracing::warn!(fifo = %path.display(), error = %e, "cannot open keepalived's notify FIFO; retrying");
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_secs(2)) => continue,
                    () = crate::shutdown::signalled(&mut shutdown) => return,
                }
            }
        };
        let mut lines = tokio::io::BufReader::new(file).lines();
        loop {
            let line = tokio::select! {
                l = lines.next_line() => l,
                () = crate::shutdown::signalled(&mut shutdown) => return,
            };
            match line {
                Ok(Some(l)) => match Notification::from_fifo_line(&l) {
                    Ok(n) => vrrp.report(n),
                    Err(e) => tracing::warn!(error = %e, "ignoring a notify FIFO line"),
                },
                // Writer closed (keepalived restarting): open again.
                Ok(None) | Err(_) => break,
            }
        }
    }
}
