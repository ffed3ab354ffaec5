//! Throughput of the auth service's crypto on one core, side by side:
//! argon2id hashing and verification at our parameters, bcrypt verification at the original's
//! cost 12 (what every login paid before the rehash), and RS256 JWT issuing and verification.
//!
//! Run with `cargo bench -p codelab-auth --bench auth`. Everything runs sequentially on one
//! thread, so the numbers are per core.

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

/// Calls `f` once to warm up, then repeatedly for at least [`MIN_TIME`] and [`MIN_ITERS`].
fn measure(mut f: impl FnMut()) -> (u32, Duration) {
    f();
    let start = Instant::now();
    let mut iters = 0;
    while iters < MIN_ITERS || start.elapsed() < MIN_TIME {
        f();
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
        let store = codelab_auth::store::open_store(pool)
            .await
            .expect("migrations run on a fresh database");
        let keys = KeyManager::load_or_init(store, None, "bench", Arc::clone(&clock), true)
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

    let mut rows = Vec::new();
    let argon2_params = format!("m={ARGON2_M_COST_KIB} KiB, t={ARGON2_T_COST}, p={ARGON2_P_COST}");

    let (iters, elapsed) = measure(|| {
        black_box(hash_password_blocking(black_box("correct horse battery staple")).ok());
    });
    rows.push(Row {
        operation: "argon2id hash",
        params: argon2_params.clone(),
        iters,
        elapsed,
    });

    let argon2_hash =
        hash_password_blocking("correct horse battery staple").expect("hashing works");
    let (iters, elapsed) = measure(|| {
        let check = verify_password_blocking("correct horse battery staple", &argon2_hash);
        assert!(check.is_valid());
    });
    rows.push(Row {
        operation: "argon2id verify",
        params: argon2_params,
        iters,
        elapsed,
    });

    let bcrypt_hash = bcrypt::hash("correct horse battery staple", 12).expect("bcrypt hashes");
    let (iters, elapsed) = measure(|| {
        let check = verify_password_blocking("correct horse battery staple", &bcrypt_hash);
        assert!(check.is_valid());
    });
    rows.push(Row {
        operation: "bcrypt verify (original)",
        params: "cost=12".into(),
        iters,
        elapsed,
    });

    let (iters, elapsed) = measure(|| {
        black_box(
            tokens
                .issue(
                    TokenType::Access,
                    "user",
                    "codelab-flutter-app",
                    "api:read",
                    900,
                )
                .expect("issuing works"),
        );
    });
    rows.push(Row {
        operation: "JWT issue",
        params: "RS256, RSA-2048".into(),
        iters,
        elapsed,
    });

    let token = tokens
        .issue(
            TokenType::Access,
            "user",
            "codelab-flutter-app",
            "api:read",
            900,
        )
        .expect("issuing works")
        .token;
    let (iters, elapsed) = runtime.block_on(async {
        // One runtime entry for the whole loop, so only verification is measured.
        let start = Instant::now();
        let mut iters = 0;
        while iters < MIN_ITERS || start.elapsed() < MIN_TIME {
            let claims = tokens.verify(black_box(&token), TokenType::Access).await;
            black_box(claims.expect("the token verifies"));
            iters += 1;
        }
        (iters, start.elapsed())
    });
    rows.push(Row {
        operation: "JWT verify",
        params: "RS256, RSA-2048".into(),
        iters,
        elapsed,
    });

    println!();
    println!("codelab-auth crypto, one core (sequential)");
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
