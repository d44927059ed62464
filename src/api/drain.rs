//! `POST /v1/drain` and `POST /v1/undrain`: a planned handoff. Drain makes
//! keepalived give up this peer's VRRP instance (a priority-0 advert hands
//! the VIP to a backup at once), then waits, up to `timeout` seconds, for
//! the connections HAProxy still serves to finish; a drained peer takes the
//! VIP no more, also after a restart, until it is undrained.

use std::sync::Arc;

use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::{RawQuery, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

use super::ApiState;
use super::auth::authorize;
use super::error::ApiError;
use crate::keepalived::VrrpState;

/// The longest a drain waits for connections.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(3600);
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// The answer to a drain.
#[derive(Debug, Serialize, Deserialize)]
pub struct DrainResponse {
    pub drained: bool,
    /// This peer no longer holds the VIP.
    pub vip_released: bool,
    /// Live peers that hold the VIP now.
    pub holders: Vec<String>,
    /// Connections HAProxy still served when the drain returned.
    pub connections: Option<u64>,
    pub waited_ms: u64,
}

fn timeout_query(raw: Option<&str>) -> Result<Duration, ApiError> {
    let mut timeout = DEFAULT_TIMEOUT;
    for (k, v) in serde_urlencoded::from_str::<Vec<(String, String)>>(raw.unwrap_or(""))
        .map_err(|e| ApiError::BadRequest(format!("bad query string: {e}")))?
    {
        match k.as_str() {
            "timeout" => {
                timeout = v
                    .parse::<u64>()
                    .ok()
                    .map(Duration::from_secs)
                    .filter(|t| *t <= MAX_TIMEOUT)
                    .ok_or_else(|| {
                        ApiError::BadRequest(format!(
                            "timeout must be 0 to {} seconds, got {v:?}",
                            MAX_TIMEOUT.as_secs()
                        ))
                    })?
            }
            _ => {
                return Err(ApiError::BadRequest(format!(
                    "unknown query parameter {k:?}"
                )));
            }
        }
    }
    Ok(timeout)
}

/// Client connections the running HAProxy worker serves now.
async fn current_connections(st: &ApiState) -> Option<u64> {
    crate::haproxy::stats::client_sessions(&st.haproxy).await
}

/// Other live peers that claim MASTER.
fn holders(st: &ApiState, me: &str) -> Vec<String> {
    let mut masters = st.mesh.snapshot().state.vip_holders.clone();
    masters.retain(|m| m != me);
    masters
}

pub(super) async fn drain(
    State(st): State<Arc<ApiState>>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Response {
    let result = async {
        authorize(&st, &headers)?;
        let timeout = timeout_query(query.as_deref())?;
        let failover = st
            .failover
            .as_ref()
            .ok_or_else(|| ApiError::NotFound("failover is not enabled".into()))?;
        failover
            .set_drained(true)
            .map_err(|e| ApiError::Storage(e.to_string()))?;
        let start = Instant::now();
        let is_master = || {
            st.vrrp
                .as_ref()
                .and_then(|v| v.current())
                .is_some_and(|n| n.state == VrrpState::Master)
        };
        // First the VIP leaves, to a peer when one is live: nothing new
        // arrives here once a peer holds it.
        let me = st.registry.with(|r| r.node().to_string());
        let others_live = || {
            st.mesh
                .snapshot()
                .peers
                .iter()
                .any(|p| p.live && p.node_id != me)
        };
        while (is_master() || (others_live() && holders(&st, &me).is_empty()))
            && start.elapsed() < timeout
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // Then what HAProxy still serves finishes, within the timeout.
        let mut connections = current_connections(&st).await;
        while connections.is_some_and(|c| c > 0) && start.elapsed() < timeout {
            tokio::time::sleep(Duration::from_millis(200)).await;
            connections = current_connections(&st).await;
        }
        st.metrics.request("drain", "ok");
        Ok::<_, ApiError>(DrainResponse {
            drained: true,
            vip_released: !is_master(),
            holders: holders(&st, &me),
            connections,
            waited_ms: start.elapsed().as_millis() as u64,
        })
    }
    .await;
    match result {
        Ok(r) => Json(r).into_response(),
        Err(e) => {
            st.metrics.request("drain", e.code());
            e.into_response()
        }
    }
}

pub(super) async fn undrain(State(st): State<Arc<ApiState>>, headers: HeaderMap) -> Response {
    let result = (|| {
        authorize(&st, &headers)?;
        let failover = st
            .failover
            .as_ref()
            .ok_or_else(|| ApiError::NotFound("failover is not enabled".into()))?;
        failover
            .set_drained(false)
            .map_err(|e| ApiError::Storage(e.to_string()))
    })();
    match result {
        Ok(()) => {
            st.metrics.request("undrain", "ok");
            Json(serde_json::json!({ "drained": false })).into_response()
        }
        Err(e) => {
            st.metrics.request("undrain", e.code());
            e.into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_timeout_is_bounded() {
        assert_eq!(timeout_query(None).unwrap(), DEFAULT_TIMEOUT);
        assert_eq!(
            timeout_query(Some("timeout=5")).unwrap(),
            Duration::from_secs(5)
        );
        for bad in ["timeout=-1", "timeout=99999", "timeout=x", "wait=1"] {
            assert!(timeout_query(Some(bad)).is_err(), "{bad}");
        }
    }
}
