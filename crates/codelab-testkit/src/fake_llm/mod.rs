//! Fake upstream LLM providers speaking the exact wire formats of OpenAI Chat Completions
//! (`data:` SSE ending in `[DONE]`), the Anthropic Messages API (named-event SSE) and
//! Ollama's native `/api/chat` (NDJSON).
//!
//! A [`FakeLlm`] listens on `127.0.0.1:0`, records every request, answers with scripted
//! [`FakeReply`]s (FIFO queue, then a default reply) and counts how streams ended
//! (completed, cancelled by the client, or aborted by a scripted disconnect).
//!
//! ```no_run
//! # async fn demo() {
//! use codelab_testkit::fake_llm::{FakeFlavor, FakeLlm, FakeReply, FakeToolCall};
//!
//! let fake = FakeLlm::start(FakeFlavor::OpenAi).await;
//! fake.push_reply(FakeReply::text(&["Hel", "lo"]).with_usage(12, 2));
//! fake.push_reply(FakeReply::tool_calls(vec![FakeToolCall::new(
//!     "call_A",
//!     "read_file",
//!     r#"{"path":"a.py"}"#,
//! )]));
//! fake.push_reply(FakeReply::status(429).with_retry_after(2));
//! let base = fake.openai_base(); // http://127.0.0.1:PORT/v1
//! # let _ = base;
//! # }
//! ```

mod anthropic;
mod ollama;
mod openai;

use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, State};
use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE, RETRY_AFTER};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::Value;
use tokio::sync::{Notify, watch};

use crate::server::ServerGuard;

/// Which provider wire format a [`FakeLlm`] speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FakeFlavor {
    /// OpenAI Chat Completions: `POST /v1/chat/completions`, `GET /v1/models`.
    OpenAi,
    /// Anthropic Messages API: `POST /v1/messages`, `GET /v1/models`.
    Anthropic,
    /// Ollama native API: `POST /api/chat`, `GET /api/tags`, `GET /api/version`.
    Ollama,
}

impl FakeFlavor {
    fn default_models(self) -> Vec<String> {
        let names: &[&str] = match self {
            Self::OpenAi => &["gpt-4o-mini", "gpt-4o"],
            Self::Anthropic => &["claude-sonnet-4-20250514", "claude-3-5-haiku-20241022"],
            Self::Ollama => &["qwen3:0.6b", "llama3.2:1b"],
        };
        names.iter().map(|s| (*s).to_owned()).collect()
    }
}

/// One scripted tool call of a [`FakeReply`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FakeToolCall {
    /// Tool-call id (`call_…` for OpenAI, used as the `tool_use` id for Anthropic;
    /// Ollama sends no ids).
    pub id: String,
    /// Function name.
    pub name: String,
    /// Arguments as JSON text (Anthropic/Ollama render it parsed; unparseable → `{}`).
    pub arguments: String,
    /// Into how many streamed fragments the arguments are split (OpenAI/Anthropic;
    /// Ollama always sends complete calls). Clamped to `1..=chars`.
    pub split_into: usize,
}

impl FakeToolCall {
    /// A tool call whose arguments stream in 3 fragments.
    #[must_use]
    pub fn new(
        id: impl Into<String>,
        name: impl Into<String>,
        arguments: impl Into<String>,
    ) -> Self {
        Self {
            id: id.into(),
            name: name.into(),
            arguments: arguments.into(),
            split_into: 3,
        }
    }

    /// Sets the number of streamed argument fragments.
    #[must_use]
    pub fn with_split(mut self, fragments: usize) -> Self {
        self.split_into = fragments;
        self
    }

    /// The argument fragments as streamed (empty when the arguments are empty).
    pub(crate) fn fragments(&self) -> Vec<String> {
        split_even(&self.arguments, self.split_into)
    }

    /// The arguments parsed as a JSON object (`{}` when they do not parse to one).
    pub(crate) fn arguments_object(&self) -> Value {
        match serde_json::from_str::<Value>(&self.arguments) {
            Ok(v @ Value::Object(_)) => v,
            _ => Value::Object(serde_json::Map::new()),
        }
    }
}

/// Splits `s` into `parts` pieces of near-equal char count (first pieces one longer).
fn split_even(s: &str, parts: usize) -> Vec<String> {
    let chars: Vec<char> = s.chars().collect();
    if chars.is_empty() {
        return Vec::new();
    }
    let parts = parts.clamp(1, chars.len());
    let base = chars.len() / parts;
    let extra = chars.len() % parts;
    let mut out = Vec::with_capacity(parts);
    let mut pos = 0;
    for i in 0..parts {
        let len = base + usize::from(i < extra);
        out.push(chars[pos..pos + len].iter().collect());
        pos += len;
    }
    out
}

/// A scripted error status for a [`FakeReply`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FakeStatus {
    /// HTTP status code (e.g. 400, 401, 404, 429, 500, 503, 529).
    pub code: u16,
    /// `Retry-After` header value in seconds.
    pub retry_after: Option<u64>,
    /// Error message; a provider-typical default is used when `None`.
    pub message: Option<String>,
}

/// A scripted reply. Build with [`FakeReply::text`], [`FakeReply::tool_calls`] or
/// [`FakeReply::status`] and the `with_*` modifiers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FakeReply {
    /// Text pieces, one streamed delta each.
    pub text_chunks: Vec<String>,
    /// Reasoning pieces streamed before the text (OpenAI `delta.reasoning_content`,
    /// Anthropic `thinking` block, Ollama `message.thinking`).
    pub reasoning_chunks: Vec<String>,
    /// Tool calls, streamed after the text.
    pub tool_calls: Vec<FakeToolCall>,
    /// `(prompt, completion)` token counts reported in the usage.
    pub usage: (u64, u64),
    /// Prompt tokens reported as served from a cache (OpenAI
    /// `usage.prompt_tokens_details.cached_tokens`).
    pub cached_tokens: u64,
    /// Delay between consecutive body chunks of a stream. A non-stream reply waits this
    /// long per chunk it would have streamed (minus one) before answering.
    pub chunk_delay: Duration,
    /// After this many body chunks the connection is aborted without finishing the body.
    /// No effect when it is not smaller than the number of chunks.
    pub disconnect_after_chunks: Option<usize>,
    /// Answer with this error status instead of a completion.
    pub status: Option<FakeStatus>,
    /// Delay before the response headers are sent.
    pub first_byte_delay: Duration,
    /// Stream only: after the content chunks, send the provider's in-stream error event
    /// with this message instead of the finish events (OpenAI `data: {"error":…}`,
    /// Anthropic `event: error` with `overloaded_error`, Ollama `{"error":…}` line).
    pub stream_error: Option<String>,
    /// Stream only: `(position, text)` sends `text` verbatim as one more body chunk before the
    /// chunk at `position` (clamped to the end): a malformed event such as broken JSON after
    /// `data:`, which a client must reject instead of skipping.
    pub malformed_chunk: Option<(usize, String)>,
}

impl Default for FakeReply {
    /// An empty text reply with usage `(10, 5)`.
    fn default() -> Self {
        Self {
            text_chunks: Vec::new(),
            reasoning_chunks: Vec::new(),
            tool_calls: Vec::new(),
            usage: (10, 5),
            cached_tokens: 0,
            chunk_delay: Duration::ZERO,
            disconnect_after_chunks: None,
            status: None,
            first_byte_delay: Duration::ZERO,
            stream_error: None,
            malformed_chunk: None,
        }
    }
}

impl FakeReply {
    /// A text reply streamed as the given pieces.
    #[must_use]
    pub fn text(chunks: &[&str]) -> Self {
        Self::default().with_text(chunks)
    }

    /// A reply consisting of tool calls only.
    #[must_use]
    pub fn tool_calls(calls: Vec<FakeToolCall>) -> Self {
        Self::default().with_tool_calls(calls)
    }

    /// An error reply with the given HTTP status and the provider's error body.
    #[must_use]
    pub fn status(code: u16) -> Self {
        Self {
            status: Some(FakeStatus {
                code,
                retry_after: None,
                message: None,
            }),
            ..Self::default()
        }
    }

    /// Sets the `Retry-After` header (seconds) of an error reply; no effect otherwise.
    #[must_use]
    pub fn with_retry_after(mut self, secs: u64) -> Self {
        if let Some(status) = &mut self.status {
            status.retry_after = Some(secs);
        }
        self
    }

    /// Sets the message of an error reply (or of a [`Self::with_stream_error`] event).
    #[must_use]
    pub fn with_error_message(mut self, message: impl Into<String>) -> Self {
        let message = message.into();
        if let Some(status) = &mut self.status {
            status.message = Some(message);
        } else if let Some(err) = &mut self.stream_error {
            *err = message;
        }
        self
    }

    /// Replaces the text pieces.
    #[must_use]
    pub fn with_text(mut self, chunks: &[&str]) -> Self {
        self.text_chunks = chunks.iter().map(|c| (*c).to_owned()).collect();
        self
    }

    /// Sets reasoning pieces (streamed before the text).
    #[must_use]
    pub fn with_reasoning(mut self, chunks: &[&str]) -> Self {
        self.reasoning_chunks = chunks.iter().map(|c| (*c).to_owned()).collect();
        self
    }

    /// Replaces the tool calls (combine with text for a mixed reply).
    #[must_use]
    pub fn with_tool_calls(mut self, calls: Vec<FakeToolCall>) -> Self {
        self.tool_calls = calls;
        self
    }

    /// Sets `(prompt, completion)` token usage.
    #[must_use]
    pub fn with_usage(mut self, prompt: u64, completion: u64) -> Self {
        self.usage = (prompt, completion);
        self
    }

    /// Sets the prompt tokens reported as cached (OpenAI flavour).
    #[must_use]
    pub fn with_cached_tokens(mut self, cached: u64) -> Self {
        self.cached_tokens = cached;
        self
    }

    /// Waits `delay` between stream chunks.
    #[must_use]
    pub fn with_chunk_delay(mut self, delay: Duration) -> Self {
        self.chunk_delay = delay;
        self
    }

    /// Aborts the connection after `chunks` body chunks.
    #[must_use]
    pub fn disconnect_after(mut self, chunks: usize) -> Self {
        self.disconnect_after_chunks = Some(chunks);
        self
    }

    /// Waits `delay` before sending the response headers.
    #[must_use]
    pub fn with_first_byte_delay(mut self, delay: Duration) -> Self {
        self.first_byte_delay = delay;
        self
    }

    /// Ends the stream with the provider's in-stream error event (see [`Self::stream_error`]).
    #[must_use]
    pub fn with_stream_error(mut self, message: impl Into<String>) -> Self {
        self.stream_error = Some(message.into());
        self
    }

    /// Sends `text` verbatim as a body chunk before stream chunk `position` (see
    /// [`Self::malformed_chunk`]).
    #[must_use]
    pub fn with_malformed_chunk(mut self, position: usize, text: impl Into<String>) -> Self {
        self.malformed_chunk = Some((position, text.into()));
        self
    }

    pub(crate) fn full_text(&self) -> String {
        self.text_chunks.concat()
    }

    pub(crate) fn full_reasoning(&self) -> String {
        self.reasoning_chunks.concat()
    }

    fn default_reply() -> Self {
        Self::text(&["Hello", " from", " fake"])
    }
}

/// One request received by a [`FakeLlm`].
#[derive(Debug, Clone, PartialEq)]
pub struct RecordedRequest {
    /// HTTP method, e.g. `POST`.
    pub method: String,
    /// Request path without the query, e.g. `/v1/chat/completions`.
    pub path: String,
    /// Raw query string, if any.
    pub query: Option<String>,
    /// Headers keyed by lowercase name; repeated headers are joined with `", "`.
    pub headers: BTreeMap<String, String>,
    /// Body parsed as JSON (`Value::Null` when empty or not JSON).
    pub body: Value,
    /// Raw body as (lossy) UTF-8.
    pub raw_body: String,
}

impl RecordedRequest {
    /// Header value by case-insensitive name.
    #[must_use]
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .get(&name.to_ascii_lowercase())
            .map(String::as_str)
    }

    /// The body's `stream` flag: `Some(true)` / `Some(false)` when the request said so, `None`
    /// when it did not (or the body is not a JSON object).
    #[must_use]
    pub fn asked_stream(&self) -> Option<bool> {
        self.body.get("stream").and_then(Value::as_bool)
    }
}

/// Per-reply rendering context shared by the provider renderers.
pub(crate) struct ReplyCtx {
    /// Model echoed from the request (`fake-model` when absent).
    pub model: String,
    /// Unix seconds.
    pub created: u64,
    /// `stream_options.include_usage` (OpenAI only), unless the fake omits stream usage.
    pub include_usage: bool,
    /// Random hex for response ids.
    pub uid: String,
}

#[derive(Debug)]
struct Inner {
    queue: VecDeque<FakeReply>,
    default_reply: FakeReply,
    requests: Vec<RecordedRequest>,
    models: Vec<String>,
}

struct Shared {
    flavor: FakeFlavor,
    state: Mutex<Inner>,
    /// OpenAI: stream no usage chunk even when `stream_options.include_usage` asks for one.
    omit_stream_usage: AtomicBool,
    active: AtomicUsize,
    completed: AtomicUsize,
    cancelled: AtomicUsize,
    aborted: AtomicUsize,
    changed: Notify,
    shutdown: watch::Sender<bool>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn bump(&self) {
        self.changed.notify_waiters();
    }

    fn is_shut_down(&self) -> bool {
        *self.shutdown.borrow()
    }
}

#[derive(Clone, Copy)]
enum Outcome {
    Completed,
    Cancelled,
    Aborted,
}

/// Tracks one streamed reply; counts it as cancelled if dropped before being finished.
struct StreamTracker {
    shared: Arc<Shared>,
    finished: bool,
}

impl StreamTracker {
    fn start(shared: Arc<Shared>) -> Self {
        shared.active.fetch_add(1, Ordering::SeqCst);
        shared.bump();
        Self {
            shared,
            finished: false,
        }
    }

    fn finish(&mut self, outcome: Outcome) {
        if self.finished {
            return;
        }
        self.finished = true;
        let counter = match outcome {
            Outcome::Completed => &self.shared.completed,
            Outcome::Cancelled => &self.shared.cancelled,
            Outcome::Aborted => &self.shared.aborted,
        };
        counter.fetch_add(1, Ordering::SeqCst);
        self.shared.active.fetch_sub(1, Ordering::SeqCst);
        self.shared.bump();
    }
}

impl Drop for StreamTracker {
    fn drop(&mut self) {
        self.finish(Outcome::Cancelled);
    }
}

/// A fake upstream LLM provider on `127.0.0.1:PORT`; stops when dropped.
///
/// Streams still in flight at drop time are cut off (their connections close abruptly).
pub struct FakeLlm {
    shared: Arc<Shared>,
    server: ServerGuard,
}

impl fmt::Debug for FakeLlm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FakeLlm")
            .field("flavor", &self.shared.flavor)
            .field("addr", &self.server.addr())
            .finish_non_exhaustive()
    }
}

impl Drop for FakeLlm {
    fn drop(&mut self) {
        self.shared.shutdown.send_replace(true);
        self.shared.bump();
    }
}

impl FakeLlm {
    /// Starts a fake provider of the given flavor on `127.0.0.1:0`.
    ///
    /// The initial default reply is the text `"Hello from fake"` (three chunks).
    pub async fn start(flavor: FakeFlavor) -> Self {
        let (shutdown, _) = watch::channel(false);
        let shared = Arc::new(Shared {
            flavor,
            state: Mutex::new(Inner {
                queue: VecDeque::new(),
                default_reply: FakeReply::default_reply(),
                requests: Vec::new(),
                models: flavor.default_models(),
            }),
            omit_stream_usage: AtomicBool::new(false),
            active: AtomicUsize::new(0),
            completed: AtomicUsize::new(0),
            cancelled: AtomicUsize::new(0),
            aborted: AtomicUsize::new(0),
            changed: Notify::new(),
            shutdown,
        });
        let router = Router::new()
            .fallback(handle)
            // Long agent histories: don't let axum's 2 MiB default reject big requests.
            .layer(DefaultBodyLimit::max(64 * 1024 * 1024))
            .with_state(Arc::clone(&shared));
        let server = ServerGuard::start(router).await;
        Self { shared, server }
    }

    /// The flavor this fake speaks.
    #[must_use]
    pub fn flavor(&self) -> FakeFlavor {
        self.shared.flavor
    }

    /// The bound socket address.
    #[must_use]
    pub fn addr(&self) -> SocketAddr {
        self.server.addr()
    }

    /// `http://127.0.0.1:PORT` (Anthropic / Ollama API base; no trailing slash).
    #[must_use]
    pub fn base_url(&self) -> String {
        self.server.base_url()
    }

    /// `http://127.0.0.1:PORT/v1` (OpenAI-style API base).
    #[must_use]
    pub fn openai_base(&self) -> String {
        format!("{}/v1", self.base_url())
    }

    /// Queues a reply for the next chat request (FIFO).
    pub fn push_reply(&self, reply: FakeReply) {
        self.shared.lock().queue.push_back(reply);
    }

    /// Sets the reply used when the queue is empty.
    pub fn set_default_reply(&self, reply: FakeReply) {
        self.shared.lock().default_reply = reply;
    }

    /// Number of queued (not yet used) replies.
    #[must_use]
    pub fn pending_replies(&self) -> usize {
        self.shared.lock().queue.len()
    }

    /// OpenAI flavour: when `omit`, streamed replies carry no usage chunk even when the request
    /// asks for one with `stream_options.include_usage`, as vLLM, LM Studio and older Azure
    /// api-versions do; non-streamed replies still carry `usage` in their JSON body.
    pub fn set_omit_stream_usage(&self, omit: bool) {
        self.shared.omit_stream_usage.store(omit, Ordering::SeqCst);
        self.shared.bump();
    }

    /// Whether the OpenAI flavour withholds the streamed usage chunk
    /// (see [`Self::set_omit_stream_usage`]).
    #[must_use]
    pub fn omits_stream_usage(&self) -> bool {
        self.shared.omit_stream_usage.load(Ordering::SeqCst)
    }

    /// Replaces the model ids listed by `GET /v1/models` / `GET /api/tags`.
    pub fn set_models(&self, models: &[&str]) {
        self.shared.lock().models = models.iter().map(|m| (*m).to_owned()).collect();
    }

    /// All requests received so far (any route), oldest first.
    #[must_use]
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.shared.lock().requests.clone()
    }

    /// The most recent request.
    #[must_use]
    pub fn last_request(&self) -> Option<RecordedRequest> {
        self.shared.lock().requests.last().cloned()
    }

    /// Number of requests received so far (any route).
    #[must_use]
    pub fn request_count(&self) -> usize {
        self.shared.lock().requests.len()
    }

    /// Streams whose client went away before the reply finished (including during
    /// `first_byte_delay`). Only streaming 2xx replies are tracked by the stream counters;
    /// non-stream and error replies are not.
    #[must_use]
    pub fn cancelled_streams(&self) -> usize {
        self.shared.cancelled.load(Ordering::SeqCst)
    }

    /// Streams whose last chunk was handed to the connection.
    #[must_use]
    pub fn completed_streams(&self) -> usize {
        self.shared.completed.load(Ordering::SeqCst)
    }

    /// Streams cut off by a scripted `disconnect_after` (or by dropping the fake).
    #[must_use]
    pub fn aborted_streams(&self) -> usize {
        self.shared.aborted.load(Ordering::SeqCst)
    }

    /// Streams currently in flight.
    #[must_use]
    pub fn active_streams(&self) -> usize {
        self.shared.active.load(Ordering::SeqCst)
    }

    /// Waits until at least `n` streams were cancelled; `false` on timeout.
    pub async fn wait_for_cancelled(&self, n: usize, timeout: Duration) -> bool {
        self.wait_until(timeout, |f| f.cancelled_streams() >= n)
            .await
    }

    /// Waits until at least `n` streams completed; `false` on timeout.
    pub async fn wait_for_completed(&self, n: usize, timeout: Duration) -> bool {
        self.wait_until(timeout, |f| f.completed_streams() >= n)
            .await
    }

    /// Waits until at least `n` requests were received; `false` on timeout.
    pub async fn wait_for_requests(&self, n: usize, timeout: Duration) -> bool {
        self.wait_until(timeout, |f| f.request_count() >= n).await
    }

    /// Waits until no stream is in flight; `false` on timeout.
    pub async fn wait_for_idle(&self, timeout: Duration) -> bool {
        self.wait_until(timeout, |f| f.active_streams() == 0).await
    }

    /// Waits (event-driven, no polling sleeps) until `pred` holds or `timeout` passes.
    pub async fn wait_until(&self, timeout: Duration, pred: impl Fn(&Self) -> bool) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.shared.changed.notified();
            let mut notified = std::pin::pin!(notified);
            notified.as_mut().enable();
            if pred(self) {
                return true;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return pred(self);
            }
        }
    }
}

fn unix_now() -> Duration {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
}

fn new_uid() -> String {
    codelab_core::ids::new_random_id().simple().to_string()
}

/// Sleeps `delay` unless the fake shuts down first; `false` on shutdown.
async fn sleep_or_shutdown(shutdown: &mut watch::Receiver<bool>, delay: Duration) -> bool {
    if *shutdown.borrow() {
        return false;
    }
    if delay.is_zero() {
        return true;
    }
    tokio::select! {
        () = tokio::time::sleep(delay) => true,
        _ = shutdown.wait_for(|down| *down) => false,
    }
}

/// The single handler behind every route: records, then dispatches on flavor and path.
async fn handle(
    State(shared): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let json = serde_json::from_slice::<Value>(&body).unwrap_or(Value::Null);
    let mut header_map: BTreeMap<String, String> = BTreeMap::new();
    for (name, value) in &headers {
        let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
        header_map
            .entry(name.as_str().to_owned())
            .and_modify(|v| {
                v.push_str(", ");
                v.push_str(&value);
            })
            .or_insert(value);
    }
    shared.lock().requests.push(RecordedRequest {
        method: method.as_str().to_owned(),
        path: uri.path().to_owned(),
        query: uri.query().map(str::to_owned),
        headers: header_map,
        body: json.clone(),
        raw_body: String::from_utf8_lossy(&body).into_owned(),
    });
    shared.bump();

    if shared.is_shut_down() {
        return broken_response();
    }

    let flavor = shared.flavor;
    let path = uri.path();
    match (flavor, &method, path) {
        (FakeFlavor::OpenAi, &Method::POST, "/v1/chat/completions")
        | (FakeFlavor::Anthropic, &Method::POST, "/v1/messages")
        | (FakeFlavor::Ollama, &Method::POST, "/api/chat") => chat(shared, json).await,
        (FakeFlavor::OpenAi, &Method::GET, "/v1/models") => {
            json_response(StatusCode::OK, &openai::models(&shared.lock().models))
        }
        (FakeFlavor::Anthropic, &Method::GET, "/v1/models") => {
            json_response(StatusCode::OK, &anthropic::models(&shared.lock().models))
        }
        (FakeFlavor::Ollama, &Method::GET, "/api/tags") => {
            json_response(StatusCode::OK, &ollama::tags(&shared.lock().models))
        }
        (FakeFlavor::Ollama, &Method::GET, "/api/version") => {
            json_response(StatusCode::OK, &serde_json::json!({"version": "0.9.0"}))
        }
        (FakeFlavor::OpenAi, _, _) => {
            json_response(StatusCode::NOT_FOUND, &openai::not_found(&method, path))
        }
        (FakeFlavor::Anthropic, _, _) => {
            json_response(StatusCode::NOT_FOUND, &anthropic::not_found())
        }
        (FakeFlavor::Ollama, _, _) => (StatusCode::NOT_FOUND, "404 page not found").into_response(),
    }
}

/// A chat request: pick the scripted reply and render it in the flavor's format.
async fn chat(shared: Arc<Shared>, request: Value) -> Response {
    let flavor = shared.flavor;
    let reply = {
        let mut state = shared.lock();
        match state.queue.pop_front() {
            Some(reply) => reply,
            None => state.default_reply.clone(),
        }
    };
    let ctx = ReplyCtx {
        model: request
            .get("model")
            .and_then(Value::as_str)
            .unwrap_or("fake-model")
            .to_owned(),
        created: unix_now().as_secs(),
        include_usage: request
            .pointer("/stream_options/include_usage")
            .and_then(Value::as_bool)
            .unwrap_or(false)
            && !shared.omit_stream_usage.load(Ordering::SeqCst),
        uid: new_uid(),
    };
    let streaming = request
        .get("stream")
        .and_then(Value::as_bool)
        .unwrap_or(flavor == FakeFlavor::Ollama);
    let mut shutdown = shared.shutdown.subscribe();

    if let Some(status) = &reply.status {
        if !sleep_or_shutdown(&mut shutdown, reply.first_byte_delay).await {
            return broken_response();
        }
        return error_response(flavor, status, &ctx);
    }

    if streaming {
        // Created before the first-byte delay: a client leaving then counts as cancelled.
        let tracker = StreamTracker::start(Arc::clone(&shared));
        if !sleep_or_shutdown(&mut shutdown, reply.first_byte_delay).await {
            return broken_response();
        }
        let (chunks, content_type) = streamed(flavor, &reply, &ctx);
        let body = chunked_body(
            chunks,
            reply.chunk_delay,
            reply.disconnect_after_chunks,
            Some(tracker),
            shutdown,
        );
        let mut response = Response::new(body);
        let headers = response.headers_mut();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
        headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        insert_request_id(flavor, headers, &ctx);
        return response;
    }

    // Non-stream: take as long as the stream would have, then answer in one piece.
    let value = match flavor {
        FakeFlavor::OpenAi => openai::completion(&reply, &ctx),
        FakeFlavor::Anthropic => anthropic::message(&reply, &ctx),
        FakeFlavor::Ollama => ollama::response(&reply, &ctx),
    };
    let simulated_chunks = streamed(flavor, &reply, &ctx).0.len();
    let generation = reply
        .chunk_delay
        .saturating_mul(u32::try_from(simulated_chunks.saturating_sub(1)).unwrap_or(u32::MAX));
    if !sleep_or_shutdown(
        &mut shutdown,
        reply.first_byte_delay.saturating_add(generation),
    )
    .await
    {
        return broken_response();
    }
    let mut response = match reply.disconnect_after_chunks {
        Some(n) => {
            // Truncated JSON body: the serialized object in 4 pieces, cut after `n` (< 4).
            let text = value.to_string();
            let pieces = split_even(&text, 4).into_iter().map(Bytes::from).collect();
            let mut response = Response::new(chunked_body(
                pieces,
                Duration::ZERO,
                Some(n.min(3)),
                None,
                shutdown,
            ));
            response
                .headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
            response
        }
        None => json_response(StatusCode::OK, &value),
    };
    insert_request_id(flavor, response.headers_mut(), &ctx);
    response
}

/// The body chunks of a streamed reply and their content type.
fn streamed(flavor: FakeFlavor, reply: &FakeReply, ctx: &ReplyCtx) -> (Vec<Bytes>, &'static str) {
    const SSE: &str = "text/event-stream; charset=utf-8";
    let (mut chunks, content_type) = match flavor {
        FakeFlavor::OpenAi => (openai::stream_events(reply, ctx), SSE),
        FakeFlavor::Anthropic => (anthropic::stream_events(reply, ctx), SSE),
        FakeFlavor::Ollama => (ollama::stream_lines(reply, ctx), "application/x-ndjson"),
    };
    if let Some((position, text)) = &reply.malformed_chunk {
        chunks.insert((*position).min(chunks.len()), Bytes::from(text.clone()));
    }
    (chunks, content_type)
}

fn insert_request_id(flavor: FakeFlavor, headers: &mut HeaderMap, ctx: &ReplyCtx) {
    let (name, prefix) = match flavor {
        FakeFlavor::OpenAi => ("x-request-id", "req_"),
        FakeFlavor::Anthropic => ("request-id", "req_"),
        FakeFlavor::Ollama => return,
    };
    if let Ok(value) = HeaderValue::from_str(&format!("{prefix}{}", ctx.uid)) {
        headers.insert(HeaderName::from_static(name), value);
    }
}

fn json_response(status: StatusCode, value: &Value) -> Response {
    let mut response = Response::new(Body::from(value.to_string()));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

fn error_response(flavor: FakeFlavor, status: &FakeStatus, ctx: &ReplyCtx) -> Response {
    let code = StatusCode::from_u16(status.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let message = status.message.as_deref();
    let body = match flavor {
        FakeFlavor::OpenAi => openai::error_body(status.code, message, &ctx.model),
        FakeFlavor::Anthropic => anthropic::error_body(status.code, message),
        FakeFlavor::Ollama => ollama::error_body(status.code, message, &ctx.model),
    };
    let mut response = json_response(code, &body);
    if flavor == FakeFlavor::Ollama {
        response.headers_mut().insert(
            CONTENT_TYPE,
            HeaderValue::from_static("application/json; charset=utf-8"),
        );
    }
    if let Some(secs) = status.retry_after {
        response
            .headers_mut()
            .insert(RETRY_AFTER, HeaderValue::from(secs));
    }
    insert_request_id(flavor, response.headers_mut(), ctx);
    response
}

/// A response whose body fails immediately, so the connection closes abruptly.
fn broken_response() -> Response {
    let stream = futures_util::stream::once(async {
        Err::<Bytes, io::Error>(io::Error::new(
            io::ErrorKind::ConnectionAborted,
            "fake LLM shut down",
        ))
    });
    let mut response = Response::new(Body::from_stream(stream));
    *response.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
    response
}

struct BodyState {
    chunks: VecDeque<Bytes>,
    sent: usize,
    delay: Duration,
    cut_after: Option<usize>,
    tracker: Option<StreamTracker>,
    shutdown: watch::Receiver<bool>,
    done: bool,
}

impl BodyState {
    fn finish(&mut self, outcome: Outcome) {
        self.done = true;
        if let Some(tracker) = &mut self.tracker {
            tracker.finish(outcome);
        }
    }

    fn abort(mut self, why: &str) -> Option<(io::Result<Bytes>, Self)> {
        self.finish(Outcome::Aborted);
        let err = io::Error::new(io::ErrorKind::ConnectionAborted, why.to_owned());
        Some((Err(err), self))
    }
}

/// A streaming body yielding `chunks` one frame each, `delay` apart; when `cut_after`
/// (< number of chunks) is set, the body errors after that many frames so hyper drops
/// the connection mid-body. Dropping the body early marks the tracker cancelled.
fn chunked_body(
    chunks: Vec<Bytes>,
    delay: Duration,
    cut_after: Option<usize>,
    tracker: Option<StreamTracker>,
    shutdown: watch::Receiver<bool>,
) -> Body {
    let cut_after = cut_after.filter(|n| *n < chunks.len());
    let mut state = BodyState {
        chunks: chunks.into(),
        sent: 0,
        delay,
        cut_after,
        tracker,
        shutdown,
        done: false,
    };
    if state.chunks.is_empty() {
        state.finish(Outcome::Completed);
    }
    let stream = futures_util::stream::unfold(state, |mut st| async move {
        if st.done {
            return None;
        }
        if st.sent > 0 && !sleep_or_shutdown(&mut st.shutdown, st.delay).await {
            return st.abort("fake LLM shut down");
        }
        if *st.shutdown.borrow() {
            return st.abort("fake LLM shut down");
        }
        if st.cut_after == Some(st.sent) {
            // Return Pending once so hyper flushes the head and the chunks sent so far;
            // erroring in the same poll would discard them along with the connection.
            tokio::task::yield_now().await;
            return st.abort("fake LLM: scripted disconnect");
        }
        let chunk = st.chunks.pop_front()?;
        st.sent += 1;
        if st.chunks.is_empty() {
            st.finish(Outcome::Completed);
        }
        Some((Ok(chunk), st))
    });
    Body::from_stream(stream)
}

/// `YYYY-MM-DDTHH:MM:SS.nnnnnnnnnZ` for the current UTC time (Ollama `created_at`).
pub(crate) fn rfc3339_now() -> String {
    let now = unix_now();
    let secs = now.as_secs();
    let days = i64::try_from(secs / 86_400).unwrap_or(0);
    let rem = secs % 86_400;
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:09}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        now.subsec_nanos()
    )
}

/// Days since 1970-01-01 → (year, month, day) in the proleptic Gregorian calendar.
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_even_matches_spec_example() {
        assert_eq!(
            split_even(r#"{"path":"a.py"}"#, 2),
            vec![r#"{"path":"#.to_owned(), r#""a.py"}"#.to_owned()]
        );
        assert_eq!(split_even("ab", 5), vec!["a".to_owned(), "b".to_owned()]);
        assert_eq!(split_even("abc", 0), vec!["abc".to_owned()]);
        assert!(split_even("", 3).is_empty());
        assert_eq!(split_even("ééé", 3).concat(), "ééé");
    }

    #[test]
    fn civil_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(19_723), (2024, 1, 1));
        assert_eq!(civil_from_days(19_782), (2024, 2, 29));
        assert_eq!(rfc3339_now().len(), "2025-01-01T00:00:00.000000000Z".len());
    }
}
