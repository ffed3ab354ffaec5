//! The normalised event stream every provider is parsed into (one place for tool-call
//! translation), and the upstream error that ends or prevents it.

use std::pin::Pin;
use std::time::Duration;

use codelab_protocol::openai::Usage;
use futures_util::Stream;

/// One step of a model's reply, independent of the provider that produced it.
#[derive(Debug, Clone, PartialEq)]
pub enum LlmEvent {
    /// The reply started; the upstream's id and model name where it reports them.
    Start {
        id: Option<String>,
        model: Option<String>,
    },
    /// A piece of assistant text.
    Text(String),
    /// A piece of reasoning text (Anthropic thinking, Ollama `thinking`, `reasoning_content`).
    Reasoning(String),
    /// A tool call begins. `index` counts tool calls of this reply from 0.
    ToolStart {
        index: u32,
        id: String,
        name: String,
    },
    /// A fragment of the JSON arguments of tool call `index`.
    ToolArgs { index: u32, fragment: String },
    /// The reply is complete.
    Finish { reason: FinishReason },
    /// Token counters reported by the upstream.
    Usage(Usage),
}

/// Why the model stopped, in OpenAI's vocabulary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    Stop,
    Length,
    ToolCalls,
    ContentFilter,
}

impl FinishReason {
    /// The OpenAI `finish_reason` string.
    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
            FinishReason::ToolCalls => "tool_calls",
            FinishReason::ContentFilter => "content_filter",
        }
    }

    /// Parses an OpenAI `finish_reason`; unknown values count as `stop`.
    pub fn from_openai(value: &str) -> Self {
        match value {
            "length" => FinishReason::Length,
            "tool_calls" | "function_call" => FinishReason::ToolCalls,
            "content_filter" => FinishReason::ContentFilter,
            _ => FinishReason::Stop,
        }
    }
}

/// What went wrong talking to an upstream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UpstreamErrorKind {
    /// No connection could be made (refused, DNS, TLS).
    Connect,
    /// The upstream did not answer in time.
    Timeout,
    /// The upstream answered with an HTTP error status.
    Status(u16),
    /// The upstream answered something we could not understand, or broke off mid-answer.
    Protocol,
}

/// An upstream failure, with what the proxy needs to decide on retries and on the client's answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct UpstreamError {
    pub kind: UpstreamErrorKind,
    /// Human-readable cause; never contains credentials.
    pub message: String,
    /// The upstream's error type (`rate_limit_error`, `overloaded_error`, ...), when it sent one.
    pub error_type: Option<String>,
    /// `Retry-After` from the upstream, when it sent one.
    pub retry_after: Option<Duration>,
    /// A final answer: no retry and no fallback (the mock's `::error` directive).
    pub is_final: bool,
}

impl UpstreamError {
    /// An error of `kind` with a message.
    pub fn new(kind: UpstreamErrorKind, message: impl Into<String>) -> Self {
        UpstreamError {
            kind,
            message: message.into(),
            error_type: None,
            retry_after: None,
            is_final: false,
        }
    }

    /// An HTTP status answered by the upstream.
    pub fn status(status: u16, message: impl Into<String>) -> Self {
        Self::new(UpstreamErrorKind::Status(status), message)
    }

    /// A malformed or interrupted answer.
    pub fn protocol(message: impl Into<String>) -> Self {
        Self::new(UpstreamErrorKind::Protocol, message)
    }

    /// Whether another attempt (retry or fallback) may succeed: connect errors, timeouts,
    /// 408, 409, 429 and 5xx (529 included), unless the error is final.
    pub fn is_retryable(&self) -> bool {
        if self.is_final {
            return false;
        }
        match self.kind {
            UpstreamErrorKind::Connect | UpstreamErrorKind::Timeout => true,
            UpstreamErrorKind::Status(s) => s == 408 || s == 409 || s == 429 || s >= 500,
            UpstreamErrorKind::Protocol => false,
        }
    }

    /// Classifies a reqwest transport error (never a status: those are read from the response).
    pub fn from_transport(err: &reqwest::Error) -> Self {
        let kind = if err.is_timeout() {
            UpstreamErrorKind::Timeout
        } else if err.is_connect() {
            UpstreamErrorKind::Connect
        } else {
            UpstreamErrorKind::Protocol
        };
        // reqwest's Display names the URL but never headers, so no key can leak here.
        UpstreamError::new(
            kind,
            format!("upstream request failed: {}", without_url_query(err)),
        )
    }
}

fn without_url_query(err: &reqwest::Error) -> String {
    // Azure puts the api-version in the query; strip queries anyway in case a key sits there.
    let mut text = err.to_string();
    if let Some(url) = err.url()
        && let Some(query) = url.query()
    {
        text = text.replace(&format!("?{query}"), "");
    }
    text
}

/// A stream of events from one upstream reply.
pub type EventStream = Pin<Box<dyn Stream<Item = Result<LlmEvent, UpstreamError>> + Send>>;
