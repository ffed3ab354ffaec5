//! Plans over REST (docs/agent-runtime.md, "Planning"): a session's plans, one plan, and a
//! person's decision on one.
//!
//! A decision is sent to the runtime as the `plan_decision` frame a protocol-2 socket would
//! send, and every event of the answer goes to the session's fan-out as for an approval
//! (`approvals`), so the IDE sockets see the plan run. This is also how a Flutter IDE, which
//! renders no plan frames and sends no `plan_decision`, gets its plans decided (from the
//! console, or any REST client).

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use codelab_protocol::ide::ClientFrame;
use codelab_protocol::plans::PlanDecision;
use codelab_protocol::runtime::RuntimeEvent;
use serde_json::{Value, json};

use super::approvals::{Relay, decision_object, feedback_of};
use super::{MAX_ID_LEN, ReadCaller, WriteCaller, error, gateway_failure, usable_id};
use crate::AppState;
use crate::auth::Principal;
use crate::runtime_client::RuntimeError;

/// A validated decision body.
#[derive(Debug, PartialEq, Eq)]
struct Decision {
    decision: PlanDecision,
    feedback: Option<String>,
}

/// Reads `{"decision": "approve|reject|modify|retry|skip|cancel", "feedback": "..."}` (with
/// the synonyms `approved`, `rejected`, `modified`, `cancelled`; `null` counts as absent); a
/// `modify` needs feedback that is not blank.
fn parse_decision(body: &[u8]) -> Result<Decision, String> {
    let map = decision_object(body)?;
    let decision = match map.get("decision") {
        None | Some(Value::Null) => return Err("\"decision\" is required".to_owned()),
        Some(Value::String(text)) => PlanDecision::read(text),
        Some(_) => None,
    };
    let Some(decision) = decision else {
        return Err(format!(
            "decision must be one of \"approve\", \"reject\", \"modify\", \"retry\", \"skip\", \
             \"cancel\", got {}",
            map.get("decision")
                .map(Value::to_string)
                .unwrap_or_default()
        ));
    };
    let feedback = feedback_of(&map)?;
    if decision == PlanDecision::Modify && feedback.as_deref().is_none_or(|f| f.trim().is_empty()) {
        return Err("modify needs feedback: what should change in the plan".to_owned());
    }
    Ok(Decision { decision, feedback })
}

/// `GET /api/v1/plans/{id}`: one plan with its subtasks; 404 for an unknown plan and for
/// another user's.
pub async fn get_plan(
    State(state): State<Arc<AppState>>,
    ReadCaller(caller): ReadCaller,
    Path(plan_id): Path<String>,
) -> Response {
    match look_up(&state, &caller, &plan_id).await {
        Ok(plan) => (StatusCode::OK, Json(plan)).into_response(),
        Err(response) => response,
    }
}

/// `POST /api/v1/plans/{id}/decision`: decides a plan. 200 `{"plan_id", "decision", "status":
/// "accepted"}`; 400 for an invalid body (or a decision the runtime refuses as invalid); 404
/// for an unknown (or another user's) plan; 409 when the plan does not wait for this decision.
pub async fn decide_plan(
    State(state): State<Arc<AppState>>,
    WriteCaller(caller): WriteCaller,
    Path(plan_id): Path<String>,
    body: Bytes,
) -> Response {
    if !usable_id(&plan_id) {
        return plan_not_found(&plan_id);
    }
    let decision = match parse_decision(&body) {
        Ok(decision) => decision,
        Err(message) => return error(StatusCode::BAD_REQUEST, "invalid_request", message),
    };
    // The plan names its session; the runtime answers 404 unless the caller owns it.
    let plan = match look_up(&state, &caller, &plan_id).await {
        Ok(plan) => plan,
        Err(response) => return response,
    };
    let frame = ClientFrame::PlanDecision {
        plan_id: Some(plan.id.clone()),
        approval_request_id: None,
        decision: decision.decision,
        feedback: decision.feedback,
    };
    // Approving runs the whole plan in the same answer: the request waits only for the
    // runtime's first word on the decision, the relay publishes the rest.
    let mut relay = Relay::start(&state, &caller, &plan.session_id, frame);
    while let Some(event) = match relay.next().await {
        Ok(event) => event,
        Err(response) => return response,
    } {
        match &event.event {
            RuntimeEvent::Error { message, code } => match code.as_deref() {
                Some("conflict") => {
                    return error(StatusCode::CONFLICT, "conflict", message.clone());
                }
                Some("invalid_request") => {
                    return error(StatusCode::BAD_REQUEST, "invalid_request", message.clone());
                }
                Some("unknown_plan") => return plan_not_found(&plan_id),
                _ => break,
            },
            // The decision was taken (or, repeated, changed nothing).
            RuntimeEvent::Notice { .. }
            | RuntimeEvent::PlanUpdate { .. }
            | RuntimeEvent::PlanProgress { .. }
            | RuntimeEvent::ExecutionCompleted { .. }
            | RuntimeEvent::TurnFinished { .. } => break,
            _ => {}
        }
    }
    (
        StatusCode::OK,
        Json(json!({
            "plan_id": plan.id,
            "decision": decision.decision.as_str(),
            "status": "accepted",
        })),
    )
        .into_response()
}

/// The plan `plan_id` as `caller` sees it; the error response otherwise (404 for an unknown
/// plan and another user's).
async fn look_up(
    state: &AppState,
    caller: &Principal,
    plan_id: &str,
) -> Result<codelab_protocol::plans::PlanView, Response> {
    if !usable_id(plan_id) {
        return Err(plan_not_found(plan_id));
    }
    match state.runtime.plan(plan_id, &caller.user_id).await {
        Ok(plan) => Ok(plan),
        Err(RuntimeError::Status { status: 404, .. }) => Err(plan_not_found(plan_id)),
        Err(failure) => Err(gateway_failure(&failure)),
    }
}

fn plan_not_found(plan_id: &str) -> Response {
    let shown: String = plan_id.chars().take(MAX_ID_LEN).collect();
    error(
        StatusCode::NOT_FOUND,
        "not_found",
        format!("plan {shown} not found"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decision(body: &str) -> Result<Decision, String> {
        parse_decision(body.as_bytes())
    }

    #[test]
    fn decisions_and_their_synonyms_parse() {
        for (text, expected) in [
            ("approve", PlanDecision::Approve),
            ("approved", PlanDecision::Approve),
            ("reject", PlanDecision::Reject),
            ("rejected", PlanDecision::Reject),
            ("retry", PlanDecision::Retry),
            ("skip", PlanDecision::Skip),
            ("cancel", PlanDecision::Cancel),
        ] {
            let body = format!(r#"{{"decision":"{text}","feedback":null}}"#);
            assert_eq!(
                decision(&body),
                Ok(Decision {
                    decision: expected,
                    feedback: None
                }),
                "{text}"
            );
        }
        let modify = decision(r#"{"decision":"modify","feedback":"split step 2"}"#).unwrap();
        assert_eq!(modify.decision, PlanDecision::Modify);
        assert_eq!(modify.feedback.as_deref(), Some("split step 2"));
    }

    #[test]
    fn bad_bodies_say_what_is_wrong() {
        for (body, says) in [
            ("", "invalid JSON"),
            ("[]", "JSON object"),
            ("{}", "\"decision\" is required"),
            (r#"{"decision":null}"#, "\"decision\" is required"),
            (r#"{"decision":"APPROVE"}"#, "\"APPROVE\""),
            (r#"{"decision":"edit"}"#, "must be one of"),
            (r#"{"decision":3}"#, "got 3"),
            (r#"{"decision":"modify"}"#, "modify needs feedback"),
            (
                r#"{"decision":"modify","feedback":"  "}"#,
                "modify needs feedback",
            ),
            (
                r#"{"decision":"reject","feedback":1}"#,
                "feedback must be a string",
            ),
        ] {
            let message = decision(body).unwrap_err();
            assert!(message.contains(says), "{body}: {message}");
        }
    }
}
