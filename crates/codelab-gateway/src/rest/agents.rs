//! Agents: the list, one agent, and a session's current agent.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use reqwest::Method;
use serde_json::Value;

use super::{ReadCaller, call_runtime, error, proxy, proxy_session};
use crate::AppState;

/// `GET /api/v1/agents`: `{"agents": [{"type", "name", "description", "allowed_tools",
/// "has_file_restrictions"}], "total"}`.
pub async fn list_agents(
    State(state): State<Arc<AppState>>,
    ReadCaller(caller): ReadCaller,
) -> Response {
    proxy(&state, &caller, Method::GET, "/agents", None).await
}

/// `GET /api/v1/agents/{id}`: the agent whose `type` is `id` (the runtime serves only the
/// list, so it is picked from there); 404 for an unknown agent.
pub async fn get_agent(
    State(state): State<Arc<AppState>>,
    ReadCaller(caller): ReadCaller,
    Path(id): Path<String>,
) -> Response {
    let body = match call_runtime(&state, &caller, Method::GET, "/agents", None).await {
        Ok((_, body)) => body,
        Err(response) => return response,
    };
    let found = body
        .get("agents")
        .and_then(Value::as_array)
        .and_then(|agents| {
            agents
                .iter()
                .find(|agent| agent.get("type").and_then(Value::as_str) == Some(id.as_str()))
        });
    match found {
        Some(agent) => (StatusCode::OK, Json(agent.clone())).into_response(),
        None => {
            let shown: String = id.chars().take(64).collect();
            error(
                StatusCode::NOT_FOUND,
                "not_found",
                format!("agent {shown} not found"),
            )
        }
    }
}

/// `GET /api/v1/agents/{session_id}/current`: the runtime's `{"context": {...}}` (the
/// original's route, kept for the Flutter IDE).
pub async fn current_agent(
    State(state): State<Arc<AppState>>,
    ReadCaller(caller): ReadCaller,
    Path(session_id): Path<String>,
) -> Response {
    let path = ("/agents", session_id.as_str(), "/current");
    proxy_session(&state, &caller, Method::GET, path, None).await
}
