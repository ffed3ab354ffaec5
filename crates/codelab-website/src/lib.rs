//! The CodeLab website: the documentation (the repository's `docs/`, rendered) and the
//! operator console (status, sessions and approvals, a live chat, user administration),
//! server-rendered with askama, its files embedded in the binary.
//!
//! It owns page rendering, console logins (authorization code + PKCE with the `codelab-web`
//! client) and their in-memory sessions. It stores nothing durable and acts only as the
//! signed-in user, with that user's token, against the auth service and the gateway. It must
//! never put a token or secret into a page, run an inline script, or trust a form without its
//! CSRF token.

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
use codelab_core::clock::{SharedClock, SystemClock};
use codelab_core::config::{Environment, Secret};
use codelab_core::http::{Readiness, ServiceInfo, common_routes, with_standard_layers};
use codelab_core::telemetry::metrics_handle;
use futures_util::FutureExt;

pub use config::Config;
use config::base_url;
use docs::DocsIndex;
use session::SessionStore;
use status::{StatusBoard, Target};
use upstream::{AuthClient, GatewayClient, Upstream};

/// Service name in health answers, logs and metric names (`codelab_website_*`).
pub const SERVICE_NAME: &str = "website";

/// What the website needs from outside its config section.
#[derive(Clone)]
pub struct Deps {
    /// The deployment profile.
    pub environment: Environment,
    /// Time for session expiry and token refresh.
    pub clock: SharedClock,
}

impl Deps {
    /// Production dependencies for `environment`: the system clock.
    pub fn new(environment: Environment) -> Self {
        Self {
            environment,
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

/// Why the website could not start.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// A setting is unusable or refused by the profile.
    #[error("invalid website configuration: {0}")]
    Config(String),
    /// The HTTP client for the other services cannot be made.
    #[error("cannot create the HTTP client: {0}")]
    HttpClient(String),
}

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
        f.debug_struct("AppState")
            .field("info", &self.info)
            .field("environment", &self.environment)
            .field("pages", &self.docs.pages().len())
            .finish_non_exhaustive()
    }
}

fn check_url(name: &str, url: &str) -> Result<(), BuildError> {
    let ok = (url.starts_with("http://") || url.starts_with("https://"))
        && !url.contains(['?', '#', ' '])
        && url.len() > "https://".len();
    if ok {
        Ok(())
    } else {
        Err(BuildError::Config(format!(
            "{name} must be an absolute http(s) URL without query or fragment, got {url:?}"
        )))
    }
}

/// Refuses settings that cannot work, and those production must never run with.
fn validate(config: &Config, environment: Environment) -> Result<(), BuildError> {
    check_url("public_url (WEBSITE__PUBLIC_URL)", &config.public_base())?;
    for (name, url) in [
        ("auth_url (WEBSITE__AUTH_URL)", &config.auth_url),
        (
            "auth_public_url (WEBSITE__AUTH_PUBLIC_URL)",
            &config.auth_public_url,
        ),
        ("gateway_url (WEBSITE__GATEWAY_URL)", &config.gateway_url),
        (
            "gateway_public_url (WEBSITE__GATEWAY_PUBLIC_URL)",
            &config.gateway_public_url,
        ),
        (
            "agent_runtime_url (WEBSITE__AGENT_RUNTIME_URL)",
            &config.agent_runtime_url,
        ),
        (
            "llm_proxy_url (WEBSITE__LLM_PROXY_URL)",
            &config.llm_proxy_url,
        ),
    ] {
        if let Some(url) = base_url(url.as_deref()) {
            check_url(name, &url)?;
        }
    }
    if config.client_id.trim().is_empty() {
        return Err(BuildError::Config(
            "client_id (WEBSITE__CLIENT_ID) must not be empty".to_owned(),
        ));
    }
    if config.session_idle_timeout == 0 || config.session_max_age == 0 {
        return Err(BuildError::Config(
            "session_idle_timeout and session_max_age must be at least 1 second".to_owned(),
        ));
    }
    if !(config.request_timeout.is_finite() && config.request_timeout > 0.0) {
        return Err(BuildError::Config(format!(
            "request_timeout must be a positive number of seconds, got {}",
            config.request_timeout
        )));
    }
    if environment.is_hardened() && config.console_enabled() {
        if config.session_key.is_weak() {
            return Err(BuildError::Config(
                "session_key (WEBSITE__SESSION_KEY) is missing, shorter than 16 characters or a \
                 published placeholder; production needs a strong key to sign console cookies"
                    .to_owned(),
            ));
        }
        if !config.is_https() {
            tracing::warn!(
                public_url = %config.public_url,
                "the website is not served over https: the session cookie is not Secure"
            );
        }
    }
    Ok(())
}

/// Validates the settings, renders the docs and prepares the clients of the other services.
pub async fn build(config: Config, deps: Deps) -> Result<Arc<AppState>, BuildError> {
    let _ = metrics_handle();
    validate(&config, deps.environment)?;
    let timeout = Duration::from_secs_f64(config.request_timeout);
    let http = upstream::http_client(timeout).map_err(|e| BuildError::HttpClient(e.to_string()))?;
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
    let sessions = SessionStore::new(
        key,
        deps.clock.clone(),
        Duration::from_secs(config.session_idle_timeout),
        Duration::from_secs(config.session_max_age),
        config.is_https(),
    );
    let docs = tokio::task::spawn_blocking(DocsIndex::load)
        .await
        .map_err(|e| BuildError::Config(format!("cannot render the docs: {e}")))?;
    let ws_base = config.gateway_ws_base();
    let csp = HeaderValue::from_str(&web::content_security_policy(&ws_base))
        .map_err(|_| BuildError::Config(format!("unusable gateway address {ws_base:?}")))?;
    let info = ServiceInfo::new(SERVICE_NAME, config.version.clone());
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
        readiness = readiness.with_check(name, move || {
            let upstream = upstream.clone();
            async move {
                let detail = match upstream.probe("/health").await {
                    Ok((200, _)) => return Ok(()),
                    Ok((status, _)) => format!("{name} /health answered {status}"),
                    Err(error) => error.to_string(),
                };
                tracing::warn!(check = name, %detail, "readiness check failed");
                Err(READY_CHECK_FAILED.to_owned())
            }
            .boxed()
        });
    }
    readiness
}

/// Every route of the website (pages, assets, `/health` `/ready` `/metrics`) with the
/// security headers, limits and telemetry applied.
pub fn router(state: Arc<AppState>) -> Router {
    use handlers::{admin, chat, console, docs as doc_pages, sessions};
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
        .route("/console/sessions/{id}/cancel", post(sessions::cancel_turn))
        .route(
            "/console/chat",
            get(chat::show_chat_index).post(chat::start_chat),
        )
        .route("/console/chat/{id}", get(chat::show_chat))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn production_needs_a_strong_session_key_for_the_console() {
        let console = Config {
            auth_url: Some("http://auth:8003".to_owned()),
            gateway_url: Some("http://gateway:8000".to_owned()),
            ..Config::default()
        };
        assert!(validate(&console, Environment::Production).is_err());
        assert!(validate(&console, Environment::Development).is_ok());
        let keyed = Config {
            session_key: Secret::new("0123456789abcdef0123456789abcdef"),
            ..console.clone()
        };
        assert!(validate(&keyed, Environment::Production).is_ok());
        // Docs only: no cookies to sign.
        assert!(validate(&Config::default(), Environment::Production).is_ok());
        let bad = Config {
            gateway_url: Some("gateway:8000".to_owned()),
            ..Config::default()
        };
        assert!(validate(&bad, Environment::Development).is_err());
    }
}
