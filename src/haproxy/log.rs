//! HAProxy's own log, in lbmesh's: a unix datagram socket lbmesh owns, which
//! the rendered config's `log` line points at. HAProxy sends each message to
//! the path, so the messages keep coming after lbmesh restarts and adopts a
//! running HAProxy, and in external mode too. Each message becomes a line of
//! the `haproxy` target at the level its syslog severity says.

use std::path::{Path, PathBuf};

use tokio::net::UnixDatagram;
use tokio::sync::watch;

/// The tracing target of HAProxy's messages.
pub const TARGET: &str = "haproxy";

/// The largest message read; HAProxy's `len` in the rendered `log` line.
pub const MAX_MESSAGE: usize = 4096;

/// A syslog severity folded into the four levels lbmesh logs at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    /// emerg, alert, crit, err: HAProxy's `[ALERT]`s (a server down, a proxy
    /// that cannot start).
    Error,
    Warning,
    /// notice and info (a server up, a proxy started).
    Info,
    Debug,
}

/// One message as HAProxy sends it with `format short`: `<PRI>text`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub severity: Severity,
    pub text: String,
}

/// Parses a datagram in HAProxy's `short` format (`<PRI>text`), or in the
/// default RFC 3164 format (`<PRI>Mmm dd hh:mm:ss haproxy[pid]: text`).
/// Control characters are dropped: the text reaches log readers and terminals.
pub fn parse(datagram: &[u8]) -> Option<Message> {
    let text = String::from_utf8_lossy(datagram);
    let rest = text.strip_prefix('<')?;
    let (pri, body) = rest.split_once('>')?;
    if pri.is_empty() || pri.len() > 3 {
        return None;
    }
    let pri: u8 = pri.parse().ok()?;
    let severity = match pri & 7 {
        0..=3 => Severity::Error,
        4 => Severity::Warning,
        5 | 6 => Severity::Info,
        _ => Severity::Debug,
    };
    // RFC 3164 header: "Mmm dd hh:mm:ss host-or-tag: ". Keep what follows
    // the first ": " after a timestamp-looking start.
    let stamp = body.as_bytes().get(..16);
    let rfc3164 = stamp.is_some_and(|s| {
        s[3] == b' ' && s[6] == b' ' && s[9] == b':' && s[12] == b':' && s[15] == b' '
    });
    let body = if rfc3164 {
        body.split_once(": ").map_or(body, |(_, msg)| msg)
    } else {
        body
    };
    let text: String = body
        .trim_end()
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    Some(Message { severity, text })
}

/// Messages HAProxy sends on every reload (for every proxy) or on a clean
/// stop: logged at debug, or a reload with many frontends floods the log.
const ROUTINE: [&str; 6] = [
    "stopped (cumulated conns",
    " started.",
    "Pausing ",
    "Paused ",
    "Resuming ",
    "Resumed ",
];

/// Lines of the master on stderr that a reload or stop always prints, whatever
/// their tag (the master reports a worker that stopped as a `[WARNING]` or
/// `[ALERT]`): logged at info.
const MASTER_ROUTINE: [&str; 4] = [
    "exited with code 0",
    "(Terminated)",
    "Exiting Master process",
    "All workers exited",
];

/// What HAProxy says when lbmesh itself empties or fills a server slot
/// through the Runtime API (an alert, for HAProxy): info, one per change.
const OWN_CHANGES: [&str; 2] = ["going DOWN for maintenance", "leaving forced maintenance"];

/// The severity a message is logged at: HAProxy's own, except routine messages.
pub fn level(severity: Severity, text: &str) -> Severity {
    if ROUTINE.iter().any(|r| text.contains(r)) {
        Severity::Debug
    } else if OWN_CHANGES.iter().any(|r| text.contains(r)) {
        Severity::Info.min_with(severity)
    } else {
        severity
    }
}

/// A line HAProxy wrote on stderr: `[ALERT]    (1234) : text`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StderrLine {
    pub severity: Severity,
    /// The process that wrote it, when the line says.
    pub pid: Option<u32>,
    pub text: String,
}

/// Reads a line of HAProxy's stderr (supervised mode). Lines without a tag
/// are info.
pub fn parse_stderr(line: &str) -> StderrLine {
    let line = line.trim_end();
    let tagged = line.strip_prefix('[').and_then(|r| r.split_once(']'));
    let Some((tag, rest)) = tagged else {
        return StderrLine {
            severity: Severity::Info,
            pid: None,
            text: line.to_owned(),
        };
    };
    let severity = match tag {
        "ALERT" | "EMERG" => Severity::Error,
        "WARNING" => Severity::Warning,
        "DEBUG" => Severity::Debug,
        _ => Severity::Info,
    };
    let rest = rest.trim_start();
    let (pid, text) = match rest
        .strip_prefix('(')
        .and_then(|r| r.split_once(')'))
        .and_then(|(pid, text)| Some((pid.parse().ok()?, text)))
    {
        Some((pid, text)) => (
            Some(pid),
            text.trim_start()
                .strip_prefix(':')
                .unwrap_or(text)
                .trim_start(),
        ),
        None => (None, rest),
    };
    StderrLine {
        severity,
        pid,
        text: text.to_owned(),
    }
}

/// The level of a line of the supervised HAProxy's stderr, `master` being the
/// master's pid. A worker's messages also reach the log socket, where they
/// are logged: on stderr they are debug. The master's routine lines are info.
pub fn stderr_level(line: &StderrLine, master: Option<u32>) -> Severity {
    if line.pid.is_some() && line.pid != master {
        return Severity::Debug;
    }
    if MASTER_ROUTINE.iter().any(|r| line.text.contains(r)) {
        return Severity::Info.min_with(line.severity);
    }
    level(line.severity, &line.text)
}

impl Severity {
    /// The less severe of two.
    fn min_with(self, other: Severity) -> Severity {
        let rank = |s| match s {
            Severity::Error => 3,
            Severity::Warning => 2,
            Severity::Info => 1,
            Severity::Debug => 0,
        };
        if rank(self) <= rank(other) {
            self
        } else {
            other
        }
    }
}

/// Logs `text` on the `haproxy` target at `severity`.
pub fn emit(severity: Severity, text: &str) {
    match severity {
        Severity::Error => tracing::error!(target: TARGET, "{text}"),
        Severity::Warning => tracing::warn!(target: TARGET, "{text}"),
        Severity::Info => tracing::info!(target: TARGET, "{text}"),
        Severity::Debug => tracing::debug!(target: TARGET, "{text}"),
    }
}

/// Binds the log socket at `path`, replacing a stale one left by an earlier
/// lbmesh. Call before HAProxy starts, so its first messages arrive.
pub fn bind(path: &Path) -> std::io::Result<UnixDatagram> {
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    UnixDatagram::bind(path)
}

/// Logs every message that arrives on `socket` until `shutdown` fires, then
/// removes the socket file.
pub async fn receive(socket: UnixDatagram, path: PathBuf, mut shutdown: watch::Receiver<bool>) {
    let mut buf = vec![0u8; MAX_MESSAGE + 64];
    loop {
        let n = tokio::select! {
            r = socket.recv(&mut buf) => match r {
                Ok(n) => n,
                Err(e) => {
                    tracing::warn!(error = %e, socket = %path.display(), "cannot read HAProxy's log socket");
                    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                    continue;
                }
            },
            () = crate::shutdown::signalled(&mut shutdown) => break,
        };
        let Some(m) = parse(&buf[..n]) else {
            tracing::debug!(
                bytes = n,
                "ignoring a datagram on HAProxy's log socket that is not syslog"
            );
            continue;
        };
        emit(level(m.severity, &m.text), &m.text);
    }
    let _ = std::fs::remove_file(&path);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_haproxy_messages() {
        type Case = (&'static [u8], Option<(Severity, &'static str)>);
        let table: &[Case] = &[
            (
                b"<129>Server 443_backend/s3 is DOWN, reason: Layer4 connection problem.\n",
                Some((
                    Severity::Error,
                    "Server 443_backend/s3 is DOWN, reason: Layer4 connection problem.",
                )),
            ),
            (
                b"<133>Server 443_backend/s3 is UP",
                Some((Severity::Info, "Server 443_backend/s3 is UP")),
            ),
            (
                b"<132>Proxy 443_frontend stopped",
                Some((Severity::Warning, "Proxy 443_frontend stopped")),
            ),
            (
                b"<134>Jan  5 10:00:01 haproxy[123]: Proxy 443_frontend started.",
                Some((Severity::Info, "Proxy 443_frontend started.")),
            ),
            (
                b"<15>debug\x1b[31mred",
                Some((Severity::Debug, "debug [31mred")),
            ),
            (b"no priority", None),
            (b"<>x", None),
            (b"<9999>x", None),
            (b"<12", None),
        ];
        for (raw, want) in table {
            let got = parse(raw).map(|m| (m.severity, m.text));
            let want = want.map(|(s, t)| (s, t.to_owned()));
            assert_eq!(got, want, "{:?}", String::from_utf8_lossy(raw));
        }
    }

    #[test]
    fn routine_messages_are_debug() {
        let m = parse(b"<132>Proxy 443_frontend stopped (cumulated conns: FE: 0, BE: 0).").unwrap();
        assert_eq!(level(m.severity, &m.text), Severity::Debug);
        let m = parse(b"<129>Server 443_backend/s1 is DOWN").unwrap();
        assert_eq!(level(m.severity, &m.text), Severity::Error);
        let m = parse(b"<129>Server 443_backend/s1 is going DOWN for maintenance. 1 active and 0 backup servers left.").unwrap();
        assert_eq!(level(m.severity, &m.text), Severity::Info);
    }

    #[test]
    fn stderr_lines() {
        let master = Some(656);
        let table = [
            // The master's alerts are errors.
            (
                "[ALERT]    (656) : config : parsing [/x/haproxy.cfg:3] : unknown keyword 'bogus'",
                Some(656),
                "config : parsing [/x/haproxy.cfg:3] : unknown keyword 'bogus'",
                Severity::Error,
            ),
            (
                "[NOTICE]   (656) : New worker (666) forked",
                Some(656),
                "New worker (666) forked",
                Severity::Info,
            ),
            (
                "[WARNING]  (656) : Former worker (666) exited with code 0 (Exit)",
                Some(656),
                "Former worker (666) exited with code 0 (Exit)",
                Severity::Info,
            ),
            (
                "[ALERT]    (656) : Current worker (1423) exited with code 139 (Segmentation fault)",
                Some(656),
                "Current worker (1423) exited with code 139 (Segmentation fault)",
                Severity::Error,
            ),
            (
                "[WARNING]  (656) : config : missing timeouts",
                Some(656),
                "config : missing timeouts",
                Severity::Warning,
            ),
            // A worker's lines also arrive on the log socket.
            (
                "[ALERT]    (1423) : backend '443_backend' has no server available!",
                Some(1423),
                "backend '443_backend' has no server available!",
                Severity::Debug,
            ),
            ("plain text", None, "plain text", Severity::Info),
        ];
        for (raw, pid, text, want) in table {
            let line = parse_stderr(raw);
            assert_eq!((line.pid, line.text.as_str()), (pid, text), "{raw}");
            assert_eq!(stderr_level(&line, master), want, "{raw}");
        }
    }
}
