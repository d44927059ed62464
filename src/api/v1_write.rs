//! The typed writes: `PUT` and `DELETE /v1/frontends/{frontend_port}/servers/{ip}/{port}`.

use std::sync::Arc;

use std::net::SocketAddr;

use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, header};
use axum::response::Response;

use super::ApiState;
use super::auth::authorize;
use super::error::{ApiError, read_body};
use super::extract::ApiPath;
use super::input::{BodyFormat, body_format, register_command, wait_query};
use super::submit::{ClientIp, respond, submit};
use crate::registry::types::{parse_port, parse_server_ip};
use crate::registry::{Command, FieldError, Key, ServiceName};

fn path_key(frontend: &str, ip: &str, port: &str) -> Result<Key, ApiError> {
    Ok(Key {
        frontend: parse_port("frontend_port", frontend)?,
        server: SocketAddr::new(parse_server_ip("ip", ip)?, parse_port("port", port)?),
    })
}

pub(super) async fn register(
    State(st): State<Arc<ApiState>>,
    ApiPath((frontend, ip, port)): ApiPath<(String, String, String)>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    client: ClientIp,
    body: axum::body::Body,
) -> Response {
    let result = async {
        authorize(&st, &headers)?;
        let key = path_key(&frontend, &ip, &port)?;
        let body = read_body(body, st.max_body_bytes, st.body_timeout).await?;
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
        let cmd = register_command(key, &body)?;
        submit(&st, cmd, wait, client).await
    }
    .await;
    respond(&st, "v1_register", result)
}

pub(super) async fn deregister(
    State(st): State<Arc<ApiState>>,
    ApiPath((frontend, ip, port)): ApiPath<(String, String, String)>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    client: ClientIp,
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
            .ok_or_else(|| FieldError::new("name", "is required as a query parameter"))?;
        let name = ServiceName::parse_field("name", name)?;
        submit(&st, Command::Delete { key, name }, wait, client).await
    }
    .await;
    respond(&st, "v1_delete", result)
}
