//! The gateway's client of the agent runtime's internal API: the streaming endpoint (one client
//! frame in, SSE events out), stored events for replays, sessions, history and pending
//! approvals as the typed answers of `codelab_protocol::internal`, and a REST passthrough for
//! `rest/`.
//!
//! One pooled HTTP client serves every socket and request. Every call carries
//! `X-Internal-Auth` and acts for a user (`X-Codelab-User-Id`); the runtime believes that
//! header only because the key is valid.

use std::collections::VecDeque;
use std::fmt;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use codelab_core::http::{LocalRoute, ServiceClient};
use codelab_protocol::internal::{
    DEV_SESSIONS_HEADER, INTERNAL_AUTH_HEADER, SessionOwner, SessionResource, StoredEvents,
    StreamRequest, USER_HEADER,
};
use codelab_protocol::plans::PlanView;
use codelab_protocol::runtime::SequencedEvent;
use codelab_protocol::sse::{SseEvent, SseParser};
use futures_util::{Stream, StreamExt};
use reqwest::header::{ACCEPT, HeaderValue};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use crate::config::Config;

/// Largest SSE record accepted (a `tool_call` may carry a whole file in its arguments).
pub const MAX_RECORD_BYTES: usize = 64 * 1024 * 1024;
/// Page size of `GET /sessions/{id}/events` (the runtime's largest).
const EVENTS_PAGE: usize = 1000;
/// Longest runtime error text put into a client-facing message.
const MAX_DETAIL_CHARS: usize = 500;
/// Connecting to the runtime never takes longer than this, whatever the request timeout.
const MAX_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// One page of a session's stored events ([`RuntimeClient::events_page`]).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EventsPage {
    /// The events, oldest first.
    pub events: Vec<SequencedEvent>,
    /// `Some(seq)`: more may follow; ask again with `after = seq`.
    pub next_after: Option<u64>,
}

/// A failed call to the runtime.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RuntimeError {
    /// The settings cannot make a client (bad URL, key not usable as a header).
    #[error("invalid agent runtime settings: {0}")]
    Config(String),
    /// The runtime answered with a non-2xx status; `detail` is its `detail` text.
    #[error("the agent runtime answered {status}: {detail}")]
    Status {
        /// The HTTP status.
        status: u16,
        /// The runtime's explanation (its `{"detail": ...}`, else the body text).
        detail: String,
    },
    /// Connecting, sending or reading failed.
    #[error("{0}")]
    Unreachable(String),
    /// Nothing arrived within the allowed time.
    #[error("no answer from the agent runtime within {0:.0} s")]
    Timeout(f64),
    /// The runtime answered something we cannot read.
    #[error("invalid answer from the agent runtime: {0}")]
    Invalid(String),
}

impl RuntimeError {
    /// A bounded metric label for the failure.
    pub fn kind(&self) -> &'static str {
        match self {
            RuntimeError::Config(_) | RuntimeError::Invalid(_) => "invalid",
            RuntimeError::Status { .. } => "status",
            RuntimeError::Unreachable(_) => "unreachable",
            RuntimeError::Timeout(_) => "timeout",
        }
    }
}

/// Client of the agent runtime (over HTTP, or its router when the runtime runs in this
/// process), cheap to clone (one connection pool).
#[derive(Clone)]
pub struct RuntimeClient {
    http: ServiceClient,
    base: Arc<str>,
    key: HeaderValue,
    stream_idle: Duration,
    request_timeout: Duration,
}

impl fmt::Debug for RuntimeClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RuntimeClient")
            .field("base", &self.base)
            .field("stream_idle", &self.stream_idle)
            .field("request_timeout", &self.request_timeout)
            .finish_non_exhaustive()
    }
}

/// Seconds from a setting; anything not a valid timeout (not positive, not finite, beyond a day)
/// falls back to `default`.
fn seconds(value: f64, default: f64) -> Duration {
    if codelab_core::http::is_valid_timeout(value) {
        Duration::from_secs_f64(value)
    } else {
        Duration::from_secs_f64(default)
    }
}

impl RuntimeClient {
    /// A client for `config.agent_url` with `config.internal_api_key`; through `local` when
    /// the runtime runs in this process (`codelab up`).
    pub fn new(config: &Config, local: Option<LocalRoute>) -> Result<Self, RuntimeError> {
        let base = config.agent_url.trim().trim_end_matches('/');
        let url = reqwest::Url::parse(base)
            .map_err(|e| RuntimeError::Config(format!("agent_url {base:?}: {e}")))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(RuntimeError::Config(format!(
                "agent_url must be http or https, got {base:?}"
            )));
        }
        let mut key = HeaderValue::from_str(config.internal_api_key.expose()).map_err(|_| {
            RuntimeError::Config("internal_api_key is not usable as a header value".to_owned())
        })?;
        key.set_sensitive(true);
        let request_timeout = seconds(config.request_timeout, 30.0);
        let http = reqwest::Client::builder()
            .connect_timeout(request_timeout.min(MAX_CONNECT_TIMEOUT))
            .pool_idle_timeout(Duration::from_secs(90))
            .tcp_nodelay(true)
            .build()
            .map_err(|e| RuntimeError::Config(format!("cannot create the HTTP client: {e}")))?;
        Ok(RuntimeClient {
            http: ServiceClient::new(http).with_local_route(local),
            base: Arc::from(base),
            key,
            stream_idle: seconds(config.agent_stream_timeout, 300.0),
            request_timeout,
        })
    }

    fn builder(
        &self,
        method: reqwest::Method,
        path_and_query: &str,
        user_id: &str,
        dev_sessions: bool,
    ) -> reqwest::RequestBuilder {
        let mut request = self
            .http
            .request(method, &format!("{}{path_and_query}", self.base))
            .header(INTERNAL_AUTH_HEADER, self.key.clone());
        // No header means the runtime's development user; every real caller names a user.
        if !user_id.is_empty() {
            request = request.header(USER_HEADER, user_id);
        }
        if dev_sessions {
            request = request.header(DEV_SESSIONS_HEADER, "true");
        }
        request
    }

    /// Sends one client frame (a [`codelab_protocol::ide::ClientFrame`]; tests also send raw
    /// JSON) to `POST /agent/message/stream` as a [`StreamRequest`] and returns its events. A
    /// non-2xx answer is [`RuntimeError::Status`] with the runtime's `detail`; between two
    /// events at most `agent_stream_timeout` may pass.
    pub async fn stream_frame<M: Serialize>(
        &self,
        session_id: &str,
        user_id: &str,
        frame: M,
        dev_sessions: bool,
    ) -> Result<EventStream, RuntimeError> {
        let body = StreamRequest {
            message: frame,
            session_id: Some(session_id.to_owned()),
        };
        let request = self
            .builder(
                reqwest::Method::POST,
                "/agent/message/stream",
                user_id,
                dev_sessions,
            )
            .header(ACCEPT, "text/event-stream")
            .json(&body);
        let idle = self.stream_idle;
        let response = match tokio::time::timeout(idle, self.http.send(request)).await {
            Err(_) => return Err(RuntimeError::Timeout(idle.as_secs_f64())),
            Ok(Err(error)) => return Err(transport_error(error)),
            Ok(Ok(response)) => response,
        };
        let status = response.status();
        if !status.is_success() {
            let text = tokio::time::timeout(self.request_timeout, response.text())
                .await
                .ok()
                .and_then(Result::ok)
                .unwrap_or_default();
            return Err(RuntimeError::Status {
                status: status.as_u16(),
                detail: detail_of(&text),
            });
        }
        let state = StreamState {
            body: Box::pin(response.bytes_stream()),
            decoder: SseDecoder::default(),
            ready: VecDeque::new(),
            idle,
            finished: false,
            failure: None,
        };
        Ok(EventStream {
            inner: Box::pin(futures_util::stream::unfold(state, next_event)),
        })
    }

    /// [`Self::stream_frame`] for a frame the runtime takes twice without effect (it answers a
    /// repeated tool result, decision or cancel with a notice): sent once more when the first
    /// request got no answer at all. A pooled keep-alive connection the runtime closed just as
    /// the request went out ends in "connection reset" (docs/reliability.md, the long soak);
    /// the second attempt goes out on a new connection.
    pub async fn stream_repeatable_frame<M: Serialize>(
        &self,
        session_id: &str,
        user_id: &str,
        frame: M,
        dev_sessions: bool,
    ) -> Result<EventStream, RuntimeError> {
        match self
            .stream_frame(session_id, user_id, &frame, dev_sessions)
            .await
        {
            Err(RuntimeError::Unreachable(error)) => {
                tracing::debug!(%error, "the agent runtime did not answer a frame; sending it again");
                self.stream_frame(session_id, user_id, &frame, dev_sessions)
                    .await
            }
            other => other,
        }
    }

    /// A REST call for `rest/`: the status and JSON body of any HTTP answer (a 204 or an empty
    /// body is `Value::Null`; a non-JSON error body becomes `{"detail": "<text>"}`). Fails when
    /// the runtime cannot be reached within `request_timeout` or sends non-JSON with a 2xx.
    pub async fn request(
        &self,
        method: reqwest::Method,
        path_and_query: &str,
        user_id: &str,
        body: Option<Value>,
        dev_sessions: bool,
    ) -> Result<(u16, Value), RuntimeError> {
        let (status, bytes) = self
            .send(method, path_and_query, user_id, body, dev_sessions)
            .await?;
        json_answer(status, &bytes).map(|value| (status.as_u16(), value))
    }

    /// Sends a request; the status and the whole body.
    async fn send(
        &self,
        method: reqwest::Method,
        path_and_query: &str,
        user_id: &str,
        body: Option<Value>,
        dev_sessions: bool,
    ) -> Result<(reqwest::StatusCode, axum::body::Bytes), RuntimeError> {
        let mut request = self
            .builder(method, path_and_query, user_id, dev_sessions)
            .timeout(self.request_timeout);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let timeout = RuntimeError::Timeout(self.request_timeout.as_secs_f64());
        let failed = |e: reqwest::Error| {
            if e.is_timeout() {
                timeout.clone()
            } else {
                transport_error(e)
            }
        };
        // The deadline covers the head and the body, in process as on the wire.
        let exchange = async {
            let response = self.http.send(request).await.map_err(failed)?;
            let status = response.status();
            let bytes = response.bytes().await.map_err(failed)?;
            Ok((status, bytes))
        };
        tokio::time::timeout(self.request_timeout, exchange)
            .await
            .unwrap_or_else(|_| Err(timeout.clone()))
    }

    /// `GET path` as `user_id`, which must answer 2xx with a `T` (read straight from the body).
    async fn get<T: DeserializeOwned>(&self, path: &str, user_id: &str) -> Result<T, RuntimeError> {
        let (status, bytes) = self
            .send(reqwest::Method::GET, path, user_id, None, false)
            .await?;
        if !status.is_success() {
            let body = json_answer(status, &bytes)?;
            return Err(status_error(status.as_u16(), &body));
        }
        serde_json::from_slice(&bytes).map_err(|error| {
            RuntimeError::Invalid(format!("unexpected answer from GET {path}: {error}"))
        })
    }

    /// `GET /sessions/{id}`, `/history` or `/pending-approvals` as `user_id`, by the answer's type.
    pub async fn session_part<T: SessionResource>(
        &self,
        session_id: &str,
        user_id: &str,
    ) -> Result<T, RuntimeError> {
        let path = format!("/sessions/{}{}", encode_segment(session_id), T::SUFFIX);
        self.get(&path, user_id).await
    }

    /// `GET /plans/{id}` as `user_id`: the plan, or a 404 status unless the user owns its
    /// session.
    pub async fn plan(&self, plan_id: &str, user_id: &str) -> Result<PlanView, RuntimeError> {
        let path = format!("/plans/{}", encode_segment(plan_id));
        self.get(&path, user_id).await
    }

    /// The stored events of `session_id` with `seq > after`, oldest first, all pages.
    pub async fn events_after(
        &self,
        session_id: &str,
        user_id: &str,
        after: u64,
    ) -> Result<Vec<SequencedEvent>, RuntimeError> {
        let mut events = Vec::new();
        let mut after = after;
        loop {
            let page = self
                .events_page(session_id, user_id, after, EVENTS_PAGE)
                .await?;
            events.extend(page.events);
            match page.next_after {
                Some(next) => after = next,
                None => return Ok(events),
            }
        }
    }

    /// One page of the stored events of `session_id` with `seq > after`, oldest first: at
    /// most `limit` (capped at the runtime's largest page, 1000).
    pub async fn events_page(
        &self,
        session_id: &str,
        user_id: &str,
        after: u64,
        limit: usize,
    ) -> Result<EventsPage, RuntimeError> {
        let limit = limit.clamp(1, EVENTS_PAGE);
        let path = format!(
            "/sessions/{}/events?after={after}&limit={limit}",
            encode_segment(session_id)
        );
        let StoredEvents { events: raw_events } =
            self.get::<StoredEvents<Value>>(&path, user_id).await?;
        let page_len = raw_events.len();
        let mut events = Vec::with_capacity(page_len);
        let mut last = after;
        for raw in raw_events {
            let seq = raw.get("seq").and_then(Value::as_u64);
            // An event type this gateway does not know (a newer runtime) is skipped, not
            // fatal: the rest of the replay is still worth having.
            match serde_json::from_value::<SequencedEvent>(raw) {
                Ok(event) => {
                    last = last.max(event.seq);
                    events.push(event);
                }
                Err(error) => {
                    tracing::warn!(%error, "skipping a stored event this gateway cannot read");
                    if let Some(seq) = seq {
                        last = last.max(seq);
                    }
                }
            }
        }
        // A full page may have more behind it; a page that made no progress ends the walk.
        let next_after = (page_len >= limit && last > after).then_some(last);
        Ok(EventsPage { events, next_after })
    }

    /// The owner of a live session, `None` when there is none (the runtime's
    /// `GET /internal/sessions/{id}/owner`).
    pub async fn session_owner(&self, session_id: &str) -> Result<Option<String>, RuntimeError> {
        let path = format!("/internal/sessions/{}/owner", encode_segment(session_id));
        let (status, body) = self
            .request(reqwest::Method::GET, &path, "", None, false)
            .await?;
        match status {
            200 => serde_json::from_value::<SessionOwner>(body)
                .map(|answer| Some(answer.owner))
                .map_err(|_| RuntimeError::Invalid("expected {\"owner\": \"...\"}".to_owned())),
            404 => Ok(None),
            _ => Err(status_error(status, &body)),
        }
    }

    /// `/ready`: the runtime's `/health` answers 2xx.
    pub async fn health(&self) -> Result<(), RuntimeError> {
        let (status, body) = self
            .request(reqwest::Method::GET, "/health", "", None, false)
            .await?;
        if (200..300).contains(&status) {
            Ok(())
        } else {
            Err(status_error(status, &body))
        }
    }
}

/// The JSON of an answer (a 204 or an empty body is `Value::Null`; a non-JSON error body
/// becomes `{"detail": "<text>"}`); non-JSON with a 2xx fails.
fn json_answer(status: reqwest::StatusCode, bytes: &[u8]) -> Result<Value, RuntimeError> {
    if status == reqwest::StatusCode::NO_CONTENT || bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(Value::Null);
    }
    match serde_json::from_slice::<Value>(bytes) {
        Ok(value) => Ok(value),
        Err(_) if !status.is_success() => Ok(json!({
            "detail": detail_of(&String::from_utf8_lossy(bytes))
        })),
        Err(error) => Err(RuntimeError::Invalid(format!(
            "expected JSON with status {status}, got a body that is not ({error})"
        ))),
    }
}

/// [`RuntimeError::Status`] from a JSON error body.
fn status_error(status: u16, body: &Value) -> RuntimeError {
    let detail = match body.get("detail") {
        Some(Value::String(text)) => truncate(text),
        Some(other) => truncate(&other.to_string()),
        None if body.is_null() => String::new(),
        None => truncate(&body.to_string()),
    };
    RuntimeError::Status { status, detail }
}

/// The runtime's `detail` from an error body, else the (shortened) body text.
fn detail_of(text: &str) -> String {
    match serde_json::from_str::<Value>(text) {
        Ok(Value::Object(map)) => match map.get("detail") {
            Some(Value::String(detail)) => truncate(detail),
            Some(other) => truncate(&other.to_string()),
            None => truncate(text.trim()),
        },
        _ => truncate(text.trim()),
    }
}

fn truncate(text: &str) -> String {
    match text.char_indices().nth(MAX_DETAIL_CHARS) {
        Some((cut, _)) => format!("{}...", &text[..cut]),
        None => text.to_owned(),
    }
}

/// A client-presentable text for a transport failure: no internal URL, the root cause kept.
fn transport_error(error: reqwest::Error) -> RuntimeError {
    let error = error.without_url();
    let mut text = error.to_string();
    let mut source = std::error::Error::source(&error);
    let mut last = None;
    while let Some(cause) = source {
        last = Some(cause.to_string());
        source = cause.source();
    }
    if let Some(cause) = last.filter(|c| !text.contains(c.as_str())) {
        text = format!("{text}: {cause}");
    }
    RuntimeError::Unreachable(text)
}

/// Percent-encodes one path segment (everything but RFC 3986 unreserved characters).
pub fn encode_segment(segment: &str) -> String {
    let mut out = String::with_capacity(segment.len());
    for byte in segment.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// The events of one runtime stream, ending when the runtime's body ends. An error item
/// (idle timeout, broken connection, oversized record) is always the last one.
pub struct EventStream {
    inner: Pin<Box<dyn Stream<Item = Result<SequencedEvent, RuntimeError>> + Send>>,
}

impl fmt::Debug for EventStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EventStream").finish_non_exhaustive()
    }
}

impl Stream for EventStream {
    type Item = Result<SequencedEvent, RuntimeError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.inner.as_mut().poll_next(cx)
    }
}

// `axum::body::Bytes` is `bytes::Bytes`, the chunk type of `reqwest`'s body stream.
type BodyStream = Pin<Box<dyn Stream<Item = reqwest::Result<axum::body::Bytes>> + Send>>;

struct StreamState {
    body: BodyStream,
    decoder: SseDecoder,
    ready: VecDeque<SequencedEvent>,
    idle: Duration,
    finished: bool,
    /// The failure that ends the stream once the events decoded before it are out.
    failure: Option<RuntimeError>,
}

async fn next_event(
    mut state: StreamState,
) -> Option<(Result<SequencedEvent, RuntimeError>, StreamState)> {
    loop {
        if let Some(event) = state.ready.pop_front() {
            return Some((Ok(event), state));
        }
        if let Some(error) = state.failure.take() {
            return Some((Err(error), state));
        }
        if state.finished {
            return None;
        }
        match tokio::time::timeout(state.idle, state.body.next()).await {
            Err(_) => {
                state.finished = true;
                state.failure = Some(RuntimeError::Timeout(state.idle.as_secs_f64()));
            }
            Ok(None) => {
                state.finished = true;
                state.ready.extend(state.decoder.finish().events);
            }
            Ok(Some(Err(error))) => {
                state.finished = true;
                state.failure = Some(if error.is_timeout() {
                    RuntimeError::Timeout(state.idle.as_secs_f64())
                } else {
                    transport_error(error)
                });
            }
            Ok(Some(Ok(chunk))) => match state.decoder.push(&chunk) {
                Ok(output) => {
                    state.ready.extend(output.events);
                    state.finished = output.done;
                }
                Err(error) => {
                    state.finished = true;
                    state.failure = Some(error);
                }
            },
        }
    }
}

/// What one chunk of SSE produced.
#[derive(Debug, Default, PartialEq)]
pub struct SseOutput {
    /// Events completed by the chunk, in order.
    pub events: Vec<SequencedEvent>,
    /// The stream said it is done (`event: done` or `data: [DONE]`).
    pub done: bool,
}

/// An incremental reader of the runtime's SSE stream (framing by
/// [`codelab_protocol::sse::SseParser`]), as lenient as the original gateway's: `event: done` and
/// `data: [DONE]` end the stream, comments and unknown fields are ignored, unparsable JSON is
/// logged and skipped.
#[derive(Debug)]
pub struct SseDecoder {
    parser: SseParser,
    done: bool,
}

impl Default for SseDecoder {
    fn default() -> Self {
        Self {
            parser: SseParser::with_max_line_bytes(MAX_RECORD_BYTES).keep_events_without_data(),
            done: false,
        }
    }
}

impl SseDecoder {
    /// Feeds bytes; returns the events they complete.
    pub fn push(&mut self, chunk: &[u8]) -> Result<SseOutput, RuntimeError> {
        let mut output = SseOutput::default();
        if !self.done {
            let events = self.parser.push(chunk);
            self.read(events, &mut output);
            if !self.done && self.parser.line_too_long().is_some() {
                self.done = true;
                return Err(RuntimeError::Invalid(format!(
                    "an event larger than {MAX_RECORD_BYTES} bytes"
                )));
            }
        }
        output.done = self.done;
        Ok(output)
    }

    /// The end of the body: a last record without its blank line still counts.
    pub fn finish(&mut self) -> SseOutput {
        let mut output = SseOutput::default();
        if !self.done {
            let events = self.parser.finish().into_iter().collect();
            self.read(events, &mut output);
        }
        output.done = true;
        self.done = true;
        output
    }

    fn read(&mut self, events: Vec<SseEvent>, output: &mut SseOutput) {
        for event in events {
            let data = event.data.trim();
            if event.event.as_deref().map(str::trim) == Some("done") || data == "[DONE]" {
                self.done = true;
                return;
            }
            if data.is_empty() {
                continue;
            }
            match serde_json::from_str::<SequencedEvent>(data) {
                Ok(event) => output.events.push(event),
                // Contents are never logged above debug: they hold user code and text.
                Err(error) => {
                    tracing::warn!(%error, "skipping an agent runtime event that cannot be read");
                    tracing::debug!(event = data, "unreadable agent runtime event");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(
        clippy::disallowed_methods,
        reason = "tests start their own throwaway servers"
    )]
    use super::*;
    use codelab_protocol::runtime::RuntimeEvent;

    fn event(seq: u64, text: &str) -> String {
        format!(
            r#"{{"seq":{seq},"type":"assistant_delta","message_id":"m","agent":"coder","delta":"{text}"}}"#
        )
    }

    /// A client of a runtime served in process by `router`.
    fn in_process_client(router: axum::Router) -> RuntimeClient {
        let routes = codelab_core::http::LocalRoutes::default();
        routes.serve("http://127.0.0.1:9", router);
        let config = Config {
            agent_url: "http://127.0.0.1:9".to_owned(),
            request_timeout: 0.2,
            agent_stream_timeout: 0.2,
            ..Config::default()
        };
        RuntimeClient::new(&config, Some(routes.route(&config.agent_url))).expect("client")
    }

    #[tokio::test]
    async fn in_process_calls_keep_the_timeouts_of_the_wire() {
        // Port 9 has no listener: every answer below comes from the router.
        let slow = || async {
            tokio::time::sleep(Duration::from_secs(5)).await;
            "late"
        };
        let client = in_process_client(
            axum::Router::new()
                .route(
                    "/health",
                    axum::routing::get(|| async { axum::Json(json!({"status": "healthy"})) }),
                )
                .route("/slow", axum::routing::get(slow))
                .route("/agent/message/stream", axum::routing::post(slow)),
        );
        client.health().await.expect("served in process");
        let error = client
            .request(reqwest::Method::GET, "/slow", "u", None, false)
            .await
            .expect_err("slower than request_timeout");
        assert_eq!(error, RuntimeError::Timeout(0.2));
        let error = client
            .stream_frame("s", "u", json!({"type": "cancel_turn"}), false)
            .await
            .expect_err("slower than agent_stream_timeout");
        assert_eq!(error, RuntimeError::Timeout(0.2));
    }

    #[tokio::test]
    async fn in_process_streams_relay_the_runtimes_events() {
        let client = in_process_client(axum::Router::new().route(
            "/agent/message/stream",
            axum::routing::post(|| async {
                format!("data: {}\n\ndata: [DONE]\n\n", event(1, "hi"))
            }),
        ));
        let events: Vec<_> = client
            .stream_frame("s", "u", json!({"type": "cancel_turn"}), false)
            .await
            .expect("stream")
            .collect()
            .await;
        assert_eq!(events.len(), 1, "{events:?}");
        let first = events[0].as_ref().expect("an event");
        assert_eq!(first.seq, 1);
    }

    /// Reads one HTTP request (head and `content-length` body) from `socket`.
    async fn read_request(socket: &mut tokio::net::TcpStream) {
        use tokio::io::AsyncReadExt;
        let mut received = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            let read = socket.read(&mut chunk).await.expect("read");
            assert!(read > 0, "the request ended early");
            received.extend_from_slice(&chunk[..read]);
            let Some(head_end) = received.windows(4).position(|w| w == b"\r\n\r\n") else {
                continue;
            };
            let head = String::from_utf8_lossy(&received[..head_end]).to_ascii_lowercase();
            let length: usize = head
                .lines()
                .find_map(|line| line.strip_prefix("content-length:"))
                .map_or(0, |value| value.trim().parse().expect("length"));
            if received.len() >= head_end + 4 + length {
                return;
            }
        }
    }

    #[tokio::test]
    async fn a_repeatable_frame_is_sent_again_when_its_request_is_reset() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        use tokio::io::AsyncWriteExt;
        // The first two connections read the request and are reset (as a runtime closing a
        // pooled connection does); the others answer one event.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("address"));
        let requests = Arc::new(AtomicUsize::new(0));
        let counted = Arc::clone(&requests);
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                read_request(&mut socket).await;
                if counted.fetch_add(1, Ordering::SeqCst) < 2 {
                    socket.set_zero_linger().expect("linger");
                    continue;
                }
                let body = format!("data: {}\n\ndata: [DONE]\n\n", event(1, "hi"));
                let answer = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n\
                     content-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                socket.write_all(answer.as_bytes()).await.expect("write");
            }
        });
        let config = Config {
            agent_url: url,
            ..Config::default()
        };
        let client = RuntimeClient::new(&config, None).expect("client");
        let frame = json!({"type": "tool_result", "call_id": "c1", "result": "ok"});

        // Sent once: the reset is the caller's error.
        let Err(error) = client.stream_frame("s", "u", &frame, false).await else {
            panic!("the only request was reset");
        };
        assert!(matches!(error, RuntimeError::Unreachable(_)), "{error:?}");
        assert_eq!(requests.load(Ordering::SeqCst), 1);

        // Repeatable: the reset request is sent again and answered.
        let events: Vec<_> = client
            .stream_repeatable_frame("s", "u", &frame, false)
            .await
            .expect("answered on the second attempt")
            .collect()
            .await;
        assert_eq!(requests.load(Ordering::SeqCst), 3);
        assert_eq!(events.len(), 1, "{events:?}");
        assert_eq!(events[0].as_ref().expect("an event").seq, 1);
    }

    #[tokio::test]
    async fn a_repeatable_frame_is_not_sent_again_after_an_answer() {
        let client = in_process_client(axum::Router::new().route(
            "/agent/message/stream",
            axum::routing::post(|| async {
                (
                    axum::http::StatusCode::CONFLICT,
                    axum::Json(json!({"detail": "busy"})),
                )
            }),
        ));
        let Err(error) = client
            .stream_repeatable_frame("s", "u", json!({"type": "cancel_turn"}), false)
            .await
        else {
            panic!("a refusal");
        };
        assert_eq!(
            error,
            RuntimeError::Status {
                status: 409,
                detail: "busy".to_owned()
            }
        );
    }

    #[test]
    fn records_split_anywhere_are_reassembled() {
        let body = format!("data: {}\n\ndata: {}\r\n\r\n", event(0, "a"), event(0, "b"));
        for cut in 0..body.len() {
            let mut decoder = SseDecoder::default();
            let mut events = decoder.push(&body.as_bytes()[..cut]).unwrap().events;
            events.extend(decoder.push(&body.as_bytes()[cut..]).unwrap().events);
            events.extend(decoder.finish().events);
            assert_eq!(events.len(), 2, "cut at {cut}");
        }
    }

    #[test]
    fn comments_unknown_fields_and_bad_json_are_skipped() {
        let mut decoder = SseDecoder::default();
        let body = format!(
            ": keep-alive\nid: 3\nretry: 10\ndata: {{not json\n\ndata: {}\n\n",
            event(1, "x")
        );
        let output = decoder.push(body.as_bytes()).unwrap();
        assert_eq!(output.events.len(), 1);
        assert!(!output.done);
    }

    #[test]
    fn done_markers_end_the_stream() {
        let mut decoder = SseDecoder::default();
        let body = format!("data: [DONE]\n\ndata: {}\n\n", event(1, "late"));
        let output = decoder.push(body.as_bytes()).unwrap();
        assert!(output.done);
        assert!(output.events.is_empty());

        let mut decoder = SseDecoder::default();
        let body = format!(
            "data: {}\n\nevent: done\ndata: {}\n\n",
            event(1, "a"),
            event(2, "b")
        );
        let output = decoder.push(body.as_bytes()).unwrap();
        assert!(output.done);
        assert_eq!(output.events.len(), 1);
    }

    #[test]
    fn a_last_record_without_its_blank_line_counts() {
        let mut decoder = SseDecoder::default();
        let body = format!("data: {}", event(5, "end"));
        assert!(decoder.push(body.as_bytes()).unwrap().events.is_empty());
        let output = decoder.finish();
        assert_eq!(output.events.len(), 1);
        assert_eq!(output.events[0].seq, 5);
        assert!(matches!(
            output.events[0].event,
            RuntimeEvent::AssistantDelta { .. }
        ));
    }

    #[test]
    fn error_details_are_the_runtimes_text() {
        assert_eq!(
            detail_of(r#"{"detail":"session s not found"}"#),
            "session s not found"
        );
        assert_eq!(detail_of("Bad Gateway"), "Bad Gateway");
        assert_eq!(detail_of(&"x".repeat(600)).chars().count(), 503);
        assert_eq!(encode_segment("a/b c"), "a%2Fb%20c");
        assert_eq!(encode_segment("new_1.2-3~"), "new_1.2-3~");
    }
}
