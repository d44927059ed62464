//! The typed reads: `GET /v1/frontends[/{frontend_port}]` and `GET /v1/whoami`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::Json;
use axum::extract::{ConnectInfo, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use super::ApiState;
use super::auth::authorize;
use super::error::ApiError;
use super::extract::ApiPath;
use crate::haproxy::stats::{Health, ServerHealth};
use crate::registry::types::parse_port;
use crate::registry::{FrontendView, Origin, ServiceName};

/// One server as the API shows it. Borrows the view and formats while it
/// is written: a list of 100,000 servers costs the bytes of the answer,
/// not a copy of every field first.
#[derive(Serialize)]
struct ServerOut<'a> {
    address: &'a SocketAddr,
    send_proxy: bool,
    since: Rfc3339,
    expires_at: Rfc3339,
    expires_in_seconds: u64,
    origin: &'a Origin,
    /// What HAProxy's health check says, once it has been read.
    #[serde(skip_serializing_if = "Option::is_none")]
    health: Option<Health>,
}

/// A time in milliseconds since the epoch, written as RFC 3339 (seconds).
struct Rfc3339(u64);

impl Serialize for Rfc3339 {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(self.0);
        s.collect_str(&humantime::format_rfc3339_seconds(t))
    }
}

#[derive(Serialize)]
struct FrontendOut<'a> {
    port: u16,
    owner: &'a ServiceName,
    servers: ServersOut<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    quarantined: Option<&'a String>,
}

/// The servers of one frontend, written one by one.
struct ServersOut<'a> {
    frontend: &'a FrontendView,
    now: u64,
    health: Option<&'a BTreeMap<SocketAddr, Health>>,
}

impl Serialize for ServersOut<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.frontend.servers.iter().map(|(addr, v)| ServerOut {
            address: addr,
            send_proxy: v.send_proxy,
            since: Rfc3339(v.since_ms),
            expires_at: Rfc3339(v.expires_ms),
            expires_in_seconds: v.expires_ms.saturating_sub(self.now) / 1000,
            origin: &v.origin,
            health: self.health.and_then(|h| h.get(addr)).copied(),
        }))
    }
}

/// One frontend as the API shows it; `quarantined` is what the applier
/// leaves out.
pub(super) fn frontend_out<'a>(
    f: &'a FrontendView,
    now: u64,
    quarantined: &'a BTreeMap<u16, String>,
    health: &'a ServerHealth,
) -> impl Serialize + 'a {
    FrontendOut {
        port: f.port,
        owner: &f.owner,
        servers: ServersOut {
            frontend: f,
            now,
            health: health.frontends.get(&f.port),
        },
        quarantined: quarantined.get(&f.port),
    }
}

pub(super) async fn list_frontends(
    State(st): State<Arc<ApiState>>,
    headers: HeaderMap,
) -> Response {
    if let Err(e) = authorize(&st, &headers) {
        st.metrics.request("v1_list", e.code());
        return e.into_response();
    }
    st.metrics.request("v1_list", "ok");
    super::listing::response(st)
}

pub(super) async fn get_frontend(
    State(st): State<Arc<ApiState>>,
    ApiPath(port): ApiPath<String>,
    headers: HeaderMap,
) -> Response {
    let port = match authorize(&st, &headers)
        .and_then(|()| parse_port("frontend_port", &port).map_err(ApiError::from))
    {
        Ok(port) => port,
        Err(e) => return e.into_response(),
    };
    let Some(f) = st.registry.frontend_view(port) else {
        return ApiError::NotFound(format!("no frontend on port {port}")).into_response();
    };
    let quarantined = st.apply.borrow().quarantined.clone();
    let health = st.health.borrow().clone();
    Json(frontend_out(
        &f,
        st.registry.now_ms(),
        &quarantined,
        &health,
    ))
    .into_response()
}

/// The address the caller connects from: lets a phone-home client learn its
/// node IP from the peer instead of a third-party service.
pub(super) async fn whoami(ConnectInfo(peer): ConnectInfo<SocketAddr>) -> Json<serde_json::Value> {
    Json(serde_json::json!({ "ip": peer.ip().to_string() }))
}
