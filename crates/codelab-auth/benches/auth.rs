//! Throughput and CPU cost of the auth service (docs/benchmarks.md).
//!
//! 1. On one core, sequentially: argon2id hashing and verification at our parameters, bcrypt
//!    verification at the original's cost 12 (what every login paid before the rehash), and
//!    RS256 JWT issuing and verification.
//! 2. The token endpoint over HTTP on 127.0.0.1, SQLite and PostgreSQL side by side: password
//!    grants one at a time, refresh grants (each rotating its token) one at a time and 32 in
//!    flight: grants/s, p50/p99, and the server's CPU per grant. The service runs on a
//!    multi-thread tokio runtime of its own and the load generator on a current-thread runtime
//!    on the main thread; the server's CPU is the process's user + system time over the run
//!    minus the load generator thread's (`/proc/thread-self/stat`), which is printed apart.
//!    PostgreSQL runs on `CODELAB_TEST_DATABASE_URL` (default
//!    `postgres://postgres@127.0.0.1:5432/postgres`) in a temporary database; the CPU of the
//!    backends serving that database is printed apart, and so is every `postgres` process's
//!    (which also counts the server's background writers and other programs' work on a shared
//!    server).
//!
//! Run with `cargo bench -p codelab-auth --bench auth` (`BENCH_SECONDS`, default 2: the least
//! time per measurement; `BENCH_DB_CONNECTIONS`, default the service's, its pool size).
#![allow(
    clippy::disallowed_methods,
    reason = "tests own their clock, ids and tasks"
)]

use codelab_core::service::Service as _;
use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use codelab_auth::keys::KeyManager;
use codelab_auth::passwords::{
    ARGON2_M_COST_KIB, ARGON2_P_COST, ARGON2_T_COST, hash_password_blocking,
    verify_password_blocking,
};
use codelab_auth::tokens::{TokenService, TokenType};
use codelab_core::clock::{SharedClock, SystemClock};
use codelab_core::db::{DbOptions, connect_database};
use codelab_testkit::TempPostgres;
use codelab_testkit::bench::{
    CpuShares, Latencies, SplitCpu, Table, cpu_per_unit, env_f64, machine_summary, ms, per_second,
    process_cpu, server_and_client_runtimes,
};

/// Minimum wall time per measurement (after one warm-up call), `BENCH_SECONDS`.
fn min_time() -> Duration {
    Duration::from_secs_f64(env_f64("BENCH_SECONDS", 2.0))
}
/// An integer setting from the environment, else `default`.
fn env_u32(name: &str, default: u32) -> u32 {
    std::env::var(name)
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(default)
}

/// Refresh grants in flight in the concurrent run.
const IN_FLIGHT: usize = 32;
/// Minimum iterations per measurement, for the slow password hashes.
const MIN_ITERS: u32 = 5;

struct Row {
    operation: &'static str,
    params: String,
    iters: u32,
    elapsed: Duration,
}

impl Row {
    fn new(operation: &'static str, params: &str, (iters, elapsed): (u32, Duration)) -> Self {
        let params = params.to_owned();
        Self {
            operation,
            params,
            iters,
            elapsed,
        }
    }
}

/// Calls `f` once to warm up, then repeatedly for at least [`min_time`] and [`MIN_ITERS`].
fn measure(runtime: &tokio::runtime::Runtime, mut f: impl FnMut()) -> (u32, Duration) {
    f();
    runtime.block_on(measure_async(async || f()))
}

/// Awaits `f` repeatedly (no warm-up) for at least [`min_time`] and [`MIN_ITERS`].
async fn measure_async(mut f: impl AsyncFnMut()) -> (u32, Duration) {
    let start = Instant::now();
    let min_time = min_time();
    let mut iters = 0;
    while iters < MIN_ITERS || start.elapsed() < min_time {
        f().await;
        iters += 1;
    }
    (iters, start.elapsed())
}

fn main() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a current-thread runtime always builds");
    let clock: SharedClock = Arc::new(SystemClock);
    let tokens = runtime.block_on(async {
        let pool = connect_database(
            "sqlite::memory:",
            &DbOptions {
                max_connections: 1,
                ..DbOptions::default()
            },
        )
        .await
        .expect("in-memory SQLite opens");
        let store = codelab_auth::store::open_store(pool, Arc::clone(&clock))
            .await
            .expect("migrations run on a fresh database");
        let plain = codelab_auth::keys::KeyEncryption::none();
        let keys =
            KeyManager::load_or_init_with(store, None, "bench", Arc::clone(&clock), true, plain)
                .await
                .expect("a key is generated");
        TokenService::new(
            Arc::new(keys),
            "https://auth.codelab.local",
            "codelab-api",
            30,
            clock,
        )
    });

    let argon2_params = format!("m={ARGON2_M_COST_KIB} KiB, t={ARGON2_T_COST}, p={ARGON2_P_COST}");
    let mut rows = vec![Row::new(
        "argon2id hash",
        &argon2_params,
        measure(&runtime, || {
            black_box(hash_password_blocking(black_box("correct horse battery staple")).ok());
        }),
    )];

    let argon2_hash =
        hash_password_blocking("correct horse battery staple").expect("hashing works");
    rows.push(Row::new(
        "argon2id verify",
        &argon2_params,
        measure(&runtime, || {
            let check = verify_password_blocking("correct horse battery staple", &argon2_hash);
            assert!(check.is_valid());
        }),
    ));

    let bcrypt_hash = bcrypt::hash("correct horse battery staple", 12).expect("bcrypt hashes");
    rows.push(Row::new(
        "bcrypt verify (original)",
        "cost=12",
        measure(&runtime, || {
            let check = verify_password_blocking("correct horse battery staple", &bcrypt_hash);
            assert!(check.is_valid());
        }),
    ));

    let issue = || {
        let issued = tokens.issue(
            TokenType::Access,
            "user",
            "codelab-flutter-app",
            "api:read",
            900,
        );
        issued.expect("issuing works")
    };
    rows.push(Row::new(
        "JWT issue",
        "RS256, RSA-2048",
        measure(&runtime, || {
            black_box(issue());
        }),
    ));

    let token = issue().token;
    // One runtime entry for the whole loop, so only verification is measured.
    let verify = runtime.block_on(measure_async(async || {
        let claims = tokens.verify(black_box(&token), TokenType::Access).await;
        black_box(claims.expect("the token verifies"));
    }));
    rows.push(Row::new("JWT verify", "RS256, RSA-2048", verify));

    println!();
    println!("codelab-auth on {}", machine_summary());
    println!("one core (sequential)");
    println!(
        "{:<26} {:<26} {:>12} {:>12} {:>8}",
        "operation", "parameters", "ops/s", "ms/op", "iters"
    );
    println!("{}", "-".repeat(88));
    for row in &rows {
        let secs = row.elapsed.as_secs_f64();
        let per_sec = f64::from(row.iters) / secs;
        let ms_per_op = secs * 1000.0 / f64::from(row.iters);
        println!(
            "{:<26} {:<26} {:>12.1} {:>12.3} {:>8}",
            row.operation, row.params, per_sec, ms_per_op, row.iters
        );
    }
    println!();
    grants_report();
}

/// One cell of a [`Load`] in the report.
type LoadCell = dyn Fn(&mut Load) -> String;

/// What one grant run did.
#[derive(Default)]
struct Load {
    grants: usize,
    elapsed: Duration,
    latencies: Latencies,
    /// The services', the load generator's and every PostgreSQL process's CPU.
    cpu: CpuShares,
    /// The CPU of the PostgreSQL backends serving this bench's database.
    backends_cpu: Duration,
}

/// The token endpoint of a running auth service, as a client sees it.
#[derive(Clone)]
struct Endpoint {
    client: reqwest::Client,
    url: String,
}

const PASSWORD_FORM: [(&str, &str); 4] = [
    ("grant_type", "password"),
    ("client_id", "codelab-flutter-app"),
    ("username", "bench"),
    ("password", "correct horse battery staple"),
];

/// What the load generator reads of a token response (the rest is skipped unparsed).
#[derive(serde::Deserialize)]
struct Granted {
    refresh_token: String,
}

impl Endpoint {
    /// One grant; the refresh token it returned.
    async fn grant(&self, form: &[(&str, &str)]) -> String {
        let body = form_urlencoded::Serializer::new(String::new())
            .extend_pairs(form.iter().copied())
            .finish();
        let response = self
            .client
            .post(&self.url)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body)
            .send()
            .await
            .expect("token request");
        assert!(
            response.status().is_success(),
            "grant failed: {}",
            response.status()
        );
        let body = response.bytes().await.expect("a token response body");
        let granted: Granted = serde_json::from_slice(&body).expect("a refresh token");
        granted.refresh_token
    }

    /// Rotates `refresh`: the next request uses the token this one returned.
    async fn refresh(&self, refresh: &str) -> String {
        self.grant(&[
            ("grant_type", "refresh_token"),
            ("client_id", "codelab-flutter-app"),
            ("refresh_token", refresh),
        ])
        .await
    }
}

/// The user + system CPU of the PostgreSQL backends serving `database` (their process title
/// names it: `postgres: <cluster>: <user> <database> <client> <state>`), summed. Backends that
/// exited are not counted; the pool keeps its connections open through a run.
fn backends_cpu(database: Option<&str>) -> Duration {
    let Some(database) = database else {
        return Duration::ZERO;
    };
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Duration::ZERO;
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|title| {
                let title = String::from_utf8_lossy(&title);
                title.starts_with("postgres:") && title.split_whitespace().any(|w| w == database)
            })
        })
        .filter_map(process_cpu)
        .sum()
}

/// The database named by a PostgreSQL URL (its path, without parameters).
fn database_name(url: &str) -> Option<&str> {
    let (_, path) = url.split_once("://")?.1.split_once('/')?;
    path.split('?').next().filter(|name| !name.is_empty())
}

/// Grants from one worker per refresh token for [`min_time`] (password grants when `None`), on
/// the current-thread runtime this is called from; `database` names the PostgreSQL database
/// whose backends' CPU is counted.
async fn load(endpoint: &Endpoint, tokens: Vec<Option<String>>, database: Option<&str>) -> Load {
    let backends_before = backends_cpu(database);
    let cpu = SplitCpu::start();
    let started = Instant::now();
    let deadline = started + min_time();
    let workers: Vec<_> = tokens
        .into_iter()
        .map(|mut token| {
            let endpoint = endpoint.clone();
            tokio::spawn(async move {
                let mut latencies = Latencies::default();
                while Instant::now() < deadline {
                    let one = Instant::now();
                    match &mut token {
                        Some(token) => *token = endpoint.refresh(token).await,
                        None => {
                            endpoint.grant(&PASSWORD_FORM).await;
                        }
                    }
                    latencies.push(one.elapsed());
                }
                latencies
            })
        })
        .collect();
    let mut load = Load::default();
    for worker in workers {
        let latencies = worker.await.expect("a worker");
        load.grants += latencies.len();
        load.latencies.extend(latencies);
    }
    load.elapsed = started.elapsed();
    load.cpu = cpu.stop();
    load.backends_cpu = backends_cpu(database).saturating_sub(backends_before);
    load
}

/// Starts the auth service on `db_url` on the `server` runtime; its token endpoint.
fn serve(server: &tokio::runtime::Runtime, db_url: String) -> Result<Endpoint, String> {
    use codelab_core::config::Environment;
    let defaults = codelab_auth::Config::default();
    let config = codelab_auth::Config {
        db_url,
        db_max_connections: env_u32("BENCH_DB_CONNECTIONS", defaults.db_max_connections),
        ..defaults
    };
    let url = server.block_on(async {
        let state = codelab_auth::AuthService::build(
            config,
            codelab_core::service::SharedDeps::isolated(Environment::Development),
        )
        .await
        .map_err(|e| format!("the auth service does not build: {e}"))?;
        codelab_auth::admin::add_user(
            state.store.as_ref(),
            "bench",
            "correct horse battery staple",
            None,
            false,
        )
        .await
        .map_err(|e| format!("the bench user is not created: {e}"))?;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|e| e.to_string())?;
        let url = format!(
            "http://{}/oauth/token",
            listener.local_addr().map_err(|e| e.to_string())?
        );
        let app = codelab_auth::AuthService::router(state)
            .into_make_service_with_connect_info::<std::net::SocketAddr>();
        tokio::spawn(async move { axum::serve(listener, app).await });
        Ok::<_, String>(url)
    })?;
    Ok(Endpoint {
        client: reqwest::Client::new(),
        url,
    })
}

/// Password grants, refresh grants one at a time and [`IN_FLIGHT`] at once, on `endpoint`.
async fn grant_loads(endpoint: Endpoint, database: Option<&str>) -> Vec<Load> {
    let first = endpoint.grant(&PASSWORD_FORM).await;
    let password = load(&endpoint, vec![None], database).await;
    let one = load(&endpoint, vec![Some(first)], database).await;
    let mut families = Vec::with_capacity(IN_FLIGHT);
    for _ in 0..IN_FLIGHT {
        families.push(Some(endpoint.grant(&PASSWORD_FORM).await));
    }
    let many = load(&endpoint, families, database).await;
    vec![password, one, many]
}

/// The token endpoint on SQLite and PostgreSQL side by side.
fn grants_report() {
    let (server, client) = server_and_client_runtimes();
    let dir = tempfile::tempdir().expect("temp dir");
    let postgres = TempPostgres::new("auth_bench");
    let backends = [
        (
            "sqlite",
            format!("sqlite:///{}", dir.path().join("auth.db").display()),
        ),
        ("postgres", postgres.url.clone()),
    ];
    let mut columns: Vec<(&str, Result<Vec<Load>, String>)> = Vec::new();
    for (name, db_url) in backends {
        eprintln!("measuring grants on {name} ...");
        let database = (name == "postgres")
            .then(|| database_name(&db_url))
            .flatten();
        let database = database.map(str::to_owned);
        let mut loads = serve(&server, db_url)
            .map(|endpoint| client.block_on(grant_loads(endpoint, database.as_deref())));
        if let (Ok(loads), "sqlite") = (&mut loads, name) {
            // Other programs' PostgreSQL work is no part of a SQLite grant.
            for load in loads {
                load.cpu.database = Duration::ZERO;
            }
        }
        columns.push((name, loads));
    }
    // The service's tasks end with its runtime, before the database is dropped.
    drop(server);
    drop(postgres);

    println!("token endpoint over HTTP (service on its own runtime, load generator apart)");
    let mut table = Table::new(std::iter::once("").chain(columns.iter().map(|(n, _)| *n)));
    let runs = [
        "password grant, 1 at a time",
        "refresh grant, 1 at a time",
        "refresh grant, 32 in flight",
    ];
    for (i, run) in runs.iter().enumerate() {
        let rows: [(String, &LoadCell); 6] = [
            (format!("{run}: grants/s"), &|l| {
                per_second(l.grants, l.elapsed)
            }),
            ("  p50 / p99".to_owned(), &|l| {
                format!(
                    "{} / {}",
                    ms(l.latencies.percentile(50.0)),
                    ms(l.latencies.percentile(99.0))
                )
            }),
            ("  server CPU per grant".to_owned(), &|l| {
                cpu_per_unit(l.cpu.server, l.grants)
            }),
            ("  load generator CPU per grant".to_owned(), &|l| {
                cpu_per_unit(l.cpu.client, l.grants)
            }),
            ("  PostgreSQL backends' CPU per grant".to_owned(), &|l| {
                if l.backends_cpu.is_zero() {
                    "—".to_owned()
                } else {
                    cpu_per_unit(Some(l.backends_cpu), l.grants)
                }
            }),
            (
                "  every postgres process's CPU per grant".to_owned(),
                &|l| {
                    if l.cpu.database.is_zero() {
                        "—".to_owned()
                    } else {
                        cpu_per_unit(Some(l.cpu.database), l.grants)
                    }
                },
            ),
        ];
        for (label, value) in rows {
            let cells: Vec<String> = columns
                .iter_mut()
                .map(|(_, loads)| match loads {
                    Ok(loads) => loads.get_mut(i).map_or_else(|| "n/a".to_owned(), value),
                    Err(_) => "n/a".to_owned(),
                })
                .collect();
            table.row(&label, cells);
        }
    }
    table.print();
    for (name, loads) in &columns {
        if let Err(error) = loads {
            println!("{name}: not measured: {error}");
        }
    }
    println!();
}
