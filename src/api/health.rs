//! `GET /healthz` (what keepalived's check asks) and `GET /metrics`.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::ApiState;
use crate::haproxy::apply::ApplyStatus;
use crate::haproxy::process::health_probe;

/// Why the mesh holds this peer back, if it does: it has not caught up
/// since it started, or its config has differed from what most live peers
/// serve for longer than `max_lag` (timed by the mesh task from the moment
/// the difference began).
fn mesh_problems(st: &ApiState, apply: &ApplyStatus) -> Vec<String> {
    let snap = st.mesh.snapshot();
    let mesh = &snap.state;
    let mut problems = Vec::new();
    if !mesh.caught_up {
        problems.push(format!(
            "this peer has not caught up with the mesh since it started: {}",
            mesh.catching_up.as_deref().unwrap_or("starting")
        ));
    }
    if let (Some(lag), Some(majority)) = (
        mesh.lag(st.registry.now_ms()),
        mesh.majority_config_digest.as_deref(),
    ) {
        if lag > st.max_lag {
            problems.push(format!(
                "this peer's HAProxy config ({}) has differed from what most live peers serve ({majority}) for {} s",
                apply.config_digest.as_deref().unwrap_or("none"),
                lag.as_secs()
            ));
        }
    }
    problems
}

/// What keeps this peer from serving now (empty: healthy): storage failed,
/// HAProxy does not answer on its health socket, or does not run the config
/// the registry asks for, or this peer's config lags the mesh.
pub async fn health_problems(st: &ApiState) -> Vec<String> {
    let mut problems = Vec::new();
    if let Some(why) = st.registry.store().failure() {
        problems.push(format!(
            "the last write to disk failed ({why}); writes are refused until one succeeds"
        ));
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
    problems.extend(mesh_problems(st, &apply));
    problems
}

/// 200 when this peer can serve (no [`health_problems`]).
pub(super) async fn healthz(State(st): State<Arc<ApiState>>) -> Response {
    let problems = health_problems(&st).await;
    let apply = st.apply.borrow().clone();
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

pub(super) async fn metrics(State(st): State<Arc<ApiState>>) -> Response {
    let now = st.registry.now_ms();
    let counts = st.registry.with(|r| r.refused_counts(now));
    st.metrics.set_refused(
        &counts
            .into_iter()
            .map(|((peer, reason), n)| ((peer.to_string(), reason), n))
            .collect(),
    );
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        st.metrics.encode(),
    )
        .into_response()
}
