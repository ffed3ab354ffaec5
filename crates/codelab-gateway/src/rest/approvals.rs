//! Server-side HITL decisions and turn cancellation over REST.
//!
//! Both send a frame to the runtime (`hitl_decision`, `cancel_turn`) as the WebSocket would,
//! and publish every event of the answer to the session's fan-out channel, so the IDE socket —
//! on this replica or another — receives what follows (for an approval, the `tool_call`
//! again without `requires_approval`, which the IDE then runs). The relay runs in a tracked
//! task: a REST client that goes away does not stop the socket from getting the events.

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use codelab_protocol::ide::{self, ClientFrame};
use codelab_protocol::internal::{PendingApprovals, SessionHistory};
use codelab_protocol::runtime::{RuntimeEvent, SequencedEvent};
use futures_util::StreamExt;
use serde_json::{Map, Value, json};
use tokio::sync::mpsc;

use super::{WriteCaller, error, gateway_failure, session_not_found, usable_id};
use crate::AppState;
use crate::auth::Principal;
use crate::runtime_client::RuntimeError;

/// A validated decision body.
struct Decision {
    decision: ide::Decision,
    modified_arguments: Option<Map<String, Value>>,
    feedback: Option<String>,
}

/// The JSON object of a decision's body (an approval's or a plan's).
pub(super) fn decision_object(body: &[u8]) -> Result<Map<String, Value>, String> {
    let value: Value =
        serde_json::from_slice(body).map_err(|e| format!("invalid JSON in request body: {e}"))?;
    let Value::Object(map) = value else {
        return Err("expected a JSON object with \"decision\"".to_owned());
    };
    Ok(map)
}

/// A decision's optional `feedback` (`null` counts as absent).
pub(super) fn feedback_of(map: &Map<String, Value>) -> Result<Option<String>, String> {
    match map.get("feedback") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(text)) => Ok(Some(text.clone())),
        Some(_) => Err("feedback must be a string".to_owned()),
    }
}

/// Reads `{"decision": "approve|edit|reject", "modified_arguments": {...}, "feedback": "..."}`
/// (lowercase decisions only, as the original; `null` counts as absent).
fn parse_decision(body: &[u8]) -> Result<Decision, String> {
    let map = decision_object(body)?;
    let decision = match map.get("decision") {
        Some(Value::String(d)) if d == "approve" => ide::Decision::Approve,
        Some(Value::String(d)) if d == "edit" => ide::Decision::Edit,
        Some(Value::String(d)) if d == "reject" => ide::Decision::Reject,
        None | Some(Value::Null) => return Err("\"decision\" is required".to_owned()),
        Some(other) => {
            return Err(format!(
                "decision must be one of \"approve\", \"edit\", \"reject\", got {other}"
            ));
        }
    };
    let modified_arguments = match map.get("modified_arguments") {
        None | Some(Value::Null) => None,
        Some(Value::Object(args)) => Some(args.clone()),
        Some(_) => return Err("modified_arguments must be a JSON object".to_owned()),
    };
    if decision == ide::Decision::Edit && modified_arguments.is_none() {
        return Err("an edit needs modified_arguments (a JSON object)".to_owned());
    }
    let feedback = feedback_of(&map)?;
    Ok(Decision {
        decision,
        modified_arguments,
        feedback,
    })
}

/// `POST /api/v1/sessions/{id}/approvals/{call_id}`: decides a call that waits for approval.
/// 200 `{"call_id", "decision", "status": "accepted"}`; 404 for an unknown call (or session);
/// 409 when the call was already decided or settled, or does not wait for approval.
pub async fn decide_approval(
    State(state): State<Arc<AppState>>,
    WriteCaller(caller): WriteCaller,
    Path((session_id, call_id)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    if !usable_id(&session_id) {
        return session_not_found(&session_id);
    }
    if !usable_id(&call_id) {
        return call_not_found(&session_id, &call_id);
    }
    let decision = match parse_decision(&body) {
        Ok(decision) => decision,
        Err(message) => return error(StatusCode::BAD_REQUEST, "invalid_request", message),
    };

    // Look the call up first, so the usual answers need no stream: the pending list is
    // small; the history tells an unknown call from a decided one.
    let runtime = &state.runtime;
    let pending = match runtime
        .session_part::<PendingApprovals>(&session_id, &caller.user_id)
        .await
    {
        Ok(pending) => pending,
        Err(failure) => return gateway_failure(&failure),
    };
    if !pending
        .pending_approvals
        .iter()
        .any(|approval| approval.call_id == call_id)
    {
        let history = match runtime
            .session_part::<SessionHistory>(&session_id, &caller.user_id)
            .await
        {
            Ok(history) => history,
            Err(failure) => return gateway_failure(&failure),
        };
        return match history
            .tool_calls
            .iter()
            .find(|call| call.call_id == call_id)
        {
            None => call_not_found(&session_id, &call_id),
            Some(call) => {
                let undecided = call.decision.is_none();
                let needs_approval = call.requires_approval;
                let detail = if undecided && !needs_approval {
                    format!("call {call_id} does not wait for approval")
                } else {
                    format!("call {call_id} was already decided")
                };
                error(StatusCode::CONFLICT, "conflict", detail)
            }
        };
    }

    let frame = ClientFrame::HitlDecision {
        call_id: call_id.clone(),
        decision: decision.decision,
        modified_arguments: decision.modified_arguments,
        feedback: decision.feedback,
    };
    let events = match relay(&state, &caller, &session_id, frame).await {
        Ok(events) => events,
        Err(response) => return response,
    };
    // The runtime decides under its session lock: a decision that raced another one, or an
    // edit whose arguments fail the tool's schema, comes back as an error event.
    for event in &events {
        if let RuntimeEvent::Error { message, code } = &event.event {
            match code.as_deref() {
                Some("conflict") => {
                    return error(StatusCode::CONFLICT, "conflict", message.clone());
                }
                Some("unknown_call") => return call_not_found(&session_id, &call_id),
                Some("invalid_arguments") => {
                    return error(
                        StatusCode::UNPROCESSABLE_ENTITY,
                        "invalid_arguments",
                        message.clone(),
                    );
                }
                _ => {}
            }
        }
    }
    (
        StatusCode::OK,
        Json(json!({
            "call_id": call_id,
            "decision": decision.decision.as_str(),
            "status": "accepted",
        })),
    )
        .into_response()
}

/// `POST /api/v1/sessions/{id}/cancel`: cancels the running turn and its open calls.
/// 200 `{"status": "cancelled", "cancelled_calls": N}` (0 when nothing was running).
pub async fn cancel_turn(
    State(state): State<Arc<AppState>>,
    WriteCaller(caller): WriteCaller,
    Path(session_id): Path<String>,
) -> Response {
    if !usable_id(&session_id) {
        return session_not_found(&session_id);
    }
    let frame = ClientFrame::CancelTurn { reason: None };
    let events = match relay(&state, &caller, &session_id, frame).await {
        Ok(events) => events,
        Err(response) => return response,
    };
    let cancelled = events
        .iter()
        .filter(|e| {
            matches!(&e.event, RuntimeEvent::ToolSettled { outcome, .. } if outcome == "cancelled")
        })
        .count();
    (
        StatusCode::OK,
        Json(json!({ "status": "cancelled", "cancelled_calls": cancelled })),
    )
        .into_response()
}

fn call_not_found(session_id: &str, call_id: &str) -> Response {
    let shown: String = call_id.chars().take(128).collect();
    let session: String = session_id.chars().take(128).collect();
    error(
        StatusCode::NOT_FOUND,
        "not_found",
        format!("call {shown} not found in session {session}"),
    )
}

/// Sends `frame` to the runtime for `session_id` and publishes every event of the answer to
/// the fan-out; returns the events. Runs in a tracked task so the events reach the sockets
/// even if this request's client disconnects.
async fn relay(
    state: &Arc<AppState>,
    caller: &Principal,
    session_id: &str,
    frame: ClientFrame,
) -> Result<Vec<SequencedEvent>, Response> {
    let mut relay = Relay::start(state, caller, session_id, frame);
    let mut events = Vec::new();
    while let Some(event) = relay.next().await? {
        events.push(event);
    }
    Ok(events)
}

/// A frame relayed to the runtime in a tracked task that publishes every event of the answer
/// to the session's fan-out; the request reads the events as they come, as far as it needs
/// (the task goes on to the end without it).
pub(super) struct Relay {
    events: mpsc::UnboundedReceiver<SequencedEvent>,
    task: Option<tokio::task::JoinHandle<Result<(), RuntimeError>>>,
}

impl Relay {
    /// Sends `frame` for `session_id` as `caller`.
    pub(super) fn start(
        state: &Arc<AppState>,
        caller: &Principal,
        session_id: &str,
        frame: ClientFrame,
    ) -> Relay {
        let task_state = Arc::clone(state);
        let user_id = caller.user_id.clone();
        let session = session_id.to_owned();
        let (sender, events) = mpsc::unbounded_channel();
        let task = state.tasks.spawn(async move {
            let mut stream = task_state
                .runtime
                .stream_frame(&session, &user_id, frame, false)
                .await?;
            while let Some(item) = stream.next().await {
                let event = item?;
                task_state.fanout.publish(&session, &event).await;
                // The request may have stopped reading; the sockets still get the event.
                let _ = sender.send(event);
            }
            Ok(())
        });
        Relay {
            events,
            task: Some(task),
        }
    }

    /// The next event; `Ok(None)` once the answer ended; the error response when the runtime
    /// call failed (the events before it were published).
    pub(super) async fn next(&mut self) -> Result<Option<SequencedEvent>, Response> {
        if let Some(event) = self.events.recv().await {
            return Ok(Some(event));
        }
        let Some(task) = self.task.take() else {
            return Ok(None);
        };
        match task.await {
            Ok(Ok(())) => Ok(None),
            Ok(Err(failure)) => Err(gateway_failure(&failure)),
            Err(join) => {
                tracing::error!(error = %join, "the relay task failed");
                Err(error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal_error",
                    "internal server error",
                ))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decisions_are_lowercase_and_edits_need_arguments() {
        assert_eq!(
            parse_decision(br#"{"decision":"approve"}"#)
                .unwrap()
                .decision,
            "approve"
        );
        assert!(parse_decision(br#"{"decision":"APPROVE"}"#).is_err());
        assert!(parse_decision(br#"{"decision":"edit"}"#).is_err());
        assert!(parse_decision(br#"{"decision":"edit","modified_arguments":[1]}"#).is_err());
        let edit =
            parse_decision(br#"{"decision":"edit","modified_arguments":{"path":"b"}}"#).unwrap();
        assert_eq!(edit.modified_arguments.unwrap()["path"], "b");
        let reject =
            parse_decision(br#"{"decision":"reject","feedback":"no","modified_arguments":null}"#)
                .unwrap();
        assert_eq!(reject.feedback.as_deref(), Some("no"));
        assert!(parse_decision(b"[]").is_err());
        assert!(parse_decision(b"").is_err());
        assert!(parse_decision(br#"{"decision":"reject","feedback":3}"#).is_err());
    }
}
