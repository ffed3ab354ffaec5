//! Byte-level plumbing shared by the real provider clients: the framing of upstream bodies (SSE
//! for OpenAI-compatible and Anthropic through the shared [`codelab_protocol::sse`] parser, an
//! NDJSON line splitter for Ollama),
//! the driver that turns an upstream body into an [`EventStream`], and the HTTP helpers every
//! provider uses to send a request and map an error status.
//!
//! The parsers are pure (fed byte chunks, no I/O) so they can be tested with input split at
//! every byte boundary; the driver only pulls chunks when the consumer polls it, so dropping the
//! stream drops the upstream response (that is how a client disconnect cancels the upstream).

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::pin::Pin;
use std::time::Duration;

use bytes::Bytes;
use codelab_protocol::openai::ChatCompletionRequest;
pub use codelab_protocol::sse::{SseEvent, SseParser};
use futures_util::{Stream, StreamExt};
use serde_json::Value;

use super::{Deployment, Transport};
use crate::events::{EventStream, LlmEvent, UpstreamError, UpstreamErrorKind};

/// One decoded item of an upstream reply, or the error that ends it.
pub type EventResult = Result<LlmEvent, UpstreamError>;

/// A new OpenAI-style tool-call id: `call_` and 24 random lowercase hex digits (ids are
/// synthesized when a provider sends none, e.g. Ollama).
pub fn new_tool_call_id() -> String {
    let bytes: [u8; 12] = rand::random();
    let mut id = String::with_capacity(5 + 24);
    id.push_str("call_");
    for b in bytes {
        // Writing into a String cannot fail.
        let _ = write!(id, "{b:02x}");
    }
    id
}

// ---------------------------------------------------------------------------------------------
// Framing
// ---------------------------------------------------------------------------------------------

/// Longest line (and SSE event) an upstream stream may send by default: far above any real
/// chunk, yet a bound on what one misbehaving upstream can make the proxy buffer
/// (`LLM_PROXY__MAX_STREAM_LINE_BYTES`).
pub const DEFAULT_MAX_LINE_BYTES: usize = codelab_protocol::sse::DEFAULT_MAX_LINE_BYTES;

/// Splits a byte stream into frames; fed chunks cut anywhere, including inside a line ending
/// or a multi-byte UTF-8 character.
pub trait Framing: Send + 'static {
    /// What one complete frame is.
    type Frame;
    /// Consumes a chunk and returns the frames it completed.
    fn push(&mut self, chunk: &[u8]) -> Vec<Self::Frame>;
    /// The body ended: returns a last frame that was not terminated, if any.
    fn finish(&mut self) -> Vec<Self::Frame>;
    /// The line cap, once a line (or event) went past it: the frames before it were returned,
    /// nothing after it is, and the stream must fail.
    fn line_too_long(&self) -> Option<usize>;
}

/// The error that ends a stream whose line went past `limit` bytes.
fn line_too_long_error(limit: usize) -> UpstreamError {
    UpstreamError::new(
        UpstreamErrorKind::Protocol,
        format!(
            "the upstream sent a stream line longer than the {limit} byte limit \
             (LLM_PROXY__MAX_STREAM_LINE_BYTES)"
        ),
    )
}

impl Framing for SseParser {
    type Frame = SseEvent;

    fn push(&mut self, chunk: &[u8]) -> Vec<SseEvent> {
        SseParser::push(self, chunk)
    }

    fn finish(&mut self) -> Vec<SseEvent> {
        SseParser::finish(self).into_iter().collect()
    }

    fn line_too_long(&self) -> Option<usize> {
        SseParser::line_too_long(self)
    }
}

/// Incremental NDJSON splitter: returns each complete non-blank line (LF or CRLF terminated),
/// trimmed of surrounding whitespace. A line longer than the cap stops the splitter (see
/// [`Framing::line_too_long`]).
#[derive(Debug)]
pub struct NdjsonSplitter {
    buf: Vec<u8>,
    max_line_bytes: usize,
    overflowed: bool,
}

impl Default for NdjsonSplitter {
    fn default() -> Self {
        Self::with_max_line_bytes(DEFAULT_MAX_LINE_BYTES)
    }
}

impl NdjsonSplitter {
    /// An empty splitter with the default line cap ([`DEFAULT_MAX_LINE_BYTES`]).
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty splitter whose lines may be at most `max_line_bytes` long.
    pub fn with_max_line_bytes(max_line_bytes: usize) -> Self {
        Self {
            buf: Vec::new(),
            max_line_bytes,
            overflowed: false,
        }
    }

    fn overflow(&mut self) {
        self.overflowed = true;
        self.buf = Vec::new();
    }

    /// The body ended: returns a last line that had no newline.
    pub fn finish(&mut self) -> Option<String> {
        if self.overflowed {
            return None;
        }
        let line = std::mem::take(&mut self.buf);
        let mut out = Vec::new();
        push_trimmed(&line, &mut out);
        out.pop()
    }
}

fn push_trimmed(line: &[u8], out: &mut Vec<String>) {
    // Lines are complete, so a multi-byte character is never cut here.
    let text = String::from_utf8_lossy(line);
    let text = text.trim();
    if !text.is_empty() {
        out.push(text.to_owned());
    }
}

impl Framing for NdjsonSplitter {
    type Frame = String;

    fn push(&mut self, chunk: &[u8]) -> Vec<String> {
        let mut out = Vec::new();
        if self.overflowed {
            return out;
        }
        let mut rest = chunk;
        while let Some(pos) = rest.iter().position(|&b| b == b'\n') {
            if self.buf.len() + pos > self.max_line_bytes {
                self.overflow();
                return out;
            }
            self.buf.extend_from_slice(&rest[..pos]);
            rest = &rest[pos + 1..];
            let line = std::mem::take(&mut self.buf);
            push_trimmed(&line, &mut out);
        }
        if self.buf.len() + rest.len() > self.max_line_bytes {
            self.overflow();
            return out;
        }
        self.buf.extend_from_slice(rest);
        out
    }

    fn finish(&mut self) -> Vec<String> {
        NdjsonSplitter::finish(self).into_iter().collect()
    }

    fn line_too_long(&self) -> Option<usize> {
        self.overflowed.then_some(self.max_line_bytes)
    }
}

// ---------------------------------------------------------------------------------------------
// Decoding driver
// ---------------------------------------------------------------------------------------------

/// A provider's state machine from frames to normalised events.
pub trait FrameDecoder: Send + 'static {
    /// The frame type it reads ([`SseEvent`] or an NDJSON line).
    type Frame;
    /// Handles one frame.
    fn frame(&mut self, frame: Self::Frame) -> Vec<EventResult>;
    /// The body ended (normally or not): flushes what is pending, or reports an early end.
    fn end(&mut self) -> Vec<EventResult>;
    /// Whether the reply is complete (`[DONE]`, `message_stop`, `done:true`); later frames are
    /// ignored and the body is no longer read.
    fn is_complete(&self) -> bool;
}

/// Runs `framing` and `decoder` over `bytes` until the first one of: the reply completes,
/// the body ends, an error. Nothing is read before the consumer polls; the first `Err` is the
/// last item.
pub fn decode_stream<S, F, D>(bytes: S, framing: F, decoder: D) -> EventStream
where
    S: Stream<Item = Result<Bytes, UpstreamError>> + Send + 'static,
    F: Framing,
    D: FrameDecoder<Frame = F::Frame>,
{
    let driver = Driver {
        bytes: Some(Box::pin(bytes)),
        framing,
        decoder,
        pending: VecDeque::new(),
    };
    Box::pin(futures_util::stream::unfold(driver, Driver::next))
}

/// Decodes in-memory `chunks` and returns every item (the first error included, nothing after
/// it), with the same completion rules as [`decode_stream`]: for tests of the state machines.
pub fn decode_all<F, D>(chunks: &[&[u8]], mut framing: F, mut decoder: D) -> Vec<EventResult>
where
    F: Framing,
    D: FrameDecoder<Frame = F::Frame>,
{
    let mut out = Vec::new();
    for chunk in chunks {
        for frame in framing.push(chunk) {
            if decoder.is_complete() {
                break;
            }
            out.extend(decoder.frame(frame));
        }
        if let Some(limit) = framing.line_too_long()
            && !decoder.is_complete()
        {
            out.push(Err(line_too_long_error(limit)));
            return truncate_after_error(out);
        }
    }
    for frame in framing.finish() {
        if !decoder.is_complete() {
            out.extend(decoder.frame(frame));
        }
    }
    if !decoder.is_complete() {
        out.extend(decoder.end());
    }
    truncate_after_error(out)
}

fn truncate_after_error(mut items: Vec<EventResult>) -> Vec<EventResult> {
    if let Some(pos) = items.iter().position(Result::is_err) {
        items.truncate(pos + 1);
    }
    items
}

type ByteStream = Pin<Box<dyn Stream<Item = Result<Bytes, UpstreamError>> + Send>>;

struct Driver<F, D> {
    /// The upstream body; `None` once it is finished with, so it is dropped early.
    bytes: Option<ByteStream>,
    framing: F,
    decoder: D,
    pending: VecDeque<EventResult>,
}

/// How long to keep reading after the reply completed, so a well-behaved upstream's body is
/// read to its end and the connection can go back to the pool; a misbehaving one that keeps the
/// body open is simply dropped.
const DRAIN_LIMIT: Duration = Duration::from_millis(100);

impl<F, D> Driver<F, D>
where
    F: Framing,
    D: FrameDecoder<Frame = F::Frame>,
{
    async fn next(mut self) -> Option<(EventResult, Self)> {
        loop {
            if let Some(item) = self.pending.pop_front() {
                if item.is_err() {
                    self.pending.clear();
                    self.bytes = None;
                }
                return Some((item, self));
            }
            let mut bytes = self.bytes.take()?;
            if self.decoder.is_complete() {
                let _ = tokio::time::timeout(DRAIN_LIMIT, async {
                    while let Some(Ok(_)) = bytes.next().await {}
                })
                .await;
                return None;
            }
            match bytes.next().await {
                Some(Ok(chunk)) => {
                    for frame in self.framing.push(&chunk) {
                        if self.decoder.is_complete() {
                            break;
                        }
                        self.pending.extend(self.decoder.frame(frame));
                    }
                    match self.framing.line_too_long() {
                        // The reply cannot go on: the error ends it after what came before.
                        Some(limit) if !self.decoder.is_complete() => {
                            self.pending.push_back(Err(line_too_long_error(limit)));
                        }
                        _ => self.bytes = Some(bytes),
                    }
                }
                Some(Err(err)) => {
                    // A reply that already finished loses nothing when the body breaks
                    // afterwards; otherwise the transport error is the more useful cause than
                    // "ended early".
                    let tail = self.decoder.end();
                    if tail.iter().any(Result::is_err) {
                        self.pending.push_back(Err(err));
                    } else {
                        tracing::debug!(error = %err, "upstream body broke after the reply finished");
                        self.pending.extend(tail);
                    }
                }
                None => {
                    for frame in self.framing.finish() {
                        if !self.decoder.is_complete() {
                            self.pending.extend(self.decoder.frame(frame));
                        }
                    }
                    if !self.decoder.is_complete() {
                        self.pending.extend(self.decoder.end());
                    }
                }
            }
        }
    }
}

/// The body of `response` as a byte stream with transport errors already classified.
pub fn response_bytes(
    response: reqwest::Response,
) -> impl Stream<Item = Result<Bytes, UpstreamError>> + Send + 'static {
    response
        .bytes_stream()
        .map(|chunk| chunk.map_err(|err| UpstreamError::from_transport(&err)))
}

// ---------------------------------------------------------------------------------------------
// HTTP helpers
// ---------------------------------------------------------------------------------------------

/// Builds `{api_base}/{segments...}`: trailing `/` on the base removed, and the suffix
/// `strip_suffix` (e.g. `/v1`) too when given, so `http://host:11434/v1` and
/// `http://host:11434` both work. Segments are percent-encoded (Azure deployment names).
pub fn endpoint_url(
    api_base: &str,
    strip_suffix: Option<&str>,
    segments: &[&str],
) -> Result<reqwest::Url, UpstreamError> {
    let mut base = api_base.trim().trim_end_matches('/');
    if let Some(suffix) = strip_suffix {
        base = base
            .strip_suffix(suffix)
            .unwrap_or(base)
            .trim_end_matches('/');
    }
    let mut url = reqwest::Url::parse(base).map_err(|err| {
        // A misconfigured base is not the client's fault: count it as a connect failure so the
        // router can fall back to another deployment.
        UpstreamError::new(
            UpstreamErrorKind::Connect,
            format!("invalid upstream api_base: {err}"),
        )
    })?;
    {
        let mut path = url.path_segments_mut().map_err(|()| {
            UpstreamError::new(
                UpstreamErrorKind::Connect,
                "upstream api_base cannot be a base URL",
            )
        })?;
        path.pop_if_empty().extend(segments);
    }
    Ok(url)
}

/// The message and error type found in an upstream error body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ErrorInfo<'a> {
    /// Human-readable message.
    pub message: Option<&'a str>,
    /// Error type (`rate_limit_error`, ...), or OpenAI's `code` when there is no type.
    pub error_type: Option<&'a str>,
}

/// Reads the upstream's error message and type from an error body, tolerating every shape the
/// supported upstreams use: OpenAI `{"error":{"message","type","code"}}`, Anthropic
/// `{"type":"error","error":{"type","message"}}`, Ollama `{"error":"..."}`, and the vLLM /
/// FastAPI `{"message","type"}` / `{"detail":"..."}` forms.
pub fn error_info(body: &Value) -> ErrorInfo<'_> {
    fn str_of(v: Option<&Value>) -> Option<&str> {
        v.and_then(Value::as_str).filter(|s| !s.is_empty())
    }
    match body.get("error") {
        Some(Value::String(message)) => ErrorInfo {
            message: Some(message.as_str()),
            error_type: None,
        },
        Some(error @ Value::Object(_)) => ErrorInfo {
            message: str_of(error.get("message")),
            error_type: str_of(error.get("type")).or_else(|| str_of(error.get("code"))),
        },
        _ => ErrorInfo {
            message: str_of(body.get("message")).or_else(|| str_of(body.get("detail"))),
            error_type: str_of(body.get("type")).filter(|t| *t != "error"),
        },
    }
}

/// An upstream error from a JSON error body received mid-stream (or in an error status's body),
/// with `status` as its kind when known, else a protocol error.
pub fn error_from_body(status: Option<u16>, body: &Value, fallback: &str) -> UpstreamError {
    let info = error_info(body);
    let message = info.message.unwrap_or(fallback).to_owned();
    let mut err = match status {
        Some(status) => UpstreamError::status(status, message),
        None => UpstreamError::protocol(message),
    };
    err.error_type = info.error_type.map(str::to_owned);
    err
}

/// Sends `request` to `deployment` (waiting for the answer's headers at most the deployment's
/// own timeout, else the transport's) and decodes the accepted answer's body with `framing` and
/// `decoder`.
pub async fn open_stream<F, D>(
    transport: &Transport<'_>,
    deployment: &Deployment,
    request: reqwest::RequestBuilder,
    framing: F,
    decoder: D,
) -> Result<EventStream, UpstreamError>
where
    F: Framing,
    D: FrameDecoder<Frame = F::Frame>,
{
    let response = send(request, deployment.timeout.unwrap_or(transport.timeout)).await?;
    Ok(decode_stream(response_bytes(response), framing, decoder))
}

/// Sends `request`, waiting at most `timeout` for the answer's headers, and maps an error
/// status to an [`UpstreamError`] carrying the upstream's message, type and `Retry-After`.
pub async fn send(
    request: reqwest::RequestBuilder,
    timeout: Duration,
) -> Result<reqwest::Response, UpstreamError> {
    let response = match tokio::time::timeout(timeout, request.send()).await {
        Ok(Ok(response)) => response,
        Ok(Err(err)) => return Err(UpstreamError::from_transport(&err)),
        Err(_) => {
            return Err(UpstreamError::new(
                UpstreamErrorKind::Timeout,
                format!(
                    "upstream did not answer within {:.1}s",
                    timeout.as_secs_f64()
                ),
            ));
        }
    };
    let status = response.status();
    tracing::debug!(status = status.as_u16(), "upstream answered");
    if status.is_success() {
        return Ok(response);
    }
    Err(status_error(response, timeout).await)
}

/// Reads a whole (non-streamed) answer body, refusing it as soon as it is known to exceed
/// `max_bytes`: from `Content-Length` before anything is read, else when the next piece would
/// pass the cap. Nothing past the cap is buffered; the connection is dropped, not drained.
pub async fn read_body_capped(
    mut response: reqwest::Response,
    max_bytes: usize,
) -> Result<Bytes, UpstreamError> {
    let too_large = || {
        UpstreamError::protocol(format!(
            "upstream answer is larger than the {max_bytes} byte limit (LLM_PROXY__MAX_RESPONSE_BYTES)"
        ))
    };
    let announced = response.content_length();
    if announced.is_some_and(|length| length > max_bytes as u64) {
        return Err(too_large());
    }
    let capacity = announced.map_or(0, |length| usize::try_from(length).unwrap_or(max_bytes));
    let mut body = Vec::with_capacity(capacity);
    loop {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                if body.len() + chunk.len() > max_bytes {
                    return Err(too_large());
                }
                if body.is_empty() && announced == Some(chunk.len() as u64) {
                    // The usual case: the whole body in one piece, kept without a copy.
                    return Ok(chunk);
                }
                body.extend_from_slice(&chunk);
            }
            Ok(None) => return Ok(Bytes::from(body)),
            Err(err) => return Err(UpstreamError::from_transport(&err)),
        }
    }
}

/// How much of an error body is read: error bodies are small, an HTML error page need not be
/// read whole.
const MAX_ERROR_BODY: usize = 64 * 1024;

async fn status_error(mut response: reqwest::Response, timeout: Duration) -> UpstreamError {
    let status = response.status();
    let retry_after = retry_after(response.headers());
    let mut body = Vec::new();
    let read = tokio::time::timeout(timeout, async {
        while body.len() < MAX_ERROR_BODY {
            match response.chunk().await {
                Ok(Some(chunk)) => body.extend_from_slice(&chunk),
                _ => break,
            }
        }
    });
    // A body that does not arrive in time still leaves us the status.
    let _ = read.await;
    let mut err = status_error_from_body(status.as_u16(), &body);
    err.retry_after = retry_after;
    err
}

/// The [`UpstreamError`] for an error status and its (possibly empty or non-JSON) body.
pub fn status_error_from_body(status: u16, body: &[u8]) -> UpstreamError {
    let fallback = match reqwest::StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
    {
        Some(reason) => format!("upstream returned HTTP {status} {reason}"),
        None => format!("upstream returned HTTP {status}"),
    };
    match serde_json::from_slice::<Value>(body) {
        Ok(json) if json.is_object() => error_from_body(Some(status), &json, &fallback),
        _ => {
            let text = String::from_utf8_lossy(body);
            let text = text.split_whitespace().collect::<Vec<_>>().join(" ");
            if text.is_empty() {
                UpstreamError::status(status, fallback)
            } else {
                UpstreamError::status(status, format!("{fallback}: {}", truncate(&text, 300)))
            }
        }
    }
}

fn truncate(text: &str, max_chars: usize) -> String {
    match text.char_indices().nth(max_chars) {
        Some((pos, _)) => format!("{}…", &text[..pos]),
        None => text.to_owned(),
    }
}

/// `Retry-After` in seconds (OpenAI, Anthropic), or OpenAI's `retry-after-ms` when that is all
/// there is. HTTP-date values are ignored.
pub fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    // `try_`: an upstream's number too large for a `Duration` (`1e300`) is ignored like any
    // other unusable value instead of panicking.
    let header = |name: &str, unit: f64| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<f64>().ok())
            .and_then(|v| Duration::try_from_secs_f64(v / unit).ok())
    };
    header("retry-after", 1.0).or_else(|| header("retry-after-ms", 1000.0))
}

/// `value[name]` when it is a non-empty string.
pub fn non_empty_str(value: &Value, name: &str) -> Option<String> {
    value
        .get(name)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
}

/// The `Start` event of a reply, with the non-empty `id` and `model` of `source`.
pub fn start_event(source: Option<&Value>) -> EventResult {
    let field = |name: &str| source.and_then(|s| non_empty_str(s, name));
    Ok(LlmEvent::Start {
        id: field("id"),
        model: field("model"),
    })
}

/// A JSON payload of an upstream stream, or the protocol error that ends the stream.
pub fn parse_json(data: &str, what: &str) -> Result<Value, UpstreamError> {
    serde_json::from_str(data).map_err(|err| {
        UpstreamError::protocol(format!("invalid JSON{what} in upstream stream: {err}"))
    })
}

/// The URL of an OpenAI `image_url` part (`{"url": ...}` or a bare string).
pub fn image_url(part: &Value) -> Option<&str> {
    let image = part.get("image_url")?;
    image
        .get("url")
        .and_then(Value::as_str)
        .or_else(|| image.as_str())
}

/// History tool-call arguments as the object providers want (a JSON string in OpenAI's
/// format; unparseable or not an object → `{}`).
pub fn arguments_object(arguments: &str) -> Value {
    match serde_json::from_str::<Value>(arguments) {
        Ok(input @ Value::Object(_)) => input,
        _ => Value::Object(serde_json::Map::new()),
    }
}

/// The request's `max_tokens`, or its `max_completion_tokens` (the newer OpenAI name).
pub fn max_tokens(request: &ChatCompletionRequest) -> Option<u64> {
    request.max_tokens.or_else(|| {
        request
            .extra
            .get("max_completion_tokens")
            .and_then(Value::as_u64)
    })
}

/// Splits a base64 `data:` URL (an OpenAI `image_url` part) into `(media type, data)`.
pub fn parse_data_url(url: &str) -> Option<(&str, &str)> {
    let rest = url.strip_prefix("data:")?;
    let (meta, data) = rest.split_once(',')?;
    let media_type = meta.strip_suffix(";base64")?;
    (!media_type.is_empty()).then_some((media_type, data))
}

/// A one-shot local HTTP server for the provider tests (no network: loopback only).
#[cfg(test)]
#[expect(
    clippy::disallowed_methods,
    reason = "a test's one-shot servers run on tasks of their own"
)]
pub(crate) mod test_server {
    use std::net::SocketAddr;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::task::JoinHandle;

    use futures_util::StreamExt;

    use serde_json::{Value, json};

    use super::super::{Deployment, ProviderKind, Transport};
    use super::{EventResult, FrameDecoder, Framing, decode_stream};
    use crate::events::{EventStream, UpstreamError};

    /// How the provider tests send: a client of their own (leaked: a test's life is short), a
    /// 5 s wait for the headers and the default line cap.
    pub(crate) fn transport() -> Transport<'static> {
        Transport {
            http: Box::leak(Box::new(reqwest::Client::new())),
            timeout: std::time::Duration::from_secs(5),
            max_line_bytes: super::DEFAULT_MAX_LINE_BYTES,
            max_response_bytes: 16 * super::DEFAULT_MAX_LINE_BYTES,
        }
    }

    /// A deployment of `provider` for `model` at `api_base`, with `key` if any.
    pub(crate) fn deployment(
        provider: ProviderKind,
        model: &str,
        api_base: &str,
        key: Option<&str>,
    ) -> Deployment {
        Deployment {
            provider,
            upstream_model: model.to_owned(),
            api_base: api_base.to_owned(),
            api_key: key.map(|key| key.to_owned().into()),
            api_version: None,
            timeout: None,
            prices: None,
        }
    }

    /// Everything `framing` and `decoder` make of `body` arriving in chunks of `size` bytes.
    pub(crate) async fn decode_in_chunks<F, D>(
        body: &str,
        size: usize,
        framing: F,
        decoder: D,
    ) -> Vec<EventResult>
    where
        F: Framing,
        D: FrameDecoder<Frame = F::Frame>,
    {
        let chunks: Vec<Result<bytes::Bytes, UpstreamError>> = body
            .as_bytes()
            .chunks(size)
            .map(|c| Ok(bytes::Bytes::copy_from_slice(c)))
            .collect();
        decode_stream(futures_util::stream::iter(chunks), framing, decoder)
            .collect()
            .await
    }

    /// The request the server received.
    pub(crate) struct Seen {
        pub(crate) request_line: String,
        pub(crate) headers: Vec<(String, String)>,
        pub(crate) body: Vec<u8>,
    }

    impl Seen {
        pub(crate) fn header(&self, name: &str) -> Option<&str> {
            self.headers
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.as_str())
        }

        pub(crate) fn json(&self) -> serde_json::Value {
            serde_json::from_slice(&self.body).unwrap()
        }
    }

    /// Accepts one connection, reads the request head, writes `response` (if any) and then
    /// waits for the client to close the connection; resolves to `true` once it did.
    pub(crate) async fn serve_and_wait_for_close(
        response: Option<&'static str>,
    ) -> (SocketAddr, JoinHandle<bool>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let handle = tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut buf = Vec::new();
            let mut chunk = [0u8; 4096];
            while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = socket.read(&mut chunk).await.unwrap();
                assert!(n > 0);
                buf.extend_from_slice(&chunk[..n]);
            }
            if let Some(response) = response {
                socket.write_all(response.as_bytes()).await.unwrap();
            }
            // Drain the request body and whatever follows until the client hangs up.
            loop {
                match socket.read(&mut chunk).await {
                    Ok(0) | Err(_) => return true,
                    Ok(_) => {}
                }
            }
        });
        (addr, handle)
    }

    /// What `open` makes of `deployment` pointed under `path` at a one-shot server (see
    /// [`serve_once`]): the whole reply or the error; and the request the server saw.
    pub(crate) async fn open_once(
        mut deployment: Deployment,
        path: &str,
        head: &str,
        body: &str,
        open: impl AsyncFnOnce(&Transport<'static>, &Deployment) -> Result<EventStream, UpstreamError>,
    ) -> (Result<Vec<EventResult>, UpstreamError>, Seen) {
        let (addr, seen) = serve_once(head, body).await;
        deployment.api_base = format!("http://{addr}{path}");
        let reply = match open(&transport(), &deployment).await {
            Ok(stream) => Ok(stream.collect().await),
            Err(err) => Err(err),
        };
        (reply, seen.await.unwrap())
    }

    /// The `read_file` tool of the provider tests' requests, in OpenAI's format.
    pub(crate) fn read_file_tool() -> Value {
        json!({"type": "function", "function": {"name": "read_file",
            "description": "Read a file",
            "parameters": {"type": "object", "properties": {"path": {"type": "string"}}}}})
    }

    /// An assistant's call of [`read_file_tool`] (id `call_A`), in OpenAI's format.
    pub(crate) fn read_file_call() -> Value {
        json!({"id": "call_A", "type": "function",
            "function": {"name": "read_file", "arguments": "{\"path\":\"a.py\"}"}})
    }

    /// Accepts one connection, reads one request and answers `head` (status line and headers,
    /// each CRLF-terminated, without `content-length`) followed by `body`.
    pub(crate) async fn serve_once(head: &str, body: &str) -> (SocketAddr, JoinHandle<Seen>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let response = format!(
            "{head}content-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        );
        let handle = tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut buf = Vec::new();
            let mut chunk = [0u8; 4096];
            let (head_end, content_length) = loop {
                let n = socket.read(&mut chunk).await.unwrap();
                assert!(n > 0, "client closed before sending a request");
                buf.extend_from_slice(&chunk[..n]);
                if let Some(pos) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                    let head = String::from_utf8_lossy(&buf[..pos]).to_lowercase();
                    let length = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .map_or(0, |v| v.trim().parse::<usize>().unwrap());
                    break (pos + 4, length);
                }
            };
            while buf.len() < head_end + content_length {
                let n = socket.read(&mut chunk).await.unwrap();
                assert!(n > 0, "client closed mid-body");
                buf.extend_from_slice(&chunk[..n]);
            }
            let head = String::from_utf8_lossy(&buf[..head_end - 4]).into_owned();
            let mut lines = head.split("\r\n");
            let request_line = lines.next().unwrap_or_default().to_owned();
            let headers = lines
                .filter_map(|l| l.split_once(':'))
                .map(|(n, v)| (n.trim().to_owned(), v.trim().to_owned()))
                .collect();
            socket.write_all(response.as_bytes()).await.unwrap();
            socket.shutdown().await.unwrap();
            Seen {
                request_line,
                headers,
                body: buf[head_end..head_end + content_length].to_vec(),
            }
        });
        (addr, handle)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ndjson_splits_at_every_boundary() {
        let input = "{\"a\":\"ü\"}\n\r\n  \n{\"b\":2}\r\n{\"c\":3}";
        let expected = vec!["{\"a\":\"ü\"}", "{\"b\":2}", "{\"c\":3}"];
        let bytes = input.as_bytes();
        for i in 0..=bytes.len() {
            for j in i..=bytes.len() {
                let mut s = NdjsonSplitter::new();
                let mut out = s.push(&bytes[..i]);
                out.extend(s.push(&bytes[i..j]));
                out.extend(s.push(&bytes[j..]));
                out.extend(s.finish());
                assert_eq!(out, expected, "split {i}/{j}");
            }
        }
    }

    #[test]
    fn tool_call_ids_are_call_and_24_hex() {
        let a = new_tool_call_id();
        let b = new_tool_call_id();
        assert_ne!(a, b);
        let hex = a.strip_prefix("call_").unwrap();
        assert_eq!(hex.len(), 24);
        assert!(
            hex.chars()
                .all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c))
        );
    }

    #[test]
    fn endpoint_urls() {
        let u = endpoint_url("https://api.openai.com/v1/", None, &["chat", "completions"]);
        assert_eq!(
            u.unwrap().as_str(),
            "https://api.openai.com/v1/chat/completions"
        );
        let u = endpoint_url("http://ollama:11434/v1/", Some("/v1"), &["api", "chat"]);
        assert_eq!(u.unwrap().as_str(), "http://ollama:11434/api/chat");
        let u = endpoint_url("http://ollama:11434", Some("/v1"), &["api", "chat"]);
        assert_eq!(u.unwrap().as_str(), "http://ollama:11434/api/chat");
        let err = endpoint_url("not a url", None, &[]).unwrap_err();
        assert_eq!(err.kind, UpstreamErrorKind::Connect);
    }

    #[test]
    fn error_bodies_of_every_provider() {
        let e = status_error_from_body(
            429,
            br#"{"error":{"message":"Rate limit reached","type":"requests","param":null,"code":"rate_limit_exceeded"}}"#,
        );
        assert_eq!(e.kind, UpstreamErrorKind::Status(429));
        assert_eq!(e.message, "Rate limit reached");
        assert_eq!(e.error_type.as_deref(), Some("requests"));

        let e = status_error_from_body(
            529,
            br#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#,
        );
        assert_eq!(e.kind, UpstreamErrorKind::Status(529));
        assert!(e.is_retryable());
        assert_eq!(e.message, "Overloaded");
        assert_eq!(e.error_type.as_deref(), Some("overloaded_error"));

        let e = status_error_from_body(404, br#"{"error":"model 'qwen3' not found"}"#);
        assert_eq!(e.message, "model 'qwen3' not found");
        assert_eq!(e.error_type, None);

        let e = status_error_from_body(
            400,
            br#"{"object":"error","message":"bad","type":"BadRequestError"}"#,
        );
        assert_eq!(e.message, "bad");
        assert_eq!(e.error_type.as_deref(), Some("BadRequestError"));

        let e = status_error_from_body(502, b"<html>\n<b>Bad gateway</b></html>");
        assert_eq!(
            e.message,
            "upstream returned HTTP 502 Bad Gateway: <html> <b>Bad gateway</b></html>"
        );

        let e = status_error_from_body(503, b"");
        assert_eq!(e.message, "upstream returned HTTP 503 Service Unavailable");
    }

    #[test]
    fn retry_after_headers() {
        let mut h = reqwest::header::HeaderMap::new();
        assert_eq!(retry_after(&h), None);
        h.insert("retry-after-ms", "1500".parse().unwrap());
        assert_eq!(retry_after(&h), Some(Duration::from_millis(1500)));
        h.insert("retry-after", "7".parse().unwrap());
        assert_eq!(retry_after(&h), Some(Duration::from_secs(7)));
        h.insert(
            "retry-after",
            "Wed, 21 Oct 2015 07:28:00 GMT".parse().unwrap(),
        );
        assert_eq!(retry_after(&h), Some(Duration::from_millis(1500)));
        // Hostile values: ignored, never a panic (fuzz/seeds/upstream_sse/retry_after_huge.txt).
        for value in ["1e300", "-1", "NaN", "inf"] {
            let mut h = reqwest::header::HeaderMap::new();
            h.insert("retry-after", value.parse().unwrap());
            h.insert("retry-after-ms", value.parse().unwrap());
            assert_eq!(retry_after(&h), None, "{value}");
        }
    }

    #[test]
    fn data_urls() {
        assert_eq!(
            parse_data_url("data:image/png;base64,AAAA"),
            Some(("image/png", "AAAA"))
        );
        assert_eq!(parse_data_url("https://x/y.png"), None);
        assert_eq!(parse_data_url("data:text/plain,hello"), None);
    }

    /// Counts frames and completes on the frame `"end"`; `"boom"` is an error.
    struct Echo {
        complete: bool,
        finished: bool,
    }

    impl FrameDecoder for Echo {
        type Frame = String;
        fn frame(&mut self, frame: String) -> Vec<EventResult> {
            match frame.as_str() {
                "end" => {
                    self.complete = true;
                    vec![]
                }
                "boom" => vec![Err(UpstreamError::protocol("boom"))],
                "finish" => {
                    self.finished = true;
                    vec![Ok(LlmEvent::Text(frame))]
                }
                _ => vec![Ok(LlmEvent::Text(frame))],
            }
        }
        fn end(&mut self) -> Vec<EventResult> {
            if self.finished {
                vec![]
            } else {
                vec![Err(UpstreamError::protocol("upstream stream ended early"))]
            }
        }
        fn is_complete(&self) -> bool {
            self.complete
        }
    }

    fn echo() -> Echo {
        Echo {
            complete: false,
            finished: false,
        }
    }

    async fn collect(chunks: Vec<Result<Bytes, UpstreamError>>) -> Vec<EventResult> {
        let stream = decode_stream(
            futures_util::stream::iter(chunks),
            NdjsonSplitter::new(),
            echo(),
        );
        stream.collect().await
    }

    fn text(s: &str) -> EventResult {
        Ok(LlmEvent::Text(s.to_owned()))
    }

    #[tokio::test]
    async fn driver_stops_at_completion_and_after_errors() {
        let got = collect(vec![
            Ok(Bytes::from("a\nb")),
            Ok(Bytes::from("\nend\nignored\n")),
        ])
        .await;
        assert_eq!(got, vec![text("a"), text("b")]);

        let got = collect(vec![Ok(Bytes::from("a\nboom\nc\n"))]).await;
        assert_eq!(got, vec![text("a"), Err(UpstreamError::protocol("boom"))]);

        let got = collect(vec![Ok(Bytes::from("a\nfinish"))]).await;
        assert_eq!(got, vec![text("a"), text("finish")]);

        let got = collect(vec![Ok(Bytes::from("a\n"))]).await;
        assert_eq!(
            got,
            vec![
                text("a"),
                Err(UpstreamError::protocol("upstream stream ended early"))
            ]
        );

        let broken = UpstreamError::protocol("connection reset");
        let got = collect(vec![Ok(Bytes::from("a\n")), Err(broken.clone())]).await;
        assert_eq!(got, vec![text("a"), Err(broken.clone())]);

        let got = collect(vec![Ok(Bytes::from("finish\n")), Err(broken)]).await;
        assert_eq!(got, vec![text("finish")]);
    }

    #[tokio::test]
    async fn header_wait_is_bounded_by_the_timeout() {
        let (addr, closed) = test_server::serve_and_wait_for_close(None).await;
        let request = reqwest::Client::new()
            .post(format!("http://{addr}/"))
            .body("{}");
        let started = std::time::Instant::now();
        let err = send(request, Duration::from_millis(200)).await.unwrap_err();
        assert_eq!(err.kind, UpstreamErrorKind::Timeout);
        assert!(err.is_retryable());
        assert!(started.elapsed() < Duration::from_secs(5));
        // The abandoned request's connection is closed.
        assert!(
            tokio::time::timeout(Duration::from_secs(5), closed)
                .await
                .unwrap()
                .unwrap()
        );
    }

    #[tokio::test]
    async fn dropping_the_stream_closes_the_upstream_connection() {
        let (addr, closed) = test_server::serve_and_wait_for_close(Some(
            "HTTP/1.1 200 OK\r\ncontent-type: application/x-ndjson\r\ntransfer-encoding: chunked\r\n\r\n4\r\na\nb\n\r\n",
        ))
        .await;
        let request = reqwest::Client::new()
            .post(format!("http://{addr}/"))
            .body("{}");
        let response = send(request, Duration::from_secs(5)).await.unwrap();
        let mut stream = decode_stream(response_bytes(response), NdjsonSplitter::new(), echo());
        assert_eq!(stream.next().await, Some(text("a")));
        assert_eq!(stream.next().await, Some(text("b")));
        drop(stream);
        assert!(
            tokio::time::timeout(Duration::from_secs(5), closed)
                .await
                .unwrap()
                .unwrap()
        );
    }

    #[tokio::test]
    async fn a_capped_body_read_stops_at_the_cap_and_closes_the_connection() {
        // Chunked, no length announced, never finished: 3 × 600 bytes against a 1024 byte cap.
        let piece = "x".repeat(600);
        let response: &'static str = Box::leak(
            format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n{0}\r\n{1}\r\n{0}\r\n{1}\r\n{0}\r\n{1}\r\n",
                format!("{:x}", piece.len()),
                piece
            )
            .into_boxed_str(),
        );
        let (addr, closed) = test_server::serve_and_wait_for_close(Some(response)).await;
        let request = reqwest::Client::new()
            .post(format!("http://{addr}/"))
            .body("{}");
        let response = send(request, Duration::from_secs(5)).await.unwrap();
        let err = tokio::time::timeout(Duration::from_secs(5), read_body_capped(response, 1024))
            .await
            .expect("the read waited for the rest of the body")
            .unwrap_err();
        assert_eq!(err.kind, UpstreamErrorKind::Protocol);
        assert!(
            err.message.contains("1024 byte limit")
                && err.message.contains("LLM_PROXY__MAX_RESPONSE_BYTES"),
            "{err}"
        );
        assert!(
            tokio::time::timeout(Duration::from_secs(5), closed)
                .await
                .unwrap()
                .unwrap()
        );

        // A body of exactly the cap is read whole.
        let (addr, seen) = test_server::serve_once(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n",
            &"y".repeat(1024),
        )
        .await;
        let request = reqwest::Client::new()
            .post(format!("http://{addr}/"))
            .body("{}");
        let response = send(request, Duration::from_secs(5)).await.unwrap();
        assert_eq!(read_body_capped(response, 1024).await.unwrap().len(), 1024);
        seen.await.unwrap();
    }

    #[test]
    fn decode_all_matches_driver_semantics() {
        let got = decode_all(&[b"a\nbo", b"om\nc\n"], NdjsonSplitter::new(), echo());
        assert_eq!(got, vec![text("a"), Err(UpstreamError::protocol("boom"))]);
        let got = decode_all(&[b"a\nend\nc\n"], NdjsonSplitter::new(), echo());
        assert_eq!(got, vec![text("a")]);
    }

    /// Two MiB: twice the default cap.
    const HUGE: usize = 2 * 1024 * 1024;

    #[test]
    fn ndjson_stops_at_a_line_past_the_cap_without_buffering_it() {
        // The SSE half of this test lives with the parser, in `codelab_protocol::sse`.
        let piece = vec![b'x'; 64 * 1024];
        // NDJSON likewise.
        let mut ndjson = NdjsonSplitter::new();
        assert_eq!(ndjson.push(b"{\"a\":1}\n"), vec!["{\"a\":1}".to_owned()]);
        let mut fed = 0;
        while ndjson.line_too_long().is_none() {
            assert!(ndjson.push(&piece).is_empty());
            fed += piece.len();
            assert!(
                fed <= HUGE,
                "the NDJSON splitter kept buffering past the cap"
            );
        }
        assert!(
            ndjson.buf.is_empty(),
            "the NDJSON splitter still holds the line"
        );
        assert_eq!(ndjson.finish(), None);

        // A line of exactly the cap is fine.
        let mut exact = NdjsonSplitter::with_max_line_bytes(1024);
        let line = "z".repeat(1024);
        assert_eq!(exact.push(format!("{line}\n").as_bytes()), vec![line]);
        assert_eq!(exact.line_too_long(), None);
    }

    #[tokio::test]
    async fn a_line_that_never_ends_fails_the_stream_instead_of_waiting_for_it() {
        // 2 MiB without a newline, then an upstream that stays open forever: the stream must
        // end on the cap, not wait for the line's end.
        let chunks = (0..HUGE / (64 * 1024))
            .map(|_| Ok(Bytes::from(vec![b'x'; 64 * 1024])))
            .collect::<Vec<_>>();
        let body = futures_util::stream::iter(vec![Ok(Bytes::from("a\n"))])
            .chain(futures_util::stream::iter(chunks))
            .chain(futures_util::stream::pending());
        let stream = decode_stream(body, NdjsonSplitter::new(), echo());
        let got: Vec<EventResult> = tokio::time::timeout(Duration::from_secs(10), stream.collect())
            .await
            .expect("the stream waited for the end of the line");
        assert_eq!(got.len(), 2, "{got:?}");
        assert_eq!(got[0], text("a"));
        let error = got[1].clone().unwrap_err();
        assert_eq!(error.kind, UpstreamErrorKind::Protocol);
        assert!(
            error.message.contains("1048576 byte limit")
                && error.message.contains("LLM_PROXY__MAX_STREAM_LINE_BYTES"),
            "{error}"
        );

        let got = decode_all(&[b"a\n", &vec![b'x'; HUGE]], NdjsonSplitter::new(), echo());
        assert_eq!(got.len(), 2, "{got:?}");
        assert!(got[1].is_err());
    }
}
