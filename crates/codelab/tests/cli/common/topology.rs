//! The production topology as real processes on loopback, for tests that need all of it at
//! once (crates/codelab/tests/cli/e2e_nginx.rs, the soak, the fault tests): nginx from
//! deploy/nginx/nginx.conf balancing two gateways, each gateway talking to its own agent
//! runtime (both runtimes share one database), auth on its own database, the LLM proxy
//! answering with the mock model, the website (unless a [`Plan`] leaves it out), and a
//! private `redis-server`, on the caller's PostgreSQL (test databases or a private cluster),
//! which the [`Topology`] holds until its processes are gone. Everything is killed when the
//! [`Topology`] drops; on a panic the end of every log is printed.
#![allow(
    dead_code,
    reason = "shared by several test binaries, each using part of it"
)]

use std::net::SocketAddr;
use std::time::Duration;

use super::nginx::{Nginx, Prefix, upstreams_conf};
use super::processes::{RedisServer, free_port};
use super::services::{self, Kind, Service, Wiring, plus};
use codelab_testkit::TempPostgres;

/// The admin's name; its password is [`Plan::admin_password`].
pub const ADMIN: &str = "admin";

/// What differs between the tests that run the [`Topology`].
pub struct Plan {
    /// Auth's database URL.
    pub auth_db: String,
    /// The runtimes' database URL (both share it).
    pub runtime_db: String,
    /// Auth's master key: the admin's password.
    pub admin_password: String,
    /// Whether the website runs (its console registered with auth). Without it nginx's
    /// website upstream names a port nothing listens on.
    pub website: bool,
    /// Added to the proxy's environment (provider addresses, timeouts, retries).
    pub proxy_env: Vec<(&'static str, String)>,
    /// Added to each runtime's environment (the model).
    pub runtime_env: Vec<(&'static str, String)>,
    /// Added to each gateway's environment.
    pub gateway_env: Vec<(&'static str, String)>,
    /// Bound of each service's start.
    pub start: Duration,
}

impl Plan {
    /// Everything, the website included, on these databases, with nothing added.
    pub fn new(auth_db: String, runtime_db: String, admin_password: String) -> Plan {
        Plan {
            auth_db,
            runtime_db,
            admin_password,
            website: true,
            proxy_env: Vec::new(),
            runtime_env: Vec::new(),
            gateway_env: Vec::new(),
            start: services::START,
        }
    }
}

/// A database for auth and one for the runtimes on the test PostgreSQL.
pub struct TempDatabases {
    pub auth: TempPostgres,
    pub runtime: TempPostgres,
}

impl TempDatabases {
    /// `<purpose>_auth` and `<purpose>_runtime`.
    pub fn new(purpose: &str) -> TempDatabases {
        TempDatabases {
            auth: TempPostgres::new(&format!("{purpose}_auth")),
            runtime: TempPostgres::new(&format!("{purpose}_runtime")),
        }
    }

    /// A [`Plan`] on these databases.
    pub fn plan(&self, admin_password: String) -> Plan {
        Plan::new(
            self.auth.url.clone(),
            self.runtime.url.clone(),
            admin_password,
        )
    }
}

/// An nginx from deploy/nginx/nginx.conf with its prefix (the process goes first); prints its
/// error log when it drops during a panic.
pub struct Front {
    _nginx: Nginx,
    pub prefix: Prefix,
}

impl Front {
    /// Starts nginx on `prefix` and waits until it answers.
    pub async fn start(prefix: Prefix) -> Front {
        Front {
            _nginx: prefix.start().await,
            prefix,
        }
    }

    pub fn url(&self) -> String {
        self.prefix.url()
    }
}

impl Drop for Front {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let errors = std::fs::read_to_string(self.prefix.path().join("error.log"));
            let url = self.url();
            eprintln!(
                "--- error log of nginx {url} ---\n{}",
                errors.unwrap_or_default()
            );
        }
    }
}

/// Everything, on `postgres` (what holds the databases). Fields drop in order: nginx and the
/// services are killed before Redis and PostgreSQL go and the logs are removed.
pub struct Topology<Postgres> {
    /// nginx with both gateways in `codelab_gateway` (round robin).
    pub front: Front,
    pub gateways: Vec<Service>,
    pub runtimes: Vec<Service>,
    /// `X-Internal-Auth` key of each runtime (its gateway's; to read its API directly).
    pub runtime_keys: Vec<String>,
    pub website: Option<Service>,
    pub auth: Service,
    pub proxy: Service,
    pub redis: RedisServer,
    pub postgres: Postgres,
    pub logs: tempfile::TempDir,
    /// nginx's website upstream (the website's address, or a port nothing listens on).
    website_upstream: SocketAddr,
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

impl<Postgres> Topology<Postgres> {
    /// Starts every process at once on `postgres` and the databases `plan` names there, and
    /// returns without waiting for readiness (the server may not be up yet; see
    /// [`Topology::all_ready`]).
    pub async fn spawn_on(postgres: Postgres, plan: Plan) -> Topology<Postgres> {
        let logs = tempfile::tempdir().expect("a temp dir for the logs");
        let redis = RedisServer::start().await;
        let [proxy_port, auth_port, website_port] = [free_port(), free_port(), free_port()];
        let runtime_ports = [free_port(), free_port()];
        let gateway_ports = [free_port(), free_port()];
        let website_upstream = loopback(website_port);

        let front = Prefix::new(
            &upstreams_conf(
                &[loopback(auth_port)],
                &gateway_ports.map(loopback),
                &[website_upstream],
            ),
            false,
        );
        worker_connections_per_core(&front);
        let wiring = Wiring {
            public_url: front.url(),
            auth_url: format!("http://{}", loopback(auth_port)),
            proxy_url: format!("http://{}", loopback(proxy_port)),
            // One strong key per link: runtime→proxy, and each gateway→its runtime.
            proxy_key: codelab_core::random_hex(32),
            redis_url: redis.url(),
            auth_db: plan.auth_db,
            runtime_db: plan.runtime_db,
            admin_password: plan.admin_password,
            trusted_proxies: "127.0.0.1/32".to_owned(),
        };
        let runtime_keys = vec![codelab_core::random_hex(32), codelab_core::random_hex(32)];
        let dir = logs.path();
        let spawn =
            |kind, port, env| Service::on_loopback(kind, port, env, dir).bounded(plan.start);

        let proxy = spawn(
            Kind::LlmProxy,
            proxy_port,
            plus(wiring.proxy(), &plan.proxy_env),
        );
        let mut auth_env = wiring.auth();
        if plan.website {
            auth_env = plus(auth_env, &[wiring.console_redirect()]);
        }
        let auth = spawn(Kind::Auth, auth_port, auth_env);
        let runtimes: Vec<Service> = runtime_ports
            .iter()
            .zip(&runtime_keys)
            .map(|(port, key)| {
                let env = plus(wiring.runtime(key), &plan.runtime_env);
                spawn(Kind::AgentRuntime, *port, env)
            })
            .collect();
        let website = plan.website.then(|| {
            let gateway_url = format!("http://{}", loopback(gateway_ports[0]));
            let env = wiring.website(&gateway_url, &runtimes[0].url);
            spawn(Kind::Website, website_port, env)
        });
        // Gateway i talks to runtime i; both runtimes share the database. The gateways start
        // with auth, in no order, as Kubernetes starts pods: a gateway whose JWKS fetch fails
        // retries and becomes ready soon after auth serves its keys.
        let gateways: Vec<Service> = gateway_ports
            .iter()
            .zip(runtimes.iter().zip(&runtime_keys))
            .map(|(port, (runtime, key))| {
                let env = plus(wiring.gateway(&runtime.url, key), &plan.gateway_env);
                spawn(Kind::Gateway, *port, env)
            })
            .collect();
        Topology {
            front: Front::start(front).await,
            gateways,
            runtimes,
            runtime_keys,
            website,
            auth,
            proxy,
            redis,
            postgres,
            logs,
            website_upstream,
            admin_password: wiring.admin_password,
        }
    }

    /// [`Topology::spawn_on`], then waits until every `/ready` is 200.
    pub async fn start_on(postgres: Postgres, plan: Plan) -> Topology<Postgres> {
        let mut topology = Topology::spawn_on(postgres, plan).await;
        topology.all_ready().await;
        topology
    }

    /// Waits until every service's `/ready` answers 200; prints how long each took.
    pub async fn all_ready(&mut self) -> Duration {
        services::all_ready(self.services()).await
    }

    /// The public address (nginx).
    pub fn url(&self) -> String {
        self.front.url()
    }

    /// The admin's password (auth's master key).
    pub fn admin_password(&self) -> &str {
        &self.admin_password
    }

    /// An upstreams.conf with this topology's auth and website and `gateways`: another nginx
    /// on the same services (one reaching a single gateway, say).
    pub fn upstreams_with(&self, gateways: &[SocketAddr]) -> String {
        upstreams_conf(&[self.auth.address()], gateways, &[self.website_upstream])
    }

    /// Every `codelab serve` process.
    pub fn services(&mut self) -> Vec<&mut Service> {
        let mut all: Vec<&mut Service> = vec![&mut self.proxy, &mut self.auth];
        all.extend(self.website.as_mut());
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
}

impl<Postgres> Drop for Topology<Postgres> {
    fn drop(&mut self) {
        // nginx prints its own log when it drops, after this.
        if std::thread::panicking() {
            services::print_log_ends(self.services());
        }
    }
}
