//! `codelab up`: every service in one process, plus one public listener that routes like our
//! nginx (`/` website, `/oauth/` and `/.well-known/` auth, `/api/v1/` gateway, health routes).
//!
//! Services listen on 127.0.0.1 on their usual ports (an ephemeral port when that one is
//! taken), so they can still be reached one by one while the public listener is the front door.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use axum::Router;
use axum::routing::get;
use clap::Args;
use codelab_core::config::{Environment, Secret};
use codelab_core::http::{serve, shutdown_on_signals};
use codelab_core::telemetry::init_tracing;
use codelab_llm_proxy::routing::ProviderEnv;
use serde::Serialize;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::serve::DRAIN_TIMEOUT;
use super::services::llm_proxy_config;

/// Arguments of `codelab up`.
#[derive(Debug, Args)]
pub struct UpArgs {
    /// Address of the public listener (what the IDE, browsers and `codelab chat` use).
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Folder for everything the system stores (databases, keys).
    #[arg(long, default_value = "./.codelab")]
    data_dir: PathBuf,
    /// Bind every internal service to an ephemeral port instead of its usual one.
    #[arg(long)]
    ephemeral_ports: bool,
}

#[derive(Serialize)]
struct ProxyOverrides {
    host: String,
    internal_api_key: String,
}

/// A service running inside `up`.
struct Running {
    name: &'static str,
    address: SocketAddr,
}

/// Starts everything and waits for Ctrl-C / SIGTERM.
pub async fn run(file: Option<PathBuf>, args: UpArgs) -> anyhow::Result<ExitCode> {
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("cannot create the data dir {}", args.data_dir.display()))?;
    let data_dir = args
        .data_dir
        .canonicalize()
        .unwrap_or_else(|_| args.data_dir.clone());
    let shutdown = shutdown_on_signals();
    let mut tasks = JoinSet::new();
    let mut running = Vec::new();

    // Internal keys are per link and only live as long as this process: nothing outside it
    // needs them.
    let proxy_key = Secret::generate();
    let overrides = ProxyOverrides {
        host: "127.0.0.1".into(),
        internal_api_key: proxy_key.expose().to_owned(),
    };
    let (proxy_config, _) = llm_proxy_config(file, &overrides)?;
    init_tracing(Environment::Development, &proxy_config.log_level);
    let proxy_port = proxy_config
        .port
        .unwrap_or(codelab_llm_proxy::config::DEFAULT_PORT);
    let deps = codelab_llm_proxy::Deps {
        environment: Environment::Development,
        provider_env: ProviderEnv::from_process(),
    };
    let proxy_state = codelab_llm_proxy::build(proxy_config, deps).await?;
    let listener = bind_internal(proxy_port, args.ephemeral_ports).await?;
    running.push(Running {
        name: codelab_llm_proxy::SERVICE_NAME,
        address: listener.local_addr()?,
    });
    tasks.spawn(serve(
        listener,
        codelab_llm_proxy::router(proxy_state),
        shutdown.clone(),
        DRAIN_TIMEOUT,
    ));

    let public = TcpListener::bind(args.listen).await.with_context(|| {
        format!(
            "cannot listen on {} (is another `codelab up` running? use --listen)",
            args.listen
        )
    })?;
    let public_address = public.local_addr()?;
    tasks.spawn(serve(
        public,
        public_router(),
        shutdown.clone(),
        DRAIN_TIMEOUT,
    ));

    print_summary(public_address, &data_dir, &running);
    wait(tasks, shutdown).await
}

/// Routes of the public listener, in nginx's order.
fn public_router() -> Router {
    Router::new().route("/nginx-health", get(|| async { "healthy\n" }))
}

async fn bind_internal(port: u16, ephemeral: bool) -> anyhow::Result<TcpListener> {
    if !ephemeral {
        if let Ok(listener) = TcpListener::bind(("127.0.0.1", port)).await {
            return Ok(listener);
        }
        tracing::warn!(port, "usual port is taken; using an ephemeral one");
    }
    TcpListener::bind(("127.0.0.1", 0))
        .await
        .context("cannot bind an internal port")
}

fn print_summary(public: SocketAddr, data_dir: &Path, running: &[Running]) {
    println!();
    println!("CodeLab is up.");
    println!("  public address   http://{public}");
    println!("  health           http://{public}/nginx-health");
    for service in running {
        println!(
            "  {:<16} http://{} (internal)",
            service.name, service.address
        );
    }
    println!("  data dir         {}", data_dir.display());
    println!("Press Ctrl-C to stop.");
    println!();
}

async fn wait(
    mut tasks: JoinSet<std::io::Result<()>>,
    shutdown: CancellationToken,
) -> anyhow::Result<ExitCode> {
    let mut failed = false;
    while let Some(result) = tasks.join_next().await {
        let failure = match result {
            Ok(Ok(())) => None,
            Ok(Err(error)) => Some(error.to_string()),
            Err(error) => Some(error.to_string()),
        };
        if let Some(failure) = failure {
            eprintln!("error: a service stopped: {failure}");
            failed = true;
        }
        // One service ending (error or not) stops the others.
        shutdown.cancel();
    }
    println!("CodeLab stopped.");
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}
