//! `codelab serve <service>`: one service per process, as containers run it.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, ValueEnum};
use codelab_core::config::{ConfigLoader, resolve_port};
use codelab_core::http::{ListenerLimits, serve_with_limits, shutdown_on_signals};
use codelab_core::telemetry::init_tracing;
use codelab_llm_proxy::routing::ProviderEnv;

use super::services::{
    ListenOverrides, agent_runtime_config, auth_config, gateway_config, llm_proxy_config,
    print_seeded_credentials, website_config,
};

/// How long in-flight requests and streams may take to finish after SIGTERM.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// The services `serve` can run.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Service {
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
    service: Service,
    /// Port to listen on (wins over `<PREFIX>__PORT` and `PORT`).
    #[arg(long)]
    port: Option<u16>,
    /// Address to bind.
    #[arg(long)]
    host: Option<String>,
}

/// Runs the chosen service until SIGINT/SIGTERM.
pub async fn run(file: Option<PathBuf>, args: ServeArgs) -> anyhow::Result<ExitCode> {
    // Header and body read timeouts and the connection cap of the listener (`[http]`,
    // `HTTP__*`), common to every service.
    let limits = ListenerLimits::load(&ConfigLoader::from_env_or(file.clone()))
        .context("invalid listener limits")?;
    let overrides = ListenOverrides {
        port: args.port,
        host: args.host,
    };
    match args.service {
        Service::LlmProxy => {
            let (config, environment) = llm_proxy_config(file, &overrides)?;
            init_tracing(environment, &config.log_level);
            let port = resolve_port(config.port, codelab_llm_proxy::config::DEFAULT_PORT, true)?;
            let host = config.host.clone();
            let deps = codelab_llm_proxy::Deps {
                environment,
                provider_env: ProviderEnv::from_process(),
            };
            let state = codelab_llm_proxy::build(config, deps).await?;
            let listener = tokio::net::TcpListener::bind((host.as_str(), port))
                .await
                .with_context(|| format!("cannot listen on {host}:{port}"))?;
            tracing::info!(address = %listener.local_addr()?, "llm-proxy listening");
            serve_with_limits(
                listener,
                codelab_llm_proxy::router(state),
                shutdown_on_signals(),
                DRAIN_TIMEOUT,
                &limits,
            )
            .await?;
        }
        Service::Auth => {
            let (config, environment) = auth_config(file, &overrides)?;
            init_tracing(environment, &config.log_level);
            let port = resolve_port(config.port, codelab_auth::config::DEFAULT_PORT, true)?;
            let host = config.host.clone();
            let state = codelab_auth::build(config, codelab_auth::Deps::new(environment)).await?;
            if let Some(report) = state.take_seed_report() {
                print_seeded_credentials(&report);
            }
            let listener = tokio::net::TcpListener::bind((host.as_str(), port))
                .await
                .with_context(|| format!("cannot listen on {host}:{port}"))?;
            tracing::info!(address = %listener.local_addr()?, "auth listening");
            serve_with_limits(
                listener,
                codelab_auth::router(state),
                shutdown_on_signals(),
                DRAIN_TIMEOUT,
                &limits,
            )
            .await?;
        }
        Service::AgentRuntime => {
            let (config, environment) = agent_runtime_config(file, &overrides)?;
            init_tracing(environment, &config.log_level);
            let port = resolve_port(
                config.port,
                codelab_agent_runtime::config::DEFAULT_PORT,
                true,
            )?;
            let host = config.host.clone();
            let state =
                codelab_agent_runtime::build(config, codelab_agent_runtime::Deps::new(environment))
                    .await?;
            let listener = tokio::net::TcpListener::bind((host.as_str(), port))
                .await
                .with_context(|| format!("cannot listen on {host}:{port}"))?;
            tracing::info!(address = %listener.local_addr()?, "agent-runtime listening");
            serve_with_limits(
                listener,
                codelab_agent_runtime::router(state.clone()),
                shutdown_on_signals(),
                DRAIN_TIMEOUT,
                &limits,
            )
            .await?;
            // Frames whose client left are still being worked on: let them store their results.
            if !state.drain(DRAIN_TIMEOUT).await {
                tracing::warn!("turns still running after the drain timeout; stopping anyway");
            }
        }
        Service::Gateway => {
            let (config, environment) = gateway_config(file, &overrides)?;
            init_tracing(environment, &config.log_level);
            let port = resolve_port(config.port, codelab_gateway::config::DEFAULT_PORT, true)?;
            let host = config.host.clone();
            let shutdown = shutdown_on_signals();
            let deps = codelab_gateway::Deps {
                shutdown: shutdown.clone(),
                ..codelab_gateway::Deps::new(environment)
            };
            let state = codelab_gateway::build(config, deps).await?;
            let listener = tokio::net::TcpListener::bind((host.as_str(), port))
                .await
                .with_context(|| format!("cannot listen on {host}:{port}"))?;
            tracing::info!(address = %listener.local_addr()?, "gateway listening");
            serve_with_limits(
                listener,
                codelab_gateway::router(state.clone()),
                shutdown,
                DRAIN_TIMEOUT,
                &limits,
            )
            .await?;
            // Events of REST decisions still on their way to the sockets' fan-out.
            if !state.drain(DRAIN_TIMEOUT).await {
                tracing::warn!(
                    "gateway relays still running after the drain timeout; stopping anyway"
                );
            }
        }
        Service::Website => {
            let (config, environment) = website_config(file, &overrides)?;
            init_tracing(environment, &config.log_level);
            let port = resolve_port(config.port, codelab_website::config::DEFAULT_PORT, true)?;
            let host = config.host.clone();
            let state =
                codelab_website::build(config, codelab_website::Deps::new(environment)).await?;
            let listener = tokio::net::TcpListener::bind((host.as_str(), port))
                .await
                .with_context(|| format!("cannot listen on {host}:{port}"))?;
            tracing::info!(address = %listener.local_addr()?, "website listening");
            serve_with_limits(
                listener,
                codelab_website::router(state),
                shutdown_on_signals(),
                DRAIN_TIMEOUT,
                &limits,
            )
            .await?;
        }
    }
    Ok(ExitCode::SUCCESS)
}
