//! The production topology as real processes on loopback, for tests that need all of it at
//! once (the soak, fault injection): nginx from deploy/nginx/nginx.conf balancing two
//! gateways, each gateway talking to its own agent runtime (both runtimes share one
//! PostgreSQL database), auth on its own PostgreSQL database, the LLM proxy answering with the
//! mock model, the website, and a private `redis-server`. The same wiring as
//! crates/codelab/tests/cli/e2e_nginx.rs, without its per-gateway nginxes.
//!
//! Not listed in `common/mod.rs` (the `cli` test binary does not use it); a test target
//! includes it next to `common` with `#[path = "../cli/common/topology.rs"] mod topology;`.
//! Everything is killed when the [`Topology`] drops; the databases are dropped after the
//! processes; on a panic the end of every log is printed.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::common::nginx::{Nginx, Prefix, upstreams_conf};
use crate::common::processes::{Process, RedisServer, codelab, free_port, wait_for_status};
use codelab_testkit::TempPostgres;
use futures_util::future::join_all;
use serde_json::{Map, Value};

/// The admin's name; its password is [`Topology::admin_password`].
pub const ADMIN: &str = "admin";
/// Bound of a process's start (migrations on a cold database included).
pub const START: Duration = Duration::from_secs(60);

/// A `codelab serve <service>` process and its address.
pub struct Service {
    pub process: Process,
    pub url: String,
    /// `serve`'s argument, the environment and the log: what a restart needs.
    service: String,
    env: Vec<(String, String)>,
    log: PathBuf,
}

impl Service {
    /// `codelab serve <service>` on `port` (127.0.0.1) with `env`, its output in `logs`.
    fn spawn(service: &str, prefix: &str, port: u16, env: &[(&str, String)], logs: &Path) -> Self {
        let mut env: Vec<(String, String)> = env
            .iter()
            .map(|(name, value)| ((*name).to_owned(), value.clone()))
            .collect();
        env.push((format!("{prefix}__PORT"), port.to_string()));
        env.push((format!("{prefix}__HOST"), "127.0.0.1".to_owned()));
        let log = logs.join(format!("{service}-{port}.log"));
        let process = Self::process(service, port, &env, &log);
        Service {
            process,
            url: format!("http://127.0.0.1:{port}"),
            service: service.to_owned(),
            env,
            log,
        }
    }

    fn process(service: &str, port: u16, env: &[(String, String)], log: &Path) -> Process {
        let mut command = codelab(&["serve", service]);
        command.envs(env.iter().map(|(name, value)| (name, value)));
        Process::spawn(&format!("{service}:{port}"), command, log)
    }

    /// `<service>:<port>`, as the process is named.
    pub fn name(&self) -> &str {
        self.process.name()
    }

    /// Kills it (a crash, or its node gone).
    pub fn stop(&mut self) {
        self.process.kill();
    }

    /// Starts it again with the same settings on the same port.
    pub fn restart(&mut self) {
        let port = self.address().port();
        self.process = Self::process(&self.service, port, &self.env, &self.log);
    }

    pub fn address(&self) -> SocketAddr {
        self.url
            .trim_start_matches("http://")
            .parse()
            .expect("a service URL is http://127.0.0.1:<port>")
    }

    /// Waits until `/ready` answers `status`; returns its checks.
    pub async fn ready_is(&mut self, status: u16) -> Map<String, Value> {
        let url = format!("{}/ready", self.url);
        let body = wait_for_status(&url, status, &mut self.process, START).await;
        match serde_json::from_str(&body) {
            Ok(Value::Object(mut body)) => match body.remove("checks") {
                Some(Value::Object(checks)) => checks,
                _ => Map::new(),
            },
            _ => panic!("/ready of {} is not a JSON object: {body}", self.name()),
        }
    }
}

/// Everything. Fields drop in order: nginx and the services are killed before the databases
/// are dropped and the logs removed.
pub struct Topology {
    /// nginx with both gateways in `codelab_gateway` (round robin).
    _nginx: Nginx,
    pub front: Prefix,
    pub gateways: Vec<Service>,
    pub runtimes: Vec<Service>,
    pub website: Service,
    pub auth: Service,
    pub proxy: Service,
    pub redis: RedisServer,
    pub auth_db: TempPostgres,
    pub runtime_db: TempPostgres,
    pub logs: tempfile::TempDir,
    admin_password: String,
}

/// The tests run nginx as one process (`master_process off`), while `worker_processes auto`
/// gives a deployment one worker per core, each with nginx.conf's `worker_connections`: the
/// test's single worker gets as many connections as all of them together on this machine.
fn worker_connections_per_core(prefix: &Prefix) {
    let path = prefix.path().join("nginx.conf");
    let conf = std::fs::read_to_string(&path).expect("the prefix has nginx.conf");
    let (start, per_worker) = conf
        .match_indices("worker_connections ")
        .find_map(|(at, directive)| {
            let rest = &conf[at + directive.len()..];
            let number = rest.split(';').next()?.trim().parse::<usize>().ok()?;
            Some((at, number))
        })
        .expect("nginx.conf sets worker_connections");
    let end = start + conf[start..].find(';').expect("a directive ends with ;") + 1;
    let cores = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
    let conf = format!(
        "{}worker_connections {};{}",
        &conf[..start],
        per_worker * cores,
        &conf[end..]
    );
    std::fs::write(&path, conf).expect("the prefix is writable");
}

fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

impl Topology {
    /// Starts every process at once, then waits until each `/ready` is 200. `purpose` names
    /// the temp databases; `gateway_env` is added to both gateways' environment.
    pub async fn start(purpose: &str, gateway_env: &[(&str, String)]) -> Topology {
        let logs = tempfile::tempdir().expect("a temp dir for the logs");
        let auth_db = TempPostgres::new(&format!("{purpose}_auth"));
        let runtime_db = TempPostgres::new(&format!("{purpose}_runtime"));
        let redis = RedisServer::start().await;
        let admin_password = codelab_core::random_hex(16);
        let [proxy_port, auth_port, website_port] = [free_port(), free_port(), free_port()];
        let runtime_ports = [free_port(), free_port()];
        let gateway_ports = [free_port(), free_port()];

        let front = Prefix::new(
            &upstreams_conf(
                &[loopback(auth_port)],
                &gateway_ports.map(loopback),
                &[loopback(website_port)],
            ),
            false,
        );
        worker_connections_per_core(&front);
        // What clients use: the issuer and every metadata URL name it.
        let public = front.url();

        // One strong key per link: runtime→proxy, and each gateway→its runtime.
        let proxy_key = codelab_core::random_hex(32);
        let runtime_keys = [codelab_core::random_hex(32), codelab_core::random_hex(32)];
        let logs_dir = logs.path();
        let proxy = Service::spawn(
            "llm-proxy",
            "LLM_PROXY",
            proxy_port,
            &[("LLM_PROXY__INTERNAL_API_KEY", proxy_key.clone())],
            logs_dir,
        );
        let auth_url = format!("http://127.0.0.1:{auth_port}");
        let auth = Service::spawn(
            "auth",
            "AUTH_SERVICE",
            auth_port,
            &[
                ("AUTH_SERVICE__DB_URL", auth_db.url.clone()),
                ("AUTH_SERVICE__PUBLIC_URL", public.clone()),
                ("AUTH_SERVICE__TRUSTED_PROXIES", "127.0.0.1/32".into()),
                ("AUTH_SERVICE__MASTER_KEY", admin_password.clone()),
                ("AUTH_SERVICE__REDIS_URL", redis.url()),
                (
                    "AUTH_SERVICE__WEB_REDIRECT_URIS",
                    format!("{public}/console/callback"),
                ),
            ],
            logs_dir,
        );
        let runtimes: Vec<Service> = runtime_ports
            .iter()
            .zip(&runtime_keys)
            .map(|(port, key)| {
                Service::spawn(
                    "agent-runtime",
                    "AGENT_RUNTIME",
                    *port,
                    &[
                        ("AGENT_RUNTIME__DB_URL", runtime_db.url.clone()),
                        (
                            "AGENT_RUNTIME__LLM_PROXY_URL",
                            format!("http://127.0.0.1:{proxy_port}"),
                        ),
                        ("AGENT_RUNTIME__LLM_PROXY_API_KEY", proxy_key.clone()),
                        ("AGENT_RUNTIME__INTERNAL_API_KEY", key.clone()),
                    ],
                    logs_dir,
                )
            })
            .collect();
        let website = Service::spawn(
            "website",
            "WEBSITE",
            website_port,
            &[
                ("WEBSITE__PUBLIC_URL", public.clone()),
                ("WEBSITE__AUTH_URL", auth_url.clone()),
                (
                    "WEBSITE__GATEWAY_URL",
                    format!("http://127.0.0.1:{}", gateway_ports[0]),
                ),
                ("WEBSITE__AGENT_RUNTIME_URL", runtimes[0].url.clone()),
                ("WEBSITE__LLM_PROXY_URL", proxy.url.clone()),
            ],
            logs_dir,
        );
        // Gateway i talks to runtime i; both runtimes share the database. The gateways start
        // with auth, in no order: a failed JWKS fetch is retried.
        let gateways: Vec<Service> = gateway_ports
            .iter()
            .zip(runtimes.iter().zip(&runtime_keys))
            .map(|(port, (runtime, key))| {
                let mut env = vec![
                    ("GATEWAY__AGENT_URL", runtime.url.clone()),
                    ("GATEWAY__INTERNAL_API_KEY", key.clone()),
                    ("GATEWAY__AUTH_SERVICE_URL", auth_url.clone()),
                    ("GATEWAY__JWT_ISSUER", public.clone()),
                    ("GATEWAY__REDIS_URL", redis.url()),
                ];
                env.extend(gateway_env.iter().cloned());
                Service::spawn("gateway", "GATEWAY", *port, &env, logs_dir)
            })
            .collect();
        let nginx = front.start().await;
        let mut topology = Topology {
            _nginx: nginx,
            front,
            gateways,
            runtimes,
            website,
            auth,
            proxy,
            redis,
            auth_db,
            runtime_db,
            logs,
            admin_password,
        };
        let started = Instant::now();
        let ready = join_all(topology.services().into_iter().map(|service| async move {
            service.ready_is(200).await;
            format!("{} {:?}", service.name(), started.elapsed())
        }))
        .await;
        eprintln!("ready: {ready:?}");
        topology
    }

    /// The public address (nginx).
    pub fn url(&self) -> String {
        self.front.url()
    }

    /// The admin's password (auth's master key, random per topology).
    pub fn admin_password(&self) -> &str {
        &self.admin_password
    }

    /// Every `codelab serve` process.
    pub fn services(&mut self) -> Vec<&mut Service> {
        let mut all: Vec<&mut Service> = vec![&mut self.proxy, &mut self.auth, &mut self.website];
        all.extend(self.runtimes.iter_mut());
        all.extend(self.gateways.iter_mut());
        all
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        for service in self.services() {
            eprintln!(
                "--- end of the log of {} ---\n{}",
                service.name(),
                service.process.tail()
            );
        }
        let errors = std::fs::read_to_string(self.front.path().join("error.log"));
        eprintln!("--- nginx error log ---\n{}", errors.unwrap_or_default());
        eprintln!("(logs were in {})", self.logs.path().display());
    }
}
