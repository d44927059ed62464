//! Every API error, and the one place that maps them to HTTP status and JSON.

use axum::Json;
use axum::body::Bytes;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::registry::{FieldError, RegistryError};
use crate::shared::SubmitError;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("missing token: send the X-Funkypenguin-Token header or Authorization: Bearer <token>")]
    MissingToken,
    #[error("wrong token")]
    WrongToken,
    #[error("{0}")]
    Field(#[from] FieldError),
    #[error("{0}")]
    BadRequest(String),
    #[error(
        "unsupported content type {0}: send application/json or application/x-www-form-urlencoded"
    )]
    UnsupportedMediaType(String),
    #[error("request body larger than {0} bytes")]
    TooLarge(usize),
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error("{0}")]
    Storage(String),
    #[error("{0}")]
    NotFound(String),
    #[error("method {0} is not allowed on this endpoint")]
    MethodNotAllowed(String),
    #[error("the request body did not arrive within {0} s")]
    BodyTimeout(u64),
}

impl From<SubmitError> for ApiError {
    fn from(e: SubmitError) -> Self {
        match e {
            SubmitError::Rejected(r) => Self::Registry(r),
            SubmitError::Storage(s) => Self::Storage(s.to_string()),
        }
    }
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: &'static str,
    message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    field: Option<&'a str>,
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            Self::MissingToken | Self::WrongToken => StatusCode::UNAUTHORIZED,
            Self::Field(_) | Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::Registry(RegistryError::Policy(_) | RegistryError::Backend(_)) => {
                StatusCode::FORBIDDEN
            }
            Self::Registry(RegistryError::TtlOutOfRange { .. }) => StatusCode::BAD_REQUEST,
            Self::Registry(
                RegistryError::NameConflict { .. }
                | RegistryError::NotOwner { .. }
                | RegistryError::Full(_),
            ) => StatusCode::CONFLICT,
            Self::Storage(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            Self::BodyTimeout(_) => StatusCode::REQUEST_TIMEOUT,
        }
    }

    /// A stable machine-readable code; also the metrics outcome label.
    pub fn code(&self) -> &'static str {
        match self {
            Self::MissingToken => "missing_token",
            Self::WrongToken => "wrong_token",
            Self::Field(_) => "invalid_field",
            Self::BadRequest(_) => "bad_request",
            Self::UnsupportedMediaType(_) => "unsupported_media_type",
            Self::TooLarge(_) => "payload_too_large",
            Self::Registry(RegistryError::Policy(_)) => "port_not_allowed",
            Self::Registry(RegistryError::Backend(a)) => a.label(),
            Self::Registry(RegistryError::TtlOutOfRange { .. }) => "ttl_out_of_range",
            Self::Registry(RegistryError::NameConflict { .. }) => "name_conflict",
            Self::Registry(RegistryError::NotOwner { .. }) => "not_owner",
            Self::Registry(RegistryError::Full(_)) => "registry_full",
            Self::Storage(_) => "storage_failed",
            Self::NotFound(_) => "not_found",
            Self::MethodNotAllowed(_) => "method_not_allowed",
            Self::BodyTimeout(_) => "body_timeout",
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let field = match &self {
            Self::Field(f) => Some(f.field),
            _ => None,
        };
        let body = ErrorBody {
            error: self.code(),
            message: self.to_string(),
            field,
        };
        (self.status(), Json(body)).into_response()
    }
}

/// Reads a request body of at most `max_bytes` within `timeout`.
pub(super) async fn read_body(
    body: axum::body::Body,
    max_bytes: usize,
    timeout: std::time::Duration,
) -> Result<Bytes, ApiError> {
    match tokio::time::timeout(timeout, axum::body::to_bytes(body, max_bytes)).await {
        Err(_) => Err(ApiError::BodyTimeout(timeout.as_secs())),
        Ok(Ok(b)) => Ok(b),
        Ok(Err(e)) => {
            let too_large = std::error::Error::source(&e)
                .is_some_and(|s| s.is::<http_body_util::LengthLimitError>());
            if too_large {
                Err(ApiError::TooLarge(max_bytes))
            } else {
                Err(ApiError::BadRequest(format!(
                    "cannot read the request body: {e}"
                )))
            }
        }
    }
}
