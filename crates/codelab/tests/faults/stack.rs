//! The services as real processes behind nginx (deploy/nginx/nginx.conf): the loopback topology
//! of crates/codelab/tests/cli/common/topology.rs, but on a PostgreSQL cluster of the test's own
//! (so the test can crash it and start it again) and with the proxy's and runtimes' settings
//! open to the test (a fake LLM provider). No website: no fault here concerns it.

use std::time::Duration;

use crate::common::private_postgres::PrivatePostgres;
use crate::common::topology::{ADMIN, Plan, Topology};
use codelab_testkit::ide_clients::{FlutterReplicaClient, Protocol2Options, TokenPlacement};

pub use crate::common::services::Service;

pub const ADMIN_PASSWORD: &str = "faults-admin-password";
/// Bound of every wait of a client (two cores are shared with other builds).
pub const WAIT: Duration = Duration::from_secs(30);
/// Bound of a process's start (migrations on a cold database included).
pub const START: Duration = Duration::from_secs(90);

/// Extra settings of a [`Stack`].
#[derive(Default)]
pub struct Settings {
    /// Added to the proxy's environment (provider addresses, timeouts, retries).
    pub proxy: Vec<(&'static str, String)>,
    /// Added to each runtime's environment (the model).
    pub runtime: Vec<(&'static str, String)>,
}

/// The loopback [`Topology`] without the website, on a private PostgreSQL cluster.
pub type Stack = Topology<PrivatePostgres>;

impl Stack {
    /// Starts every process at once on `postgres` (running or not: the services wait for it)
    /// and returns without waiting for readiness (see [`Topology::all_ready`]).
    pub async fn spawn(postgres: PrivatePostgres, settings: Settings) -> Stack {
        let plan = Plan {
            website: false,
            proxy_env: settings.proxy,
            runtime_env: settings.runtime,
            start: START,
            ..Plan::new(
                postgres.url("faults_auth"),
                postgres.url("faults_runtime"),
                ADMIN_PASSWORD.to_owned(),
            )
        };
        Topology::spawn_on(postgres, plan).await
    }

    /// [`Stack::spawn`] on a running `postgres`, then waits until every `/ready` is 200.
    pub async fn start(postgres: PrivatePostgres, settings: Settings) -> Stack {
        let mut stack = Stack::spawn(postgres, settings).await;
        stack.all_ready().await;
        stack
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
