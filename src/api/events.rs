//! `GET /v1/events`: the recent events of this peer, oldest first.

use std::sync::Arc;

use axum::Json;
use axum::extract::{RawQuery, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use super::auth::authorize;
use super::{ApiError, ApiState};
use crate::events::Event;
use crate::registry::FieldError;
use crate::registry::types::quoted;

/// How many events one answer holds unless `limit` says otherwise.
const DEFAULT_LIMIT: usize = 100;

/// What `?after=SEQ&limit=N` asks for.
#[derive(Debug, PartialEq, Eq)]
pub struct EventsQuery {
    /// Only events with a sequence number above this.
    pub after: u64,
    pub limit: usize,
}

/// Parses the query of `GET /v1/events`; `limit` is 1 to `max`.
pub fn events_query(raw: Option<&str>, max: usize) -> Result<EventsQuery, ApiError> {
    let pairs: Vec<(String, String)> = serde_urlencoded::from_str(raw.unwrap_or(""))
        .map_err(|e| ApiError::BadRequest(format!("bad query string: {e}")))?;
    let mut q = EventsQuery {
        after: 0,
        limit: DEFAULT_LIMIT.min(max),
    };
    for (k, v) in pairs {
        match k.as_str() {
            "after" => {
                q.after = v.parse().map_err(|_| {
                    FieldError::new(
                        "after",
                        format!("must be an event number, got {}", quoted(&v)),
                    )
                })?;
            }
            "limit" => {
                q.limit = v
                    .parse()
                    .ok()
                    .filter(|n| (1..=max).contains(n))
                    .ok_or_else(|| {
                        FieldError::new(
                            "limit",
                            format!("must be from 1 to {max}, got {}", quoted(&v)),
                        )
                    })?;
            }
            other => {
                return Err(ApiError::BadRequest(format!(
                    "unknown query parameter {}; expected after, limit",
                    quoted(other)
                )));
            }
        }
    }
    Ok(q)
}

#[derive(Serialize)]
struct EventsOut {
    /// The sequence number of the newest event recorded; pass it as `after`
    /// to get only what comes next.
    last_seq: u64,
    events: Vec<Event>,
}

pub(super) async fn events(
    State(st): State<Arc<ApiState>>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Response {
    let result = (|| {
        authorize(&st, &headers)?;
        let events = st.registry.events();
        let q = events_query(query.as_deref(), events.capacity())?;
        Ok::<_, ApiError>(EventsOut {
            last_seq: events.last_seq(),
            events: events.recent(q.after, q.limit),
        })
    })();
    match result {
        Ok(out) => {
            st.metrics.request("v1_events", "ok");
            Json(out).into_response()
        }
        Err(e) => {
            st.metrics.request("v1_events", e.code());
            e.into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries() {
        assert_eq!(
            events_query(None, 1000).unwrap(),
            EventsQuery {
                after: 0,
                limit: 100
            }
        );
        assert_eq!(
            events_query(Some("after=42&limit=1000"), 1000).unwrap(),
            EventsQuery {
                after: 42,
                limit: 1000
            }
        );
        for bad in [
            "limit=0",
            "limit=1001",
            "after=-1",
            "after=x",
            "since=3",
            "limit=%zz",
        ] {
            assert!(events_query(Some(bad), 1000).is_err(), "{bad}");
        }
    }
}
