//! What a stack is made of: databases, the LLM, ports, settings and dependencies of each
//! service. [`StackBuilder::start`] (in `running.rs`) turns it into a running [`crate::Stack`].

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use codelab_core::clock::{SharedClock, SystemClock};
use codelab_core::config::{ConfigLoader, Environment, Secret};
use codelab_core::http::ListenerLimits;
use codelab_core::service::EnvVars;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// One of the five services, to give it its own environment or clock, or to start only some.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServiceId {
    LlmProxy,
    AgentRuntime,
    Auth,
    Gateway,
    Website,
}

impl ServiceId {
    /// Every service, in start order (the proxy first: the runtime calls it).
    pub const ALL: [ServiceId; 5] = [
        ServiceId::LlmProxy,
        ServiceId::AgentRuntime,
        ServiceId::Auth,
        ServiceId::Gateway,
        ServiceId::Website,
    ];

    /// The service's name (`llm-proxy`, `agent-runtime`, `auth`, `gateway`, `website`).
    pub fn name(self) -> &'static str {
        match self {
            ServiceId::LlmProxy => codelab_llm_proxy::SERVICE_NAME,
            ServiceId::AgentRuntime => codelab_agent_runtime::SERVICE_NAME,
            ServiceId::Auth => codelab_auth::SERVICE_NAME,
            ServiceId::Gateway => codelab_gateway::SERVICE_NAME,
            ServiceId::Website => codelab_website::SERVICE_NAME,
        }
    }

    pub(crate) fn index(self) -> usize {
        self as usize
    }

    /// The services this one calls, which a stack starts with it: all of them come earlier
    /// in [`ServiceId::ALL`].
    pub(crate) fn needs(self) -> &'static [ServiceId] {
        match self {
            ServiceId::LlmProxy | ServiceId::Auth => &[],
            ServiceId::AgentRuntime => &[ServiceId::LlmProxy],
            ServiceId::Gateway => &[ServiceId::AgentRuntime, ServiceId::Auth],
            // The console shows every service's health and talks to auth and the gateway.
            ServiceId::Website => &[
                ServiceId::LlmProxy,
                ServiceId::AgentRuntime,
                ServiceId::Auth,
                ServiceId::Gateway,
            ],
        }
    }
}

/// Where the auth service and the agent runtime keep their data.
#[derive(Debug, Clone, Default)]
pub enum Database {
    /// SQLite files `auth.db` and `agent_runtime.db` in the data dir.
    #[default]
    Sqlite,
    /// One database per service on this PostgreSQL server (`codelab_auth`,
    /// `codelab_agent_runtime`, or `<name>_auth`, ... when the URL names a database other than
    /// `postgres`; see [`crate::postgres_database_url`]), created if missing.
    Postgres(String),
}

/// The model behind the LLM proxy.
#[derive(Debug, Clone, Default)]
pub enum Llm {
    /// The proxy's built-in deterministic mock (`mock-llm`), unless settings name another.
    #[default]
    Mock,
    /// An OpenAI-compatible server (e.g. the test fake LLM): the proxy gets a model table
    /// whose one model `model` is `openai/gpt-4o` at `api_base`, and the runtime uses `model`.
    Upstream {
        model: String,
        /// The server's OpenAI base URL (ending in `/v1`).
        api_base: String,
        api_key: String,
    },
}

/// Which ports the services listen on (always on 127.0.0.1).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Ports {
    /// An ephemeral port for each.
    #[default]
    Ephemeral,
    /// Each service's configured or default port, an ephemeral one when that is taken.
    Usual,
}

/// How the gateway authenticates callers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum GatewayAuth {
    /// As the gateway's settings say.
    #[default]
    Configured,
    /// JWTs required on REST; WebSockets in `session` mode (the Flutter IDE connects without
    /// a token to sessions it created): `codelab up`'s default.
    Session,
    /// No authentication (`codelab up --no-auth`): REST calls without a token act as the
    /// development user, WebSockets need no token.
    Off,
}

/// How the services of the stack call each other (the gateway the runtime, the runtime the
/// proxy).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum InternalCalls {
    /// The caller hands each request to the callee's router in this process: the same API
    /// and the same client code, without two loopback HTTP hops per step (`codelab up`).
    #[default]
    InProcess,
    /// Over HTTP on the services' listeners, as the split deployment does.
    Http,
}

/// The keys of the internal links, generated unless given.
#[derive(Clone)]
pub struct InternalKeys {
    /// Guards the LLM proxy (the runtime→proxy link).
    pub proxy: Secret,
    /// Guards the agent runtime (the gateway→runtime link).
    pub runtime: Secret,
}

impl InternalKeys {
    /// Fixed keys (tests that call the proxy or the runtime directly).
    pub fn new(proxy: &str, runtime: &str) -> Self {
        Self {
            proxy: Secret::new(proxy),
            runtime: Secret::new(runtime),
        }
    }

    /// Fresh random keys, living only as long as the stack.
    pub fn generate() -> Self {
        Self {
            proxy: Secret::generate(),
            runtime: Secret::generate(),
        }
    }
}

impl std::fmt::Debug for InternalKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InternalKeys").finish_non_exhaustive()
    }
}

pub(crate) type Tweak<C> = Box<dyn FnOnce(&mut C) + Send>;

/// Hears, each time a service of the stack finds its database not answering, which service
/// and why (the driver's error, its URL's password redacted); see
/// [`StackBuilder::wait_for_database`].
pub type DatabaseWait = Arc<dyn Fn(ServiceId, &str) + Send + Sync>;

/// Describes a stack; [`StackBuilder::start`] starts it. Every setting has a default that suits
/// tests: all five services, SQLite in a temp dir, the mock model, ephemeral ports, default settings (no file, no
/// environment variables), development profile, system clock, no front door.
pub struct StackBuilder {
    pub(crate) data_dir: Option<PathBuf>,
    pub(crate) services: [bool; 5],
    pub(crate) database: Database,
    pub(crate) llm: Llm,
    pub(crate) model: Option<String>,
    pub(crate) ports: Ports,
    pub(crate) internal_calls: InternalCalls,
    pub(crate) front_door: Option<TcpListener>,
    pub(crate) front_door_limits: ListenerLimits,
    pub(crate) loader: Option<ConfigLoader>,
    pub(crate) environments: [Environment; 5],
    pub(crate) clocks: [SharedClock; 5],
    pub(crate) redis_url: Option<String>,
    pub(crate) gateway_auth: GatewayAuth,
    pub(crate) admin_password: Option<String>,
    pub(crate) keys: InternalKeys,
    pub(crate) env: EnvVars,
    pub(crate) drain_timeout: Duration,
    pub(crate) shutdown: CancellationToken,
    pub(crate) database_wait: Option<DatabaseWait>,
    pub(crate) proxy_tweaks: Vec<Tweak<codelab_llm_proxy::Config>>,
    pub(crate) runtime_tweaks: Vec<Tweak<codelab_agent_runtime::Config>>,
    pub(crate) auth_tweaks: Vec<Tweak<codelab_auth::Config>>,
    pub(crate) gateway_tweaks: Vec<Tweak<codelab_gateway::Config>>,
    pub(crate) website_tweaks: Vec<Tweak<codelab_website::Config>>,
}

impl Default for StackBuilder {
    fn default() -> Self {
        let system: SharedClock = Arc::new(SystemClock);
        Self {
            data_dir: None,
            services: [true; 5],
            database: Database::default(),
            llm: Llm::default(),
            model: None,
            ports: Ports::default(),
            internal_calls: InternalCalls::default(),
            front_door: None,
            front_door_limits: ListenerLimits::default(),
            loader: None,
            environments: [Environment::Development; 5],
            clocks: std::array::from_fn(|_| Arc::clone(&system)),
            redis_url: None,
            gateway_auth: GatewayAuth::default(),
            admin_password: None,
            keys: InternalKeys::generate(),
            env: EnvVars::default(),
            drain_timeout: Duration::from_secs(1),
            shutdown: CancellationToken::new(),
            database_wait: None,
            proxy_tweaks: Vec::new(),
            runtime_tweaks: Vec::new(),
            auth_tweaks: Vec::new(),
            gateway_tweaks: Vec::new(),
            website_tweaks: Vec::new(),
        }
    }
}

impl StackBuilder {
    /// The folder for the SQLite files and the auth service's key-encryption key (created
    /// with mode 0600 on first start, as `codelab keys rotate --data-dir` expects). Without
    /// it the stack uses a temp dir, deleted with the stack, and no key-encryption key.
    pub fn data_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.data_dir = Some(dir.into());
        self
    }

    /// Starts only `services` and the services they call (the runtime brings the proxy, the
    /// gateway the runtime and auth, the website and the front door everything they route
    /// to); the others are absent (`None`) in the running [`crate::Stack`]. All five unless set.
    pub fn only(mut self, services: impl IntoIterator<Item = ServiceId>) -> Self {
        self.services = [false; 5];
        for service in services {
            self.services[service.index()] = true;
        }
        self
    }

    pub fn database(mut self, database: Database) -> Self {
        self.database = database;
        self
    }

    pub fn llm(mut self, llm: Llm) -> Self {
        self.llm = llm;
        self
    }

    /// The model of every agent and the proxy's default (`codelab up --model`).
    pub fn model(mut self, model: impl Into<String>) -> Self {
        self.model = Some(model.into());
        self
    }

    pub fn ports(mut self, ports: Ports) -> Self {
        self.ports = ports;
        self
    }

    /// How the services call each other: in process (the default, as `codelab up`) or over
    /// HTTP, as in the split deployment.
    pub fn internal_calls(mut self, calls: InternalCalls) -> Self {
        self.internal_calls = calls;
        self
    }

    /// Serves the front door on `listener` (see [`crate::front_door_router`]); every public
    /// address (the issuer, the website's links, the console's redirect URI) is then its
    /// address. Without one, each service's public address is its own listener.
    pub fn front_door(mut self, listener: TcpListener) -> Self {
        self.front_door = Some(listener);
        self
    }

    /// Header, body and connection limits of the front door (`HTTP__*` in `codelab up`).
    pub fn front_door_limits(mut self, limits: ListenerLimits) -> Self {
        self.front_door_limits = limits;
        self
    }

    /// Reads each service's settings through `loader` (its TOML section and `<PREFIX>__*`
    /// variables) instead of starting from the defaults; the stack's wiring (addresses,
    /// databases, keys, Redis) is applied over them.
    pub fn load_settings(mut self, loader: ConfigLoader) -> Self {
        self.loader = Some(loader);
        self
    }

    /// The deployment profile of every service.
    pub fn environment(mut self, environment: Environment) -> Self {
        self.environments = [environment; 5];
        self
    }

    /// The deployment profile of one service.
    pub fn service_environment(mut self, service: ServiceId, environment: Environment) -> Self {
        self.environments[service.index()] = environment;
        self
    }

    /// The clock of every service that has one (all but the proxy).
    pub fn clock(mut self, clock: SharedClock) -> Self {
        self.clocks = std::array::from_fn(|_| Arc::clone(&clock));
        self
    }

    /// The clock of one service.
    pub fn service_clock(mut self, service: ServiceId, clock: SharedClock) -> Self {
        self.clocks[service.index()] = clock;
        self
    }

    /// Redis for the auth service's rate limits and lockouts, the gateway's fan-out and the
    /// website's console logins; without it all keep them in memory (whatever their settings
    /// say).
    pub fn redis_url(mut self, url: impl Into<String>) -> Self {
        self.redis_url = Some(url.into());
        self
    }

    pub fn gateway_auth(mut self, auth: GatewayAuth) -> Self {
        self.gateway_auth = auth;
        self
    }

    /// Seeds the `admin` user with this password, or makes it the one in force if the user
    /// exists from an earlier start (`codelab up --admin-password`).
    pub fn admin_password(mut self, password: impl Into<String>) -> Self {
        self.admin_password = Some(password.into());
        self
    }

    /// The internal links' keys (fixed ones in tests that call a service directly).
    pub fn keys(mut self, keys: InternalKeys) -> Self {
        self.keys = keys;
        self
    }

    /// The variables services read besides their settings: the proxy's provider keys and
    /// base URLs (`EnvVars::from_process()` in `up`); none unless given.
    pub fn env(mut self, env: EnvVars) -> Self {
        self.env = env;
        self
    }

    /// How long stopping waits for requests (and the runtime's turns) to finish; 1 s unless set.
    pub fn drain_timeout(mut self, timeout: Duration) -> Self {
        self.drain_timeout = timeout;
        self
    }

    /// Cancelling `token` stops the stack (e.g. `codelab_core::http::shutdown_on_signals()`).
    pub fn shutdown(mut self, token: CancellationToken) -> Self {
        self.shutdown = token;
        self
    }

    /// Waits for a database that does not answer (refused, timed out, starting up) instead of
    /// failing: the service is built again with a bounded backoff, its own listener answers
    /// `/health` 200 and `/ready` 503 meanwhile, and the front door answers 503 in each routed
    /// service's error shape. `waiting` hears every failed attempt. A database that answers and
    /// refuses (wrong password) still fails the start, and the shutdown token ends the wait
    /// with [`crate::StackError::Stopped`].
    pub fn wait_for_database(
        mut self,
        waiting: impl Fn(ServiceId, &str) + Send + Sync + 'static,
    ) -> Self {
        self.database_wait = Some(Arc::new(waiting));
        self
    }

    /// Short LLM deadlines (10 s a request, 5 s for routing) and no wait between the proxy's
    /// retries, so that a test or benchmark that goes wrong fails in seconds.
    pub fn short_llm_timeouts(self) -> Self {
        self.proxy_config(|config| {
            config.retry_backoff_ms = 1;
            config.request_timeout = 10.0;
        })
        .runtime_config(|config| {
            config.llm_timeout = 10.0;
            config.routing_timeout = 5.0;
        })
    }

    /// Changes the proxy's settings after the stack's wiring (tweaks run in the order given).
    pub fn proxy_config(
        mut self,
        tweak: impl FnOnce(&mut codelab_llm_proxy::Config) + Send + 'static,
    ) -> Self {
        self.proxy_tweaks.push(Box::new(tweak));
        self
    }

    /// Changes the agent runtime's settings after the stack's wiring.
    pub fn runtime_config(
        mut self,
        tweak: impl FnOnce(&mut codelab_agent_runtime::Config) + Send + 'static,
    ) -> Self {
        self.runtime_tweaks.push(Box::new(tweak));
        self
    }

    /// Changes the auth service's settings after the stack's wiring.
    pub fn auth_config(
        mut self,
        tweak: impl FnOnce(&mut codelab_auth::Config) + Send + 'static,
    ) -> Self {
        self.auth_tweaks.push(Box::new(tweak));
        self
    }

    /// Changes the gateway's settings after the stack's wiring.
    pub fn gateway_config(
        mut self,
        tweak: impl FnOnce(&mut codelab_gateway::Config) + Send + 'static,
    ) -> Self {
        self.gateway_tweaks.push(Box::new(tweak));
        self
    }

    /// Changes the website's settings after the stack's wiring.
    pub fn website_config(
        mut self,
        tweak: impl FnOnce(&mut codelab_website::Config) + Send + 'static,
    ) -> Self {
        self.website_tweaks.push(Box::new(tweak));
        self
    }
}
