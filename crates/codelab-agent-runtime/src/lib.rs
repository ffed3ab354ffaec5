//! The CodeLab agent runtime: agents, tools, human approvals and the turn loop.
//!
//! It owns sessions, their messages, tool calls and approvals, and drives the model through the
//! LLM proxy. It never executes IDE tools itself: they go to the IDE through the gateway, and
//! their results come back as frames. Everything is stored before it is emitted, and it never
//! logs message contents above debug level.

pub mod agents;
pub mod budgets;
pub mod config;
pub mod context;
pub mod engine;
pub mod handlers;
pub mod hitl;
pub mod llm;
pub mod metrics;
pub mod model;
pub mod openapi;
pub mod planning;
pub mod prompts;
pub mod routing;
pub mod store;
pub mod tools;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::routing::{get, post};
use chrono::{DateTime, Utc};
use codelab_core::clock::SharedClock;
use codelab_core::config::Environment;
use codelab_core::db::DbError;
use codelab_core::http::{
    ErrorShape, Readiness, ServiceInfo, common_routes, require_internal_auth, with_standard_layers,
};
use codelab_core::service::{
    BackgroundTask, ConfigProblem, Service, SharedDeps, connect_service_database, drain_tasks,
    fmt_state,
};
use tokio_util::task::TaskTracker;

pub use config::Config;
use engine::{Engine, EngineParts, Limits};
use store::{RuntimeStore, StoreError};

/// Service name in health answers, logs and metric names (`codelab_agent_runtime_*`).
pub const SERVICE_NAME: &str = "agent-runtime";
/// The agent runtime, as `codelab serve agent-runtime`, `codelab up` and the test stack run it.
pub type RuntimeService = AppState;
/// How often idle sessions are purged.
pub const PURGE_INTERVAL: Duration = Duration::from_secs(3600);
/// Sessions removed per purge statement (so one purge never holds the database for long).
pub const PURGE_BATCH: u32 = 100;
/// How often the pending-approvals gauge is recounted. This process recounts right after every
/// change it makes (a frame, a resumed turn, a deleted or purged session); the periodic count
/// is for the other replicas' changes. Half the chart's 30 s scrape interval: another
/// replica's change is at most 15 s old in a scrape, for one indexed `COUNT` per replica every
/// 15 s (human approvals take seconds to minutes, so finer is not worth it).
pub const PENDING_APPROVALS_REFRESH: Duration = Duration::from_secs(15);

/// Why the runtime could not start.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// A setting is unusable.
    #[error("invalid agent-runtime configuration: {0}")]
    Config(#[from] ConfigProblem),
    #[error(transparent)]
    Agents(#[from] agents::AgentConfigError),
    #[error(transparent)]
    Prompts(#[from] prompts::PromptError),
    #[error(transparent)]
    Hitl(#[from] hitl::HitlError),
    #[error(transparent)]
    Llm(#[from] llm::LlmError),
    /// The database could not be reached.
    #[error(transparent)]
    Database(#[from] DbError),
    /// Migrations failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Shared state of the runtime's handlers.
pub struct AppState {
    /// Name, version, start time.
    pub info: ServiceInfo,
    /// The effective configuration.
    pub config: Config,
    /// The deployment profile.
    pub environment: Environment,
    /// Sessions, messages, tool calls, turns, events.
    pub store: Arc<dyn RuntimeStore>,
    /// The turn engine.
    pub engine: Arc<Engine>,
    /// Time for the retention cutoff.
    clock: SharedClock,
    /// The work of streaming requests, which outlives a client that goes away.
    pub tasks: TaskTracker,
    readiness: Readiness,
    _background: Vec<BackgroundTask>,
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        fmt_state(f, &self.info, self.environment)
    }
}

impl AppState {
    /// Removes the sessions idle longer than `AGENT_RUNTIME__SESSION_RETENTION_DAYS` by the
    /// state's clock, as the hourly job does; returns how many (0 when retention is off).
    pub async fn purge_now(&self) -> Result<u64, StoreError> {
        purge_once(
            self.store.as_ref(),
            &self.clock,
            self.config.session_retention_days,
        )
        .await
    }
}

impl Service for AppState {
    const NAME: &'static str = SERVICE_NAME;
    type Config = Config;
    type BuildError = BuildError;

    /// Loads agents, prompts and the HITL policy, connects the database
    /// (running its migrations), counts the pending approvals and starts the background tasks:
    /// the hourly purge of idle sessions, the recount of pending approvals and the recovery sweep.
    async fn start(config: Config, deps: SharedDeps) -> Result<Arc<AppState>, BuildError> {
        let registry = agents::AgentRegistry::from_config(&config)?;
        let prompts = prompts::Prompts::load(config.prompts_dir.as_deref())?;
        let hitl = hitl::HitlPolicy::load(config.hitl_policy_file.as_deref())?;
        let llm = llm::LlmClient::from_config(&config)?
            .with_local_route(deps.local_routes.route(&config.llm_proxy_url));
        metrics::describe();
        let info = ServiceInfo::new(SERVICE_NAME, config.version.clone())
            .with_error_shape(ErrorShape::Detail);
        let pool =
            connect_service_database(&info, &config.db_url, config.db_max_connections).await?;
        let store =
            store::open_store_with(pool, deps.clock.clone(), config.store_settings()).await?;
        let readiness = readiness(Arc::clone(&store), &config.llm_proxy_url)?;
        // Counted before the first request, so the gauge is in the first scrape and right.
        metrics::refresh_pending_approvals(store.as_ref()).await;
        let recount = codelab_core::tasks::spawn(
            "pending-approvals-gauge",
            pending_approvals_loop(Arc::clone(&store)),
        );
        let mut background = vec![BackgroundTask(recount)];
        if config.session_retention_days > 0 {
            background.push(BackgroundTask(codelab_core::tasks::spawn(
                "session-retention",
                purge_loop(
                    Arc::clone(&store),
                    deps.clock.clone(),
                    config.session_retention_days,
                ),
            )));
        }
        let engine = Arc::new(Engine::new(EngineParts {
            store: Arc::clone(&store),
            registry,
            prompts,
            hitl,
            llm,
            limits: Limits::from_config(&config),
            clock: deps.clock.clone(),
        }));
        if let Some(every) = Duration::try_from_secs_f64(config.recovery_interval)
            .ok()
            .filter(|d| !d.is_zero())
        {
            background.push(BackgroundTask(codelab_core::tasks::spawn(
                "turn-recovery",
                recovery_loop(Arc::clone(&engine), every),
            )));
        }
        tracing::info!(
            multi_agent_mode = config.multi_agent_mode,
            model = %config.llm_model,
            database = store_kind(&config.db_url),
            "agent runtime ready"
        );
        Ok(Arc::new(AppState {
            info,
            environment: deps.environment,
            store,
            engine,
            clock: deps.clock.clone(),
            tasks: TaskTracker::new(),
            readiness,
            config,
            _background: background,
        }))
    }

    /// All routes of the runtime, with internal auth, limits and telemetry applied.
    fn router(state: Arc<AppState>) -> Router {
        use handlers::{agents as agent_routes, budgets, plans, sessions, stream, usage};
        let api = Router::new()
            .route("/agent/message/stream", post(stream::stream_message))
            .route(
                "/sessions",
                get(sessions::list_sessions).post(sessions::create_session),
            )
            .route(
                "/sessions/{session_id}",
                get(sessions::get_session)
                    .patch(sessions::update_session)
                    .delete(sessions::delete_session),
            )
            .route(
                "/sessions/{session_id}/history",
                get(sessions::session_history),
            )
            .route(
                "/sessions/{session_id}/events",
                get(sessions::session_events),
            )
            .route(
                "/sessions/{session_id}/pending-approvals",
                get(sessions::pending_approvals),
            )
            .route("/sessions/{session_id}/cancel", post(sessions::cancel_turn))
            .route("/sessions/{session_id}/plans", get(plans::session_plans))
            .route("/sessions/{session_id}/usage", get(usage::session_usage))
            .route("/usage", get(usage::my_usage))
            .route("/admin/usage", get(usage::admin_usage))
            .route("/admin/budgets", get(budgets::list_budgets))
            .route(
                "/admin/budgets/{subject}",
                axum::routing::put(budgets::set_budget).delete(budgets::clear_budget),
            )
            .route("/plans/{plan_id}", get(plans::get_plan))
            .route(
                "/internal/sessions/{session_id}/owner",
                get(sessions::session_owner),
            )
            .route("/agents", get(agent_routes::list_agents))
            .route("/openapi.json", get(show_openapi))
            .route(
                "/agents/{session_id}/current",
                get(agent_routes::current_agent),
            )
            .fallback(handlers::not_found)
            .with_state(Arc::clone(&state));
        // `/health`, `/ready` and `/metrics` are merged outside the auth layer: probes and
        // Prometheus carry no key.
        let app = require_internal_auth(api, state.config.internal_api_key.clone(), &[])
            .merge(common_routes(state.info.clone(), state.readiness.clone()));
        with_standard_layers(app, &state.info, state.config.max_body_bytes)
    }

    /// Waits up to `timeout` for frames still being processed (after the server stopped
    /// accepting requests), so their results are stored; `false` if some were still running.
    /// What does not finish is resumed by the next process (see `Engine::recover`).
    async fn drain(&self, timeout: Duration) -> bool {
        drain_tasks(&self.tasks, timeout).await
    }
}

/// `GET /openapi.json`: the description of this API ([`openapi::document`]).
async fn show_openapi(
    axum::extract::State(state): axum::extract::State<Arc<AppState>>,
) -> axum::Json<serde_json::Value> {
    let specs = state.engine.registry().specs();
    let agents: Vec<&str> = specs.iter().map(|spec| spec.kind.as_str()).collect();
    axum::Json(openapi::document(&state.info.version, &agents))
}

fn store_kind(url: &str) -> &'static str {
    if url.trim_start().starts_with("sqlite") {
        "sqlite"
    } else {
        "postgres"
    }
}

/// `/ready`: the database answers and the LLM proxy's `/health` is 2xx.
fn readiness(store: Arc<dyn RuntimeStore>, proxy_url: &str) -> Result<Readiness, BuildError> {
    let http = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(2))
        .build()
        .map_err(|e| {
            BuildError::Config(ConfigProblem(format!("cannot create the HTTP client: {e}")))
        })?;
    let health = format!("{}/health", proxy_url.trim().trim_end_matches('/'));
    Ok(Readiness::new()
        .with_probe("database", store, |store| async move { store.ping().await })
        .with_probe("llm_proxy", (http, health), |(http, health)| async move {
            let response = http
                .get(&health)
                .send()
                .await
                .map_err(|e| format!("cannot reach the LLM proxy: {e}"))?;
            if response.status().is_success() {
                Ok(())
            } else {
                Err(format!("the LLM proxy answered {}", response.status()))
            }
        }))
}

/// Purges idle sessions now and then every [`PURGE_INTERVAL`].
async fn purge_loop(store: Arc<dyn RuntimeStore>, clock: SharedClock, retention_days: u32) {
    let mut interval = tokio::time::interval(PURGE_INTERVAL);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        interval.tick().await;
        if let Err(error) = purge_once(store.as_ref(), &clock, retention_days).await {
            tracing::warn!(%error, "purging idle sessions failed");
        }
    }
}

/// One run of the retention job: removes the sessions idle for more than `retention_days`
/// (0 keeps everything) and logs how many.
async fn purge_once(
    store: &dyn RuntimeStore,
    clock: &SharedClock,
    retention_days: u32,
) -> Result<u64, StoreError> {
    if retention_days == 0 {
        return Ok(0);
    }
    let now = DateTime::<Utc>::from(clock.now());
    let cutoff = now - chrono::Duration::days(i64::from(retention_days));
    let removed = purge_idle_sessions(store, cutoff).await?;
    if removed > 0 {
        tracing::info!(removed, retention_days, "purged idle sessions");
        // Their waiting calls went with them.
        metrics::refresh_pending_approvals(store).await;
    }
    Ok(removed)
}

/// Removes every session idle since before `cutoff`, [`PURGE_BATCH`] at a time; returns how
/// many were removed. Each batch is one statement, committed on its own: a purge that stops
/// half way keeps what it removed, and never holds the database for long.
pub async fn purge_idle_sessions(
    store: &dyn RuntimeStore,
    cutoff: DateTime<Utc>,
) -> Result<u64, StoreError> {
    let mut total = 0;
    loop {
        let removed = store.purge_idle_sessions(cutoff, PURGE_BATCH).await?;
        total += removed;
        ::metrics::counter!(metrics::SESSIONS_PURGED).increment(removed);
        if removed > 0 {
            tracing::debug!(removed, total, "purged a batch of idle sessions");
        }
        if removed < u64::from(PURGE_BATCH) {
            return Ok(total);
        }
        // Let requests in between batches.
        tokio::task::yield_now().await;
    }
}

/// Recounts the pending approvals every [`PENDING_APPROVALS_REFRESH`] (the first count is
/// `build`'s), so this replica's gauge follows what the others change.
async fn pending_approvals_loop(store: Arc<dyn RuntimeStore>) {
    let start = tokio::time::Instant::now() + PENDING_APPROVALS_REFRESH;
    let mut interval = tokio::time::interval_at(start, PENDING_APPROVALS_REFRESH);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        interval.tick().await;
        metrics::refresh_pending_approvals(store.as_ref()).await;
    }
}

/// Resumes turns whose runner died, at start and then `every` (a replica that crashed leaves
/// its turns to the others).
async fn recovery_loop(engine: Arc<Engine>, every: Duration) {
    let mut interval = tokio::time::interval(every);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        interval.tick().await;
        match engine.recover_stalled_turns().await {
            Ok(0) => {}
            Ok(resumed) => tracing::info!(resumed, "resumed turns whose runner had stopped"),
            Err(error) => tracing::warn!(%error, "looking for stalled turns failed"),
        }
    }
}
