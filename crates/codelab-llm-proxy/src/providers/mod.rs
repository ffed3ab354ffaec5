//! Provider clients. Each turns an OpenAI-shaped request into the provider's own request,
//! sends it with a pooled client, and parses the answer into [`LlmEvent`]s.
//!
//! A provider returns once the upstream has answered with a success status: errors before that
//! point are an `Err` (so the router may retry or fall back), errors after it arrive in the
//! stream.

pub mod anthropic;
pub mod fast_chunk;
pub mod mock;
pub mod ollama;
pub mod openai;
pub mod wire;

use std::time::Duration;

use codelab_protocol::openai::ChatCompletionRequest;
use secrecy::SecretString;

use crate::events::{EventStream, UpstreamError};
use crate::pricing::Prices;

/// The wire format a deployment speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ProviderKind {
    /// OpenAI Chat Completions: OpenAI, OpenRouter, vLLM, LM Studio, LiteLLM, Ollama `/v1`.
    OpenAi,
    /// Azure OpenAI: OpenAI wire format, deployment in the path, `api-key` header.
    Azure,
    /// Anthropic Messages API.
    Anthropic,
    /// Ollama native `/api/chat` (NDJSON).
    Ollama,
    /// The built-in deterministic mock.
    Mock,
}

impl ProviderKind {
    /// Short name used in metrics labels and logs.
    pub fn label(self) -> &'static str {
        match self {
            ProviderKind::OpenAi => "openai",
            ProviderKind::Azure => "azure",
            ProviderKind::Anthropic => "anthropic",
            ProviderKind::Ollama => "ollama",
            ProviderKind::Mock => "mock",
        }
    }
}

/// One upstream target: where to send a request for a model name, and how.
#[derive(Debug, Clone)]
pub struct Deployment {
    pub provider: ProviderKind,
    /// The model name the upstream expects (Azure: the deployment name).
    pub upstream_model: String,
    /// Base URL, e.g. `https://api.openai.com/v1`, `https://api.anthropic.com`, `http://localhost:11434`.
    pub api_base: String,
    pub api_key: Option<SecretString>,
    /// Azure `api-version`.
    pub api_version: Option<String>,
    /// Per-deployment timeout overriding the proxy's request timeout.
    pub timeout: Option<Duration>,
    /// USD per token, from the model table (none: answers report no cost).
    pub prices: Option<Prices>,
}

/// Shared, pooled HTTP client used by every provider.
#[derive(Debug, Clone)]
pub struct Providers {
    pub http: reqwest::Client,
    pub mock: mock::MockProvider,
    /// `max_tokens` sent to Anthropic when the request has none (the field is required there).
    pub anthropic_default_max_tokens: u64,
    /// Longest line (or SSE event) accepted from an upstream stream
    /// (`LLM_PROXY__MAX_STREAM_LINE_BYTES`); past it the reply fails.
    pub max_stream_line_bytes: usize,
    /// Largest non-streamed answer body accepted from an upstream
    /// (`LLM_PROXY__MAX_RESPONSE_BYTES`); past it the request fails.
    pub max_response_bytes: usize,
}

/// How one upstream request is sent: what every provider client needs besides the
/// deployment and the request.
#[derive(Debug, Clone, Copy)]
pub struct Transport<'a> {
    /// The pooled HTTP client.
    pub http: &'a reqwest::Client,
    /// Bounds the wait for the answer's headers (a deployment's own `timeout` wins).
    pub timeout: Duration,
    /// Longest line (or SSE event) accepted from the stream; past it the reply fails.
    pub max_line_bytes: usize,
    /// Largest non-streamed answer body accepted; past it the request fails unread.
    pub max_response_bytes: usize,
}

impl Providers {
    /// Sends `request` to `deployment` and returns its event stream once the upstream has
    /// accepted it. `timeout` bounds the wait for the answer's headers.
    pub async fn open(
        &self,
        deployment: &Deployment,
        request: &ChatCompletionRequest,
        timeout: Duration,
    ) -> Result<EventStream, UpstreamError> {
        let transport = Transport {
            http: &self.http,
            timeout,
            max_line_bytes: self.max_stream_line_bytes,
            max_response_bytes: self.max_response_bytes,
        };
        match deployment.provider {
            ProviderKind::OpenAi | ProviderKind::Azure => {
                openai::open(&transport, deployment, request).await
            }
            ProviderKind::Anthropic => {
                anthropic::open(
                    &transport,
                    deployment,
                    request,
                    self.anthropic_default_max_tokens,
                )
                .await
            }
            ProviderKind::Ollama => ollama::open(&transport, deployment, request).await,
            ProviderKind::Mock => self.mock.open(request),
        }
    }
}
