//! Starting a stack and the running stack: each service's address and state, replicas, stop.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use codelab_agent_runtime::RuntimeService;
use codelab_auth::AuthService;
use codelab_core::clock::SharedClock;
use codelab_core::config::{ConfigLoader, Environment, Secret};
use codelab_core::http::{LocalRoutes, serve, serve_with_limits};
use codelab_core::service::{EnvVars, Service, SharedDeps};
use codelab_core::starting::{Starting, build_when_database_answers, database_unreachable};
use codelab_gateway::GatewayService;
use codelab_gateway::config::WsAuthMode;
use codelab_llm_proxy::ProxyService;
use codelab_website::WebsiteService;
use tokio::net::TcpListener;
use tokio::task::{JoinHandle, JoinSet};
use tokio_util::sync::CancellationToken;

use crate::builder::{
    Database, DatabaseWait, GatewayAuth, InternalCalls, InternalKeys, Llm, Ports, ServiceId, Tweak,
};
use crate::front_door::front_door_while_waiting;
use crate::{StackBuilder, StackError, front_door_router, postgres_database_url};

/// A service running in the stack.
pub struct Running<S> {
    /// Its name (`auth`, `gateway`, ...).
    pub name: &'static str,
    /// Its own listener, on 127.0.0.1.
    pub address: SocketAddr,
    /// `http://` + [`Running::address`].
    pub url: String,
    pub state: Arc<S>,
}

impl<S> Running<S> {
    fn name_and_address(&self) -> (&'static str, SocketAddr) {
        (self.name, self.address)
    }
}

/// A service of the stack stopped (with an error, or it panicked).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ServiceStopped(String);

/// The services, running until [`Stack::stop`], the shutdown token or the stack's drop. A
/// service is `None` when [`StackBuilder::only`] left it out.
pub struct Stack {
    pub proxy: Option<Running<codelab_llm_proxy::AppState>>,
    pub runtime: Option<Running<codelab_agent_runtime::AppState>>,
    pub auth: Option<Running<codelab_auth::AppState>>,
    pub gateway: Option<Running<codelab_gateway::AppState>>,
    pub website: Option<Running<codelab_website::AppState>>,
    /// The front door's address, when the stack has one.
    pub front_door: Option<SocketAddr>,
    /// What browsers use for the website: the front door, else the website's own URL (empty
    /// without either).
    pub public_url: String,
    /// The issuer of the auth service's tokens (what the gateway expects; empty without the
    /// auth service).
    pub issuer: String,
    pub keys: InternalKeys,
    /// Where the SQLite files (and in `up` the key-encryption key) are.
    pub data_dir: PathBuf,
    /// The gateway's effective settings (the base of [`Stack::start_gateway_replica`]).
    pub gateway_config: codelab_gateway::Config,
    /// The runtime's effective settings (the base of [`Stack::start_runtime_replica`]).
    pub runtime_config: codelab_agent_runtime::Config,
    services: Services,
    tasks: JoinSet<std::io::Result<()>>,
    _temp_dir: Option<tempfile::TempDir>,
}

impl Drop for Stack {
    fn drop(&mut self) {
        self.services.shutdown.cancel();
    }
}

impl Stack {
    /// A stack with the test defaults (see [`StackBuilder`]).
    pub fn builder() -> StackBuilder {
        StackBuilder::default()
    }

    /// Each running service's name and own address, in start order.
    pub fn services(&self) -> Vec<(&'static str, SocketAddr)> {
        [
            self.proxy.as_ref().map(Running::name_and_address),
            self.runtime.as_ref().map(Running::name_and_address),
            self.auth.as_ref().map(Running::name_and_address),
            self.gateway.as_ref().map(Running::name_and_address),
            self.website.as_ref().map(Running::name_and_address),
        ]
        .into_iter()
        .flatten()
        .collect()
    }

    /// Cancelled when the stack stops; cancel it to stop the stack.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.services.shutdown.clone()
    }

    /// Waits for the next service to stop: `None` once all have. Whatever ends one stops the
    /// others (the shutdown token is cancelled).
    pub async fn join_next(&mut self) -> Option<Result<(), ServiceStopped>> {
        let result = self.tasks.join_next().await?;
        self.services.shutdown.cancel();
        Some(match result {
            Ok(Ok(())) => Ok(()),
            Ok(Err(error)) => Err(ServiceStopped(error.to_string())),
            Err(error) => Err(ServiceStopped(error.to_string())),
        })
    }

    /// Stops every service and waits until they have drained.
    pub async fn stop(mut self) {
        self.services.shutdown.cancel();
        while self.join_next().await.is_some() {}
    }

    /// Another gateway in front of the same runtime and auth service, with the first one's
    /// settings changed by `tweak` (e.g. both on one Redis to test the fan-out across
    /// replicas); it stops with the stack.
    pub async fn start_gateway_replica(
        &self,
        tweak: impl FnOnce(&mut codelab_gateway::Config),
    ) -> Result<Running<codelab_gateway::AppState>, StackError> {
        let mut config = self.gateway_config.clone();
        tweak(&mut config);
        self.start_replica::<GatewayService>(ServiceId::Gateway, self.gateway.is_some(), config)
            .await
    }

    /// Another runtime on the same database and proxy (own pool, own process state), with
    /// the first one's settings changed by `tweak`; it stops with the stack.
    pub async fn start_runtime_replica(
        &self,
        tweak: impl FnOnce(&mut codelab_agent_runtime::Config),
    ) -> Result<Running<codelab_agent_runtime::AppState>, StackError> {
        let mut config = self.runtime_config.clone();
        tweak(&mut config);
        let started = self.runtime.is_some();
        self.start_replica::<RuntimeService>(ServiceId::AgentRuntime, started, config)
            .await
    }

    /// Another `S` with `config` on an ephemeral port, when the stack runs the first one.
    async fn start_replica<S: Service>(
        &self,
        service: ServiceId,
        started: bool,
        config: S::Config,
    ) -> Result<Running<S>, StackError> {
        if !started {
            return Err(StackError::NotStarted(service.name()));
        }
        let listener = bind(0, Ports::Ephemeral).await?;
        let (running, served) = self.services.start::<S>(service, listener, config).await?;
        codelab_core::tasks::spawn(service.name(), served);
        Ok(running)
    }
}

/// What every service of a stack shares: its profile and clock, the proxy's environment, the
/// shutdown token, the drain timeout and, when they call each other in process, the routes.
struct Services {
    environments: [Environment; 5],
    clocks: [SharedClock; 5],
    env: EnvVars,
    shutdown: CancellationToken,
    drain_timeout: Duration,
    /// `None` when the services call each other over HTTP.
    local_routes: Option<LocalRoutes>,
    /// Set by [`StackBuilder::wait_for_database`].
    database_wait: Option<DatabaseWait>,
    /// Stops the listeners that answered while their service waited for its database: with
    /// the stack, or at once when the start fails (a child of `shutdown`).
    waiting_shutdown: CancellationToken,
}

impl Services {
    fn deps(&self, service: ServiceId) -> SharedDeps {
        SharedDeps::isolated(self.environments[service.index()])
            .with_clock(Arc::clone(&self.clocks[service.index()]))
            .with_shutdown(self.shutdown.clone())
            .with_env(self.env.clone())
            .with_local_routes(self.local_routes.clone().unwrap_or_default())
    }

    /// [`Services::start`] when the stack runs `S` (it has a listener).
    async fn start_if<S: Service>(
        &self,
        service: ServiceId,
        listener: Option<TcpListener>,
        config: S::Config,
    ) -> Result<
        Option<(
            Running<S>,
            impl Future<Output = std::io::Result<()>> + Send + 'static,
        )>,
        StackError,
    > {
        match listener {
            Some(listener) => self.start::<S>(service, listener, config).await.map(Some),
            None => Ok(None),
        }
    }

    /// Builds `S` and returns it with the future that serves it on `listener` until the
    /// shutdown token, then lets it drain (the runtime's turns whose client left store their
    /// results; what does not finish is resumed at the next start).
    async fn start<S: Service>(
        &self,
        service: ServiceId,
        listener: TcpListener,
        config: S::Config,
    ) -> Result<
        (
            Running<S>,
            impl Future<Output = std::io::Result<()>> + Send + 'static,
        ),
        StackError,
    > {
        let deps = self.deps(service);
        let address = local_address(&listener)?;
        let built = tokio::select! {
            // Ctrl-C during a first attempt that waits for the pool's connect timeout.
            () = self.shutdown.cancelled(), if self.database_wait.is_some() => {
                return Err(StackError::Stopped);
            }
            built = S::build(config.clone(), deps.clone()) => built,
        };
        let (state, listening) = match built {
            Ok(state) => (state, Listening::Idle(listener)),
            Err(error) => {
                let Some(wait) = self
                    .database_wait
                    .clone()
                    .filter(|_| database_unreachable(&error))
                else {
                    return Err(StackError::build(error));
                };
                // As `codelab serve` does: the listener answers while the database is waited
                // for, and the service's router takes over once it is built.
                let starting = Starting::default();
                starting.not_ready(format!("unreachable: {error}"));
                let serving = codelab_core::tasks::spawn(
                    service.name(),
                    serve(
                        listener,
                        starting.router(),
                        self.waiting_shutdown.clone(),
                        self.drain_timeout,
                    ),
                );
                let built =
                    build_when_database_answers::<S>(&config, &deps, error.to_string(), |why| {
                        starting.not_ready(format!("unreachable: {why}"));
                        wait(service, why);
                    })
                    .await
                    .map_err(StackError::build)?;
                let Some(state) = built else {
                    return Err(StackError::Stopped);
                };
                (state, Listening::Started(starting, serving))
            }
        };
        let running = Running {
            name: service.name(),
            address,
            url: format!("http://{address}"),
            state,
        };
        let router = S::router(Arc::clone(&running.state));
        if let Some(routes) = &self.local_routes {
            routes.serve(&running.url, router.clone());
        }
        let state = Arc::clone(&running.state);
        let shutdown = self.shutdown.clone();
        let drain_timeout = self.drain_timeout;
        if let Listening::Started(starting, _) = &listening {
            starting.serve(router.clone());
        }
        let served = async move {
            let served = match listening {
                Listening::Idle(listener) => serve(listener, router, shutdown, drain_timeout).await,
                Listening::Started(_, serving) => serving
                    .await
                    .unwrap_or_else(|failed| Err(std::io::Error::other(failed))),
            };
            if !state.drain(drain_timeout).await {
                tracing::warn!(
                    service = S::NAME,
                    "work still running after the drain timeout; stopping anyway"
                );
            }
            served
        };
        Ok((running, served))
    }
}

/// A service's listener once it is built: not served yet, or already serving (it answered
/// while the service waited for its database).
enum Listening {
    Idle(TcpListener),
    Started(Starting, JoinHandle<std::io::Result<()>>),
}

/// The five services' settings as read, before the stack's wiring.
struct Settings {
    proxy: codelab_llm_proxy::Config,
    runtime: codelab_agent_runtime::Config,
    auth: codelab_auth::Config,
    gateway: codelab_gateway::Config,
    website: codelab_website::Config,
}

impl Settings {
    fn load(loader: Option<&ConfigLoader>) -> Result<Self, StackError> {
        Ok(Self {
            proxy: load::<ProxyService>(loader)?,
            runtime: load::<RuntimeService>(loader)?,
            auth: load::<AuthService>(loader)?,
            gateway: load::<GatewayService>(loader)?,
            website: load::<WebsiteService>(loader)?,
        })
    }
}

/// A service's settings: its defaults, or through `loader` its file section and variables.
fn load<S: Service>(loader: Option<&ConfigLoader>) -> Result<S::Config, StackError> {
    match loader {
        None => Ok(S::Config::default()),
        Some(loader) => loader
            .load(S::SECTION, S::ENV_PREFIX, &())
            .map_err(|source| StackError::Config {
                service: S::NAME,
                source,
            }),
    }
}

fn apply<C>(config: &mut C, tweaks: Vec<Tweak<C>>) {
    for tweak in tweaks {
        tweak(config);
    }
}

const LOCALHOST: &str = "127.0.0.1";

impl StackBuilder {
    /// Starts the services (all five unless [`StackBuilder::only`] says otherwise): the proxy,
    /// the runtime, the auth service, the gateway, the website, then the front door.
    pub async fn start(self) -> Result<Stack, StackError> {
        let StackBuilder {
            data_dir,
            services: asked,
            database,
            llm,
            model,
            ports,
            internal_calls,
            front_door,
            front_door_limits,
            loader,
            environments,
            clocks,
            redis_url,
            gateway_auth,
            admin_password,
            keys,
            env,
            drain_timeout,
            shutdown,
            database_wait,
            proxy_tweaks,
            runtime_tweaks,
            auth_tweaks,
            gateway_tweaks,
            website_tweaks,
        } = self;
        let wanted = with_dependencies(asked, front_door.is_some());
        let waiting_shutdown = shutdown.child_token();
        // Until the start succeeds, a failure stops what answered meanwhile.
        let stop_waiting_on_failure = waiting_shutdown.clone().drop_guard();
        let services = Services {
            environments,
            clocks,
            env,
            shutdown,
            drain_timeout,
            local_routes: (internal_calls == InternalCalls::InProcess).then(LocalRoutes::default),
            database_wait,
            waiting_shutdown,
        };
        let (data_dir, temp_dir, keep_key_in_data_dir) = match data_dir {
            Some(dir) => {
                std::fs::create_dir_all(&dir).map_err(|e| {
                    StackError::io(format!("cannot create the data dir {}", dir.display()), e)
                })?;
                (dir, None, true)
            }
            None => {
                let temp = tempfile::tempdir()
                    .map_err(|e| StackError::io("cannot create a temp data dir", e))?;
                (temp.path().to_owned(), Some(temp), false)
            }
        };
        let database_url = |service: &str| match &database {
            Database::Postgres(server) => postgres_database_url(server, service),
            Database::Sqlite => Ok(format!(
                "sqlite:///{}",
                data_dir.join(format!("{service}.db")).display()
            )),
        };
        let Settings {
            proxy: mut proxy_config,
            runtime: mut runtime_config,
            auth: mut auth_config,
            gateway: mut gateway_config,
            website: mut website_config,
        } = Settings::load(loader.as_ref())?;
        let redis_url = redis_url.unwrap_or_default();
        let mut tasks = JoinSet::new();

        // Listeners first: each service's wiring names the others' addresses.
        let wants = |service: ServiceId| wanted[service.index()];
        let proxy_listener =
            bind_service::<ProxyService>(wants(ServiceId::LlmProxy), proxy_config.port, ports)
                .await?;
        let runtime_listener = bind_service::<RuntimeService>(
            wants(ServiceId::AgentRuntime),
            runtime_config.port,
            ports,
        )
        .await?;
        let auth_listener =
            bind_service::<AuthService>(wants(ServiceId::Auth), auth_config.port, ports).await?;
        let gateway_listener =
            bind_service::<GatewayService>(wants(ServiceId::Gateway), gateway_config.port, ports)
                .await?;
        let website_listener =
            bind_service::<WebsiteService>(wants(ServiceId::Website), website_config.port, ports)
                .await?;
        let front_door_address = front_door.as_ref().map(local_address).transpose()?;
        // Waiting for the database, the front door answers at once (503 until every service
        // is built, then the routes below); otherwise it serves once they are.
        let (front_door, front_door_starting) = match front_door {
            Some(listener) if services.database_wait.is_some() => {
                let starting = Starting::default();
                let router = starting.router_answering(front_door_while_waiting());
                let shutdown = services.shutdown.clone();
                let limits = front_door_limits.clone();
                tasks.spawn(async move {
                    serve_with_limits(listener, router, shutdown, drain_timeout, &limits).await
                });
                (None, Some(starting))
            }
            other => (other, None),
        };
        // Browsers see the front door for everything, or else each service's own address.
        let public_url_or_own = |listener: &Option<TcpListener>| match front_door_address {
            Some(address) => Ok(public_url_of(address)),
            None => Ok(match listener {
                Some(listener) => public_url_of(local_address(listener)?),
                None => String::new(),
            }),
        };
        let public_url = public_url_or_own(&website_listener)?;
        let auth_public_url = public_url_or_own(&auth_listener)?;
        let gateway_public_url = public_url_or_own(&gateway_listener)?;

        // Every service's wiring names only the others' addresses (known from the listeners),
        // so all five are configured first and then built at once: their start-up work
        // (migrations, the auth service's key and password hashing, the website's docs) runs
        // side by side instead of one after the other.
        let url_of = |listener: &Option<TcpListener>| {
            listener
                .as_ref()
                .map(|listener| local_address(listener).map(|address| format!("http://{address}")))
                .transpose()
        };
        let proxy_url = url_of(&proxy_listener)?;
        let runtime_url = url_of(&runtime_listener)?;
        let auth_url = url_of(&auth_listener)?;
        let gateway_url = url_of(&gateway_listener)?;

        // The LLM proxy.
        proxy_config.host = LOCALHOST.into();
        proxy_config.internal_api_key = keys.proxy.clone();
        if let Some(model) = &model {
            proxy_config.default_model = model.clone();
        }
        let mut runtime_model = model;
        if let Llm::Upstream {
            model,
            api_base,
            api_key,
        } = &llm
        {
            if proxy_listener.is_some() {
                proxy_config.config_file =
                    Some(write_model_table(&data_dir, model, api_base, api_key)?);
            }
            runtime_model.get_or_insert_with(|| model.clone());
        }
        apply(&mut proxy_config, proxy_tweaks);

        // The agent runtime, calling the proxy.
        runtime_config.host = LOCALHOST.into();
        runtime_config.db_url = database_url("agent_runtime")?;
        runtime_config.llm_proxy_api_key = keys.proxy.clone();
        runtime_config.internal_api_key = keys.runtime.clone();
        if let Some(url) = &proxy_url {
            runtime_config.llm_proxy_url = url.clone();
        }
        if let Some(model) = runtime_model {
            runtime_config.llm_model = model;
        }
        apply(&mut runtime_config, runtime_tweaks);

        // The auth service, its issuer and metadata on the public address.
        if auth_listener.is_some() {
            auth_config.host = LOCALHOST.into();
            auth_config.db_url = database_url("auth")?;
            auth_config.public_url = auth_public_url.clone();
            auth_config.redis_url = Some(redis_url.clone());
            // Nothing stands between the front door and the client, and the in-process hop
            // to the auth router is not a proxy, so no forwarding header is believed.
            auth_config.trusted_proxies = Vec::new();
            if let Some(password) = &admin_password {
                auth_config.master_key = Secret::new(password.clone());
            }
            apply(&mut auth_config, auth_tweaks);
            if keep_key_in_data_dir && auth_config.key_encryption_key.is_empty() {
                // Signing keys are encrypted at rest here too, with a key kept next to them
                // (the data dir is the development profile's only secret store;
                // docs/operations.md).
                auth_config.key_encryption_key = data_dir_key_encryption_key(&data_dir)?;
            }
            // The console signs in through the public address, whatever port it got.
            let console_callback = format!("{public_url}/console/callback");
            if !public_url.is_empty() && !auth_config.web_redirect_uris.contains(&console_callback)
            {
                auth_config.web_redirect_uris.push(console_callback);
            }
        }
        // The auth service keeps its settings as given, so its issuer is known before it starts.
        let issuer = if auth_listener.is_some() {
            auth_config.issuer()
        } else {
            String::new()
        };

        // The gateway, in front of the runtime, verifying the auth service's tokens.
        gateway_config.host = LOCALHOST.into();
        gateway_config.internal_api_key = keys.runtime.clone();
        gateway_config.jwt_issuer = issuer.clone();
        if let Some(url) = &runtime_url {
            gateway_config.agent_url = url.clone();
        }
        if let Some(url) = &auth_url {
            gateway_config.auth_service_url = url.clone();
        }
        match gateway_auth {
            GatewayAuth::Configured => {}
            GatewayAuth::Session => {
                gateway_config.use_jwt_auth = true;
                gateway_config.ws_auth = Some(WsAuthMode::Session);
            }
            GatewayAuth::Off => {
                gateway_config.use_jwt_auth = false;
                gateway_config.ws_auth = Some(WsAuthMode::Off);
            }
        }
        gateway_config.redis_url = Some(redis_url.clone());
        apply(&mut gateway_config, gateway_tweaks);

        // The website: server-side calls to each service's own address, the browser's
        // addresses public.
        website_config.host = LOCALHOST.into();
        website_config.public_url = public_url.clone();
        website_config.auth_public_url = Some(auth_public_url);
        website_config.gateway_public_url = Some(gateway_public_url);
        website_config.auth_url = auth_url;
        website_config.gateway_url = gateway_url;
        website_config.agent_runtime_url = runtime_url;
        website_config.llm_proxy_url = proxy_url;
        // Console logins: in memory like the other caches of this one process unless the
        // stack was given Redis (docs/website.md, "Sessions").
        website_config.redis_url = Some(redis_url);
        apply(&mut website_config, website_tweaks);

        // No service calls another while it starts, and a call made early waits in the
        // listener's backlog until that service serves: they can all start together.
        let auth = async {
            let Some(listener) = auth_listener else {
                return Ok(None);
            };
            let started = services
                .start::<AuthService>(ServiceId::Auth, listener, auth_config)
                .await?;
            if let Some(password) = &admin_password
                && !started.0.state.seeded_admin_with(password)
            {
                // The admin may exist from an earlier start: make this password the one in
                // force (a fresh start created it with this password already).
                codelab_auth::seed::set_admin_password(&started.0.state.store, password)
                    .await
                    .map_err(StackError::AdminPassword)?;
            }
            Ok::<_, StackError>(Some(started))
        };
        let (proxy, runtime, auth, gateway, website) = tokio::try_join!(
            services.start_if::<ProxyService>(ServiceId::LlmProxy, proxy_listener, proxy_config),
            services.start_if::<RuntimeService>(
                ServiceId::AgentRuntime,
                runtime_listener,
                runtime_config.clone(),
            ),
            auth,
            services.start_if::<GatewayService>(
                ServiceId::Gateway,
                gateway_listener,
                gateway_config.clone(),
            ),
            services.start_if::<WebsiteService>(
                ServiceId::Website,
                website_listener,
                website_config,
            ),
        )?;
        let proxy = serve_in(&mut tasks, proxy);
        let runtime = serve_in(&mut tasks, runtime);
        let auth = serve_in(&mut tasks, auth);
        let gateway = serve_in(&mut tasks, gateway);
        let website = serve_in(&mut tasks, website);

        // The front door brought auth, the gateway and the website with it.
        if let (Some(starting), Some(auth), Some(gateway), Some(website)) =
            (&front_door_starting, &auth, &gateway, &website)
        {
            starting.serve(front_door_router(
                &auth.state,
                &gateway.state,
                &website.state,
            ));
        }
        if let (Some(listener), Some(auth), Some(gateway), Some(website)) =
            (front_door, &auth, &gateway, &website)
        {
            let router = front_door_router(&auth.state, &gateway.state, &website.state);
            let shutdown = services.shutdown.clone();
            tasks.spawn(async move {
                serve_with_limits(
                    listener,
                    router,
                    shutdown,
                    drain_timeout,
                    &front_door_limits,
                )
                .await
            });
        }

        stop_waiting_on_failure.disarm();
        Ok(Stack {
            proxy,
            runtime,
            auth,
            gateway,
            website,
            front_door: front_door_address,
            public_url,
            issuer,
            keys,
            data_dir,
            gateway_config,
            runtime_config,
            services,
            tasks,
            _temp_dir: temp_dir,
        })
    }
}

/// A started service, its serving future spawned among `tasks`.
fn serve_in<S>(
    tasks: &mut JoinSet<std::io::Result<()>>,
    started: Option<(
        Running<S>,
        impl Future<Output = std::io::Result<()>> + Send + 'static,
    )>,
) -> Option<Running<S>> {
    let (running, served) = started?;
    tasks.spawn(served);
    Some(running)
}

/// The services asked for, the services they call and, with a front door, those it routes to.
fn with_dependencies(asked: [bool; 5], front_door: bool) -> [bool; 5] {
    let mut wanted = asked;
    if front_door {
        for service in [ServiceId::Auth, ServiceId::Gateway, ServiceId::Website] {
            wanted[service.index()] = true;
        }
    }
    // Needs come earlier in start order: one pass from the last service settles them all.
    for service in ServiceId::ALL.into_iter().rev() {
        if wanted[service.index()] {
            for needed in service.needs() {
                wanted[needed.index()] = true;
            }
        }
    }
    wanted
}

/// The listener of `S` when the stack runs it: its configured or default port with
/// [`Ports::Usual`].
async fn bind_service<S: Service>(
    wanted: bool,
    configured: Option<u16>,
    ports: Ports,
) -> Result<Option<TcpListener>, StackError> {
    if !wanted {
        return Ok(None);
    }
    bind(configured.unwrap_or(S::DEFAULT_PORT), ports)
        .await
        .map(Some)
}

/// A listener on 127.0.0.1: `port` with [`Ports::Usual`] (an ephemeral one when it is
/// taken), else an ephemeral one.
async fn bind(port: u16, ports: Ports) -> Result<TcpListener, StackError> {
    if ports == Ports::Usual {
        if let Ok(listener) = TcpListener::bind((LOCALHOST, port)).await {
            return Ok(listener);
        }
        tracing::warn!(port, "usual port is taken; using an ephemeral one");
    }
    TcpListener::bind((LOCALHOST, 0))
        .await
        .map_err(|e| StackError::io("cannot bind an internal port", e))
}

fn local_address(listener: &TcpListener) -> Result<SocketAddr, StackError> {
    listener
        .local_addr()
        .map_err(|e| StackError::io("cannot read a listener's address", e))
}

/// The URL clients use for `address` (a wildcard bind is reached on loopback).
pub(crate) fn public_url_of(address: SocketAddr) -> String {
    let ip = if address.ip().is_unspecified() {
        IpAddr::V4(Ipv4Addr::LOCALHOST)
    } else {
        address.ip()
    };
    format!("http://{}", SocketAddr::new(ip, address.port()))
}

/// The proxy's model table for [`Llm::Upstream`]: one model, an OpenAI-compatible server.
fn write_model_table(
    data_dir: &Path,
    model: &str,
    api_base: &str,
    api_key: &str,
) -> Result<PathBuf, StackError> {
    let path = data_dir.join("llm-models.yaml");
    let table = format!(
        "model_list:\n  - model_name: {model}\n    litellm_params:\n      model: openai/gpt-4o\n      \
         api_base: {api_base}\n      api_key: {api_key}\n"
    );
    std::fs::write(&path, table)
        .map_err(|e| StackError::io(format!("cannot write {}", path.display()), e))?;
    Ok(path)
}

/// The key-encryption key in the data dir (`codelab keys rotate --data-dir` reads the same
/// file), created with mode 0600 on first start.
fn data_dir_key_encryption_key(data_dir: &Path) -> Result<Secret, StackError> {
    use std::io::Write;
    let path = data_dir.join(codelab_auth::keys::DATA_DIR_KEY_ENCRYPTION_FILE);
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    match options.open(&path) {
        Ok(mut created) => {
            let key =
                codelab_auth::keys::generate_key_encryption_key().map_err(StackError::build)?;
            created
                .write_all(format!("{key}\n").as_bytes())
                .map_err(|e| StackError::io(format!("cannot write {}", path.display()), e))?;
            Ok(Secret::new(key))
        }
        Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => {
            let key = std::fs::read_to_string(&path)
                .map_err(|e| StackError::io(format!("cannot read {}", path.display()), e))?;
            Ok(Secret::new(key.trim().to_owned()))
        }
        Err(error) => Err(StackError::io(
            format!("cannot create {}", path.display()),
            error,
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn started(asked: &[ServiceId], front_door: bool) -> Vec<ServiceId> {
        let mut wanted = [false; 5];
        for service in asked {
            wanted[service.index()] = true;
        }
        let wanted = with_dependencies(wanted, front_door);
        ServiceId::ALL
            .into_iter()
            .filter(|service| wanted[service.index()])
            .collect()
    }

    #[tokio::test]
    async fn every_service_answers_ready_as_soon_as_start_returns() {
        // The services start side by side: `start` must still return only once each is built
        // and served, with the wiring (issuer, addresses) as when they started in turn.
        let front_door = TcpListener::bind((LOCALHOST, 0)).await.expect("bind");
        let stack = StackBuilder::default()
            .front_door(front_door)
            .start()
            .await
            .expect("the stack starts");
        let client = reqwest::Client::new();
        for (name, address) in stack.services() {
            let status = client
                .get(format!("http://{address}/ready"))
                .send()
                .await
                .expect("the service answers")
                .status();
            assert_eq!(status, reqwest::StatusCode::OK, "{name} is not ready");
        }
        let front_door = stack.front_door.expect("a front door");
        assert_eq!(stack.public_url, public_url_of(front_door));
        let auth = stack.auth.as_ref().expect("auth");
        assert_eq!(stack.issuer, auth.state.config.issuer());
        assert_eq!(stack.gateway_config.jwt_issuer, stack.issuer);
        assert_eq!(stack.gateway_config.auth_service_url, auth.url);
        let runtime = stack.runtime.as_ref().expect("runtime");
        assert_eq!(stack.gateway_config.agent_url, runtime.url);
        let proxy = stack.proxy.as_ref().expect("proxy");
        assert_eq!(stack.runtime_config.llm_proxy_url, proxy.url);
        stack.stop().await;
    }

    #[tokio::test]
    async fn a_service_that_cannot_start_fails_the_whole_start() {
        let failed = StackBuilder::default()
            .only([ServiceId::Auth])
            .auth_config(|config| config.trusted_proxies = vec!["not an address".to_owned()])
            .start()
            .await;
        assert!(matches!(failed, Err(StackError::Build(_))));
    }

    #[test]
    fn a_service_brings_what_it_calls_and_nothing_else() {
        use ServiceId::*;
        assert_eq!(started(&[LlmProxy], false), [LlmProxy]);
        assert_eq!(started(&[AgentRuntime], false), [LlmProxy, AgentRuntime]);
        assert_eq!(started(&[Auth], false), [Auth]);
        assert_eq!(
            started(&[Gateway], false),
            [LlmProxy, AgentRuntime, Auth, Gateway]
        );
        assert_eq!(started(&[Website], false), ServiceId::ALL);
        assert_eq!(started(&[Auth], true), ServiceId::ALL);
    }
}
