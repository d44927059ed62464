//! Who may call the API: the shared token, compared in constant time.

use axum::http::{HeaderMap, header};

use super::ApiState;
use super::error::ApiError;

/// Checks the token from `X-Funkypenguin-Token` or `Authorization: Bearer`.
pub(super) fn authorize(st: &ApiState, headers: &HeaderMap) -> Result<(), ApiError> {
    let presented = headers
        .get("x-funkypenguin-token")
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .or_else(|| {
            headers
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "))
                .map(str::trim)
        });
    match presented {
        None | Some("") => Err(ApiError::MissingToken),
        Some(t) if st.token.matches(t) => Ok(()),
        Some(_) => Err(ApiError::WrongToken),
    }
}
