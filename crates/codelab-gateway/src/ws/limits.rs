//! The per-user socket cap (`GATEWAY__WS_MAX_SOCKETS_PER_USER`): checked at the upgrade, so a
//! refused client gets a plain HTTP answer it can read before any WebSocket exists. The count
//! is kept by the fan-out ([`crate::fanout::Fanout::claim_socket`]) per gateway process.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::AppState;
use crate::fanout::SocketClaim;
use crate::metrics;

/// Seconds a refused client is asked to wait (sockets of the user must close first).
const RETRY_AFTER_SECONDS: &str = "30";

/// A user already holds the configured number of sockets on this process; answered 429.
#[derive(Debug)]
pub(super) struct TooManySockets {
    limit: usize,
}

/// A place for one more socket of `user_id`, unless the user already holds the configured
/// number of sockets on this process.
pub(super) fn claim(state: &AppState, user_id: &str) -> Result<SocketClaim, TooManySockets> {
    let limit = state.config.ws_max_sockets_per_user;
    // 0 turns the cap off, like 0 for the message rate.
    let cap = if limit == 0 { usize::MAX } else { limit };
    state.fanout.claim_socket(user_id, cap).ok_or_else(|| {
        metrics::connection("too_many_sockets");
        tracing::debug!(limit, "refused a WebSocket over the per-user socket cap");
        TooManySockets { limit }
    })
}

impl IntoResponse for TooManySockets {
    /// 429 with the service's error envelope and `Retry-After`.
    fn into_response(self) -> Response {
        let limit = self.limit;
        let body = json!({
            "error": "too_many_sockets",
            "error_description": format!(
                "this user already has {limit} open WebSockets on this gateway \
                 (GATEWAY__WS_MAX_SOCKETS_PER_USER); close some and retry"
            ),
        });
        let mut response = (StatusCode::TOO_MANY_REQUESTS, Json(body)).into_response();
        response.headers_mut().insert(
            header::RETRY_AFTER,
            HeaderValue::from_static(RETRY_AFTER_SECONDS),
        );
        response
    }
}
