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
pub mod providers;
pub mod render;
pub mod routing;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::routing::{get, post};
use codelab_core::config::Environment;
use codelab_core::http::{
    Readiness, ServiceInfo, common_routes, require_internal_auth, with_standard_layers,
};
use tokio::sync::Semaphore;

pub use config::Config;
use dispatch::Dispatcher;
use providers::Providers;
use providers::mock::MockProvider;
use routing::{ModelTable, ProviderEnv, RoutingError};

/// Service name in health answers, logs and metrics.
pub const SERVICE_NAME: &str = "llm-proxy";

/// Paths served without `X-Internal-Auth`, as in the original (note: `/llm/models` is open but
/// `/v1/llm/models` is not).
const OPEN_PATHS: &[&str] = &["/health", "/ready", "/metrics", "/llm/models"];

/// What the proxy needs from outside its config section.
#[derive(Debug, Clone, Default)]
pub struct Deps {
    pub environment: Environment,
    /// Provider keys and base URLs (`OPENAI_API_KEY`, `OLLAMA_API_BASE`, `os.environ/NAME`).
    pub provider_env: ProviderEnv,
}

/// Why the proxy could not start.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error(transparent)]
    Config(#[from] config::ConfigProblem),
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

/// Validates the config, loads the model table and prepares the pooled client.
pub async fn build(config: Config, deps: Deps) -> Result<Arc<AppState>, BuildError> {
    config.validate(deps.environment)?;
    let table = match &config.config_file {
        Some(path) => ModelTable::load(path, &deps.provider_env)?,
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
    };
    let info = ServiceInfo::new(SERVICE_NAME, config.version.clone());
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
        env: deps.provider_env,
        providers,
    };
    Ok(Arc::new(AppState {
        info,
        dispatcher,
        limiter,
    }))
}

/// All routes of the proxy, with internal auth, limits and telemetry applied.
pub fn router(state: Arc<AppState>) -> Router {
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
