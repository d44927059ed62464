//! The HTTP ceiling of the renewal benchmark (`bench/renewals`): lbmesh's own
//! HTTP stack (`lbmesh::api::serve`, hyper with an axum router, the default
//! connection admission) with a single
//! handler that checks the token header, parses the original phone-home
//! client's JSON body and answers a small JSON. Nothing lbmesh does per
//! renewal is in it, so lbmesh's renewal rate divided by this one's, measured
//! under the same load in the same run, is what lbmesh's own work costs.
//!
//! With `--unguarded` it serves the same router on the same hyper builder
//! without the API's guards: no connection admission (caps), no header,
//! body or idle timeouts and no activity watch on the byte stream. The
//! benchmark measures both in the same run to show what the guards cost.
//!
//! ```text
//! cargo build --release --example http_ceiling
//! target/release/examples/http_ceiling 127.0.0.1:0 [--unguarded]   # prints its address
//! ```

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use serde::Deserialize;

/// The body the original client sends, every value a string.
#[derive(Deserialize)]
struct Hook {
    name: String,
    #[serde(rename = "frontend-port")]
    frontend_port: String,
    #[serde(rename = "backend-port")]
    backend_port: String,
    #[serde(rename = "dst-ip")]
    dst_ip: String,
    action: String,
    #[serde(rename = "send-proxy", default)]
    _send_proxy: String,
}

async fn hook(headers: HeaderMap, body: Bytes) -> Result<Json<serde_json::Value>, StatusCode> {
    if headers.get("x-funkypenguin-token").is_none() {
        return Err(StatusCode::UNAUTHORIZED);
    }
    let h: Hook = serde_json::from_slice(&body).map_err(|_| StatusCode::BAD_REQUEST)?;
    Ok(Json(serde_json::json!({
        "result": if h.action == "add" { "renewed" } else { "deleted" },
        "frontend_port": h.frontend_port,
        "server": format!("{}:{}", h.dst_ip, h.backend_port),
        "name": h.name,
    })))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let unguarded = args.iter().any(|a| a == "--unguarded");
    let addr = args
        .iter()
        .find(|a| !a.starts_with("--"))
        .cloned()
        .unwrap_or_else(|| "127.0.0.1:0".into());
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    println!("{}", listener.local_addr()?);
    let app = Router::new().route("/hooks/update-haproxy", post(hook));
    if unguarded {
        serve_unguarded(listener, app).await
    } else {
        let (_stop, shutdown) = tokio::sync::watch::channel(false);
        let admission = lbmesh::api::Admission::new(lbmesh::api::ConnLimits::default());
        lbmesh::api::serve(listener, None, app, admission, None, shutdown).await;
        Ok(())
    }
}

/// `lbmesh::api::serve` without its guards: every connection is served at
/// once on the plain stream, with no timer, cap or idle check.
async fn serve_unguarded(listener: tokio::net::TcpListener, app: Router) -> anyhow::Result<()> {
    use hyper_util::rt::{TokioExecutor, TokioIo};
    use tower::ServiceExt;
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder.http1().max_buf_size(16 * 1024).max_headers(100);
    let builder = std::sync::Arc::new(builder);
    loop {
        let (tcp, peer) = listener.accept().await?;
        let _ = tcp.set_nodelay(true);
        let app = app.clone();
        let service =
            hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
                req.extensions_mut()
                    .insert(axum::extract::ConnectInfo(peer));
                app.clone().oneshot(req)
            });
        let builder = builder.clone();
        tokio::spawn(async move {
            let _ = builder.serve_connection(TokioIo::new(tcp), service).await;
        });
    }
}
