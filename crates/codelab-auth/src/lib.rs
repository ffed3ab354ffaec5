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
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use chrono::{DateTime, Utc};
use codelab_core::cache::{Cache, CacheError, connect_cache};
use codelab_core::clock::SharedClock;
use codelab_core::config::Environment;
use codelab_core::db::DbError;
use codelab_core::http::{ErrorShape, Readiness, ServiceInfo, with_cors, with_standard_layers};
use codelab_core::service::{
    BackgroundTask, ConfigProblem, Service, SharedDeps, connect_service_database, fmt_state,
};
use codelab_core::telemetry::{register_scrape_hook, render_metrics};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use config::Config;
use keys::KeyManager;
use limits::{LimitSettings, Limits, TrustedProxies};
use seed::SeedReport;
use store::{AuthStore, StoreError};
use tokens::TokenService;

/// Service name in health answers, logs and metric names (`codelab_auth_*`).
pub const SERVICE_NAME: &str = "auth";
/// The auth service, as `codelab serve auth`, `codelab up` and the test stack run it.
pub type AuthService = AppState;
/// Key prefix of the auth service's entries in a shared Redis.
pub const CACHE_PREFIX: &str = "codelab:auth:";
/// How often expired refresh tokens are deleted.
const CLEANUP_INTERVAL: Duration = Duration::from_secs(3600);

/// Why the auth service could not start.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// A setting is unusable (public URL, CORS origins, trusted proxies).
    #[error("invalid auth configuration: {0}")]
    Config(#[from] ConfigProblem),
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
    _tasks: Vec<BackgroundTask>,
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        fmt_state(f, &self.info, self.environment)
    }
}

impl AppState {
    /// The current time by the injected clock.
    pub fn now(&self) -> DateTime<Utc> {
        DateTime::<Utc>::from(self.clock.now())
    }

    /// Whether this start created the `admin` user with `password` (the master key), so
    /// `codelab up --admin-password` need not set (and hash) it a second time.
    pub fn seeded_admin_with(&self, password: &str) -> bool {
        self.seed_report
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .and_then(|report| report.admin_password.as_ref())
            .is_some_and(|seeded| seeded.expose() == password)
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

impl Service for AppState {
    const NAME: &'static str = SERVICE_NAME;
    type Config = Config;
    type BuildError = BuildError;

    /// Connects storage, loads the keys, seeds clients and the admin, and starts the hourly
    /// cleanup of expired refresh tokens.
    async fn start(config: Config, deps: SharedDeps) -> Result<Arc<AppState>, BuildError> {
        let trusted = TrustedProxies::parse(&config.trusted_proxies)
            .map_err(|e| BuildError::Config(ConfigProblem(e.to_string())))?;
        if deps.environment.is_hardened() && !config.issuer().starts_with("https://") {
            tracing::warn!(issuer = %config.issuer(), "the token issuer is not an https URL");
        }

        metrics::describe();
        let info = ServiceInfo::new(SERVICE_NAME, config.version.clone())
            .with_error_shape(ErrorShape::OAuth);
        let pool =
            connect_service_database(&info, &config.db_url, config.db_max_connections).await?;
        let store = store::open_store(pool, deps.clock.clone()).await?;
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
        // The two slow steps of a first start, side by side on blocking threads: generating
        // the signing key and hashing the new admin's password. Seeding writes only after the
        // key set loaded, so a start that fails on its keys creates no admin whose password
        // nobody was shown.
        let (keys, pending_admin) = tokio::join!(
            KeyManager::load_or_init_with(
                Arc::clone(&store),
                config.private_key_path.as_deref(),
                &config.key_id,
                deps.clock.clone(),
                allow_generate,
                encryption,
            ),
            seed::prepare_admin(&store, &config, deps.environment),
        );
        let keys = Arc::new(keys.map_err(|e| BuildError::Keys(e.to_string()))?);
        let tokens = TokenService::new(
            Arc::clone(&keys),
            config.issuer(),
            config.jwt_audience.clone(),
            config.token_leeway,
            deps.clock.clone(),
        );

        let report = seed::seed_with(&store, &config, deps.environment, pending_admin?).await?;

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

        let readiness = Readiness::new()
            .with_probe("database", Arc::clone(&store), |store| async move {
                store.ping().await
            })
            .with_probe(
                "cache",
                cache.clone(),
                |cache| async move { cache.ping().await },
            );

        let mut tasks = vec![BackgroundTask(spawn_cleanup(
            Arc::clone(&store),
            deps.clock.clone(),
        ))];
        // Keys rotated by `codelab keys rotate` or another replica are picked up by the reloader;
        // the task ends with the state (the guard aborts it).
        tasks.push(BackgroundTask(
            keys.spawn_reloader(CancellationToken::new()),
        ));

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

    /// Every route of the auth service with CORS, limits and telemetry applied.
    ///
    /// `/health`, `/ready` and `/metrics` are served here rather than by core's `common_routes`
    /// because `/health` keeps the original's shape (with `environment`).
    fn router(state: Arc<AppState>) -> Router {
        use handlers::{
            admin_api, authorize, discovery, introspect, openapi, revoke, token, userinfo,
        };
        let app = Router::new()
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
        let app = with_cors(
            app,
            &state.config.cors_origins,
            config::CORS_METHODS,
            state.environment,
        );
        with_standard_layers(app, &state.info, state.config.max_body_bytes)
    }
}

/// Deletes expired refresh tokens every hour (the original never scheduled its cleanup).
fn spawn_cleanup(store: Arc<dyn AuthStore>, clock: SharedClock) -> JoinHandle<()> {
    codelab_core::tasks::spawn("refresh-token-cleanup", async move {
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
