//! The CodeLab website: the documentation (the repository's `docs/`, rendered) and the
//! operator console (status, sessions and approvals, a live chat, user administration),
//! server-rendered with askama, its files embedded in the binary.
//!
//! It owns page rendering, console logins (authorization code + PKCE with the `codelab-web`
//! client) and their sessions, kept sealed in codelab-core's cache (Redis shared by the
//! replicas, or memory). It stores nothing else and acts only as the signed-in user, with
//! that user's token, against the auth service and the gateway. It must never put a token or
//! secret into a page, run an inline script, or trust a form without its CSRF token.

pub mod assets;
pub mod config;
pub mod docs;
pub mod handlers;
pub mod highlight;
pub mod session;
pub mod status;
pub mod upstream;
pub mod web;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::http::HeaderValue;
use axum::middleware;
use axum::routing::{get, post};
use codelab_core::clock::SharedClock;
use codelab_core::config::{Environment, Secret};
use codelab_core::http::{ErrorShape, Readiness, ServiceInfo, common_routes, with_standard_layers};
use codelab_core::service::{ConfigProblem, Service, SharedDeps, fmt_state};

use codelab_core::cache::{Cache, CacheError, connect_cache};
pub use config::Config;
use config::base_url;
use docs::DocsIndex;
use session::{SessionLimits, SessionStore};
use status::{StatusBoard, Target};
use upstream::{AuthClient, GatewayClient, Upstream};

/// Service name in health answers, logs and metric names (`codelab_website_*`).
pub const SERVICE_NAME: &str = "website";
/// The website, as `codelab serve website`, `codelab up` and the test stack run it.
pub type WebsiteService = AppState;

/// Why the website could not start.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// A setting is unusable or refused by the profile.
    #[error("invalid website configuration: {0}")]
    Config(#[from] ConfigProblem),
    /// The HTTP client for the other services cannot be made.
    #[error("cannot create the HTTP client: {0}")]
    HttpClient(String),
    /// Redis (`WEBSITE__REDIS_URL`) cannot be reached at start.
    #[error("cannot connect to Redis for console sessions: {0}")]
    Cache(#[from] CacheError),
    /// The session store's keys cannot be derived.
    #[error("cannot prepare console sessions: {0}")]
    Sessions(session::SessionError),
}

/// How much longer than a call to the auth service a session's refresh lock lives.
const REFRESH_LOCK_SLACK: Duration = Duration::from_secs(5);

/// Shared state of the website's handlers.
pub struct AppState {
    /// The effective configuration.
    pub config: Arc<Config>,
    /// Name, version, start time.
    pub info: ServiceInfo,
    /// The deployment profile.
    pub environment: Environment,
    /// Injected time.
    pub clock: SharedClock,
    /// The rendered documentation.
    pub docs: DocsIndex,
    /// Console logins.
    pub sessions: SessionStore,
    /// The auth service (when the console is configured).
    pub auth: Option<AuthClient>,
    /// The gateway (when the console is configured).
    pub gateway: Option<GatewayClient>,
    /// The services' health and figures.
    pub status: StatusBoard,
    csp: HeaderValue,
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        fmt_state(f, &self.info, self.environment)
    }
}

impl Service for AppState {
    const NAME: &'static str = SERVICE_NAME;
    type Config = Config;
    type BuildError = BuildError;

    /// Renders the docs and prepares the clients of the other services.
    async fn start(config: Config, deps: SharedDeps) -> Result<Arc<AppState>, BuildError> {
        let timeout = Duration::from_secs_f64(config.request_timeout);
        let http =
            upstream::http_client(timeout).map_err(|e| BuildError::HttpClient(e.to_string()))?;
        let upstream = |url: &Option<String>, name: &'static str| {
            base_url(url.as_deref()).map(|base| Upstream::new(http.clone(), base, name))
        };
        let auth_upstream = upstream(&config.auth_url, "auth");
        let gateway_upstream = upstream(&config.gateway_url, "gateway");
        let mut targets = Vec::new();
        for (name, found) in [
            ("auth", auth_upstream.clone()),
            ("gateway", gateway_upstream.clone()),
            (
                "agent-runtime",
                upstream(&config.agent_runtime_url, "agent-runtime"),
            ),
            ("llm-proxy", upstream(&config.llm_proxy_url, "llm-proxy")),
        ] {
            if let Some(upstream) = found {
                targets.push(Target { name, upstream });
            }
        }
        let (auth, gateway) = match (auth_upstream, gateway_upstream) {
            (Some(auth), Some(gateway)) => (
                Some(AuthClient::new(
                    auth,
                    config.client_id.clone(),
                    config.redirect_uri(),
                )),
                Some(GatewayClient::new(gateway)),
            ),
            _ => (None, None),
        };
        let key = if config.session_key.is_empty() {
            if auth.is_some() {
                tracing::info!(
                    "no WEBSITE__SESSION_KEY: console sessions are signed with a key made for this \
                     run and end when it stops"
                );
            }
            Secret::generate()
        } else {
            Secret::new(config.session_key.expose())
        };
        let cache = match deps.cache.clone() {
            Some(cache) => cache,
            None => match base_url(config.redis_url.as_deref()) {
                Some(_) => connect_cache(config.redis_url.as_deref(), &config.redis_prefix).await?,
                None => Cache::memory_with_clock(deps.clock.clone()),
            },
        };
        let sessions = SessionStore::new(
            key,
            cache,
            deps.clock.clone(),
            SessionLimits {
                idle_timeout: Duration::from_secs(config.session_idle_timeout),
                max_age: Duration::from_secs(config.session_max_age),
                // A refresh is one call to the auth service, bounded by the request timeout.
                refresh_lock_ttl: timeout + REFRESH_LOCK_SLACK,
                secure: config.is_https(),
            },
        )
        .map_err(BuildError::Sessions)?;
        let docs = tokio::task::spawn_blocking(DocsIndex::load)
            .await
            .map_err(|e| {
                BuildError::Config(ConfigProblem(format!("cannot render the docs: {e}")))
            })?;
        let ws_base = config.gateway_ws_base();
        let csp = HeaderValue::from_str(&web::content_security_policy(&ws_base)).map_err(|_| {
            BuildError::Config(ConfigProblem(format!(
                "unusable gateway address {ws_base:?}"
            )))
        })?;
        let info = ServiceInfo::new(SERVICE_NAME, config.version.clone())
            .with_error_shape(ErrorShape::PlainText);
        tracing::info!(
            environment = %deps.environment,
            public_url = %config.public_url,
            pages = docs.pages().len(),
            console = auth.is_some(),
            "website ready"
        );
        Ok(Arc::new(AppState {
            status: StatusBoard::new(targets, deps.clock.clone()),
            config: Arc::new(config),
            info,
            environment: deps.environment,
            clock: deps.clock,
            docs,
            sessions,
            auth,
            gateway,
            csp,
        }))
    }

    /// Every route of the website (pages, assets, `/health` `/ready` `/metrics`) with the
    /// security headers, limits and telemetry applied.
    fn router(state: Arc<AppState>) -> Router {
        use handlers::{admin, chat, console, docs as doc_pages, plans, sessions, usage};
        let pages = Router::new()
            .route("/", get(doc_pages::show_home))
            .route("/docs", get(doc_pages::show_docs_index))
            .route("/docs/search", get(doc_pages::search_docs))
            .route("/docs/{slug}", get(doc_pages::show_doc))
            .route("/assets/{*path}", get(assets::serve_asset))
            .route("/console", get(console::show_console))
            .route("/console/login", get(console::start_login))
            .route("/console/callback", get(console::finish_login))
            .route("/console/logout", post(console::logout))
            .route("/console/token", post(console::issue_socket_token))
            .route("/console/status", get(console::show_status))
            .route("/console/status.json", get(console::status_json))
            .route("/console/sessions", get(sessions::list_sessions))
            .route("/console/sessions/{id}", get(sessions::show_session))
            .route(
                "/console/sessions/{id}/approvals/{call_id}",
                post(sessions::decide_approval),
            )
            .route(
                "/console/sessions/{id}/plans/{plan_id}",
                post(plans::decide_plan),
            )
            .route("/console/sessions/{id}/cancel", post(sessions::cancel_turn))
            .route(
                "/console/chat",
                get(chat::show_chat_index).post(chat::start_chat),
            )
            .route("/console/chat/{id}", get(chat::show_chat))
            .route("/console/usage", get(usage::show_usage))
            .route("/console/admin", get(admin::show_admin))
            .route("/console/admin/users", post(admin::create_user))
            .route(
                "/console/admin/users/{username}/{action}",
                post(admin::change_user),
            )
            .fallback(web::not_found)
            .with_state(Arc::clone(&state));
        let app = pages
            .merge(common_routes(state.info.clone(), readiness(&state)))
            .layer(middleware::from_fn_with_state(
                Arc::clone(&state),
                web::security_headers,
            ));
        with_standard_layers(app, &state.info, state.config.max_body_bytes)
    }
}

/// What `/ready` says about a failing check.
const READY_CHECK_FAILED: &str = "unavailable";

/// `/ready`: the docs are rendered; when the console is configured, the auth service and
/// the gateway answer `/health`. A failing check answers only `unavailable`: `/ready` may be
/// reachable by anyone, and an error text names internal addresses; the detail goes to the
/// log.
fn readiness(state: &Arc<AppState>) -> Readiness {
    let mut readiness = Readiness::new();
    let services = [
        ("auth", state.auth.as_ref().map(|a| a.upstream().clone())),
        (
            "gateway",
            state.gateway.as_ref().map(|g| g.upstream().clone()),
        ),
    ];
    for (name, upstream) in services {
        let Some(upstream) = upstream else { continue };
        readiness = readiness.with_probe(name, upstream, move |upstream| async move {
            let detail = match upstream.probe("/health").await {
                Ok((200, _)) => return Ok(()),
                Ok((status, _)) => format!("{name} /health answered {status}"),
                Err(error) => error.to_string(),
            };
            tracing::warn!(check = name, %detail, "readiness check failed");
            Err(READY_CHECK_FAILED)
        });
    }
    readiness
}

#[cfg(test)]
mod tests {
    use codelab_core::service::ServiceConfig;

    use super::*;

    #[test]
    fn production_needs_a_strong_session_key_for_the_console() {
        let console = Config {
            auth_url: Some("http://auth:8003".to_owned()),
            gateway_url: Some("http://gateway:8000".to_owned()),
            ..Config::default()
        };
        assert!(console.validate(Environment::Production).is_err());
        assert!(console.validate(Environment::Development).is_ok());
        let keyed = Config {
            session_key: Secret::new("0123456789abcdef0123456789abcdef"),
            ..console.clone()
        };
        assert!(keyed.validate(Environment::Production).is_ok());
        // Docs only: no cookies to sign.
        assert!(Config::default().validate(Environment::Production).is_ok());
        let bad = Config {
            gateway_url: Some("gateway:8000".to_owned()),
            ..Config::default()
        };
        assert!(bad.validate(Environment::Development).is_err());
    }
}
