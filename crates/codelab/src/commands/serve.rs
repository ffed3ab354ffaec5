//! `codelab serve <service>`: one service per process, as containers run it.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::response::IntoResponse as _;
use clap::{Args, ValueEnum};
use codelab_agent_runtime::RuntimeService;
use codelab_auth::AuthService;
use codelab_core::config::{ConfigLoader, resolve_port};
use codelab_core::http::{ListenerLimits, serve_with_limits, shutdown_on_signals};
use codelab_core::service::{Listens, Service, SharedDeps};
use codelab_core::telemetry::init_tracing;
use codelab_gateway::GatewayService;
use codelab_llm_proxy::ProxyService;
use codelab_website::WebsiteService;

use super::services::{ListenOverrides, load_config, print_seeded_credentials};

/// How long in-flight requests and streams may take to finish after SIGTERM.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// The services `serve` can run.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum ServiceName {
    LlmProxy,
    Auth,
    AgentRuntime,
    Gateway,
    Website,
}

/// Arguments of `codelab serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// The service to run.
    service: ServiceName,
    /// Port to listen on (wins over `<PREFIX>__PORT` and `PORT`).
    #[arg(long)]
    port: Option<u16>,
    /// Address to bind.
    #[arg(long)]
    host: Option<String>,
}

/// Runs the chosen service until SIGINT/SIGTERM.
pub async fn run(file: Option<PathBuf>, args: ServeArgs) -> anyhow::Result<ExitCode> {
    let overrides = ListenOverrides {
        port: args.port,
        host: args.host,
    };
    match args.service {
        ServiceName::LlmProxy => serve::<ProxyService>(file, &overrides, |_| {}).await?,
        ServiceName::Auth => {
            serve::<AuthService>(file, &overrides, |state| {
                if let Some(report) = state.take_seed_report() {
                    print_seeded_credentials(&report);
                }
            })
            .await?;
        }
        ServiceName::AgentRuntime => serve::<RuntimeService>(file, &overrides, |_| {}).await?,
        ServiceName::Gateway => serve::<GatewayService>(file, &overrides, |_| {}).await?,
        ServiceName::Website => serve::<WebsiteService>(file, &overrides, |_| {}).await?,
    }
    Ok(ExitCode::SUCCESS)
}

/// Loads `S`'s settings, builds it, calls `started` with its state, serves it with the
/// listener limits until SIGINT/SIGTERM, then drains it.
async fn serve<S: Service>(
    file: Option<PathBuf>,
    overrides: &ListenOverrides,
    started: impl FnOnce(&S),
) -> anyhow::Result<()> {
    // Header and body read timeouts and the connection cap of the listener (`[http]`,
    // `HTTP__*`), common to every service.
    let limits = ListenerLimits::load(&ConfigLoader::from_env_or(file.clone()))
        .context("invalid listener limits")?;
    let (config, environment) = load_config::<S>(file, overrides)?;
    init_tracing(environment, config.listen().log_level);
    let port = resolve_port(config.listen().port, S::DEFAULT_PORT, true)?;
    let host = config.listen().host.to_owned();
    // The gateway closes its sockets on this token; the listener stops on it too.
    let shutdown = shutdown_on_signals();
    let deps = SharedDeps::new(environment).with_shutdown(shutdown.clone());
    // A refused setting must stop the process before it listens; only a database that does
    // not answer yet is waited for.
    let first = match S::build(config.clone(), deps.clone()).await {
        Ok(state) => Ok(state),
        Err(error) if is_database_unreachable(&error) => Err(error.to_string()),
        Err(error) => return Err(error.into()),
    };
    let listener = tokio::net::TcpListener::bind((host.as_str(), port))
        .await
        .with_context(|| format!("cannot listen on {host}:{port}"))?;
    tracing::info!(address = %listener.local_addr()?, "{} listening", S::NAME);
    let state = match first {
        Ok(state) => {
            started(&state);
            let router = S::router(Arc::clone(&state));
            serve_with_limits(listener, router, shutdown, DRAIN_TIMEOUT, &limits).await?;
            state
        }
        Err(error) => {
            // Until the service is built, the listener answers /health, and /ready with 503
            // naming the database, so an orchestrator waits for the database instead of
            // restarting the process (docs/operations.md, "When a dependency fails").
            let starting = Starting::default();
            starting.not_ready(format!("unreachable: {error}"));
            let front = starting.router();
            let serving = codelab_core::tasks::spawn("listener", {
                let shutdown = shutdown.clone();
                async move { serve_with_limits(listener, front, shutdown, DRAIN_TIMEOUT, &limits).await }
            });
            let retried = build_when_database_answers::<S>(config, deps, &starting, error);
            let Some(state) = retried.await? else {
                // Stopped while waiting for the database: nothing was built, nothing to drain.
                serving.await??;
                return Ok(());
            };
            started(&state);
            starting.serve(S::router(Arc::clone(&state)));
            serving.await??;
            state
        }
    };
    // Work whose client left (runtime turns, gateway relays) may still be storing results.
    if !S::drain(&state, DRAIN_TIMEOUT).await {
        tracing::warn!(
            service = S::NAME,
            "work still running after the drain timeout; stopping anyway"
        );
    }
    Ok(())
}

/// First pause between two attempts to start a service whose database does not answer; it
/// doubles up to [`DATABASE_RETRY_MAX`] (each attempt also waits for the pool's connect
/// timeout).
const DATABASE_RETRY_FIRST: Duration = Duration::from_millis(500);
const DATABASE_RETRY_MAX: Duration = Duration::from_secs(5);

/// Builds `S` again and again, after a first attempt that failed with `first_error`, while the
/// reason it cannot start is its database not answering (refused, timed out, starting up,
/// shutting down). Any other error is returned at once. `None` when `shutdown` fired first.
async fn build_when_database_answers<S: Service>(
    config: S::Config,
    deps: SharedDeps,
    starting: &Starting,
    first_error: String,
) -> anyhow::Result<Option<Arc<S>>> {
    let shutdown = deps.shutdown.clone();
    let mut pause = DATABASE_RETRY_FIRST;
    let mut error = first_error;
    loop {
        // The error names the database with its password redacted.
        tracing::warn!(
            service = S::NAME,
            %error,
            retry_in_ms = pause.as_millis() as u64,
            "the database does not answer; not ready, retrying"
        );
        tokio::select! {
            () = shutdown.cancelled() => return Ok(None),
            () = tokio::time::sleep(pause) => {}
        }
        pause = (pause * 2).min(DATABASE_RETRY_MAX);
        error = match S::build(config.clone(), deps.clone()).await {
            Ok(state) => return Ok(Some(state)),
            Err(error) if is_database_unreachable(&error) => error.to_string(),
            Err(error) => return Err(error.into()),
        };
        starting.not_ready(format!("unreachable: {error}"));
    }
}

/// Whether `error` (or what caused it) is a database that does not answer yet
/// ([`codelab_core::db::database_unavailable`]: refused, timed out, starting up, shutting down).
fn is_database_unreachable(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(error);
    while let Some(error) = next {
        if let Some(sqlx_error) = error.downcast_ref::<sqlx::Error>() {
            return codelab_core::db::database_unavailable(sqlx_error);
        }
        next = error.source();
    }
    false
}

/// The listener's router while a service starts: `/health` answers (the process is alive),
/// `/ready` and every other route answer 503 until [`Starting::serve`] hands over the
/// service's own router.
#[derive(Clone, Default)]
struct Starting {
    service: Arc<std::sync::OnceLock<axum::Router>>,
    why: Arc<std::sync::Mutex<String>>,
}

impl Starting {
    fn not_ready(&self, why: String) {
        *self
            .why
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = why;
    }

    fn serve(&self, router: axum::Router) {
        let _ = self.service.set(router);
    }

    /// Hands every request to the service's router once it is there, answers meanwhile.
    fn router(&self) -> axum::Router {
        let starting = self.clone();
        axum::Router::new().fallback(move |request: axum::extract::Request| {
            let starting = starting.clone();
            async move {
                use tower::ServiceExt as _;
                match starting.service.get() {
                    Some(router) => router.clone().oneshot(request).await.into_response(),
                    None => starting.answer(request.uri().path()),
                }
            }
        })
    }

    fn answer(&self, path: &str) -> axum::response::Response {
        use axum::http::StatusCode;
        let why = self
            .why
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        match path {
            // Alive: a liveness probe must not restart a process that waits for its database.
            "/health" => axum::Json(serde_json::json!({"status": "starting"})).into_response(),
            "/ready" => (
                StatusCode::SERVICE_UNAVAILABLE,
                axum::Json(serde_json::json!({
                    "status": "not_ready",
                    "checks": {"database": why},
                })),
            )
                .into_response(),
            _ => (
                StatusCode::SERVICE_UNAVAILABLE,
                [(axum::http::header::RETRY_AFTER, "5")],
                axum::Json(serde_json::json!({
                    "detail": "the service is starting: its database does not answer yet",
                })),
            )
                .into_response(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use codelab_core::db::{DbError, DbKind};

    fn connect_error(source: sqlx::Error) -> DbError {
        DbError::Connect {
            kind: DbKind::Postgres,
            url: "postgres://u:***@db/x".into(),
            source,
        }
    }

    #[test]
    fn a_database_that_does_not_answer_is_waited_for() {
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        for error in [
            connect_error(sqlx::Error::PoolTimedOut),
            connect_error(sqlx::Error::Io(refused)),
        ] {
            assert!(is_database_unreachable(&error), "{error}");
            // Wrapped by a service's error, as `Service::build` returns it.
            let wrapped = anyhow::Error::new(error);
            assert!(is_database_unreachable(wrapped.as_ref()));
        }
    }

    #[test]
    fn other_start_errors_stop_the_process() {
        let refused_setting = connect_error(sqlx::Error::Configuration("bad url".into()));
        assert!(!is_database_unreachable(&refused_setting));
        let plain = std::io::Error::other("no such file");
        assert!(!is_database_unreachable(&plain));
    }
}
