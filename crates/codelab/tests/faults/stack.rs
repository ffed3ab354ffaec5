//! The services as real processes behind nginx (deploy/nginx/nginx.conf), as in
//! crates/codelab/tests/cli/e2e_nginx.rs, but on a PostgreSQL cluster of the test's own (so the
//! test can crash it and start it again) and with the proxy's and runtimes' settings open to
//! the test (a fake LLM provider). No website: no fault here concerns it.

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::common::nginx::{Nginx, Prefix, upstreams_conf};
use crate::common::private_postgres::PrivatePostgres;
use crate::common::processes::{Process, RedisServer, codelab, free_port, wait_for_status};
use codelab_testkit::ide_clients::{FlutterReplicaClient, Protocol2Options, TokenPlacement};
use futures_util::future::join_all;
use serde_json::{Map, Value};

pub const ADMIN: &str = "admin";
pub const ADMIN_PASSWORD: &str = "faults-admin-password";
/// Bound of every wait of a client (two cores are shared with other builds).
pub const WAIT: Duration = Duration::from_secs(30);
/// Bound of a process's start (migrations on a cold database included).
pub const START: Duration = Duration::from_secs(90);

/// A `codelab serve <service>` process and its address.
pub struct Service {
    pub process: Process,
    pub url: String,
}

impl Service {
    fn spawn(service: &str, prefix: &str, port: u16, env: &[(&str, String)], logs: &Path) -> Self {
        let mut command = codelab(&["serve", service]);
        command.envs(env.iter().map(|(name, value)| (*name, value.as_str())));
        command.env(format!("{prefix}__PORT"), port.to_string());
        command.env(format!("{prefix}__HOST"), "127.0.0.1");
        let log = logs.join(format!("{service}-{port}.log"));
        Service {
            process: Process::spawn(&format!("{service}:{port}"), command, &log),
            url: format!("http://127.0.0.1:{port}"),
        }
    }

    /// Waits until `/ready` answers `status`; returns its checks.
    pub async fn ready_is(&mut self, status: u16) -> Map<String, Value> {
        let url = format!("{}/ready", self.url);
        let body = wait_for_status(&url, status, &mut self.process, START).await;
        let body: Value = serde_json::from_str(&body).unwrap();
        body["checks"].as_object().cloned().unwrap_or_default()
    }

    /// GET `path` on the service itself: status and body.
    pub async fn get(&self, path: &str) -> (u16, String) {
        crate::common::cli::get_text(&format!("{}{path}", self.url), &[]).await
    }
}

/// Extra settings of a [`Stack`].
#[derive(Default)]
pub struct Settings {
    /// Added to the proxy's environment (provider addresses, timeouts, retries).
    pub proxy: Vec<(&'static str, String)>,
    /// Added to each runtime's environment (the model).
    pub runtime: Vec<(&'static str, String)>,
}

/// nginx, auth, two runtimes on one database, two gateways (gateway i talks to runtime i), the
/// proxy and a private Redis, on `postgres`. Fields drop in order: nginx and the services die
/// before PostgreSQL and Redis.
pub struct Stack {
    _nginx: Nginx,
    pub front: Prefix,
    pub gateways: Vec<Service>,
    pub runtimes: Vec<Service>,
    /// `X-Internal-Auth` key of each runtime (to read its API directly).
    pub runtime_keys: Vec<String>,
    pub auth: Service,
    pub proxy: Service,
    pub redis: RedisServer,
    pub postgres: PrivatePostgres,
    _logs: tempfile::TempDir,
}

fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

impl Stack {
    /// Starts every process at once on `postgres` (running or not: the services wait for it)
    /// and returns without waiting for readiness (see [`Stack::all_ready`]).
    pub async fn spawn(postgres: PrivatePostgres, settings: Settings) -> Stack {
        let logs = tempfile::tempdir().unwrap();
        let redis = RedisServer::start().await;
        let [proxy_port, auth_port] = [free_port(), free_port()];
        let runtime_ports = [free_port(), free_port()];
        let gateway_ports = [free_port(), free_port()];
        // nginx needs a website upstream; nothing here asks for it.
        let front = Prefix::new(
            &upstreams_conf(
                &[loopback(auth_port)],
                &gateway_ports.map(loopback),
                &[loopback(free_port())],
            ),
            false,
        );
        let public = front.url();
        let proxy_key = codelab_core::random_hex(32);
        let runtime_keys = [codelab_core::random_hex(32), codelab_core::random_hex(32)];
        let dir = logs.path();
        let mut proxy_env = vec![("LLM_PROXY__INTERNAL_API_KEY", proxy_key.clone())];
        proxy_env.extend(settings.proxy.iter().cloned());
        let proxy = Service::spawn("llm-proxy", "LLM_PROXY", proxy_port, &proxy_env, dir);
        let auth_url = format!("http://127.0.0.1:{auth_port}");
        let auth = Service::spawn(
            "auth",
            "AUTH_SERVICE",
            auth_port,
            &[
                ("AUTH_SERVICE__DB_URL", postgres.url("faults_auth")),
                ("AUTH_SERVICE__PUBLIC_URL", public.clone()),
                ("AUTH_SERVICE__TRUSTED_PROXIES", "127.0.0.1/32".into()),
                ("AUTH_SERVICE__MASTER_KEY", ADMIN_PASSWORD.into()),
                ("AUTH_SERVICE__REDIS_URL", redis.url()),
            ],
            dir,
        );
        let runtimes: Vec<Service> = runtime_ports
            .iter()
            .zip(&runtime_keys)
            .map(|(port, key)| {
                let mut env = vec![
                    ("AGENT_RUNTIME__DB_URL", postgres.url("faults_runtime")),
                    (
                        "AGENT_RUNTIME__LLM_PROXY_URL",
                        format!("http://127.0.0.1:{proxy_port}"),
                    ),
                    ("AGENT_RUNTIME__LLM_PROXY_API_KEY", proxy_key.clone()),
                    ("AGENT_RUNTIME__INTERNAL_API_KEY", key.clone()),
                ];
                env.extend(settings.runtime.iter().cloned());
                Service::spawn("agent-runtime", "AGENT_RUNTIME", *port, &env, dir)
            })
            .collect();
        let gateways: Vec<Service> = gateway_ports
            .iter()
            .zip(runtimes.iter().zip(&runtime_keys))
            .map(|(port, (runtime, key))| {
                Service::spawn(
                    "gateway",
                    "GATEWAY",
                    *port,
                    &[
                        ("GATEWAY__AGENT_URL", runtime.url.clone()),
                        ("GATEWAY__INTERNAL_API_KEY", key.clone()),
                        ("GATEWAY__AUTH_SERVICE_URL", auth_url.clone()),
                        ("GATEWAY__JWT_ISSUER", public.clone()),
                        ("GATEWAY__REDIS_URL", redis.url()),
                    ],
                    dir,
                )
            })
            .collect();
        Stack {
            _nginx: front.start().await,
            front,
            gateways,
            runtimes,
            runtime_keys: runtime_keys.to_vec(),
            auth,
            proxy,
            redis,
            postgres,
            _logs: logs,
        }
    }

    /// [`Stack::spawn`] on a running `postgres`, then waits until every `/ready` is 200.
    pub async fn start(postgres: PrivatePostgres, settings: Settings) -> Stack {
        let mut stack = Stack::spawn(postgres, settings).await;
        stack.all_ready().await;
        stack
    }

    /// Waits until every service's `/ready` answers 200; prints how long each took.
    pub async fn all_ready(&mut self) -> Duration {
        let started = Instant::now();
        let ready = join_all(self.services().into_iter().map(|service| async move {
            service.ready_is(200).await;
            format!("{} {:?}", service.process.name(), started.elapsed())
        }))
        .await;
        eprintln!("ready: {ready:?}");
        started.elapsed()
    }

    pub fn services(&mut self) -> Vec<&mut Service> {
        let mut all: Vec<&mut Service> = vec![&mut self.proxy, &mut self.auth];
        all.extend(self.runtimes.iter_mut());
        all.extend(self.gateways.iter_mut());
        all
    }

    /// Fails the test when a service process exited (they must survive every fault).
    pub fn assert_all_running(&mut self) {
        for service in self.services() {
            service.process.assert_running();
        }
    }

    /// The public URL (nginx).
    pub fn url(&self) -> String {
        self.front.url()
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        for service in self.services() {
            eprintln!(
                "--- end of the log of {} ---\n{}",
                service.process.name(),
                service.process.tail()
            );
        }
        let errors = std::fs::read_to_string(self.front.path().join("error.log"));
        eprintln!("--- nginx error log ---\n{}", errors.unwrap_or_default());
    }
}

/// The admin logged in through `base`.
pub async fn logged_in(base: &str) -> FlutterReplicaClient {
    let mut client = FlutterReplicaClient::new(base).with_timeout(WAIT);
    client.login(base, ADMIN, ADMIN_PASSWORD).await.unwrap();
    client
}

/// A Flutter replica on `base` holding `token` (one login shared by many clients: logins
/// are rate limited).
pub fn with_token(base: &str, token: &str) -> FlutterReplicaClient {
    let mut client = FlutterReplicaClient::new(base).with_timeout(WAIT);
    client.set_access_token(token);
    client
}

/// The admin's access token, logged in through `base`.
pub async fn admin_token(base: &str) -> String {
    logged_in(base).await.access_token().unwrap().to_owned()
}

pub fn p2_options(token: &str) -> Protocol2Options {
    Protocol2Options {
        timeout: WAIT,
        ..Protocol2Options::default()
    }
    .with_token(token, TokenPlacement::Query)
}
