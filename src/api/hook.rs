//! `POST /hooks/update-haproxy`: the original phone-home call, JSON or form.

use std::sync::Arc;

use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, header};
use axum::response::Response;

use super::ApiState;
use super::auth::authorize;
use super::error::read_body;
use super::input::{body_format, hook_command, parse_fields, wait_query};
use super::submit::{ClientIp, respond, submit};

pub(super) async fn hook(
    State(st): State<Arc<ApiState>>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    client: ClientIp,
    body: axum::body::Body,
) -> Response {
    let result = async {
        authorize(&st, &headers)?;
        let body = read_body(body, st.max_body_bytes, st.body_timeout).await?;
        let format = body_format(
            headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok()),
        )?;
        let wait = wait_query(query.as_deref(), st.max_wait)?;
        let cmd = hook_command(&parse_fields(format, &body)?)?;
        submit(&st, cmd, wait, client).await
    }
    .await;
    respond(&st, "hook", result)
}
