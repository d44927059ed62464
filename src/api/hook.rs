//! `POST /hooks/update-haproxy`: the original phone-home call, JSON or form.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, header};
use axum::response::Response;

use super::ApiState;
use super::auth::authorize;
use super::error::body_bytes;
use super::input::{body_format, hook_command, parse_fields, wait_query};
use super::submit::{ClientIp, respond, submit};

pub(super) async fn hook(
    State(st): State<ApiState>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    client: ClientIp,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let result = async {
        authorize(&st, &headers)?;
        let body = body_bytes(st.max_body_bytes, body)?;
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
