//! Console logins kept in Redis (docs/reliability.md, "Console logins across restarts and
//! replicas"): two website replicas share the test Redis in front of the real auth service and
//! gateway. A login started on one replica finishes on the other and alternates between them,
//! survives a replica's restart, refreshes its tokens once when both replicas need it at the
//! same moment (the auth service revokes a login whose rotated refresh token is used twice),
//! ends by idle and by maximum age, and ends when its cookie or record is tampered with; what
//! Redis holds reveals no token. A login in progress lives only in its sealed cookie: a flood
//! of started logins stores nothing, and a callback needs its own untouched cookie and state
//! and works once. With a private Redis stopped and started again: what the console does
//! during the outage.
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use codelab_core::clock::{ManualClock, SharedClock, SystemClock};
use codelab_core::config::{Environment, Secret};
use codelab_core::service::{Service, SharedDeps};
use codelab_stack::{ServiceId, Stack};
use codelab_website::WebsiteService;
use futures_util::StreamExt;
use futures_util::future::join_all;
use reqwest::StatusCode;
use reqwest::header::{COOKIE, HeaderMap, HeaderValue};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::common::{ADMIN_PASSWORD, Browser, Page, USER_PASSWORD};

/// The site's address as browsers know it (nginx in front of the replicas). Nothing listens
/// there: the tests send each request to the replica they choose.
const PUBLIC_URL: &str = "http://127.0.0.1:1";
const SESSION_KEY: &str = "a-session-key-for-replica-tests-0123456789";
const SESSION_COOKIE: &str = "codelab_console";
const LOGIN_COOKIE: &str = "codelab_login";

/// The auth service, the gateway and the runtime (with the proxy's mock model), and the Redis
/// the replicas share.
struct System {
    auth_url: String,
    gateway_url: String,
    redis_url: String,
    prefix: String,
    _stack: Stack,
}

async fn start_system(redis_url: String) -> System {
    let stack = Stack::builder()
        .only([ServiceId::Gateway])
        .short_llm_timeouts()
        .runtime_config(|config| config.llm_model = "mock-llm".to_owned())
        .auth_config(|config| {
            config.master_key = Secret::new(ADMIN_PASSWORD);
            config.internal_client_secret = Secret::new("internal-secret-0123456789");
            config.enable_rate_limiting = Some(false);
            config.web_redirect_uris = vec![format!("{PUBLIC_URL}/console/callback")];
            config.access_token_lifetime = 300;
        })
        .start()
        .await
        .unwrap();
    let auth = Arc::clone(&stack.auth.as_ref().unwrap().state);
    codelab_auth::admin::add_user(auth.store.as_ref(), "bob", USER_PASSWORD, None, false)
        .await
        .unwrap();
    System {
        auth_url: stack.auth.as_ref().unwrap().url.clone(),
        gateway_url: stack.gateway.as_ref().unwrap().url.clone(),
        redis_url,
        prefix: format!("codelab-test:website-{}:", codelab_core::random_hex(6)),
        _stack: stack,
    }
}

/// One website replica, in this process but sharing nothing with the others but Redis.
struct Replica {
    url: String,
    state: Arc<codelab_website::AppState>,
    shutdown: CancellationToken,
    served: JoinHandle<std::io::Result<()>>,
}

/// Idle timeout and maximum age of the replicas' sessions (seconds).
const IDLE: u64 = 600;
const MAX_AGE: u64 = 1800;

async fn start_replica(system: &System, clock: SharedClock) -> Replica {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let config = codelab_website::Config {
        public_url: PUBLIC_URL.to_owned(),
        auth_url: Some(system.auth_url.clone()),
        auth_public_url: Some(system.auth_url.clone()),
        gateway_url: Some(system.gateway_url.clone()),
        gateway_public_url: Some(system.gateway_url.clone()),
        session_key: Secret::new(SESSION_KEY),
        session_idle_timeout: IDLE,
        session_max_age: MAX_AGE,
        redis_url: Some(system.redis_url.clone()),
        redis_prefix: system.prefix.clone(),
        ..codelab_website::Config::default()
    };
    let shutdown = CancellationToken::new();
    let deps = SharedDeps::isolated(Environment::Development)
        .with_clock(clock)
        .with_shutdown(shutdown.clone());
    let state = WebsiteService::build(config, deps)
        .await
        .unwrap_or_else(|e| {
            panic!(
                "the website cannot start with Redis at {}: {e}",
                system.redis_url
            )
        });
    assert!(state.sessions.cache().is_redis());
    let router = WebsiteService::router(Arc::clone(&state));
    let served = codelab_core::tasks::spawn(
        "website replica",
        codelab_core::http::serve(listener, router, shutdown.clone(), Duration::from_secs(1)),
    );
    Replica {
        url,
        state,
        shutdown,
        served,
    }
}

impl Replica {
    fn at(&self, path: &str) -> String {
        format!("{}{path}", self.url)
    }

    /// Stops it as a rollout does: its memory is gone.
    async fn stop(self) {
        self.shutdown.cancel();
        self.served.await.unwrap().unwrap();
    }
}

/// Signs in: the login starts on `start`, the auth service's form is filled in, and its
/// redirect to the site's callback reaches `finish`. Returns the page it lands on.
async fn sign_in_across(
    browser: &mut Browser,
    start: &Replica,
    finish: &Replica,
    username: &str,
    password: &str,
) -> Page {
    let started = browser.peek(&start.at("/console/login")).await;
    assert_eq!(started.status, StatusCode::SEE_OTHER, "{}", started.body);
    let form = browser.get(started.header("location")).await;
    assert!(form.body.contains("Sign in to CodeLab"), "{}", form.body);
    let answer = browser.log_in(&form, username, password).await;
    assert_eq!(answer.status, StatusCode::SEE_OTHER, "{}", answer.body);
    let callback = answer.header("location");
    assert!(callback.starts_with(PUBLIC_URL), "{callback}");
    let callback = callback.replacen(PUBLIC_URL, &finish.url, 1);
    let landed = browser.peek(&callback).await;
    assert_eq!(landed.status, StatusCode::SEE_OTHER, "{}", landed.body);
    browser.follow(landed).await
}

/// Whether `browser` is signed in on `replica`: the page answers instead of the login.
async fn signed_in_at(browser: &mut Browser, replica: &Replica, path: &str) -> bool {
    let page = browser.peek(&replica.at(path)).await;
    match page.status {
        StatusCode::OK => true,
        StatusCode::SEE_OTHER => {
            assert!(
                page.header("location").starts_with("/console/login"),
                "{}",
                page.header("location")
            );
            false
        }
        other => panic!("{path} answered {other}: {}", page.body),
    }
}

/// The session cookie's value as the browser holds it.
fn session_cookie(browser: &Browser) -> String {
    browser.cookie(SESSION_COOKIE).unwrap().to_owned()
}

fn cookie_headers(value: &str) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(
        COOKIE,
        HeaderValue::from_str(&format!("{SESSION_COOKIE}={value}")).unwrap(),
    );
    headers
}

/// A counter of the auth service's `/metrics` (0 before its first increment).
async fn auth_counter(system: &System, name: &str) -> f64 {
    let text = reqwest::get(format!("{}/metrics", system.auth_url))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .filter(|line| {
            line.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
        })
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

async fn redis_connection(url: &str) -> redis::aio::MultiplexedConnection {
    redis::Client::open(url)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

/// Every key under `prefix` and its value.
async fn redis_contents(url: &str, prefix: &str) -> Vec<(String, String)> {
    let mut redis = redis_connection(url).await;
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}*"))
        .query_async(&mut redis)
        .await
        .unwrap();
    let mut contents = Vec::new();
    for key in keys {
        let value: Option<String> = redis::cmd("GET")
            .arg(&key)
            .query_async(&mut redis)
            .await
            .unwrap();
        contents.push((key, value.unwrap_or_default()));
    }
    contents
}

/// Removes what a test left under its prefix.
async fn clean_redis(url: &str, prefix: &str) {
    let mut redis = redis_connection(url).await;
    for (key, _) in redis_contents(url, prefix).await {
        let () = redis::cmd("DEL")
            .arg(&key)
            .query_async(&mut redis)
            .await
            .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_login_alternates_between_two_replicas_and_survives_a_restart() {
    let system = start_system(codelab_testkit::databases::redis_url()).await;
    let clock: SharedClock = Arc::new(SystemClock);
    let a = start_replica(&system, clock.clone()).await;
    let b = start_replica(&system, clock.clone()).await;

    // Started on A, the callback reaches B.
    let mut browser = Browser::new();
    let landed = sign_in_across(&mut browser, &a, &b, "admin", ADMIN_PASSWORD).await;
    assert_eq!(landed.status, StatusCode::OK, "{}", landed.body);
    assert!(landed.url.starts_with(&b.url) && landed.url.ends_with("/console/status"));

    // Then every other request to each replica, pages that call the gateway included.
    for round in 0..3 {
        for replica in [&a, &b] {
            let page = browser.get(&replica.at("/console/sessions")).await;
            assert_eq!(page.status, StatusCode::OK, "round {round}: {}", page.body);
            assert!(
                page.url.ends_with("/console/sessions"),
                "signed out: {}",
                page.url
            );
        }
    }

    // A form posted to A, its message shown by B; its CSRF token is the same on both.
    let admin_page = browser.get(&a.at("/console/admin")).await;
    let csrf = admin_page.hidden("csrf_token").unwrap();
    let posted = browser
        .send(
            reqwest::Method::POST,
            &a.at("/console/admin/users"),
            Some(&[
                ("csrf_token".to_owned(), csrf.clone()),
                ("username".to_owned(), "carol".to_owned()),
                ("password".to_owned(), "carol-password-123".to_owned()),
            ]),
            &[],
        )
        .await;
    assert_eq!(posted.status, StatusCode::SEE_OTHER, "{}", posted.body);
    let shown = browser.get(&b.at("/console/admin")).await;
    assert!(
        shown.body.contains("The user was created."),
        "{}",
        shown.body
    );
    assert_eq!(shown.hidden("csrf_token").unwrap(), csrf);
    let again = browser.get(&a.at("/console/admin")).await;
    assert!(
        !again.body.contains("The user was created."),
        "a flash is shown once"
    );

    // A rollout: A stops, a fresh replica takes its place; the browser stays signed in.
    a.stop().await;
    let a2 = start_replica(&system, clock.clone()).await;
    assert!(signed_in_at(&mut browser, &a2, "/console/sessions").await);
    assert!(signed_in_at(&mut browser, &b, "/console/sessions").await);

    // Signing out on one replica signs out on both, even a copy of the old cookie.
    let mut replay = Browser::new();
    replay.cookies_from(&browser);
    let out = browser
        .post(&a2.at("/console/logout"), &[("csrf_token", &csrf)])
        .await;
    assert_eq!(out.status, StatusCode::OK);
    assert!(!signed_in_at(&mut replay, &b, "/console/status").await);
    clean_redis(&system.redis_url, &system.prefix).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_replicas_refreshing_the_same_login_at_once_rotate_its_refresh_token_once() {
    let system = start_system(codelab_testkit::databases::redis_url()).await;
    // Both replicas' time runs ahead of the auth service's, so both find the access token
    // expired at the same moment (the refresh token, on the auth service's time, is valid).
    let clock = ManualClock::starting_now();
    let a = start_replica(&system, Arc::new(clock.clone())).await;
    let b = start_replica(&system, Arc::new(clock.clone())).await;
    let mut browser = Browser::new();
    let landed = sign_in_across(&mut browser, &b, &a, "bob", USER_PASSWORD).await;
    assert_eq!(landed.status, StatusCode::OK, "{}", landed.body);

    let rotations = auth_counter(&system, "codelab_auth_refresh_rotations_total").await;
    let reuses = auth_counter(&system, "codelab_auth_refresh_reuse_total").await;
    clock.advance(Duration::from_secs(6 * 60));
    let mut requests = Vec::new();
    for i in 0..6 {
        let replica = if i % 2 == 0 { &a } else { &b };
        let mut tab = Browser::new();
        tab.cookies_from(&browser);
        let url = replica.at("/console/sessions");
        requests.push(async move { tab.get(&url).await });
    }
    for page in join_all(requests).await {
        assert_eq!(page.status, StatusCode::OK, "{}", page.body);
        assert!(
            page.url.ends_with("/console/sessions"),
            "signed out: {}",
            page.url
        );
    }
    let rotated = auth_counter(&system, "codelab_auth_refresh_rotations_total").await - rotations;
    let reused = auth_counter(&system, "codelab_auth_refresh_reuse_total").await - reuses;
    assert_eq!((rotated, reused), (1.0, 0.0), "one rotation, no reuse");

    // The login was not revoked: both replicas go on, and the next rotation (the chat's
    // token, on B) spends the refresh token A's winner stored.
    assert!(signed_in_at(&mut browser, &a, "/console/sessions").await);
    let status = browser.get(&b.at("/console/status")).await;
    let csrf = status.hidden("csrf_token").unwrap();
    let token = browser
        .send(
            reqwest::Method::POST,
            &b.at("/console/token"),
            None,
            &[("x-csrf-token", &csrf)],
        )
        .await;
    assert_eq!(token.status, StatusCode::OK, "{}", token.body);
    assert!(signed_in_at(&mut browser, &a, "/console/sessions").await);
    let reused = auth_counter(&system, "codelab_auth_refresh_reuse_total").await - reuses;
    assert_eq!(reused, 0.0);
    clean_redis(&system.redis_url, &system.prefix).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn logins_end_by_idle_time_and_by_maximum_age_on_every_replica() {
    let system = start_system(codelab_testkit::databases::redis_url()).await;
    let clock = ManualClock::starting_now();
    let a = start_replica(&system, Arc::new(clock.clone())).await;
    let b = start_replica(&system, Arc::new(clock.clone())).await;

    // Used every 500 s (under the 600 s idle timeout) on alternate replicas: alive; then left
    // alone 601 s: signed out.
    let mut idle = Browser::new();
    sign_in_across(&mut idle, &a, &b, "bob", USER_PASSWORD).await;
    for replica in [&a, &b] {
        clock.advance(Duration::from_secs(500));
        assert!(signed_in_at(&mut idle, replica, "/console/status").await);
    }
    clock.advance(Duration::from_secs(IDLE + 1));
    assert!(
        !signed_in_at(&mut idle, &a, "/console/status").await,
        "idle"
    );

    // Used often, but older than the 1800 s maximum age: signed out.
    let mut old = Browser::new();
    sign_in_across(&mut old, &b, &a, "bob", USER_PASSWORD).await;
    for (round, replica) in [&a, &b, &a].into_iter().enumerate() {
        clock.advance(Duration::from_secs(500));
        assert!(
            signed_in_at(&mut old, replica, "/console/status").await,
            "round {round}"
        );
    }
    clock.advance(Duration::from_secs(MAX_AGE - 1500 + 1));
    assert!(
        !signed_in_at(&mut old, &b, "/console/status").await,
        "too old"
    );
    clean_redis(&system.redis_url, &system.prefix).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_holds_no_token_and_a_tampered_cookie_or_record_signs_out() {
    let system = start_system(codelab_testkit::databases::redis_url()).await;
    let clock = ManualClock::starting_now();
    let a = start_replica(&system, Arc::new(clock.clone())).await;
    let b = start_replica(&system, Arc::new(clock.clone())).await;
    let mut alice = Browser::new();
    sign_in_across(&mut alice, &a, &b, "admin", ADMIN_PASSWORD).await;
    let mut bob = Browser::new();
    sign_in_across(&mut bob, &b, &a, "bob", USER_PASSWORD).await;
    // One refresh, so the stored tokens are rotated ones too.
    clock.advance(Duration::from_secs(6 * 60));
    assert!(signed_in_at(&mut alice, &a, "/console/sessions").await);
    assert!(signed_in_at(&mut bob, &b, "/console/sessions").await);

    // What Redis holds names no session id and contains no token, CSRF token or username.
    let mut secrets = Vec::new();
    for browser in [&alice, &bob] {
        let cookie = session_cookie(browser);
        let session = a
            .state
            .sessions
            .lookup(&cookie_headers(&cookie))
            .await
            .unwrap();
        let tokens = session.tokens();
        secrets.push(cookie.split('.').next().unwrap().to_owned());
        secrets.push(tokens.access.expose().to_owned());
        secrets.push(tokens.refresh.unwrap().expose().to_owned());
        secrets.push(session.csrf.clone());
    }
    secrets.push("\"admin\"".to_owned());
    secrets.push("\"bob\"".to_owned());
    let contents = redis_contents(&system.redis_url, &system.prefix).await;
    let sessions: Vec<&(String, String)> = contents
        .iter()
        .filter(|(key, _)| key.starts_with(&format!("{}session:", system.prefix)))
        .collect();
    assert_eq!(sessions.len(), 2, "{contents:?}");
    for (key, value) in &contents {
        for secret in &secrets {
            assert!(!key.contains(secret.as_str()), "{key} names a secret");
            assert!(
                !value.contains(secret.as_str()),
                "{key} holds a secret in clear"
            );
        }
    }

    // A cookie whose signature is altered, or an id without one: signed out.
    let cookie = session_cookie(&alice);
    let (id, signature) = cookie.rsplit_once('.').unwrap();
    let flipped = if signature.starts_with('A') { "B" } else { "A" };
    for forged in [
        format!("{id}.{flipped}{}", &signature[1..]),
        id.to_owned(),
        format!("{id}x.{signature}"),
    ] {
        let mut forger = Browser::new();
        let page = forger
            .send(
                reqwest::Method::GET,
                &b.at("/console/status"),
                None,
                &[("cookie", &format!("{SESSION_COOKIE}={forged}"))],
            )
            .await;
        assert_eq!(page.status, StatusCode::SEE_OTHER, "{forged}");
    }

    // One login's record moved under the other's name does not open there (that browser is
    // signed out, not signed in as the other user); one altered character in the first
    // record: its browser is signed out too.
    let mut redis = redis_connection(&system.redis_url).await;
    let (first_key, first_value) = sessions[0].clone();
    let (second_key, _) = sessions[1].clone();
    let () = redis::cmd("SET")
        .arg(&second_key)
        .arg(&first_value)
        .arg("KEEPTTL")
        .query_async(&mut redis)
        .await
        .unwrap();
    let mut altered = first_value.into_bytes();
    let middle = altered.len() / 2;
    altered[middle] = if altered[middle] == b'A' { b'B' } else { b'A' };
    let () = redis::cmd("SET")
        .arg(&first_key)
        .arg(String::from_utf8(altered).unwrap())
        .arg("KEEPTTL")
        .query_async(&mut redis)
        .await
        .unwrap();
    assert!(!signed_in_at(&mut alice, &a, "/console/status").await);
    assert!(!signed_in_at(&mut bob, &a, "/console/status").await);
    clean_redis(&system.redis_url, &system.prefix).await;
}

/// The cookies `page` sets, as `name=value` (the attributes left out).
fn set_cookies(page: &Page) -> Vec<String> {
    page.headers
        .get_all("set-cookie")
        .iter()
        .map(|value| {
            value
                .to_str()
                .unwrap()
                .split(';')
                .next()
                .unwrap()
                .to_owned()
        })
        .collect()
}

/// A callback sent by a browser holding only `login_cookie` (a fresh one: no session).
async fn callback_with(url: &str, login_cookie: &str) -> Page {
    Browser::new()
        .send(
            reqwest::Method::GET,
            url,
            None,
            &[("cookie", &format!("{LOGIN_COOKIE}={login_cookie}"))],
        )
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_flood_of_started_logins_stores_nothing_and_a_callback_needs_its_own_sealed_cookie() {
    let system = start_system(codelab_testkit::databases::redis_url()).await;
    let clock: SharedClock = Arc::new(SystemClock);
    let a = start_replica(&system, clock.clone()).await;
    let b = start_replica(&system, clock.clone()).await;

    // A flood of anonymous logins that never finish (the cookies thrown away): 20,000
    // started through replica A's store and 500 through its HTTP route. Nothing is stored,
    // so nothing fills up and no cap locks anyone out.
    for _ in 0..20_000 {
        a.state.sessions.start_login("/console/status").unwrap();
    }
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let login_url = a.at("/console/login");
    let statuses: Vec<StatusCode> = futures_util::stream::iter(0..500)
        .map(|_| {
            let request = http.get(&login_url).send();
            async move { request.await.unwrap().status() }
        })
        .buffer_unordered(16)
        .collect()
        .await;
    assert!(
        statuses.iter().all(|s| *s == StatusCode::SEE_OTHER),
        "{statuses:?}"
    );
    let stored = redis_contents(&system.redis_url, &system.prefix).await;
    assert!(stored.is_empty(), "started logins stored {stored:?}");

    // A real user's login, started on A: the callback is held back for the checks below.
    let mut browser = Browser::new();
    let started = browser.peek(&a.at("/console/login")).await;
    assert_eq!(started.status, StatusCode::SEE_OTHER, "{}", started.body);
    let login_cookie = browser.cookie(LOGIN_COOKIE).unwrap().to_owned();
    let form = browser.get(started.header("location")).await;
    let answer = browser.log_in(&form, "bob", USER_PASSWORD).await;
    assert_eq!(answer.status, StatusCode::SEE_OTHER, "{}", answer.body);
    let callback = answer.header("location").replacen(PUBLIC_URL, &b.url, 1);
    let state = reqwest::Url::parse(&callback)
        .unwrap()
        .query_pairs()
        .find(|(name, _)| name == "state")
        .unwrap()
        .1
        .into_owned();

    // Refused before the code is spent (each answers 400 and sets no session): the state of
    // another login, an altered cookie, no cookie, and a session cookie in its place.
    let (_, other_cookie) = sign_in_elsewhere(&a).await;
    // The last character changed to one it is not (a fixed "x" would leave one state in 64
    // unchanged and let the genuine callback through).
    let last = if state.ends_with('x') { 'y' } else { 'x' };
    let wrong_state = callback.replacen(
        &format!("state={state}"),
        &format!("state={}{last}", &state[..state.len() - 1]),
        1,
    );
    let mut altered = login_cookie.clone().into_bytes();
    let middle = altered.len() / 2;
    altered[middle] = if altered[middle] == b'A' { b'B' } else { b'A' };
    let altered = String::from_utf8(altered).unwrap();
    for (what, url, cookie) in [
        ("another state", &wrong_state, login_cookie.as_str()),
        ("an altered cookie", &callback, altered.as_str()),
        ("no login cookie", &callback, ""),
        ("a session cookie", &callback, other_cookie.as_str()),
    ] {
        let refused = callback_with(url, cookie).await;
        assert_eq!(
            refused.status,
            StatusCode::BAD_REQUEST,
            "{what}: {}",
            refused.body
        );
        assert!(
            refused.body.contains("not started in this browser"),
            "{what}: {}",
            refused.body
        );
        assert!(
            !set_cookies(&refused)
                .iter()
                .any(|c| c.starts_with(SESSION_COOKIE)),
            "{what}"
        );
    }

    // The genuine callback, on B: signed in, the login cookie cleared.
    let landed = browser.peek(&callback).await;
    assert_eq!(landed.status, StatusCode::SEE_OTHER, "{}", landed.body);
    assert_eq!(landed.header("location"), "/console/status");
    assert!(browser.cookie(LOGIN_COOKIE).is_none());
    assert!(signed_in_at(&mut browser, &a, "/console/sessions").await);

    // Replayed (the same callback with a copy of the login cookie) on A: the cookie still
    // opens, but the auth service spends a code once, so no second session is made and the
    // first goes on.
    let replayed = callback_with(&callback, &login_cookie).await;
    assert_eq!(
        replayed.status,
        StatusCode::BAD_REQUEST,
        "{}",
        replayed.body
    );
    assert!(
        replayed
            .body
            .contains("The auth service refused the sign-in"),
        "{}",
        replayed.body
    );
    assert!(
        !set_cookies(&replayed)
            .iter()
            .any(|c| c.starts_with(SESSION_COOKIE))
    );
    assert!(signed_in_at(&mut browser, &b, "/console/sessions").await);
    let sessions = redis_contents(&system.redis_url, &system.prefix)
        .await
        .into_iter()
        .filter(|(key, _)| key.starts_with(&format!("{}session:", system.prefix)))
        .count();
    assert_eq!(sessions, 2, "bob's login and the other one, no more");
    clean_redis(&system.redis_url, &system.prefix).await;
}

/// Another user signed in on `replica`: its browser and its session cookie's value.
async fn sign_in_elsewhere(replica: &Replica) -> (Browser, String) {
    let mut browser = Browser::new();
    let landed = sign_in_across(&mut browser, replica, replica, "admin", ADMIN_PASSWORD).await;
    assert_eq!(landed.status, StatusCode::OK, "{}", landed.body);
    let cookie = session_cookie(&browser);
    (browser, cookie)
}

/// A private `redis-server` on a loopback port, without persistence, that the test stops and
/// starts again (`CODELAB_TEST_REDIS_SERVER`, else the one on the PATH).
struct PrivateRedis {
    port: u16,
    process: Option<Child>,
}

impl PrivateRedis {
    async fn start() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut redis = Self {
            port,
            process: None,
        };
        redis.resume().await;
        redis
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    async fn resume(&mut self) {
        let binary =
            std::env::var("CODELAB_TEST_REDIS_SERVER").unwrap_or_else(|_| "redis-server".into());
        let process = Command::new(&binary)
            .args(["--bind", "127.0.0.1", "--port", &self.port.to_string()])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start {binary} ({e}): install redis-server or set CODELAB_TEST_REDIS_SERVER")
            });
        self.process = Some(process);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let client = redis::Client::open(self.url()).unwrap();
            if let Ok(mut connection) = client.get_multiplexed_async_connection().await
                && redis::cmd("PING")
                    .query_async::<String>(&mut connection)
                    .await
                    .is_ok()
            {
                return;
            }
            assert!(Instant::now() < deadline, "redis-server did not come up");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn stop(&mut self) {
        if let Some(mut process) = self.process.take() {
            process.kill().unwrap();
            process.wait().unwrap();
        }
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.stop();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn with_redis_down_logins_go_on_per_replica_and_are_shared_again_when_it_returns() {
    let mut redis = PrivateRedis::start().await;
    let system = start_system(redis.url()).await;
    let clock: SharedClock = Arc::new(SystemClock);
    let a = start_replica(&system, clock.clone()).await;
    let b = start_replica(&system, clock.clone()).await;
    let mut before = Browser::new();
    sign_in_across(&mut before, &a, &b, "bob", USER_PASSWORD).await;
    assert!(signed_in_at(&mut before, &a, "/console/status").await);

    // Redis stops (it keeps nothing on disk): the login kept there is gone, so its browser is
    // asked to sign in again, on either replica. The docs and the console's pages still answer.
    redis.stop();
    assert!(!signed_in_at(&mut before, &a, "/console/status").await);
    assert!(!signed_in_at(&mut before, &b, "/console/status").await);
    assert_eq!(
        before.get(&b.at("/docs")).await.status,
        StatusCode::OK,
        "the docs are served"
    );
    assert!(a.state.sessions.cache().is_degraded());

    // A login still starts on one replica and finishes on the other (the login in progress
    // is in its cookie), but the session lives in the memory of the replica that finished it:
    // it works there and only there.
    let mut during = Browser::new();
    let landed = sign_in_across(&mut during, &b, &a, "bob", USER_PASSWORD).await;
    assert_eq!(landed.status, StatusCode::OK, "{}", landed.body);
    assert!(signed_in_at(&mut during, &a, "/console/sessions").await);
    assert!(!signed_in_at(&mut during, &b, "/console/status").await);

    // Redis returns: the replica still finds the login it kept in memory, new logins are
    // shared again.
    redis.resume().await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let a_back = a.state.sessions.cache().ping().await.is_ok();
        let b_back = b.state.sessions.cache().ping().await.is_ok();
        if a_back && b_back {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the replicas did not return to Redis"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(signed_in_at(&mut during, &a, "/console/status").await);
    let mut after = Browser::new();
    sign_in_across(&mut after, &b, &a, "bob", USER_PASSWORD).await;
    assert!(signed_in_at(&mut after, &b, "/console/status").await);

    // The login made during the outage does not survive a restart of its replica.
    a.stop().await;
    let a2 = start_replica(&system, clock.clone()).await;
    assert!(!signed_in_at(&mut during, &a2, "/console/status").await);
    assert!(signed_in_at(&mut after, &a2, "/console/status").await);
}
