//! Settings of the LLM proxy: the original's `LLM_PROXY__*` names and defaults, plus the ones
//! its docs promised (concurrency, timeout, retries) and ours (model table file, mock delay).

use std::path::PathBuf;
use std::time::Duration;

use codelab_core::config::{Environment, Secret};
use codelab_core::service::ServiceConfig;
use serde::{Deserialize, Serialize};

/// How model names are served.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LlmMode {
    /// Every model name is served by the mock.
    Mock,
    /// Route through the model table (the original's default name for this mode).
    #[default]
    Litellm,
}

codelab_core::service_config! {
    /// `[llm_proxy]` / `LLM_PROXY__*`.
    pub struct Config {
        /// Shared secret expected in `X-Internal-Auth`.
        pub internal_api_key: Secret = Secret::new("change-me-internal-key"),
        pub llm_mode: LlmMode = LlmMode::Litellm,
        /// One more OpenAI-compatible upstream (an external LiteLLM) for names nothing else
        /// matched.
        pub litellm_proxy_url: Option<String> = None,
        /// Bearer key for `litellm_proxy_url` (the original sends `dummy-key` when empty).
        pub litellm_api_key: Secret = Secret::default(),
        /// Used when a request's `model` is an empty string.
        pub default_model: String = "gpt-3.5-turbo".to_owned(),
        /// Model table in the `litellm_config.yaml` format.
        pub config_file: Option<PathBuf> = None,
        /// Requests served at once; beyond it the proxy answers 429 with `Retry-After`.
        pub max_concurrent_requests: usize = 100,
        /// Seconds to wait for an upstream's answer to start, and between two streamed pieces.
        pub request_timeout: f64 = 120.0,
        /// Extra attempts per deployment on connect errors, 429 and 5xx before the first byte.
        pub max_retries: u32 = 2,
        /// Base of the exponential retry backoff, in milliseconds (jitter is added).
        pub retry_backoff_ms: u64 = 250,
        /// Pause before each streamed piece of the mock model.
        pub mock_token_delay_ms: u64 = 0,
        /// Largest accepted request body.
        pub max_body_bytes: usize = 32 * 1024 * 1024,
        /// Seconds between SSE keep-alive comments.
        pub keepalive_interval: u64 = 15,
        /// `max_tokens` sent to Anthropic when a request has none (required there).
        pub anthropic_max_tokens: u64 = 4096,
        /// Longest line (or SSE event) accepted from an upstream's stream; past it the reply ends
        /// with an error event, so one upstream cannot make the proxy buffer without bound.
        pub max_stream_line_bytes: usize = crate::providers::wire::DEFAULT_MAX_LINE_BYTES,
        /// Largest non-streamed answer body accepted from an upstream (a non-streamed client
        /// request is sent upstream non-streamed); past it the request fails with 502 and
        /// nothing more of the body is read.
        pub max_response_bytes: usize = DEFAULT_MAX_RESPONSE_BYTES,
    }
}

/// A setting that cannot work (reported as a [`codelab_core::ConfigProblem`]).
#[derive(Debug, thiserror::Error)]
pub enum ConfigProblem {
    #[error(
        "LLM_PROXY__INTERNAL_API_KEY must be set to a strong secret (16+ characters, not a default) in {0}"
    )]
    WeakInternalKey(&'static str),
    #[error(
        "LLM_PROXY__REQUEST_TIMEOUT must be a number of seconds above 0 and at most a day (86400)"
    )]
    BadTimeout,
    #[error("LLM_PROXY__MAX_CONCURRENT_REQUESTS must be at least 1")]
    NoConcurrency,
    #[error("LLM_PROXY__MAX_STREAM_LINE_BYTES must be at least {MIN_STREAM_LINE_BYTES}")]
    TinyStreamLineCap,
    #[error("LLM_PROXY__MAX_RESPONSE_BYTES must be at least {MIN_RESPONSE_BYTES}")]
    TinyResponseCap,
}

/// Smallest accepted stream line cap: below it ordinary chunks of a reply would not fit.
pub const MIN_STREAM_LINE_BYTES: usize = 1024;

/// Default cap on a non-streamed upstream answer: far above any real completion (the default
/// stream line cap times 16), yet a bound on what one upstream can make the proxy hold.
pub const DEFAULT_MAX_RESPONSE_BYTES: usize = 16 * crate::providers::wire::DEFAULT_MAX_LINE_BYTES;

/// Smallest accepted answer cap: below it an ordinary completion would not fit.
pub const MIN_RESPONSE_BYTES: usize = 1024;

impl Config {
    /// The per-request timeout as a duration.
    pub fn request_timeout(&self) -> Duration {
        Duration::from_secs_f64(self.request_timeout)
    }
}

impl ServiceConfig for Config {
    const SECTION: &'static str = "llm_proxy";
    const ENV_PREFIX: &'static str = "LLM_PROXY";
    const DEFAULT_PORT: u16 = 8002;

    /// Refuses settings that cannot work, and default secrets outside development.
    fn validate(&self, environment: Environment) -> Result<(), codelab_core::ConfigProblem> {
        if !codelab_core::http::is_valid_timeout(self.request_timeout) {
            return Err(problem(ConfigProblem::BadTimeout));
        }
        if self.max_concurrent_requests == 0 {
            return Err(problem(ConfigProblem::NoConcurrency));
        }
        if self.max_stream_line_bytes < MIN_STREAM_LINE_BYTES {
            return Err(problem(ConfigProblem::TinyStreamLineCap));
        }
        if self.max_response_bytes < MIN_RESPONSE_BYTES {
            return Err(problem(ConfigProblem::TinyResponseCap));
        }
        if environment.is_hardened() && self.internal_api_key.is_weak() {
            return Err(problem(ConfigProblem::WeakInternalKey(
                environment.as_str(),
            )));
        }
        Ok(())
    }
}

fn problem(problem: ConfigProblem) -> codelab_core::ConfigProblem {
    codelab_core::ConfigProblem(problem.to_string())
}
