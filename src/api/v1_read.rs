//! The typed reads: `GET /v1/frontends[/{frontend_port}]` and `GET /v1/whoami`.

use std::sync::Arc;

use std::net::SocketAddr;

use axum::Json;
use axum::extract::{ConnectInfo, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use super::ApiState;
use super::auth::authorize;
use super::error::ApiError;
use super::extract::ApiPath;
use crate::haproxy::apply::ApplyStatus;
use crate::haproxy::stats::{Health, ServerHealth};
use crate::registry::types::parse_port;
use crate::registry::{FrontendView, RegistryView};
use crate::status::rfc3339;

#[derive(Serialize)]
struct ServerOut {
    address: String,
    send_proxy: bool,
    since: String,
    expires_at: String,
    expires_in_seconds: u64,
    origin: String,
    /// What HAProxy's health check says, once it has been read.
    #[serde(skip_serializing_if = "Option::is_none")]
    health: Option<Health>,
}

#[derive(Serialize)]
struct FrontendOut {
    port: u16,
    owner: String,
    servers: Vec<ServerOut>,
    #[serde(skip_serializing_if = "Option::is_none")]
    quarantined: Option<String>,
}

fn frontend_out(
    f: &FrontendView,
    now: u64,
    apply: &ApplyStatus,
    health: &ServerHealth,
) -> FrontendOut {
    let served = health.frontends.get(&f.port);
    FrontendOut {
        port: f.port,
        owner: f.owner.to_string(),
        servers: f
            .servers
            .iter()
            .map(|(addr, s)| ServerOut {
                address: addr.to_string(),
                send_proxy: s.send_proxy,
                since: rfc3339(s.since_ms),
                expires_at: rfc3339(s.expires_ms),
                expires_in_seconds: s.expires_ms.saturating_sub(now) / 1000,
                origin: s.origin.to_string(),
                health: served.and_then(|h| h.get(addr)).copied(),
            })
            .collect(),
        quarantined: apply.quarantined.get(&f.port).cloned(),
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
    let now = st.registry.now_ms();
    let view: RegistryView = st.registry.view();
    let apply = st.apply.borrow().clone();
    let health = st.health.borrow().clone();
    Json(serde_json::json!({
        "changes": view.generation,
        "digest": view.digest(),
        "frontends": view.frontends.values().map(|f| frontend_out(f, now, &apply, &health)).collect::<Vec<_>>(),
        "conflicts": view.conflicts,
    }))
    .into_response()
}

pub(super) async fn get_frontend(
    State(st): State<Arc<ApiState>>,
    ApiPath(port): ApiPath<String>,
    headers: HeaderMap,
) -> Response {
    let result = (|| -> Result<FrontendOut, ApiError> {
        authorize(&st, &headers)?;
        let port = parse_port("frontend_port", &port)?;
        let view = st.registry.view();
        let f = view
            .frontends
            .get(&port)
            .ok_or_else(|| ApiError::NotFound(format!("no frontend on port {port}")))?;
        Ok(frontend_out(
            f,
            st.registry.now_ms(),
            &st.apply.borrow(),
            &st.health.borrow(),
        ))
    })();
    match result {
        Ok(f) => Json(f).into_response(),
        Err(e) => e.into_response(),
    }
}

/// The address the caller connects from: lets a phone-home client learn its
/// node IP from the peer instead of a third-party service.
pub(super) async fn whoami(ConnectInfo(peer): ConnectInfo<SocketAddr>) -> Json<serde_json::Value> {
    Json(serde_json::json!({ "ip": peer.ip().to_string() }))
}
