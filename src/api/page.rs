//! The status page at `/`: a static page that reads the JSON API from the
//! browser and refreshes itself. It holds no data of its own, so it shows
//! without a token only what `/healthz` tells anyone; the token, typed into
//! the page (or given as `#token=…`), stays in the tab's session storage and
//! is sent as `Authorization: Bearer`.

use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};

const HTML: &str = include_str!("page/index.html");
const JS: &str = include_str!("page/app.js");
const CSS: &str = include_str!("page/app.css");

/// Scripts and styles only from this origin, data only from this origin, no
/// framing: names and addresses are shown as text, never as markup.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
                   connect-src 'self'; img-src 'self' data:; base-uri 'none'; \
                   form-action 'none'; frame-ancestors 'none'";

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
            (
                header::CONTENT_SECURITY_POLICY,
                HeaderValue::from_static(CSP),
            ),
            (
                header::X_CONTENT_TYPE_OPTIONS,
                HeaderValue::from_static("nosniff"),
            ),
            (
                header::REFERRER_POLICY,
                HeaderValue::from_static("no-referrer"),
            ),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        ],
        body,
    )
        .into_response()
}

pub(super) async fn index() -> Response {
    asset("text/html; charset=utf-8", HTML)
}

pub(super) async fn script() -> Response {
    asset("text/javascript; charset=utf-8", JS)
}

pub(super) async fn style() -> Response {
    asset("text/css; charset=utf-8", CSS)
}
