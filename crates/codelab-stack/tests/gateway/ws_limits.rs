//! Attack tests of the WebSocket limits (issue 14, finding 7; docs/websocket-protocol.md,
//! "Limits, heartbeat and close codes"), against the whole stack: a `hello` flood fetches the
//! session's history at most once at a time, a client that stops reading is closed with 1013
//! instead of being buffered for, one user's sockets are capped, and only pongs keep a socket
//! alive.
#![allow(
    clippy::disallowed_methods,
    reason = "tests own their clock, ids and tasks"
)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use crate::common::{
    PROMPTLY, Socket, close_frame, next_frame, open, refusal, send, start_stack,
    start_stack_tweaked,
};
use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::Response;
use codelab_testkit::metrics::{metric_sum as metric, scrape};
use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use tokio::net::TcpSocket;
use tokio::sync::watch;
use tokio_tungstenite::MaybeTlsStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::{self, Message};

async fn connect(url: &str) -> Result<Socket, tungstenite::Error> {
    open(url, &[]).await
}

/// The HTTP status of a refused upgrade.
async fn refused(url: &str) -> u16 {
    refusal(url, &[]).await.0
}

/// `VmRSS` or `VmHWM` of this process, in bytes.
fn memory_bytes(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|line| line.strip_prefix(field))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|kib| kib.parse::<u64>().ok())
        .unwrap()
        * 1024
}

// ---------------------------------------------------------------------------------------------
// A counting, gated HTTP relay in front of the real runtime
// ---------------------------------------------------------------------------------------------

/// Relays every request to the runtime; counts the history fetches (`/events`, `/history`)
/// and how many were in flight at once, and holds them until the gate opens.
struct CountingRelay {
    runtime_url: String,
    http: reqwest::Client,
    fetches: AtomicUsize,
    in_flight: AtomicUsize,
    peak: AtomicUsize,
    gate: watch::Sender<bool>,
}

impl CountingRelay {
    /// Serves the relay on `127.0.0.1:0`; returns it and its URL.
    async fn start(runtime_url: &str) -> (Arc<CountingRelay>, String) {
        let relay = Arc::new(CountingRelay {
            runtime_url: runtime_url.to_owned(),
            http: reqwest::Client::new(),
            fetches: AtomicUsize::new(0),
            in_flight: AtomicUsize::new(0),
            peak: AtomicUsize::new(0),
            gate: watch::Sender::new(true),
        });
        let app = axum::Router::new()
            .fallback(relay_request)
            .with_state(Arc::clone(&relay));
        let (address, _) = codelab_testkit::spawn_router(app).await;
        (relay, format!("http://{address}"))
    }
}

async fn relay_request(State(relay): State<Arc<CountingRelay>>, request: Request) -> Response {
    let path = request.uri().path().to_owned();
    let target = format!(
        "{}{}",
        relay.runtime_url,
        request.uri().path_and_query().map_or("/", |p| p.as_str())
    );
    let history = path.ends_with("/events") || path.ends_with("/history");
    if history {
        relay.fetches.fetch_add(1, Ordering::SeqCst);
        let now = relay.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        relay.peak.fetch_max(now, Ordering::SeqCst);
        let mut gate = relay.gate.subscribe();
        gate.wait_for(|open| *open).await.unwrap();
    }
    let mut upstream = relay
        .http
        .request(request.method().clone(), target)
        .headers(request.headers().clone());
    let body = axum::body::to_bytes(request.into_body(), usize::MAX)
        .await
        .unwrap();
    upstream = upstream.body(body);
    let answer = upstream.send().await.unwrap();
    let status = answer.status();
    let headers = answer.headers().clone();
    let bytes = answer.bytes().await.unwrap();
    if history {
        relay.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
    let mut response = Response::new(Body::from(bytes));
    *response.status_mut() = status;
    for name in [reqwest::header::CONTENT_TYPE] {
        if let Some(value) = headers.get(&name) {
            response.headers_mut().insert(name, value.clone());
        }
    }
    response
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hello_flood_fetches_the_history_once_at_a_time() {
    // No message rate limit: the flood arrives as fast as the client can write it.
    let stack = start_stack_tweaked(|c| c.ws_max_messages_per_second = 0).await;
    let (user, token, session) = stack.user_with_session("alice").await;
    // A long history: two turns with 256 KiB replies (each stored with its user message).
    for turn in 0..2 {
        let text = format!("turn{turn} ").repeat(256 * 1024 / 6);
        stack
            .coder_turn(&user, &session, &format!("::reply {text}"))
            .await;
    }
    let (relay, relay_url) = CountingRelay::start(&stack.runtime_url).await;
    let replica = stack.start_replica(|c| c.agent_url = relay_url).await;
    let url = format!("{}?access_token={token}", replica.ws_url(&session));
    let mut socket = connect(&url).await.unwrap();

    // Peak memory from here on, against what the process holds now.
    let _ = std::fs::write("/proc/self/clear_refs", "5");
    let resident_before = memory_bytes("VmRSS:");
    relay.gate.send_replace(false);
    for _ in 0..200 {
        send(
            &mut socket,
            &json!({"type": "hello", "protocol": 2, "last_seq": 0}),
        )
        .await;
    }
    // Frames are handled in order: once this one's error is back, every hello was.
    send(&mut socket, &json!({"type": "nope"})).await;
    let error = next_frame(&mut socket).await;
    assert_eq!(error["content"], "Unknown message type: nope", "{error}");
    assert_eq!(
        relay.fetches.load(Ordering::SeqCst),
        1,
        "one fetch in flight"
    );

    relay.gate.send_replace(true);
    // The fetch in flight, then one more for everything asked meanwhile.
    let mut infos = 0;
    let mut replayed = 0;
    while infos < 2 {
        let next = next_frame(&mut socket).await;
        match next["type"].as_str() {
            Some("session_info") if next["metadata"]["seq"].is_null() => infos += 1,
            Some("assistant_message") => replayed += 1,
            _ => {}
        }
    }
    assert_eq!(relay.fetches.load(Ordering::SeqCst), 2);
    assert_eq!(relay.peak.load(Ordering::SeqCst), 1);
    // Each stored event went out once (the second replay skips what the socket has).
    assert_eq!(replayed, 2, "the two stored replies, once each");
    // Nothing else was left queued: the next hello is the third fetch.
    send(
        &mut socket,
        &json!({"type": "hello", "protocol": 2, "last_seq": 0}),
    )
    .await;
    while next_frame(&mut socket).await["type"] != "session_info" {}
    assert_eq!(relay.fetches.load(Ordering::SeqCst), 3);

    let peak_growth = memory_bytes("VmHWM:").saturating_sub(resident_before);
    assert!(
        peak_growth < 64 * 1024 * 1024,
        "the flood grew the process by {} MiB",
        peak_growth / (1024 * 1024)
    );
    let replica_metrics = scrape(&stack.http, &replica.url).await;
    assert!(
        metric(
            &replica_metrics,
            "codelab_gateway_ws_replays_total{outcome=\"coalesced\"}"
        ) >= 199.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_client_that_stops_reading_is_closed_with_1013() {
    let stack = start_stack().await;
    let (_, token, session) = stack.user_with_session("alice").await;
    // A client whose receive buffer is tiny and that never reads: the gateway's writes stall
    // at once, as they do for a client that stopped reading on a real network.
    let address = stack.gateway_url.trim_start_matches("http://");
    let tcp = TcpSocket::new_v4().unwrap();
    tcp.set_recv_buffer_size(4096).unwrap();
    let stream = tcp.connect(address.parse().unwrap()).await.unwrap();
    let url = format!("{}?protocol=2&access_token={token}", stack.ws_url(&session));
    let stream = MaybeTlsStream::Plain(stream);
    let (mut socket, _) =
        tokio_tungstenite::client_async(url.into_client_request().unwrap(), stream)
            .await
            .unwrap();
    // A long stream: one protocol-2 delta per word, far more than the queue holds.
    let words: Vec<String> = (0..20_000).map(|i| format!("w{i}")).collect();
    socket
        .send(Message::text(
            json!({"type": "user_message", "content": format!("::reply {}", words.join(" ")),
                   "agent_type": "coder"})
            .to_string(),
        ))
        .await
        .unwrap();

    // The gateway's own count says when it gave up on the client (looked at every 50 ms).
    let deadline = tokio::time::Instant::now() + PROMPTLY;
    while metric(
        &stack.metrics().await,
        "codelab_gateway_ws_slow_consumers_total",
    ) < 1.0
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "never closed as slow"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Reading again, the client gets what was already on its way, then the 1013 close.
    let (code, reason) = close_frame(&mut socket).await;
    assert_eq!(code, 1013, "{reason}");
    assert_eq!(reason, "client too slow: reconnect and resume");
    let metrics = stack.metrics().await;
    assert_eq!(
        metric(&metrics, "codelab_gateway_ws_closes_total{code=\"1013\"}"),
        1.0
    );
    // The turn itself went on: the reply is stored whole.
    let history_path = format!("/api/v1/sessions/{session}/history");
    let (status, history) = stack.get(&history_path, Some(&token)).await;
    assert_eq!(status, 200, "{history}");
    assert!(history.to_string().contains("w19999"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_257th_socket_of_one_user_is_refused() {
    let stack = start_stack().await;
    let (_, token, session) = stack.user_with_session("alice").await;
    let with_token = format!("{}?access_token={token}", stack.ws_url(&session));
    let mut sockets = Vec::new();
    for _ in 0..255 {
        sockets.push(connect(&with_token).await.unwrap());
    }
    // Tokenless in `session` mode (the Flutter IDE): counted against the session's owner.
    sockets.push(connect(&stack.ws_url(&session)).await.unwrap());

    assert_eq!(refused(&with_token).await, 429);
    assert_eq!(refused(&stack.ws_url(&session)).await, 429);
    let metrics = stack.metrics().await;
    assert_eq!(
        metric(
            &metrics,
            "codelab_gateway_ws_connections_total{outcome=\"too_many_sockets\"}"
        ),
        2.0
    );
    // Another user is not affected.
    let (_, bob_token, bob_session) = stack.user_with_session("bob").await;
    let mut bob = connect(&format!(
        "{}?access_token={bob_token}",
        stack.ws_url(&bob_session)
    ))
    .await
    .unwrap();
    bob.close(None).await.unwrap();

    // A closed socket frees its place (once the gateway has finished with it).
    let mut closing = sockets.pop().unwrap();
    closing.close(None).await.unwrap();
    while let Some(Ok(_)) = closing.next().await {}
    let deadline = tokio::time::Instant::now() + PROMPTLY;
    let again = loop {
        match connect(&with_token).await {
            Ok(socket) => break socket,
            Err(tungstenite::Error::Http(response)) if response.status() == 429 => {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "the place was not freed"
                );
                tokio::task::yield_now().await;
            }
            Err(other) => panic!("unexpected refusal: {other}"),
        }
    };
    drop(again);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_peer_that_sends_but_never_answers_pings_is_closed() {
    let stack = start_stack_tweaked(|c| c.ws_heartbeat_interval = 1).await;
    let (_, token, session) = stack.user_with_session("alice").await;
    let url = format!("{}?access_token={token}", stack.ws_url(&session));
    // A well-behaved socket: it reads, so its library answers every ping.
    let mut alive = connect(&url).await.unwrap();
    let (stop, mut stopped) = watch::channel(false);
    let reader = tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = stopped.changed() => return alive,
                message = alive.next() => match message {
                    Some(Ok(Message::Close(frame))) => panic!("the reading socket closed: {frame:?}"),
                    Some(Ok(_)) => {}
                    other => panic!("the reading socket failed: {other:?}"),
                },
            }
        }
    });

    // The attacker writes a harmless frame every 200 ms and never reads (so never pongs).
    let mut flooder = connect(&url).await.unwrap();
    let deadline = tokio::time::Instant::now() + PROMPTLY;
    let closes = "codelab_gateway_ws_closes_total{code=\"1001\"}";
    while metric(&stack.metrics().await, closes) < 1.0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the flooder was never closed"
        );
        let hello = json!({"type": "hello", "protocol": 1}).to_string();
        let _ = flooder.send(Message::text(hello)).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (code, reason) = close_frame(&mut flooder).await;
    assert_eq!((code, reason.as_str()), (1001, "heartbeat timeout"));

    // The socket that answered pings is still open and served.
    stop.send_replace(true);
    let mut alive = reader.await.unwrap();
    send(&mut alive, &json!({"type": "hello", "protocol": 2})).await;
    assert_eq!(next_frame(&mut alive).await["type"], "session_info");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_long_replay_is_fetched_page_by_page_and_arrives_whole_in_order() {
    let stack = start_stack().await;
    let (user, token, session) = stack.user_with_session("alice").await;
    for turn in 0..70 {
        stack
            .coder_turn(&user, &session, &format!("::reply r{turn}"))
            .await;
    }
    let stored = stack.stored_events(&session, &user).await;
    let last = stored.last().unwrap().seq;
    assert!(stored.len() > 200, "{} stored events", stored.len());
    let (relay, relay_url) = CountingRelay::start(&stack.runtime_url).await;
    let replica = stack.start_replica(|c| c.agent_url = relay_url).await;
    let query = format!("?protocol=2&last_seq=0&access_token={token}");
    let url = format!("{}{query}", replica.ws_url(&session));
    let mut socket = connect(&url).await.unwrap();
    assert_eq!(next_frame(&mut socket).await["type"], "session_info");
    let mut seqs = Vec::new();
    let mut replies = Vec::new();
    while seqs.last() != Some(&last) {
        let next = next_frame(&mut socket).await;
        seqs.push(next["metadata"]["seq"].as_u64().unwrap());
        if next["type"] == "assistant_message" {
            replies.push(next["content"].as_str().unwrap().to_owned());
        }
    }
    // In order, none twice, only stored events, and every reply of the 70 turns.
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
    assert!(seqs.iter().all(|seq| stored.iter().any(|e| e.seq == *seq)));
    let expected: Vec<String> = (0..70).map(|turn| format!("r{turn}")).collect();
    assert_eq!(replies, expected);
    // At most 200 events per request: the socket never holds the whole history at once.
    let pages = stored.len().div_ceil(200);
    assert!(
        (pages..=pages + 1).contains(&relay.fetches.load(Ordering::SeqCst)),
        "{} fetches for {} events",
        relay.fetches.load(Ordering::SeqCst),
        stored.len()
    );
}
