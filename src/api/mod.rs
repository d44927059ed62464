//! The HTTP API: the original phone-home hook, the typed `/v1` API, status,
//! health and metrics; served over plain HTTP or TLS.

pub mod error;
pub mod input;
mod server;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

pub use error::ApiError;
pub use server::{SharedTls, reload_tls_on_change, serve, tls_acceptor};

use self::input::{BodyFormat, WaitQuery, body_format, hook_command, parse_fields, wait_query};
use crate::haproxy::apply::ApplyStatus;
use crate::haproxy::process::{Haproxy, health_probe};
use crate::keepalived::{Notification, Vrrp};
use crate::metrics::Metrics;
use crate::registry::types::{parse_port, parse_server_ip};
use crate::registry::{Change, Command, Key, Outcome, RegistryView, ServiceName};
use crate::secret::Token;
use crate::shared::SharedRegistry;
use crate::status::{
    ApplyReportOut, HaproxyStatus, NodeStatus, PeerStatus, RegistryStatus, VrrpStatus, rfc3339,
};

/// Supplies the mesh part of the status (peers, convergence); the single-peer
/// daemon reports only itself.
pub trait MeshStatus: Send + Sync + 'static {
    fn peers(&self) -> Vec<PeerStatus>;
}

/// Everything the handlers share.
#[derive(Clone)]
pub struct ApiState {
    pub registry: Arc<SharedRegistry>,
    pub token: Arc<Token>,
    pub apply: watch::Receiver<ApplyStatus>,
    pub haproxy: Haproxy,
    pub metrics: Arc<Metrics>,
    pub max_body_bytes: usize,
    pub max_wait: Duration,
    pub started: Instant,
    pub mesh: Option<Arc<dyn MeshStatus>>,
    pub vrrp: Option<Vrrp>,
    /// How long this peer's config may differ from the mesh majority.
    pub max_lag: Duration,
    /// Since when it has differed, if it does.
    pub lag_since: Arc<std::sync::Mutex<Option<Instant>>>,
}

/// Builds the router.
pub fn router(state: ApiState) -> Router {
    let limit = state.max_body_bytes;
    Router::new()
        .route("/hooks/update-haproxy", post(hook))
        .route("/v1/frontends", get(list_frontends))
        .route("/v1/frontends/{frontend_port}", get(get_frontend))
        .route(
            "/v1/frontends/{frontend_port}/servers/{ip}/{port}",
            put(register).delete(deregister),
        )
        .route("/v1/status", get(status))
        .route("/v1/whoami", get(whoami))
        .route("/v1/vrrp", post(report_vrrp))
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .fallback(|| async { ApiError::NotFound("no such endpoint".into()) })
        .layer(DefaultBodyLimit::max(limit))
        .with_state(state)
}

/// The token from `X-Funkypenguin-Token` or `Authorization: Bearer`.
fn authorize(st: &ApiState, headers: &HeaderMap) -> Result<(), ApiError> {
    let presented = headers
        .get("x-funkypenguin-token")
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .or_else(|| {
            headers
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "))
                .map(str::trim)
        });
    match presented {
        None | Some("") => Err(ApiError::MissingToken),
        Some(t) if st.token.matches(t) => Ok(()),
        Some(_) => Err(ApiError::WrongToken),
    }
}

fn body_bytes(st: &ApiState, body: Result<Bytes, BytesRejection>) -> Result<Bytes, ApiError> {
    body.map_err(|r| {
        if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::TooLarge(st.max_body_bytes)
        } else {
            ApiError::BadRequest(format!("cannot read the request body: {r}"))
        }
    })
}

/// The answer to an accepted write.
#[derive(Debug, Serialize, Deserialize)]
pub struct ChangeResponse {
    pub result: Outcome,
    pub frontend_port: u16,
    pub server: String,
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease_seconds: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,
    /// The peer that accepted the write.
    pub peer: String,
    pub generation: u64,
    /// With `?wait=applied`: whether HAProxy serves the change.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub applied: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub apply_error: Option<String>,
}

fn outcome_label(o: Outcome) -> &'static str {
    match o {
        Outcome::Registered => "registered",
        Outcome::Renewed => "renewed",
        Outcome::Updated => "updated",
        Outcome::Deleted => "deleted",
        Outcome::Absent => "absent",
    }
}

/// Stores a command durably and, if asked, waits until HAProxy serves it.
async fn submit(st: &ApiState, cmd: Command, wait: WaitQuery) -> Result<ChangeResponse, ApiError> {
    let change = st.registry.submit(cmd).await?;
    let (applied, apply_error) = match wait.wait {
        None => (None, None),
        Some(timeout) => {
            let (ok, err) = wait_applied(st, &change, timeout).await;
            (Some(ok), err)
        }
    };
    let now = st.registry.now_ms();
    let expires = match &change.entry.op {
        crate::registry::Op::Add { expires_ms, .. } if !change.entry.is_delete() => {
            Some(*expires_ms)
        }
        _ => None,
    };
    Ok(ChangeResponse {
        result: change.outcome,
        frontend_port: change.key.frontend,
        server: change.key.server.to_string(),
        name: change.name.to_string(),
        lease_seconds: expires.map(|e| e.saturating_sub(now).div_ceil(1000)),
        expires_at: expires.map(rfc3339),
        peer: st.registry.with(|r| r.node().to_string()),
        generation: change.generation,
        applied,
        apply_error,
    })
}

/// Waits until the applier has applied a view including `change`.
async fn wait_applied(st: &ApiState, change: &Change, timeout: Duration) -> (bool, Option<String>) {
    let mut rx = st.apply.clone();
    let reached = tokio::time::timeout(
        timeout,
        rx.wait_for(|s| s.config_generation >= change.config_generation && s.last.is_some()),
    )
    .await;
    let status = match reached {
        Ok(Ok(s)) => s.clone(),
        Ok(Err(_)) => return (false, Some("the applier stopped".into())),
        Err(_) => {
            return (
                false,
                Some(format!(
                    "HAProxy did not apply the change within {} s",
                    timeout.as_secs()
                )),
            );
        }
    };
    if let Some(why) = status.quarantined.get(&change.key.frontend) {
        return (
            false,
            Some(format!(
                "frontend {} is quarantined: {why}",
                change.key.frontend
            )),
        );
    }
    match &status.last {
        Some(l) if l.ok => (true, None),
        Some(l) => (false, l.error.clone()),
        None => (false, None),
    }
}

async fn hook(
    State(st): State<ApiState>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let result = async {
        authorize(&st, &headers)?;
        let body = body_bytes(&st, body)?;
        let format = body_format(
            headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok()),
        )?;
        let wait = wait_query(query.as_deref(), st.max_wait)?;
        let cmd = hook_command(&parse_fields(format, &body)?)?;
        submit(&st, cmd, wait).await
    }
    .await;
    respond(&st, "hook", result)
}

fn respond(
    st: &ApiState,
    route: &'static str,
    result: Result<ChangeResponse, ApiError>,
) -> Response {
    match result {
        Ok(r) => {
            st.metrics.request(route, outcome_label(r.result));
            Json(r).into_response()
        }
        Err(e) => {
            st.metrics.request(route, e.code());
            e.into_response()
        }
    }
}

/// Body of `PUT /v1/frontends/{frontend_port}/servers/{ip}/{port}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RegisterBody {
    name: ServiceName,
    #[serde(default)]
    send_proxy: bool,
    #[serde(default)]
    ttl_seconds: Option<u64>,
}

fn path_key(frontend: &str, ip: &str, port: &str) -> Result<Key, ApiError> {
    Ok(Key {
        frontend: parse_port("frontend_port", frontend)?,
        server: SocketAddr::new(parse_server_ip("ip", ip)?, parse_port("port", port)?),
    })
}

async fn register(
    State(st): State<ApiState>,
    Path((frontend, ip, port)): Path<(String, String, String)>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let result = async {
        authorize(&st, &headers)?;
        let key = path_key(&frontend, &ip, &port)?;
        let body = body_bytes(&st, body)?;
        if body_format(
            headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok()),
        )? != BodyFormat::Json
        {
            return Err(ApiError::UnsupportedMediaType(
                "form (this endpoint takes JSON)".into(),
            ));
        }
        let wait = wait_query(query.as_deref(), st.max_wait)?;
        let b: RegisterBody = serde_json::from_slice(&body)
            .map_err(|e| ApiError::BadRequest(format!("bad body: {e}")))?;
        let cmd = Command::Register {
            key,
            name: b.name,
            send_proxy: b.send_proxy,
            ttl: b.ttl_seconds.map(Duration::from_secs),
        };
        submit(&st, cmd, wait).await
    }
    .await;
    respond(&st, "v1_register", result)
}

async fn deregister(
    State(st): State<ApiState>,
    Path((frontend, ip, port)): Path<(String, String, String)>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Response {
    let result = async {
        authorize(&st, &headers)?;
        let key = path_key(&frontend, &ip, &port)?;
        let wait = wait_query(query.as_deref(), st.max_wait)?;
        let pairs: Vec<(String, String)> =
            serde_urlencoded::from_str(query.as_deref().unwrap_or("")).unwrap_or_default();
        let name = pairs
            .iter()
            .find(|(k, _)| k == "name")
            .map(|(_, v)| v.as_str())
            .ok_or_else(|| {
                crate::registry::FieldError::new("name", "is required as a query parameter")
            })?;
        let name = ServiceName::parse_field("name", name)?;
        submit(&st, Command::Delete { key, name }, wait).await
    }
    .await;
    respond(&st, "v1_delete", result)
}

#[derive(Serialize)]
struct ServerOut {
    address: String,
    send_proxy: bool,
    since: String,
    expires_at: String,
    expires_in_seconds: u64,
    origin: String,
}

#[derive(Serialize)]
struct FrontendOut {
    port: u16,
    owner: String,
    servers: Vec<ServerOut>,
    #[serde(skip_serializing_if = "Option::is_none")]
    quarantined: Option<String>,
}

fn frontend_out(f: &crate::registry::FrontendView, now: u64, apply: &ApplyStatus) -> FrontendOut {
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
            })
            .collect(),
        quarantined: apply.quarantined.get(&f.port).cloned(),
    }
}

async fn list_frontends(State(st): State<ApiState>, headers: HeaderMap) -> Response {
    if let Err(e) = authorize(&st, &headers) {
        st.metrics.request("v1_list", e.code());
        return e.into_response();
    }
    st.metrics.request("v1_list", "ok");
    let now = st.registry.now_ms();
    let view: RegistryView = st.registry.view();
    let apply = st.apply.borrow().clone();
    Json(serde_json::json!({
        "generation": view.generation,
        "digest": view.digest(),
        "frontends": view.frontends.values().map(|f| frontend_out(f, now, &apply)).collect::<Vec<_>>(),
        "conflicts": view.conflicts,
    }))
    .into_response()
}

async fn get_frontend(
    State(st): State<ApiState>,
    Path(port): Path<String>,
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
        Ok(frontend_out(f, st.registry.now_ms(), &st.apply.borrow()))
    })();
    match result {
        Ok(f) => Json(f).into_response(),
        Err(e) => e.into_response(),
    }
}

/// Whether HAProxy serves the latest registry change (not only the last one
/// the applier picked up).
fn apply_in_step(st: &ApiState, apply: &ApplyStatus) -> bool {
    apply.in_step() && apply.config_generation >= st.registry.config_generation()
}

/// The status of this peer (and, in a mesh, of every peer it knows).
pub async fn node_status(st: &ApiState) -> NodeStatus {
    let now = st.registry.now_ms();
    let summary = st.registry.with(|r| r.summary(now));
    let generation = st.registry.with(|r| r.generation());
    let apply = st.apply.borrow().clone();
    let running = st.haproxy.is_serving().await;
    let node_id = st.registry.with(|r| r.node().to_string());
    let peers = st.mesh.as_ref().map(|m| m.peers()).unwrap_or_default();
    let live: Vec<&PeerStatus> = peers.iter().filter(|p| p.live).collect();
    let masters = crate::mesh::vrrp_masters(&peers);
    let converged = live.windows(2).all(|w| {
        w[0].registry_digest == w[1].registry_digest && w[0].config_digest == w[1].config_digest
    });
    NodeStatus {
        node_id,
        version: env!("CARGO_PKG_VERSION").into(),
        uptime_seconds: st.started.elapsed().as_secs(),
        registry: RegistryStatus {
            digest: summary.digest,
            generation,
            frontends: summary.frontends,
            servers: summary.servers,
            conflicts: summary.conflicts,
        },
        haproxy: HaproxyStatus {
            mode: if st.haproxy.is_supervised() {
                "supervised"
            } else {
                "external"
            }
            .into(),
            running,
            master_pid: st.haproxy.state().master_pid(),
            restarts: st.haproxy.state().restarts(),
            in_step: apply_in_step(st, &apply),
            config_digest: apply.config_digest.clone(),
            wanted_config_digest: apply.wanted_config_digest.clone(),
            last_apply: apply.last.as_ref().map(ApplyReportOut::from),
            quarantined: apply.quarantined.clone(),
            reloads: apply.reloads,
            runtime_updates: apply.runtime_updates,
        },
        storage_ok: !st.registry.store().is_failed(),
        vrrp: VrrpStatus {
            state: st
                .vrrp
                .as_ref()
                .and_then(Vrrp::current)
                .map(|n| format!("{} {}", n.state, n.name)),
            split_brain: masters.len() > 1,
            masters,
        },
        peers,
        converged,
    }
}

async fn status(State(st): State<ApiState>, headers: HeaderMap) -> Response {
    if let Err(e) = authorize(&st, &headers) {
        return e.into_response();
    }
    Json(node_status(&st).await).into_response()
}

/// keepalived's notify hook (`lbmesh keepalived notify`) reports this peer's VRRP state.
async fn report_vrrp(
    State(st): State<ApiState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let result = (|| -> Result<Notification, ApiError> {
        authorize(&st, &headers)?;
        let body = body_bytes(&st, body)?;
        let raw: serde_json::Value = serde_json::from_slice(&body)
            .map_err(|e| ApiError::BadRequest(format!("body is not valid JSON: {e}")))?;
        let field = |k: &str| raw.get(k).and_then(|v| v.as_str());
        let priority = raw
            .get("priority")
            .filter(|p| !p.is_null())
            .map(|p| p.to_string().trim_matches('"').to_owned());
        Notification::new(
            field("kind").unwrap_or("INSTANCE"),
            field("name").ok_or_else(|| ApiError::BadRequest("name is required".into()))?,
            field("state").ok_or_else(|| ApiError::BadRequest("state is required".into()))?,
            priority.as_deref(),
        )
        .map_err(ApiError::BadRequest)
    })();
    match (result, &st.vrrp) {
        (Ok(n), Some(v)) => {
            v.report(n.clone());
            st.metrics.request("vrrp", "ok");
            Json(n).into_response()
        }
        (Ok(_), None) => ApiError::NotFound("VRRP reporting is not enabled".into()).into_response(),
        (Err(e), _) => {
            st.metrics.request("vrrp", e.code());
            e.into_response()
        }
    }
}

/// Whether this peer's HAProxy config has differed from what most live peers
/// serve for longer than `max_lag`; the reason if so.
fn mesh_lag(st: &ApiState, apply: &ApplyStatus) -> Option<String> {
    let peers = st.mesh.as_ref()?.peers();
    let mine = apply.config_digest.clone()?;
    let live: Vec<&str> = peers
        .iter()
        .filter(|p| p.live)
        .filter_map(|p| p.config_digest.as_deref())
        .collect();
    let mut counts: std::collections::BTreeMap<&str, usize> = std::collections::BTreeMap::new();
    for d in &live {
        *counts.entry(d).or_default() += 1;
    }
    let majority = counts
        .iter()
        .find(|(_, n)| **n * 2 > live.len())
        .map(|(d, _)| (*d).to_owned());
    let mut since = st.lag_since.lock().unwrap_or_else(|p| p.into_inner());
    match majority {
        Some(m) if m != mine => {
            let start = *since.get_or_insert_with(Instant::now);
            (start.elapsed() > st.max_lag).then(|| {
                format!(
                    "this peer's HAProxy config ({mine}) has differed from what most live peers serve ({m}) for {} s",
                    start.elapsed().as_secs()
                )
            })
        }
        _ => {
            *since = None;
            None
        }
    }
}

/// The address the caller connects from: lets a phone-home client learn its
/// node IP from the peer instead of a third-party service.
async fn whoami(
    axum::extract::ConnectInfo(peer): axum::extract::ConnectInfo<SocketAddr>,
) -> Json<serde_json::Value> {
    Json(serde_json::json!({ "ip": peer.ip().to_string() }))
}

/// 200 when this peer can serve: storage works, HAProxy answers on its
/// health socket, and it runs the config the registry asks for.
async fn healthz(State(st): State<ApiState>) -> Response {
    let mut problems = Vec::new();
    if st.registry.store().is_failed() {
        problems.push("storage failed; writes are refused".to_string());
    }
    if let Err(e) = health_probe(&st.haproxy).await {
        problems.push(format!("HAProxy does not answer: {e}"));
    }
    let apply = st.apply.borrow().clone();
    // A change waits a few milliseconds for its apply; only a lasting lag is a problem.
    let lagging = apply.config_generation < st.registry.config_generation()
        && apply
            .last
            .as_ref()
            .is_none_or(|l| st.registry.now_ms().saturating_sub(l.at_ms) > 5_000);
    if !apply.in_step() || lagging {
        match &apply.last {
            None => problems.push("HAProxy has not been configured yet".into()),
            Some(l) if !l.ok => problems.push(format!(
                "last apply failed: {}",
                l.error.as_deref().unwrap_or("unknown error")
            )),
            Some(_) => {
                problems.push("HAProxy does not run the config the registry asks for yet".into())
            }
        }
    }
    if let Some(lag) = mesh_lag(&st, &apply) {
        problems.push(lag);
    }
    let quarantined: Vec<u16> = apply.quarantined.keys().copied().collect();
    if problems.is_empty() {
        Json(serde_json::json!({ "status": "ok", "quarantined": quarantined })).into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(serde_json::json!({ "status": "unhealthy", "problems": problems })),
        )
            .into_response()
    }
}

async fn metrics(State(st): State<ApiState>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        st.metrics.encode(),
    )
        .into_response()
}
