//! Floods of unauthenticated client authentication against the real binary (issue 14,
//! finding 1): 500 concurrent introspections (and, through `codelab up`'s public listener,
//! 500 revocations) with a wrong client secret. None is answered with a 5xx (refusals are 401
//! or 429, or 404 where the route is not public), the process's memory grows by less than
//! 100 MiB (peak RSS from /proc), and a password login from the same address during the flood
//! answers 200 within 2 s.

use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::common::cli::{Running, serve_auth};
use crate::common::processes::{codelab, free_port};
use reqwest::StatusCode;

const ADMIN_PASSWORD: &str = "flood-admin-password-1";
const INTERNAL_SECRET: &str = "flood-internal-secret-0123456789abcdef";
const FLOOD: usize = 500;
const MIB: u64 = 1024 * 1024;

/// Polls `url` until it answers 200 (bounded), failing if the process exits first.
async fn wait_until_up(url: &str, process: &mut Running) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(response) = reqwest::get(url).await
            && response.status() == StatusCode::OK
        {
            return;
        }
        process.assert_running();
        assert!(Instant::now() < deadline, "{url} did not answer 200");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap()
}

/// `a=1&b=2` of values that need no escaping (letters, digits, `-`, `_`).
fn form(pairs: &[(&str, &str)]) -> String {
    for (_, value) in pairs {
        assert!(
            value
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
            "{value:?} would need escaping"
        );
    }
    pairs
        .iter()
        .map(|(name, value)| format!("{name}={value}"))
        .collect::<Vec<_>>()
        .join("&")
}

async fn post(http: &reqwest::Client, url: &str, body: String) -> StatusCode {
    http.post(url)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body)
        .send()
        .await
        .unwrap()
        .status()
}

/// A password grant for the admin; returns its status and how long it took.
async fn timed_login(http: &reqwest::Client, base: &str) -> (StatusCode, Duration) {
    let started = Instant::now();
    let status = post(
        http,
        &format!("{base}/oauth/token"),
        form(&[
            ("grant_type", "password"),
            ("client_id", "codelab-flutter-app"),
            ("username", "admin"),
            ("password", ADMIN_PASSWORD),
        ]),
    )
    .await;
    (status, started.elapsed())
}

/// Sends `FLOOD` concurrent wrong-secret requests to `path` and, in the middle of them, one
/// admin login; returns every flood status and the login's status and duration.
async fn flood(base: &str, path: &str) -> (Vec<StatusCode>, StatusCode, Duration) {
    let http = http();
    let requests: Vec<_> = (0..FLOOD)
        .map(|i| {
            let http = http.clone();
            let url = format!("{base}{path}");
            tokio::spawn(async move {
                let body = form(&[
                    ("token", "not-a-token"),
                    ("client_id", "codelab-internal"),
                    ("client_secret", &format!("wrong-secret-{i}")),
                ]);
                post(&http, &url, body).await
            })
        })
        .collect();
    let (login, took) = timed_login(&http, base).await;
    let mut statuses = Vec::with_capacity(FLOOD);
    for request in requests {
        statuses.push(request.await.unwrap());
    }
    (statuses, login, took)
}

/// Asserts the flood's outcome and prints the measurements.
fn check(
    label: &str,
    statuses: &[StatusCode],
    allowed: &[StatusCode],
    login: (StatusCode, Duration),
    grew: u64,
) {
    let mut counts = std::collections::BTreeMap::new();
    for status in statuses {
        *counts.entry(status.as_u16()).or_insert(0) += 1;
    }
    eprintln!(
        "{label}: statuses {counts:?}, login {} in {:?}, peak RSS growth {:.1} MiB",
        login.0,
        login.1,
        grew as f64 / MIB as f64
    );
    for status in statuses {
        assert!(
            allowed.contains(status),
            "{label}: a request was answered {status} ({counts:?})"
        );
    }
    assert_eq!(login.0, StatusCode::OK, "{label}: login during the flood");
    assert!(
        login.1 < Duration::from_secs(2),
        "{label}: login took {:?} during the flood",
        login.1
    );
    assert!(
        grew < 100 * MIB,
        "{label}: memory grew by {} MiB",
        grew / MIB
    );
}

/// Floods `path` of `base`, then checks the answers, a login during the flood and how much the
/// memory of `process` grew over `baseline`.
async fn flood_and_check(
    label: &str,
    base: &str,
    path: &str,
    allowed: &[StatusCode],
    process: &Running,
    baseline: u64,
) {
    let (statuses, login, took) = flood(base, path).await;
    let grew = process.memory("VmHWM").saturating_sub(baseline);
    check(label, &statuses, allowed, (login, took), grew);
}

/// Starts `command` with no input and its output dropped.
fn spawn_quiet(mut command: std::process::Command) -> Running {
    command
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    Running::spawn(&mut command)
}

#[tokio::test]
async fn a_wrong_secret_introspection_flood_against_auth_stays_cheap() {
    let dir = tempfile::tempdir().unwrap();
    let (mut command, base) = serve_auth(dir.path());
    command
        .env("AUTH_SERVICE__MASTER_KEY", ADMIN_PASSWORD)
        .env("AUTH_SERVICE__INTERNAL_CLIENT_SECRET", INTERNAL_SECRET);
    let mut auth = spawn_quiet(command);
    wait_until_up(&format!("{base}/health"), &mut auth).await;
    // Warm up: one login and one introspection, so allocations made once are in the baseline.
    assert_eq!(timed_login(&http(), &base).await.0, StatusCode::OK);
    let right = form(&[
        ("token", "not-a-token"),
        ("client_id", "codelab-internal"),
        ("client_secret", INTERNAL_SECRET),
    ]);
    let introspect = format!("{base}/oauth/introspect");
    assert_eq!(
        post(&http(), &introspect, right.clone()).await,
        StatusCode::OK
    );
    let baseline = auth.memory("VmRSS");

    flood_and_check(
        "serve auth, introspect",
        &base,
        "/oauth/introspect",
        &[StatusCode::UNAUTHORIZED, StatusCode::TOO_MANY_REQUESTS],
        &auth,
        baseline,
    )
    .await;
    // The internal client still authenticates.
    assert_eq!(post(&http(), &introspect, right).await, StatusCode::OK);
}

#[tokio::test]
async fn wrong_secret_floods_through_the_up_public_listener_stay_cheap() {
    let dir = tempfile::tempdir().unwrap();
    let listen = format!("127.0.0.1:{}", free_port());
    let base = format!("http://{listen}");
    let command = codelab(&[
        "up",
        "--listen",
        &listen,
        "--data-dir",
        dir.path().to_str().unwrap(),
        "--ephemeral-ports",
        "--admin-password",
        ADMIN_PASSWORD,
    ]);
    let mut up = spawn_quiet(command);
    wait_until_up(&format!("{base}/auth-health"), &mut up).await;
    assert_eq!(timed_login(&http(), &base).await.0, StatusCode::OK);
    let baseline = up.memory("VmRSS");

    let refused = [StatusCode::UNAUTHORIZED, StatusCode::TOO_MANY_REQUESTS];
    for (label, path, allowed) in [
        // Introspection is for services inside the deployment and may not be routed publicly
        // at all: 404 is then the answer.
        (
            "up, introspect",
            "/oauth/introspect",
            &[refused[0], refused[1], StatusCode::NOT_FOUND][..],
        ),
        // Revocation stays public (the IDE signs out with it).
        ("up, revoke", "/oauth/revoke", &refused[..]),
    ] {
        flood_and_check(label, &base, path, allowed, &up, baseline).await;
    }
}
