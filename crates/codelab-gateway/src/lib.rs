//! The CodeLab gateway: the IDE's WebSocket and REST API in front of the agent runtime.
//!
//! It authenticates users (JWTs verified locally against the auth service's JWKS), relays IDE
//! frames to the runtime and renders the runtime's events for each client profile, and fans
//! events out (Redis pub/sub) to whichever replica holds a session's socket. It stores nothing
//! itself and never executes tools.

pub mod auth;
pub mod config;
pub mod fanout;
pub mod metrics;
pub mod openapi;
pub mod rest;
pub mod runtime_client;
pub mod ws;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::response::IntoResponse;
use codelab_core::clock::{SharedClock, SystemClock};
use codelab_core::config::Environment;
use codelab_core::http::{Readiness, ServiceInfo, common_routes, with_standard_layers};
use codelab_core::telemetry::metrics_handle;
use futures_util::FutureExt;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower_http::cors::{AllowOrigin, CorsLayer};

pub use config::Config;
use config::WsAuthMode;

/// Service name in health answers, logs and metric names (`codelab_gateway_*`).
pub const SERVICE_NAME: &str = "gateway";
/// Largest clock skew accepted on token times (auth spec §11: at most 60 s).
pub const MAX_JWT_LEEWAY: u64 = 60;

/// What the gateway needs from outside its config section.
#[derive(Clone)]
pub struct Deps {
    /// The deployment profile.
    pub environment: Environment,
    /// Cancelled when the process shuts down (sockets close, relays stop).
    pub shutdown: CancellationToken,
    /// Time for token expiry checks and the JWKS cache.
    pub clock: SharedClock,
}

impl Deps {
    /// Production dependencies for `environment`: the system clock, a fresh shutdown token.
    pub fn new(environment: Environment) -> Self {
        Self {
            environment,
            shutdown: CancellationToken::new(),
            clock: Arc::new(SystemClock),
        }
    }
}

impl Default for Deps {
    fn default() -> Self {
        Self::new(Environment::Development)
    }
}

impl std::fmt::Debug for Deps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Deps")
            .field("environment", &self.environment)
            .finish_non_exhaustive()
    }
}

/// Why the gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// A setting is unusable or refused by the profile.
    #[error("invalid gateway configuration: {0}")]
    Config(String),
    /// The runtime client cannot be made from the settings.
    #[error(transparent)]
    Runtime(#[from] runtime_client::RuntimeError),
    /// Redis for the fan-out cannot be reached.
    #[error(transparent)]
    Fanout(#[from] fanout::FanoutError),
    /// The HTTP client for the JWKS cannot be made.
    #[error("cannot create the HTTP client: {0}")]
    HttpClient(String),
}

/// Shared state of the gateway's handlers (REST and WebSocket).
#[derive(Debug)]
pub struct AppState {
    /// The effective configuration.
    pub config: Arc<Config>,
    /// Name, version, start time.
    pub info: ServiceInfo,
    /// The deployment profile.
    pub environment: Environment,
    /// The agent runtime's internal API.
    pub runtime: runtime_client::RuntimeClient,
    /// JWT and internal-key authentication.
    pub auth: auth::Authenticator,
    /// Events to every socket of a session, on any replica.
    pub fanout: fanout::Fanout,
    /// Cancelled on shutdown.
    pub shutdown: CancellationToken,
    /// Background work that must finish before the process exits (REST relays of runtime
    /// streams to the fan-out).
    pub tasks: TaskTracker,
}

impl AppState {
    /// Waits up to `timeout` for tracked background work after the listener stopped; returns
    /// whether everything finished.
    pub async fn drain(&self, timeout: Duration) -> bool {
        self.tasks.close();
        tokio::time::timeout(timeout, self.tasks.wait())
            .await
            .is_ok()
    }
}

/// Refuses settings that cannot work, and those staging and production must never run with.
/// Expects `ws_auth` resolved (see [`build`]).
fn validate(config: &Config, environment: Environment) -> Result<(), BuildError> {
    let problem = |text: &str| Err(BuildError::Config(text.to_owned()));
    if environment.is_hardened() {
        if !config.use_jwt_auth {
            return problem(
                "use_jwt_auth = false (GATEWAY__USE_JWT_AUTH) lets anyone act as the development \
                 user; it is refused outside ENVIRONMENT=development",
            );
        }
        if config.ws_auth_mode() == WsAuthMode::Off {
            return problem(
                "ws_auth = off (GATEWAY__WS_AUTH) accepts unauthenticated sockets; it is refused \
                 outside ENVIRONMENT=development (use required, or session for the Flutter IDE)",
            );
        }
        if config.internal_api_key.is_weak() {
            return problem(
                "internal_api_key (GATEWAY__INTERNAL_API_KEY) is missing, shorter than 16 \
                 characters or a published placeholder; staging and production need a strong key",
            );
        }
        if !config.service_api_key.is_empty() && config.service_api_key.is_weak() {
            return problem(
                "service_api_key (GATEWAY__SERVICE_API_KEY) is shorter than 16 characters or a \
                 published placeholder; set a strong key (openssl rand -hex 32) or leave it empty \
                 to accept no service callers",
            );
        }
    }
    if config.internal_api_key.is_empty() {
        return problem("internal_api_key (GATEWAY__INTERNAL_API_KEY) must not be empty");
    }
    // A leaked runtime key must not also let its holder act as any user here (issue 14,
    // finding 6; docs/gateway.md "Service callers").
    if !config.service_api_key.is_empty()
        && config
            .service_api_key
            .matches(config.internal_api_key.expose().as_bytes())
    {
        return problem(
            "service_api_key (GATEWAY__SERVICE_API_KEY) must differ from internal_api_key \
             (GATEWAY__INTERNAL_API_KEY), the key the gateway sends to the runtime",
        );
    }
    ws::origin::validate_allowed_origins(&config.ws_allowed_origins, environment)
        .map_err(BuildError::Config)?;
    let auth_url = config.auth_service_url.trim();
    if !(auth_url.starts_with("http://") || auth_url.starts_with("https://")) {
        return Err(BuildError::Config(format!(
            "auth_service_url must be an http(s) URL, got {auth_url:?}"
        )));
    }
    if config.jwt_issuer.trim().is_empty() || config.jwt_audience.trim().is_empty() {
        return problem("jwt_issuer and jwt_audience must not be empty");
    }
    if config.jwt_leeway > MAX_JWT_LEEWAY {
        return Err(BuildError::Config(format!(
            "jwt_leeway must be at most {MAX_JWT_LEEWAY} seconds, got {}",
            config.jwt_leeway
        )));
    }
    Ok(())
}

/// CORS: exactly the configured origins; in development with no list, any origin (without
/// credentials); outside development never `*`, and no list means no cross-origin access.
fn cors_layer(config: &Config, environment: Environment) -> Result<Option<CorsLayer>, BuildError> {
    let base = CorsLayer::new()
        .allow_methods([
            Method::GET,
            Method::POST,
            Method::PATCH,
            Method::DELETE,
            Method::OPTIONS,
        ])
        .allow_headers([header::AUTHORIZATION, header::CONTENT_TYPE])
        .max_age(Duration::from_secs(600));
    let origins: Vec<&str> = config
        .cors_origins
        .iter()
        .map(|o| o.trim())
        .filter(|o| !o.is_empty())
        .collect();
    let development = environment == Environment::Development;
    if origins.contains(&"*") {
        if development {
            return Ok(Some(base.allow_origin(AllowOrigin::any())));
        }
        return Err(BuildError::Config(
            "cors_origins must list origins; \"*\" is only allowed in development".to_owned(),
        ));
    }
    if origins.is_empty() {
        return Ok(development.then(|| base.allow_origin(AllowOrigin::any())));
    }
    let mut list = Vec::new();
    for origin in origins {
        let value = HeaderValue::from_str(origin.trim_end_matches('/'))
            .map_err(|_| BuildError::Config(format!("invalid CORS origin {origin:?}")))?;
        list.push(value);
    }
    Ok(Some(base.allow_origin(AllowOrigin::list(list))))
}

/// Validates the settings, prepares the runtime client, the authenticator and the fan-out
/// (Redis when `redis_url` is set).
pub async fn build(mut config: Config, deps: Deps) -> Result<Arc<AppState>, BuildError> {
    let _ = metrics_handle();
    metrics::describe();
    let ws_auth = config
        .ws_auth
        .unwrap_or_else(|| WsAuthMode::default_for(deps.environment));
    config.ws_auth = Some(ws_auth);
    validate(&config, deps.environment)?;
    // Validated here so a bad setting stops startup rather than the first request.
    cors_layer(&config, deps.environment)?;
    let runtime = runtime_client::RuntimeClient::new(&config)?;
    let auth = auth::Authenticator::new(&config, deps.clock.clone())
        .map_err(|e| BuildError::HttpClient(e.to_string()))?;
    let fanout = fanout::Fanout::connect(config.redis_url.as_deref(), &config.redis_prefix).await?;
    if !config.use_jwt_auth {
        tracing::warn!(
            "use_jwt_auth is false: REST calls without a token act as the development user \"dev\""
        );
    }
    match ws_auth {
        WsAuthMode::Off => {
            tracing::warn!("ws_auth is off: WebSocket connections are not authenticated");
        }
        WsAuthMode::Session if deps.environment.is_hardened() => tracing::warn!(
            "ws_auth is session: a socket without a token that presents a session id may send \
             messages and tool results for its owner (the Flutter IDE's mode); use required \
             when every client can send a token"
        ),
        _ => {}
    }
    if config.service_api_key.is_empty() {
        tracing::info!("service_api_key is empty: X-Internal-Auth callers are refused");
    }
    let info = ServiceInfo::new(SERVICE_NAME, config.version.clone());
    tracing::info!(
        environment = %deps.environment,
        agent_url = %config.agent_url,
        jwks = %auth.jwks().url(),
        issuer = %config.jwt_issuer,
        use_jwt_auth = config.use_jwt_auth,
        ws_auth = ?ws_auth,
        redis = fanout.is_redis(),
        "gateway ready"
    );
    Ok(Arc::new(AppState {
        config: Arc::new(config),
        info,
        environment: deps.environment,
        runtime,
        auth,
        fanout,
        shutdown: deps.shutdown,
        tasks: TaskTracker::new(),
    }))
}

/// `/ready`: the runtime's `/health`, the JWKS (when JWTs are required), Redis (when
/// configured).
fn readiness(state: &Arc<AppState>) -> Readiness {
    let runtime = state.runtime.clone();
    let mut readiness = Readiness::new().with_check("agent_runtime", move || {
        let runtime = runtime.clone();
        async move {
            runtime
                .health()
                .await
                .map_err(|e| format!("agent runtime: {e}"))
        }
        .boxed()
    });
    if state.config.use_jwt_auth {
        let jwks_state = Arc::clone(state);
        readiness = readiness.with_check("jwks", move || {
            let state = Arc::clone(&jwks_state);
            async move { state.auth.jwks().check().await }.boxed()
        });
    }
    if state.fanout.is_redis() {
        let fanout = state.fanout.clone();
        readiness = readiness.with_check("redis", move || {
            let fanout = fanout.clone();
            async move { fanout.ping().await.map_err(|e| e.to_string()) }.boxed()
        });
    }
    readiness
}

/// Answer of unknown paths, as FastAPI's (the original's).
async fn not_found() -> axum::response::Response {
    (
        StatusCode::NOT_FOUND,
        axum::Json(serde_json::json!({ "detail": "Not Found" })),
    )
        .into_response()
}

/// Every route of the gateway (REST, WebSocket, `/health` `/ready` `/metrics`) with CORS,
/// limits and telemetry applied.
pub fn router(state: Arc<AppState>) -> Router {
    let mut app = rest::routes()
        .merge(ws::routes())
        .with_state(Arc::clone(&state))
        .merge(common_routes(state.info.clone(), readiness(&state)))
        .fallback(not_found);
    // Validated in `build`, so this cannot fail here; be safe anyway and serve without CORS.
    if let Ok(Some(cors)) = cors_layer(&state.config, state.environment) {
        app = app.layer(cors);
    }
    with_standard_layers(app, &state.info, state.config.max_body_bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn staging_and_production_refuse_development_settings() {
        let strong = codelab_core::config::Secret::new("0123456789abcdef0123456789abcdef");
        let good = Config {
            internal_api_key: strong.clone(),
            ..Config::default()
        };
        assert!(validate(&good, Environment::Production).is_ok());
        let cases = [
            Config {
                use_jwt_auth: false,
                ..good.clone()
            },
            Config {
                ws_auth: Some(WsAuthMode::Off),
                ..good.clone()
            },
            Config::default(),
            Config {
                service_api_key: codelab_core::config::Secret::new("short"),
                ..good.clone()
            },
        ];
        for config in cases {
            assert!(validate(&config, Environment::Production).is_err());
            assert!(validate(&config, Environment::Staging).is_err());
            assert!(validate(&config, Environment::Development).is_ok());
        }
        // The runtime's key is never the key service callers present here.
        let shared = Config {
            service_api_key: strong.clone(),
            ..good.clone()
        };
        assert!(validate(&shared, Environment::Development).is_err());
        let loose = Config {
            jwt_leeway: 600,
            ..good.clone()
        };
        assert!(validate(&loose, Environment::Development).is_err());
    }

    #[test]
    fn cors_is_an_allowlist_outside_development() {
        let star = Config {
            cors_origins: vec!["*".to_owned()],
            ..Config::default()
        };
        assert!(cors_layer(&star, Environment::Production).is_err());
        assert!(cors_layer(&star, Environment::Development).is_ok());
        assert!(
            cors_layer(&Config::default(), Environment::Production)
                .unwrap()
                .is_none()
        );
    }
}
