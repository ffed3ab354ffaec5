//! `codelab up`: every service in one process, plus one public listener that routes like our
//! nginx (`/` website, `/oauth/` and `/.well-known/` auth, `/api/v1/` gateway incl. its
//! WebSocket, health routes).
//!
//! Services listen on 127.0.0.1 on their usual ports (an ephemeral port when that one is
//! taken), so they can still be reached one by one while the public listener is the front door.
//!
//! `up` is the development profile (generated keys, SQLite, `session` WebSocket auth for the
//! Flutter IDE): it refuses to start in staging or production. Its public listener exposes what
//! nginx exposes and no more (docs/security.md): no token introspection, no `/metrics` or
//! `/ready`, and the internal headers are removed from every client request.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use axum::Router;
use axum::extract::{MatchedPath, OriginalUri, Request};
use axum::http::StatusCode;
use axum::http::Uri;
use axum::routing::{any, get};
use clap::Args;
use codelab_core::config::ConfigLoader;
use codelab_core::config::{Environment, Secret};
use codelab_core::http::{ListenerLimits, serve, serve_with_limits, shutdown_on_signals};
use codelab_core::telemetry::init_tracing;
use codelab_llm_proxy::routing::ProviderEnv;
use serde::Serialize;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

use super::serve::DRAIN_TIMEOUT;
use super::services::{
    agent_runtime_config, auth_config, gateway_config, llm_proxy_config, print_seeded_credentials,
    website_config,
};

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
    /// Redis instead of memory for the auth service's rate limits and lockouts and the
    /// gateway's event fan-out.
    #[arg(long, value_name = "URL")]
    redis_url: Option<String>,
    /// The model every agent uses and the proxy's default (else `AGENT_RUNTIME__LLM_MODEL`,
    /// else `mock-llm`).
    #[arg(long, value_name = "NAME")]
    model: Option<String>,
}

#[derive(Serialize)]
struct ProxyOverrides {
    host: String,
    internal_api_key: String,
    /// `--model`: the model of requests that name none.
    #[serde(skip_serializing_if = "Option::is_none")]
    default_model: Option<String>,
}

#[derive(Serialize)]
struct AuthOverrides {
    host: String,
    db_url: String,
    public_url: String,
    /// Empty: the in-memory cache (one process needs no Redis), unless `--redis-url`.
    redis_url: String,
    /// None: nothing stands between the public listener and the client, and the in-process
    /// hop to the auth router is not a proxy, so no forwarding header is believed.
    trusted_proxies: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    master_key: Option<String>,
}

#[derive(Serialize)]
struct RuntimeOverrides {
    host: String,
    db_url: String,
    llm_proxy_url: String,
    /// The proxy's internal key, sent as `X-Internal-Auth` on the runtime→proxy link.
    llm_proxy_api_key: String,
    /// Guards the runtime (the gateway→runtime link).
    internal_api_key: String,
    /// `--model`: every agent's model.
    #[serde(skip_serializing_if = "Option::is_none")]
    llm_model: Option<String>,
}

#[derive(Serialize)]
struct WebsiteOverrides {
    host: String,
    /// The public listener: the console's redirect URI and the browser's addresses.
    public_url: String,
    auth_public_url: String,
    gateway_public_url: String,
    /// The in-process services, called server to server.
    auth_url: String,
    gateway_url: String,
    agent_runtime_url: String,
    llm_proxy_url: String,
}

#[derive(Serialize)]
struct GatewayOverrides {
    host: String,
    /// The in-process runtime and the key of the gateway→runtime link.
    agent_url: String,
    internal_api_key: String,
    /// The auth service's internal address (JWKS) and its issuer (the public address).
    auth_service_url: String,
    jwt_issuer: String,
    use_jwt_auth: bool,
    /// `session` (the Flutter IDE connects without a token to sessions it created), or `off`
    /// with `--no-auth`. Always set: outside development the gateway's default is `required`,
    /// and `up` must keep the Flutter IDE working whatever that default is.
    ws_auth: String,
    /// Empty: the in-process fan-out (one process needs no Redis), unless `--redis-url`.
    redis_url: String,
}

/// An internal service as another service inside `up` reaches it.
struct InternalLink {
    url: String,
    key: Secret,
}

/// What `up` wires between its services beyond their own listeners.
struct Wiring {
    /// The agent runtime and the key the gateway must send it.
    agent_runtime: InternalLink,
}

/// A service running inside `up`.
struct Running {
    name: &'static str,
    address: SocketAddr,
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
    // The public listener faces clients: the configured header, body and connection limits
    // (`HTTP__*`) apply to it as to every `codelab serve` listener.
    let public_limits = ListenerLimits::load(&ConfigLoader::from_env_or(file.clone()))
        .context("invalid [http] listener limits")?;
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
    let shutdown = shutdown_on_signals();
    let mut tasks = JoinSet::new();
    let mut running = Vec::new();

    // Internal keys are per link and only live as long as this process: nothing outside it
    // needs them.
    let proxy_key = Secret::generate();
    let model = chosen_model(args.model.as_deref(), |name| {
        std::env::var(name).ok().filter(|v| !v.is_empty())
    });
    let overrides = ProxyOverrides {
        host: "127.0.0.1".into(),
        internal_api_key: proxy_key.expose().to_owned(),
        default_model: model.as_ref().map(|(name, _)| name.clone()),
    };
    let (proxy_config, _) = llm_proxy_config(file.clone(), &overrides)?;
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
    let proxy_address = listener.local_addr()?;
    running.push(Running {
        name: codelab_llm_proxy::SERVICE_NAME,
        address: proxy_address,
    });
    tasks.spawn(serve(
        listener,
        codelab_llm_proxy::router(proxy_state),
        shutdown.clone(),
        DRAIN_TIMEOUT,
    ));

    let wiring = Wiring {
        agent_runtime: start_agent_runtime(
            file.clone(),
            &args,
            &data_dir,
            InternalLink {
                url: format!("http://{proxy_address}"),
                key: proxy_key,
            },
            &mut tasks,
            &mut running,
            &shutdown,
        )
        .await?,
    };

    // Bound before the auth service is built: its issuer and metadata URLs name this address.
    let public = TcpListener::bind(args.listen).await.with_context(|| {
        format!(
            "cannot listen on {} (is another `codelab up` running? use --listen)",
            args.listen
        )
    })?;
    let public_address = public.local_addr()?;

    let file_for_gateway = file.clone();
    let file_for_website = file.clone();
    let auth_state = start_auth(
        file,
        &args,
        &data_dir,
        public_address,
        &mut tasks,
        &mut running,
        &shutdown,
    )
    .await?;

    let auth_address = running
        .iter()
        .find(|service| service.name == codelab_auth::SERVICE_NAME)
        .map(|service| service.address)
        .context("the auth service did not start")?;
    let gateway_state = start_gateway(
        file_for_gateway,
        &args,
        &wiring.agent_runtime,
        auth_address,
        auth_state.config.issuer(),
        &mut tasks,
        &mut running,
        &shutdown,
    )
    .await?;

    let website_state = start_website(
        file_for_website,
        &args,
        public_address,
        &mut tasks,
        &mut running,
        &shutdown,
    )
    .await?;

    let router = public_router(&auth_state, &gateway_state, &website_state);
    let public_shutdown = shutdown.clone();
    tasks.spawn(async move {
        serve_with_limits(
            public,
            router,
            public_shutdown,
            DRAIN_TIMEOUT,
            &public_limits,
        )
        .await
    });

    let backends = backends(&args, &data_dir)?;
    print_summary(public_address, &data_dir, &running, &backends, args.no_auth);
    if let Some(mut report) = auth_state.take_seed_report() {
        if args.admin_password.is_some() {
            // Printed below with its real origin.
            report.admin_password = None;
        }
        print_seeded_credentials(&report);
    }
    if let Some(password) = &args.admin_password {
        println!("Admin login: username admin, password {password} (from --admin-password)");
    }
    wait(tasks, shutdown).await
}

/// The environment variables naming a profile for one of `up`'s services, in the order they
/// are reported: each service's own `<PREFIX>__ENVIRONMENT`, then plain `ENVIRONMENT`.
const ENVIRONMENT_PREFIXES: [&str; 5] = [
    codelab_auth::config::ENV_PREFIX,
    codelab_gateway::config::ENV_PREFIX,
    codelab_agent_runtime::config::ENV_PREFIX,
    codelab_llm_proxy::config::ENV_PREFIX,
    codelab_website::config::ENV_PREFIX,
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

/// The URL clients use for the public listener (a wildcard bind is reached on loopback).
fn public_url(address: SocketAddr) -> String {
    let ip = if address.ip().is_unspecified() {
        IpAddr::V4(Ipv4Addr::LOCALHOST)
    } else {
        address.ip()
    };
    format!("http://{}", SocketAddr::new(ip, address.port()))
}

/// The database URL of `service` (`auth`, `agent_runtime`): its SQLite file in the data dir,
/// or with `--postgres-url` its own database on that server (see [`postgres_database_url`]).
fn database_url(args: &UpArgs, data_dir: &Path, service: &str) -> anyhow::Result<String> {
    match &args.postgres_url {
        Some(server) => postgres_database_url(server, service),
        None => Ok(format!(
            "sqlite:///{}",
            data_dir.join(format!("{service}.db")).display()
        )),
    }
}

/// `server` (any form `AUTH_SERVICE__DB_URL` accepts) with its database replaced by the
/// service's own: `codelab_<service>`, or `<name>_<service>` when the URL names a database
/// `<name>` other than the maintenance database `postgres`. Query parameters are kept.
fn postgres_database_url(server: &str, service: &str) -> anyhow::Result<String> {
    let normalized = codelab_core::db::normalize_database_url(server)
        .map_err(|e| anyhow::anyhow!("invalid --postgres-url: {e}"))?;
    let mut url = reqwest::Url::parse(&normalized).context("invalid --postgres-url")?;
    if !matches!(url.scheme(), "postgres" | "postgresql") {
        anyhow::bail!(
            "--postgres-url must be a postgres:// URL, got {}",
            codelab_core::db::redact_database_url(server)
        );
    }
    let prefix = match url.path().trim_matches('/') {
        "" | "postgres" => "codelab".to_owned(),
        name => name.to_owned(),
    };
    url.set_path(&format!("/{prefix}_{service}"));
    Ok(url.to_string())
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

/// The key-encryption key in the data dir (`codelab keys rotate --data-dir` reads the same
/// file), created with mode 0600 on first start.
fn data_dir_key_encryption_key(data_dir: &Path) -> anyhow::Result<Secret> {
    use std::io::Write;
    let path = data_dir.join(codelab_auth::keys::DATA_DIR_KEY_ENCRYPTION_FILE);
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    match options.open(&path) {
        Ok(mut created) => {
            let key = codelab_auth::keys::generate_key_encryption_key()?;
            created
                .write_all(format!("{key}\n").as_bytes())
                .with_context(|| format!("cannot write {}", path.display()))?;
            Ok(Secret::new(key))
        }
        Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => {
            let key = std::fs::read_to_string(&path)
                .with_context(|| format!("cannot read {}", path.display()))?;
            Ok(Secret::new(key.trim().to_owned()))
        }
        Err(error) => Err(error).with_context(|| format!("cannot create {}", path.display())),
    }
}

/// Builds the auth service on SQLite in the data dir (keys generated into it on first start)
/// and serves it on its internal port.
async fn start_auth(
    file: Option<PathBuf>,
    args: &UpArgs,
    data_dir: &Path,
    public_address: SocketAddr,
    tasks: &mut JoinSet<std::io::Result<()>>,
    running: &mut Vec<Running>,
    shutdown: &CancellationToken,
) -> anyhow::Result<Arc<codelab_auth::AppState>> {
    let overrides = AuthOverrides {
        host: "127.0.0.1".into(),
        db_url: database_url(args, data_dir, "auth")?,
        public_url: public_url(public_address),
        redis_url: args.redis_url.clone().unwrap_or_default(),
        trusted_proxies: Vec::new(),
        master_key: args.admin_password.clone(),
    };
    let (mut config, _) = auth_config(file, &overrides)?;
    if config.key_encryption_key.is_empty() {
        // Signing keys are encrypted at rest here too, with a key kept next to them (the data
        // dir is the development profile's only secret store; docs/operations.md).
        config.key_encryption_key = data_dir_key_encryption_key(data_dir)?;
    }
    // The console signs in through this listener, whatever port it got.
    let console_callback = format!("{}/console/callback", public_url(public_address));
    if !config.web_redirect_uris.contains(&console_callback) {
        config.web_redirect_uris.push(console_callback);
    }
    let port = config.port.unwrap_or(codelab_auth::config::DEFAULT_PORT);
    let state =
        codelab_auth::build(config, codelab_auth::Deps::new(Environment::Development)).await?;
    if let Some(password) = &args.admin_password {
        // The admin may exist from an earlier start: make the flag's password the one in force.
        codelab_auth::seed::set_admin_password(&state.store, password)
            .await
            .context("cannot set the admin password")?;
    }
    let listener = bind_internal(port, args.ephemeral_ports).await?;
    running.push(Running {
        name: codelab_auth::SERVICE_NAME,
        address: listener.local_addr()?,
    });
    tasks.spawn(serve(
        listener,
        codelab_auth::router(Arc::clone(&state)),
        shutdown.clone(),
        DRAIN_TIMEOUT,
    ));
    Ok(state)
}

/// Builds the agent runtime on SQLite in the data dir, talking to the in-process proxy, and
/// serves it on its internal port. Returns how the gateway reaches it (with a key generated
/// for that link only).
async fn start_agent_runtime(
    file: Option<PathBuf>,
    args: &UpArgs,
    data_dir: &Path,
    proxy: InternalLink,
    tasks: &mut JoinSet<std::io::Result<()>>,
    running: &mut Vec<Running>,
    shutdown: &CancellationToken,
) -> anyhow::Result<InternalLink> {
    let runtime_key = Secret::generate();
    // The model stays `mock-llm` unless `--model`, AGENT_RUNTIME__LLM_MODEL or the file names
    // another.
    let overrides = RuntimeOverrides {
        host: "127.0.0.1".into(),
        db_url: database_url(args, data_dir, "agent_runtime")?,
        llm_proxy_url: proxy.url,
        llm_proxy_api_key: proxy.key.expose().to_owned(),
        internal_api_key: runtime_key.expose().to_owned(),
        llm_model: chosen_model(args.model.as_deref(), |name| {
            std::env::var(name).ok().filter(|v| !v.is_empty())
        })
        .map(|(name, _)| name),
    };
    let (config, _) = agent_runtime_config(file, &overrides)?;
    let port = config
        .port
        .unwrap_or(codelab_agent_runtime::config::DEFAULT_PORT);
    let state = codelab_agent_runtime::build(
        config,
        codelab_agent_runtime::Deps::new(Environment::Development),
    )
    .await?;
    let listener = bind_internal(port, args.ephemeral_ports).await?;
    let address = listener.local_addr()?;
    running.push(Running {
        name: codelab_agent_runtime::SERVICE_NAME,
        address,
    });
    let shutdown = shutdown.clone();
    tasks.spawn(async move {
        let served = serve(
            listener,
            codelab_agent_runtime::router(Arc::clone(&state)),
            shutdown,
            DRAIN_TIMEOUT,
        )
        .await;
        // As `serve` does: frames whose client left are still being worked on; let them
        // store their results (what does not finish is resumed at the next start).
        if !state.drain(DRAIN_TIMEOUT).await {
            tracing::warn!("turns still running after the drain timeout; stopping anyway");
        }
        served
    });
    Ok(InternalLink {
        url: format!("http://{address}"),
        key: runtime_key,
    })
}

/// Builds the gateway against the in-process runtime and auth service and serves it on its
/// internal port.
#[allow(clippy::too_many_arguments)] // one call site; a struct would only rename these
async fn start_gateway(
    file: Option<PathBuf>,
    args: &UpArgs,
    runtime: &InternalLink,
    auth_address: SocketAddr,
    issuer: String,
    tasks: &mut JoinSet<std::io::Result<()>>,
    running: &mut Vec<Running>,
    shutdown: &CancellationToken,
) -> anyhow::Result<Arc<codelab_gateway::AppState>> {
    let overrides = GatewayOverrides {
        host: "127.0.0.1".into(),
        agent_url: runtime.url.clone(),
        internal_api_key: runtime.key.expose().to_owned(),
        auth_service_url: format!("http://{auth_address}"),
        jwt_issuer: issuer,
        use_jwt_auth: !args.no_auth,
        ws_auth: if args.no_auth { "off" } else { "session" }.to_owned(),
        redis_url: args.redis_url.clone().unwrap_or_default(),
    };
    let (config, _) = gateway_config(file, &overrides)?;
    let port = config.port.unwrap_or(codelab_gateway::config::DEFAULT_PORT);
    let deps = codelab_gateway::Deps {
        shutdown: shutdown.clone(),
        ..codelab_gateway::Deps::new(Environment::Development)
    };
    let state = codelab_gateway::build(config, deps).await?;
    let listener = bind_internal(port, args.ephemeral_ports).await?;
    running.push(Running {
        name: codelab_gateway::SERVICE_NAME,
        address: listener.local_addr()?,
    });
    tasks.spawn(serve(
        listener,
        codelab_gateway::router(Arc::clone(&state)),
        shutdown.clone(),
        DRAIN_TIMEOUT,
    ));
    Ok(state)
}

/// Builds the website against the in-process services (server-side calls) with the public
/// listener as the browser's address, and serves it on its internal port too.
async fn start_website(
    file: Option<PathBuf>,
    args: &UpArgs,
    public_address: SocketAddr,
    tasks: &mut JoinSet<std::io::Result<()>>,
    running: &mut Vec<Running>,
    shutdown: &CancellationToken,
) -> anyhow::Result<Arc<codelab_website::AppState>> {
    let internal = |name: &str| {
        running
            .iter()
            .find(|service| service.name == name)
            .map(|service| format!("http://{}", service.address))
            .unwrap_or_default()
    };
    let public = public_url(public_address);
    let overrides = WebsiteOverrides {
        host: "127.0.0.1".into(),
        public_url: public.clone(),
        auth_public_url: public.clone(),
        gateway_public_url: public,
        auth_url: internal(codelab_auth::SERVICE_NAME),
        gateway_url: internal(codelab_gateway::SERVICE_NAME),
        agent_runtime_url: internal(codelab_agent_runtime::SERVICE_NAME),
        llm_proxy_url: internal(codelab_llm_proxy::SERVICE_NAME),
    };
    let (config, _) = website_config(file, &overrides)?;
    let port = config.port.unwrap_or(codelab_website::config::DEFAULT_PORT);
    let state =
        codelab_website::build(config, codelab_website::Deps::new(Environment::Development))
            .await?;
    let listener = bind_internal(port, args.ephemeral_ports).await?;
    running.push(Running {
        name: codelab_website::SERVICE_NAME,
        address: listener.local_addr()?,
    });
    tasks.spawn(serve(
        listener,
        codelab_website::router(Arc::clone(&state)),
        shutdown.clone(),
        DRAIN_TIMEOUT,
    ));
    Ok(state)
}

/// Routes of the public listener, in nginx's order. Auth paths are dispatched in process to
/// the auth router, keeping the caller's connection info (this hop is not a proxy, so no
/// forwarding header is added).
fn public_router(
    auth: &Arc<codelab_auth::AppState>,
    gateway: &Arc<codelab_gateway::AppState>,
    website: &Arc<codelab_website::AppState>,
) -> Router {
    let auth_router = codelab_auth::router(Arc::clone(auth));
    // The auth router matches on the full path; the outer route's MatchedPath is dropped so
    // its metrics see its own route templates.
    let to_auth = move |rewrite: Option<&'static str>| {
        auth_router.clone().map_request(move |mut req: Request| {
            req.extensions_mut().remove::<MatchedPath>();
            if let Some(path) = rewrite {
                *req.uri_mut() = Uri::from_static(path);
            }
            req
        })
    };
    // The gateway likewise. `/api/v1/` is nested rather than routed with a `{*path}` wildcard:
    // axum would hand the wildcard to the gateway's own `Path` extractors as an extra
    // parameter, while a nest's tail is not passed on. The nest strips the prefix; the
    // original URI (path and query string) is put back, and the request is otherwise
    // untouched, so WebSocket upgrades pass.
    let gateway_router = codelab_gateway::router(Arc::clone(gateway));
    let api = gateway_router.clone().map_request(|mut req: Request| {
        req.extensions_mut().remove::<MatchedPath>();
        if let Some(OriginalUri(uri)) = req.extensions().get::<OriginalUri>().cloned() {
            *req.uri_mut() = uri;
        }
        req
    });
    let gateway_health = gateway_router.map_request(|mut req: Request| {
        req.extensions_mut().remove::<MatchedPath>();
        *req.uri_mut() = Uri::from_static("/health");
        req
    });
    Router::new()
        .route("/nginx-health", get(|| async { "healthy\n" }))
        // Not public, as in nginx: introspection is for services inside the deployment (here
        // they call auth's internal port), metrics and readiness for the operator's tools.
        .route("/oauth/introspect", any(not_routed))
        .route("/oauth/introspect/{*rest}", any(not_routed))
        .route("/metrics", any(not_routed))
        .route("/ready", any(not_routed))
        .nest_service("/api/v1", api)
        // nginx maps `/gateway-health` to the gateway's `/health`.
        .route_service("/gateway-health", gateway_health)
        .route_service("/oauth/{*path}", to_auth(None))
        .route_service("/.well-known/{*path}", to_auth(None))
        // nginx maps `/auth-health` to the auth service's `/health`.
        .route_service("/auth-health", to_auth(Some("/health")))
        // Everything else is the website (docs and console), as nginx's `location /`.
        .fallback_service(codelab_website::router(Arc::clone(website)).map_request(
            |mut req: Request| {
                req.extensions_mut().remove::<MatchedPath>();
                req
            },
        ))
        .layer(axum::middleware::map_request(strip_internal_headers))
}

/// What nginx answers for a path it does not route.
async fn not_routed() -> StatusCode {
    StatusCode::NOT_FOUND
}

/// Removes the headers only services inside the deployment may send, as nginx does: with them
/// a client could present itself as a service acting for any user (docs/security.md).
async fn strip_internal_headers(mut req: Request) -> Request {
    let headers = req.headers_mut();
    headers.remove(codelab_core::http::INTERNAL_AUTH_HEADER);
    headers.remove(codelab_gateway::auth::USER_HEADER);
    req
}

/// How to reach the gateway: the Flutter IDE's server URL, the terminal client, auth state.
fn print_gateway_summary(public: SocketAddr, no_auth: bool) {
    let url = public_url(public);
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

fn print_summary(
    public: SocketAddr,
    data_dir: &Path,
    running: &[Running],
    backends: &[String],
    no_auth: bool,
) {
    println!();
    println!("CodeLab is up.");
    println!("  public address   http://{public}");
    println!("  health           http://{public}/nginx-health");
    println!("  oauth            http://{public}/oauth/token");
    println!("  website          http://{public}/ (docs at /docs, console at /console)");
    for service in running {
        println!(
            "  {:<16} http://{} (internal)",
            service.name, service.address
        );
    }
    println!("  data dir         {}", data_dir.display());
    for line in backends {
        println!("{line}");
    }
    print_gateway_summary(public, no_auth);
    println!("Press Ctrl-C to stop.");
    println!();
}

/// Summary lines: where the data lives, what holds the counters and the fan-out, `--model`.
fn backends(args: &UpArgs, data_dir: &Path) -> anyhow::Result<Vec<String>> {
    let mut lines = Vec::new();
    if args.postgres_url.is_some() {
        let redacted = |service| {
            database_url(args, data_dir, service)
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
            "  redis            {} (rate limits, lockouts, event fan-out)",
            redact_url(url)
        ),
        None => "  redis            none (rate limits, lockouts and fan-out in memory)".to_owned(),
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
