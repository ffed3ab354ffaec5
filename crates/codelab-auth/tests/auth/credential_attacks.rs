//! Attacks on credentials over real HTTP (issue 14, findings 1 and 4): floods of client
//! authentication that must stay cheap and apart from user logins, the password-hashing cap,
//! and the sign-in lockout that can neither be raced, split by typing the email instead of
//! the username, nor used by a stranger to lock a user out of a known device or address.
//!
//! Counts of password verifications are read from `/metrics`, which is process-wide: nextest
//! runs each test in its own process, and under `cargo test` each test of this file runs alone
//! in a child process ([`alone_in_process`]) so none counts another's work.

use std::time::{Duration, Instant};

use crate::support::{ADMIN_PASSWORD, Auth, Backend, FLUTTER, INTERNAL, INTERNAL_SECRET, Options};
use crate::support::{WEB_REDIRECT, alone_in_process, password_form, pkce_pair, set_cookie};
use codelab_auth::model::NewClient;
use reqwest::StatusCode;
use reqwest::header::HeaderMap;

/// The value of a counter series in the auth service's `/metrics` (0 when absent).
async fn metric(auth: &Auth, series: &str) -> f64 {
    let (_, _, text) = auth.get_text("/metrics").await;
    text.lines()
        .find_map(|line| {
            line.strip_prefix(series)
                .and_then(|rest| rest.strip_prefix(' '))
                .map(|value| value.trim().parse::<f64>().unwrap())
        })
        .unwrap_or(0.0)
}

const USER_VERIFICATIONS: &str =
    "codelab_auth_password_verifications_total{kind=\"user_password\"}";

/// An introspection with the internal client's id and `secret`.
async fn introspect_with(auth: &Auth, secret: &str) -> StatusCode {
    auth.introspect_with("not-a-token", secret).await.0
}

#[tokio::test]
async fn an_argon2_client_secret_is_rewritten_to_the_fast_form_on_first_success() {
    let true = alone_in_process() else { return };
    let auth = Auth::start(Backend::Sqlite).await;
    // The seeded internal client is stored in the fast form from the start.
    let internal = auth.client(INTERNAL).await;
    assert!(
        internal
            .secret_hash
            .as_deref()
            .unwrap()
            .starts_with("$sha256$"),
        "seeded client secrets use the fast hash"
    );
    // A client created before the fast form existed: its secret hashed with argon2id.
    let legacy = codelab_auth::passwords::hash_password("legacy-client-secret-0123456789")
        .await
        .unwrap();
    auth.state
        .store
        .create_client(NewClient {
            client_id: "old-service".into(),
            secret_hash: Some(legacy.clone()),
            name: "Old service".into(),
            description: None,
            is_confidential: true,
            allowed_scopes: vec!["api:read".into()],
            allowed_grant_types: vec!["client_credentials".into()],
            redirect_uris: Vec::new(),
            access_token_lifetime: 600,
            refresh_token_lifetime: 600,
        })
        .await
        .unwrap();
    let grant = |secret: &'static str| {
        let auth = &auth;
        async move {
            auth.token(&[
                ("grant_type", "client_credentials"),
                ("client_id", "old-service"),
                ("client_secret", secret),
            ])
            .await
            .0
        }
    };
    // A wrong secret changes nothing.
    assert_eq!(grant("wrong").await, StatusCode::UNAUTHORIZED);
    let stored = auth.client("old-service").await;
    assert_eq!(stored.secret_hash.as_deref(), Some(legacy.as_str()));
    // The first success rewrites the hash; the secret keeps working, a wrong one still fails.
    assert_eq!(
        grant("legacy-client-secret-0123456789").await,
        StatusCode::OK
    );
    let stored = auth.client("old-service").await;
    let rewritten = stored.secret_hash.unwrap();
    assert!(rewritten.starts_with("$sha256$"), "{rewritten}");
    assert_eq!(
        grant("legacy-client-secret-0123456789").await,
        StatusCode::OK
    );
    assert_eq!(grant("wrong").await, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn a_flood_of_wrong_secret_introspections_is_refused_cheaply_and_logins_go_on() {
    let true = alone_in_process() else { return };
    let auth = Auth::start(Backend::Sqlite).await;
    let before = metric(&auth, USER_VERIFICATIONS).await;
    let flood: Vec<_> = (0..500)
        .map(|i| {
            auth.spawn_form(
                "/oauth/introspect",
                &[
                    ("token", "not-a-token"),
                    ("client_id", INTERNAL),
                    ("client_secret", &format!("guess-{i}")),
                ],
            )
        })
        .collect();
    // A password login from the same address during the flood.
    let started = Instant::now();
    let (status, _, body) = auth.password_grant("admin", ADMIN_PASSWORD, None).await;
    let login_took = started.elapsed();
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(
        login_took < Duration::from_secs(2),
        "login took {login_took:?} during the flood"
    );
    for request in flood {
        let status = request.await.unwrap().status();
        assert!(
            status == StatusCode::UNAUTHORIZED || status == StatusCode::TOO_MANY_REQUESTS,
            "a flood request was answered {status}"
        );
    }
    // Client authentication ran no password hash and was counted apart from logins.
    assert_eq!(metric(&auth, USER_VERIFICATIONS).await - before, 1.0);
    assert!(
        metric(
            &auth,
            "codelab_auth_client_auth_failures_total{endpoint=\"introspect\"}"
        )
        .await
            >= 500.0
    );
    assert_eq!(metric(&auth, "codelab_auth_failed_logins_total").await, 0.0);
    // The right secret still works.
    assert_eq!(
        introspect_with(&auth, INTERNAL_SECRET).await,
        StatusCode::OK
    );
}

#[tokio::test]
async fn introspection_and_revocation_are_rate_limited_per_ip_apart_from_the_token_endpoint() {
    let true = alone_in_process() else { return };
    let options = Options::new(Backend::Sqlite).tweak(|config| {
        config.enable_rate_limiting = Some(true);
        config.rate_limit_per_ip = 3;
    });
    let auth = Auth::start_with(options).await;
    for _ in 0..3 {
        assert_eq!(
            introspect_with(&auth, "wrong").await,
            StatusCode::UNAUTHORIZED
        );
    }
    assert_eq!(
        introspect_with(&auth, INTERNAL_SECRET).await,
        StatusCode::TOO_MANY_REQUESTS
    );
    // Revocation shares the bucket.
    let (status, headers, body) = auth.revoke(&[("token", "x"), ("client_id", FLUTTER)]).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
    assert_eq!(body["error"], "rate_limit_exceeded");
    let retry: u64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry));
    // The failed client authentications neither rate-limit nor lock out logins from here.
    let (status, _, body) = auth.password_grant("admin", ADMIN_PASSWORD, None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

#[tokio::test]
async fn fifty_concurrent_wrong_guesses_verify_at_most_the_threshold() {
    let true = alone_in_process() else { return };
    let auth = Auth::start(Backend::Sqlite).await;
    let threshold = auth.state.config.brute_force_threshold;
    let before = metric(&auth, USER_VERIFICATIONS).await;
    let guesses: Vec<_> = (0..50)
        .map(|i| {
            let guess = format!("guess-number-{i}");
            auth.spawn_form("/oauth/token", &password_form(FLUTTER, "admin", &guess))
        })
        .collect();
    let mut refused = 0;
    let mut wrong = 0;
    for guess in guesses {
        match guess.await.unwrap().status() {
            StatusCode::UNAUTHORIZED => wrong += 1,
            StatusCode::TOO_MANY_REQUESTS => refused += 1,
            other => panic!("a guess was answered {other}"),
        }
    }
    let verified = metric(&auth, USER_VERIFICATIONS).await - before;
    assert!(
        verified <= f64::from(threshold),
        "{verified} passwords verified for 50 concurrent guesses (threshold {threshold})"
    );
    assert!(wrong <= threshold, "{wrong} guesses were checked");
    assert_eq!(wrong + refused, 50);
    // And the right password is refused now too: the account is locked for untrusted clients.
    let (status, _, _) = auth.password_grant("admin", ADMIN_PASSWORD, None).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
}

#[tokio::test]
async fn the_username_and_the_email_of_an_account_share_one_counter() {
    let true = alone_in_process() else { return };
    let auth = Auth::start(Backend::Sqlite).await;
    // support::add_user gives alice the email alice@Example.COM.
    auth.add_user("alice", "alice-password-1").await;
    for login in [
        "alice",
        "alice@example.com",
        "ALICE",
        "Alice@Example.com",
        "alice",
    ] {
        let (status, _, body) = auth.password_grant(login, "wrong-password", None).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{login}: {body}");
    }
    for login in ["alice", "alice@example.com"] {
        let (status, _, body) = auth.password_grant(login, "alice-password-1", None).await;
        assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{login}: {body}");
    }
    // Another account is not affected.
    let (status, _, _) = auth.password_grant("admin", ADMIN_PASSWORD, None).await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn admin_signs_in_from_a_known_address_while_a_stranger_hammers_the_account() {
    let true = alone_in_process() else { return };
    let options = Options::new(Backend::Sqlite)
        .tweak(|config| config.trusted_proxies = vec!["127.0.0.1/32".into()]);
    let auth = Auth::start_with(options).await;
    let home = Some("198.51.100.10");
    let (status, _, body) = auth.password_grant("admin", ADMIN_PASSWORD, home).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // A stranger hammers the account from elsewhere until it is locked for strangers.
    let stranger = Some("203.0.113.66");
    let mut locked = false;
    for _ in 0..30 {
        let (status, _, _) = auth
            .password_grant("admin", "guess-password", stranger)
            .await;
        assert!(
            status == StatusCode::UNAUTHORIZED || status == StatusCode::TOO_MANY_REQUESTS,
            "{status}"
        );
        locked |= status == StatusCode::TOO_MANY_REQUESTS;
    }
    assert!(locked, "the stranger was never locked out");
    // A new address is refused even with the right password ...
    let (status, _, _) = auth
        .password_grant("admin", ADMIN_PASSWORD, Some("192.0.2.200"))
        .await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    // ... while the address admin signed in from before still gets in.
    let (status, _, body) = auth.password_grant("admin", ADMIN_PASSWORD, home).await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

/// A browser: its own cookies, the authorize form, and the device cookie once it has one.
struct Browser<'a> {
    auth: &'a Auth,
    device: Option<String>,
}

impl<'a> Browser<'a> {
    fn new(auth: &'a Auth, device: Option<String>) -> Self {
        Self { auth, device }
    }

    /// Opens the login form and submits `username`/`password`: (status, headers, body).
    async fn sign_in(&mut self, username: &str, password: &str) -> (StatusCode, HeaderMap, String) {
        let (_, challenge) = pkce_pair();
        let (status, headers, html) = self.auth.authorize_page(&challenge, &[]).await;
        assert_eq!(status, StatusCode::OK);
        let csrf_cookie = set_cookie(&headers, "codelab_auth_csrf").unwrap();
        let mut cookies = format!("codelab_auth_csrf={csrf_cookie}");
        if let Some(device) = &self.device {
            cookies.push_str(&format!("; codelab_device={device}"));
        }
        let login = [("username", username), ("password", password)];
        let (status, headers, body) = self.auth.post_login(&cookies, &html, &login).await;
        if let Some(device) = set_cookie(&headers, "codelab_device") {
            self.device = Some(device);
        }
        (status, headers, body)
    }
}

#[tokio::test]
async fn admin_signs_in_from_a_known_device_while_a_stranger_hammers_the_account() {
    let true = alone_in_process() else { return };
    let auth = Auth::start(Backend::Sqlite).await;
    let mut laptop = Browser::new(&auth, None);
    let (status, headers, body) = laptop.sign_in("admin", ADMIN_PASSWORD).await;
    assert_eq!(status, StatusCode::SEE_OTHER, "{body}");
    // The device cookie: HttpOnly, SameSite, scoped to the auth paths.
    let set: Vec<&str> = headers
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .filter(|v| v.starts_with("codelab_device="))
        .collect();
    assert_eq!(set.len(), 1, "{set:?}");
    assert!(set[0].contains("HttpOnly") && set[0].contains("SameSite=Strict"));
    assert!(laptop.device.is_some());

    // A stranger's browser (no device cookie) hammers the account until it is locked.
    let mut stranger = Browser::new(&auth, None);
    let mut locked = false;
    for _ in 0..8 {
        let (status, _, body) = stranger.sign_in("admin", "guess-password").await;
        assert!(
            status == StatusCode::OK || status == StatusCode::TOO_MANY_REQUESTS,
            "{status}: {body}"
        );
        locked |= status == StatusCode::TOO_MANY_REQUESTS;
    }
    assert!(locked, "the stranger was never locked out");
    assert!(stranger.device.is_none());
    // Even the right password is refused to a browser without a device cookie ...
    let mut new_browser = Browser::new(&auth, None);
    let (status, _, body) = new_browser.sign_in("admin", ADMIN_PASSWORD).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
    assert!(body.contains("Too many failed attempts"), "{body}");
    // ... and to a forged device cookie ...
    let mut forger = Browser::new(
        &auth,
        Some(laptop.device.clone().unwrap().replace('.', ".x")),
    );
    let (status, _, _) = forger.sign_in("admin", ADMIN_PASSWORD).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    // ... while the laptop that signed in before still gets in.
    let (status, headers, body) = laptop.sign_in("admin", ADMIN_PASSWORD).await;
    assert_eq!(status, StatusCode::SEE_OTHER, "{body}");
    assert!(
        headers["location"]
            .to_str()
            .unwrap()
            .starts_with(WEB_REDIRECT)
    );
}
