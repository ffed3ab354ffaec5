//! Sessions (`docs/agent-runtime.md`, "Internal API"; the original's quirks fixed): create,
//! list with a real total, read, rename, delete, history with the agent context, stored
//! events, pending approvals.

use codelab_protocol::plans::CREATE_PLAN_TOOL;
use std::collections::HashMap;
use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use codelab_protocol::internal::{
    ActiveTurn, ApprovalDetails, HistoryAgentSwitch, HistoryMessage, HistoryToolCall, OpenCall,
    PendingApproval, PendingApprovals, SessionHistory, SessionOwner, SessionPage, SessionSummary,
    StoredEvents,
};
use codelab_protocol::runtime::{RuntimeEvent, SequencedEvent, TurnOutcome};
use serde_json::{Map, Value, json};
use tokio::sync::mpsc;

use super::stream::create;
use super::{
    HttpError, Owner, count, dev_sessions, is_valid_session_id, owned_session, session_summary,
    time,
};
use crate::AppState;
use crate::engine::{MAX_TITLE_CHARS, Work};
use crate::model::{Message, PlanningMode, Role, SessionQuery, ToolCallStatus};

/// Default and largest page of `GET /sessions`.
const DEFAULT_LIMIT: u32 = 100;
const MAX_LIMIT: u32 = 1000;
/// Default page of `GET /sessions/{id}/events`.
const DEFAULT_EVENTS_LIMIT: u32 = 500;

pub(super) type Params = Result<Query<HashMap<String, String>>, QueryRejection>;

/// The query parameters, or a 400 naming the problem.
pub(super) fn params(query: Params) -> Result<HashMap<String, String>, HttpError> {
    query
        .map(|Query(map)| map)
        .map_err(|e| HttpError::bad_request(format!("invalid query string: {e}")))
}

/// An integer parameter within `min..=max`, `default` when absent.
fn number(
    params: &HashMap<String, String>,
    name: &str,
    default: u64,
    min: u64,
    max: u64,
) -> Result<u64, HttpError> {
    let Some(raw) = params.get(name) else {
        return Ok(default);
    };
    raw.trim()
        .parse::<u64>()
        .ok()
        .filter(|n| (min..=max).contains(n))
        .ok_or_else(|| {
            HttpError::bad_request(format!(
                "{name} must be an integer from {min} to {max}, got \"{raw}\""
            ))
        })
}

/// A JSON object body (an empty body counts as `{}` when `empty_ok`).
fn object_body(body: &Bytes, empty_ok: bool) -> Result<Map<String, Value>, HttpError> {
    if empty_ok && body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Map::new());
    }
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(HttpError::bad_request(
            "expected a JSON object in the request body",
        )),
        Err(e) => Err(HttpError::bad_request(format!(
            "invalid JSON in request body: {e}"
        ))),
    }
}

/// The `limit` parameter: 1 to [`MAX_LIMIT`], `default` when absent.
fn limit(params: &HashMap<String, String>, default: u32) -> Result<u32, HttpError> {
    let limit = number(params, "limit", u64::from(default), 1, u64::from(MAX_LIMIT))?;
    Ok(u32::try_from(limit).unwrap_or(MAX_LIMIT))
}

/// `POST /sessions`: a new session with a random UUID v4 id (the gateway hands it to the IDE
/// as a capability). `{"session_id"}` chooses the id, in the development mode only.
pub async fn create_session(
    State(state): State<Arc<AppState>>,
    owner: Owner,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, HttpError> {
    let body = object_body(&body, true)?;
    let requested = match body.get("session_id") {
        None | Some(Value::Null) => None,
        Some(Value::String(id)) => Some(id.clone()),
        Some(_) => return Err(HttpError::bad_request("session_id must be a string")),
    };
    let id = match requested {
        None => codelab_core::ids::new_random_id().to_string(),
        Some(_) if !dev_sessions(&headers) => {
            return Err(HttpError::bad_request(
                "a client-chosen session_id is only accepted in the development session mode \
                 (X-Codelab-Dev-Sessions: true); omit it to get a random id",
            ));
        }
        Some(id) if !is_valid_session_id(&id) => {
            return Err(HttpError::bad_request(
                "session_id must be 1 to 64 characters of A-Z a-z 0-9 _ . -",
            ));
        }
        Some(id) => id,
    };
    let session = create(&state, &owner, id).await?;
    let body = SessionSummary {
        created_at: Some(time(session.created_at)),
        current_agent: Some(session.current_agent),
        id: session.id,
        is_active: true,
        last_activity: None,
        message_count: 0,
        planning: Some(session.planning.as_str().to_owned()),
        title: None,
    };
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

/// `GET /sessions?limit=100&offset=0&search=`: the user's sessions, most recently active
/// first, with the real number of matches in `total`.
pub async fn list_sessions(
    State(state): State<Arc<AppState>>,
    owner: Owner,
    query: Params,
) -> Result<Json<SessionPage>, HttpError> {
    let params = params(query)?;
    let limit = limit(&params, DEFAULT_LIMIT)?;
    let offset = number(&params, "offset", 0, 0, u64::from(u32::MAX))?;
    let offset = u32::try_from(offset).unwrap_or(u32::MAX);
    let search = params
        .get("search")
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty());
    let (sessions, total) = state
        .store
        .list_sessions(&SessionQuery {
            owner: owner.0,
            search,
            limit,
            offset,
        })
        .await?;
    Ok(Json(SessionPage {
        limit,
        offset,
        sessions: sessions.iter().map(session_summary).collect(),
        total,
    }))
}

/// `GET /sessions/{id}`: the flat session object.
pub async fn get_session(
    State(state): State<Arc<AppState>>,
    owner: Owner,
    Path(session_id): Path<String>,
) -> Result<Json<SessionSummary>, HttpError> {
    let session = owned_session(&state, &owner, &session_id).await?;
    Ok(Json(session_summary(&session)))
}

/// `GET /internal/sessions/{id}/owner`: `{"owner": "<user id>"}` of a live session, 404
/// otherwise. Only for the gateway's `session` WebSocket mode: a socket without a token proves
/// access by knowing the unguessable session id and then acts as the session's owner, whom the
/// gateway cannot know otherwise (the internal key guards this route like every other).
pub async fn session_owner(
    State(state): State<Arc<AppState>>,
    Path(session_id): Path<String>,
) -> Result<Json<SessionOwner>, HttpError> {
    match state.store.get_session(&session_id).await? {
        Some(session) => Ok(Json(SessionOwner {
            owner: session.owner,
        })),
        None => Err(HttpError::session_not_found(&session_id)),
    }
}

/// `PATCH /sessions/{id}` `{"title": "...", "planning": "auto|always|never"}` (either or both):
/// renames the session, or changes its planning setting.
pub async fn update_session(
    State(state): State<Arc<AppState>>,
    owner: Owner,
    Path(session_id): Path<String>,
    body: Bytes,
) -> Result<Json<SessionSummary>, HttpError> {
    owned_session(&state, &owner, &session_id).await?;
    let body = object_body(&body, false)?;
    let title = match body.get("title") {
        None => None,
        Some(Value::String(title)) => Some(title.trim().to_owned()),
        Some(_) => return Err(HttpError::bad_request("title must be a string")),
    };
    let planning = match body.get("planning") {
        None => None,
        Some(Value::String(mode)) => Some(PlanningMode::parse(mode).ok_or_else(|| {
            HttpError::bad_request(format!(
                "planning must be \"auto\", \"always\" or \"never\", got {mode:?}"
            ))
        })?),
        Some(_) => {
            return Err(HttpError::bad_request(
                "planning must be \"auto\", \"always\" or \"never\"",
            ));
        }
    };
    if title.is_none() && planning.is_none() {
        return Err(HttpError::bad_request(
            "\"title\" or \"planning\" is required",
        ));
    }
    if let Some(title) = &title {
        if title.is_empty() {
            return Err(HttpError::bad_request("title must not be empty"));
        }
        let chars = title.chars().count();
        if chars > MAX_TITLE_CHARS {
            return Err(HttpError::bad_request(format!(
                "title must be at most {MAX_TITLE_CHARS} characters, got {chars}"
            )));
        }
    }
    if let Some(mode) = planning {
        state.store.set_planning(&session_id, mode).await?;
    }
    if let Some(title) = &title {
        state.store.set_title(&session_id, title).await?;
    }
    let session = owned_session(&state, &owner, &session_id).await?;
    Ok(Json(session_summary(&session)))
}

/// `DELETE /sessions/{id}`: 204, after which the session is gone for every read.
pub async fn delete_session(
    State(state): State<Arc<AppState>>,
    owner: Owner,
    Path(session_id): Path<String>,
) -> Result<StatusCode, HttpError> {
    owned_session(&state, &owner, &session_id).await?;
    if state.store.delete_session(&session_id).await? {
        // A deleted session's calls wait for nobody any more.
        crate::metrics::refresh_pending_approvals(state.store.as_ref()).await;
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(HttpError::session_not_found(&session_id))
    }
}

/// One message of the history page: OpenAI style, null keys left out.
fn history_message(message: &Message) -> HistoryMessage {
    HistoryMessage {
        // The original wrote `""` for an assistant message that only calls tools.
        content: message.content.clone().unwrap_or_default(),
        name: message
            .agent
            .clone()
            .filter(|_| message.role == Role::Assistant),
        role: message.role.as_str().to_owned(),
        tool_call_id: message.tool_call_id.clone(),
        tool_calls: message.tool_calls.clone().filter(|c| !c.is_null()),
    }
}

/// `GET /sessions/{id}/history`: messages, the agent context and every tool call's state.
pub async fn session_history(
    State(state): State<Arc<AppState>>,
    owner: Owner,
    Path(session_id): Path<String>,
) -> Result<Json<SessionHistory>, HttpError> {
    let session = owned_session(&state, &owner, &session_id).await?;
    let messages = state.store.list_messages(&session_id).await?;
    let switches = state.store.list_switches(&session_id).await?;
    let calls = state.store.list_session_calls(&session_id).await?;
    // What the session waits for right now (after a restart too): the unfinished turn and
    // its open calls.
    let active_turn = state
        .store
        .active_turn(&session_id)
        .await?
        .map(|turn| ActiveTurn {
            open_calls: calls
                .iter()
                .filter(|c| c.turn_id == turn.id && c.status.is_open())
                .map(|c| OpenCall {
                    call_id: c.call_id.clone(),
                    status: c.status.as_str().to_owned(),
                    tool_name: c.tool_name.clone(),
                })
                .collect(),
            agent: turn.agent,
            cancel_requested: turn.cancel_requested_at.is_some(),
            id: turn.id,
            status: turn.status.as_str().to_owned(),
            step: u32::try_from(turn.steps).unwrap_or_default(),
        });
    Ok(Json(SessionHistory {
        active_turn,
        agent_history: switches
            .into_iter()
            .map(|s| HistoryAgentSwitch {
                complexity: s.complexity,
                confidence: s.confidence,
                from: s.from_agent,
                method: s.method,
                reason: s.reason,
                timestamp: time(s.created_at),
                to: s.to_agent,
            })
            .collect(),
        current_agent: session.current_agent,
        last_activity: time(session.last_activity),
        message_count: count(session.message_count),
        messages: messages.iter().map(history_message).collect(),
        session_id: session.id,
        tool_calls: calls
            .into_iter()
            .map(|c| HistoryToolCall {
                arguments: c.arguments,
                call_id: c.call_id,
                decision: c.decision,
                error: c.error,
                requires_approval: c.requires_approval,
                result: c.result,
                status: c.status.as_str().to_owned(),
                tool_name: c.tool_name,
            })
            .collect(),
    }))
}

/// `POST /sessions/{id}/cancel`: the REST form of a `cancel_turn` frame (body empty or
/// `{"reason": "..."}`). Answers when the turn has stopped (at most `CANCEL_WAIT`):
/// `{"session_id", "cancelled", "events"}` with the events the cancellation produced.
pub async fn cancel_turn(
    State(state): State<Arc<AppState>>,
    owner: Owner,
    Path(session_id): Path<String>,
    body: Bytes,
) -> Result<Json<Value>, HttpError> {
    owned_session(&state, &owner, &session_id).await?;
    let reason = match object_body(&body, true)?.get("reason") {
        None | Some(Value::Null) => None,
        Some(Value::String(reason)) => Some(reason.trim().to_owned()).filter(|r| !r.is_empty()),
        Some(_) => return Err(HttpError::bad_request("reason must be a string")),
    };
    let (tx, mut rx) = mpsc::channel::<SequencedEvent>(16);
    let worker = Arc::clone(&state);
    let id = session_id.clone();
    state.tasks.spawn(async move {
        worker
            .engine
            .process(id, Work::CancelTurn { reason }, tx)
            .await;
    });
    let mut events = Vec::new();
    while let Some(event) = rx.recv().await {
        events.push(event);
    }
    let cancelled = events.iter().any(|e| {
        matches!(
            e.event,
            RuntimeEvent::TurnFinished {
                outcome: TurnOutcome::Cancelled
            }
        )
    });
    Ok(Json(json!({
        "session_id": session_id,
        "cancelled": cancelled,
        "events": events,
    })))
}

/// `GET /sessions/{id}/events?after=SEQ&limit=N`: stored events after `seq` (for a gateway
/// that reconnects). Text deltas are not stored; the `assistant_message` holding their whole
/// text is.
pub async fn session_events(
    State(state): State<Arc<AppState>>,
    owner: Owner,
    Path(session_id): Path<String>,
    query: Params,
) -> Result<Json<StoredEvents>, HttpError> {
    owned_session(&state, &owner, &session_id).await?;
    let params = params(query)?;
    let after = number(&params, "after", 0, 0, i64::MAX.unsigned_abs())?;
    let limit = limit(&params, DEFAULT_EVENTS_LIMIT)?;
    let events = state.store.list_events(&session_id, after, limit).await?;
    Ok(Json(StoredEvents { events }))
}

/// `GET /sessions/{id}/pending-approvals`: calls waiting for a person, oldest first, in the
/// original's shape (unified fields and the legacy mirrors the Flutter IDE reads).
pub async fn pending_approvals(
    State(state): State<Arc<AppState>>,
    owner: Owner,
    Path(session_id): Path<String>,
) -> Result<Json<PendingApprovals>, HttpError> {
    owned_session(&state, &owner, &session_id).await?;
    let pending: Vec<PendingApproval> = state
        .store
        .list_open_calls(&session_id)
        .await?
        .into_iter()
        .filter(|c| c.status == ToolCallStatus::PendingApproval)
        .map(|c| PendingApproval {
            details: ApprovalDetails {
                arguments: c.arguments.clone(),
            },
            arguments: c.arguments,
            request_id: c.call_id.clone(),
            call_id: c.call_id,
            created_at: time(c.created_at),
            reason: c.approval_reason,
            // A plan's approval is its `create_plan` call's.
            request_type: if c.tool_name == CREATE_PLAN_TOOL {
                "plan"
            } else {
                "tool"
            }
            .to_owned(),
            subject: c.tool_name.clone(),
            tool_name: c.tool_name,
        })
        .collect();
    Ok(Json(PendingApprovals {
        count: pending.len(),
        pending_approvals: pending,
        session_id,
    }))
}
