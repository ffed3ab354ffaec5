//! End to end through the gateway with the testkit's IDE clients: the real auth service, LLM
//! proxy (mock model), agent runtime and gateway in process on ephemeral ports, SQLite.
//!
//! - the Flutter replica (`FlutterReplicaClient`) does what the Flutter IDE does, byte for byte:
//!   login, sessions, chat, tool calls, approvals decided in the IDE, refusals, history and
//!   pending approvals, and must never meet a frame it cannot parse or does not know;
//! - the protocol-2 client: token deltas, `hitl_decision`, REST approvals, cancellation,
//!   replay after a reconnect;
//! - authentication modes and bad tokens on the socket, robustness limits, abrupt disconnects;
//! - two gateways on one Redis.
//!
//! Every wait is bounded and returns when its condition holds; nothing sleeps.

use codelab_core::service::Service as _;
use std::collections::{BTreeSet, HashSet};
use std::sync::Arc;
use std::time::Duration;

use crate::common::{
    Stack, StackOptions, forge, jwt_claims, jwt_header, start_stack, start_stack_with,
};
use codelab_auth::tokens::TokenType;
use codelab_core::config::Environment;
use codelab_gateway::config::WsAuthMode;
use codelab_protocol::runtime::RuntimeEvent;
use codelab_testkit::ServerGuard;
use codelab_testkit::ide_clients::steps::{
    assert_no_null_keys, assert_the_ide_understood_everything, is_tool_call, object, p2_ask_write,
    p2_ready, report_ran, tool_call_of, user_message_to,
};
use codelab_testkit::ide_clients::{
    Bubble, ConnectError, FlutterReplicaClient, FlutterSocket, P2Frame, Protocol2Client,
    Protocol2Options, Role, TokenPlacement, ToolDecision,
};
use codelab_testkit::scenarios::{self, FirstTurn};
use jsonwebtoken::{EncodingKey, Header};
use reqwest::Method;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

/// Bound of every wait (generous: two cores are shared with other builds).
const WAIT: Duration = Duration::from_secs(30);

fn flutter(stack: &Stack) -> FlutterReplicaClient {
    FlutterReplicaClient::new(&stack.gateway_url).with_timeout(WAIT)
}

/// A Flutter replica logged in as `username` through the auth service's password grant.
async fn logged_in(stack: &Stack, username: &str, password: &str) -> FlutterReplicaClient {
    let mut client = flutter(stack);
    client
        .login(&stack.auth_url, username, password)
        .await
        .unwrap();
    client
}

/// The seeded admin's Flutter IDE with a new session and its socket.
async fn admin_socket(stack: &Stack) -> (FlutterReplicaClient, String, FlutterSocket) {
    let client = logged_in(stack, stack.admin_username, stack.admin_password).await;
    let session = client.create_session().await.unwrap().id;
    let socket = client.connect(&session).await.unwrap();
    (client, session, socket)
}

fn p2(token: Option<&str>) -> Protocol2Options {
    let options = Protocol2Options {
        timeout: WAIT,
        ..Protocol2Options::default()
    };
    match token {
        Some(token) => options.with_token(token, TokenPlacement::Query),
        None => options,
    }
}

/// `token` is refused in the query string and in the header of a protocol-2 socket on `session`.
async fn assert_token_refused(stack: &Stack, session: &str, token: &str, why: &str) {
    for placement in [TokenPlacement::Query, TokenPlacement::Header] {
        let options = p2(None).with_token(token, placement);
        assert_ws_refused(
            Protocol2Client::connect(&stack.gateway_url, session, options).await,
            why,
        )
        .await;
    }
}

/// The upgrade was refused (401/403 before upgrading) or the socket was closed with 1008.
async fn assert_ws_refused(result: Result<Protocol2Client, ConnectError>, why: &str) {
    match result {
        Err(ConnectError::Refused { status, .. }) => {
            assert!(status == 401 || status == 403, "{why}: HTTP {status}");
        }
        Err(other) => panic!("{why}: {other}"),
        Ok(mut client) => {
            let close = client.expect_closed().await.unwrap();
            assert_eq!(close.code, Some(1008), "{why}: {:?}", client.frames());
        }
    }
}

/// The user id (`sub`) of an access token.
fn user_of(token: &str) -> String {
    jwt_claims(token)["sub"].as_str().unwrap().to_owned()
}

// ---------------------------------------------------------------------------------------------
// (1) The Flutter IDE
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_flutter_ide_works_unchanged_from_login_to_history() {
    let stack = start_stack().await;
    let FirstTurn {
        client,
        tokens,
        session,
        mut socket,
        turn,
    } = scenarios::flutter_first_turn(
        || flutter(&stack),
        &stack.auth_url,
        stack.admin_username,
        stack.admin_password,
        "Hello from the replica IDE, in one piece",
    )
    .await;
    assert!(tokens.expires_in > 0);
    assert!(turn.tool_calls.is_empty());

    // A tool call the IDE runs at once, then the answer.
    let turn = scenarios::flutter_read_file_turn(&mut socket, |call| {
        assert_eq!(call.arguments, object(json!({"path": "a.py"})));
    })
    .await;
    assert_eq!(turn.tool_calls.len(), 1);
    let answer = turn.assistant_texts()[0];
    assert!(answer.contains("x = 1"), "{answer}");

    // A call that needs approval: the IDE asks the user, then runs it and reports the result.
    let call = scenarios::flutter_ask_write(&mut socket).await;
    assert_eq!(call.tool_name, "write_file");
    assert!(call.requires_approval);
    assert_eq!(
        call.arguments,
        object(json!({"path": "a.md", "content": "x"}))
    );
    // What a restarted IDE would restore.
    let pending = client.pending_approvals(&session.id).await.unwrap();
    assert_eq!(pending.session_id, session.id);
    assert_eq!(pending.count, 1);
    assert_eq!(pending.pending_approvals[0].call_id, call.call_id);
    assert_eq!(pending.pending_approvals[0].tool_name, "write_file");
    assert_eq!(pending.pending_approvals[0].arguments, call.arguments);
    scenarios::flutter_report_write(&client, &mut socket, &session.id, &call.call_id).await;

    // The user refuses: the IDE reports `Операция отклонена: write_file`.
    let turn = scenarios::flutter_refuse_write(&mut socket).await;
    let text = turn.assistant_texts()[0];
    assert!(text.contains("Операция отклонена: write_file"), "{text}");
    let pending = client.pending_approvals(&session.id).await.unwrap();
    assert_eq!(pending.count, 0);
    assert!(pending.pending_approvals.is_empty());

    // An explicit agent switch shows an agent indicator.
    socket
        .send_switch_agent("debug", "Why does the build fail?")
        .await
        .unwrap();
    let switched = socket
        .wait_for("agent_switched", |f| {
            matches!(f.bubble, Some(Bubble::AgentSwitch { .. }))
        })
        .await
        .unwrap();
    assert!(
        matches!(&switched.bubble, Some(Bubble::AgentSwitch { to_agent, .. }) if to_agent == "debug"),
        "{switched:?}"
    );

    // The history the IDE loads when it reopens the session.
    let (history, bubbles) = scenarios::flutter_history(&client, &session.id).await;
    assert!(bubbles.contains(&Bubble::Text {
        role: Role::Assistant,
        text: "Hello from the replica IDE, in one piece".into(),
        is_final: true,
    }));
    assert!(
        history.messages.iter().any(|m| m
            .content
            .as_deref()
            .unwrap_or("")
            .contains("Операция отклонена: write_file")),
        "{history:?}"
    );
    let listed = client.list_sessions().await.unwrap();
    let listed = listed.iter().find(|s| s.id == session.id).unwrap();
    assert_eq!(listed.message_count, history.message_count);

    // The session menu: open by id, rename, delete.
    let fetched = client.get_session(&session.id).await.unwrap();
    assert_eq!(fetched.id, session.id);
    assert_eq!(fetched.message_count, history.message_count);
    scenarios::flutter_rename_and_close(&client, socket, &session.id, "Replica chat").await;
    client.delete_session(&session.id).await.unwrap();
    assert_eq!(
        client.history(&session.id).await.unwrap_err().status(),
        Some(404),
        "the IDE shows an empty history"
    );
}

// ---------------------------------------------------------------------------------------------
// (2) Protocol 2
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn protocol_two_streams_tokens_then_the_whole_text() {
    let stack = start_stack().await;
    let token = stack.admin_token().await;
    let session = stack.new_session(&token).await;
    let mut client = p2_ready(&stack.gateway_url, &session, p2(Some(&token))).await;

    let frames = scenarios::p2_streamed_reply(&mut client).await;
    let deltas: Vec<&P2Frame> = frames.iter().filter(|f| f.is_delta()).collect();
    assert!(deltas.len() >= 3, "several token chunks: {frames:?}");
    assert!(
        deltas.iter().all(|d| d.seq().is_none()),
        "deltas are not stored"
    );
    let last = frames.last().unwrap();
    assert_eq!(last.content(), Some("alpha beta gamma delta epsilon"));
    assert_eq!(client.delta_text(), "alpha beta gamma delta epsilon");
    assert!(last.seq().is_some(), "{last:?}");
    let done = client.wait_for_type("turn_finished").await.unwrap();
    assert_eq!(done.outcome(), Some("completed"));
    assert_no_null_keys(client.frames());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn protocol_two_approves_on_the_socket_and_over_rest() {
    let stack = start_stack().await;
    let token = stack.admin_token().await;
    let client = logged_in(&stack, stack.admin_username, stack.admin_password).await;
    let session = client.create_session().await.unwrap().id;
    let mut v2 = p2_ready(&stack.gateway_url, &session, p2(Some(&token))).await;

    // hitl_decision on the socket: the call comes back without requires_approval.
    let call = p2_ask_write(&mut v2, "a.md").await;
    assert!(call.requires_approval(), "{call:?}");
    let call_id = call.call_id().unwrap().to_owned();
    let approval = v2.wait_for_type("approval_required").await.unwrap();
    assert_eq!(approval.call_id(), Some(call_id.as_str()));
    assert_eq!(approval.str("tool_name"), Some("write_file"));
    scenarios::p2_approve_and_finish(&mut v2, &call_id).await;

    // Over REST, with the Flutter IDE attached to the same session as well.
    let mut ide = client.connect(&session).await.unwrap();
    v2.send_user_message(r#"::tool write_file {"path":"b.md","content":"y"}"#)
        .await
        .unwrap();
    let call = v2.wait_for_type("tool_call").await.unwrap();
    assert!(call.requires_approval());
    let call_id = call.call_id().unwrap().to_owned();
    let seen = tool_call_of(&ide.wait_for("the tool call", is_tool_call).await.unwrap());
    assert_eq!(seen.call_id, call_id);
    assert!(seen.requires_approval);
    let (status, body) = stack
        .call(
            Method::POST,
            &format!("/api/v1/sessions/{session}/approvals/{call_id}"),
            Some(&token),
            Some(json!({"decision": "approve"})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let again = v2.wait_for_type("tool_call").await.unwrap();
    assert_eq!(again.call_id(), Some(call_id.as_str()));
    assert!(!again.requires_approval(), "{again:?}");
    let resent = tool_call_of(
        &ide.wait_for("the re-sent call", is_tool_call)
            .await
            .unwrap(),
    );
    assert_eq!(resent.call_id, call_id);
    assert!(!resent.requires_approval, "the IDE runs it without asking");
    // The IDE runs it; both sockets see the answer.
    let turn = report_ran(&mut ide, &call_id, "write_file", "wrote b.md").await;
    assert!(turn.assistant_texts()[0].contains("write_file"));
    v2.wait_for("the answer", P2Frame::is_final_text)
        .await
        .unwrap();
    assert_the_ide_understood_everything(&ide);
    assert_eq!(client.pending_approvals(&session).await.unwrap().count, 0);
    assert_no_null_keys(v2.frames());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cancel_turn_stops_a_streaming_reply() {
    let stack = start_stack().await;
    let token = stack.admin_token().await;
    let session = stack.new_session(&token).await;
    let mut client = p2_ready(&stack.gateway_url, &session, p2(Some(&token))).await;
    let words: Vec<String> = (1..=40).map(|i| format!("w{i}")).collect();
    client
        .send_json(&user_message_to(
            "coder",
            &format!("::slow 200\n::reply {}", words.join(" ")),
        ))
        .await
        .unwrap();
    client
        .wait_for("a first token", P2Frame::is_delta)
        .await
        .unwrap();
    client.cancel_turn().await.unwrap();
    let done = client.wait_for_type("turn_finished").await.unwrap();
    assert_eq!(done.outcome(), Some("cancelled"), "{:?}", client.frames());
    let deltas = client.frames().iter().filter(|f| f.is_delta()).count();
    assert!(deltas < words.len(), "stopped early: {deltas} tokens");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_reconnect_with_last_seq_loses_nothing_and_repeats_nothing() {
    let stack = start_stack().await;
    let token = stack.admin_token().await;
    let user = user_of(&token);
    let session = stack.new_session(&token).await;
    let first = p2_ready(&stack.gateway_url, &session, p2(Some(&token))).await;
    let frames = scenarios::p2_drop_and_resume(first, 40, None).await;
    // Every stored event a protocol-2 client is shown arrived exactly once.
    let stored = stack.stored_events(&session, &user).await;
    let shown: Vec<u64> = stored
        .iter()
        .filter(|e| {
            matches!(
                e.event,
                RuntimeEvent::SessionInfo { .. }
                    | RuntimeEvent::AgentSwitched { .. }
                    | RuntimeEvent::AssistantMessage { .. }
                    | RuntimeEvent::ToolCall { .. }
                    | RuntimeEvent::ApprovalRequired { .. }
                    | RuntimeEvent::TurnFinished { .. }
                    | RuntimeEvent::Error { .. }
            )
        })
        .map(|e| e.seq)
        .collect();
    let received: BTreeSet<u64> = frames.iter().filter_map(P2Frame::seq).collect();
    let received: Vec<u64> = received.into_iter().collect();
    assert_eq!(received, shown, "stored: {stored:?}");
}

// ---------------------------------------------------------------------------------------------
// (3) Authentication modes
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn required_mode_refuses_tokenless_sockets_and_accepts_tokens() {
    let stack = start_stack_with(StackOptions::gateway(|c| {
        c.ws_auth = Some(WsAuthMode::Required)
    }))
    .await;
    let client = logged_in(&stack, stack.admin_username, stack.admin_password).await;
    let token = client.access_token().unwrap().to_owned();
    let session = client.create_session().await.unwrap().id;

    // The Flutter IDE sends no token: refused before the upgrade.
    let refused = client.connect(&session).await.unwrap_err();
    assert!(matches!(refused.status(), Some(401 | 403)), "{refused:?}");
    assert_ws_refused(
        Protocol2Client::connect(&stack.gateway_url, &session, p2(None)).await,
        "no token",
    )
    .await;

    for placement in [TokenPlacement::Query, TokenPlacement::Header] {
        let options = p2(None).with_token(&token, placement);
        let mut client = p2_ready(&stack.gateway_url, &session, options).await;
        client
            .send_json(&user_message_to("coder", "::reply authenticated"))
            .await
            .unwrap();
        let answer = client
            .wait_for("the answer", P2Frame::is_final_text)
            .await
            .unwrap();
        assert_eq!(answer.content(), Some("authenticated"), "{placement:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn session_mode_accepts_an_existing_session_id_without_a_token_only() {
    let stack = start_stack().await;
    let (client, _session, mut socket) = admin_socket(&stack).await;
    let turn = socket
        .run_turn("::reply attached by id", |c| panic!("{c:?}"))
        .await
        .unwrap();
    assert_eq!(turn.assistant_texts(), vec!["attached by id"]);

    let unknown = uuid_like();
    let refused = client.connect(&unknown).await.unwrap_err();
    assert!(matches!(refused.status(), Some(401 | 403)), "{refused:?}");
    assert_ws_refused(
        Protocol2Client::connect(&stack.gateway_url, &unknown, p2(None)).await,
        "unknown session",
    )
    .await;
}

/// A random id in the shape of the runtime's session ids.
fn uuid_like() -> String {
    let hex = codelab_core::random_hex(16);
    format!(
        "{}-{}-4{}-a{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[13..16],
        &hex[17..20],
        &hex[20..32]
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn off_mode_creates_sessions_on_first_use() {
    let stack =
        start_stack_with(StackOptions::gateway(|c| c.ws_auth = Some(WsAuthMode::Off))).await;
    let session = format!("e2e-dev-{}", codelab_core::random_hex(6));
    // Nobody logged in, nothing created beforehand.
    let client = flutter(&stack);
    let mut socket = client.connect(&session).await.unwrap();
    let turn = socket
        .run_turn("::reply made on first use", |c| panic!("{c:?}"))
        .await
        .unwrap();
    assert_eq!(turn.assistant_texts(), vec!["made on first use"]);
    assert_the_ide_understood_everything(&socket);
    // The session exists now, with that id.
    let mut again = p2_ready(&stack.gateway_url, &session, p2(None)).await;
    assert!(
        again.frames()[0].str("agent_type").is_some(),
        "an existing session has an agent: {:?}",
        again.frames()
    );
    again
        .send_user_message("::reply second visit")
        .await
        .unwrap();
    let answer = again
        .wait_for("the answer", P2Frame::is_final_text)
        .await
        .unwrap();
    assert_eq!(answer.content(), Some("second visit"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn another_users_session_is_refused_on_rest_and_on_the_socket() {
    let stack = start_stack().await;
    let (_, alice_token) = stack.user("alice").await;
    let (_, bob_token) = stack.user("bob").await;
    let mut alice = flutter(&stack);
    alice.set_access_token(&alice_token);
    let session = alice.create_session().await.unwrap().id;
    let mut socket = alice.connect(&session).await.unwrap();
    socket
        .run_turn(r#"::tool write_file {"path":"a.md","content":"x"}"#, |_| {
            ToolDecision::Refuse
        })
        .await
        .unwrap();

    let mut bob = flutter(&stack);
    bob.set_access_token(&bob_token);
    assert_eq!(bob.history(&session).await.unwrap_err().status(), Some(404));
    assert_eq!(
        bob.pending_approvals(&session).await.unwrap_err().status(),
        Some(404)
    );
    assert!(
        !bob.list_sessions()
            .await
            .unwrap()
            .iter()
            .any(|s| s.id == session)
    );
    assert_token_refused(&stack, &session, &bob_token, "bob on alice's session").await;
    // Alice still gets in with her token.
    p2_ready(&stack.gateway_url, &session, p2(Some(&alice_token))).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_tokens_on_the_socket_are_refused_even_where_none_is_needed() {
    let stack = start_stack().await;
    let token = stack.admin_token().await;
    let session = stack.new_session(&token).await;
    let claims = jwt_claims(&token);

    let signer = |audience: &str| stack.signer(&stack.issuer, audience);
    let wrong_audience = signer("someone-else")
        .issue(
            TokenType::Access,
            claims["sub"].as_str().unwrap(),
            "codelab-flutter-app",
            "api:read api:write",
            900,
        )
        .unwrap()
        .token;
    let alg_none = forge(&json!({"alg": "none", "typ": "JWT"}), &claims, b"");
    let jwks: Value = stack.jwks().await;
    let mut header = Header::new(jsonwebtoken::Algorithm::HS256);
    header.kid = jwt_header(&token)["kid"].as_str().map(str::to_owned);
    let hs256_with_public_key = jsonwebtoken::encode(
        &header,
        &claims,
        &EncodingKey::from_secret(jwks["keys"][0].to_string().as_bytes()),
    )
    .unwrap();

    // Without a token the session id alone is enough (session mode) ...
    p2_ready(&stack.gateway_url, &session, p2(None)).await;
    // ... and the valid token works.
    p2_ready(&stack.gateway_url, &session, p2(Some(&token))).await;
    // A bad token is never ignored.
    for (why, bad) in [
        ("wrong audience", wrong_audience.as_str()),
        ("alg none", alg_none.as_str()),
        ("HS256 with the public key", hs256_with_public_key.as_str()),
        ("garbage", "not-a-jwt"),
    ] {
        assert_token_refused(&stack, &session, bad, why).await;
    }
    // Expired: 15 minutes of lifetime plus the leeway.
    stack.clock.advance(Duration::from_secs(900 + 120));
    assert_token_refused(&stack, &session, &token, "expired").await;
}

// ---------------------------------------------------------------------------------------------
// (4) Robustness
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_oversized_frame_closes_the_socket_with_1009() {
    let stack = start_stack_with(StackOptions::gateway(|c| c.ws_max_frame_bytes = 64 * 1024)).await;
    let (_client, _session, mut socket) = admin_socket(&stack).await;
    socket
        .send_user_message(&"x".repeat(100 * 1024))
        .await
        .unwrap();
    let close = socket.expect_closed().await.unwrap();
    assert_eq!(close.code, Some(1009), "{close:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_flood_gets_error_frames_then_a_1008_close() {
    let stack = start_stack().await;
    let (_client, _session, mut socket) = admin_socket(&stack).await;
    let limit = stack.gateway.config.ws_max_messages_per_second as usize;
    for _ in 0..limit * 3 {
        // The server closes mid-flood; later sends may fail.
        if socket.send_raw_text(r#"{"type":"nope"}"#).await.is_err() {
            break;
        }
    }
    let close = socket.expect_closed().await.unwrap();
    assert_eq!(close.code, Some(1008), "{close:?}");
    let errors: Vec<String> = socket
        .bubbles()
        .into_iter()
        .filter_map(|b| match b {
            Bubble::Error { message } => Some(message.clone()),
            _ => None,
        })
        .collect();
    assert!(
        errors.iter().any(|e| e == "Unknown message type: nope"),
        "{errors:?}"
    );
    assert!(
        errors.iter().any(|e| e.contains("rate limit")),
        "{errors:?}"
    );
    assert_the_ide_understood_everything(&socket);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn garbage_frames_get_error_frames_and_the_socket_stays_open() {
    let stack = start_stack().await;
    let (_client, _session, mut socket) = admin_socket(&stack).await;
    for (garbage, expected) in [
        ("{", "Invalid JSON message"),
        (
            "[1]",
            "Invalid JSON message: expected a JSON object, got an array",
        ),
        (r#"{"type":"nope"}"#, "Unknown message type: nope"),
        (r#"{"type":"tool_result"}"#, "call_id"),
    ] {
        socket.send_raw_text(garbage).await.unwrap();
        let frame = socket.next_frame().await.unwrap();
        match &frame.bubble {
            Some(Bubble::Error { message }) => {
                assert!(message.contains(expected), "{garbage}: {message}");
            }
            other => panic!("{garbage}: expected an error bubble, got {other:?}"),
        }
    }
    let turn = socket
        .run_turn("::reply still here", |c| panic!("{c:?}"))
        .await
        .unwrap();
    assert_eq!(turn.assistant_texts(), vec!["still here"]);
    assert_the_ide_understood_everything(&socket);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_turn_survives_the_ide_dropping_off_mid_turn() {
    let stack = start_stack().await;
    let client = logged_in(&stack, stack.admin_username, stack.admin_password).await;
    let token = client.access_token().unwrap().to_owned();
    let session = client.create_session().await.unwrap().id;
    // An observer that tells when the runtime is done (it is not the IDE).
    let mut observer = p2_ready(&stack.gateway_url, &session, p2(Some(&token))).await;

    // The IDE asks for a write and vanishes before the tool call arrives.
    let mut socket = client.connect(&session).await.unwrap();
    socket
        .send_user_message(
            r#"::slow 50
::tool write_file {"path":"c.md","content":"z"}"#,
        )
        .await
        .unwrap();
    socket.abort();
    let paused = observer
        .wait_for("the turn to wait for the IDE", |f| {
            f.kind() == "turn_finished"
        })
        .await
        .unwrap();
    assert_eq!(paused.outcome(), Some("awaiting_tools"));

    // Restarted, the IDE restores the approval from REST and answers it on a new socket.
    let pending = client.pending_approvals(&session).await.unwrap();
    assert_eq!(pending.count, 1, "{pending:?}");
    let approval = &pending.pending_approvals[0];
    assert_eq!(approval.tool_name, "write_file");
    assert_eq!(approval.arguments["path"], "c.md");
    let mut socket = client.connect(&session).await.unwrap();
    let turn = report_ran(
        &mut socket,
        &approval.call_id,
        &approval.tool_name,
        "wrote c.md",
    )
    .await;
    assert!(turn.assistant_texts()[0].contains("write_file"), "{turn:?}");
    assert_eq!(client.pending_approvals(&session).await.unwrap().count, 0);
    observer
        .wait_for("the turn's end", |f| f.is_turn_finished("completed"))
        .await
        .unwrap();

    // A streaming answer whose IDE vanishes is still stored whole.
    socket
        .send_user_message("::slow 30\n::reply the answer survives the disconnect")
        .await
        .unwrap();
    socket.abort();
    observer
        .wait_for("the second turn's end", |f| f.is_turn_finished("completed"))
        .await
        .unwrap();
    let history = client.history(&session).await.unwrap();
    assert!(
        history.messages.iter().any(|m| m.role == "assistant"
            && m.content.as_deref() == Some("the answer survives the disconnect")),
        "{history:?}"
    );
    // A protocol-2 client that reconnects from the start gets it replayed.
    let replay = Protocol2Options {
        last_seq: Some(0),
        ..p2(Some(&token))
    };
    let mut back = Protocol2Client::connect(&stack.gateway_url, &session, replay)
        .await
        .unwrap();
    back.wait_for("the replayed answer", |f| {
        f.is_final_text() && f.content() == Some("the answer survives the disconnect")
    })
    .await
    .unwrap();
}

// ---------------------------------------------------------------------------------------------
// (5) Two gateways, one Redis
// ---------------------------------------------------------------------------------------------

/// A gateway replica with its own state (as another process would have), on the test Redis
/// with `prefix`, talking to the stack's runtime and auth service.
async fn replica(stack: &Stack, prefix: &str) -> (ServerGuard, Arc<codelab_gateway::AppState>) {
    let url = codelab_testkit::databases::redis_url();
    let config = codelab_gateway::Config {
        redis_url: Some(url.clone()),
        // A unique channel prefix keeps parallel runs apart.
        redis_prefix: prefix.to_owned(),
        ..(*stack.gateway.config).clone()
    };
    let state = codelab_gateway::GatewayService::build(
        config,
        codelab_core::service::SharedDeps::isolated(Environment::Development)
            .with_shutdown(CancellationToken::new())
            .with_clock(Arc::new(stack.clock.clone())),
    )
    .await
    .unwrap_or_else(|e| {
        panic!(
            "this test needs Redis at {url} ({e}); start redis-server or set CODELAB_TEST_REDIS_URL"
        )
    });
    assert!(state.fanout.is_redis());
    let server =
        ServerGuard::start(codelab_gateway::GatewayService::router(Arc::clone(&state))).await;
    (server, state)
}

/// Removes whatever the test left under `prefix` (pub/sub leaves no keys; be sure anyway).
async fn clean_redis(prefix: &str) -> usize {
    let client = redis::Client::open(codelab_testkit::databases::redis_url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}*"))
        .query_async(&mut conn)
        .await
        .unwrap();
    if !keys.is_empty() {
        let _: () = redis::cmd("DEL")
            .arg(&keys)
            .query_async(&mut conn)
            .await
            .unwrap();
    }
    keys.len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_approval_on_gateway_b_reaches_the_socket_on_gateway_a() {
    let stack = start_stack().await;
    let prefix = format!("codelab:e2e:{}:", codelab_core::random_hex(6));
    let (gateway_a, _a) = replica(&stack, &prefix).await;
    let (gateway_b, _b) = replica(&stack, &prefix).await;

    let mut client = FlutterReplicaClient::new(&gateway_a.base_url()).with_timeout(WAIT);
    client
        .login(&stack.auth_url, stack.admin_username, stack.admin_password)
        .await
        .unwrap();
    let token = client.access_token().unwrap().to_owned();
    let session = client.create_session().await.unwrap().id;
    let mut ide = client.connect(&session).await.unwrap();
    // Its session_info means gateway A's Redis subscription to this session is live.
    let mut v2 = p2_ready(&gateway_a.base_url(), &session, p2(Some(&token))).await;

    // The approval arrives on the other replica.
    let (call, resent) = scenarios::approve_on_another_gateway(
        &mut ide,
        "a.md",
        &gateway_b.base_url(),
        &session,
        &token,
    )
    .await;
    assert!(!resent.requires_approval);
    let again = v2
        .wait_for("the re-sent call", |f| {
            f.kind() == "tool_call" && !f.requires_approval()
        })
        .await
        .unwrap();
    assert_eq!(again.call_id(), Some(call.call_id.as_str()));
    let turn = report_ran(&mut ide, &call.call_id, "write_file", "wrote a.md").await;
    assert!(turn.assistant_texts()[0].contains("write_file"));
    assert_the_ide_understood_everything(&ide);
    let kinds: HashSet<&str> = v2.frames().iter().map(P2Frame::kind).collect();
    assert!(kinds.contains("approval_required"), "{kinds:?}");

    ide.close().await;
    drop(v2);
    assert_eq!(clean_redis(&prefix).await, 0, "pub/sub leaves no keys");
}

/// A protocol-2 client that sends `hello` and its first message as soon as it is connected:
/// the resumptions read the session before that message is relayed, so its tool
/// calls arrive once (live, with their `seq`), never also as "still open" from the
/// resumption. Repeated, as the race needs the runtime to be quick.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_message_sent_at_connect_is_not_also_replayed_as_open() {
    let stack = start_stack().await;
    let client = logged_in(&stack, stack.admin_username, stack.admin_password).await;
    let token = client.access_token().unwrap().to_owned();
    for attempt in 0..20 {
        let session = client.create_session().await.unwrap().id;
        let mut socket = Protocol2Client::connect(&stack.gateway_url, &session, p2(Some(&token)))
            .await
            .unwrap();
        // As `codelab chat` does: `hello`, then the message at once.
        socket
            .send_json(&json!({"type": "hello", "protocol": 2}))
            .await
            .unwrap();
        socket
            .send_json(&user_message_to(
                "coder",
                "::tool list_files {\"path\":\".\"}\n::tool read_file {\"path\":\"a\"}",
            ))
            .await
            .unwrap();
        socket
            .wait_for("the turn's pause", |f| f.is_turn_finished("awaiting_tools"))
            .await
            .unwrap();
        let calls: Vec<&str> = socket
            .frames()
            .iter()
            .filter(|f| f.kind() == "tool_call")
            .filter_map(P2Frame::call_id)
            .collect();
        assert_eq!(calls.len(), 2, "attempt {attempt}: {calls:?}");
    }
}
