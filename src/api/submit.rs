//! The write path shared by the hook and `/v1`: store a command durably,
//! optionally wait until HAProxy serves it, and answer.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use axum::Json;
use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

use super::ApiState;
use super::error::ApiError;
use super::input::WaitQuery;
use crate::registry::{Change, Command, Op, Outcome};
use crate::status::rfc3339;

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
    /// Which change of that peer's registry this was, counted since its
    /// lbmesh started.
    #[serde(alias = "generation")]
    pub change: u64,
    /// With replicated acknowledgements (`registry.ack = "replicated"`):
    /// whether another peer confirmed it holds the change on its disk.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicated: Option<bool>,
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

/// The address a request came from, for the event log (none when the
/// router runs without a listener, as in unit tests).
pub(super) struct ClientIp(pub Option<IpAddr>);

impl<S: Send + Sync> FromRequestParts<S> for ClientIp {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(ClientIp(
            parts
                .extensions
                .get::<ConnectInfo<SocketAddr>>()
                .map(|c| c.0.ip()),
        ))
    }
}

/// Stores a command durably and, if asked, waits until HAProxy serves it.
pub(super) async fn submit(
    st: &ApiState,
    cmd: Command,
    wait: WaitQuery,
    client: ClientIp,
) -> Result<ChangeResponse, ApiError> {
    let started = std::time::Instant::now();
    let accepted = st.registry.submit(cmd).await?;
    if accepted.replicated == Some(true) {
        st.metrics
            .replication_seconds
            .observe(started.elapsed().as_secs_f64());
    }
    let change = accepted.change;
    let lease_end = match &change.entry.op {
        Op::Add { expires_ms, .. } if !change.entry.is_delete() => Some(*expires_ms),
        _ => None,
    };
    let peer = st.registry.with(|r| r.node().to_string());
    let lease_seconds = |now: u64| lease_end.map(|e| e.saturating_sub(now).div_ceil(1000));
    st.registry.events().write(
        change.outcome,
        &change.key,
        change.name.as_str(),
        lease_seconds(st.registry.now_ms()),
        &peer,
        client.0,
    );
    let (applied, apply_error) = match wait.wait {
        None => (None, None),
        Some(timeout) => {
            let (ok, err) = wait_applied(st, &change, timeout).await;
            (Some(ok), err)
        }
    };
    Ok(ChangeResponse {
        result: change.outcome,
        frontend_port: change.key.frontend,
        server: change.key.server.to_string(),
        name: change.name.to_string(),
        lease_seconds: lease_seconds(st.registry.now_ms()),
        expires_at: lease_end.map(rfc3339),
        peer,
        change: change.generation,
        replicated: accepted.replicated,
        applied,
        apply_error,
    })
}

/// Waits until the applier has applied a view including `change`.
async fn wait_applied(st: &ApiState, change: &Change, timeout: Duration) -> (bool, Option<String>) {
    let mut rx = st.apply.clone();
    let reached = tokio::time::timeout(
        timeout,
        rx.wait_for(|s| s.settled(change.config_generation, change.key.frontend)),
    )
    .await;
    let status = match reached {
        Ok(Ok(s)) => s.clone(),
        Ok(Err(_)) => return (false, Some("the applier stopped".into())),
        Err(_) => {
            let waiting = st
                .apply
                .borrow()
                .deferred
                .get(&change.key.frontend)
                .cloned();
            return (
                false,
                Some(match waiting {
                    Some(why) => format!(
                        "HAProxy did not apply the change within {} s: {why}",
                        timeout.as_secs()
                    ),
                    None => format!(
                        "HAProxy did not apply the change within {} s",
                        timeout.as_secs()
                    ),
                }),
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

/// The response to a write, counted in metrics under `route`.
pub(super) fn respond(
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
