//! Plans through the gateway (issue 18, "Wire"): the plan frames of a protocol-2 socket and of
//! a Flutter socket that declared the `plans` capability, the one assistant message a Flutter
//! socket without it gets, `plan_decision` frames, and the REST routes, with users kept apart.
//! Scripted with the mock model: the architect's `::tool create_plan {...}` proposes a plan.

use std::time::Duration;

use crate::common::{Socket, Stack, next_frame, open, send, start_stack};
use futures_util::StreamExt;
use reqwest::Method;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

/// The user message that makes the architect propose a one-subtask plan.
fn propose_plan() -> Value {
    let create_plan = r#"::tool create_plan {"title":"T","description":"D","subtasks":[{"title":"a","description":"do a","agent":"coder","estimated_time_minutes":1}]}"#;
    json!({"type": "user_message", "content": create_plan, "agent_type": "architect"})
}

/// The frame types the Flutter IDE renders (docs/websocket-protocol.md).
const FLUTTER_TYPES: [&str; 4] = ["assistant_message", "tool_call", "agent_switched", "error"];

/// Frames up to and including the first of type `kind`.
async fn frames_until(socket: &mut Socket, kind: &str) -> Vec<Value> {
    let mut frames = Vec::new();
    loop {
        let frame = next_frame(socket).await;
        let done = frame["type"] == kind;
        frames.push(frame);
        if done {
            return frames;
        }
    }
}

/// Frames up to and including the first that `done` accepts.
async fn frames_until_one(socket: &mut Socket, done: impl Fn(&Value) -> bool) -> Vec<Value> {
    let mut frames = Vec::new();
    loop {
        let frame = next_frame(socket).await;
        let last = done(&frame);
        frames.push(frame);
        if last {
            return frames;
        }
    }
}

/// A frame arriving within `wait`, if any.
async fn quiet(socket: &mut Socket, wait: Duration) -> Option<Value> {
    loop {
        match tokio::time::timeout(wait, socket.next()).await {
            Err(_) => return None,
            Ok(Some(Ok(Message::Text(text)))) => {
                return Some(serde_json::from_str(text.as_str()).unwrap());
            }
            Ok(Some(Ok(Message::Close(frame)))) => panic!("closed: {frame:?}"),
            Ok(None | Some(Err(_))) => panic!("the socket ended"),
            Ok(Some(Ok(_))) => {}
        }
    }
}

fn types(frames: &[Value]) -> Vec<&str> {
    frames.iter().map(|f| f["type"].as_str().unwrap()).collect()
}

/// A protocol-2 socket of `token` on `session`, past its `session_info`.
async fn protocol_two(stack: &Stack, token: &str, session: &str) -> Socket {
    let url = format!("{}?protocol=2", stack.ws_url(session));
    let mut socket = open(&url, &[("authorization", &format!("Bearer {token}"))])
        .await
        .unwrap();
    assert_eq!(next_frame(&mut socket).await["type"], "session_info");
    socket
}

async fn decide(stack: &Stack, token: &str, plan_id: &str, body: Value) -> (u16, Value) {
    let path = format!("/api/v1/plans/{plan_id}/decision");
    stack
        .call(Method::POST, &path, Some(token), Some(body))
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_protocol_two_client_approves_a_plan_and_watches_it_run() {
    let stack = start_stack().await;
    let (_, alice, session) = stack.user_with_session("alice").await;
    let (_, bob) = stack.user("bob").await;
    let mut socket = protocol_two(&stack, &alice, &session).await;

    send(&mut socket, &propose_plan()).await;
    let frames = frames_until(&mut socket, "plan_approval_required").await;
    assert!(
        !types(&frames).contains(&"tool_call"),
        "create_plan is no tool for the IDE: {frames:?}"
    );
    let required = frames.last().unwrap().clone();
    let plan_id = required["plan_id"].as_str().unwrap().to_owned();
    assert!(
        required["metadata"]["seq"].as_u64().unwrap() > 0,
        "{required}"
    );
    assert_eq!(required["plan_summary"]["title"], "T");
    assert_eq!(required["plan_summary"]["subtasks_count"], 1);
    assert_eq!(required["plan_summary"]["total_estimated_time_minutes"], 1);
    assert_eq!(required["plan"]["id"], plan_id.as_str());
    assert_eq!(required["plan"]["status"], "awaiting_approval");
    assert_eq!(required["plan"]["subtasks"][0]["agent"], "coder");
    assert_eq!(
        required["approval_request_id"],
        required["plan"]["approval_request_id"]
    );
    let waiting = frames_until(&mut socket, "turn_finished").await;
    assert_eq!(waiting.last().unwrap()["content"], "awaiting_tools");

    // A protocol-2 client that connects now gets the plan again, not a create_plan call.
    let mut late = protocol_two(&stack, &alice, &session).await;
    let again = next_frame(&mut late).await;
    assert_eq!(again["type"], "plan_approval_required", "{again}");
    assert_eq!(again["plan_id"], plan_id.as_str());
    assert_eq!(quiet(&mut late, Duration::from_millis(300)).await, None);

    // Another user sees none of it, and cannot decide it.
    let plan_path = format!("/api/v1/plans/{plan_id}");
    let session_plans = format!("/api/v1/sessions/{session}/plans");
    for path in [&plan_path, &session_plans] {
        let (status, body) = stack.get(path, Some(&bob)).await;
        assert_eq!(status, 404, "{path}: {body}");
    }
    let (status, body) = decide(&stack, &bob, &plan_id, json!({"decision": "approve"})).await;
    assert_eq!(status, 404, "{body}");
    let (status, plan) = stack.get(&plan_path, Some(&alice)).await;
    assert_eq!(status, 200, "{plan}");
    assert_eq!(
        plan["status"], "awaiting_approval",
        "bob's decision reached it"
    );

    let decision = json!({"type": "plan_decision", "plan_id": plan_id, "decision": "approve"});
    send(&mut socket, &decision).await;
    let run = frames_until_one(&mut socket, |f| {
        f["type"] == "turn_finished" && f["content"] != "awaiting_tools"
    })
    .await;
    let kinds = types(&run);
    let update = run.iter().find(|f| f["type"] == "plan_update").unwrap();
    assert_eq!(update["plan"]["status"], "approved", "{update}");
    let progress: Vec<(u64, &str)> = run
        .iter()
        .filter(|f| f["type"] == "plan_progress")
        .map(|f| {
            assert_eq!(f["plan_id"], plan_id.as_str());
            (
                f["subtask_id"].as_u64().unwrap(),
                f["status"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        progress,
        [(0, "in_progress"), (0, "completed")],
        "{kinds:?}"
    );
    let completed = run
        .iter()
        .find(|f| f["type"] == "execution_completed")
        .unwrap_or_else(|| panic!("no execution_completed in {kinds:?}"));
    assert_eq!(completed["plan_id"], plan_id.as_str());
    assert_eq!(completed["status"], "completed");
    assert!(
        completed["summary"]
            .as_str()
            .unwrap()
            .starts_with("Plan \"T\" completed."),
        "{completed}"
    );
    assert_eq!(run.last().unwrap()["content"], "completed");
    let seqs: Vec<u64> = run
        .iter()
        .filter_map(|f| f["metadata"]["seq"].as_u64())
        .collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");

    // REST shows the run; a decision the plan no longer waits for is a conflict.
    let (status, plan) = stack.get(&plan_path, Some(&alice)).await;
    assert_eq!(status, 200);
    assert_eq!(plan["status"], "completed");
    assert_eq!(plan["subtasks"][0]["status"], "completed");
    let (status, listed) = stack.get(&session_plans, Some(&alice)).await;
    assert_eq!(status, 200);
    assert_eq!(listed["plans"].as_array().unwrap().len(), 1);
    assert_eq!(listed["plans"][0]["id"], plan_id.as_str());
    let (status, body) = decide(&stack, &alice, &plan_id, json!({"decision": "reject"})).await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["error"], "conflict");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_flutter_client_gets_plan_frames_only_with_the_capability_and_rest_decides() {
    let stack = start_stack().await;
    let (_, alice, session) = stack.user_with_session("alice").await;
    let url = stack.ws_url(&session);
    // As the Flutter IDE connects: no token, the session id is the capability.
    let mut plain = open(&url, &[]).await.unwrap();
    let mut capable = open(&url, &[]).await.unwrap();
    let hello = json!({"type": "hello", "protocol": 1, "capabilities": ["plans", "telepathy"]});
    send(&mut capable, &hello).await;
    send(&mut capable, &propose_plan()).await;

    let required = frames_until(&mut capable, "plan_approval_required").await;
    let required = required.last().unwrap();
    let plan_id = required["plan_id"].as_str().unwrap().to_owned();
    assert!(required.get("metadata").is_none(), "{required}");
    assert_eq!(required["plan"]["title"], "T");

    // Without the capability: one assistant message with the plan and how to decide it.
    let frames = frames_until(&mut plain, "assistant_message").await;
    for frame in &frames {
        assert!(
            FLUTTER_TYPES.contains(&frame["type"].as_str().unwrap()),
            "the Flutter IDE would show {frame} as a bubble"
        );
    }
    let message = frames.last().unwrap()["content"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        message.starts_with("Plan: T (version 1, awaiting_approval)"),
        "{message}"
    );
    assert!(message.contains("[ ] 1. a (coder, ~1 min)"), "{message}");
    assert!(
        message.contains(&format!("POST /api/v1/plans/{plan_id}/decision")),
        "{message}"
    );
    assert_eq!(quiet(&mut plain, Duration::from_millis(300)).await, None);

    // A socket without a token may not decide it (like hitl_decision).
    let decision = json!({"type": "plan_decision", "plan_id": plan_id, "decision": "approve"});
    send(&mut capable, &decision).await;
    let refused = frames_until(&mut capable, "error").await;
    let refused = refused.last().unwrap();
    assert_eq!(refused["error_code"], "FORBIDDEN", "{refused}");
    assert!(
        refused["content"]
            .as_str()
            .unwrap()
            .contains("/api/v1/plans/{id}/decision"),
        "{refused}"
    );
    let plan_path = format!("/api/v1/plans/{plan_id}");
    let (_, plan) = stack.get(&plan_path, Some(&alice)).await;
    assert_eq!(
        plan["status"], "awaiting_approval",
        "the refused frame decided it"
    );

    // REST validates, then decides.
    for bad in [
        json!({"decision": "modify"}),
        json!({"decision": "modify", "feedback": " "}),
        json!({"decision": "APPROVE"}),
        json!({}),
    ] {
        let (status, body) = decide(&stack, &alice, &plan_id, bad.clone()).await;
        assert_eq!(status, 400, "{bad}: {body}");
        assert_eq!(body["error"], "invalid_request");
    }
    let (status, body) = decide(
        &stack,
        &alice,
        "no-such-plan",
        json!({"decision": "approve"}),
    )
    .await;
    assert_eq!(status, 404, "{body}");
    let (status, body) = decide(&stack, &alice, &plan_id, json!({"decision": "approved"})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body,
        json!({"plan_id": plan_id, "decision": "approve", "status": "accepted"})
    );

    // The capable socket watches the run; the plain one gets only the texts it renders.
    let run = frames_until(&mut capable, "execution_completed").await;
    assert!(types(&run).contains(&"plan_progress"), "{run:?}");
    let summary = run.last().unwrap()["summary"].as_str().unwrap().to_owned();
    let seen = frames_until_one(&mut plain, |f| f["content"] == summary.as_str()).await;
    for frame in &seen {
        assert!(
            FLUTTER_TYPES.contains(&frame["type"].as_str().unwrap()),
            "the Flutter IDE would show {frame} as a bubble"
        );
    }
    assert_eq!(quiet(&mut plain, Duration::from_millis(300)).await, None);
    let (_, plan) = stack.get(&plan_path, Some(&alice)).await;
    assert_eq!(plan["status"], "completed");
}
