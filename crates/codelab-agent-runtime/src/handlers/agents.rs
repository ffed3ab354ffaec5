//! Agents (`docs/agent-runtime.md`, "Internal API"): the registered agents, and a session's
//! agent context.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use serde_json::{Value, json};

use super::{HttpError, Owner, owned_session, time};
use crate::AppState;

/// `GET /agents`: the agents of this mode, in registration order.
pub async fn list_agents(State(state): State<Arc<AppState>>) -> Json<Value> {
    let agents = state.engine.registry().list();
    let total = agents.len();
    Json(json!({ "agents": agents, "total": total }))
}

/// `GET /agents/{session_id}/current`: the session's agent and how it got there.
pub async fn current_agent(
    State(state): State<Arc<AppState>>,
    owner: Owner,
    Path(session_id): Path<String>,
) -> Result<Json<Value>, HttpError> {
    let session = owned_session(&state, &owner, &session_id).await?;
    let switches = state.store.list_switches(&session_id).await?;
    let history: Vec<Value> = switches
        .iter()
        .map(|s| {
            json!({
                "from_agent": s.from_agent,
                "to_agent": s.to_agent,
                "reason": s.reason,
                "switched_at": time(s.created_at),
                "confidence": s.confidence,
                "method": s.method,
            })
        })
        .collect();
    Ok(Json(json!({
        "context": {
            "session_id": session.id,
            "current_agent": session.current_agent,
            "switch_count": switches.len(),
            "switch_history": history,
            "last_switch_at": switches.last().map(|s| time(s.created_at)),
            "created_at": time(session.created_at),
        }
    })))
}
