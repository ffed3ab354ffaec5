//! The original's `GET /api/v1/events/metrics/session/{id}` (which its benchmark scripts read),
//! answered from the runtime's usage records in the original's shape (docs/usage.md, "Reading
//! it"). `GET /api/v1/sessions/{id}/usage`, the full answer, is `super::session_resource`.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use codelab_protocol::usage::SessionUsage;
use serde_json::{Value, json};

use super::{ReadCaller, gateway_failure, usable_id};
use crate::AppState;
use crate::runtime_client::RuntimeError;

/// `GET /api/v1/events/metrics/session/{id}`: the session's LLM calls as the original counted
/// them; 404 `{"error": "No metrics found for session <id>"}` for a session without calls,
/// another user's or a missing one.
pub async fn session_metrics(
    State(state): State<Arc<AppState>>,
    ReadCaller(caller): ReadCaller,
    Path(session_id): Path<String>,
) -> Response {
    let none = || {
        let shown: String = session_id.chars().take(super::MAX_ID_LEN).collect();
        (
            StatusCode::NOT_FOUND,
            Json(json!({ "error": format!("No metrics found for session {shown}") })),
        )
            .into_response()
    };
    if !usable_id(&session_id) {
        return none();
    }
    match state
        .runtime
        .session_part::<SessionUsage>(&session_id, &caller.user_id)
        .await
    {
        Ok(usage) if usage.totals.requests > 0 => {
            (StatusCode::OK, Json(original_shape(&usage))).into_response()
        }
        Ok(_) | Err(RuntimeError::Status { status: 404, .. }) => none(),
        Err(failure) => gateway_failure(&failure),
    }
}

/// The original's fields: totals, averages and one entry per call, oldest first.
fn original_shape(usage: &SessionUsage) -> Value {
    let calls = usage
        .turns
        .iter()
        .flat_map(|turn| &turn.steps)
        .flat_map(|step| &step.calls);
    let mut requests = Vec::new();
    let (mut successful, mut with_tools, mut duration_ms) = (0u64, 0u64, 0u64);
    for call in calls {
        let success = call.outcome == "ok";
        successful += u64::from(success);
        with_tools += u64::from(call.tool_calls > 0);
        duration_ms += call.latency_ms;
        requests.push(json!({
            "timestamp": call.created_at,
            "model": call.model.as_deref().unwrap_or(&call.requested_model),
            "duration_ms": call.latency_ms,
            "prompt_tokens": call.prompt_tokens,
            "completion_tokens": call.completion_tokens,
            "total_tokens": call.total_tokens,
            "has_tool_calls": call.tool_calls > 0,
            "success": success,
            "error": if success { None } else { call.error_kind.as_deref().or(Some(call.outcome.as_str())) },
        }));
    }
    let totals = &usage.totals;
    // Averages over at least one call: the caller answers 404 without any.
    let count = totals.requests.max(1) as f64;
    json!({
        "session_id": usage.session_id,
        "total_requests": totals.requests,
        "successful_requests": successful,
        "failed_requests": totals.requests - successful,
        "total_duration_ms": duration_ms,
        "average_duration_ms": duration_ms as f64 / count,
        "total_prompt_tokens": totals.prompt_tokens,
        "total_completion_tokens": totals.completion_tokens,
        "total_tokens": totals.total_tokens,
        "average_tokens_per_request": totals.total_tokens as f64 / count,
        "requests_with_tools": with_tools,
        "requests": requests,
    })
}
