//! `codelab serve <service>`: one service per process, as containers run it.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, ValueEnum};
use codelab_agent_runtime::RuntimeService;
use codelab_auth::AuthService;
use codelab_core::config::{ConfigLoader, resolve_port};
use codelab_core::http::{ListenerLimits, serve_with_limits, shutdown_on_signals};
use codelab_core::service::{Listens, Service, SharedDeps};
use codelab_core::starting::{Starting, build_when_database_answers, database_unreachable};
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
        Err(error) if database_unreachable(&error) => Err(error.to_string()),
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
            let retried = build_when_database_answers::<S>(&config, &deps, error, |error| {
                starting.not_ready(format!("unreachable: {error}"));
            });
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
