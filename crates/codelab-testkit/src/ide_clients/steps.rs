//! Small steps the end-to-end suites share around the IDE clients: picking tool calls out of
//! received frames, building frames, and waiting for a protocol-2 socket to be live. A step that
//! cannot do its work panics: in a test, the panic is the report.

use serde_json::{Map, Value, json};

use super::{
    Bubble, FlutterSocket, P2Frame, Protocol2Client, Protocol2Options, ReceivedFrame,
    ToolCallRequest, TurnTranscript,
};

/// The JSON object `value` is.
pub fn object(value: Value) -> Map<String, Value> {
    match value {
        Value::Object(map) => map,
        other => panic!("not an object: {other}"),
    }
}

/// The tool call a received frame shows.
pub fn tool_call_of(frame: &ReceivedFrame) -> ToolCallRequest {
    match &frame.bubble {
        Some(Bubble::ToolCall(call)) => call.clone(),
        other => panic!("not a tool call: {other:?} ({})", frame.raw),
    }
}

pub fn is_tool_call(frame: &ReceivedFrame) -> bool {
    matches!(frame.bubble, Some(Bubble::ToolCall(_)))
}

/// A protocol-2 `user_message` frame addressed to `agent`.
pub fn user_message_to(agent: &str, text: &str) -> Value {
    json!({"type": "user_message", "content": text, "role": "user", "agent_type": agent})
}

/// Everything the Flutter IDE received parsed, and was of a type it knows.
pub fn assert_the_ide_understood_everything(socket: &FlutterSocket) {
    assert_eq!(socket.parse_errors(), Vec::<(&str, &str)>::new());
    assert_eq!(socket.unknown_types(), Vec::<&str>::new());
    assert_eq!(socket.bubbles().len(), socket.frames().len());
}

/// A protocol-2 socket whose `session_info` arrived: the resumption ran, so its fan-out
/// subscription is live and no later event can be missed.
pub async fn p2_ready(base_url: &str, session: &str, options: Protocol2Options) -> Protocol2Client {
    let mut client = Protocol2Client::connect(base_url, session, options)
        .await
        .expect("the protocol-2 socket connects");
    let info = client
        .wait_for_type("session_info")
        .await
        .expect("session_info arrives");
    assert_eq!(info.str("session_id"), Some(session), "{info:?}");
    client
}

/// What the IDE reports after running a tool successfully.
pub fn ran(content: &str) -> Map<String, Value> {
    object(json!({"success": true, "content": content}))
}

/// The IDE ran `tool` for `call_id` (its output `content`): sends the result and reads the rest
/// of the turn, which must not call another tool.
pub async fn report_ran(
    socket: &mut FlutterSocket,
    call_id: &str,
    tool: &str,
    content: &str,
) -> TurnTranscript {
    socket
        .send_tool_result(call_id, tool, ran(content))
        .await
        .expect("the tool result is sent");
    socket
        .continue_turn(|call| panic!("unexpected {call:?}"))
        .await
        .expect("the turn goes on")
}

/// Asks the coder agent, on a protocol-2 socket, for a `write_file` of `path` (content `x`)
/// and returns the `tool_call` frame that comes back.
pub async fn p2_ask_write(client: &mut Protocol2Client, path: &str) -> P2Frame {
    let request = format!(r#"::tool write_file {{"path":"{path}","content":"x"}}"#);
    client
        .send_json(&user_message_to("coder", &request))
        .await
        .expect("the user message is sent");
    client
        .wait_for_type("tool_call")
        .await
        .expect("the tool call arrives")
}

/// The stored events (`seq`) that `frames` hold more than once, with how often.
pub fn delivered_twice<'a>(frames: impl IntoIterator<Item = &'a P2Frame>) -> Vec<(u64, usize)> {
    let mut seen: std::collections::BTreeMap<u64, usize> = std::collections::BTreeMap::new();
    for seq in frames.into_iter().filter_map(P2Frame::seq) {
        *seen.entry(seq).or_default() += 1;
    }
    seen.into_iter().filter(|(_, n)| *n > 1).collect()
}

/// The user approves `call_id` over REST (`POST {base}/api/v1/sessions/{session}/approvals/..`),
/// as an IDE on another gateway would.
pub async fn approve_over_rest(
    base: &str,
    session: &str,
    call_id: &str,
    token: &str,
) -> reqwest::Response {
    reqwest::Client::new()
        .post(format!(
            "{base}/api/v1/sessions/{session}/approvals/{call_id}"
        ))
        .bearer_auth(token)
        .json(&json!({"decision": "approve"}))
        .send()
        .await
        .expect("the approval request is answered")
}

/// Approves `call_id` on a protocol-2 socket (`hitl_decision`) and returns the `tool_call` the
/// runtime sends again for the client to run.
pub async fn p2_approve(client: &mut Protocol2Client, call_id: &str) -> P2Frame {
    client
        .send_hitl_decision(call_id, "approve", None, None)
        .await
        .expect("the decision is sent");
    client
        .wait_for_type("tool_call")
        .await
        .expect("the approved call comes back")
}

/// No protocol-2 frame carries a key whose value is `null` (protocol 2 leaves them out).
pub fn assert_no_null_keys(frames: &[P2Frame]) {
    for frame in frames {
        if let Value::Object(map) = &frame.0 {
            assert!(map.values().all(|v| !v.is_null()), "null key in {frame:?}");
        }
    }
}
