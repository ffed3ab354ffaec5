//! The CodeLab LLM proxy: one OpenAI-compatible endpoint in front of every model provider.
//!
//! It owns provider translation, routing over the model table, retries and fallbacks, the
//! concurrency limit and the deterministic mock model. It never stores conversations and never
//! logs credentials or message contents above debug level.

pub mod config;
pub mod dispatch;
pub mod events;
pub mod handlers;
pub mod metrics;
pub mod pricing;
pub mod providers;
pub mod relay;
pub mod render;
pub mod routing;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::routing::{get, post};
use codelab_core::http::{
    ErrorShape, Readiness, ServiceInfo, common_routes, require_internal_auth, with_standard_layers,
};
use codelab_core::service::{ConfigProblem, Service, SharedDeps};
use tokio::sync::Semaphore;

pub use config::Config;
use dispatch::Dispatcher;
use providers::Providers;
use providers::mock::MockProvider;
use routing::{ModelTable, ProviderEnv, RoutingError};

/// Service name in health answers, logs and metrics.
pub const SERVICE_NAME: &str = "llm-proxy";
/// The LLM proxy, as `codelab serve llm-proxy`, `codelab up` and the test stack run it.
pub type ProxyService = AppState;

/// Paths served without `X-Internal-Auth`, as in the original (note: `/llm/models` is open but
/// `/v1/llm/models` is not).
const OPEN_PATHS: &[&str] = &["/health", "/ready", "/metrics", "/llm/models"];

/// Why the proxy could not start.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error(transparent)]
    Config(#[from] ConfigProblem),
    #[error(transparent)]
    ModelTable(#[from] RoutingError),
    #[error("cannot create the HTTP client: {0}")]
    HttpClient(String),
}

/// Shared state of the proxy's handlers.
pub struct AppState {
    pub info: ServiceInfo,
    pub dispatcher: Dispatcher,
    pub limiter: Arc<Semaphore>,
}

impl Service for AppState {
    const NAME: &'static str = SERVICE_NAME;
    type Config = Config;
    type BuildError = BuildError;

    /// Loads the model table and prepares the pooled client. Provider keys
    /// and `os.environ/NAME` references are read from `deps.env`.
    async fn start(config: Config, deps: SharedDeps) -> Result<Arc<AppState>, BuildError> {
        let provider_env = ProviderEnv::from_pairs(deps.env.iter());
        let table = match &config.config_file {
            Some(path) => ModelTable::load(path, &provider_env)?,
            None => ModelTable::builtin(),
        };
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .pool_idle_timeout(Duration::from_secs(90))
            .tcp_nodelay(true)
            .user_agent(concat!("codelab-llm-proxy/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| BuildError::HttpClient(e.to_string()))?;
        let providers = Providers {
            http,
            mock: MockProvider {
                token_delay: Duration::from_millis(config.mock_token_delay_ms),
            },
            anthropic_default_max_tokens: config.anthropic_max_tokens,
            max_stream_line_bytes: config.max_stream_line_bytes,
            max_response_bytes: config.max_response_bytes,
        };
        let info = ServiceInfo::new(SERVICE_NAME, config.version.clone())
            .with_error_shape(ErrorShape::OpenAi);
        let limiter = Arc::new(Semaphore::new(config.max_concurrent_requests));
        tracing::info!(
            models = table.list().len(),
            mode = ?config.llm_mode,
            external_litellm = config.litellm_proxy_url.is_some(),
            "llm proxy ready"
        );
        let dispatcher = Dispatcher {
            config: Arc::new(config),
            table,
            env: provider_env,
            providers,
        };
        Ok(Arc::new(AppState {
            info,
            dispatcher,
            limiter,
        }))
    }

    /// All routes of the proxy, with internal auth, limits and telemetry applied.
    fn router(state: Arc<AppState>) -> Router {
        let api = Router::new()
            .route(
                "/v1/chat/completions",
                post(handlers::create_chat_completion),
            )
            .route("/chat/completions", post(handlers::create_chat_completion))
            .route("/v1/llm/models", get(handlers::list_models))
            .route("/llm/models", get(handlers::list_models))
            .route("/v1/models", get(handlers::list_models_openai))
            .with_state(state.clone());
        let key = state.dispatcher.config.internal_api_key.clone();
        let body_limit = state.dispatcher.config.max_body_bytes;
        let app = require_internal_auth(api, key, OPEN_PATHS)
            .merge(common_routes(state.info.clone(), Readiness::new()));
        with_standard_layers(app, &state.info, body_limit)
    }
}
