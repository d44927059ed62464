//! The HTTP API: the original phone-home hook, the typed `/v1` API, status,
//! health and metrics; served over plain HTTP or TLS.
//!
//! One module per group of routes; `error` maps every failure to its HTTP
//! status and JSON body, `input` parses what clients send.

mod auth;
pub mod drain;
pub mod error;
mod events;
mod extract;
pub mod guard;
mod health;
mod hook;
pub mod input;
mod listing;
mod page;
mod server;
mod status;
mod submit;
mod v1_read;
mod v1_write;
mod vrrp;

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post, put};
use tokio::sync::watch;

pub use error::ApiError;
pub use guard::{Admission, ConnLimits};
pub use health::health_problems;
pub use server::{SharedTls, reload_tls_on_change, serve, tls_acceptor};
pub use status::node_status;
pub use submit::ChangeResponse;

use crate::haproxy::apply::ApplyStatus;
use crate::haproxy::process::Haproxy;
use crate::haproxy::stats::ServerHealth;
use crate::keepalived::Vrrp;
use crate::mesh::MeshView;
use crate::metrics::Metrics;
use crate::secret::Token;
use crate::shared::SharedRegistry;

/// Everything the handlers share.
#[derive(Clone)]
pub struct ApiState {
    pub registry: Arc<SharedRegistry>,
    pub token: Arc<Token>,
    pub apply: watch::Receiver<ApplyStatus>,
    pub haproxy: Haproxy,
    pub metrics: Arc<Metrics>,
    pub max_body_bytes: usize,
    /// How long a client may take to send a request body.
    pub body_timeout: Duration,
    pub max_wait: Duration,
    pub started: Instant,
    /// The mesh as the mesh task last computed it.
    pub mesh: MeshView,
    pub vrrp: Option<Vrrp>,
    /// Who may hold the VIP, and the drain flag.
    pub failover: Option<crate::failover::Failover>,
    /// How long this peer's config may differ from the mesh majority.
    pub max_lag: Duration,
    /// Server health as HAProxy's checks last saw it.
    pub health: watch::Receiver<Arc<ServerHealth>>,
}

/// Builds the router.
pub fn router(state: ApiState) -> Router {
    let limit = state.max_body_bytes;
    Router::new()
        .route("/", get(page::index))
        .route("/ui/app.js", get(page::script))
        .route("/ui/app.css", get(page::style))
        .route("/hooks/update-haproxy", post(hook::hook))
        .route("/v1/frontends", get(v1_read::list_frontends))
        .route("/v1/frontends/{frontend_port}", get(v1_read::get_frontend))
        .route(
            "/v1/frontends/{frontend_port}/servers/{ip}/{port}",
            put(v1_write::register).delete(v1_write::deregister),
        )
        .route("/v1/status", get(status::status))
        .route("/v1/events", get(events::events))
        .route("/v1/whoami", get(v1_read::whoami))
        .route("/v1/vrrp", post(vrrp::report_vrrp))
        .route("/v1/drain", post(drain::drain))
        .route("/v1/undrain", post(drain::undrain))
        .route("/healthz", get(health::healthz))
        .route("/metrics", get(health::metrics))
        .fallback(|| async { ApiError::NotFound("no such endpoint".into()) })
        .method_not_allowed_fallback(|method: axum::http::Method| async move {
            ApiError::MethodNotAllowed(method.to_string())
        })
        .layer(DefaultBodyLimit::max(limit))
        .with_state(Arc::new(state))
}
