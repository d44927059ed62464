//! `GET /healthz` (what keepalived's check asks) and `GET /metrics`.

use std::time::Instant;

use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::ApiState;
use crate::haproxy::apply::ApplyStatus;
use crate::haproxy::process::health_probe;

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

/// 200 when this peer can serve: storage works, HAProxy answers on its
/// health socket, and it runs the config the registry asks for.
pub(super) async fn healthz(State(st): State<ApiState>) -> Response {
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

pub(super) async fn metrics(State(st): State<ApiState>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        st.metrics.encode(),
    )
        .into_response()
}
