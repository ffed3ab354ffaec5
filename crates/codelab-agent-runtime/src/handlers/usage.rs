//! Usage (docs/usage.md): a session's LLM calls per turn and step, read by its owner.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use codelab_protocol::usage::{SessionUsage, UsageCall};

use super::{HttpError, Owner, owned_session, time};
use crate::AppState;
use crate::model::LlmUsage;

/// `GET /sessions/{id}/usage`: the session's calls, oldest first, grouped by turn and step,
/// with totals at every level.
pub async fn session_usage(
    State(state): State<Arc<AppState>>,
    owner: Owner,
    Path(session_id): Path<String>,
) -> Result<Json<SessionUsage>, HttpError> {
    owned_session(&state, &owner, &session_id).await?;
    let rows = state.store.session_usage(&session_id).await?;
    let calls = rows
        .into_iter()
        .map(|row| (row.turn_id.clone(), row.step, usage_call(row)))
        .collect();
    Ok(Json(SessionUsage::of(&session_id, calls)))
}

/// A stored call as the usage answers show it.
pub fn usage_call(row: LlmUsage) -> UsageCall {
    UsageCall {
        id: row.id,
        created_at: time(row.created_at),
        agent: row.agent,
        purpose: row.purpose.as_str().to_owned(),
        requested_model: row.requested_model,
        provider: row.provider,
        model: row.model,
        prompt_tokens: row.prompt_tokens,
        completion_tokens: row.completion_tokens,
        total_tokens: row.total_tokens,
        cached_tokens: row.cached_tokens,
        cost: row.cost,
        latency_ms: row.latency_ms,
        ttft_ms: row.ttft_ms,
        tool_calls: row.tool_calls,
        outcome: row.outcome.as_str().to_owned(),
        error_kind: row.error_kind,
    }
}
