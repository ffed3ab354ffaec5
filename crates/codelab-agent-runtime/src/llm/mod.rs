//! The runtime's client of the LLM proxy: `POST {proxy}/v1/chat/completions` with
//! `stream: true`, `X-Internal-Auth`, and the answer decoded into [`LlmDelta`]s as they
//! arrive (`docs/llm-proxy.md`, "Answers").
//!
//! Resilience: connect errors and 502/503 answers are retried before the first byte with
//! backoff (nothing has reached the user yet, so a retry is invisible). A 429 is not: the
//! proxy already retried the provider by its own policy (`docs/llm-proxy.md`), and retrying
//! here again multiplied the requests a rate-limited provider got. Once the stream has
//! started, a failure is reported, never retried. Each wait (for the answer's headers, then
//! between body chunks) is bounded by the idle timeout. Dropping an [`LlmStream`] or
//! cancelling its token closes the connection, which cancels the upstream request.

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use codelab_core::config::Secret;
use codelab_core::http::{LocalRoute, ServiceClient};
use codelab_protocol::openai::{ChatCompletionRequest, Delta, Usage};
use codelab_protocol::sse::SseParser;
use futures_util::{Stream, StreamExt};
use reqwest::header::{ACCEPT, CONTENT_TYPE, HeaderValue, RETRY_AFTER};
use serde::Deserialize;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::config::Config;

/// Retries before the first byte unless [`LlmClient::with_retries`] says otherwise.
pub const DEFAULT_MAX_RETRIES: u32 = 2;
/// First backoff; doubled on each retry.
pub const DEFAULT_BACKOFF: Duration = Duration::from_millis(250);
/// A `Retry-After` longer than this is not waited for: the error is reported instead, because
/// the user is waiting on the turn.
pub const MAX_RETRY_WAIT: Duration = Duration::from_secs(5);
/// Most bytes of an error body read to find its message.
const MAX_ERROR_BODY: usize = 64 * 1024;
/// Longest line (or event) of the proxy's stream by default (`AGENT_RUNTIME__MAX_STREAM_LINE_BYTES`):
/// far above any real chunk, yet a bound on what a broken proxy can make the runtime buffer.
pub const DEFAULT_MAX_STREAM_LINE_BYTES: usize = codelab_protocol::sse::DEFAULT_MAX_LINE_BYTES;
/// Smallest accepted line cap: below it ordinary chunks of a reply would not fit.
pub const MIN_STREAM_LINE_BYTES: usize = 1024;

/// Why an LLM call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LlmError {
    /// The client could not be set up (bad URL, unusable key).
    #[error("the LLM client is misconfigured: {0}")]
    Config(String),
    /// The proxy could not be reached.
    #[error("cannot reach the LLM proxy: {0}")]
    Connect(String),
    /// No answer, or no next piece of the answer, within the idle timeout.
    #[error("the LLM proxy did not answer in time")]
    Timeout,
    /// The proxy answered a non-2xx status; `message` comes from its error body.
    #[error("the LLM proxy answered {status}: {message}")]
    Status {
        status: u16,
        message: String,
        /// The `Retry-After` header, when present.
        retry_after: Option<Duration>,
    },
    /// The model failed mid-stream (`data: {"error": ...}`).
    #[error("the model failed mid-answer: {message}")]
    Upstream { message: String },
    /// The stream broke or carried something unreadable.
    #[error("the LLM stream broke: {0}")]
    Stream(String),
    /// A line of the stream was longer than the cap.
    #[error(
        "the LLM proxy sent a stream line longer than the {limit} byte limit \
         (AGENT_RUNTIME__MAX_STREAM_LINE_BYTES)"
    )]
    LineTooLong {
        /// The cap in bytes.
        limit: usize,
    },
    /// The caller cancelled the call.
    #[error("the LLM call was cancelled")]
    Cancelled,
}

impl LlmError {
    /// A bounded label of what failed, stored with the call's usage (docs/usage.md).
    pub fn kind(&self) -> String {
        match self {
            LlmError::Config(_) => "config".to_owned(),
            LlmError::Connect(_) => "connect".to_owned(),
            LlmError::Timeout => "timeout".to_owned(),
            LlmError::Status { status, .. } => format!("status_{status}"),
            LlmError::Upstream { .. } => "upstream".to_owned(),
            LlmError::Stream(_) => "stream".to_owned(),
            LlmError::LineTooLong { .. } => "line_too_long".to_owned(),
            LlmError::Cancelled => "cancelled".to_owned(),
        }
    }

    /// Worth retrying before anything was streamed: connect errors, 502, 503 (the proxy or
    /// what is in front of it being briefly away). Not 429: the proxy's own retries answered it.
    pub fn is_retryable_before_first_byte(&self) -> bool {
        match self {
            LlmError::Connect(_) => true,
            LlmError::Status { status, .. } => matches!(status, 502 | 503),
            _ => false,
        }
    }

    /// A transient failure: connect errors, timeouts, 429 and 5xx (what routing retries).
    pub fn is_transient(&self) -> bool {
        match self {
            LlmError::Connect(_) | LlmError::Timeout => true,
            LlmError::Status { status, .. } => *status == 429 || *status >= 500,
            _ => false,
        }
    }
}

/// One piece of a streamed answer.
#[derive(Debug, Clone, PartialEq)]
pub enum LlmDelta {
    /// Assistant text, as it arrives.
    Text(String),
    /// A tool call begins. `id` or `name` is empty if the provider did not send it.
    ToolCallStart {
        index: u32,
        id: String,
        name: String,
    },
    /// A fragment of a tool call's JSON arguments; concatenate per `index`.
    ToolCallArgs { index: u32, fragment: String },
    /// The model's `finish_reason` (`stop`, `tool_calls`, `length`, ...).
    Finish { reason: String },
    /// Token counts and, from CodeLab's proxy, the cost (the final chunk, thanks to
    /// `stream_options.include_usage`).
    Usage(Usage),
}

/// One LLM call as its usage record sees it (docs/usage.md): who answered, the tokens and
/// cost the proxy reported, how long it took, how it ended.
#[derive(Debug, Clone, PartialEq)]
pub struct CallMeter {
    pub requested_model: String,
    pub answered_by: AnsweredBy,
    /// `None` when no usage arrived (a call that failed or was cancelled early).
    pub usage: Option<Usage>,
    /// From the request to the end of the answer (or the failure).
    pub latency: Duration,
    /// From the request to the first token; `None` when none arrived.
    pub ttft: Option<Duration>,
    /// Tool calls the answer made.
    pub tool_calls: u32,
    /// `None` when the call succeeded.
    pub failure: Option<LlmError>,
}

/// Measures one call while it streams: [`Meter::opened`] once the answer began,
/// [`Meter::saw`] for every delta, then [`Meter::finish`].
#[derive(Debug)]
pub struct Meter {
    started: Instant,
    meter: CallMeter,
}

impl Meter {
    /// A call of `model`, starting now.
    pub fn start(model: &str) -> Meter {
        Meter {
            started: Instant::now(),
            meter: CallMeter {
                requested_model: model.to_owned(),
                answered_by: AnsweredBy::default(),
                usage: None,
                latency: Duration::ZERO,
                ttft: None,
                tool_calls: 0,
                failure: None,
            },
        }
    }

    /// When the call began.
    pub fn started(&self) -> Instant {
        self.started
    }

    /// The answer's headers arrived.
    pub fn opened(&mut self, stream: &LlmStream) {
        self.meter.answered_by = stream.answered_by().clone();
    }

    /// A piece of the answer: the first token's time, the usage. Returns whether this was the
    /// first token.
    pub fn saw(&mut self, delta: &LlmDelta) -> bool {
        if matches!(delta, LlmDelta::ToolCallStart { .. }) {
            self.meter.tool_calls = self.meter.tool_calls.saturating_add(1);
        }
        match delta {
            LlmDelta::Text(_) | LlmDelta::ToolCallStart { .. } if self.meter.ttft.is_none() => {
                self.meter.ttft = Some(self.started.elapsed());
                true
            }
            LlmDelta::Usage(usage) => {
                self.meter.usage = Some(*usage);
                false
            }
            _ => false,
        }
    }

    /// The record of the call, ended with `result`.
    pub fn finish<T>(mut self, result: &Result<T, LlmError>) -> CallMeter {
        self.meter.latency = self.started.elapsed();
        self.meter.failure = result.as_ref().err().cloned();
        self.meter
    }
}

/// A tool call of a [`Completion`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompletedToolCall {
    pub index: u32,
    pub id: String,
    pub name: String,
    /// The JSON arguments string exactly as streamed.
    pub arguments: String,
}

/// A whole answer, accumulated from the stream.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Completion {
    pub content: String,
    /// In index order.
    pub tool_calls: Vec<CompletedToolCall>,
    pub usage: Usage,
    pub finish_reason: Option<String>,
}

/// Pooled HTTP client of the LLM proxy (or its router, when the proxy runs in this process);
/// cheap to clone.
#[derive(Clone)]
pub struct LlmClient {
    http: ServiceClient,
    url: String,
    auth: HeaderValue,
    idle_timeout: Duration,
    max_retries: u32,
    backoff: Duration,
    max_line_bytes: usize,
}

impl std::fmt::Debug for LlmClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LlmClient")
            .field("url", &self.url)
            .field("idle_timeout", &self.idle_timeout)
            .field("max_retries", &self.max_retries)
            .finish_non_exhaustive()
    }
}

impl LlmClient {
    /// A client of the proxy at `base_url` (`http://localhost:8002`), authenticating with
    /// `api_key`; `idle_timeout` bounds the wait for the answer and between its pieces.
    pub fn new(
        base_url: &str,
        api_key: &Secret,
        idle_timeout: Duration,
    ) -> Result<LlmClient, LlmError> {
        let base = base_url.trim().trim_end_matches('/');
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(LlmError::Config(format!(
                "the LLM proxy URL must start with http:// or https://, got \"{base}\""
            )));
        }
        let mut auth = HeaderValue::from_str(api_key.expose()).map_err(|_| {
            LlmError::Config("the LLM proxy API key is not a valid header value".to_owned())
        })?;
        auth.set_sensitive(true);
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .pool_idle_timeout(Duration::from_secs(90))
            .tcp_nodelay(true)
            .user_agent(concat!("codelab-agent-runtime/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| LlmError::Config(format!("cannot create the HTTP client: {e}")))?;
        Ok(LlmClient {
            http: ServiceClient::new(http),
            url: format!("{base}/v1/chat/completions"),
            auth,
            idle_timeout,
            max_retries: DEFAULT_MAX_RETRIES,
            backoff: DEFAULT_BACKOFF,
            max_line_bytes: DEFAULT_MAX_STREAM_LINE_BYTES,
        })
    }

    /// The client the settings describe: `llm_proxy_url`, `llm_proxy_api_key` (or
    /// `internal_api_key` when empty, as the original did) and `llm_timeout`.
    pub fn from_config(config: &Config) -> Result<LlmClient, LlmError> {
        let key = if config.llm_proxy_api_key.is_empty() {
            &config.internal_api_key
        } else {
            &config.llm_proxy_api_key
        };
        let idle = Duration::try_from_secs_f64(config.llm_timeout)
            .ok()
            .filter(|d| !d.is_zero())
            .ok_or_else(|| {
                LlmError::Config(format!(
                    "AGENT_RUNTIME__LLM_TIMEOUT must be a positive number of seconds, got {}",
                    config.llm_timeout
                ))
            })?;
        Ok(LlmClient::new(&config.llm_proxy_url, key, idle)?
            .with_max_stream_line_bytes(config.max_stream_line_bytes))
    }

    /// The same client, calling the proxy's router in process once `route` is served (inside
    /// `codelab up` and the test stack).
    #[must_use]
    pub fn with_local_route(mut self, route: LocalRoute) -> LlmClient {
        self.http = self.http.with_local_route(Some(route));
        self
    }

    /// The same client with another retry policy (`max_retries` 0 disables retries).
    #[must_use]
    pub fn with_retries(mut self, max_retries: u32, backoff: Duration) -> LlmClient {
        self.max_retries = max_retries;
        self.backoff = backoff;
        self
    }

    /// The same client with another cap on the length of one line (or event) of the stream.
    #[must_use]
    pub fn with_max_stream_line_bytes(mut self, max_line_bytes: usize) -> LlmClient {
        self.max_line_bytes = max_line_bytes;
        self
    }

    /// The same client with another idle timeout.
    #[must_use]
    pub fn with_idle_timeout(mut self, idle_timeout: Duration) -> LlmClient {
        self.idle_timeout = idle_timeout;
        self
    }

    /// Sends `request` with `stream: true` and usage reporting, and returns the answer as a
    /// stream once its headers arrived. The stream ends after `data: [DONE]`; a mid-stream
    /// failure, a timeout or a cancellation is its last item (`Err`).
    pub async fn stream(
        &self,
        mut request: ChatCompletionRequest,
        cancel: CancellationToken,
    ) -> Result<LlmStream, LlmError> {
        request.stream = Some(true);
        let mut options = request.stream_options.take().unwrap_or_default();
        options.include_usage = true;
        request.stream_options = Some(options);
        let body = Bytes::from(
            serde_json::to_vec(&request)
                .map_err(|e| LlmError::Config(format!("cannot encode the request: {e}")))?,
        );
        let mut attempt = 0;
        loop {
            let error = match self.send_once(body.clone(), &cancel).await {
                Ok(response) => {
                    return Ok(LlmStream::new(
                        response,
                        cancel,
                        self.idle_timeout,
                        self.max_line_bytes,
                    ));
                }
                Err(error) => error,
            };
            if attempt >= self.max_retries || !error.is_retryable_before_first_byte() {
                return Err(error);
            }
            let mut wait = self.backoff.saturating_mul(2u32.saturating_pow(attempt));
            if let LlmError::Status {
                retry_after: Some(after),
                ..
            } = &error
            {
                wait = wait.max(*after);
            }
            if wait > MAX_RETRY_WAIT {
                return Err(error);
            }
            attempt += 1;
            tracing::debug!(attempt, error = %error, "retrying the LLM call");
            tokio::select! {
                biased;
                () = cancel.cancelled() => return Err(LlmError::Cancelled),
                () = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// One POST, up to the response headers (non-2xx mapped to [`LlmError::Status`]).
    async fn send_once(
        &self,
        body: Bytes,
        cancel: &CancellationToken,
    ) -> Result<reqwest::Response, LlmError> {
        let request = self
            .http
            .request(reqwest::Method::POST, &self.url)
            .header(
                codelab_protocol::internal::INTERNAL_AUTH_HEADER,
                self.auth.clone(),
            )
            .header(CONTENT_TYPE, "application/json")
            .header(ACCEPT, "text/event-stream")
            .body(body);
        let send = self.http.send(request);
        let response = tokio::select! {
            biased;
            () = cancel.cancelled() => return Err(LlmError::Cancelled),
            result = tokio::time::timeout(self.idle_timeout, send) => match result {
                Err(_) => return Err(LlmError::Timeout),
                Ok(Err(e)) if e.is_timeout() => return Err(LlmError::Timeout),
                // Anything before a response (refused, reset, DNS) counts as not reached.
                Ok(Err(e)) => return Err(LlmError::Connect(error_chain(&e))),
                Ok(Ok(response)) => response,
            },
        };
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let retry_after = response
            .headers()
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let body = tokio::select! {
            biased;
            () = cancel.cancelled() => return Err(LlmError::Cancelled),
            body = tokio::time::timeout(self.idle_timeout, read_limited(response)) => body.unwrap_or_default(),
        };
        Err(LlmError::Status {
            status: status.as_u16(),
            message: error_message(&body)
                .unwrap_or_else(|| status.canonical_reason().unwrap_or("error").to_owned()),
            retry_after,
        })
    }

    /// Streams `request` and accumulates the whole answer (used where nothing is relayed
    /// token by token, e.g. routing).
    pub async fn complete(&self, request: ChatCompletionRequest) -> Result<Completion, LlmError> {
        let mut meter = Meter::start(&request.model);
        self.complete_metered(request, &mut meter).await
    }

    /// [`LlmClient::complete`], measured by `meter`.
    pub async fn complete_metered(
        &self,
        request: ChatCompletionRequest,
        meter: &mut Meter,
    ) -> Result<Completion, LlmError> {
        let mut stream = self.stream(request, CancellationToken::new()).await?;
        meter.opened(&stream);
        let mut completion = Completion::default();
        let mut calls: BTreeMap<u32, CompletedToolCall> = BTreeMap::new();
        while let Some(delta) = stream.next().await {
            let delta = delta?;
            meter.saw(&delta);
            match delta {
                LlmDelta::Text(text) => completion.content.push_str(&text),
                LlmDelta::ToolCallStart { index, id, name } => {
                    calls.insert(
                        index,
                        CompletedToolCall {
                            index,
                            id,
                            name,
                            arguments: String::new(),
                        },
                    );
                }
                LlmDelta::ToolCallArgs { index, fragment } => {
                    if let Some(call) = calls.get_mut(&index) {
                        call.arguments.push_str(&fragment);
                    }
                }
                LlmDelta::Finish { reason } => completion.finish_reason = Some(reason),
                LlmDelta::Usage(usage) => completion.usage = usage,
            }
        }
        completion.tool_calls = calls.into_values().collect();
        Ok(completion)
    }
}

/// The source chain of a reqwest error (its `Display` alone hides the cause).
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

async fn read_limited(response: reqwest::Response) -> Vec<u8> {
    let mut body = Vec::new();
    let mut chunks = response.bytes_stream();
    while let Some(Ok(chunk)) = chunks.next().await {
        body.extend_from_slice(&chunk);
        if body.len() >= MAX_ERROR_BODY {
            body.truncate(MAX_ERROR_BODY);
            break;
        }
    }
    body
}

/// The message of an error body: OpenAI's `error.message`, our `detail`, or the text itself.
fn error_message(body: &[u8]) -> Option<String> {
    if let Ok(value) = serde_json::from_slice::<Value>(body) {
        let message = value
            .pointer("/error/message")
            .or_else(|| value.get("error"))
            .or_else(|| value.get("detail"))
            .or_else(|| value.get("message"));
        if let Some(message) = message {
            return Some(
                message
                    .as_str()
                    .map_or_else(|| message.to_string(), str::to_owned),
            );
        }
    }
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    (!text.is_empty()).then(|| text.chars().take(500).collect())
}

/// A streamed answer: [`LlmDelta`]s, then the end (or one final `Err`).
pub struct LlmStream {
    inner: Pin<Box<dyn Stream<Item = Result<LlmDelta, LlmError>> + Send>>,
    answered_by: AnsweredBy,
}

impl std::fmt::Debug for LlmStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LlmStream")
            .field("answered_by", &self.answered_by)
            .finish_non_exhaustive()
    }
}

/// Longest provider or model name taken from the proxy's headers.
const MAX_ANSWERED_BY_CHARS: usize = 200;

/// The deployment that answered, as the proxy's headers name it (after its routing and
/// fallbacks; `codelab_protocol::openai::ANSWERED_BY_*`): unknown behind another proxy.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AnsweredBy {
    pub provider: Option<String>,
    pub model: Option<String>,
}

impl AnsweredBy {
    fn of(headers: &reqwest::header::HeaderMap) -> AnsweredBy {
        let read = |name: &str| {
            headers
                .get(name)
                .and_then(|value| value.to_str().ok())
                .map(str::trim)
                .filter(|value| !value.is_empty())
                .map(|value| value.chars().take(MAX_ANSWERED_BY_CHARS).collect())
        };
        AnsweredBy {
            provider: read(codelab_protocol::openai::ANSWERED_BY_PROVIDER_HEADER),
            model: read(codelab_protocol::openai::ANSWERED_BY_MODEL_HEADER),
        }
    }
}

impl Stream for LlmStream {
    type Item = Result<LlmDelta, LlmError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.inner.as_mut().poll_next(cx)
    }
}

impl LlmStream {
    /// The deployment that answered.
    pub fn answered_by(&self) -> &AnsweredBy {
        &self.answered_by
    }

    fn new(
        response: reqwest::Response,
        cancel: CancellationToken,
        idle: Duration,
        max_line_bytes: usize,
    ) -> LlmStream {
        let answered_by = AnsweredBy::of(response.headers());
        let state = StreamState {
            body: Box::pin(response.bytes_stream()),
            lines: SseParser::with_max_line_bytes(max_line_bytes),
            decoder: DeltaDecoder::default(),
            pending: VecDeque::new(),
            cancel,
            idle,
            finished: false,
        };
        let inner = futures_util::stream::unfold(state, |mut st| async move {
            loop {
                if let Some(item) = st.pending.pop_front() {
                    if item.is_err() {
                        // An error is the last item: whatever was decoded after it is dropped.
                        st.pending.clear();
                        st.finished = true;
                    }
                    return Some((item, st));
                }
                if st.finished {
                    return None;
                }
                let next = tokio::select! {
                    biased;
                    () = st.cancel.cancelled() => {
                        st.finished = true;
                        return Some((Err(LlmError::Cancelled), st));
                    }
                    next = tokio::time::timeout(st.idle, st.body.next()) => next,
                };
                match next {
                    Err(_) => st.pending.push_back(Err(LlmError::Timeout)),
                    Ok(Some(Err(e))) => {
                        st.pending.push_back(Err(LlmError::Stream(error_chain(&e))))
                    }
                    Ok(Some(Ok(chunk))) => {
                        for event in st.lines.push(&chunk) {
                            st.event(&event.data);
                        }
                        if let Some(limit) = st.lines.line_too_long()
                            && !st.finished
                        {
                            st.pending.push_back(Err(LlmError::LineTooLong { limit }));
                        }
                    }
                    Ok(None) => {
                        if let Some(event) = st.lines.finish() {
                            st.event(&event.data);
                        }
                        if !st.finished {
                            // Without `[DONE]` the answer is complete only if it said how it ended.
                            if !st.decoder.finished {
                                st.pending.push_back(Err(LlmError::Stream(
                                    "the answer ended before [DONE]".to_owned(),
                                )));
                            }
                            st.finished = true;
                        }
                    }
                }
            }
        });
        LlmStream {
            inner: Box::pin(inner),
            answered_by,
        }
    }
}

struct StreamState {
    body: Pin<Box<dyn Stream<Item = reqwest::Result<Bytes>> + Send>>,
    lines: SseParser,
    decoder: DeltaDecoder,
    pending: VecDeque<Result<LlmDelta, LlmError>>,
    cancel: CancellationToken,
    idle: Duration,
    /// Nothing more is read from the body (`[DONE]`, an error, or its end).
    finished: bool,
}

impl StreamState {
    /// One SSE `data` payload.
    fn event(&mut self, data: &str) {
        if self.finished {
            return;
        }
        if data.trim() == "[DONE]" {
            self.finished = true;
            return;
        }
        match self.decoder.decode(data) {
            Ok(deltas) => self.pending.extend(deltas.into_iter().map(Ok)),
            Err(error) => self.pending.push_back(Err(error)),
        }
    }
}

/// A chunk as we read it: lenient (every field optional), unlike the protocol's strict types.
#[derive(Debug, Deserialize)]
struct WireChunk {
    #[serde(default)]
    choices: Vec<WireChoice>,
    #[serde(default)]
    usage: Option<WireUsage>,
    #[serde(default)]
    error: Option<Value>,
}

#[derive(Debug, Deserialize)]
struct WireChoice {
    #[serde(default)]
    index: u32,
    #[serde(default)]
    delta: Option<Delta>,
    #[serde(default)]
    finish_reason: Option<String>,
}

#[derive(Debug, Deserialize)]
struct WireUsage {
    #[serde(default)]
    prompt_tokens: Option<u64>,
    #[serde(default)]
    completion_tokens: Option<u64>,
    #[serde(default)]
    prompt_tokens_details: Option<WireTokenDetails>,
    /// USD, from CodeLab's proxy when the answering deployment has a price.
    #[serde(default)]
    cost: Option<f64>,
}

#[derive(Debug, Deserialize)]
struct WireTokenDetails {
    #[serde(default)]
    cached_tokens: Option<u64>,
}

impl WireUsage {
    /// The counters as reported; a cost that is not a finite, non-negative number is dropped
    /// (it would poison every sum it enters).
    fn usage(self) -> Usage {
        let prompt = self.prompt_tokens.unwrap_or(0);
        let cached = self
            .prompt_tokens_details
            .and_then(|details| details.cached_tokens)
            .unwrap_or(0);
        let mut usage = Usage::new(prompt, self.completion_tokens.unwrap_or(0))
            .with_cached_tokens(cached.min(prompt));
        usage.cost = self.cost.filter(|cost| cost.is_finite() && *cost >= 0.0);
        usage
    }
}

/// Turns chunk payloads into deltas, remembering which tool calls have started.
#[derive(Debug, Default)]
struct DeltaDecoder {
    started: HashSet<u32>,
    /// A `finish_reason` was seen.
    finished: bool,
}

impl DeltaDecoder {
    fn decode(&mut self, data: &str) -> Result<Vec<LlmDelta>, LlmError> {
        let chunk: WireChunk = serde_json::from_str(data)
            .map_err(|e| LlmError::Stream(format!("unreadable chunk: {e}")))?;
        if let Some(error) = chunk.error {
            let message = error
                .get("message")
                .and_then(Value::as_str)
                .map_or_else(|| error.to_string(), str::to_owned);
            return Err(LlmError::Upstream { message });
        }
        let mut out = Vec::new();
        // One answer per request: only the first choice matters.
        if let Some(choice) = chunk.choices.into_iter().find(|c| c.index == 0) {
            if let Some(delta) = choice.delta {
                if let Some(text) = delta.content.filter(|t| !t.is_empty()) {
                    out.push(LlmDelta::Text(text));
                }
                for call in delta.tool_calls.into_iter().flatten() {
                    let function = call.function.unwrap_or_default();
                    if self.started.insert(call.index) {
                        out.push(LlmDelta::ToolCallStart {
                            index: call.index,
                            id: call.id.unwrap_or_default(),
                            name: function.name.unwrap_or_default(),
                        });
                    }
                    if let Some(fragment) = function.arguments.filter(|a| !a.is_empty()) {
                        out.push(LlmDelta::ToolCallArgs {
                            index: call.index,
                            fragment,
                        });
                    }
                }
            }
            if let Some(reason) = choice.finish_reason {
                self.finished = true;
                out.push(LlmDelta::Finish { reason });
            }
        }
        if let Some(usage) = chunk.usage {
            out.push(LlmDelta::Usage(usage.usage()));
        }
        Ok(out)
    }
}

#[cfg(test)]
pub(crate) mod tests;
