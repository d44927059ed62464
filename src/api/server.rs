//! Serving the router on a bound listener, over plain HTTP or TLS, until shutdown.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt;

use super::guard::{Activity, Admission, Watched};

/// Builds a TLS acceptor from PEM files (a certbot `fullchain.pem` and `privkey.pem` work).
pub fn tls_acceptor(cert: &Path, key: &Path) -> anyhow::Result<TlsAcceptor> {
    use anyhow::Context;
    let certs = rustls_pemfile::certs(&mut std::io::BufReader::new(
        std::fs::File::open(cert)
            .with_context(|| format!("open TLS certificate {}", cert.display()))?,
    ))
    .collect::<Result<Vec<_>, _>>()
    .with_context(|| format!("read TLS certificate {}", cert.display()))?;
    if certs.is_empty() {
        anyhow::bail!("{} holds no PEM certificate", cert.display());
    }
    let key = rustls_pemfile::private_key(&mut std::io::BufReader::new(
        std::fs::File::open(key).with_context(|| format!("open TLS key {}", key.display()))?,
    ))
    .with_context(|| format!("read TLS key {}", key.display()))?
    .with_context(|| format!("{} holds no PEM private key", key.display()))?;
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .context("TLS protocol versions")?
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .context("TLS certificate and key do not fit together")?;
    let mut config = config;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// A TLS acceptor that can be replaced while serving (a renewed certificate).
pub type SharedTls = Arc<arc_swap::ArcSwap<TlsAcceptor>>;

/// Reloads the certificate and key when either file changes (certbot renews
/// in place), checking every `every`; a bad new pair is logged and the
/// current one kept.
pub async fn reload_tls_on_change(
    tls: SharedTls,
    cert: std::path::PathBuf,
    key: std::path::PathBuf,
    every: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    let stamp = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    let mut seen = (stamp(&cert), stamp(&key));
    loop {
        tokio::select! {
            () = tokio::time::sleep(every) => {}
            () = crate::shutdown::signalled(&mut shutdown) => return,
        }
        let now = (stamp(&cert), stamp(&key));
        if now == seen {
            continue;
        }
        match tls_acceptor(&cert, &key) {
            Ok(acceptor) => {
                tls.store(Arc::new(acceptor));
                seen = now;
                tracing::info!(cert = %cert.display(), "loaded the renewed API certificate");
            }
            // Perhaps caught between writing the two files: try again next time.
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "cannot load the changed API certificate; keeping the current one")
            }
        }
    }
}

/// Serves `app` on `listener` until `shutdown` turns true, then lets requests
/// in flight finish (up to 10 s). Every connection is admitted against
/// `admission` first: one over a cap is closed at once, so a flood costs an
/// accept and a close, never a task, a buffer or a descriptor held.
pub async fn serve(
    listener: TcpListener,
    tls: Option<SharedTls>,
    app: Router,
    admission: Arc<Admission>,
    metrics: Option<Arc<crate::metrics::Metrics>>,
    mut shutdown: watch::Receiver<bool>,
) {
    let limits = admission.limits().clone();
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .max_buf_size(MAX_HEADER_BYTES)
        .max_headers(100);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(32)
        .max_header_list_size(MAX_HEADER_BYTES as u32)
        .keep_alive_interval(Some(Duration::from_secs(20)))
        .keep_alive_timeout(Duration::from_secs(10));
    let builder = Arc::new(builder);
    loop {
        let (tcp, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    // Out of file descriptors and the like: back off, keep serving.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = crate::shutdown::signalled(&mut shutdown) => break,
        };
        let to = tcp.local_addr().map_or(peer.ip(), |a| a.ip());
        let permit = match admission.admit(peer.ip(), to) {
            Ok(p) => p,
            Err(why) => {
                if let Some(m) = &metrics {
                    m.refused_api_connection(why.label());
                }
                // Closed at once: reset rather than linger in FIN-WAIT.
                let _ = socket2::SockRef::from(&tcp).set_linger(Some(Duration::ZERO));
                drop(tcp);
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let activity = Activity::new();
        let app = app.clone();
        let running = activity.clone();
        let service = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
            req.extensions_mut().insert(ConnectInfo(peer));
            let guard = running.request();
            let call = app.clone().oneshot(req);
            async move {
                let r = call.await;
                drop(guard);
                r
            }
        });
        let builder = builder.clone();
        let tls = tls.as_ref().map(|t| t.load_full());
        let shutdown = shutdown.clone();
        let idle = limits.idle_timeout;
        let handshake = limits.header_timeout;
        tokio::spawn(async move {
            let _permit = permit;
            match tls {
                None => {
                    let io = Watched::new(tcp, activity.clone());
                    run_connection(&builder, io, service, activity, idle, shutdown).await
                }
                Some(acceptor) => {
                    let stream = match tokio::time::timeout(handshake, acceptor.accept(tcp)).await {
                        Ok(Ok(s)) => s,
                        Ok(Err(e)) => {
                            tracing::debug!(%peer, error = %e, "TLS handshake failed");
                            return;
                        }
                        Err(_) => return,
                    };
                    let io = Watched::new(stream, activity.clone());
                    run_connection(&builder, io, service, activity, idle, shutdown).await
                }
            }
        });
    }
    drop(listener);
    // Connections see the same signal and finish their requests; wait for them.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while admission.open() > 0 {
        if tokio::time::Instant::now() >= deadline {
            tracing::warn!(
                open = admission.open(),
                "requests still running after 10 s; closing them"
            );
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The largest request head (and HTTP/1 read buffer) a connection may hold.
const MAX_HEADER_BYTES: usize = 16 * 1024;

/// Serves one connection until it ends, is idle for `idle`, or shutdown.
async fn run_connection<I, S>(
    builder: &auto::Builder<TokioExecutor>,
    io: Watched<I>,
    service: S,
    activity: Arc<Activity>,
    idle: Duration,
    mut shutdown: watch::Receiver<bool>,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    S: hyper::service::Service<
            hyper::Request<Incoming>,
            Response = axum::response::Response,
            Error = std::convert::Infallible,
        > + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    let conn = builder.serve_connection(TokioIo::new(io), service);
    tokio::pin!(conn);
    let mut check = tokio::time::interval((idle / 4).max(Duration::from_millis(100)));
    let mut closing: Option<tokio::time::Instant> = None;
    loop {
        tokio::select! {
            _ = conn.as_mut() => return,
            _ = check.tick() => {
                if closing.is_some_and(|t| t.elapsed() > Duration::from_secs(10)) {
                    return;
                }
                if closing.is_none() && activity.idle_for(idle) {
                    conn.as_mut().graceful_shutdown();
                    closing = Some(tokio::time::Instant::now());
                }
            }
            () = crate::shutdown::signalled(&mut shutdown), if closing.is_none() => {
                conn.as_mut().graceful_shutdown();
                closing = Some(tokio::time::Instant::now());
            }
        }
    }
}
