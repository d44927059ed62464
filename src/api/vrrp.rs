//! `POST /v1/vrrp`: keepalived's notify hook (`lbmesh keepalived notify`)
//! reports this peer's VRRP state.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};

use super::ApiState;
use super::auth::authorize;
use super::error::{ApiError, read_body};
use super::input::json_object;
use crate::keepalived::Notification;

pub(super) async fn report_vrrp(
    State(st): State<Arc<ApiState>>,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Response {
    let result = async {
        authorize(&st, &headers)?;
        let body = read_body(body, st.max_body_bytes, st.body_timeout).await?;
        let raw = json_object(&body)?;
        let get = |k: &str| raw.iter().find(|(n, _)| n == k).map(|(_, v)| v);
        let field = |k: &str| get(k).and_then(|v| v.as_str());
        let priority = get("priority")
            .filter(|p| !p.is_null())
            .map(|p| p.to_string().trim_matches('"').to_owned());
        Notification::new(
            field("kind").unwrap_or("INSTANCE"),
            field("name").ok_or_else(|| ApiError::BadRequest("name is required".into()))?,
            field("state").ok_or_else(|| ApiError::BadRequest("state is required".into()))?,
            priority.as_deref(),
        )
        .map_err(ApiError::BadRequest)
    }
    .await;
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
