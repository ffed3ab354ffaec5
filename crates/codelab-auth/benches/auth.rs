//! Throughput of the auth service on one core, side by side: the password and refresh grants
//! end to end over HTTP (SQLite store), argon2id hashing and verification at our parameters,
//! bcrypt verification at the original's cost 12 (what every login paid before the rehash), and
//! RS256 JWT issuing and verification.
//!
//! Run with `cargo bench -p codelab-auth --bench auth`. Everything runs sequentially on one
//! thread, so the numbers are per core.
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

/// Minimum wall time per measurement (after one warm-up call).
const MIN_TIME: Duration = Duration::from_secs(2);
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

/// Calls `f` once to warm up, then repeatedly for at least [`MIN_TIME`] and [`MIN_ITERS`].
fn measure(runtime: &tokio::runtime::Runtime, mut f: impl FnMut()) -> (u32, Duration) {
    f();
    runtime.block_on(measure_async(async || f()))
}

/// Awaits `f` repeatedly (no warm-up) for at least [`MIN_TIME`] and [`MIN_ITERS`].
async fn measure_async(mut f: impl AsyncFnMut()) -> (u32, Duration) {
    let start = Instant::now();
    let mut iters = 0;
    while iters < MIN_ITERS || start.elapsed() < MIN_TIME {
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

    rows.extend(runtime.block_on(grants_over_http()));

    println!();
    println!("codelab-auth, one core (sequential)");
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
}

/// The token endpoint as a client sees it: one request at a time against the real router on
/// 127.0.0.1 (client and server share this one thread, so this is per core).
async fn grants_over_http() -> Vec<Row> {
    use codelab_core::config::Environment;
    let dir = tempfile::tempdir().expect("temp dir");
    let config = codelab_auth::Config {
        db_url: format!("sqlite:///{}", dir.path().join("auth.db").display()),
        ..codelab_auth::Config::default()
    };
    let state = codelab_auth::AuthService::build(
        config,
        codelab_core::service::SharedDeps::isolated(Environment::Development),
    )
    .await
    .expect("the auth service builds");
    codelab_auth::admin::add_user(
        state.store.as_ref(),
        "bench",
        "correct horse battery staple",
        None,
        false,
    )
    .await
    .expect("the bench user is created");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!(
        "http://{}/oauth/token",
        listener.local_addr().expect("addr")
    );
    let app = codelab_auth::AuthService::router(state)
        .into_make_service_with_connect_info::<std::net::SocketAddr>();
    tokio::spawn(async move { axum::serve(listener, app).await });
    let client = reqwest::Client::new();
    let password_form = [
        ("grant_type", "password"),
        ("client_id", "codelab-flutter-app"),
        ("username", "bench"),
        ("password", "correct horse battery staple"),
    ];
    let grant = |form: Vec<(&'static str, String)>| {
        let client = client.clone();
        let url = url.clone();
        async move {
            let response = client
                .post(&url)
                .header("content-type", "application/x-www-form-urlencoded")
                .body(
                    form_urlencoded::Serializer::new(String::new())
                        .extend_pairs(form.iter().map(|(k, v)| (*k, v.as_str())))
                        .finish(),
                )
                .send()
                .await
                .expect("token request");
            assert!(
                response.status().is_success(),
                "grant failed: {}",
                response.status()
            );
            let body: serde_json::Value = response.json().await.expect("json");
            body["refresh_token"]
                .as_str()
                .expect("a refresh token")
                .to_owned()
        }
    };
    let owned = |form: &[(&'static str, &str)]| {
        form.iter()
            .map(|(k, v)| (*k, (*v).to_owned()))
            .collect::<Vec<_>>()
    };

    let mut refresh = grant(owned(&password_form)).await;
    let password = measure_async(async || {
        refresh = grant(owned(&password_form)).await;
    })
    .await;
    // Each refresh rotates: the next request uses the token this one returned.
    let rotate = measure_async(async || {
        refresh = grant(vec![
            ("grant_type", "refresh_token".to_owned()),
            ("client_id", "codelab-flutter-app".to_owned()),
            ("refresh_token", refresh.clone()),
        ])
        .await;
    })
    .await;
    vec![
        Row::new(
            "password grant (HTTP)",
            "argon2id + RS256, SQLite",
            password,
        ),
        Row::new("refresh grant (HTTP)", "rotate + RS256, SQLite", rotate),
    ]
}
