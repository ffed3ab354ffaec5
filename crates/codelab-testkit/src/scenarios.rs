//! The conversations both gateway end-to-end suites hold: against the stack in process
//! (crates/codelab-stack/tests/gateway/e2e.rs) and against real processes behind nginx
//! (crates/codelab/tests/cli/e2e_nginx.rs). Each step drives an IDE client and checks what comes
//! back; a suite adds around a step the checks only its setting has. A step that cannot do its
//! work panics: in a test, the panic is the report.
#![expect(
    clippy::unwrap_used,
    reason = "a scenario that cannot unwrap has failed: the panic is the report"
)]

use serde_json::json;

use crate::ide_clients::steps::{
    approve_over_rest, assert_the_ide_understood_everything, delivered_twice, is_tool_call,
    p2_approve, ran, report_ran, tool_call_of, user_message_to,
};
use crate::ide_clients::{
    Bubble, FlutterReplicaClient, FlutterSocket, LoginError, P2Frame, Protocol2Client,
    SessionHistory, SessionModel, TokenSet, ToolCallRequest, ToolDecision, TurnTranscript,
};

/// A Flutter replica after its first turn.
pub struct FirstTurn {
    pub client: FlutterReplicaClient,
    pub tokens: TokenSet,
    pub session: SessionModel,
    pub socket: FlutterSocket,
    pub turn: TurnTranscript,
}

/// The Flutter IDE's start: a wrong password refused, `password` accepted at `auth_url`, a new
/// session listed, its socket opened, and the reply `greeting` shown. `new_client` makes a
/// replica on the gateway.
pub async fn flutter_first_turn(
    new_client: impl Fn() -> FlutterReplicaClient,
    auth_url: &str,
    username: &str,
    password: &str,
    greeting: &str,
) -> FirstTurn {
    let refused = new_client()
        .login(auth_url, username, "wrong-password")
        .await;
    assert!(
        matches!(refused, Err(LoginError::InvalidCredentials)),
        "{refused:?}"
    );
    let mut client = new_client();
    let tokens = client.login(auth_url, username, password).await.unwrap();
    assert_eq!(tokens.token_type.to_lowercase(), "bearer");
    let session = client.create_session().await.unwrap();
    assert_eq!(session.message_count, 0);
    let listed = client.list_sessions().await.unwrap();
    assert!(listed.iter().any(|s| s.id == session.id), "{listed:?}");

    // The IDE connects without any credentials.
    let mut socket = client.connect(&session.id).await.unwrap();
    // A plain answer: exactly one assistant bubble holding the whole text.
    let turn = socket
        .run_turn(&format!("::reply {greeting}"), |call| {
            panic!("no tool call expected: {call:?}")
        })
        .await
        .unwrap();
    assert_eq!(turn.assistant_texts(), vec![greeting]);
    FirstTurn {
        client,
        tokens,
        session,
        socket,
        turn,
    }
}

/// A tool call the IDE runs at once (`read_file` of `a.py`, no approval; `check` looks at the
/// call too), then one answer with the result.
pub async fn flutter_read_file_turn(
    socket: &mut FlutterSocket,
    check: impl Fn(&ToolCallRequest),
) -> TurnTranscript {
    let turn = socket
        .run_turn(r#"::tool read_file {"path":"a.py"}"#, |call| {
            assert_eq!(call.tool_name, "read_file");
            assert!(!call.requires_approval);
            check(call);
            ToolDecision::Result(ran("x = 1\n"))
        })
        .await
        .unwrap();
    let [answer] = turn.assistant_texts()[..] else {
        panic!("one answer expected: {turn:?}")
    };
    assert!(answer.contains("Tool read_file returned"), "{answer}");
    turn
}

/// Asks for a `write_file` of `a.md`, which needs approval: the call the IDE is shown.
pub async fn flutter_ask_write(socket: &mut FlutterSocket) -> ToolCallRequest {
    socket
        .send_user_message(r#"::tool write_file {"path":"a.md","content":"x"}"#)
        .await
        .unwrap();
    tool_call_of(&socket.wait_for("write_file", is_tool_call).await.unwrap())
}

/// The IDE runs the approved `write_file` of [`flutter_ask_write`] and reports it: the turn
/// answers with the result and nothing is pending any more.
pub async fn flutter_report_write(
    client: &FlutterReplicaClient,
    socket: &mut FlutterSocket,
    session: &str,
    call_id: &str,
) {
    let turn = report_ran(socket, call_id, "write_file", "wrote a.md").await;
    assert!(
        turn.assistant_texts()[0].contains("Tool write_file returned"),
        "{turn:?}"
    );
    assert_eq!(client.pending_approvals(session).await.unwrap().count, 0);
}

/// The user refuses a `write_file` of `b.md`; the turn goes on.
pub async fn flutter_refuse_write(socket: &mut FlutterSocket) -> TurnTranscript {
    socket
        .run_turn(
            r#"::tool write_file {"path":"b.md","content":"y"}"#,
            |call| {
                assert!(call.requires_approval);
                ToolDecision::Refuse
            },
        )
        .await
        .unwrap()
}

/// The history the IDE loads when it reopens `session` after the turns above, as bubbles.
pub async fn flutter_history(
    client: &FlutterReplicaClient,
    session: &str,
) -> (SessionHistory, Vec<Bubble>) {
    let history = client.history(session).await.unwrap();
    assert_eq!(history.session_id, session);
    assert!(history.message_count >= 8, "{history:?}");
    let bubbles: Vec<Bubble> = history.bubbles().into_iter().map(|b| b.unwrap()).collect();
    assert!(
        bubbles.iter().any(
            |b| matches!(b, Bubble::ToolCall(c) if c.tool_name == "write_file" && c.arguments["path"] == "b.md")
        ),
        "{bubbles:?}"
    );
    (history, bubbles)
}

/// The session menu renames `session` to `title`; the IDE understood every frame it got and
/// closes its socket.
pub async fn flutter_rename_and_close(
    client: &FlutterReplicaClient,
    socket: FlutterSocket,
    session: &str,
    title: &str,
) {
    let renamed = client.rename_session(session, title).await.unwrap();
    assert_eq!(renamed.title.as_deref(), Some(title));
    assert_the_ide_understood_everything(&socket);
    socket.close().await;
}

/// A reply streamed slowly (`::slow 20`) on protocol 2: every frame up to the whole text.
pub async fn p2_streamed_reply(v2: &mut Protocol2Client) -> Vec<P2Frame> {
    v2.send_user_message("::slow 20\n::reply alpha beta gamma delta epsilon")
        .await
        .unwrap();
    v2.collect_until("the final text", P2Frame::is_final_text)
        .await
        .unwrap()
}

/// A protocol-2 turn that asked for the approval of `call_id` (a `write_file`) pauses; the
/// approval on the socket sends the call again, the client reports it run, the turn completes.
pub async fn p2_approve_and_finish(v2: &mut Protocol2Client, call_id: &str) {
    let paused = v2.wait_for_type("turn_finished").await.unwrap();
    assert_eq!(paused.outcome(), Some("awaiting_tools"));
    let again = p2_approve(v2, call_id).await;
    assert_eq!(again.call_id(), Some(call_id));
    assert!(!again.requires_approval(), "{again:?}");
    v2.send_tool_result(call_id, "write_file", json!({"success": true}))
        .await
        .unwrap();
    let answer = v2
        .wait_for("the answer", P2Frame::is_final_text)
        .await
        .unwrap();
    assert!(
        answer.content().unwrap().contains("write_file"),
        "{answer:?}"
    );
    let done = v2.wait_for_type("turn_finished").await.unwrap();
    assert_eq!(done.outcome(), Some("completed"));
}

/// A protocol-2 client drops off while its reply streams (`::slow {slow_ms}`) and resumes by
/// `last_seq`, on `resume_on` when given: no stored event arrives twice and the whole text
/// once. Every frame both connections received.
pub async fn p2_drop_and_resume(
    mut first: Protocol2Client,
    slow_ms: u32,
    resume_on: Option<&str>,
) -> Vec<P2Frame> {
    let words: Vec<String> = (1..=15).map(|i| format!("word{i}")).collect();
    let text = words.join(" ");
    first
        .send_json(&user_message_to(
            "coder",
            &format!("::slow {slow_ms}\n::reply {text}"),
        ))
        .await
        .unwrap();
    // Drop the connection mid-turn, after the first stored events and a token.
    first.wait_for("a token", P2Frame::is_delta).await.unwrap();
    let mut point = first.abort();
    assert!(point.last_seq > 0, "{:?}", point.frames);
    if let Some(base) = resume_on {
        point.base_url = base.to_owned();
    }
    let mut second = point.resume().await.unwrap();
    second
        .wait_for("the turn's end", |f| f.is_turn_finished("completed"))
        .await
        .unwrap();

    let frames: Vec<P2Frame> = point
        .frames
        .iter()
        .chain(second.frames())
        .cloned()
        .collect();
    let duplicates = delivered_twice(&frames);
    assert!(duplicates.is_empty(), "delivered twice: {duplicates:?}");
    let finals: Vec<&P2Frame> = frames.iter().filter(|f| f.is_final_text()).collect();
    assert_eq!(finals.len(), 1, "{finals:?}");
    assert_eq!(finals[0].content(), Some(text.as_str()));
    frames
}

/// The IDE's socket on one gateway is asked to approve a `write_file` of `path`; the user
/// approves over REST at `other_base` (another gateway) and the IDE is sent the call again.
/// The call, and the call sent again.
pub async fn approve_on_another_gateway(
    ide: &mut FlutterSocket,
    path: &str,
    other_base: &str,
    session: &str,
    token: &str,
) -> (ToolCallRequest, ToolCallRequest) {
    ide.send_user_message(&format!(
        r#"::tool write_file {{"path":"{path}","content":"x"}}"#
    ))
    .await
    .unwrap();
    let call = tool_call_of(&ide.wait_for("the tool call", is_tool_call).await.unwrap());
    assert!(call.requires_approval);
    let response = approve_over_rest(other_base, session, &call.call_id, token).await;
    assert_eq!(response.status(), 200, "{:?}", response.text().await);

    let resent = tool_call_of(
        &ide.wait_for("the re-sent call", is_tool_call)
            .await
            .unwrap(),
    );
    assert_eq!(resent.call_id, call.call_id);
    (call, resent)
}
