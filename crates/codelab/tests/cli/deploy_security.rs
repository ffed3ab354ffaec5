//! Attack tests of the deployment files and of `codelab up` (docs/security.md):
//!
//! - The per-service PostgreSQL roles of deploy/compose/postgres/init-databases.sh (the Helm
//!   chart runs an identical copy): the script itself is run with psql against the test server
//!   (throwaway database and role names), both services' migrations run as their own roles, and
//!   the agent runtime's role can neither connect to auth's database nor read its tables even
//!   when allowed to connect, while auth's role can.
//! - `codelab up` refuses staging and production and points to `codelab serve`, Compose, Helm.
//! - `codelab up`'s public listener, and nginx (deploy/nginx/nginx.conf) in front of up's real
//!   auth, gateway and website: token introspection and `/metrics` / `/ready` are not public,
//!   and a client sending the gateway's service key with `X-Codelab-User-Id` cannot act as
//!   another user (the same headers on the gateway's internal port do, which proves the key is
//!   live). A flood of introspections through the public listener leaves logins working.
//!
//! Needs the test PostgreSQL (`CODELAB_TEST_DATABASE_URL`) with the psql client, and nginx
//! (`CODELAB_TEST_NGINX`, else /usr/sbin/nginx); scripts/test provides both.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::common::cli::{get_text, send};
use crate::common::nginx::{Prefix, upstreams_conf};
use crate::common::processes::{Process, codelab, exit_within, free_port, wait_for_status};
use futures_util::future::join_all;
use serde_json::Value;
use sqlx::Connection;

/// Bound of a process's start (migrations on a cold database included; two shared cores).
const START: Duration = Duration::from_secs(60);
const ADMIN_PASSWORD: &str = "deploy-security-admin-password";

// ---------------------------------------------------------------------------------------------
// Per-service database roles
// ---------------------------------------------------------------------------------------------

/// The roles and databases the init script created under throwaway names; dropped (databases
/// first, they belong to the roles) when the test ends, passed or failed.
struct ServiceDatabases {
    server: reqwest::Url,
    auth_db: String,
    auth_role: String,
    runtime_db: String,
    runtime_role: String,
}

impl ServiceDatabases {
    fn new() -> Self {
        let suffix = codelab_core::random_hex(6);
        let server = reqwest::Url::parse(&codelab_testkit::databases::postgres_server_url())
            .expect("CODELAB_TEST_DATABASE_URL is a postgres:// URL");
        ServiceDatabases {
            server,
            auth_db: format!("codelab_sec_auth_{suffix}"),
            auth_role: format!("codelab_sec_auth_role_{suffix}"),
            runtime_db: format!("codelab_sec_runtime_{suffix}"),
            runtime_role: format!("codelab_sec_runtime_role_{suffix}"),
        }
    }

    /// psql against the test server as its (super)user, connection settings in the
    /// environment as the postgres image provides them to its init scripts.
    fn psql_env(&self, command: &mut Command) {
        command
            .env("PGHOST", self.server.host_str().unwrap_or("127.0.0.1"))
            .env("PGPORT", self.server.port().unwrap_or(5432).to_string())
            .env("POSTGRES_USER", self.superuser())
            .env(
                "POSTGRES_MAINTENANCE_DB",
                self.server.path().trim_start_matches('/'),
            );
        if let Some(password) = self.server.password() {
            command.env("PGPASSWORD", password);
        }
    }

    fn superuser(&self) -> String {
        match self.server.username() {
            "" => "postgres".to_owned(),
            user => user.to_owned(),
        }
    }

    /// Runs deploy/compose/postgres/init-databases.sh with these names and passwords.
    fn run_init_script(&self) -> String {
        let script = crate::common::repo_root().join("deploy/compose/postgres/init-databases.sh");
        let mut command = Command::new("sh");
        command.arg(&script);
        self.psql_env(&mut command);
        let output = command
            .env("AUTH_DB_NAME", &self.auth_db)
            .env("AUTH_DB_USER", &self.auth_role)
            .env("AUTH_DB_PASSWORD", "auth-role-password-1")
            .env("AGENT_RUNTIME_DB_NAME", &self.runtime_db)
            .env("AGENT_RUNTIME_DB_USER", &self.runtime_role)
            .env("AGENT_RUNTIME_DB_PASSWORD", "runtime-role-password-2")
            .output()
            .expect("sh and psql are needed (Debian: apt-get install -y postgresql-client)");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(output.status.success(), "init-databases.sh failed:\n{text}");
        text
    }

    /// A URL for `role` (with its password) to `database` on the test server.
    fn url(&self, role: &str, password: &str, database: &str) -> String {
        let mut url = self.server.clone();
        url.set_username(role).unwrap();
        url.set_password(Some(password)).unwrap();
        url.set_path(&format!("/{database}"));
        url.to_string()
    }

    fn auth_url(&self, database: &str) -> String {
        self.url(&self.auth_role, "auth-role-password-1", database)
    }

    fn runtime_url(&self, database: &str) -> String {
        self.url(&self.runtime_role, "runtime-role-password-2", database)
    }

    fn superuser_url(&self, database: &str) -> String {
        let mut url = self.server.clone();
        url.set_path(&format!("/{database}"));
        url.to_string()
    }
}

impl Drop for ServiceDatabases {
    fn drop(&mut self) {
        let mut command = Command::new("psql");
        self.psql_env(&mut command);
        let sql = format!(
            "DROP DATABASE IF EXISTS \"{}\" WITH (FORCE); DROP DATABASE IF EXISTS \"{}\" WITH (FORCE); \
             DROP ROLE IF EXISTS \"{}\"; DROP ROLE IF EXISTS \"{}\";",
            self.auth_db, self.runtime_db, self.auth_role, self.runtime_role
        );
        let _ = command
            .args(["--no-psqlrc", "--quiet", "--username"])
            .arg(self.superuser())
            .arg("--dbname")
            .arg(self.server.path().trim_start_matches('/'))
            .arg("--command")
            .arg(sql)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// Runs `command` to its end (killed after `within`): its exit status and output.
fn run_to_exit(mut command: Command, within: Duration, log: &Path) -> (ExitStatus, String) {
    let file = std::fs::File::create(log).unwrap();
    let mut child = command
        .stdin(Stdio::null())
        .stdout(file.try_clone().unwrap())
        .stderr(file)
        .spawn()
        .unwrap();
    let status = exit_within(&mut child, within).unwrap_or_else(|| {
        panic!(
            "still running after {within:?}:\n{}",
            std::fs::read_to_string(log).unwrap_or_default()
        )
    });
    (status, std::fs::read_to_string(log).unwrap_or_default())
}

/// The error of connecting with `url` and running `sql`, or `None` when it worked.
async fn query_error(url: &str, sql: &str) -> Option<String> {
    let mut connection = match sqlx::PgConnection::connect(url).await {
        Ok(connection) => connection,
        Err(error) => return Some(format!("connect: {error}")),
    };
    let result = sqlx::query(sql).fetch_all(&mut connection).await;
    let _ = connection.close().await;
    result.err().map(|error| format!("query: {error}"))
}

#[tokio::test]
async fn the_runtime_role_cannot_read_auths_tables() {
    let databases = ServiceDatabases::new();
    let first = databases.run_init_script();
    assert!(first.contains(&databases.auth_db), "{first}");
    // Idempotent: the upgrade path runs it again on a live server.
    databases.run_init_script();

    // Both services' migrations run as their own roles (as Compose's and Helm's migrate job do).
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("migrate.log");
    let mut migrate = codelab(&["migrate"]);
    migrate
        .env(
            "AUTH_SERVICE__DB_URL",
            databases.auth_url(&databases.auth_db),
        )
        .env(
            "AGENT_RUNTIME__DB_URL",
            databases.runtime_url(&databases.runtime_db),
        );
    let (status, output) = run_to_exit(migrate, START, &log);
    assert!(status.success(), "migrate failed:\n{output}");

    // Each role reads its own service's tables.
    let auth_own = databases.auth_url(&databases.auth_db);
    assert_eq!(
        query_error(&auth_own, "SELECT count(*) FROM users").await,
        None
    );
    assert_eq!(
        query_error(
            &databases.runtime_url(&databases.runtime_db),
            "SELECT count(*) FROM _sqlx_migrations"
        )
        .await,
        None
    );

    // The runtime's role cannot even connect to auth's database, nor auth's to the runtime's.
    for (url, sql, why) in [
        (
            databases.runtime_url(&databases.auth_db),
            "SELECT * FROM users",
            "the runtime's role read auth's users",
        ),
        (
            databases.auth_url(&databases.runtime_db),
            "SELECT count(*) FROM _sqlx_migrations",
            "auth's role read the runtime's database",
        ),
    ] {
        let refused = query_error(&url, sql).await.expect(why);
        assert!(
            refused.contains("permission denied for database"),
            "{refused}"
        );
    }

    // Defence in depth: allowed to connect (an operator's mistake), it still reads nothing,
    // because every table belongs to auth's role and nothing is granted to others.
    let grant = format!(
        "GRANT CONNECT ON DATABASE \"{}\" TO \"{}\"",
        databases.auth_db, databases.runtime_role
    );
    assert_eq!(
        query_error(&databases.superuser_url(&databases.auth_db), &grant).await,
        None
    );
    for table in ["users", "oauth_clients", "refresh_tokens", "signing_keys"] {
        let sql = format!("SELECT * FROM {table}");
        let refused = query_error(&databases.runtime_url(&databases.auth_db), &sql).await;
        let refused = refused.unwrap_or_else(|| panic!("the runtime's role read {table}"));
        assert!(
            refused.contains("permission denied for table") || refused.contains("does not exist"),
            "{table}: {refused}"
        );
    }
    let refused = query_error(
        &databases.runtime_url(&databases.auth_db),
        "SELECT * FROM users",
    )
    .await
    .unwrap();
    assert!(
        refused.contains("permission denied for table users"),
        "{refused}"
    );
}

// ---------------------------------------------------------------------------------------------
// `codelab up`
// ---------------------------------------------------------------------------------------------

/// Runs `codelab up` with `env` and waits (bounded) for it to exit: its status and output.
fn up_exits_with(env: &[(&str, &str)], data_dir: &Path) -> (ExitStatus, String) {
    let log = data_dir.with_extension("log");
    let listen = format!("127.0.0.1:{}", free_port());
    let command = up_command(&listen, data_dir, &[], env);
    run_to_exit(command, Duration::from_secs(30), &log)
}

/// `codelab up --listen <listen> --ephemeral-ports --data-dir <data_dir> <extra>` with `env`.
fn up_command(listen: &str, data_dir: &Path, extra: &[&str], env: &[(&str, &str)]) -> Command {
    let mut args = vec![
        "up",
        "--listen",
        listen,
        "--ephemeral-ports",
        "--data-dir",
        data_dir.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let mut command = codelab(&args);
    command.envs(env.iter().copied());
    command
}

#[test]
fn up_refuses_staging_and_production_and_points_to_serve_compose_and_helm() {
    let dir = tempfile::tempdir().unwrap();
    let cases: [&[(&str, &str)]; 4] = [
        &[("ENVIRONMENT", "staging")],
        &[("ENVIRONMENT", "production")],
        // A service's own setting wins over ENVIRONMENT, as it does for `codelab serve`.
        &[
            ("ENVIRONMENT", "development"),
            ("GATEWAY__ENVIRONMENT", "production"),
        ],
        &[("AUTH_SERVICE__ENVIRONMENT", "staging")],
    ];
    for (i, env) in cases.into_iter().enumerate() {
        let data_dir = dir.path().join(format!("data-{i}"));
        let (status, output) = up_exits_with(env, &data_dir);
        assert!(!status.success(), "{env:?}: up started:\n{output}");
        for pointer in ["codelab serve", "Compose", "Helm", "development only"] {
            assert!(
                output.contains(pointer),
                "{env:?}: no {pointer:?} in:\n{output}"
            );
        }
        assert!(!output.contains("CodeLab is up"), "{output}");
        assert!(
            !data_dir.exists(),
            "{env:?}: up created its data dir before refusing"
        );
    }
    // The development-only flags are refused with it (they were refused alone before).
    let data_dir = dir.path().join("flags");
    let mut command = codelab(&[
        "up",
        "--ephemeral-ports",
        "--no-auth",
        "--admin-password",
        "x",
        "--data-dir",
        data_dir.to_str().unwrap(),
    ]);
    command.env("ENVIRONMENT", "staging");
    let (status, output) = run_to_exit(command, Duration::from_secs(30), &dir.path().join("f.log"));
    assert!(!status.success(), "{output}");
    assert!(output.contains("codelab serve"), "{output}");
}

/// A running `codelab up` (development), its internal services' addresses from its summary.
struct Up {
    process: Process,
    url: String,
    internal: BTreeMap<String, SocketAddr>,
    data: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl Up {
    async fn start(env: &[(&str, &str)]) -> Up {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let log = dir.path().join("up.log");
        let listen = format!("127.0.0.1:{}", free_port());
        let command = up_command(&listen, &data, &["--admin-password", ADMIN_PASSWORD], env);
        let mut process = Process::spawn("codelab up", command, &log);
        let url = format!("http://{listen}");
        wait_for_status(&format!("{url}/gateway-health"), 200, &mut process, START).await;
        process.wait_for_summary(START).await;
        // "  auth             http://127.0.0.1:PORT (internal)"
        let internal = process
            .output()
            .lines()
            .filter(|line| line.ends_with("(internal)"))
            .filter_map(|line| {
                let mut words = line.split_whitespace();
                let name = words.next()?.to_owned();
                let address = words.next()?.trim_start_matches("http://").parse().ok()?;
                Some((name, address))
            })
            .collect();
        Up {
            process,
            url,
            internal,
            data,
            _dir: dir,
        }
    }

    fn internal(&self, service: &str) -> SocketAddr {
        *self
            .internal
            .get(service)
            .unwrap_or_else(|| panic!("no {service} in {:?}", self.internal))
    }
}

/// A password grant for the admin through `base`: its status and access token.
async fn admin_login(base: &str) -> (u16, Option<String>) {
    let response = crate::common::cli::admin_login(base, ADMIN_PASSWORD).await;
    let status = response.status().as_u16();
    let body: Value = response.json().await.unwrap_or(Value::Null);
    (status, body["access_token"].as_str().map(str::to_owned))
}

/// What a client of a front door (up's public listener, or nginx) must not get: introspection,
/// metrics and readiness, and acting as another user with the internal headers.
async fn assert_front_door_holds(
    front: &str,
    service_key: &str,
    victim: &str,
    victim_session: &str,
    token: &str,
) {
    let http = reqwest::Client::new();
    for path in [
        "/oauth/introspect",
        "/oauth/introspect/",
        "/oauth//introspect",
    ] {
        let response = send(
            http.post(format!("{front}{path}"))
                .header("content-type", "application/x-www-form-urlencoded")
                .body(format!(
                    "token={token}&client_id=codelab-internal&client_secret=wrong"
                )),
        )
        .await;
        assert_eq!(response.status(), 404, "{front}{path}");
    }
    for path in ["/metrics", "/ready", "/api/v1/metrics", "/oauth/metrics"] {
        let (status, body) = get_text(&format!("{front}{path}"), &[]).await;
        assert_eq!(status, 404, "{front}{path}: {body}");
        assert!(
            !body.contains("codelab_"),
            "{front}{path} serves metrics: {body}"
        );
    }

    let spoofed = [
        ("x-internal-auth", service_key),
        ("x-codelab-user-id", victim),
    ];
    // No token: the internal headers are gone, so the call is unauthenticated.
    let (status, body) = get_text(&format!("{front}/api/v1/sessions"), &spoofed).await;
    assert_eq!(
        status, 401,
        "{front}: acted as {victim} without a token: {body}"
    );
    // A token of another user: it acts as that user, never as the victim.
    let bearer = format!("Bearer {token}");
    let mut with_token = spoofed.to_vec();
    with_token.push(("authorization", bearer.as_str()));
    let (status, body) = get_text(&format!("{front}/api/v1/sessions"), &with_token).await;
    assert_eq!(status, 200, "{front}: {body}");
    assert!(
        !body.contains(victim_session),
        "{front}: saw the victim's session: {body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_cannot_use_internal_routes_or_headers_through_up_or_nginx() {
    let service_key = codelab_core::random_hex(32);
    let up = Up::start(&[("GATEWAY__SERVICE_API_KEY", service_key.as_str())]).await;
    let gateway = format!("http://{}", up.internal("gateway"));
    // Only the public listener is meant for clients: every service listens on loopback.
    assert_eq!(up.internal.len(), 5, "{:?}", up.internal);
    for (name, address) in &up.internal {
        assert!(address.ip().is_loopback(), "{name} listens on {address}");
    }

    // The attacker: a user with a token of their own (the admin here).
    let (status, attacker_token) = admin_login(&up.url).await;
    assert_eq!(status, 200);
    let attacker_token = attacker_token.unwrap();

    // The victim: another user, with a session of their own, created on the gateway's internal
    // port with the service key. That is also the control: there the key and the user header
    // do act as the victim, so what the front doors do below is what protects the victim.
    let victim = format!("victim-{}", codelab_core::random_hex(4));
    let spoofed = [
        ("x-internal-auth", service_key.as_str()),
        ("x-codelab-user-id", victim.as_str()),
    ];
    let mut create = reqwest::Client::new()
        .post(format!("{gateway}/api/v1/sessions"))
        .json(&serde_json::json!({"title": "the victim's session"}));
    for (name, value) in spoofed {
        create = create.header(name, value);
    }
    let response = create.send().await.unwrap();
    assert!(response.status().is_success(), "{}", response.status());
    let created: Value = response.json().await.unwrap();
    let victim_session = created["id"]
        .as_str()
        .or_else(|| created["session_id"].as_str())
        .unwrap_or_else(|| panic!("no session id in {created}"))
        .to_owned();
    let (status, body) = get_text(&format!("{gateway}/api/v1/sessions"), &spoofed).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains(&victim_session), "{body}");

    // Through up's public listener.
    assert_front_door_holds(
        &up.url,
        &service_key,
        &victim,
        &victim_session,
        &attacker_token,
    )
    .await;

    // Through nginx (this repository's nginx.conf) in front of up's auth, gateway and website.
    let prefix = Prefix::new(
        &upstreams_conf(
            &[up.internal("auth")],
            &[up.internal("gateway")],
            &[up.internal("website")],
        ),
        false,
    );
    let _nginx = prefix.start().await;
    assert_front_door_holds(
        &prefix.url(),
        &service_key,
        &victim,
        &victim_session,
        &attacker_token,
    )
    .await;
    // The routes a client does use still pass through nginx.
    let (status, body) = get_text(
        &format!("{}/api/v1/sessions", prefix.url()),
        &[("authorization", &format!("Bearer {attacker_token}"))],
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(admin_login(&prefix.url()).await.0, 200);
    drop(up.process);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_introspection_flood_through_up_is_refused_and_logins_still_work() {
    let up = Up::start(&[]).await;
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let flood = (0..500).map(|i| {
        let http = http.clone();
        let url = format!("{}/oauth/introspect", up.url);
        async move {
            http.post(url)
                .header("content-type", "application/x-www-form-urlencoded")
                .body(format!(
                    "token=t{i}&client_id=codelab-internal&client_secret=wrong-{i}"
                ))
                .send()
                .await
                .map(|r| r.status().as_u16())
                .unwrap_or(0)
        }
    });
    let flood = tokio::spawn(join_all(flood));
    // A password login from the same address during the flood.
    let started = Instant::now();
    let (status, _) = admin_login(&up.url).await;
    let login_time = started.elapsed();
    let statuses = flood.await.unwrap();
    assert_eq!(status, 200);
    assert!(
        login_time < Duration::from_secs(2),
        "the login took {login_time:?} during the flood"
    );
    let mut counts = BTreeMap::new();
    for status in statuses {
        *counts.entry(status).or_insert(0) += 1;
    }
    assert_eq!(counts, BTreeMap::from([(404, 500)]), "answers to the flood");
    eprintln!("login during a 500-request introspection flood through up: {login_time:?}");
    drop(up.process);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn up_encrypts_its_signing_keys_with_a_key_of_its_own() {
    let up = Up::start(&[]).await;
    let key_file = up.data.join("auth-key-encryption.key");
    let metadata = std::fs::metadata(&key_file).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(metadata.permissions().mode() & 0o777, 0o600, "{key_file:?}");
    }
    assert!(metadata.len() > 40, "{key_file:?} holds no key");
    let auth_db = format!("sqlite://{}?mode=ro", up.data.join("auth.db").display());
    let mut connection = sqlx::SqliteConnection::connect(&auth_db).await.unwrap();
    let stored: Vec<(String,)> = sqlx::query_as("SELECT private_key_pem FROM signing_keys")
        .fetch_all(&mut connection)
        .await
        .unwrap();
    assert!(!stored.is_empty());
    for (private_key,) in stored {
        assert!(
            !private_key.contains("PRIVATE KEY"),
            "a signing key is stored in plaintext"
        );
    }
    drop(up.process);
}
