//! The face every CodeLab service shows to whoever runs it (`codelab serve`, `codelab up`, the
//! in-process test stack): its name and settings section, how to build its state from a config
//! and the shared dependencies, its router and its drain.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::cache::Cache;
use crate::clock::{SharedClock, SystemClock};
use crate::config::Environment;
use crate::db::{DbError, DbOptions, DbPool, connect_database, register_pool_metrics};
use crate::http::{LocalRoutes, ServiceInfo};
use crate::telemetry::metrics_handle;

/// A setting a service refuses to start with; the text names the setting (and its variable).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ConfigProblem(pub String);

impl ConfigProblem {
    /// A problem described by `text`.
    pub fn new(text: impl Into<String>) -> Self {
        Self(text.into())
    }
}

impl std::ops::Deref for ConfigProblem {
    type Target = str;

    fn deref(&self) -> &str {
        &self.0
    }
}

impl From<String> for ConfigProblem {
    fn from(text: String) -> Self {
        Self(text)
    }
}

/// Refuses `url` unless it is an absolute http(s) URL holding none of `refused` (at least `?`
/// and `#`, as the text says); the text names the setting `name`.
pub fn check_http_url(name: &str, url: &str, refused: &[char]) -> Result<(), ConfigProblem> {
    let ok = (url.starts_with("http://") || url.starts_with("https://"))
        && !url.contains(refused)
        && url.len() > "https://".len();
    if ok {
        Ok(())
    } else {
        Err(ConfigProblem(format!(
            "{name} must be an absolute http(s) URL without query or fragment, got {url:?}"
        )))
    }
}

/// What every service's `Config` provides besides its fields: where it is read from and the one
/// place its settings are checked ([`ServiceConfig::validate`], called by [`Service::build`]
/// before anything else). Where it listens comes from [`service_config!`].
pub trait ServiceConfig:
    Listens + Serialize + DeserializeOwned + Default + Clone + Send + Sync + 'static
{
    /// Its section in the TOML file.
    const SECTION: &'static str;
    /// Prefix of its environment variables (`AUTH_SERVICE` for `AUTH_SERVICE__PORT`).
    const ENV_PREFIX: &'static str;
    /// Port when neither `<PREFIX>__PORT` nor `PORT` is set.
    const DEFAULT_PORT: u16;

    /// Refuses settings that cannot work, and those `environment` must never run with.
    fn validate(&self, environment: Environment) -> Result<(), ConfigProblem>;
}

/// Where a service listens and how much it logs.
pub trait Listens {
    /// Its `host`, `port` and `log_level`.
    fn listen(&self) -> Listen<'_>;
}

/// The settings every service has for its listener and logs (`host`, `port`, `log_level`).
#[derive(Debug, Clone, Copy)]
pub struct Listen<'a> {
    /// Address to bind.
    pub host: &'a str,
    /// The port set for this service, if any.
    pub port: Option<u16>,
    /// The tracing filter.
    pub log_level: &'a str,
}

/// Declares a service's `Config`: each setting once, with its default (`pub name: Type =
/// default,`), plus the four every service has: `port`, `host` (`0.0.0.0`), `log_level`
/// (`INFO`) and `version` (the crate's). Gives it `Default`, [`Listens`] and the serde shape
/// [`crate::config::ConfigLoader`] expects (`#[serde(default)]`).
///
/// The shared settings are plain fields rather than a `#[serde(flatten)]` struct: flattened
/// fields lose the loader's string-to-number coercion (`<PREFIX>__PORT=8080` would be refused)
/// and the variable name in errors.
#[macro_export]
macro_rules! service_config {
    (
        $(#[$meta:meta])*
        pub struct $name:ident {
            $($(#[$field_meta:meta])* pub $field:ident: $ty:ty = $default:expr),* $(,)?
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, ::serde::Serialize, ::serde::Deserialize)]
        #[serde(default)]
        pub struct $name {
            /// `<PREFIX>__PORT`; wins over plain `PORT`.
            pub port: Option<u16>,
            /// Address to bind (`0.0.0.0` in containers).
            pub host: String,
            $($(#[$field_meta])* pub $field: $ty,)*
            /// The tracing filter (`INFO`, `debug`, ...).
            pub log_level: String,
            /// The version the service reports (health answers, metadata).
            pub version: String,
        }

        impl Default for $name {
            fn default() -> Self {
                Self {
                    port: None,
                    host: "0.0.0.0".to_owned(),
                    $($field: $default,)*
                    log_level: "INFO".to_owned(),
                    version: env!("CARGO_PKG_VERSION").to_owned(),
                }
            }
        }

        impl $crate::service::Listens for $name {
            fn listen(&self) -> $crate::service::Listen<'_> {
                $crate::service::Listen {
                    host: &self.host,
                    port: self.port,
                    log_level: &self.log_level,
                }
            }
        }
    };
}

/// A task a service's state owns (a cleanup loop, a key reloader): aborted when the state, and
/// with it this guard, is dropped, so a stopped service leaves nothing running.
#[derive(Debug)]
pub struct BackgroundTask(pub JoinHandle<()>);

impl Drop for BackgroundTask {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Closes `tasks` and waits up to `timeout` for those still running (a service's
/// [`Service::drain`]); whether they all finished.
pub async fn drain_tasks(tasks: &TaskTracker, timeout: Duration) -> bool {
    tasks.close();
    tokio::time::timeout(timeout, tasks.wait()).await.is_ok()
}

/// Connects a service's database (`max_connections` at most) and reports its pool in the
/// service's metrics.
pub async fn connect_service_database(
    info: &ServiceInfo,
    url: &str,
    max_connections: u32,
) -> Result<DbPool, DbError> {
    let options = DbOptions {
        max_connections,
        ..DbOptions::default()
    };
    let pool = connect_database(url, &options).await?;
    register_pool_metrics(info, pool.clone());
    Ok(pool)
}

/// How a service's state prints: its name, version and profile; its other fields hold
/// connections, keys and secrets.
pub fn fmt_state(
    f: &mut std::fmt::Formatter<'_>,
    info: &ServiceInfo,
    environment: Environment,
) -> std::fmt::Result {
    f.debug_struct("AppState")
        .field("info", info)
        .field("environment", &environment)
        .finish_non_exhaustive()
}

/// A snapshot of environment variables (empty values count as unset): the LLM proxy's
/// provider keys and `os.environ/NAME` references read it instead of the process environment,
/// so tests and embedders control what a service sees.
#[derive(Debug, Clone, Default)]
pub struct EnvVars(Arc<HashMap<String, String>>);

impl EnvVars {
    /// The variables of this process, now.
    pub fn from_process() -> Self {
        Self(Arc::new(
            std::env::vars().filter(|(_, v)| !v.is_empty()).collect(),
        ))
    }

    /// An explicit set of variables (empty values are dropped).
    pub fn from_pairs<K: Into<String>, V: Into<String>>(
        pairs: impl IntoIterator<Item = (K, V)>,
    ) -> Self {
        Self(Arc::new(
            pairs
                .into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .filter(|(_, v)| !v.is_empty())
                .collect(),
        ))
    }

    /// The value of `name`, if set and non-empty.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(String::as_str)
    }

    /// Every variable, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }
}

/// What a service needs from outside its config section. One struct for all five: each takes
/// what it uses and ignores the rest.
#[derive(Clone)]
pub struct SharedDeps {
    /// The deployment profile.
    pub environment: Environment,
    /// Injected time (token lifetimes, expiry, retention, caches).
    pub clock: SharedClock,
    /// Cancelled when the process shuts down (the gateway closes its sockets on it).
    pub shutdown: CancellationToken,
    /// A ready cache to use instead of connecting to the service's `redis_url` (tests,
    /// embedding); the auth service and the website use it.
    pub cache: Option<Cache>,
    /// Environment variables the service may read (the proxy's provider keys).
    pub env: EnvVars,
    /// The routers of the other services of this process (`codelab up`, the test stack): a
    /// service calls one of them in process instead of over HTTP. Empty for `codelab serve`.
    pub local_routes: LocalRoutes,
}

impl SharedDeps {
    /// Production dependencies for `environment`: the system clock, a fresh shutdown token,
    /// the cache from the config, and a snapshot of the process environment.
    pub fn new(environment: Environment) -> Self {
        Self {
            environment,
            clock: Arc::new(SystemClock),
            shutdown: CancellationToken::new(),
            cache: None,
            env: EnvVars::from_process(),
            local_routes: LocalRoutes::default(),
        }
    }

    /// Test dependencies for `environment`: as [`SharedDeps::new`] but with NO environment
    /// variables, so a developer's `OPENAI_API_KEY` never leaks into a test.
    pub fn isolated(environment: Environment) -> Self {
        Self {
            env: EnvVars::default(),
            ..Self::new(environment)
        }
    }

    /// Uses `clock` for time.
    #[must_use]
    pub fn with_clock(mut self, clock: SharedClock) -> Self {
        self.clock = clock;
        self
    }

    /// Uses `shutdown` as the process's shutdown token.
    #[must_use]
    pub fn with_shutdown(mut self, shutdown: CancellationToken) -> Self {
        self.shutdown = shutdown;
        self
    }

    /// Uses `cache` instead of connecting one from the config.
    #[must_use]
    pub fn with_cache(mut self, cache: Cache) -> Self {
        self.cache = Some(cache);
        self
    }

    /// Calls the services `routes` serves in process.
    #[must_use]
    pub fn with_local_routes(mut self, routes: LocalRoutes) -> Self {
        self.local_routes = routes;
        self
    }

    /// Uses `env` as the environment variables the service sees.
    #[must_use]
    pub fn with_env(mut self, env: EnvVars) -> Self {
        self.env = env;
        self
    }
}

impl Default for SharedDeps {
    /// [`SharedDeps::isolated`] in development.
    fn default() -> Self {
        Self::isolated(Environment::Development)
    }
}

impl std::fmt::Debug for SharedDeps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The environment variables may hold provider keys: never printed.
        let (environment, cache) = (self.environment, &self.cache);
        write!(
            f,
            "SharedDeps {{ environment: {environment}, cache: {cache:?}, .. }}"
        )
    }
}

/// One CodeLab service, as the state its handlers share (`codelab_auth::AuthService` is the
/// auth service's `AppState`): what `codelab serve`, `codelab up` and the test stack need to
/// run it, generically.
pub trait Service: Sized + Send + Sync + 'static {
    /// Name in `codelab serve <name>`, health answers, logs and metric names.
    const NAME: &'static str;
    /// Port when neither `<PREFIX>__PORT` nor `PORT` is set.
    const DEFAULT_PORT: u16 = <Self::Config as ServiceConfig>::DEFAULT_PORT;
    /// Prefix of its environment variables (`AUTH_SERVICE` for `AUTH_SERVICE__PORT`).
    const ENV_PREFIX: &'static str = <Self::Config as ServiceConfig>::ENV_PREFIX;
    /// Its section in the TOML file.
    const SECTION: &'static str = <Self::Config as ServiceConfig>::SECTION;

    /// Its settings.
    type Config: ServiceConfig;
    /// Why it could not start; a refused setting is one reason.
    type BuildError: std::error::Error + From<ConfigProblem> + Send + Sync + 'static;

    /// Validates `config` (the one check every way of starting shares), then [`Service::start`]s.
    fn build(
        config: Self::Config,
        deps: SharedDeps,
    ) -> impl Future<Output = Result<Arc<Self>, Self::BuildError>> + Send {
        // The recorder must exist before `start` describes and records the service's metrics.
        let _ = metrics_handle();
        let checked = config.validate(deps.environment);
        async move {
            checked?;
            Self::start(config, deps).await
        }
    }

    /// With `config` validated: connects storage and starts background work.
    fn start(
        config: Self::Config,
        deps: SharedDeps,
    ) -> impl Future<Output = Result<Arc<Self>, Self::BuildError>> + Send;

    /// Every route, with its layers.
    fn router(state: Arc<Self>) -> Router;

    /// After the listener stopped: waits up to `timeout` for work that outlives requests;
    /// `false` if some was still running. Nothing to wait for by default.
    fn drain(&self, timeout: Duration) -> impl Future<Output = bool> + Send {
        let _ = timeout;
        std::future::ready(true)
    }
}
