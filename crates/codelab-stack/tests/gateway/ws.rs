//! The WebSocket half of the gateway: the fan-out (in process, and over Redis at
//! `CODELAB_TEST_REDIS_URL` between two replicas), the runtime client against the real runtime,
//! and sockets end to end against the whole stack (auth service, runtime, mock LLM) with a
//! plain tokio-tungstenite client: the Flutter profile's whole messages, protocol 2's deltas,
//! refused frames, limits, auth modes, resumption and two gateways on one Redis.

use codelab_core::service::Service as _;
use std::sync::Arc;
use std::time::Duration;

use crate::common::{
    PROMPTLY, Socket, StackOptions, close_frame, closed_url, next_frame as frame, open, refusal,
    start_stack, start_stack_tweaked, start_stack_with, ws_url,
};
use codelab_gateway::config::WsAuthMode;
use codelab_gateway::fanout::{Delivery, Fanout};
use codelab_gateway::runtime_client::{RuntimeClient, RuntimeError};
use codelab_protocol::runtime::{RuntimeEvent, SequencedEvent};
use codelab_stack::InternalCalls;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;

fn notice(seq: u64, text: &str) -> SequencedEvent {
    SequencedEvent {
        seq,
        event: RuntimeEvent::Notice {
            message: text.to_owned(),
        },
    }
}

fn redis_url() -> String {
    codelab_testkit::databases::redis_url()
}

/// A fan-out on the test Redis with a prefix no other test uses.
async fn redis_fanout(prefix: &str) -> Fanout {
    let url = redis_url();
    match Fanout::connect(Some(&url), prefix).await {
        Ok(fanout) => fanout,
        Err(error) => panic!(
            "this test needs Redis at {url} ({error}); start redis-server or set \
             CODELAB_TEST_REDIS_URL"
        ),
    }
}

async fn next_event(
    subscription: &mut codelab_gateway::fanout::FanoutSubscription,
) -> SequencedEvent {
    match tokio::time::timeout(PROMPTLY, subscription.recv()).await {
        Ok(Some(Delivery::Event(event))) => (*event).clone(),
        other => panic!("expected an event, got {other:?}"),
    }
}

// ---------------------------------------------------------------------------------------------
// Fan-out
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn in_process_fanout_reaches_every_socket_of_the_session_only() {
    let fanout = Fanout::connect(None, "test:").await.unwrap();
    let mut a = fanout.subscribe("s1");
    let mut b = fanout.subscribe("s1");
    let mut other = fanout.subscribe("s2");
    assert!(a.ready(PROMPTLY).await);
    fanout.publish("s1", &notice(1, "one")).await;
    assert_eq!(next_event(&mut a).await, notice(1, "one"));
    assert_eq!(next_event(&mut b).await, notice(1, "one"));
    assert!(
        tokio::time::timeout(Duration::from_millis(100), other.recv())
            .await
            .is_err(),
        "another session's socket got the event"
    );
    // As a Stream of events.
    drop(a);
    fanout.publish("s1", &notice(2, "two")).await;
    assert_eq!(b.next().await.unwrap(), notice(2, "two"));
}

/// The `host:port` of a `redis://` URL, and the URL with it replaced by `address`.
fn redis_url_through(url: &str, address: std::net::SocketAddr) -> (String, String) {
    let rest = url.strip_prefix("redis://").expect("a redis:// URL");
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let (credentials, target) = match authority.rsplit_once('@') {
        Some((credentials, target)) => (format!("{credentials}@"), target),
        None => (String::new(), authority),
    };
    (
        target.to_owned(),
        format!("redis://{credentials}{address}{path}"),
    )
}

/// Regression (several hosts, docs/reliability.md): a replica whose link to Redis drops
/// silently waited for the command timeout (5 s) on every event, so a turn on it crawled, and
/// the other replicas never learnt what they had missed. Now the first failed publish opens an
/// outage: later events are delivered locally at once, and when Redis answers again the other
/// replicas' subscribers are told to catch up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_cut_from_redis_delivers_locally_and_the_others_catch_up_after() {
    let prefix = format!("codelab:test:{}:", codelab_core::random_hex(6));
    let url = redis_url();
    let (target, _) = redis_url_through(&url, ([127, 0, 0, 1], 0).into());
    let relay = codelab_testkit::relay::Relay::start(&target).await;
    let (_, through_relay) = redis_url_through(&url, relay.address());
    let cut_off = Fanout::connect(Some(&through_relay), &prefix)
        .await
        .unwrap();
    let other = redis_fanout(&prefix).await;
    let mut here = cut_off.subscribe("sess");
    let mut there = other.subscribe("sess");
    for subscription in [&mut here, &mut there] {
        assert!(
            subscription.ready(PROMPTLY).await,
            "subscription not confirmed"
        );
    }
    cut_off.publish("sess", &notice(1, "before")).await;
    for subscription in [&mut here, &mut there] {
        assert_eq!(next_event(subscription).await.seq, 1);
    }

    relay.cut();
    // The first publish finds out (after the command timeout); the next ones do not wait.
    cut_off.publish("sess", &notice(2, "during")).await;
    let later = std::time::Instant::now();
    for seq in 3..=5 {
        cut_off.publish("sess", &notice(seq, "during")).await;
    }
    assert!(
        later.elapsed() < Duration::from_secs(4),
        "three publishes during the outage took {:?}",
        later.elapsed()
    );
    for seq in 2..=5 {
        assert_eq!(next_event(&mut here).await.seq, seq, "delivered locally");
    }
    assert!(
        tokio::time::timeout(Duration::from_millis(200), there.recv())
            .await
            .is_err(),
        "the other replica cannot have anything during the cut"
    );

    relay.heal();
    // Without another event, the other replica's subscriber is told it missed some (its
    // socket then replays them from the runtime). The publish held during the cut may reach
    // it first.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match tokio::time::timeout(left, there.recv()).await {
            Ok(Some(Delivery::Lagged)) => break,
            Ok(Some(Delivery::Event(event))) => assert_eq!(event.seq, 2, "{event:?}"),
            other => panic!("expected a gap after healing, got {other:?}"),
        }
    }
    // The publish that timed out reaches Redis after all when the link heals; the cut
    // replica's own subscriber, which had it locally, does not get it twice.
    assert_eq!(
        tokio::time::timeout(PROMPTLY, here.recv())
            .await
            .ok()
            .flatten(),
        Some(Delivery::Lagged),
        "the gap marker, and no second copy of event 2"
    );
    // Publishing goes through Redis again.
    cut_off.publish("sess", &notice(6, "after")).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match tokio::time::timeout(left, there.recv()).await {
            Ok(Some(Delivery::Event(event))) if event.seq == 6 => break,
            Ok(Some(_)) => {}
            other => panic!("expected event 6 through Redis, got {other:?}"),
        }
    }
    assert_eq!(next_event(&mut here).await.seq, 6);
    assert!(
        tokio::time::timeout(Duration::from_millis(200), here.recv())
            .await
            .is_err(),
        "an event was delivered twice"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_fanout_carries_events_between_replicas() {
    let prefix = format!("codelab:test:{}:", codelab_core::random_hex(6));
    let replica_a = redis_fanout(&prefix).await;
    let replica_b = redis_fanout(&prefix).await;
    assert!(replica_a.is_redis());
    replica_a.ping().await.unwrap();

    let mut on_a = replica_a.subscribe("sess");
    let mut also_on_a = replica_a.subscribe("sess");
    let mut on_b = replica_b.subscribe("sess");
    for subscription in [&mut on_a, &mut also_on_a, &mut on_b] {
        assert!(
            subscription.ready(PROMPTLY).await,
            "subscription not confirmed"
        );
    }
    // Published on B: every socket on both replicas gets it once, in order.
    for seq in 1..=3 {
        replica_b.publish("sess", &notice(seq, "from b")).await;
    }
    for subscription in [&mut on_a, &mut also_on_a, &mut on_b] {
        for seq in 1..=3 {
            assert_eq!(next_event(subscription).await.seq, seq);
        }
    }
    assert!(
        tokio::time::timeout(Duration::from_millis(200), on_a.recv())
            .await
            .is_err(),
        "an event was delivered twice"
    );

    // The last local subscriber leaving unsubscribes the replica from Redis.
    let channel = format!("{prefix}events:sess");
    let client = redis::Client::open(redis_url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let subscribers = |conn: &mut redis::aio::MultiplexedConnection| {
        let mut conn = conn.clone();
        let channel = channel.clone();
        async move {
            let (_, count): (String, u64) = redis::cmd("PUBSUB")
                .arg("NUMSUB")
                .arg(&channel)
                .query_async::<Vec<(String, u64)>>(&mut conn)
                .await
                .unwrap()
                .remove(0);
            count
        }
    };
    assert_eq!(subscribers(&mut conn).await, 2);
    drop(on_a);
    assert_eq!(
        subscribers(&mut conn).await,
        2,
        "A still has a socket on the session"
    );
    drop(also_on_a);
    let deadline = tokio::time::Instant::now() + PROMPTLY;
    while subscribers(&mut conn).await != 1 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "A never unsubscribed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    replica_a.publish("sess", &notice(4, "from a")).await;
    assert_eq!(next_event(&mut on_b).await.seq, 4);
}

// ---------------------------------------------------------------------------------------------
// Runtime client
// ---------------------------------------------------------------------------------------------

/// The events of `frame` sent by `user` (`dev`: in the development mode).
async fn events_of(
    client: &RuntimeClient,
    session: &str,
    user: &str,
    frame: Value,
    dev: bool,
) -> Vec<SequencedEvent> {
    let mut stream = client
        .stream_frame(session, user, frame, dev)
        .await
        .unwrap();
    let mut events = Vec::new();
    while let Some(event) = stream.next().await {
        events.push(event.unwrap());
    }
    events
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_runtime_client_streams_replays_and_reports_the_runtimes_errors() {
    let stack = start_stack().await;
    let client = stack.gateway.runtime.clone();
    client.health().await.unwrap();
    let (status, created) = client
        .request(reqwest::Method::POST, "/sessions", "alice", None, false)
        .await
        .unwrap();
    assert_eq!(status, 201);
    let session = created["id"].as_str().unwrap().to_owned();

    let hi =
        json!({"type": "user_message", "content": "hi", "role": "user", "agent_type": "coder"});
    let events = events_of(&client, &session, "alice", hi, false).await;
    assert!(matches!(events[0].event, RuntimeEvent::SessionInfo { .. }));
    assert!(matches!(
        events.last().unwrap().event,
        RuntimeEvent::TurnFinished { .. }
    ));
    assert!(
        events
            .iter()
            .any(|e| matches!(e.event, RuntimeEvent::AssistantDelta { .. }) && e.seq == 0)
    );

    // Replays: everything stored after a point, deltas excluded.
    let stored: Vec<u64> = events.iter().map(|e| e.seq).filter(|s| *s > 0).collect();
    let replay = client.events_after(&session, "alice", 0).await.unwrap();
    assert_eq!(replay.iter().map(|e| e.seq).collect::<Vec<_>>(), stored);
    let tail = client
        .events_after(&session, "alice", stored[1])
        .await
        .unwrap();
    assert_eq!(tail.first().unwrap().seq, stored[2]);

    assert_eq!(
        client.session_owner(&session).await.unwrap().as_deref(),
        Some("alice")
    );
    assert_eq!(client.session_owner("missing").await.unwrap(), None);

    // Refusals carry the runtime's status and detail.
    let x = json!({"type": "user_message", "content": "x"});
    let refused = client
        .stream_frame(&session, "bob", x, false)
        .await
        .unwrap_err();
    assert_eq!(
        refused,
        RuntimeError::Status {
            status: 404,
            detail: format!("session {session} not found")
        }
    );
    let no_call = json!({"type": "tool_result", "call_id": ""});
    match client
        .stream_frame(&session, "alice", no_call, false)
        .await
        .unwrap_err()
    {
        RuntimeError::Status { status, detail } => {
            assert_eq!(status, 400);
            assert!(!detail.is_empty());
        }
        other => panic!("expected a 400, got {other:?}"),
    }
    // The development mode creates a missing session with the chosen id.
    let hello = json!({"type": "user_message", "content": "hello"});
    let events = events_of(&client, "chosen-id-1", "dev", hello, true).await;
    assert!(matches!(
        events.last().unwrap().event,
        RuntimeEvent::TurnFinished { .. }
    ));

    // REST passthrough: a 204 is null, an error keeps its status and body.
    let path = format!("/sessions/{session}");
    let (status, body) = client
        .request(reqwest::Method::DELETE, &path, "alice", None, false)
        .await
        .unwrap();
    assert_eq!((status, body), (204, Value::Null));
    let (status, body) = client
        .request(reqwest::Method::GET, &path, "alice", None, false)
        .await
        .unwrap();
    assert_eq!(status, 404);
    assert_eq!(body["detail"], format!("session {session} not found"));
}

#[tokio::test]
async fn an_unreachable_runtime_is_reported_without_its_address() {
    let config = codelab_gateway::Config {
        agent_url: format!("{}/", closed_url()),
        request_timeout: 2.0,
        agent_stream_timeout: 2.0,
        ..codelab_gateway::Config::default()
    };
    let client = RuntimeClient::new(&config, None).unwrap();
    let error = client
        .stream_frame("s", "u", json!({"type": "cancel_turn"}), false)
        .await
        .unwrap_err();
    assert!(matches!(error, RuntimeError::Unreachable(_)), "{error:?}");
    assert!(!error.to_string().contains("127.0.0.1"), "{error}");
    assert!(client.health().await.is_err());
    let bad = codelab_gateway::Config {
        agent_url: "ftp://runtime".to_owned(),
        ..codelab_gateway::Config::default()
    };
    assert!(matches!(
        RuntimeClient::new(&bad, None),
        Err(RuntimeError::Config(_))
    ));
}

// ---------------------------------------------------------------------------------------------
// Sockets end to end
// ---------------------------------------------------------------------------------------------

/// A frame as the Flutter IDE writes it: all 15 keys of its DTO, `null` for the unused ones.
fn flutter_frame(fields: Value) -> String {
    let mut frame = json!({
        "type": null, "content": null, "role": null, "is_final": null, "call_id": null,
        "tool_name": null, "arguments": null, "requires_approval": null, "result": null,
        "error": null, "agent_type": null, "from_agent": null, "to_agent": null, "reason": null,
        "metadata": null,
    });
    for (key, value) in fields.as_object().unwrap() {
        frame[key] = value.clone();
    }
    frame.to_string()
}

async fn connect(url: &str) -> Socket {
    open(url, &[]).await.unwrap()
}

/// The HTTP status of a refused upgrade.
async fn refused(url: &str, headers: &[(&str, &str)]) -> u16 {
    refusal(url, headers).await.0
}

async fn send(socket: &mut Socket, text: &str) {
    socket.send(Message::text(text)).await.unwrap();
}

/// Frames up to and including the first of type `kind`.
async fn frames_until(socket: &mut Socket, kind: &str) -> Vec<Value> {
    let mut frames = Vec::new();
    loop {
        let next = frame(socket).await;
        let done = next["type"] == kind;
        frames.push(next);
        if done {
            return frames;
        }
    }
}

/// The Flutter IDE's `hi` to the session's agent.
async fn say_hi(socket: &mut Socket) {
    let hi = json!({"type": "user_message", "content": "hi", "role": "user"});
    send(socket, &flutter_frame(hi)).await;
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

/// The close code the server sends (after any frames before it).
async fn close_code(socket: &mut Socket) -> u16 {
    close_frame(socket).await.0
}

fn assert_no_null_keys(frame: &Value) {
    for (key, value) in frame.as_object().unwrap() {
        assert!(!value.is_null(), "null {key} in {frame}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_flutter_profile_gets_each_assistant_message_whole() {
    flutter_profile_turn(InternalCalls::InProcess).await;
}

/// The split deployment's path: the gateway calls the runtime, and the runtime the proxy, over
/// HTTP on their listeners; the IDE sees the same frames.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_flutter_profile_gets_the_same_turn_when_services_call_each_other_over_http() {
    flutter_profile_turn(InternalCalls::Http).await;
}

async fn flutter_profile_turn(internal_calls: InternalCalls) {
    let stack = start_stack_with(StackOptions {
        internal_calls,
        ..StackOptions::default()
    })
    .await;
    let (_, _, session) = stack.user_with_session("alice").await;
    // As the Flutter IDE connects: no credentials, the session's id is the capability.
    let mut socket = connect(&stack.ws_url(&session)).await;
    say_hi(&mut socket).await;
    let frames = frames_until(&mut socket, "assistant_message").await;
    for frame in &frames {
        assert!(
            ["assistant_message", "agent_switched", "tool_call", "error"]
                .contains(&frame["type"].as_str().unwrap()),
            "the Flutter IDE would show {frame} as a bubble"
        );
        assert_no_null_keys(frame);
    }
    let message = frames.last().unwrap();
    assert_eq!(message["content"], "Mock LLM response (static)");
    assert_eq!(message["token"], message["content"]);
    assert_eq!(message["is_final"], true);
    if let Some(switch) = frames.iter().find(|f| f["type"] == "agent_switched") {
        assert_eq!(switch["to_agent"], switch["metadata"]["to_agent"]);
        assert!(
            switch["content"]
                .as_str()
                .unwrap()
                .starts_with("Switched to ")
        );
    }
    assert_eq!(
        quiet(&mut socket, Duration::from_millis(500)).await,
        None,
        "nothing else (no deltas, no turn_finished) for the Flutter IDE"
    );
    // Still usable.
    let switch = json!({"type": "switch_agent", "agent_type": "debug", "content": "x"});
    send(&mut socket, &flutter_frame(switch)).await;
    let switched = frames_until(&mut socket, "agent_switched").await;
    assert_eq!(switched.last().unwrap()["to_agent"], "debug");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn protocol_two_streams_deltas_and_reports_turn_ends() {
    let stack = start_stack().await;
    let (_, token, session) = stack.user_with_session("alice").await;
    let url = format!("{}?protocol=2", stack.ws_url(&session));
    let mut socket = open(&url, &[("authorization", &format!("Bearer {token}"))])
        .await
        .unwrap();
    let info = frame(&mut socket).await;
    assert_eq!(
        info,
        json!({"type": "session_info", "session_id": session, "agent_type": "orchestrator"})
    );
    let reply = json!({"type": "user_message", "content": "::reply Hello streaming world",
                       "agent_type": "coder"});
    send(&mut socket, &reply.to_string()).await;
    let frames = frames_until(&mut socket, "turn_finished").await;
    let deltas: Vec<&Value> = frames
        .iter()
        .filter(|f| f["type"] == "assistant_message" && f["is_final"] == false)
        .collect();
    assert!(deltas.len() > 1, "{frames:?}");
    for delta in &deltas {
        assert_eq!(delta["content"], delta["token"]);
        assert!(
            delta["metadata"].get("seq").is_none(),
            "deltas are not stored"
        );
    }
    let joined: String = deltas
        .iter()
        .map(|d| d["content"].as_str().unwrap())
        .collect();
    let whole = frames
        .iter()
        .find(|f| f["type"] == "assistant_message" && f["is_final"] == true)
        .unwrap();
    assert_eq!(whole["content"], joined);
    assert_eq!(whole["content"], "Hello streaming world");
    assert!(whole["metadata"]["seq"].as_u64().unwrap() > 0);
    let finished = frames.last().unwrap();
    assert_eq!(finished["content"], "completed");
    assert_eq!(finished["metadata"]["outcome"], "completed");
    for frame in &frames {
        assert_no_null_keys(frame);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hello_opts_in_to_protocol_two_and_resumes_after_last_seq() {
    let stack = start_stack().await;
    let (user, _, session) = stack.user_with_session("alice").await;
    stack.coder_turn(&user, &session, "one").await;
    let events = stack
        .runtime_frame(
            &user,
            &session,
            json!({"type": "user_message", "content": "two"}),
        )
        .await;
    let first_of_second = events
        .iter()
        .find_map(|e| e["seq"].as_u64().filter(|s| *s > 0))
        .unwrap();

    let mut socket = connect(&stack.ws_url(&session)).await;
    let hello = json!({"type": "hello", "protocol": 2, "last_seq": first_of_second - 1});
    send(&mut socket, &hello.to_string()).await;
    let info = frame(&mut socket).await;
    assert_eq!(info["type"], "session_info");
    assert_eq!(info["agent_type"], "coder");
    let replayed = frames_until(&mut socket, "turn_finished").await;
    let seqs: Vec<u64> = replayed
        .iter()
        .map(|f| f["metadata"]["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs[0], first_of_second, "{replayed:?}");
    assert!(seqs.windows(2).all(|w| w[0] < w[1]));
    assert!(
        replayed
            .iter()
            .any(|f| f["type"] == "assistant_message" && f["is_final"] == true)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_protocol_two_reconnect_gets_the_open_tool_calls_again() {
    let stack = start_stack().await;
    let (user, token, session) = stack.user_with_session("alice").await;
    let call_id = stack.pending_write(&user, &session, "notes.md").await;
    let url = format!("{}?protocol=2&access_token={token}", stack.ws_url(&session));
    let mut socket = connect(&url).await;
    assert_eq!(frame(&mut socket).await["type"], "session_info");
    let call = frame(&mut socket).await;
    assert_eq!(call["type"], "tool_call");
    assert_eq!(call["call_id"], call_id);
    assert_eq!(call["tool_name"], "write_file");
    assert_eq!(call["requires_approval"], true);
    assert_eq!(call["arguments"]["path"], "notes.md");
    let approval = frame(&mut socket).await;
    assert_eq!(approval["type"], "approval_required");
    assert_eq!(approval["call_id"], call_id);
    // The Flutter profile gets nothing on connect: it restores from pending-approvals itself.
    let mut flutter = connect(&stack.ws_url(&session)).await;
    assert_eq!(quiet(&mut flutter, Duration::from_millis(500)).await, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn malformed_frames_get_error_frames_and_the_socket_stays_open() {
    let stack = start_stack().await;
    let (_, _, session) = stack.user_with_session("alice").await;
    let mut socket = connect(&stack.ws_url(&session)).await;
    for (text, code, start) in [
        ("{nope", "INVALID_FORMAT", "Invalid JSON message: "),
        (
            "[1]",
            "INVALID_FORMAT",
            "Invalid JSON message: expected a JSON object",
        ),
        (
            r#"{"content":"x"}"#,
            "INVALID_TYPE",
            "Unknown message type: None",
        ),
        (
            r#"{"type":"ping"}"#,
            "INVALID_TYPE",
            "Unknown message type: ping",
        ),
        (
            r#"{"type":"tool_result"}"#,
            "MISSING_FIELD",
            "Invalid JSON message: tool_result",
        ),
        (
            r#"{"type":"hello","protocol":7}"#,
            "INVALID_FORMAT",
            "unsupported protocol 7",
        ),
    ] {
        send(&mut socket, text).await;
        let error = frame(&mut socket).await;
        assert_eq!(error["type"], "error", "{text}");
        assert_eq!(error["error_code"], code, "{text}");
        assert!(
            error["content"].as_str().unwrap().starts_with(start),
            "{text}: {error}"
        );
        assert_eq!(error["error"], error["content"]);
    }
    // The runtime's own refusal: `Agent error: <status>: <detail>`.
    let nobody = r#"{"type":"switch_agent","agent_type":"nobody"}"#;
    send(&mut socket, nobody).await;
    let error = frame(&mut socket).await;
    assert!(
        error["content"]
            .as_str()
            .unwrap()
            .starts_with("Agent error: 400: "),
        "{error}"
    );
    let still = json!({"type": "user_message", "content": "still there?", "role": "user"});
    send(&mut socket, &flutter_frame(still)).await;
    frames_until(&mut socket, "assistant_message").await;
    let metrics = stack.metrics().await;
    assert!(
        metrics.contains(r#"codelab_gateway_ws_frames_total{direction="in",type="invalid"}"#),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_oversized_message_closes_the_socket_with_1009() {
    let stack = start_stack_tweaked(|c| c.ws_max_frame_bytes = 64 * 1024).await;
    let (_, _, session) = stack.user_with_session("alice").await;
    let mut socket = connect(&stack.ws_url(&session)).await;
    let big = json!({"type": "user_message", "content": "x".repeat(100 * 1024)}).to_string();
    let _ = socket.send(Message::text(big)).await;
    assert_eq!(close_code(&mut socket).await, 1009);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_flood_gets_rate_limit_errors_then_a_1008_close() {
    let stack = start_stack_tweaked(|c| c.ws_max_messages_per_second = 5).await;
    let (_, _, session) = stack.user_with_session("alice").await;
    let mut socket = connect(&stack.ws_url(&session)).await;
    for _ in 0..20 {
        // Refused by the gateway itself, so the flood never reaches the runtime.
        if socket
            .send(Message::text(r#"{"type":"ping"}"#))
            .await
            .is_err()
        {
            break;
        }
    }
    let mut texts = Vec::new();
    let code = loop {
        match tokio::time::timeout(PROMPTLY, socket.next()).await.unwrap() {
            Some(Ok(Message::Text(text))) => {
                let frame: Value = serde_json::from_str(text.as_str()).unwrap();
                texts.push(frame["content"].as_str().unwrap().to_owned());
            }
            Some(Ok(Message::Close(Some(frame)))) => break u16::from(frame.code),
            Some(Ok(_)) => {}
            other => panic!("expected a close frame, got {other:?}"),
        }
    };
    assert_eq!(code, 1008);
    let limited = texts.iter().filter(|t| *t == "rate limit exceeded").count();
    assert_eq!(limited, 3, "{texts:?}");
    assert!(
        texts
            .iter()
            .take(5)
            .all(|t| t == "Unknown message type: ping"),
        "{texts:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_tool_result_does_not_wait_behind_a_streaming_turn() {
    let stack = start_stack().await;
    let (_, token, session) = stack.user_with_session("alice").await;
    let url = format!("{}?protocol=2&access_token={token}", stack.ws_url(&session));
    let mut socket = connect(&url).await;
    assert_eq!(frame(&mut socket).await["type"], "session_info");
    let slow = json!({"type": "user_message", "agent_type": "coder",
        "content": "::slow 150\n::reply one two three four five six seven eight nine ten"});
    send(&mut socket, &slow.to_string()).await;
    // Streaming has begun.
    loop {
        let next = frame(&mut socket).await;
        if next["type"] == "assistant_message" && next["is_final"] == false {
            break;
        }
    }
    // The runtime refuses this at once; its answer must not wait for the turn to end.
    let result = json!({"type": "tool_result", "call_id": "", "tool_name": "read_file",
                        "result": {"success": true}});
    send(&mut socket, &flutter_frame(result)).await;
    let mut saw_error_before_the_end = false;
    loop {
        let next = frame(&mut socket).await;
        if next["type"] == "error" {
            assert!(
                next["content"]
                    .as_str()
                    .unwrap()
                    .starts_with("Agent error: 400")
            );
            saw_error_before_the_end = true;
        }
        if next["type"] == "assistant_message" && next["is_final"] == true {
            break;
        }
    }
    assert!(
        saw_error_before_the_end,
        "the tool_result waited behind the turn"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn session_mode_checks_tokens_and_accepts_a_known_session_id_without_one() {
    let stack = start_stack().await;
    let (_, token, session) = stack.user_with_session("alice").await;
    let (_, bob) = stack.user("bob").await;
    let url = stack.ws_url(&session);
    // No token: the unguessable id is the capability; an unknown id is refused.
    connect(&url).await;
    assert_eq!(
        refused(&stack.ws_url("0f8fad5b-d9cb-469f-a165-70867728950e"), &[]).await,
        403
    );
    assert_eq!(refused(&stack.ws_url("a%2Fb"), &[]).await, 400);
    // A token is always checked, and its user must own the session.
    assert_eq!(
        refused(&url, &[("authorization", &format!("Bearer {bob}"))]).await,
        403
    );
    assert_eq!(
        refused(&url, &[("authorization", "Bearer not.a.jwt")]).await,
        403
    );
    assert_eq!(
        refused(&format!("{url}?access_token=garbage"), &[]).await,
        403
    );
    open(&url, &[("authorization", &format!("Bearer {token}"))])
        .await
        .unwrap();
    connect(&format!("{url}?access_token={token}")).await;
    // The browser form: the token as a subprotocol, answered with `bearer`.
    let mut request = url.as_str().into_client_request().unwrap();
    request.headers_mut().insert(
        "sec-websocket-protocol",
        HeaderValue::from_str(&format!("bearer, {token}")).unwrap(),
    );
    let (_, response) = tokio_tungstenite::connect_async(request).await.unwrap();
    assert_eq!(response.headers()["sec-websocket-protocol"], "bearer");
    // Also at the alias path.
    let alias = stack.url(&format!("/ws/{session}"));
    connect(&alias.replacen("http://", "ws://", 1)).await;
    let metrics = stack.metrics().await;
    assert!(
        metrics.contains("codelab_gateway_auth_failures_total"),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"codelab_gateway_ws_connections_total{outcome="forbidden"}"#),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn required_mode_refuses_sockets_without_a_token() {
    let stack = start_stack_tweaked(|c| c.ws_auth = Some(WsAuthMode::Required)).await;
    let (_, token, session) = stack.user_with_session("alice").await;
    assert_eq!(refused(&stack.ws_url(&session), &[]).await, 401);
    connect(&format!("{}?access_token={token}", stack.ws_url(&session))).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn off_mode_creates_sessions_on_first_use() {
    let stack = start_stack_tweaked(|c| c.ws_auth = Some(WsAuthMode::Off)).await;
    let mut socket = connect(&stack.ws_url("my-dev-session")).await;
    say_hi(&mut socket).await;
    let frames = frames_until(&mut socket, "assistant_message").await;
    assert_eq!(
        frames.last().unwrap()["content"],
        "Mock LLM response (static)"
    );
    let owner = stack
        .gateway
        .runtime
        .session_owner("my-dev-session")
        .await
        .unwrap();
    assert_eq!(owner.as_deref(), Some("dev"));
    // A token still has to own the session it names.
    let (_, bob) = stack.user("bob").await;
    assert_eq!(
        refused(
            &stack.ws_url("my-dev-session"),
            &[("authorization", &format!("Bearer {bob}"))]
        )
        .await,
        403
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_sockets_on_one_session_both_see_the_turn() {
    let stack = start_stack().await;
    let (_, _, session) = stack.user_with_session("alice").await;
    let mut first = connect(&stack.ws_url(&session)).await;
    let mut second = connect(&stack.ws_url(&session)).await;
    say_hi(&mut first).await;
    let a = frames_until(&mut first, "assistant_message").await;
    let b = frames_until(&mut second, "assistant_message").await;
    assert_eq!(a.last(), b.last());
    // An error about a frame goes to its socket only.
    send(&mut second, "{nope").await;
    assert_eq!(frame(&mut second).await["type"], "error");
    assert_eq!(quiet(&mut first, Duration::from_millis(300)).await, None);
}

/// docs/usage.md: the Flutter IDE gets a budget warning as an assistant message and a refusal
/// as an `error` with `error_code: budget_exceeded`, types it knows.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn budget_frames_reach_the_flutter_ide_as_types_it_knows() {
    let stack = start_stack().await;
    let (alice_id, alice, session) = stack.user_with_session("alice").await;
    let mut socket = connect(&stack.ws_url(&session)).await;
    say_hi(&mut socket).await;
    frames_until(&mut socket, "assistant_message").await;
    let (_, mine) = stack.get("/api/v1/usage", Some(&alice)).await;
    let used = mine["totals"]["total_tokens"].as_u64().unwrap();
    // `used` is 85% of the limit: the next turn warns, then runs past it.
    let admin = stack.admin_scope_token().await;
    let limits = json!({"monthly_tokens": used * 100 / 85});
    let path = format!("/api/v1/admin/budgets/{alice_id}");
    let (status, _) = stack
        .call(reqwest::Method::PUT, &path, Some(&admin), Some(limits))
        .await;
    assert_eq!(status, 200);
    say_hi(&mut socket).await;
    let warned = frames_until(&mut socket, "assistant_message").await;
    let warning = warned.last().unwrap();
    assert!(
        warning["content"]
            .as_str()
            .unwrap()
            .starts_with("Budget warning: 8"),
        "{warned:?}"
    );
    assert_eq!(warning["is_final"], true);
    let answer = frames_until(&mut socket, "assistant_message").await;
    assert!(
        !answer.last().unwrap()["content"]
            .as_str()
            .unwrap()
            .starts_with("Budget")
    );
    say_hi(&mut socket).await;
    let refused = frames_until(&mut socket, "error").await;
    let error = refused.last().unwrap();
    assert_eq!(error["error_code"], "budget_exceeded", "{refused:?}");
    assert!(
        error["content"]
            .as_str()
            .unwrap()
            .contains("monthly token budget")
    );
    for frame in warned.iter().chain(&answer).chain(&refused) {
        let kind = frame["type"].as_str().unwrap();
        assert!(
            ["assistant_message", "tool_call", "agent_switched", "error"].contains(&kind),
            "a type the Flutter IDE does not know: {frame}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_gateways_on_one_redis_share_a_sessions_events() {
    let url = redis_url();
    let stack = start_stack_tweaked(move |c| c.redis_url = Some(url)).await;
    // A second replica: the same settings, its own process state and port.
    let replica = codelab_gateway::GatewayService::build(
        (*stack.gateway.config).clone(),
        codelab_core::service::SharedDeps::default(),
    )
    .await
    .unwrap();
    assert!(replica.fanout.is_redis());
    let server = codelab_testkit::ServerGuard::start(codelab_gateway::GatewayService::router(
        Arc::clone(&replica),
    ))
    .await;

    let (_, _, session) = stack.user_with_session("alice").await;
    let mut on_a = connect(&stack.ws_url(&session)).await;
    let mut on_b = connect(&ws_url(&server.base_url(), &session)).await;
    // Let both subscriptions reach Redis before anything is published.
    tokio::time::sleep(Duration::from_millis(300)).await;
    say_hi(&mut on_b).await;
    let from_b = frames_until(&mut on_b, "assistant_message").await;
    let on_other_replica = frames_until(&mut on_a, "assistant_message").await;
    assert_eq!(from_b.last(), on_other_replica.last());
    assert_eq!(
        quiet(&mut on_a, Duration::from_millis(300)).await,
        None,
        "delivered once"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn shutdown_closes_sockets_with_1001() {
    let stack = start_stack().await;
    let (_, _, session) = stack.user_with_session("alice").await;
    let mut socket = connect(&stack.ws_url(&session)).await;
    stack.gateway.shutdown.cancel();
    assert_eq!(close_code(&mut socket).await, 1001);
}
