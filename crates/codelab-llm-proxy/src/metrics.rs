//! Metric names of the proxy (`codelab_llm_proxy_*`); labels are bounded: provider and status.

use crate::events::{UpstreamError, UpstreamErrorKind};

/// Chat completion requests by provider and outcome (`ok`, `error`, `rejected`).
pub const REQUESTS: &str = "codelab_llm_proxy_requests_total";
/// Failed upstream attempts by provider and status (`429`, `5xx`, `connect`, `timeout`, ...).
pub const UPSTREAM_ERRORS: &str = "codelab_llm_proxy_upstream_errors_total";
/// Retries of one deployment.
pub const RETRIES: &str = "codelab_llm_proxy_retries_total";
/// Switches to another deployment or fallback model.
pub const FALLBACKS: &str = "codelab_llm_proxy_fallbacks_total";
/// Time from request arrival to the first token.
pub const TTFT: &str = "codelab_llm_proxy_ttft_seconds";
/// Time from sending upstream to its first event.
pub const UPSTREAM_LATENCY: &str = "codelab_llm_proxy_upstream_latency_seconds";
/// Whole request duration, first byte to last.
pub const REQUEST_DURATION: &str = "codelab_llm_proxy_request_duration_seconds";
/// Tokens by provider and direction (`in` = prompt, `out` = completion).
pub const TOKENS: &str = "codelab_llm_proxy_tokens_total";
/// Streams currently being relayed.
pub const INFLIGHT_STREAMS: &str = "codelab_llm_proxy_inflight_streams";
/// Requests refused by the concurrency limit.
pub const CONCURRENCY_REJECTIONS: &str = "codelab_llm_proxy_concurrency_rejections_total";

/// A bounded status label for an upstream failure.
pub fn status_label(error: &UpstreamError) -> &'static str {
    match error.kind {
        UpstreamErrorKind::Connect => "connect",
        UpstreamErrorKind::Timeout => "timeout",
        UpstreamErrorKind::Protocol => "protocol",
        UpstreamErrorKind::Status(429) => "429",
        UpstreamErrorKind::Status(s) if s >= 500 => "5xx",
        UpstreamErrorKind::Status(_) => "4xx",
    }
}

/// Keeps the in-flight gauge right however a stream ends (finished, failed or dropped).
#[derive(Debug)]
pub struct InflightGuard;

impl InflightGuard {
    /// Counts one more stream in flight.
    pub fn new() -> Self {
        metrics::gauge!(INFLIGHT_STREAMS).increment(1.0);
        InflightGuard
    }
}

impl Default for InflightGuard {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for InflightGuard {
    fn drop(&mut self) {
        metrics::gauge!(INFLIGHT_STREAMS).decrement(1.0);
    }
}
