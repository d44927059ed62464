//! `POST /v1/vrrp`: keepalived's notify hook (`lbmesh keepalived notify`)
//! reports this peer's VRRP state.

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};

use super::ApiState;
use super::auth::authorize;
use super::error::{ApiError, body_bytes};
use crate::keepalived::Notification;

pub(super) async fn report_vrrp(
    State(st): State<ApiState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let result = (|| -> Result<Notification, ApiError> {
        authorize(&st, &headers)?;
        let body = body_bytes(st.max_body_bytes, body)?;
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
