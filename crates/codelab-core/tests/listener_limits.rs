//! Attack tests of the listener limits (docs/operations.md, "Listener limits"): slow headers
//! and slow bodies are cut, connections beyond the cap wait in the backlog instead of being
//! refused, and response streams (SSE, WebSocket) outlive the request timeouts.
#![allow(
    clippy::unwrap_used,
    clippy::disallowed_methods,
    reason = "a failed unwrap is the test's report; tests own their clock, ids and tasks"
)]

use std::convert::Infallible;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::response::sse::{Event, Sse};
use axum::routing::{get, post};
use codelab_core::http::{
    ErrorShape, ListenerLimits, ServiceInfo, serve, serve_with_limits, with_standard_layers,
};
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Generous upper bound for anything the server must do "after about the timeout".
const GRACE: Duration = Duration::from_secs(5);

struct Server {
    addr: std::net::SocketAddr,
    shutdown: CancellationToken,
    task: JoinHandle<std::io::Result<()>>,
}

impl Server {
    async fn start(limits: Option<ListenerLimits>) -> Self {
        Self::serving(app(), limits).await
    }

    async fn serving(router: Router, limits: Option<ListenerLimits>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        let drain = Duration::from_secs(5);
        let task = match limits {
            Some(limits) => tokio::spawn({
                let shutdown = shutdown.clone();
                async move { serve_with_limits(listener, router, shutdown, drain, &limits).await }
            }),
            None => tokio::spawn(serve(listener, router, shutdown.clone(), drain)),
        };
        Self {
            addr,
            shutdown,
            task,
        }
    }

    async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(10), self.task)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
    }
}

fn limits(header_secs: f64, body_secs: f64, max_connections: usize) -> ListenerLimits {
    ListenerLimits {
        header_read_timeout: header_secs,
        body_read_timeout: body_secs,
        max_connections,
    }
}

/// Ticks of the SSE route and pause between them: 12 x 250 ms = 3 s, longer than the 1 s
/// timeouts of the stream tests.
const SSE_TICKS: usize = 12;
const SSE_PAUSE: Duration = Duration::from_millis(250);

/// `SSE_TICKS` events, `SSE_PAUSE` apart.
fn ticks() -> Sse<impl futures_util::Stream<Item = Result<Event, Infallible>>> {
    Sse::new(futures_util::stream::unfold(0usize, |n| async move {
        if n == SSE_TICKS {
            return None;
        }
        tokio::time::sleep(SSE_PAUSE).await;
        Some((Ok(Event::default().data(n.to_string())), n + 1))
    }))
}

fn app() -> Router {
    Router::new()
        .route("/", get(|| async { "ok" }))
        .route(
            "/upload",
            post(|body: Bytes| async move { body.len().to_string() }),
        )
        // As the runtime and the proxy answer: a JSON body read in full, then a long stream.
        .route(
            "/events",
            get(|| async { ticks() }).post(|_body: Bytes| async { ticks() }),
        )
        .route(
            "/ws",
            get(|upgrade: WebSocketUpgrade| async move { upgrade.on_upgrade(echo) }),
        )
}

async fn echo(mut socket: WebSocket) {
    while let Some(Ok(message)) = socket.recv().await {
        if let Message::Text(text) = message
            && socket.send(Message::Text(text)).await.is_err()
        {
            return;
        }
    }
}

/// Whether the server has closed `stream`: a read sees end-of-file or a reset. Waits at most
/// `wait` for that to happen.
async fn closed_within(stream: &mut TcpStream, wait: Duration) -> bool {
    let mut buf = [0u8; 1024];
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0) | Err(_)) => return true,
            // A 408 or similar before the close is fine: keep reading until the close.
            Ok(Ok(_)) => {}
        }
    }
}

/// Sends `bytes` one at a time, `pause` apart, until the server closes the connection.
/// Returns how long the server let the trickle go on, or `None` if it never closed it within
/// `bytes.len()` pauses.
async fn trickle_until_closed(
    stream: &mut TcpStream,
    bytes: &[u8],
    pause: Duration,
) -> Option<Duration> {
    let started = Instant::now();
    for byte in bytes {
        if stream.write_all(&[*byte]).await.is_err() {
            return Some(started.elapsed());
        }
        if closed_within(stream, pause).await {
            return Some(started.elapsed());
        }
    }
    None
}

/// An HTTP/1.1 request whose headers never end: enough bytes for `n` trickled writes.
fn endless_headers(n: usize) -> Vec<u8> {
    let mut bytes = b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: ".to_vec();
    bytes.resize(n, b'a');
    bytes
}

/// Reads one HTTP/1.1 response head from `stream` (up to the blank line), within `wait`.
async fn read_head(stream: &mut TcpStream, wait: Duration) -> Option<String> {
    let mut head = Vec::new();
    let mut buf = [0u8; 1];
    let deadline = tokio::time::Instant::now() + wait;
    while !head.ends_with(b"\r\n\r\n") {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Ok(Ok(1)) => head.push(buf[0]),
            _ => return None,
        }
    }
    Some(String::from_utf8_lossy(&head).into_owned())
}

/// A GET of `/`, answered `ok`.
const GET_ROOT: &[u8] = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n";

/// Connects to `addr` and sends [`GET_ROOT`]: the connection, to read the answer from.
async fn ask_root(addr: std::net::SocketAddr) -> TcpStream {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(GET_ROOT).await.unwrap();
    stream
}

/// Sends a GET of `/` and returns the response's status line and body (`ok`).
async fn get_root(stream: &mut TcpStream, wait: Duration) -> Option<String> {
    stream.write_all(GET_ROOT).await.ok()?;
    let head = read_head(stream, wait).await?;
    let mut body = [0u8; 2];
    tokio::time::timeout(wait, stream.read_exact(&mut body))
        .await
        .ok()?
        .ok()?;
    Some(format!(
        "{} {}",
        head.lines().next().unwrap_or_default(),
        String::from_utf8_lossy(&body)
    ))
}

/// Posts a 100-byte body to `/upload` one byte every 200 ms (20 s in all, far past a 1 s body
/// timeout) until the server answers; the connection and the answer's head.
async fn trickle_body(addr: std::net::SocketAddr) -> (TcpStream, String) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n")
        .await
        .unwrap();
    let mut head = None;
    for _ in 0..100 {
        if stream.write_all(b"x").await.is_err() {
            break;
        }
        if let Some(found) = read_head(&mut stream, Duration::from_millis(200)).await {
            head = Some(found);
            break;
        }
    }
    let head = head.expect("no answer while the body trickled in");
    (stream, head)
}

#[tokio::test]
async fn a_client_trickling_header_bytes_is_disconnected_after_the_header_timeout() {
    let server = Server::start(Some(limits(1.0, 60.0, 100))).await;
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    // One byte every 250 ms never completes the headers; 40 bytes would take 10 s.
    let lasted = trickle_until_closed(
        &mut stream,
        &endless_headers(40),
        Duration::from_millis(250),
    )
    .await;
    let lasted = lasted.expect("the server kept a connection whose headers never ended");
    assert!(
        lasted >= Duration::from_millis(500) && lasted < GRACE,
        "closed after {lasted:?}, expected about 1 s"
    );
    // The listener still serves honest clients.
    let mut honest = TcpStream::connect(server.addr).await.unwrap();
    assert_eq!(
        get_root(&mut honest, GRACE).await.unwrap(),
        "HTTP/1.1 200 OK ok"
    );
    server.stop().await;
}

#[tokio::test]
async fn a_client_sending_one_header_byte_a_second_is_cut_at_the_default_ten_seconds() {
    let server = Server::start(None).await;
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    let lasted = trickle_until_closed(&mut stream, &endless_headers(30), Duration::from_secs(1))
        .await
        .expect("the server kept a connection whose headers never ended");
    assert!(
        lasted >= Duration::from_secs(8) && lasted < Duration::from_secs(10) + GRACE,
        "closed after {lasted:?}, expected about 10 s"
    );
    server.stop().await;
}

#[tokio::test]
async fn a_connection_that_sends_nothing_is_closed_after_the_header_timeout() {
    let server = Server::start(Some(limits(1.0, 60.0, 100))).await;
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    assert!(closed_within(&mut stream, GRACE).await);
    server.stop().await;
}

#[tokio::test]
async fn a_body_trickled_past_the_body_timeout_is_answered_408_and_closed() {
    let server = Server::start(Some(limits(10.0, 1.0, 100))).await;
    let started = Instant::now();
    let (mut stream, head) = trickle_body(server.addr).await;
    assert!(head.starts_with("HTTP/1.1 408"), "{head}");
    assert!(
        head.to_ascii_lowercase().contains("connection: close"),
        "{head}"
    );
    assert!(
        started.elapsed() < GRACE,
        "answered after {:?}",
        started.elapsed()
    );
    assert!(closed_within(&mut stream, GRACE).await);
    server.stop().await;
}

#[tokio::test]
async fn a_body_sent_in_time_is_served() {
    let server = Server::start(Some(limits(1.0, 1.0, 100))).await;
    let response = reqwest::Client::new()
        .post(format!("http://{}/upload", server.addr))
        .body(vec![b'x'; 100_000])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.text().await.unwrap(), "100000");
    server.stop().await;
}

#[tokio::test]
async fn connections_beyond_the_cap_wait_in_the_backlog_and_are_served_when_one_closes() {
    let server = Server::start(Some(limits(30.0, 60.0, 2))).await;
    let mut first = TcpStream::connect(server.addr).await.unwrap();
    let mut second = TcpStream::connect(server.addr).await.unwrap();
    assert_eq!(
        get_root(&mut first, GRACE).await.unwrap(),
        "HTTP/1.1 200 OK ok"
    );
    assert_eq!(
        get_root(&mut second, GRACE).await.unwrap(),
        "HTTP/1.1 200 OK ok"
    );

    // The third connection is not refused (the kernel completes it) but not served either.
    let mut third = ask_root(server.addr).await;
    assert!(
        read_head(&mut third, Duration::from_millis(500))
            .await
            .is_none(),
        "a connection beyond the cap was served"
    );

    drop(first);
    let head = read_head(&mut third, GRACE)
        .await
        .expect("the waiting connection was not served after a slot freed");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    drop(second);
    drop(third);
    server.stop().await;
}

#[tokio::test]
async fn an_open_websocket_holds_a_connection_slot() {
    let server = Server::start(Some(limits(30.0, 60.0, 1))).await;
    let (mut socket, _) = tokio_tungstenite::connect_async(format!("ws://{}/ws", server.addr))
        .await
        .unwrap();
    let mut waiting = ask_root(server.addr).await;
    assert!(
        read_head(&mut waiting, Duration::from_millis(500))
            .await
            .is_none(),
        "a connection beyond the cap was served while the WebSocket was open"
    );
    socket.close(None).await.unwrap();
    while socket.next().await.is_some() {}
    drop(socket);
    let head = read_head(&mut waiting, GRACE)
        .await
        .expect("the waiting connection was not served after the WebSocket closed");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    server.stop().await;
}

#[tokio::test]
async fn an_sse_stream_outlives_the_request_timeouts() {
    let server = Server::start(Some(limits(1.0, 1.0, 100))).await;
    let http = reqwest::Client::new();
    let url = format!("http://{}/events", server.addr);
    let started = Instant::now();
    let (after_get, after_post) =
        tokio::join!(async { http.get(&url).send().await.unwrap() }, async {
            http.post(&url)
                .body(vec![b'{'; 10_000])
                .send()
                .await
                .unwrap()
        },);
    let expected: Vec<String> = (0..SSE_TICKS).map(|n| n.to_string()).collect();
    for response in [after_get, after_post] {
        assert_eq!(response.status(), 200);
        let text = response.text().await.unwrap();
        let events: Vec<&str> = text
            .lines()
            .filter_map(|line| line.strip_prefix("data: "))
            .collect();
        assert_eq!(events, expected);
    }
    assert!(
        started.elapsed() > Duration::from_secs(2),
        "the stream was too short to prove anything"
    );
    server.stop().await;
}

#[tokio::test]
async fn a_websocket_outlives_the_request_timeouts() {
    let server = Server::start(Some(limits(1.0, 1.0, 100))).await;
    let (mut socket, _) = tokio_tungstenite::connect_async(format!("ws://{}/ws", server.addr))
        .await
        .unwrap();
    let started = Instant::now();
    let mut n = 0;
    // Quiet for longer than either timeout between messages, and open for 3 s in all.
    while started.elapsed() < Duration::from_secs(3) {
        tokio::time::sleep(Duration::from_millis(1_200)).await;
        n += 1;
        socket
            .send(tokio_tungstenite::tungstenite::Message::text(format!(
                "ping {n}"
            )))
            .await
            .unwrap();
        let reply = socket.next().await.unwrap().unwrap();
        assert_eq!(reply.into_text().unwrap().as_str(), format!("ping {n}"));
    }
    socket.close(None).await.unwrap();
    server.stop().await;
}

#[tokio::test]
async fn limits_load_from_the_http_section_and_environment_and_bad_ones_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("codelab.toml");
    std::fs::write(
        &file,
        "[http]\nheader_read_timeout = 5\nmax_connections = 7\n",
    )
    .unwrap();
    let loader = codelab_core::config::ConfigLoader::new(Some(file));
    let loaded: ListenerLimits = loader
        .load_with_env(
            codelab_core::http::LISTENER_LIMITS_SECTION,
            codelab_core::http::LISTENER_LIMITS_ENV_PREFIX,
            &(),
            [("HTTP__BODY_READ_TIMEOUT".to_owned(), "30".to_owned())],
        )
        .unwrap();
    assert_eq!(loaded, limits(5.0, 30.0, 7));
    assert!(loaded.validate().is_ok());
    assert_eq!(ListenerLimits::default(), limits(10.0, 60.0, 10_000));
    for bad in [
        limits(0.0, 60.0, 1),
        limits(10.0, -1.0, 1),
        limits(10.0, 60.0, 0),
    ] {
        assert!(bad.validate().is_err(), "{bad:?} was accepted");
    }
}

#[tokio::test]
async fn the_408_takes_the_shape_of_the_service_that_was_reading() {
    let info = ServiceInfo::new("shaped", "0").with_error_shape(ErrorShape::Detail);
    let router = with_standard_layers(app(), &info, 1 << 20);
    let server = Server::serving(router, Some(limits(10.0, 1.0, 100))).await;
    let (mut stream, head) = trickle_body(server.addr).await;
    assert!(head.starts_with("HTTP/1.1 408"), "{head}");
    let mut body = Vec::new();
    tokio::time::timeout(GRACE, stream.read_to_end(&mut body))
        .await
        .unwrap()
        .unwrap();
    let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert!(body["detail"].is_string(), "{body}");
    server.stop().await;
}

/// A body over the limit is answered 413 on its declared length without being read; the server
/// then discards the rest (bounded) instead of closing on unread bytes, whose reset could destroy
/// the 413 before the client reads it. Found by crates/codelab/tests/schema (hostile bodies):
/// clients saw "connection reset" instead of the 413.
#[tokio::test]
async fn an_oversized_body_gets_its_413_and_the_connection_stays_usable() {
    let info = ServiceInfo::new("drained", "0").with_error_shape(ErrorShape::Detail);
    let router = with_standard_layers(app(), &info, 1 << 20);
    let server = Server::serving(router, Some(limits(10.0, 10.0, 100))).await;
    let (mut read, mut write) = TcpStream::connect(server.addr).await.unwrap().into_split();
    let size = 8 << 20;
    let writer = tokio::spawn(async move {
        let head = format!("POST /upload HTTP/1.1\r\nhost: t\r\ncontent-length: {size}\r\n\r\n");
        write.write_all(head.as_bytes()).await?;
        write.write_all(&vec![b'a'; size]).await?;
        write
            .write_all(b"GET / HTTP/1.1\r\nhost: t\r\n\r\n")
            .await?;
        Ok::<_, std::io::Error>(write)
    });
    let mut seen = String::new();
    let mut buffer = vec![0_u8; 64 * 1024];
    let deadline = Instant::now() + GRACE * 2;
    while !(seen.contains("HTTP/1.1 413") && seen.contains("HTTP/1.1 200")) {
        assert!(Instant::now() < deadline, "answers so far: {seen}");
        match tokio::time::timeout(GRACE, read.read(&mut buffer)).await {
            Ok(Ok(0)) => panic!("closed after: {seen}"),
            Ok(Ok(n)) => seen.push_str(&String::from_utf8_lossy(&buffer[..n])),
            Ok(Err(error)) => panic!("{error} after: {seen}"),
            Err(_) => panic!("no answer within {GRACE:?} after: {seen}"),
        }
    }
    assert!(
        seen.find("HTTP/1.1 413") < seen.find("HTTP/1.1 200"),
        "{seen}"
    );
    let _write = writer.await.unwrap().unwrap();
    server.stop().await;
}
