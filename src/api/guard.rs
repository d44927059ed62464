//! What keeps the API up under a flood: a cap on connections (in all and per
//! source address, with a reserve for local callers such as keepalived's
//! check), and a connection wrapper that notices idleness and turns hyper's
//! own bodiless error answers (400, 414, 431) into the API's JSON errors.

use std::collections::HashMap;
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Bounds on the API's connections and how long they may take.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnLimits {
    /// Connections open at once from anywhere but loopback.
    pub max_connections: usize,
    /// Connections open at once from one source address.
    pub max_per_source: usize,
    /// Extra connections only loopback sources may use, so the local health
    /// check answers while the public side is saturated.
    pub local_reserve: usize,
    /// Time to receive a request's headers, including the wait for the next
    /// request on a kept-alive connection.
    pub header_timeout: Duration,
    /// Time to receive a request's body.
    pub body_timeout: Duration,
    /// A connection with no request running and nothing received for this
    /// long is closed (HTTP/2 included, which has no header timeout between streams).
    pub idle_timeout: Duration,
}

impl Default for ConnLimits {
    fn default() -> Self {
        Self {
            max_connections: 1024,
            max_per_source: 64,
            local_reserve: 64,
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
        }
    }
}

/// Counts open connections; hands out a [`Permit`] per admitted connection.
#[derive(Debug)]
pub struct Admission {
    limits: ConnLimits,
    state: Mutex<Counts>,
}

#[derive(Debug, Default)]
struct Counts {
    public: usize,
    local: usize,
    per_source: HashMap<IpAddr, usize>,
}

/// Why a connection was turned away.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    TooManyFromSource,
    TooMany,
}

impl Refused {
    pub fn label(self) -> &'static str {
        match self {
            Self::TooManyFromSource => "per_source_cap",
            Self::TooMany => "connection_cap",
        }
    }
}

/// Holds one connection's place; gives it back when dropped.
#[derive(Debug)]
pub struct Permit {
    admission: Arc<Admission>,
    source: IpAddr,
    local: bool,
}

impl Admission {
    pub fn new(limits: ConnLimits) -> Arc<Self> {
        Arc::new(Self {
            limits,
            state: Mutex::default(),
        })
    }

    pub fn limits(&self) -> &ConnLimits {
        &self.limits
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Counts> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Admits a connection from `source` to this host's address `to`, or
    /// says why not. A caller on this host (loopback, or this host's own
    /// address, which is where keepalived's check connects when the API
    /// serves a certificate for the VM's address) may use the reserve.
    pub fn admit(self: &Arc<Self>, source: IpAddr, to: IpAddr) -> Result<Permit, Refused> {
        let source = source.to_canonical();
        let this_host = source.is_loopback() || source == to.to_canonical();
        let mut c = self.lock();
        let from_source = c.per_source.get(&source).copied().unwrap_or(0);
        if from_source >= self.limits.max_per_source {
            return Err(Refused::TooManyFromSource);
        }
        // Callers on this host use the public pool first, then their reserve.
        let local = if c.public < self.limits.max_connections {
            c.public += 1;
            false
        } else if this_host && c.local < self.limits.local_reserve {
            c.local += 1;
            true
        } else {
            return Err(Refused::TooMany);
        };
        *c.per_source.entry(source).or_default() += 1;
        Ok(Permit {
            admission: self.clone(),
            source,
            local,
        })
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        let c = self.lock();
        c.public + c.local
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        let mut c = self.admission.lock();
        if self.local {
            c.local -= 1;
        } else {
            c.public -= 1;
        }
        if let Some(n) = c.per_source.get_mut(&self.source) {
            *n -= 1;
            if *n == 0 {
                c.per_source.remove(&self.source);
            }
        }
    }
}

/// When a connection last received bytes, and how many requests it is running.
#[derive(Debug)]
pub struct Activity {
    start: Instant,
    last_read_ms: AtomicU64,
    running: AtomicU64,
}

impl Activity {
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            start: Instant::now(),
            last_read_ms: AtomicU64::new(0),
            running: AtomicU64::new(0),
        })
    }

    fn touch(&self) {
        let ms = self.start.elapsed().as_millis() as u64;
        self.last_read_ms.store(ms, Ordering::Relaxed);
    }

    /// Whether nothing arrived for `limit` and no request is running.
    pub fn idle_for(&self, limit: Duration) -> bool {
        let now = self.start.elapsed().as_millis() as u64;
        self.running.load(Ordering::Relaxed) == 0
            && now.saturating_sub(self.last_read_ms.load(Ordering::Relaxed))
                >= limit.as_millis() as u64
    }

    /// Marks a request as running until the returned guard drops.
    pub fn request(self: &Arc<Self>) -> Running {
        self.running.fetch_add(1, Ordering::Relaxed);
        Running(self.clone())
    }
}

/// A request in progress on a connection.
pub struct Running(Arc<Activity>);

impl Drop for Running {
    fn drop(&mut self) {
        self.0.running.fetch_sub(1, Ordering::Relaxed);
        self.0.touch();
    }
}

/// A connection's byte stream, watched for activity, with hyper's automatic
/// error answers rewritten as JSON.
pub struct Watched<T> {
    inner: T,
    activity: Arc<Activity>,
    /// A rewritten answer still to be written.
    pending: Vec<u8>,
    written: usize,
}

impl<T> Watched<T> {
    pub fn new(inner: T, activity: Arc<Activity>) -> Self {
        activity.touch();
        Self {
            inner,
            activity,
            pending: Vec::new(),
            written: 0,
        }
    }
}

/// If `buf` is exactly an answer hyper made up itself for a request it could
/// not parse (a status line and headers with no content type and no body),
/// the JSON answer to send instead.
pub fn rewrite_automatic_error(buf: &[u8]) -> Option<Vec<u8>> {
    if buf.len() > 1024 || !(buf.starts_with(b"HTTP/1.1 ") || buf.starts_with(b"HTTP/1.0 ")) {
        return None;
    }
    let end = buf.windows(4).position(|w| w == b"\r\n\r\n")?;
    if end + 4 != buf.len() {
        return None;
    }
    let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
    if head.contains("\r\ncontent-type:") || !head.contains("\r\ncontent-length: 0") {
        return None;
    }
    let (code, message): (&str, &str) = match &head[9..12] {
        "400" => (
            "bad_request",
            "the request is not valid HTTP (method, path or a header is malformed)",
        ),
        "414" => ("uri_too_long", "the request path is too long"),
        "431" => (
            "headers_too_large",
            "the request headers are too large or too many",
        ),
        _ => return None,
    };
    let status_line = &buf[..buf.windows(2).position(|w| w == b"\r\n")?];
    let body = serde_json::json!({ "error": code, "message": message }).to_string();
    let mut out = Vec::with_capacity(200 + body.len());
    out.extend_from_slice(status_line);
    out.extend_from_slice(
        format!(
            "\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    );
    Some(out)
}

impl<T: AsyncWrite + Unpin> Watched<T> {
    fn drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.written < self.pending.len() {
            let n = std::task::ready!(
                Pin::new(&mut self.inner).poll_write(cx, &self.pending[self.written..])
            )?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.written += n;
        }
        self.pending.clear();
        self.written = 0;
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Watched<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.touch();
        }
        r
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Watched<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        std::task::ready!(self.drain(cx))?;
        if let Some(json) = rewrite_automatic_error(buf) {
            self.pending = json;
            // What hyper wrote is taken; the JSON goes out in its place.
            let _ = self.drain(cx)?;
            return Poll::Ready(Ok(buf.len()));
        }
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        std::task::ready!(self.drain(cx))?;
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        std::task::ready!(self.drain(cx))?;
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(total: usize, per: usize, reserve: usize) -> ConnLimits {
        ConnLimits {
            max_connections: total,
            max_per_source: per,
            local_reserve: reserve,
            ..ConnLimits::default()
        }
    }

    #[test]
    fn admission_caps_per_source_and_in_all_with_a_local_reserve() {
        let a = Admission::new(limits(3, 2, 1));
        let x: IpAddr = "203.0.113.1".parse().unwrap();
        let y: IpAddr = "203.0.113.2".parse().unwrap();
        let lo: IpAddr = "127.0.0.1".parse().unwrap();
        let vm: IpAddr = "198.18.0.11".parse().unwrap();
        let p1 = a.admit(x, vm).unwrap();
        let _p2 = a.admit(x, vm).unwrap();
        assert_eq!(a.admit(x, vm).unwrap_err(), Refused::TooManyFromSource);
        let _p3 = a.admit(y, vm).unwrap();
        assert_eq!(
            a.admit("203.0.113.3".parse().unwrap(), vm).unwrap_err(),
            Refused::TooMany
        );
        // The public pool is full; loopback still gets its reserve, once.
        let l1 = a.admit(lo, lo).unwrap();
        assert_eq!(a.admit(lo, lo).unwrap_err(), Refused::TooMany);
        // IPv4-mapped loopback is the same source as loopback.
        let one = Admission::new(limits(10, 1, 0));
        let _held = one.admit(lo, lo).unwrap();
        assert_eq!(
            one.admit("::ffff:127.0.0.1".parse().unwrap(), lo)
                .unwrap_err(),
            Refused::TooManyFromSource
        );
        assert_eq!(a.open(), 4);
        drop(p1);
        drop(l1);
        assert_eq!(a.open(), 2);
        let _ = a.admit(x, vm).unwrap();
    }

    #[test]
    fn a_caller_on_this_host_gets_the_reserve_through_the_vms_address() {
        let a = Admission::new(limits(1, 10, 1));
        let vm: IpAddr = "198.18.0.11".parse().unwrap();
        let _full = a.admit("203.0.113.1".parse().unwrap(), vm).unwrap();
        // keepalived's check on the VM, connecting to the VM's own address.
        let _check = a.admit(vm, vm).unwrap();
        // Another host cannot use the reserve, whatever address it reached.
        assert_eq!(
            a.admit("198.18.0.12".parse().unwrap(), vm).unwrap_err(),
            Refused::TooMany
        );
    }

    #[test]
    fn hyper_error_answers_become_json() {
        let hyper_431 =
            b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\ndate: x\r\n\r\n";
        let out = String::from_utf8(rewrite_automatic_error(hyper_431).unwrap()).unwrap();
        assert!(out.starts_with("HTTP/1.1 431 Request Header Fields Too Large\r\n"));
        assert!(out.contains("content-type: application/json"));
        let body = out.split("\r\n\r\n").nth(1).unwrap();
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(v["error"], "headers_too_large");
        assert!(out.contains(&format!("content-length: {}", body.len())));
        // The API's own answers pass untouched.
        for own in [
            &b"HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}"[..],
            b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n",
            b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n",
            b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\nextra",
        ] {
            assert!(rewrite_automatic_error(own).is_none());
        }
    }
}
