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
use axum::http::StatusCode;
use axum::response::IntoResponse;
use codelab_core::config::Environment;
use codelab_core::http::{
    ErrorShape, Readiness, ServiceInfo, common_routes, with_cors, with_standard_layers,
};
use codelab_core::service::{ConfigProblem, Service, SharedDeps, drain_tasks};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use config::Config;
use config::WsAuthMode;

/// Service name in health answers, logs and metric names (`codelab_gateway_*`).
pub const SERVICE_NAME: &str = "gateway";
/// The gateway, as `codelab serve gateway`, `codelab up` and the test stack run it.
pub type GatewayService = AppState;
/// Largest clock skew accepted on token times (`docs/gateway.md`: at most 60 s).
pub const MAX_JWT_LEEWAY: u64 = 60;

/// Why the gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// A setting is unusable or refused by the profile.
    #[error("invalid gateway configuration: {0}")]
    Config(#[from] ConfigProblem),
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

impl Service for AppState {
    const NAME: &'static str = SERVICE_NAME;
    type Config = Config;
    type BuildError = BuildError;

    /// Prepares the runtime client, the authenticator and the fan-out (Redis when
    /// `redis_url` is set).
    async fn start(mut config: Config, deps: SharedDeps) -> Result<Arc<AppState>, BuildError> {
        let ws_auth = config
            .ws_auth
            .unwrap_or_else(|| WsAuthMode::default_for(deps.environment));
        config.ws_auth = Some(ws_auth);
        let runtime = runtime_client::RuntimeClient::new(
            &config,
            Some(deps.local_routes.route(&config.agent_url)),
        )?;
        let auth = auth::Authenticator::new(&config, deps.clock.clone())
            .map_err(|e| BuildError::HttpClient(e.to_string()))?;
        let fanout =
            fanout::Fanout::connect(config.redis_url.as_deref(), &config.redis_prefix).await?;
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
        metrics::describe();
        let info = ServiceInfo::new(SERVICE_NAME, config.version.clone())
            .with_error_shape(ErrorShape::Detail);
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

    /// Every route of the gateway (REST, WebSocket, `/health` `/ready` `/metrics`) with CORS,
    /// limits and telemetry applied.
    fn router(state: Arc<AppState>) -> Router {
        let app = rest::routes()
            .merge(ws::routes())
            .with_state(Arc::clone(&state))
            .merge(common_routes(state.info.clone(), readiness(&state)))
            .fallback(not_found);
        let app = with_cors(
            app,
            &state.config.cors_origins,
            config::CORS_METHODS,
            state.environment,
        );
        with_standard_layers(app, &state.info, state.config.max_body_bytes)
    }

    /// Waits up to `timeout` for tracked background work after the listener stopped; returns
    /// whether everything finished.
    async fn drain(&self, timeout: Duration) -> bool {
        drain_tasks(&self.tasks, timeout).await
    }
}

/// `/ready`: the runtime's `/health`, the JWKS (when JWTs are required), Redis (when
/// configured).
fn readiness(state: &Arc<AppState>) -> Readiness {
    let mut readiness = Readiness::new().with_probe(
        "agent_runtime",
        state.runtime.clone(),
        |runtime| async move {
            runtime
                .health()
                .await
                .map_err(|e| format!("agent runtime: {e}"))
        },
    );
    if state.config.use_jwt_auth {
        readiness = readiness.with_probe("jwks", Arc::clone(state), |state| async move {
            state.auth.jwks().check().await
        });
    }
    if state.fanout.is_redis() {
        readiness = readiness.with_probe("redis", state.fanout.clone(), |fanout| async move {
            fanout.ping().await
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

#[cfg(test)]
mod tests {
    use codelab_core::http::cors_layer;
    use codelab_core::service::ServiceConfig;

    use super::*;

    #[test]
    fn staging_and_production_refuse_development_settings() {
        let strong = codelab_core::config::Secret::new("0123456789abcdef0123456789abcdef");
        let good = Config {
            internal_api_key: strong.clone(),
            ..Config::default()
        };
        assert!(good.validate(Environment::Production).is_ok());
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
            assert!(config.validate(Environment::Production).is_err());
            assert!(config.validate(Environment::Staging).is_err());
            assert!(config.validate(Environment::Development).is_ok());
        }
        // The runtime's key is never the key service callers present here.
        let shared = Config {
            service_api_key: strong.clone(),
            ..good.clone()
        };
        assert!(shared.validate(Environment::Development).is_err());
        let loose = Config {
            jwt_leeway: 600,
            ..good.clone()
        };
        assert!(loose.validate(Environment::Development).is_err());
    }

    #[test]
    fn cors_is_an_allowlist_outside_development() {
        let star = Config {
            cors_origins: vec!["*".to_owned()],
            ..Config::default()
        };
        let cors = |settings: &Config, environment| {
            cors_layer(&settings.cors_origins, config::CORS_METHODS, environment)
        };
        assert!(cors(&star, Environment::Production).is_err());
        assert!(cors(&star, Environment::Development).is_ok());
        assert!(
            cors(&Config::default(), Environment::Production)
                .unwrap()
                .is_none()
        );
    }

    #[tokio::test]
    async fn a_body_over_the_limit_is_refused_in_the_detail_shape() {
        let config = Config {
            max_body_bytes: 1024,
            ..Config::default()
        };
        let state = AppState::build(config, SharedDeps::default())
            .await
            .unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        let serving = codelab_core::http::serve(
            listener,
            AppState::router(state),
            shutdown.clone(),
            Duration::from_secs(1),
        );
        let request = async {
            let response = reqwest::Client::new()
                .post(format!("http://{address}/api/v1/sessions"))
                .header("content-type", "application/json")
                .body("x".repeat(4096))
                .send()
                .await;
            shutdown.cancel();
            response
        };
        let (served, response) = tokio::join!(serving, request);
        served.unwrap();
        let response = response.unwrap();
        assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
        let body: serde_json::Value = response.json().await.unwrap();
        assert!(body["detail"].is_string(), "{body}");
        assert!(body.get("error_description").is_none(), "{body}");
        // Exactly what the OpenAPI document promises for a 413.
        let doc = crate::openapi::document("test");
        let promised = &doc["components"]["schemas"]["Detail"]["properties"];
        let keys: Vec<&String> = body.as_object().unwrap().keys().collect();
        assert!(
            keys.iter().all(|key| promised.get(key.as_str()).is_some()),
            "{body}"
        );
    }
}
