//! The services as real `codelab serve <service>` processes, for the tests that run several of
//! them together (crates/codelab/tests/cli/e2e_nginx.rs, the soak, the fault tests, several
//! hosts): one [`Service`] (its log, restart and `/ready`), what each service is told about
//! the others ([`Wiring`]: one function per service returning its environment), and the
//! waits and failure reports over all of them ([`all_ready`], [`print_log_ends`]).
#![allow(
    dead_code,
    reason = "shared by several test binaries, each using part of it"
)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use codelab_core::service::Service as _;
use futures_util::future::join_all;
use serde_json::{Map, Value};

use super::processes::{Process, codelab_behind, wait_for_status};

/// Bound of a process's start (migrations on a cold database included), unless the test sets
/// another with [`Service::bounded`].
pub const START: Duration = Duration::from_secs(60);

/// A service's environment: `(name, value)` pairs.
pub type Env = Vec<(String, String)>;

/// Which service a process runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    LlmProxy,
    Auth,
    AgentRuntime,
    Gateway,
    Website,
}

impl Kind {
    /// Its name in `codelab serve <name>`.
    pub fn name(self) -> &'static str {
        match self {
            Kind::LlmProxy => codelab_llm_proxy::ProxyService::NAME,
            Kind::Auth => codelab_auth::AuthService::NAME,
            Kind::AgentRuntime => codelab_agent_runtime::RuntimeService::NAME,
            Kind::Gateway => codelab_gateway::GatewayService::NAME,
            Kind::Website => codelab_website::WebsiteService::NAME,
        }
    }

    /// The prefix of its variables (`AUTH_SERVICE` for `AUTH_SERVICE__PORT`).
    pub fn env_prefix(self) -> &'static str {
        match self {
            Kind::LlmProxy => codelab_llm_proxy::ProxyService::ENV_PREFIX,
            Kind::Auth => codelab_auth::AuthService::ENV_PREFIX,
            Kind::AgentRuntime => codelab_agent_runtime::RuntimeService::ENV_PREFIX,
            Kind::Gateway => codelab_gateway::GatewayService::ENV_PREFIX,
            Kind::Website => codelab_website::WebsiteService::ENV_PREFIX,
        }
    }
}

/// `extra` appended to `env` (a test's own settings after the wiring).
pub fn plus(mut env: Env, extra: &[(&str, String)]) -> Env {
    env.extend(
        extra
            .iter()
            .map(|(name, value)| ((*name).to_owned(), value.clone())),
    );
    env
}

/// What the services of one deployment are told about each other: addresses, keys and
/// databases. Each method is one service's environment.
#[derive(Debug, Clone)]
pub struct Wiring {
    /// What clients use (nginx): auth's issuer and metadata URLs name it.
    pub public_url: String,
    pub auth_url: String,
    pub proxy_url: String,
    /// The runtimes' key for the proxy (`X-Internal-Auth`).
    pub proxy_key: String,
    pub redis_url: String,
    pub auth_db: String,
    /// Shared by every runtime.
    pub runtime_db: String,
    /// Auth's master key: the admin's password.
    pub admin_password: String,
    /// Where auth takes client addresses from `X-Forwarded-For` (nginx's address).
    pub trusted_proxies: String,
}

fn env(pairs: &[(&str, &str)]) -> Env {
    pairs
        .iter()
        .map(|(name, value)| ((*name).to_owned(), (*value).to_owned()))
        .collect()
}

impl Wiring {
    pub fn proxy(&self) -> Env {
        env(&[("LLM_PROXY__INTERNAL_API_KEY", &self.proxy_key)])
    }

    pub fn auth(&self) -> Env {
        env(&[
            ("AUTH_SERVICE__DB_URL", &self.auth_db),
            ("AUTH_SERVICE__PUBLIC_URL", &self.public_url),
            ("AUTH_SERVICE__TRUSTED_PROXIES", &self.trusted_proxies),
            ("AUTH_SERVICE__MASTER_KEY", &self.admin_password),
            ("AUTH_SERVICE__REDIS_URL", &self.redis_url),
        ])
    }

    /// A runtime that its gateway reaches with `internal_key`.
    pub fn runtime(&self, internal_key: &str) -> Env {
        env(&[
            ("AGENT_RUNTIME__DB_URL", &self.runtime_db),
            ("AGENT_RUNTIME__LLM_PROXY_URL", &self.proxy_url),
            ("AGENT_RUNTIME__LLM_PROXY_API_KEY", &self.proxy_key),
            ("AGENT_RUNTIME__INTERNAL_API_KEY", internal_key),
        ])
    }

    /// A gateway talking to the runtime at `runtime_url` with its `internal_key`.
    pub fn gateway(&self, runtime_url: &str, internal_key: &str) -> Env {
        env(&[
            ("GATEWAY__AGENT_URL", runtime_url),
            ("GATEWAY__INTERNAL_API_KEY", internal_key),
            ("GATEWAY__AUTH_SERVICE_URL", &self.auth_url),
            ("GATEWAY__JWT_ISSUER", &self.public_url),
            ("GATEWAY__REDIS_URL", &self.redis_url),
        ])
    }

    /// The website, whose console reads the gateway and the runtime at these addresses.
    pub fn website(&self, gateway_url: &str, runtime_url: &str) -> Env {
        env(&[
            ("WEBSITE__PUBLIC_URL", &self.public_url),
            ("WEBSITE__AUTH_URL", &self.auth_url),
            ("WEBSITE__GATEWAY_URL", gateway_url),
            ("WEBSITE__AGENT_RUNTIME_URL", runtime_url),
            ("WEBSITE__LLM_PROXY_URL", &self.proxy_url),
        ])
    }

    /// Auth's registration of the website's console as a login client.
    pub fn console_redirect(&self) -> (&'static str, String) {
        (
            "AUTH_SERVICE__WEB_REDIRECT_URIS",
            format!("{}/console/callback", self.public_url),
        )
    }
}

/// A `codelab serve <service>` process and its address.
pub struct Service {
    pub process: Process,
    pub url: String,
    /// What a restart needs: the service, where it runs, its environment and its log.
    kind: Kind,
    prefix: Vec<String>,
    address: SocketAddr,
    env: Env,
    log: PathBuf,
    start: Duration,
}

impl Service {
    /// `codelab serve <kind>` on 127.0.0.1:`port` with `env`, named `<service>:<port>` (the
    /// soak finds its processes by that name), its output in `logs`.
    pub fn on_loopback(kind: Kind, port: u16, env: Env, logs: &Path) -> Service {
        let name = format!("{}:{port}", kind.name());
        let address = SocketAddr::from(([127, 0, 0, 1], port));
        Service::behind(&[], &name, kind, address, env, logs)
    }

    /// `codelab serve <kind>` run behind `prefix` (for example `ip netns exec <namespace>`:
    /// on another host) and listening on `address` with `env`; its output in `<name>.log` in
    /// `logs`.
    pub fn behind(
        prefix: &[&str],
        name: &str,
        kind: Kind,
        address: SocketAddr,
        mut env: Env,
        logs: &Path,
    ) -> Service {
        env.push((
            format!("{}__HOST", kind.env_prefix()),
            address.ip().to_string(),
        ));
        env.push((
            format!("{}__PORT", kind.env_prefix()),
            address.port().to_string(),
        ));
        let prefix: Vec<String> = prefix.iter().map(|word| (*word).to_owned()).collect();
        let log = logs.join(format!("{name}.log"));
        Service {
            process: serve(&prefix, name, kind, &env, &log),
            url: format!("http://{address}"),
            kind,
            prefix,
            address,
            env,
            log,
            start: START,
        }
    }

    /// The same with `start` as the bound of its start (instead of [`START`]).
    pub fn bounded(mut self, start: Duration) -> Service {
        self.start = start;
        self
    }

    /// As the process is named (`<service>:<port>`, or the host's name).
    pub fn name(&self) -> &str {
        self.process.name()
    }

    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// The end of its log, for failure messages.
    pub fn tail(&self) -> String {
        self.process.tail()
    }

    /// Kills it (a crash, or its node gone).
    pub fn stop(&mut self) {
        self.process.kill();
    }

    /// Starts it (again) with the same settings at the same address; the log goes on.
    pub fn restart(&mut self) {
        let name = self.process.name().to_owned();
        self.process = serve(&self.prefix, &name, self.kind, &self.env, &self.log);
    }

    /// Waits until `/ready` answers `status`; returns its checks.
    pub async fn ready_is(&mut self, status: u16) -> Map<String, Value> {
        let url = format!("{}/ready", self.url);
        let body = wait_for_status(&url, status, &mut self.process, self.start).await;
        match serde_json::from_str(&body) {
            Ok(Value::Object(mut body)) => match body.remove("checks") {
                Some(Value::Object(checks)) => checks,
                _ => Map::new(),
            },
            _ => panic!("/ready of {} is not a JSON object: {body}", self.name()),
        }
    }

    /// GET `path` on the service itself: status and body.
    pub async fn get(&self, path: &str) -> (u16, String) {
        super::cli::get_text(&format!("{}{path}", self.url), &[]).await
    }
}

/// `codelab serve <kind>` behind `prefix` with `env`, its output appended to `log`.
fn serve(prefix: &[String], name: &str, kind: Kind, env: &Env, log: &Path) -> Process {
    let prefix: Vec<&str> = prefix.iter().map(String::as_str).collect();
    let mut command = codelab_behind(&prefix, &["serve", kind.name()]);
    command.envs(env.iter().map(|(name, value)| (name, value)));
    Process::spawn(name, command, log)
}

/// Waits until every service's `/ready` answers 200 (all at once, in no order: a gateway
/// retries auth's keys, a runtime its database); prints when each was ready and returns the
/// whole wait.
pub async fn all_ready(services: Vec<&mut Service>) -> Duration {
    let started = Instant::now();
    let ready = join_all(services.into_iter().map(|service| async move {
        service.ready_is(200).await;
        format!("{} {:?}", service.name(), started.elapsed())
    }))
    .await;
    eprintln!("ready: {ready:?}");
    started.elapsed()
}

/// Prints the end of every service's log and where the logs are: what a failed test needs
/// (from a `Drop` while panicking).
pub fn print_log_ends(services: Vec<&mut Service>) {
    let mut dirs: Vec<&Path> = Vec::new();
    for service in &services {
        eprintln!(
            "--- end of the log of {} ---\n{}",
            service.name(),
            service.tail()
        );
        if let Some(dir) = service.log.parent().filter(|dir| !dirs.contains(dir)) {
            dirs.push(dir);
        }
    }
    for dir in dirs {
        eprintln!("(logs were in {})", dir.display());
    }
}
