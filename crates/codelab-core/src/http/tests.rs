use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::Path;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use futures_util::FutureExt;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::*;
use crate::config::Secret;

/// A server on 127.0.0.1:0 serving `router`; cancel the token to stop it.
struct TestServer {
    base: String,
    shutdown: CancellationToken,
    task: JoinHandle<std::io::Result<()>>,
}

async fn start(router: Router) -> TestServer {
    start_with_drain(router, Duration::from_secs(5)).await
}

async fn start_with_drain(router: Router, drain: Duration) -> TestServer {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let shutdown = CancellationToken::new();
    let task = crate::tasks::spawn(
        "test-server",
        serve(listener, router, shutdown.clone(), drain),
    );
    TestServer {
        base,
        shutdown,
        task,
    }
}

impl TestServer {
    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// `GET path`, answered.
    async fn get(&self, path: &str) -> reqwest::Response {
        client().get(self.url(path)).send().await.unwrap()
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

fn client() -> reqwest::Client {
    reqwest::Client::new()
}

#[derive(Deserialize)]
struct Item {
    name: String,
    #[expect(dead_code, reason = "parsed to check the body's shape, never read")]
    count: u32,
}

async fn create_item(ApiJson(item): ApiJson<Item>) -> impl IntoResponse {
    axum::Json(json!({ "created": item.name }))
}

async fn raw_echo(body: Bytes) -> impl IntoResponse {
    body.len().to_string()
}

async fn get_item(Path(id): Path<u32>) -> Result<String, ApiError> {
    match id {
        0 => Err(ApiError::not_found("no such item")),
        13 => Err(ApiError::internal("database exploded: password=hunter2")),
        14 => Err(ApiError::service_unavailable("busy")
            .with_retry_after(7)
            .with_code("overloaded")),
        id => Ok(format!("item {id}")),
    }
}

fn app(info: &ServiceInfo, readiness: Readiness, limit: usize) -> Router {
    let routes = Router::new()
        .route("/items", post(create_item))
        .route("/items/{id}", get(get_item))
        .route("/raw", post(raw_echo))
        .merge(common_routes(info.clone(), readiness));
    with_standard_layers(routes, info, limit)
}

/// [`app`] for the service `name` with no readiness checks and a 1 KiB body limit, started.
async fn start_app(name: &'static str, version: &'static str) -> TestServer {
    let info = ServiceInfo::new(name, version);
    start(app(&info, Readiness::new(), 1024)).await
}

#[tokio::test]
async fn health_has_the_original_shape() {
    let server = start_app("http-health", "1.2.3").await;
    let resp = server.get("/health").await;
    assert_eq!(resp.status(), StatusCode::OK);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(
        body,
        json!({"status": "healthy", "service": "http-health", "version": "1.2.3"})
    );
    server.stop().await;
}

#[tokio::test]
async fn ready_reports_each_check() {
    let info = ServiceInfo::new("http-ready", "1");
    let ok = Readiness::new()
        .with_check("database", || async { Ok(()) }.boxed())
        .with_check("cache", || async { Ok(()) }.boxed());
    let server = start(app(&info, ok, 1024)).await;
    let resp = server.get("/ready").await;
    assert_eq!(resp.status(), StatusCode::OK);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(
        body,
        json!({"status": "ready", "checks": {"database": "ok", "cache": "ok"}})
    );
    server.stop().await;

    let failing = Readiness::new()
        .with_check("database", || async { Ok(()) }.boxed())
        .with_check("cache", || {
            async { Err("connection refused".to_owned()) }.boxed()
        });
    let server = start(app(&info, failing, 1024)).await;
    let resp = server.get("/ready").await;
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(
        body,
        json!({"status": "not_ready", "checks": {"database": "ok", "cache": "connection refused"}})
    );
    server.stop().await;
}

#[tokio::test]
async fn a_hanging_check_times_out_and_others_still_run() {
    let readiness = Readiness::new()
        .with_check("slow", || {
            std::future::pending::<Result<(), String>>().boxed()
        })
        .with_check("fast", || async { Ok(()) }.boxed());
    let started = std::time::Instant::now();
    let report = readiness.run().await;
    assert!(started.elapsed() < READY_CHECK_TIMEOUT + Duration::from_secs(1));
    assert!(!report.ready);
    assert_eq!(report.checks["slow"], "timed out after 2s");
    assert_eq!(report.checks["fast"], "ok");
}

#[tokio::test]
async fn metrics_show_request_series_with_route_templates() {
    let server = start_app("http-metrics", "4.5.6").await;
    assert_eq!(server.get("/items/42").await.status(), StatusCode::OK);
    assert_eq!(server.get("/items/0").await.status(), StatusCode::NOT_FOUND);
    assert_eq!(
        server.get("/nope/123").await.status(),
        StatusCode::NOT_FOUND
    );

    let resp = server.get("/metrics").await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(
        resp.headers()["content-type"].to_str().unwrap(),
        "text/plain; version=0.0.4; charset=utf-8"
    );
    let text = resp.text().await.unwrap();
    assert!(
        text.contains(
            r#"codelab_http_metrics_http_requests_total{method="GET",route="/items/{id}",status="200"} 1"#
        ),
        "{text}"
    );
    assert!(
        text.contains(r#"route="/items/{id}",status="404"} 1"#),
        "{text}"
    );
    assert!(
        text.contains(r#"route="unmatched",status="404"} 1"#),
        "{text}"
    );
    assert!(
        !text.contains("/items/42") && !text.contains("/nope/123"),
        "raw paths leak: {text}"
    );
    assert!(
        text.contains(
            r#"codelab_http_metrics_http_request_duration_seconds_bucket{method="GET",route="/items/{id}",status_class="2xx",le="0.005"}"#
        ),
        "{text}"
    );
    assert!(
        text.contains(r#"codelab_build_info{service="http-metrics",version="4.5.6"} 1"#),
        "{text}"
    );
    assert!(
        text.contains("codelab_http_metrics_uptime_seconds"),
        "{text}"
    );
    assert!(text.contains("process_resident_memory_bytes"), "{text}");
    assert!(
        !text.contains("codelab_http_health_"),
        "other services' series leak: {text}"
    );
    server.stop().await;
}

#[tokio::test]
async fn errors_use_one_envelope() {
    let server = start_app("http-errors", "1").await;

    let resp = server.get("/items/0").await;
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(
        body,
        json!({"error": {"message": "no such item", "type": "not_found_error", "param": null, "code": null}})
    );

    let resp = server.get("/items/13").await;
    assert_eq!(resp.status(), StatusCode::INTERNAL_SERVER_ERROR);
    let text = resp.text().await.unwrap();
    assert!(
        !text.contains("hunter2") && !text.contains("exploded"),
        "{text}"
    );
    let body: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(body["error"]["type"], "internal_error");
    assert_eq!(body["error"]["message"], "internal server error");

    let resp = server.get("/items/14").await;
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(resp.headers()["retry-after"], "7");
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], "overloaded");
    assert_eq!(body["error"]["type"], "service_unavailable");
    server.stop().await;
}

#[tokio::test]
async fn json_bodies_get_clear_4xx() {
    let server = start_app("http-json", "1").await;
    let http = client();
    let post = |body: &'static str, content_type: Option<&'static str>| {
        let mut request = http.post(server.url("/items")).body(body);
        if let Some(ct) = content_type {
            request = request.header("content-type", ct);
        }
        request.send()
    };

    let resp = post(r#"{"name":"a","count":1}"#, Some("application/json"))
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);

    let resp = post(r#"{"name":"#, Some("application/json")).await.unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["type"], "invalid_request_error");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("invalid JSON in request body: ")
    );

    let resp = post(r#"{"name":"a"}"#, Some("application/json"))
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let body: Value = resp.json().await.unwrap();
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("missing field `count`"), "{message}");

    let resp = post(r#"{"name":"a","count":"x"}"#, Some("application/json"))
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let body: Value = resp.json().await.unwrap();
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("count") && message.contains("invalid type"),
        "{message}"
    );

    let resp = post(r#"{"name":"a","count":1}"#, None).await.unwrap();
    assert_eq!(resp.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["type"], "invalid_request_error");
    server.stop().await;
}

#[tokio::test]
async fn oversize_bodies_get_413_in_our_envelope() {
    let server = start_app("http-limit", "1").await;
    let http = client();
    let big = format!(r#"{{"name":"{}","count":1}}"#, "x".repeat(4096));

    // Declared length over the limit (rejected before the handler).
    for path in ["/items", "/raw"] {
        let resp = http
            .post(server.url(path))
            .header("content-type", "application/json")
            .body(big.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE, "{path}");
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body["error"]["type"], "invalid_request_error", "{path}");
        assert_eq!(body["error"]["code"], "payload_too_large", "{path}");
    }

    // Chunked body without a length (caught while reading).
    for path in ["/items", "/raw"] {
        let chunks: Vec<Result<Bytes, Infallible>> = big
            .as_bytes()
            .chunks(512)
            .map(|c| Ok(Bytes::copy_from_slice(c)))
            .collect();
        let resp = http
            .post(server.url(path))
            .header("content-type", "application/json")
            .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
                chunks,
            )))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE, "{path}");
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body["error"]["code"], "payload_too_large", "{path}");
    }

    let resp = http
        .post(server.url("/raw"))
        .body("small")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.text().await.unwrap(), "5");
    server.stop().await;
}

#[tokio::test]
async fn request_ids_are_echoed_or_generated() {
    let server = start_app("http-request-id", "1").await;
    let http = client();
    let with_id = |id: String| {
        http.get(server.url("/health"))
            .header("x-request-id", id)
            .send()
    };

    let resp = with_id("abc-123".to_owned()).await.unwrap();
    assert_eq!(resp.headers()["x-request-id"], "abc-123");

    let resp = server.get("/health").await;
    let generated = resp.headers()["x-request-id"].to_str().unwrap().to_owned();
    assert!(uuid::Uuid::parse_str(&generated).is_ok(), "{generated}");

    let resp = server.get("/nope").await;
    assert!(
        resp.headers().contains_key("x-request-id"),
        "also on unmatched routes"
    );

    let resp = with_id("x".repeat(500)).await.unwrap();
    let replaced = resp.headers()["x-request-id"].to_str().unwrap();
    assert!(
        uuid::Uuid::parse_str(replaced).is_ok(),
        "oversize ids are replaced: {replaced}"
    );
    server.stop().await;
}

const EXEMPT: &[&str] = &["/health", "/metrics"];

#[tokio::test]
async fn internal_auth_guards_everything_but_exempt_paths() {
    let info = ServiceInfo::new("http-auth", "1");
    let key = Secret::new("internal-key-0123456789abcdef");
    let routes = Router::new()
        .route("/items", post(create_item))
        .route("/secret", get(|| async { "classified" }))
        .merge(common_routes(info.clone(), Readiness::new()));
    let router = with_standard_layers(require_internal_auth(routes, key, EXEMPT), &info, 1024);
    let server = start(router).await;
    let http = client();

    for request in [
        http.get(server.url("/secret")),
        http.get(server.url("/secret"))
            .header("X-Internal-Auth", "wrong"),
        http.get(server.url("/secret"))
            .header("X-Internal-Auth", ""),
        http.get(server.url("/ready")),
        http.get(server.url("/does-not-exist")),
        http.get(server.url("/health/")),
        // Rejected before the body is parsed: invalid JSON still gets 401, not 400.
        http.post(server.url("/items"))
            .header("content-type", "application/json")
            .body("{"),
    ] {
        let resp = request.send().await.unwrap();
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(resp.headers()["content-type"], "application/json");
        assert!(resp.headers().contains_key("x-request-id"));
        assert_eq!(resp.text().await.unwrap(), r#"{"detail":"unauthorized"}"#);
    }

    let resp = http
        .get(server.url("/secret"))
        .header("X-Internal-Auth", "internal-key-0123456789abcdef")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.text().await.unwrap(), "classified");

    for path in EXEMPT {
        let resp = server.get(path).await;
        assert_eq!(resp.status(), StatusCode::OK, "{path}");
    }
    server.stop().await;
}

#[tokio::test]
async fn connect_info_is_available_to_handlers() {
    let router =
        Router::new().route(
            "/peer",
            get(
                |axum::extract::ConnectInfo(peer): axum::extract::ConnectInfo<
                    std::net::SocketAddr,
                >| async move { peer.ip().to_string() },
            ),
        );
    let server = start(router).await;
    let text = server.get("/peer").await.text().await.unwrap();
    assert_eq!(text, "127.0.0.1");
    server.stop().await;
}

/// A route streaming whatever the test sends on the channel it hands out.
fn streaming_router() -> (Router, mpsc::UnboundedSender<&'static str>) {
    let (tx, rx) = mpsc::unbounded_channel::<&'static str>();
    let slot = Arc::new(Mutex::new(Some(rx)));
    let router = Router::new().route(
        "/stream",
        get(move || {
            let rx = slot.lock().unwrap().take();
            async move {
                let Some(rx) = rx else {
                    return StatusCode::CONFLICT.into_response();
                };
                let stream = futures_util::stream::unfold(rx, |mut rx| async move {
                    rx.recv()
                        .await
                        .map(|chunk| (Ok::<_, Infallible>(Bytes::from(chunk)), rx))
                });
                Body::from_stream(stream).into_response()
            }
        }),
    );
    (router, tx)
}

#[tokio::test]
async fn graceful_shutdown_lets_an_in_flight_stream_finish() {
    let (router, tx) = streaming_router();
    let server = start(router).await;
    tx.send("first;").unwrap();
    let mut resp = server.get("/stream").await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.chunk().await.unwrap().unwrap(), "first;");

    server.shutdown.cancel();
    // The stream is still open, so the server must still be draining.
    tokio::task::yield_now().await;
    assert!(!server.task.is_finished());

    tx.send("second;").unwrap();
    tx.send("last").unwrap();
    drop(tx);
    let mut rest = Vec::new();
    while let Some(chunk) = resp.chunk().await.unwrap() {
        rest.extend_from_slice(&chunk);
    }
    assert_eq!(rest, b"second;last");
    tokio::time::timeout(Duration::from_secs(5), server.task)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn drain_timeout_bounds_a_stream_that_never_ends() {
    let (router, tx) = streaming_router();
    let server = start_with_drain(router, Duration::from_millis(200)).await;
    tx.send("forever").unwrap();
    let mut resp = server.get("/stream").await;
    assert_eq!(resp.chunk().await.unwrap().unwrap(), "forever");
    server.shutdown.cancel();
    let result = tokio::time::timeout(Duration::from_secs(5), server.task).await;
    assert!(
        result.unwrap().unwrap().is_ok(),
        "serve returns after the drain timeout"
    );
    drop(tx);
}

#[tokio::test]
async fn the_listener_stops_accepting_after_shutdown() {
    let server = start(Router::new().route("/", get(|| async { "hi" }))).await;
    let url = server.url("/");
    assert_eq!(
        client()
            .get(&url)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap(),
        "hi"
    );
    server.stop().await;
    assert!(reqwest::Client::new().get(&url).send().await.is_err());
}

#[test]
fn api_error_builders_and_display() {
    let error = ApiError::bad_request("bad model").with_code("model_not_found");
    assert_eq!(error.status(), StatusCode::BAD_REQUEST);
    assert_eq!(error.kind(), "invalid_request_error");
    assert_eq!(error.message(), "bad model");
    assert_eq!(error.code(), Some("model_not_found"));
    assert_eq!(error.to_string(), "400 invalid_request_error: bad model");
    assert_eq!(
        ApiError::unauthorized("x").status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        ApiError::payload_too_large("x").status(),
        StatusCode::PAYLOAD_TOO_LARGE
    );
    let internal = ApiError::internal("secret detail");
    assert_eq!(internal.message(), "internal server error");
    assert!(!internal.to_json().to_string().contains("secret detail"));
    assert_eq!(
        ServiceInfo::new("llm-proxy", "1").metric_prefix(),
        "codelab_llm_proxy"
    );
    assert_eq!(
        ServiceInfo::new("agent-runtime", "1").metric_name("turns_total"),
        "codelab_agent_runtime_turns_total"
    );
}

/// Everything the tracing subscriber of [`captured_logs`] writes, shared with the test.
#[derive(Clone, Default)]
struct LogCapture(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for LogCapture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl LogCapture {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

/// Sends `request` (raw HTTP/1.1, `Connection: close`) to `base` and returns the status line.
async fn raw_request(base: &str, request: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = base.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).await.unwrap();
    String::from_utf8_lossy(&answer)
        .lines()
        .next()
        .unwrap_or_default()
        .to_owned()
}

// A raw TCP client (not reqwest) so the only log lines are the server's; the current-thread
// runtime keeps the server's tasks on this thread, under the test's subscriber.
#[tokio::test(flavor = "current_thread")]
async fn request_logs_carry_route_templates_never_session_ids_or_tokens() {
    const SESSION_ID: &str = "5b0c2f4e-session-id-d7a1";
    const TOKEN: &str = "tok3n-s3cr3t-value";
    let capture = LogCapture::default();
    let writer = capture.clone();
    // JSON lines with spans, as staging and production log, at the most verbose level.
    let subscriber = tracing_subscriber::fmt()
        .json()
        .with_current_span(true)
        .with_span_list(true)
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || writer.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let info = ServiceInfo::new("log-test", "1");
    let public = Router::new()
        .route("/api/v1/ws/{session_id}", get(|| async { "socket" }))
        .route(
            "/api/v1/sessions/{id}/messages",
            get(|Path(_id): Path<String>| async { "[]" }),
        );
    let internal = require_internal_auth(
        Router::new().route("/v1/sessions/{id}/frames", post(|| async { "ok" })),
        Secret::new("an-internal-key-long-enough"),
        EXEMPT,
    );
    let router = with_standard_layers(public.merge(internal), &info, 1024);
    let server = start(router).await;

    for (path, status) in [
        (
            format!("/api/v1/ws/{SESSION_ID}?access_token={TOKEN}"),
            "200",
        ),
        (
            format!("/api/v1/sessions/{SESSION_ID}/messages?code={TOKEN}&refresh_token={TOKEN}"),
            "200",
        ),
        // Rejected by the internal-key check, which logs the refusal.
        (
            format!("/v1/sessions/{SESSION_ID}/frames?access_token={TOKEN}"),
            "401",
        ),
        // Matches no route (the internal-key check covers the fallback too: 401 or 404).
        (format!("/nowhere/{SESSION_ID}?access_token={TOKEN}"), " 40"),
    ] {
        let method = if path.starts_with("/v1/") {
            "POST"
        } else {
            "GET"
        };
        let line = raw_request(
            &server.base,
            &format!(
                "{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            ),
        )
        .await;
        assert!(line.contains(status), "{path}: {line}");
    }
    server.stop().await;

    let logs = capture.text();
    assert!(
        logs.contains("/api/v1/ws/{session_id}") && logs.contains("/api/v1/sessions/{id}/messages"),
        "the request lines name the route templates:\n{logs}"
    );
    assert!(
        !logs.contains(SESSION_ID),
        "a session id was logged:\n{logs}"
    );
    assert!(!logs.contains(TOKEN), "a token was logged:\n{logs}");
    assert!(
        !logs.contains("access_token"),
        "a query string was logged:\n{logs}"
    );
}

/// Sends `GET path` through the standard layers to routes answering 200, 404 (no route) and
/// 500, under a plain-text subscriber at `level` (as development logs to a file), and returns
/// what that request alone made the subscriber write.
async fn request_log_at(level: tracing::Level, path: &str) -> String {
    let capture = LogCapture::default();
    let writer = capture.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_ansi(false)
        .with_max_level(level)
        .with_writer(move || writer.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let info = ServiceInfo::new("log-level-test", "1");
    let router = Router::new()
        .route("/ok", get(|| async { "ok" }))
        .route("/boom", get(|| async { StatusCode::INTERNAL_SERVER_ERROR }));
    let server = start(with_standard_layers(router, &info, 1024)).await;
    let before = capture.text().len();
    let line = raw_request(
        &server.base,
        &format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"),
    )
    .await;
    assert!(line.starts_with("HTTP/1.1 "), "{path}: {line}");
    // The line is written before the response head is sent, so it is in by now.
    let logged = capture.text().split_off(before);
    server.stop().await;
    logged
}

// Current-thread runtime: the server's tasks run under the test's subscriber.
#[tokio::test(flavor = "current_thread")]
async fn a_successful_request_writes_nothing_at_the_default_level() {
    let logged = request_log_at(tracing::Level::INFO, "/ok").await;
    assert!(
        logged.is_empty(),
        "a 2xx request logged at INFO ({} bytes):\n{logged}",
        logged.len()
    );
}

#[tokio::test(flavor = "current_thread")]
async fn failed_requests_stay_visible_at_the_default_level() {
    let client_error = request_log_at(tracing::Level::INFO, "/nowhere").await;
    assert!(
        client_error.contains(" INFO ") && client_error.contains("status=404"),
        "{client_error}"
    );
    let server_error = request_log_at(tracing::Level::INFO, "/boom").await;
    assert!(
        server_error.contains(" WARN ")
            && server_error.contains("status=500")
            && server_error.contains("route=\"/boom\""),
        "{server_error}"
    );
}

#[tokio::test(flavor = "current_thread")]
async fn at_debug_a_request_is_one_compact_line_with_its_route() {
    let logged = request_log_at(tracing::Level::DEBUG, "/ok").await;
    let lines: Vec<&str> = logged
        .lines()
        .filter(|l| l.contains("codelab_core::http::layers"))
        .collect();
    assert_eq!(lines.len(), 1, "one line per request:\n{logged}");
    let line = lines[0];
    assert!(line.contains(" DEBUG "), "{line}");
    assert!(
        line.contains("route=\"/ok\"") && line.contains("request_id="),
        "{line}"
    );
    assert!(line.contains("response status=200 latency_us="), "{line}");
    assert!(
        !line.contains('\u{1b}'),
        "no colour codes in a file: {line}"
    );
    assert!(line.len() < 240, "{} bytes: {line}", line.len());
}
