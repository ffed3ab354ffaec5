//! Metric names of the proxy (`codelab_llm_proxy_*`); labels are bounded: provider and status.

use std::sync::OnceLock;

use metrics::{Counter, Gauge, Histogram};

use crate::events::{UpstreamError, UpstreamErrorKind};
use crate::providers::ProviderKind;

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

/// The series every served request records, by provider: handles kept once made, so a request
/// does not build label sets and look them up in the recorder's registry each time.
///
/// Each handle is made on its first use, so `/metrics` lists the same series as when they were
/// looked up every time (none for what never happened).
#[derive(Debug)]
pub struct ProviderSeries {
    provider: ProviderKind,
    requests_ok: OnceLock<Counter>,
    requests_error: OnceLock<Counter>,
    duration: OnceLock<Histogram>,
    ttft: OnceLock<Histogram>,
    upstream_latency: OnceLock<Histogram>,
    tokens_in: OnceLock<Counter>,
    tokens_out: OnceLock<Counter>,
}

/// Request outcomes recorded per provider.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    Error,
}

impl ProviderSeries {
    const fn new(provider: ProviderKind) -> Self {
        ProviderSeries {
            provider,
            requests_ok: OnceLock::new(),
            requests_error: OnceLock::new(),
            duration: OnceLock::new(),
            ttft: OnceLock::new(),
            upstream_latency: OnceLock::new(),
            tokens_in: OnceLock::new(),
            tokens_out: OnceLock::new(),
        }
    }

    /// The series of `provider`.
    pub fn of(provider: ProviderKind) -> &'static ProviderSeries {
        static SERIES: [ProviderSeries; 5] = [
            ProviderSeries::new(ProviderKind::OpenAi),
            ProviderSeries::new(ProviderKind::Azure),
            ProviderSeries::new(ProviderKind::Anthropic),
            ProviderSeries::new(ProviderKind::Ollama),
            ProviderSeries::new(ProviderKind::Mock),
        ];
        let index = match provider {
            ProviderKind::OpenAi => 0,
            ProviderKind::Azure => 1,
            ProviderKind::Anthropic => 2,
            ProviderKind::Ollama => 3,
            ProviderKind::Mock => 4,
        };
        &SERIES[index]
    }

    /// `codelab_llm_proxy_requests_total{provider, outcome}`.
    pub fn requests(&self, outcome: Outcome) -> &Counter {
        let label = self.provider.label();
        match outcome {
            Outcome::Ok => handle(
                &self.requests_ok,
                || metrics::counter!(REQUESTS, "provider" => label, "outcome" => "ok"),
            ),
            Outcome::Error => handle(
                &self.requests_error,
                || metrics::counter!(REQUESTS, "provider" => label, "outcome" => "error"),
            ),
        }
    }

    /// `codelab_llm_proxy_request_duration_seconds{provider}`.
    pub fn duration(&self) -> &Histogram {
        let label = self.provider.label();
        handle(
            &self.duration,
            || metrics::histogram!(REQUEST_DURATION, "provider" => label),
        )
    }

    /// `codelab_llm_proxy_ttft_seconds{provider}`.
    pub fn ttft(&self) -> &Histogram {
        let label = self.provider.label();
        handle(
            &self.ttft,
            || metrics::histogram!(TTFT, "provider" => label),
        )
    }

    /// `codelab_llm_proxy_upstream_latency_seconds{provider}`.
    pub fn upstream_latency(&self) -> &Histogram {
        let label = self.provider.label();
        handle(
            &self.upstream_latency,
            || metrics::histogram!(UPSTREAM_LATENCY, "provider" => label),
        )
    }

    /// `codelab_llm_proxy_tokens_total{provider, direction="in"}` (prompt tokens).
    pub fn tokens_in(&self) -> &Counter {
        let label = self.provider.label();
        handle(
            &self.tokens_in,
            || metrics::counter!(TOKENS, "provider" => label, "direction" => "in"),
        )
    }

    /// `codelab_llm_proxy_tokens_total{provider, direction="out"}` (completion tokens).
    pub fn tokens_out(&self) -> &Counter {
        let label = self.provider.label();
        handle(
            &self.tokens_out,
            || metrics::counter!(TOKENS, "provider" => label, "direction" => "out"),
        )
    }
}

/// The handle in `cell`, made by `make` the first time. The process's recorder is installed
/// first: a handle made before it exists would record nothing, for good.
fn handle<T>(cell: &OnceLock<T>, make: impl FnOnce() -> T) -> &T {
    cell.get_or_init(|| {
        let _ = codelab_core::telemetry::metrics_handle();
        make()
    })
}

fn inflight_streams() -> &'static Gauge {
    static GAUGE: OnceLock<Gauge> = OnceLock::new();
    handle(&GAUGE, || metrics::gauge!(INFLIGHT_STREAMS))
}

/// Keeps the in-flight gauge right however a stream ends (finished, failed or dropped).
#[derive(Debug)]
pub struct InflightGuard;

impl InflightGuard {
    /// Counts one more stream in flight.
    pub fn new() -> Self {
        inflight_streams().increment(1.0);
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
        inflight_streams().decrement(1.0);
    }
}
