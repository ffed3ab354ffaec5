//! Sending one request upstream: route resolution, retries with backoff and jitter, fallbacks,
//! and the per-request timeout. Everything here happens before the first byte reaches the
//! client; once a stream is handed back, its failures are reported in the stream.

use std::sync::Arc;
use std::time::{Duration, Instant};

use codelab_protocol::openai::ChatCompletionRequest;
use futures_util::StreamExt;
use rand::Rng;
use secrecy::SecretString;

use crate::config::{Config, LlmMode};
use crate::events::{EventStream, LlmEvent, UpstreamError, UpstreamErrorKind};
use crate::metrics::{self as m, ProviderSeries};
use crate::pricing::Prices;
use crate::providers::{Deployment, ProviderKind, Providers};
use crate::relay::IdleTimeout;
use crate::routing::{self, ModelTable, ProviderEnv, Route};

/// Longest `Retry-After` the proxy waits for itself before trying another deployment instead.
const MAX_HONOURED_RETRY_AFTER: Duration = Duration::from_secs(2);
/// Cap of one backoff pause.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// The request could not be routed at all.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownModel(pub String);

/// An upstream stream that has produced its first event, ready to be sent to the client.
pub struct OpenStream {
    pub provider: ProviderKind,
    /// The model name the answering deployment was sent (after routing and fallbacks).
    pub upstream_model: String,
    /// Its prices, to put the answer's cost in its usage.
    pub prices: Option<Prices>,
    /// Events: the first one already pulled (so failures before it could fall back).
    pub events: EventStream,
    pub started_at: Instant,
}

/// Routes and sends requests; shared by all handlers.
pub struct Dispatcher {
    pub config: Arc<Config>,
    pub table: ModelTable,
    pub env: ProviderEnv,
    pub providers: Providers,
}

impl Dispatcher {
    /// The deployments to try for `model`, fallbacks included, in order.
    pub fn plan(&self, model: &str) -> Result<Vec<Deployment>, UnknownModel> {
        let mut plan = self
            .route(model)
            .ok_or_else(|| UnknownModel(model.to_owned()))?
            .deployments;
        for fallback in self.table.fallbacks_for(model) {
            if let Some(route) = self.route(fallback) {
                plan.extend(route.deployments);
            }
        }
        Ok(plan)
    }

    fn route(&self, model: &str) -> Option<Route> {
        if self.config.llm_mode == LlmMode::Mock {
            return Some(Route {
                deployments: vec![routing::mock_deployment(model)],
            });
        }
        if let Some(route) = self.table.exact(model) {
            return Some(route);
        }
        if let Some(deployment) = routing::deployment_for(model, &self.env) {
            return Some(Route {
                deployments: vec![deployment],
            });
        }
        let base = self
            .config
            .litellm_proxy_url
            .as_deref()
            .filter(|u| !u.trim().is_empty())?;
        let key = self.config.litellm_api_key.expose();
        // The original sends a placeholder bearer when no LiteLLM key is configured.
        let key = if key.is_empty() { "dummy-key" } else { key };
        Some(Route {
            deployments: vec![Deployment {
                provider: ProviderKind::OpenAi,
                upstream_model: model.to_owned(),
                api_base: format!("{}/v1", base.trim_end_matches('/')),
                api_key: Some(SecretString::from(key.to_owned())),
                api_version: None,
                timeout: None,
                prices: None,
            }],
        })
    }

    fn retries(&self) -> u32 {
        self.table.num_retries.unwrap_or(self.config.max_retries)
    }

    /// Tries each deployment of `plan` (with retries) until one produces its first event.
    /// The error of the last attempt is returned when all fail.
    pub async fn open(
        &self,
        plan: &[Deployment],
        request: &ChatCompletionRequest,
    ) -> Result<OpenStream, UpstreamError> {
        let mut last_error = UpstreamError::protocol("no upstream deployment to try");
        for (position, deployment) in plan.iter().enumerate() {
            if position > 0 {
                metrics::counter!(m::FALLBACKS, "provider" => deployment.provider.label())
                    .increment(1);
            }
            let mut attempt = 0;
            loop {
                match self.open_once(deployment, request).await {
                    Ok(stream) => return Ok(stream),
                    Err(error) => {
                        let label = deployment.provider.label();
                        metrics::counter!(m::UPSTREAM_ERRORS, "provider" => label, "status" => m::status_label(&error))
                            .increment(1);
                        tracing::warn!(
                            provider = label,
                            model = %deployment.upstream_model,
                            attempt,
                            error = %error.message,
                            "upstream attempt failed"
                        );
                        if !error.is_retryable() {
                            return Err(error);
                        }
                        let wait = self.backoff(attempt, error.retry_after);
                        let retry_here = attempt < self.retries() && wait.is_some();
                        last_error = error;
                        match wait {
                            Some(wait) if retry_here => {
                                metrics::counter!(m::RETRIES, "provider" => label).increment(1);
                                tokio::time::sleep(wait).await;
                                attempt += 1;
                            }
                            _ => break,
                        }
                    }
                }
            }
        }
        Err(last_error)
    }

    /// Exponential backoff with jitter; `None` when the upstream asked for a longer pause than
    /// the proxy is willing to hold the client for (then the next deployment is tried).
    fn backoff(&self, attempt: u32, retry_after: Option<Duration>) -> Option<Duration> {
        let base = Duration::from_millis(self.config.retry_backoff_ms);
        let exponential = base.saturating_mul(1 << attempt.min(8)).min(MAX_BACKOFF);
        let jitter_ms = self.config.retry_backoff_ms.max(1);
        let jitter = Duration::from_millis(rand::rng().random_range(0..jitter_ms));
        let wait = exponential + jitter;
        match retry_after {
            Some(asked) if asked > MAX_HONOURED_RETRY_AFTER => None,
            Some(asked) => Some(wait.max(asked)),
            None => Some(wait),
        }
    }

    async fn open_once(
        &self,
        deployment: &Deployment,
        request: &ChatCompletionRequest,
    ) -> Result<OpenStream, UpstreamError> {
        let timeout = deployment
            .timeout
            .unwrap_or_else(|| self.config.request_timeout());
        let started_at = Instant::now();
        let opened =
            tokio::time::timeout(timeout, self.providers.open(deployment, request, timeout))
                .await
                .map_err(|_| timeout_error(timeout))??;
        let mut events = with_idle_timeout(opened, timeout);
        // Pull the first event now: a failure before it can still be retried or fall back.
        let first = match events.next().await {
            Some(Ok(event)) => event,
            Some(Err(error)) => return Err(error),
            None => {
                return Err(UpstreamError::protocol(
                    "upstream closed the stream without an answer",
                ));
            }
        };
        ProviderSeries::of(deployment.provider)
            .upstream_latency()
            .record(started_at.elapsed().as_secs_f64());
        let events: EventStream =
            Box::pin(futures_util::stream::once(async { Ok(first) }).chain(events));
        Ok(OpenStream {
            provider: deployment.provider,
            upstream_model: deployment.upstream_model.clone(),
            prices: deployment.prices,
            events,
            started_at,
        })
    }
}

fn timeout_error(timeout: Duration) -> UpstreamError {
    UpstreamError::new(
        UpstreamErrorKind::Timeout,
        format!(
            "upstream did not answer within {:.1}s",
            timeout.as_secs_f64()
        ),
    )
}

/// Ends the stream with a timeout error when the upstream stays silent longer than `timeout`.
fn with_idle_timeout(events: EventStream, timeout: Duration) -> EventStream {
    Box::pin(IdleTimeout::new(events, timeout, move || {
        Err(timeout_error(timeout))
    }))
}

/// Whether an event counts as the first token for time-to-first-token.
pub fn is_token(event: &LlmEvent) -> bool {
    matches!(
        event,
        LlmEvent::Text(_) | LlmEvent::Reasoning(_) | LlmEvent::ToolStart { .. }
    )
}
