//! `codelab up`: every service in one process (the stack of `codelab_stack`), plus one public
//! listener that routes like our nginx (`/` website, `/oauth/` and `/.well-known/` auth,
//! `/api/v1/` gateway incl. its WebSocket, health routes).
//!
//! Services listen on 127.0.0.1 on their usual ports (an ephemeral port when that one is
//! taken), so they can still be reached one by one while the public listener is the front door.
//!
//! `up` is the development profile (generated keys, SQLite, `session` WebSocket auth for the
//! Flutter IDE): it refuses to start in staging or production. Its public listener exposes what
//! nginx exposes and no more (docs/security.md): no token introspection, no `/metrics` or
//! `/ready`, and the internal headers are removed from every client request.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;
use codelab_agent_runtime::RuntimeService;
use codelab_auth::AuthService;
use codelab_core::config::{ConfigLoader, Environment, Secret};
use codelab_core::http::{ListenerLimits, shutdown_on_signals};
use codelab_core::service::{EnvVars, Service};
use codelab_core::telemetry::init_tracing;
use codelab_gateway::GatewayService;
use codelab_llm_proxy::ProxyService;
use codelab_stack::{
    Database, GatewayAuth, InternalKeys, Ports, ServiceId, Stack, StackError, postgres_database_url,
};
use codelab_website::WebsiteService;
use tokio::net::TcpListener;

use super::serve::DRAIN_TIMEOUT;
use super::services::print_seeded_credentials;

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
    /// Set the `admin` user's password (development only, as all of `up`).
    #[arg(long, value_name = "PASSWORD")]
    admin_password: Option<String>,
    /// Turn the gateway's authentication off: REST calls without a token act as the
    /// development user and WebSockets need no token (development only; tokens presented are
    /// still verified).
    #[arg(long)]
    no_auth: bool,
    /// PostgreSQL instead of SQLite files: one database per service on this server
    /// (`codelab_auth`, `codelab_agent_runtime`; when the URL names a database other than
    /// `postgres`, that name is the prefix: `<name>_auth`, `<name>_agent_runtime`), each created
    /// if missing.
    #[arg(long, value_name = "URL")]
    postgres_url: Option<String>,
    /// Redis instead of memory for the auth service's rate limits and lockouts, the
    /// gateway's event fan-out and the console's logins (which then outlive a restart when
    /// `WEBSITE__SESSION_KEY` is set).
    #[arg(long, value_name = "URL")]
    redis_url: Option<String>,
    /// The model every agent uses and the proxy's default (else `AGENT_RUNTIME__LLM_MODEL`,
    /// else `mock-llm`).
    #[arg(long, value_name = "NAME")]
    model: Option<String>,
}

/// Starts everything and waits for Ctrl-C / SIGTERM.
pub async fn run(file: Option<PathBuf>, args: UpArgs) -> anyhow::Result<ExitCode> {
    // Everything `up` sets up (generated keys, `session` WebSocket auth, --admin-password,
    // --no-auth) is a development convenience: a deployment must not get it by accident.
    if let Some((variable, environment)) = hardened_environment(|name| std::env::var(name).ok())? {
        anyhow::bail!(
            "`codelab up` is for development only and refuses {variable}={environment}: run each \
             service with `codelab serve <service>`, or deploy with Docker Compose \
             (deploy/compose) or Helm (deploy/helm/codelab); see docs/deployment.md"
        );
    }
    let loader = ConfigLoader::from_env_or(file);
    // The public listener faces clients: the configured header, body and connection limits
    // (`HTTP__*`) apply to it as to every `codelab serve` listener.
    let public_limits = ListenerLimits::load(&loader).context("invalid [http] listener limits")?;
    if let Some(server) = &args.postgres_url {
        // A bad URL stops `up` before anything starts.
        postgres_database_url(server, "auth")?;
    }
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("cannot create the data dir {}", args.data_dir.display()))?;
    let data_dir = args
        .data_dir
        .canonicalize()
        .unwrap_or_else(|_| args.data_dir.clone());
    // Logs follow the proxy's level, as before the stack existed (it starts first).
    let proxy_config: <ProxyService as Service>::Config = loader
        .load(ProxyService::SECTION, ProxyService::ENV_PREFIX, &())
        .context("invalid llm-proxy configuration")?;
    init_tracing(Environment::Development, &proxy_config.log_level);
    let runtime_key = operator_runtime_key(&loader)?;

    // Bound before the auth service is built: its issuer and metadata URLs name this address.
    let public = TcpListener::bind(args.listen).await.with_context(|| {
        format!(
            "cannot listen on {} (is another `codelab up` running? use --listen)",
            args.listen
        )
    })?;
    let public_address = public.local_addr()?;

    // Internal keys are per link and only live as long as this process (the stack generates
    // them): nothing outside it needs them, unless the operator sets the runtime's. Every service's own settings (file,
    // `<PREFIX>__*`) are read; the stack's wiring, `--model` and the flags go over them.
    let mut stack = Stack::builder()
        .data_dir(&data_dir)
        .database(match &args.postgres_url {
            Some(server) => Database::Postgres(server.clone()),
            None => Database::Sqlite,
        })
        .ports(if args.ephemeral_ports {
            Ports::Ephemeral
        } else {
            Ports::Usual
        })
        .front_door(public)
        .front_door_limits(public_limits)
        .load_settings(loader)
        .environment(Environment::Development)
        .gateway_auth(if args.no_auth {
            GatewayAuth::Off
        } else {
            GatewayAuth::Session
        })
        .env(EnvVars::from_process())
        .drain_timeout(DRAIN_TIMEOUT)
        .shutdown(shutdown_on_signals());
    if let Some(runtime) = &runtime_key {
        // The operator's key guards the runtime, so its API can be called from outside (the
        // schema tests do); the proxy's key stays generated.
        stack = stack.keys(InternalKeys {
            proxy: Secret::generate(),
            runtime: runtime.clone(),
        });
    }
    if let Some((model, _)) = chosen_model(args.model.as_deref(), |name| {
        std::env::var(name).ok().filter(|v| !v.is_empty())
    }) {
        stack = stack.model(model);
    }
    if let Some(url) = &args.redis_url {
        stack = stack.redis_url(url.clone());
    }
    if let Some(password) = &args.admin_password {
        stack = stack.admin_password(password.clone());
    }
    if let Some(server) = &args.postgres_url {
        stack = stack.wait_for_database(waiting_notice(server, public_address));
    }
    let mut stack = match stack.start().await {
        Ok(stack) => stack,
        // Ctrl-C while PostgreSQL did not answer: nothing started, nothing to drain.
        Err(StackError::Stopped) => {
            println!("CodeLab stopped.");
            return Ok(ExitCode::SUCCESS);
        }
        Err(error) => return Err(error.into()),
    };

    let backends = backends(&args)?;
    print_summary(
        public_address,
        &stack.public_url,
        &data_dir,
        &stack.services(),
        &backends,
        args.no_auth,
        runtime_key.is_some(),
    );
    let seed_report = stack
        .auth
        .as_ref()
        .and_then(|auth| auth.state.take_seed_report());
    if let Some(mut report) = seed_report {
        if args.admin_password.is_some() {
            // Printed below with its real origin.
            report.admin_password = None;
        }
        print_seeded_credentials(&report);
    }
    if let Some(password) = &args.admin_password {
        println!("Admin login: username admin, password {password} (from --admin-password)");
    }

    let mut failed = false;
    while let Some(stopped) = stack.join_next().await {
        // One service ending (error or not) stops the others.
        if let Err(failure) = stopped {
            eprintln!("error: a service stopped: {failure}");
            failed = true;
        }
    }
    println!("CodeLab stopped.");
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// The runtime's key setting (also `internal_api_key` in the file's `[agent_runtime]`).
const RUNTIME_KEY_VARIABLE: &str = "AGENT_RUNTIME__INTERNAL_API_KEY";

/// The gateway→runtime key the operator set (`AGENT_RUNTIME__INTERNAL_API_KEY`, or the file's
/// runtime section), or `None` to generate one: unset, empty or the shipped placeholder.
fn operator_runtime_key(loader: &ConfigLoader) -> anyhow::Result<Option<Secret>> {
    let config: <RuntimeService as Service>::Config = loader
        .load(RuntimeService::SECTION, RuntimeService::ENV_PREFIX, &())
        .context("invalid agent-runtime configuration")?;
    let placeholder = <RuntimeService as Service>::Config::default().internal_api_key;
    let key = config.internal_api_key;
    Ok((!key.is_empty() && key.expose() != placeholder.expose()).then_some(key))
}

/// The environment variables naming a profile for one of `up`'s services, in the order they
/// are reported: each service's own `<PREFIX>__ENVIRONMENT`, then plain `ENVIRONMENT`.
const ENVIRONMENT_PREFIXES: [&str; 5] = [
    AuthService::ENV_PREFIX,
    GatewayService::ENV_PREFIX,
    RuntimeService::ENV_PREFIX,
    ProxyService::ENV_PREFIX,
    WebsiteService::ENV_PREFIX,
];

/// The first variable that puts one of `up`'s services in a hardened profile (staging,
/// production) and that profile, or `None` when every service would run as development.
fn hardened_environment(
    lookup: impl Fn(&str) -> Option<String>,
) -> anyhow::Result<Option<(String, Environment)>> {
    for prefix in ENVIRONMENT_PREFIXES {
        let environment = codelab_core::config::environment_with(prefix, &lookup)?;
        if environment.is_hardened() {
            let own = format!("{prefix}__ENVIRONMENT");
            let variable = if lookup(&own).is_some_and(|v| !v.trim().is_empty()) {
                own
            } else {
                "ENVIRONMENT".to_owned()
            };
            return Ok(Some((variable, environment)));
        }
    }
    Ok(None)
}

/// What `up` prints while PostgreSQL does not answer: once, when the first service finds it
/// down (its URL redacted, as in the summary); the stack logs every retry. A server that
/// answers and refuses (wrong password, no `pg_hba.conf` entry) is not waited for: `up` stops
/// with the driver's error, since retrying cannot fix a setting.
fn waiting_notice(
    server: &str,
    public: SocketAddr,
) -> impl Fn(ServiceId, &str) + Send + Sync + use<> {
    let server = codelab_core::db::redact_database_url(server);
    let printed = std::sync::atomic::AtomicBool::new(false);
    move |service, error| {
        if printed.swap(true, std::sync::atomic::Ordering::Relaxed) {
            return;
        }
        println!();
        println!(
            "Waiting for PostgreSQL at {server} (the {} service: {error}).",
            service.name()
        );
        println!(
            "  public address   http://{public} (answers 503 until PostgreSQL answers; retrying \
             every few seconds, Ctrl-C stops)"
        );
    }
}

/// `url` with its password hidden, for the summary.
fn redact_url(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(mut parsed) if parsed.password().is_some() => {
            let _ = parsed.set_password(Some("***"));
            parsed.to_string()
        }
        _ => url.to_owned(),
    }
}

/// How to reach the gateway: the Flutter IDE's server URL, the terminal client, auth state.
fn print_gateway_summary(url: &str, no_auth: bool) {
    let ws = url.replacen("http://", "ws://", 1);
    println!("  api              {url}/api/v1 (REST; WebSocket {ws}/api/v1/ws/<session id>)");
    println!("  gateway health   {url}/gateway-health");
    println!("  Flutter IDE      set the server URL to {url} and log in (e.g. as admin)");
    println!("  terminal         codelab chat, with {url} as the server");
    if no_auth {
        println!(
            "  authentication   OFF (--no-auth): calls without a token act as the user `dev`, \
             WebSockets are not authenticated"
        );
    }
}

fn print_summary(
    public: SocketAddr,
    public_url: &str,
    data_dir: &Path,
    running: &[(&'static str, SocketAddr)],
    backends: &[String],
    no_auth: bool,
    runtime_key_set: bool,
) {
    println!();
    println!("CodeLab is up.");
    println!("  public address   http://{public}");
    println!("  health           http://{public}/nginx-health");
    println!("  oauth            http://{public}/oauth/token");
    println!("  website          http://{public}/ (docs at /docs, console at /console)");
    for (name, address) in running {
        if runtime_key_set && *name == ServiceId::AgentRuntime.name() {
            println!(
                "  {name:<16} http://{address} (internal; X-Internal-Auth: the key in \
                 {RUNTIME_KEY_VARIABLE})"
            );
        } else {
            println!("  {name:<16} http://{address} (internal)");
        }
    }
    println!("  data dir         {}", data_dir.display());
    for line in backends {
        println!("{line}");
    }
    print_gateway_summary(public_url, no_auth);
    println!("Press Ctrl-C to stop.");
    println!();
}

/// Summary lines: where the data lives, what holds the counters and the fan-out, `--model`.
fn backends(args: &UpArgs) -> anyhow::Result<Vec<String>> {
    let mut lines = Vec::new();
    if let Some(server) = &args.postgres_url {
        let redacted = |service| {
            postgres_database_url(server, service)
                .map(|url| codelab_core::db::redact_database_url(&url))
        };
        lines.push(format!(
            "  databases        PostgreSQL {} and {}",
            redacted("auth")?,
            redacted("agent_runtime")?
        ));
    } else {
        lines.push("  databases        SQLite files in the data dir".to_owned());
    }
    lines.push(match &args.redis_url {
        Some(url) => format!(
            "  redis            {} (rate limits, lockouts, event fan-out, console logins)",
            redact_url(url)
        ),
        None => {
            "  redis            none (rate limits, lockouts, fan-out and console logins in memory)"
                .to_owned()
        }
    });
    lines.push(
        match chosen_model(args.model.as_deref(), |name| {
            std::env::var(name).ok().filter(|v| !v.is_empty())
        }) {
            Some((model, why)) => format!("  model            {model} ({why})"),
            None => "  model            mock-llm unless AGENT_RUNTIME__LLM_MODEL names another \
                     (the deterministic mock; --model or a provider key picks a real one)"
                .to_owned(),
        },
    );
    Ok(lines)
}

/// The default model of `up`: `--model`; else, when AGENT_RUNTIME__LLM_MODEL does not name
/// one, a model of the first provider whose key is in the environment; else none (the mock).
fn chosen_model(
    flag: Option<&str>,
    env: impl Fn(&str) -> Option<String>,
) -> Option<(String, &'static str)> {
    if let Some(model) = flag {
        return Some((model.to_owned(), "--model"));
    }
    if env("AGENT_RUNTIME__LLM_MODEL").is_some() {
        return None;
    }
    let by_key = [
        (
            "OPENAI_API_KEY",
            "openai/gpt-4o-mini",
            "OPENAI_API_KEY is set",
        ),
        (
            "ANTHROPIC_API_KEY",
            "anthropic/claude-3-5-haiku-latest",
            "ANTHROPIC_API_KEY is set",
        ),
        (
            "OLLAMA_BASE_URL",
            "ollama/llama3.2",
            "OLLAMA_BASE_URL is set",
        ),
        (
            "OLLAMA_API_BASE",
            "ollama/llama3.2",
            "OLLAMA_API_BASE is set",
        ),
    ];
    by_key
        .iter()
        .find(|(key, _, _)| env(key).is_some())
        .map(|(_, model, why)| ((*model).to_owned(), *why))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_model_is_the_mock_unless_a_flag_setting_or_provider_key_says_otherwise() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |name: &str| {
                pairs
                    .iter()
                    .find(|(k, _)| *k == name)
                    .map(|(_, v)| (*v).to_owned())
            }
        };
        assert_eq!(chosen_model(None, env(&[])), None);
        assert_eq!(
            chosen_model(Some("gpt-4.1"), env(&[("OPENAI_API_KEY", "k")])),
            Some(("gpt-4.1".to_owned(), "--model"))
        );
        assert_eq!(
            chosen_model(None, env(&[("ANTHROPIC_API_KEY", "k")])).map(|(m, _)| m),
            Some("anthropic/claude-3-5-haiku-latest".to_owned())
        );
        assert_eq!(
            chosen_model(
                None,
                env(&[("OPENAI_API_KEY", "k"), ("AGENT_RUNTIME__LLM_MODEL", "x")])
            ),
            None,
            "the runtime's own setting wins over a guess from the keys"
        );
    }

    #[test]
    fn up_refuses_every_hardened_profile_and_names_the_variable() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |name: &str| {
                pairs
                    .iter()
                    .find(|(k, _)| *k == name)
                    .map(|(_, v)| (*v).to_owned())
            }
        };
        assert_eq!(hardened_environment(env(&[])).unwrap(), None);
        assert_eq!(
            hardened_environment(env(&[("ENVIRONMENT", "development")])).unwrap(),
            None
        );
        assert_eq!(
            hardened_environment(env(&[("ENVIRONMENT", "staging")])).unwrap(),
            Some(("ENVIRONMENT".to_owned(), Environment::Staging))
        );
        assert_eq!(
            hardened_environment(env(&[
                ("ENVIRONMENT", "development"),
                ("GATEWAY__ENVIRONMENT", "production")
            ]))
            .unwrap(),
            Some(("GATEWAY__ENVIRONMENT".to_owned(), Environment::Production))
        );
        assert!(hardened_environment(env(&[("ENVIRONMENT", "qa")])).is_err());
    }

    #[test]
    fn each_service_gets_its_own_postgres_database() {
        let url = |server| postgres_database_url(server, "auth").unwrap();
        assert_eq!(
            url("postgres://u:p@db:5432"),
            "postgres://u:p@db:5432/codelab_auth"
        );
        assert_eq!(
            url("postgres://u@db/postgres?sslmode=disable"),
            "postgres://u@db/codelab_auth?sslmode=disable"
        );
        assert_eq!(url("postgresql://db/ci_42"), "postgres://db/ci_42_auth");
        // Loopback: no TLS unless asked for (it would verify nothing and only cost CPU).
        assert_eq!(
            url("postgres://postgres@127.0.0.1:5432/postgres"),
            "postgres://postgres@127.0.0.1:5432/codelab_auth?sslmode=disable"
        );
        assert_eq!(
            url("postgres://localhost/x?application_name=a"),
            "postgres://localhost/x_auth?application_name=a&sslmode=disable"
        );
        assert_eq!(
            url("postgres://[::1]/x"),
            "postgres://[::1]/x_auth?sslmode=disable"
        );
        assert_eq!(
            url("postgres://127.0.0.1/x?sslmode=require"),
            "postgres://127.0.0.1/x_auth?sslmode=require"
        );
        assert_eq!(url("postgres://10.0.0.1/x"), "postgres://10.0.0.1/x_auth");
        assert_eq!(
            url("postgresql+asyncpg://u:p@db:5432/"),
            "postgres://u:p@db:5432/codelab_auth"
        );
        assert!(postgres_database_url("sqlite:///x.db", "auth").is_err());
        assert_eq!(
            redact_url("redis://:secret@r:6379/1"),
            "redis://:***@r:6379/1"
        );
        assert_eq!(redact_url("redis://r:6379"), "redis://r:6379");
    }
}
