//! The CodeLab auth service: an OAuth2 authorization server (RFC 6749) issuing RS256 JWTs.
//!
//! It owns users, OAuth clients, signing keys, refresh-token rotation, brute-force protection
//! and the audit log. It must never log or store a password, secret or token in clear text:
//! only hashes are stored, and only ids reach the logs.

pub mod admin;
pub mod audit;
pub mod config;
pub mod handlers;
pub mod keys;
pub mod limits;
pub mod metrics;
pub mod model;
pub mod passwords;
pub mod seed;
pub mod store;
pub mod tokens;

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::Router;
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use chrono::{DateTime, Utc};
use codelab_core::cache::{Cache, CacheError, connect_cache};
use codelab_core::clock::{SharedClock, SystemClock};
use codelab_core::config::Environment;
use codelab_core::db::{DbError, DbOptions, connect_database, register_pool_metrics};
use codelab_core::http::{Readiness, ServiceInfo, with_standard_layers};
use codelab_core::telemetry::{metrics_handle, register_scrape_hook, render_metrics};
use futures_util::FutureExt;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tower_http::cors::{AllowOrigin, CorsLayer};

pub use config::Config;
use keys::KeyManager;
use limits::{LimitSettings, Limits, TrustedProxies};
use seed::SeedReport;
use store::{AuthStore, StoreError};
use tokens::TokenService;

/// Service name in health answers, logs and metric names (`codelab_auth_*`).
pub const SERVICE_NAME: &str = "auth";
/// Key prefix of the auth service's entries in a shared Redis.
pub const CACHE_PREFIX: &str = "codelab:auth:";
/// How often expired refresh tokens are deleted.
const CLEANUP_INTERVAL: Duration = Duration::from_secs(3600);

/// What the auth service needs from outside its config section.
#[derive(Clone)]
pub struct Deps {
    /// The deployment profile.
    pub environment: Environment,
    /// Time for token lifetimes, expiry checks and the in-memory cache.
    pub clock: SharedClock,
    /// A ready cache to use instead of connecting to `redis_url` (tests, embedding).
    pub cache: Option<Cache>,
}

impl Deps {
    /// Production dependencies for `environment`: the system clock, cache from the config.
    pub fn new(environment: Environment) -> Self {
        Self {
            environment,
            clock: Arc::new(SystemClock),
            cache: None,
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
            .field("cache", &self.cache)
            .finish_non_exhaustive()
    }
}

/// Why the auth service could not start.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// A setting is unusable (public URL, CORS origins, trusted proxies).
    #[error("invalid auth configuration: {0}")]
    Config(String),
    /// The database could not be reached.
    #[error(transparent)]
    Database(#[from] DbError),
    /// Migrations or a startup query failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Redis could not be reached.
    #[error("cannot connect to the cache: {0}")]
    Cache(#[from] CacheError),
    /// No usable signing key (outside development none is generated).
    #[error("signing keys: {0}")]
    Keys(String),
    /// Seeding the clients or the admin user failed.
    #[error("seeding failed: {0}")]
    Seed(#[from] seed::SeedError),
}

/// Aborts a background task when the state holding it is dropped.
struct TaskGuard(JoinHandle<()>);

impl Drop for TaskGuard {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Shared state of the auth service's handlers.
pub struct AppState {
    /// Name, version, start time.
    pub info: ServiceInfo,
    /// The effective configuration.
    pub config: Config,
    /// The deployment profile.
    pub environment: Environment,
    /// Users, clients, refresh tokens, codes, audit, keys.
    pub store: Arc<dyn AuthStore>,
    /// The signing key set.
    pub keys: Arc<KeyManager>,
    /// Issues and verifies JWTs.
    pub tokens: TokenService,
    /// Client IPs, rate limit and brute-force counters.
    pub limits: Limits,
    /// Injected time.
    pub clock: SharedClock,
    readiness: Readiness,
    seed_report: Mutex<Option<SeedReport>>,
    _tasks: Vec<TaskGuard>,
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState")
            .field("info", &self.info)
            .field("environment", &self.environment)
            .finish_non_exhaustive()
    }
}

impl AppState {
    /// The current time by the injected clock.
    pub fn now(&self) -> DateTime<Utc> {
        DateTime::<Utc>::from(self.clock.now())
    }

    /// The credentials generated at startup (admin password, internal client secret), once:
    /// later calls return `None`, so they are printed a single time.
    pub fn take_seed_report(&self) -> Option<SeedReport> {
        self.seed_report
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
    }
}

/// Checks that `public_url` is an absolute http(s) URL without query or fragment (RFC 8414
/// §2: the issuer has none).
fn check_public_url(url: &str) -> Result<(), BuildError> {
    let ok = (url.starts_with("http://") || url.starts_with("https://"))
        && !url.contains(['?', '#'])
        && url.len() > "https://".len();
    if ok {
        Ok(())
    } else {
        Err(BuildError::Config(format!(
            "public_url must be an absolute http(s) URL without query or fragment, got {url:?}"
        )))
    }
}

/// CORS: in development with no list, any origin without credentials; otherwise exactly the
/// configured origins (never `*`).
fn cors_layer(config: &Config, environment: Environment) -> Result<Option<CorsLayer>, BuildError> {
    let base = CorsLayer::new()
        .allow_methods([Method::GET, Method::POST])
        .allow_headers([header::AUTHORIZATION, header::CONTENT_TYPE])
        .max_age(Duration::from_secs(600));
    let origins: Vec<&str> = config
        .cors_origins
        .iter()
        .map(|o| o.trim())
        .filter(|o| !o.is_empty())
        .collect();
    if origins.contains(&"*") {
        if environment == Environment::Development {
            return Ok(Some(base.allow_origin(AllowOrigin::any())));
        }
        return Err(BuildError::Config(
            "cors_origins must list origins; \"*\" is only allowed in development".to_owned(),
        ));
    }
    if origins.is_empty() {
        return Ok((environment == Environment::Development)
            .then(|| base.allow_origin(AllowOrigin::any())));
    }
    let mut list = Vec::new();
    for origin in origins {
        let value = HeaderValue::from_str(origin.trim_end_matches('/'))
            .map_err(|_| BuildError::Config(format!("invalid CORS origin {origin:?}")))?;
        list.push(value);
    }
    Ok(Some(base.allow_origin(AllowOrigin::list(list))))
}

/// Connects storage, loads the keys, seeds clients and the admin, and starts the hourly
/// cleanup of expired refresh tokens.
pub async fn build(config: Config, deps: Deps) -> Result<Arc<AppState>, BuildError> {
    let _ = metrics_handle();
    metrics::describe();
    check_public_url(&config.public_url)?;
    // Validated here so a bad setting stops startup rather than the first request.
    cors_layer(&config, deps.environment)?;
    let trusted = TrustedProxies::parse(&config.trusted_proxies)
        .map_err(|e| BuildError::Config(e.to_string()))?;
    if deps.environment.is_hardened() && !config.issuer().starts_with("https://") {
        tracing::warn!(issuer = %config.issuer(), "the token issuer is not an https URL");
    }

    let info = ServiceInfo::new(SERVICE_NAME, config.version.clone());
    let options = DbOptions {
        max_connections: config.db_max_connections,
        ..DbOptions::default()
    };
    let pool = connect_database(&config.db_url, &options).await?;
    register_pool_metrics(&info, pool.clone());
    let store = store::open_store(pool).await?;
    let cache = match deps.cache.clone() {
        Some(cache) => cache,
        None => match config.redis_url.as_deref().filter(|u| !u.trim().is_empty()) {
            Some(url) => connect_cache(Some(url), CACHE_PREFIX).await?,
            None => Cache::memory_with_clock(deps.clock.clone()),
        },
    }
    .with_fallback_observer(Arc::new(metrics::counter_cache_fallback));
    {
        let cache = cache.clone();
        register_scrape_hook(&info, "cache_degraded", move || {
            metrics::gauge_cache_degraded(cache.is_degraded());
        });
    }

    // Keys live in the database every replica shares, so the first replica to start may
    // generate the set for all (a concurrent start loses the insert and loads the winner's).
    let allow_generate = true;
    if deps.environment != Environment::Development {
        tracing::info!("signing keys are generated into the database when none exist");
    }
    let encryption = keys::KeyEncryption::from_settings(
        &config.key_encryption_key,
        &config.key_encryption_key_previous,
        deps.environment,
    )
    .map_err(|e| BuildError::Keys(e.to_string()))?;
    let keys = KeyManager::load_or_init_with(
        Arc::clone(&store),
        config.private_key_path.as_deref(),
        &config.key_id,
        deps.clock.clone(),
        allow_generate,
        encryption,
    )
    .await
    .map_err(|e| BuildError::Keys(e.to_string()))?;
    let keys = Arc::new(keys);
    let tokens = TokenService::new(
        Arc::clone(&keys),
        config.issuer(),
        config.jwt_audience.clone(),
        config.token_leeway,
        deps.clock.clone(),
    );

    let report = seed::seed(&store, &config, deps.environment).await?;

    let rate_limit = config.rate_limiting_enabled(deps.environment).then(|| {
        (
            config.rate_limit_per_ip,
            Duration::from_secs(config.rate_limit_window.max(1)),
        )
    });
    let limits = Limits::new(
        cache.clone(),
        trusted,
        LimitSettings {
            brute_force_threshold: config.brute_force_threshold.max(1),
            lockout: Duration::from_secs(config.brute_force_lockout_duration.max(1)),
            rate_limit,
        },
    );

    let readiness = {
        let store = Arc::clone(&store);
        let cache = cache.clone();
        Readiness::new()
            .with_check("database", move || {
                let store = Arc::clone(&store);
                async move { store.ping().await.map_err(|e| e.to_string()) }.boxed()
            })
            .with_check("cache", move || {
                let cache = cache.clone();
                async move { cache.ping().await.map_err(|e| e.to_string()) }.boxed()
            })
    };

    let mut tasks = vec![TaskGuard(spawn_cleanup(
        Arc::clone(&store),
        deps.clock.clone(),
    ))];
    // Keys rotated by `codelab keys rotate` or another replica are picked up by the reloader;
    // the task ends with the state (the guard aborts it).
    tasks.push(TaskGuard(keys.spawn_reloader(CancellationToken::new())));

    tracing::info!(
        environment = %deps.environment,
        issuer = %config.issuer(),
        redis = cache.is_redis(),
        rate_limiting = rate_limit.is_some(),
        "auth service ready"
    );
    Ok(Arc::new(AppState {
        info,
        config,
        environment: deps.environment,
        store,
        keys,
        tokens,
        limits,
        clock: deps.clock,
        readiness,
        seed_report: Mutex::new(Some(report)),
        _tasks: tasks,
    }))
}

/// Deletes expired refresh tokens every hour (the original never scheduled its cleanup).
fn spawn_cleanup(store: Arc<dyn AuthStore>, clock: SharedClock) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut interval = tokio::time::interval(CLEANUP_INTERVAL);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            interval.tick().await;
            let now = DateTime::<Utc>::from(clock.now());
            match store.delete_expired_refresh_tokens(now).await {
                Ok(deleted) => {
                    metrics::counter_expired_deleted(deleted);
                    if deleted > 0 {
                        tracing::info!(deleted, "deleted expired refresh tokens");
                    }
                }
                Err(error) => tracing::warn!(%error, "cannot delete expired refresh tokens"),
            }
        }
    })
}

async fn show_ready(
    axum::extract::State(state): axum::extract::State<Arc<AppState>>,
) -> axum::response::Response {
    let report = state.readiness.run().await;
    let (status, word) = if report.ready {
        (StatusCode::OK, "ready")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not_ready")
    };
    let body = serde_json::json!({ "status": word, "checks": report.checks });
    (status, axum::Json(body)).into_response()
}

async fn show_metrics(
    axum::extract::State(state): axum::extract::State<Arc<AppState>>,
) -> axum::response::Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        render_metrics(&state.info),
    )
        .into_response()
}

async fn not_found() -> axum::response::Response {
    let body = serde_json::json!({ "error": "not_found", "error_description": "Not found" });
    (StatusCode::NOT_FOUND, axum::Json(body)).into_response()
}

/// Every route of the auth service with CORS, limits and telemetry applied.
///
/// `/health`, `/ready` and `/metrics` are served here rather than by core's `common_routes`
/// because `/health` keeps the original's shape (with `environment`).
pub fn router(state: Arc<AppState>) -> Router {
    use handlers::{admin_api, authorize, discovery, introspect, openapi, revoke, token, userinfo};
    let mut app = Router::new()
        .route("/oauth/token", post(token::issue_token))
        .route(
            "/oauth/authorize",
            get(authorize::show_login).post(authorize::submit_login),
        )
        .route("/oauth/revoke", post(revoke::revoke_token))
        .route("/oauth/introspect", post(introspect::introspect_token))
        .route("/oauth/userinfo", get(userinfo::show_userinfo))
        .route(
            "/admin/users",
            get(admin_api::list_users).post(admin_api::create_user),
        )
        .route(
            "/admin/users/{username}/{action}",
            post(admin_api::change_user),
        )
        .route("/admin/clients", get(admin_api::list_clients))
        .route("/.well-known/jwks.json", get(discovery::show_jwks))
        .route(
            "/.well-known/oauth-authorization-server",
            get(discovery::show_oauth_metadata),
        )
        .route(
            "/.well-known/openid-configuration",
            get(discovery::show_openid_configuration),
        )
        .route("/openapi.json", get(openapi::show_openapi))
        .route("/health", get(discovery::show_health))
        .route("/ready", get(show_ready))
        .route("/metrics", get(show_metrics))
        .route("/", get(discovery::show_root))
        .fallback(not_found)
        .with_state(Arc::clone(&state));
    // Validated in `build`, so this cannot fail here; be safe anyway and serve without CORS.
    if let Ok(Some(cors)) = cors_layer(&state.config, state.environment) {
        app = app.layer(cors);
    }
    with_standard_layers(app, &state.info, state.config.max_body_bytes)
}
