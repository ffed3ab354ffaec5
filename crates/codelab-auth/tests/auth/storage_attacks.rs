//! Attacks on what the auth service stores: a flood of login-form requests (finding 5), the
//! signing keys at rest (finding 10), and what audit rows, seeding and defaults reveal (the
//! low findings of docs/security.md). Each test starts the real service on 127.0.0.1:0 and
//! reads the stored outcome: cache entries, signing-key rows, audit rows, files on disk.

use codelab_core::service::Service as _;
use std::sync::Arc;
use std::time::Duration;

use crate::support::{ADMIN_LOGIN, ADMIN_PASSWORD, Auth, Backend, FLUTTER};
use crate::support::{INTERNAL_SECRET, Options, WEB, WEB_REDIRECT, hidden_field};
use crate::support::{location_params, param, password_form, pkce_pair, set_cookie, sqlite_file};
use codelab_auth::model::AuditRecord;
use codelab_auth::tokens::TokenType;
use codelab_auth::{BuildError, Config};
use codelab_core::cache::Cache;
use codelab_core::clock::ManualClock;
use codelab_core::config::{Environment, Secret};
use codelab_core::service::SharedDeps;
use futures_util::StreamExt;
use reqwest::StatusCode;
use serde_json::Value;

/// Two key-encryption keys, as `openssl rand -base64 32` prints them (test values only).
const KEY_A: &str = "q83vEjRWeJDx2sXo0LqHkN6sYbF2cW5zZ1VnUkB4aTQ=";
const KEY_B: &str = "8fXl1y0m7cBq3JtR2wKzNaHs5vEg9pUiLoYdTc4bQ6M=";

/// Signs in through the login page and redeems the code; returns the token answer.
async fn browser_login(auth: &Auth, username: &str, password: &str) -> Value {
    let (verifier, challenge) = pkce_pair();
    let login = [("username", username), ("password", password)];
    let (_, params) = location_params(&auth.sign_in(&challenge, &login).await);
    let (status, body) = auth
        .redeem(param(&params, "code").unwrap(), &verifier)
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body
}

// ---- finding 5: the login form stores nothing until it is submitted ----

#[tokio::test]
async fn a_flood_of_authorize_gets_stores_nothing_and_the_form_still_works() {
    let cache = Cache::memory();
    let options = Options::new(Backend::Sqlite).cache(cache.clone());
    let auth = Arc::new(Auth::start_with(options).await);
    let (_, challenge) = pkce_pair();
    let before = cache.memory_entries();

    let ok = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    futures_util::stream::iter(0..20_000)
        .for_each_concurrent(64, |_| {
            let auth = Arc::clone(&auth);
            let challenge = challenge.clone();
            let ok = Arc::clone(&ok);
            async move {
                let (status, headers, _) = auth.authorize_page(&challenge, &[]).await;
                if status == StatusCode::OK && set_cookie(&headers, "codelab_auth_csrf").is_some() {
                    ok.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            }
        })
        .await;
    assert_eq!(ok.load(std::sync::atomic::Ordering::Relaxed), 20_000);
    assert_eq!(
        cache.memory_entries(),
        before,
        "showing the login form must not store anything"
    );

    // The form still works, and its submission stores exactly one (expiring) entry.
    let tokens = browser_login(&auth, "admin", ADMIN_PASSWORD).await;
    assert!(tokens["access_token"].is_string());
    assert!(cache.memory_entries() <= before + 1);
}

#[tokio::test]
async fn login_form_tokens_are_signed_single_use_and_expire() {
    let auth = Auth::start(Backend::Sqlite).await;
    let (_, challenge) = pkce_pair();

    // A token we did not sign (cookie and field agree, as an attacker can arrange) is refused.
    let (_, _, html) = auth.authorize_page(&challenge, &[]).await;
    let forged = "AAAAAGZmZmZmZmZmZmZmZmZmZmZmZmZm.c2lnbmF0dXJlLW9mLXRoZS1hdHRhY2tlcg";
    let html_forged = html.replace(&hidden_field(&html, "csrf_token").unwrap(), forged);
    let cookie = format!("codelab_auth_csrf={forged}");
    let (status, _, body) = auth.post_login(&cookie, &html_forged, &ADMIN_LOGIN).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(body.contains("has expired"), "{body}");

    // A signed token works once; its replay is refused.
    let (_, headers, html) = auth.authorize_page(&challenge, &[]).await;
    let (status, _, body) = auth.submit_login(&headers, &html, &ADMIN_LOGIN).await;
    assert_eq!(status, StatusCode::SEE_OTHER, "{body}");
    let (status, _, body) = auth.submit_login(&headers, &html, &ADMIN_LOGIN).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "replayed: {body}");

    // A signed token past its ten minutes is refused.
    let (_, headers, html) = auth.authorize_page(&challenge, &[]).await;
    auth.clock.advance(Duration::from_secs(601));
    let (status, _, body) = auth.submit_login(&headers, &html, &ADMIN_LOGIN).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "expired: {body}");
}

// ---- finding 10: private signing keys are encrypted at rest ----

fn config_on(db_url: &str, tweak: impl FnOnce(&mut Config)) -> Config {
    let mut config = Config {
        db_url: db_url.to_owned(),
        master_key: Secret::new("a-strong-admin-password-for-tests"),
        internal_client_secret: Secret::new(INTERNAL_SECRET),
        web_redirect_uris: vec![WEB_REDIRECT.to_owned()],
        trusted_proxies: Vec::new(),
        enable_rate_limiting: Some(false),
        // Each restart listens on a new port: one issuer, so tokens outlive a restart.
        jwt_issuer: Some("https://auth.codelab.test".to_owned()),
        ..Config::default()
    };
    tweak(&mut config);
    config
}

/// Why the service refuses to start on `db_url` with `tweak`'s settings.
async fn refused(
    db_url: &str,
    environment: Environment,
    tweak: impl FnOnce(&mut Config),
) -> BuildError {
    let deps = SharedDeps::isolated(environment).with_clock(Arc::new(ManualClock::starting_now()));
    codelab_auth::AuthService::build(config_on(db_url, tweak), deps)
        .await
        .unwrap_err()
}

/// An auth service on `config`'s database, for tests that restart it on the same data.
async fn serve(config: Config, environment: Environment) -> Auth {
    Auth::start_configured(config, environment).await
}

/// A service whose internal client secret is read from, or generated into, `secret_file`.
async fn serve_with_secret_file(
    db_url: &str,
    secret_file: &std::path::Path,
    environment: Environment,
) -> Auth {
    let path = secret_file.to_owned();
    let config = config_on(db_url, move |c| {
        c.key_encryption_key = KEY_A.into();
        c.internal_client_secret = Secret::default();
        c.internal_client_secret_file = Some(path);
    });
    serve(config, environment).await
}

/// A pool reading the SQLite file itself, beside the service.
async fn open_file(db_path: &std::path::Path) -> sqlx::SqlitePool {
    sqlx::SqlitePool::connect(&format!("sqlite://{}", db_path.display()))
        .await
        .unwrap()
}

impl Auth {
    async fn password_login(&self) -> String {
        self.login("admin", "a-strong-admin-password-for-tests")
            .await
            .access
    }

    async fn userinfo_status(&self, token: &str) -> StatusCode {
        let bearer = format!("Bearer {token}");
        self.userinfo(Some(&bearer)).await.status()
    }

    async fn stored_private_keys(&self) -> Vec<String> {
        self.state
            .store
            .list_signing_keys()
            .await
            .unwrap()
            .into_iter()
            .map(|k| k.private_key_pem)
            .collect()
    }
}

/// The `private_key_pem` column of every row, read from the SQLite file itself.
async fn private_key_column(db_path: &std::path::Path) -> Vec<String> {
    let pool = open_file(db_path).await;
    let rows: Vec<(String,)> = sqlx::query_as("SELECT private_key_pem FROM signing_keys")
        .fetch_all(&pool)
        .await
        .unwrap();
    pool.close().await;
    rows.into_iter().map(|(pem,)| pem).collect()
}

fn assert_no_plaintext_key(stored: &[String]) {
    assert!(!stored.is_empty());
    for value in stored {
        assert!(
            !value.contains("PRIVATE KEY") && !value.contains("-----BEGIN"),
            "a private key is stored in plaintext: {}…",
            &value[..40.min(value.len())]
        );
        assert!(value.starts_with("codelab-sealed:v1:"), "{value:.40}");
    }
}

#[tokio::test]
async fn signing_keys_are_stored_encrypted_and_plaintext_keys_are_encrypted_on_start() {
    let (_dir, db_path, db_url) = sqlite_file();

    // Before: a key set from a version without encryption (development, no key).
    let old = serve(config_on(&db_url, |_| {}), Environment::Development).await;
    let token = old.password_login().await;
    let plaintext = old.stored_private_keys().await;
    assert!(plaintext[0].starts_with("-----BEGIN PRIVATE KEY-----"));
    drop(old);

    // Started with a key-encryption key: the stored key is encrypted in place...
    let new = serve(
        config_on(&db_url, |c| c.key_encryption_key = KEY_A.into()),
        Environment::Production,
    )
    .await;
    assert_no_plaintext_key(&private_key_column(&db_path).await);
    // ...it is the same key: tokens it signed before still verify, and new ones too.
    assert_eq!(new.userinfo_status(&token).await, StatusCode::OK);
    let fresh = new.password_login().await;
    assert_eq!(new.userinfo_status(&fresh).await, StatusCode::OK);

    // A rotation stores the new key encrypted as well.
    let encryption = codelab_auth::keys::KeyEncryption::new(KEY_A, None).unwrap();
    codelab_auth::keys::KeyManager::rotate_with(
        new.state.store.as_ref(),
        &*new.state.clock,
        Duration::from_secs(3600),
        &encryption,
    )
    .await
    .unwrap();
    let stored = private_key_column(&db_path).await;
    assert_eq!(stored.len(), 2);
    assert_no_plaintext_key(&stored);
}

#[tokio::test]
async fn a_wrong_key_encryption_key_refuses_to_start_and_the_previous_key_rotates() {
    let (_dir, db_path, db_url) = sqlite_file();
    let first = serve(
        config_on(&db_url, |c| c.key_encryption_key = KEY_A.into()),
        Environment::Staging,
    )
    .await;
    let token = first.password_login().await;
    let under_a = private_key_column(&db_path).await;
    drop(first);

    // Another key: a clear startup error naming the settings, and nothing rewritten.
    let error = refused(&db_url, Environment::Staging, |c| {
        c.key_encryption_key = KEY_B.into()
    })
    .await;
    let message = error.to_string();
    assert!(matches!(error, BuildError::Keys(_)), "{message}");
    assert!(
        message.contains("AUTH_SERVICE__KEY_ENCRYPTION_KEY_PREVIOUS"),
        "{message}"
    );
    assert!(message.contains("fingerprint"), "{message}");
    assert_eq!(private_key_column(&db_path).await, under_a);

    // Not even a key in development, when the stored keys are encrypted.
    let error = refused(&db_url, Environment::Development, |_| {}).await;
    assert!(error.to_string().contains("is stored encrypted"), "{error}");

    // Rotation of the key-encryption key: B current, A previous. The key is re-encrypted
    // under B, and tokens it signed still verify.
    let rotated = serve(
        config_on(&db_url, |c| {
            c.key_encryption_key = KEY_B.into();
            c.key_encryption_key_previous = KEY_A.into();
        }),
        Environment::Staging,
    )
    .await;
    let under_b = private_key_column(&db_path).await;
    assert_no_plaintext_key(&under_b);
    assert_ne!(under_b, under_a);
    assert_eq!(rotated.userinfo_status(&token).await, StatusCode::OK);
    drop(rotated);
    // From now on B alone opens it.
    let only_b = serve(
        config_on(&db_url, |c| c.key_encryption_key = KEY_B.into()),
        Environment::Staging,
    )
    .await;
    assert_eq!(only_b.userinfo_status(&token).await, StatusCode::OK);
}

#[tokio::test]
async fn staging_and_production_refuse_to_start_without_a_key_encryption_key() {
    for environment in [Environment::Staging, Environment::Production] {
        let (_dir, _, db_url) = sqlite_file();
        let error = refused(&db_url, environment, |_| {}).await;
        let message = error.to_string();
        assert!(matches!(error, BuildError::Keys(_)), "{message}");
        assert!(
            message.contains("AUTH_SERVICE__KEY_ENCRYPTION_KEY is required outside development"),
            "{message}"
        );
        // A key that is not 32 bytes is refused, without echoing it.
        let error = refused(&db_url, environment, |c| {
            c.key_encryption_key = "change-me".into()
        })
        .await;
        let message = error.to_string();
        assert!(message.contains("32 random bytes"), "{message}");
        assert!(!message.contains("change-me"), "{message}");
    }
}

// ---- low findings: audit rows ----

fn rows_mentioning(rows: &[AuditRecord], event_type: &str) -> Vec<AuditRecord> {
    rows.iter()
        .filter(|r| r.event.event_type == event_type)
        .cloned()
        .collect()
}

#[tokio::test]
async fn admin_api_audit_rows_name_the_acting_admin_and_the_client_ip() {
    let options = Options::new(Backend::Sqlite).tweak(|config| {
        // The test client connects from 127.0.0.1, as a proxy in front would.
        config.trusted_proxies = vec!["127.0.0.1/32".into()];
    });
    let auth = Auth::start_with(options).await;
    let admin = auth.user("admin").await;
    let token = auth.issue(
        TokenType::Access,
        &admin.id,
        WEB,
        "api:read api:write api:admin",
    );
    let response = auth
        .http
        .post(auth.url("/admin/users"))
        .bearer_auth(&token)
        .header("x-forwarded-for", "203.0.113.7")
        .header("user-agent", "console-test")
        .json(&serde_json::json!({ "username": "carol", "password": "carol-password-123" }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    let carol: Value = response.json().await.unwrap();
    let response = auth
        .http
        .post(auth.url("/admin/users/carol/disable"))
        .bearer_auth(&token)
        .header("x-forwarded-for", "203.0.113.8")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);

    let rows = auth.audit_rows().await;
    let added = rows_mentioning(&rows, "admin_user_add");
    assert_eq!(added.len(), 1, "{rows:?}");
    let added = &added[0];
    assert_eq!(
        added.event.user_id.as_deref(),
        carol["id"].as_str(),
        "the target"
    );
    let data = added.event.event_data.as_ref().unwrap();
    assert_eq!(data["actor"]["user_id"], admin.id.as_str(), "{data}");
    assert_eq!(data["actor"]["via"], "admin_api");
    assert_eq!(added.event.ip_address.as_deref(), Some("203.0.113.7"));
    assert_eq!(added.event.user_agent.as_deref(), Some("console-test"));
    let disabled = &rows_mentioning(&rows, "admin_user_disable")[0];
    assert_eq!(
        disabled.event.event_data.as_ref().unwrap()["actor"]["user_id"],
        admin.id.as_str()
    );
    assert_eq!(disabled.event.ip_address.as_deref(), Some("203.0.113.8"));

    // `codelab admin` (the library it calls) is recorded as such, without an address.
    codelab_auth::admin::set_user_enabled(auth.state.store.as_ref(), "carol", true)
        .await
        .unwrap();
    let rows = auth.audit_rows().await;
    let enabled = &rows_mentioning(&rows, "admin_user_enable")[0];
    assert_eq!(
        enabled.event.event_data.as_ref().unwrap()["actor"]["via"],
        "cli"
    );
    assert_eq!(enabled.event.ip_address, None);
}

#[tokio::test]
async fn a_failed_login_with_an_unknown_name_stores_a_keyed_hash_not_the_text() {
    let auth = Auth::start(Backend::Sqlite).await;
    // Someone typed their password into the username field, in both sign-in flows.
    let (status, _, _) = auth
        .password_grant("hunter2-secret", "whatever-1234", None)
        .await;
    assert!(status.is_client_error(), "{status}");
    let (_, challenge) = pkce_pair();
    let (_, headers, html) = auth.authorize_page(&challenge, &[]).await;
    let login = [
        ("username", "hunter2-secret"),
        ("password", "whatever-1234"),
    ];
    let (status, _, body) = auth.submit_login(&headers, &html, &login).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body.contains("Invalid username or password"));
    // A failure for a real account names the account.
    let (status, _, _) = auth
        .password_grant("ADMIN@codelab.local", "wrong-password-123", None)
        .await;
    assert!(status.is_client_error(), "{status}");

    let rows = auth.audit_rows().await;
    let text = serde_json::to_string(
        &rows
            .iter()
            .map(|r| format!("{r:?}"))
            .collect::<Vec<String>>(),
    )
    .unwrap();
    assert!(
        !text.contains("hunter2"),
        "the typed text was stored: {text}"
    );
    let failed = rows_mentioning(&rows, "login_failed");
    assert_eq!(failed.len(), 3, "{failed:?}");
    let hashes: Vec<&str> = failed
        .iter()
        .filter_map(|r| r.event.event_data.as_ref()?.get("login_hmac")?.as_str())
        .collect();
    assert_eq!(hashes.len(), 2, "{failed:?}");
    assert_eq!(hashes[0], hashes[1], "the same text gives the same hash");
    assert_eq!(hashes[0].len(), 32);
    let named: Vec<&str> = failed
        .iter()
        .filter_map(|r| r.event.event_data.as_ref()?.get("username")?.as_str())
        .collect();
    assert_eq!(named, ["admin"]);
}

// ---- low findings: seeding ----

#[tokio::test]
async fn outside_development_a_generated_internal_secret_goes_to_a_0600_file_never_stdout() {
    let (dir, _, db_url) = sqlite_file();
    let secret_file = dir.path().join("internal-client-secret");
    let service = serve_with_secret_file(&db_url, &secret_file, Environment::Production).await;
    let report = service.state.take_seed_report().unwrap();
    assert!(
        report.internal_client_secret.is_none(),
        "nothing to print outside development"
    );
    assert_eq!(
        report.internal_client_secret_file.as_deref(),
        Some(secret_file.as_path())
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&secret_file)
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let secret = std::fs::read_to_string(&secret_file).unwrap();
    let secret = secret.trim();
    assert!(secret.len() >= 32);
    // The file holds the client's real secret.
    let (status, _, _) = service.internal_grant(secret, &[]).await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn outside_development_the_internal_secret_must_be_provided() {
    let (dir, _, db_url) = sqlite_file();
    let error = refused(&db_url, Environment::Staging, |c| {
        c.key_encryption_key = KEY_A.into();
        c.internal_client_secret = Secret::default();
    })
    .await;
    let message = error.to_string();
    assert!(matches!(error, BuildError::Seed(_)), "{message}");
    assert!(
        message.contains("AUTH_SERVICE__INTERNAL_CLIENT_SECRET_FILE"),
        "{message}"
    );

    // A provided secret must not be guessable.
    let error = refused(&db_url, Environment::Staging, |c| {
        c.key_encryption_key = KEY_A.into();
        c.internal_client_secret = "short-secret".into();
    })
    .await;
    assert!(
        error
            .to_string()
            .contains("AUTH_SERVICE__INTERNAL_CLIENT_SECRET is a known placeholder"),
        "{error}"
    );

    // An existing file is the provided secret: read, never rewritten.
    let secret_file = dir.path().join("provided");
    std::fs::write(&secret_file, "a-provided-internal-secret-0123456789\n").unwrap();
    let service = serve_with_secret_file(&db_url, &secret_file, Environment::Staging).await;
    let report = service.state.take_seed_report().unwrap();
    assert!(report.internal_client_secret.is_none());
    assert!(
        report.internal_client_secret_file.is_none(),
        "nothing generated"
    );
    assert_eq!(
        std::fs::read_to_string(&secret_file).unwrap(),
        "a-provided-internal-secret-0123456789\n"
    );
}

#[tokio::test]
async fn the_default_web_redirect_uris_hold_no_localhost_outside_development() {
    for (environment, expect_localhost) in [
        (Environment::Development, true),
        (Environment::Staging, false),
        (Environment::Production, false),
    ] {
        let (_dir, _, db_url) = sqlite_file();
        let service = serve(
            config_on(&db_url, |c| {
                c.key_encryption_key = KEY_A.into();
                c.web_redirect_uris = Config::default().web_redirect_uris;
            }),
            environment,
        )
        .await;
        let web = service.client(WEB).await;
        let has_localhost = web
            .redirect_uris
            .iter()
            .any(|uri| uri.contains("localhost") || uri.contains("127.0.0.1"));
        assert_eq!(has_localhost, expect_localhost, "{environment}: {web:?}");
        // So a code cannot be sent to a local port outside development.
        let (_, challenge) = pkce_pair();
        let local = [
            ("redirect_uri", "http://localhost:8080/console/callback"),
            ("state", ""),
        ];
        let (status, _, _) = service.authorize_page(&challenge, &local).await;
        let expected = if expect_localhost {
            StatusCode::OK
        } else {
            StatusCode::BAD_REQUEST
        };
        assert_eq!(status, expected, "{environment}");
    }
}

// ---- low findings: the seeded clients' scopes ----

#[tokio::test]
async fn a_grant_without_scope_gets_the_clients_full_allowed_set() {
    let auth = Auth::start(Backend::Sqlite).await;
    auth.add_user("dora", "dora-password-123").await;
    let scope_of = |body: &Value| body["scope"].as_str().unwrap().to_owned();

    // The IDE and CLI clients: read and write, for users and administrators alike.
    for client in [FLUTTER, "codelab-cli"] {
        for (user, password) in [("dora", "dora-password-123"), ("admin", ADMIN_PASSWORD)] {
            let (status, _, body) = auth.token(&password_form(client, user, password)).await;
            assert_eq!(status, StatusCode::OK, "{body}");
            assert_eq!(scope_of(&body), "api:read api:write", "{client} {user}");
        }
    }
    // The website: read and write, plus api:admin for an administrator only.
    let body = browser_login(&auth, "dora", "dora-password-123").await;
    assert_eq!(scope_of(&body), "api:read api:write");
    let body = browser_login(&auth, "admin", ADMIN_PASSWORD).await;
    assert_eq!(scope_of(&body), "api:read api:write api:admin");
    // The internal services' client: everything it is allowed.
    let (status, _, body) = auth.internal_grant(INTERNAL_SECRET, &[]).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(scope_of(&body), "api:admin api:read api:write");
}

// ---- the website's tokens reach browser JavaScript: they live at most five minutes ----

#[tokio::test]
async fn the_website_clients_access_tokens_last_at_most_five_minutes() {
    let (_dir, db_path, db_url) = sqlite_file();
    let first = serve(config_on(&db_url, |_| {}), Environment::Development).await;
    let web = first.client(WEB).await;
    assert_eq!(web.access_token_lifetime, 300, "the default is 900");
    drop(first);

    // A row seeded by an older version with the general lifetime is shortened at start.
    let pool = open_file(&db_path).await;
    sqlx::query("UPDATE oauth_clients SET access_token_lifetime = 900 WHERE client_id = ?")
        .bind(WEB)
        .execute(&pool)
        .await
        .unwrap();
    pool.close().await;
    let again = serve(config_on(&db_url, |_| {}), Environment::Development).await;
    let web = again.client(WEB).await;
    assert_eq!(web.access_token_lifetime, 300);
    // Other clients keep the configured lifetime.
    let ide = again.client(FLUTTER).await;
    assert_eq!(ide.access_token_lifetime, 900);
}
