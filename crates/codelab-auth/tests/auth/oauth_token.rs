//! `POST /oauth/token` over real HTTP: every grant's success and failure answers (RFC 6749 and
//! the original's wire format the Flutter IDE maps), refresh rotation, the concurrent refresh
//! race and reuse detection, on SQLite and on PostgreSQL.

use codelab_core::service::Service as _;
use std::sync::Arc;
use std::time::Duration;

use crate::support::{ADMIN_PASSWORD, Auth, Backend, FLUTTER, INTERNAL, INTERNAL_SECRET};
use crate::support::{parts, password_form, sqlite_file, tokens_of};
use base64::Engine;
use reqwest::StatusCode;
use serde_json::Value;

/// Turns each `async fn(Backend)` into a `sqlite` and a `postgres` test.
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $name() { super::$name(super::Backend::Sqlite).await; })*
        }
        mod postgres {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $name() { super::$name(super::Backend::Postgres).await; })*
        }
    };
}

on_both_backends!(
    password_grant_answers_the_original_shape,
    password_grant_failures_are_generic_401_and_audited_without_the_password,
    refresh_rotates_and_reuse_revokes_only_that_family,
    concurrent_refreshes_with_one_token_let_exactly_one_through,
    client_credentials_for_confidential_clients_only,
);

fn basic(id: &str, secret: &str) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{id}:{secret}"))
    )
}

async fn password_grant_answers_the_original_shape(backend: Backend) {
    let auth = Auth::start(backend).await;
    let form = |username: &'static str, scope: &'static str| {
        [
            &password_form(FLUTTER, username, ADMIN_PASSWORD)[..],
            &[("scope", scope)],
        ]
        .concat()
    };
    let (status, headers, body) = auth.token(&form("admin", "")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(headers["cache-control"], "no-store");
    assert_eq!(headers["pragma"], "no-cache");
    let keys: Vec<&str> = body
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        keys.len(),
        5,
        "exactly access_token, refresh_token, token_type, expires_in, scope: {body}"
    );
    assert_eq!(body["token_type"], "bearer");
    assert_eq!(body["expires_in"], 900);
    // Default scope: the client's allowed scopes (no api:admin on the Flutter client).
    assert_eq!(body["scope"], "api:read api:write");
    assert!(body["access_token"].as_str().unwrap().split('.').count() == 3);
    assert!(body["refresh_token"].is_string());

    // Requested scopes are de-duplicated and sorted.
    let (status, _, body) = auth
        .token(&form("ADMIN@codelab.local", "api:write api:read api:write"))
        .await;
    assert_eq!(
        status,
        StatusCode::OK,
        "login by case-insensitive email: {body}"
    );
    assert_eq!(body["scope"], "api:read api:write");
    // A scope the client does not have: 400 invalid_scope.
    let (status, _, body) = auth.token(&form("admin", "api:admin")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"], "invalid_scope");
}

async fn password_grant_failures_are_generic_401_and_audited_without_the_password(
    backend: Backend,
) {
    let auth = Auth::start(backend).await;
    auth.add_user("alice", "alice-password-1").await;
    for (username, password) in [("alice", "wrong-password-9"), ("nobody", "whatever-123")] {
        let (status, headers, body) = auth.password_grant(username, password, None).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert_eq!(
            body,
            serde_json::json!({"error": "invalid_grant", "error_description": "Invalid username or password"})
        );
        assert!(headers.get("www-authenticate").is_none());
    }
    // A disabled user cannot log in with the right password either.
    auth.state
        .store
        .set_user_active("alice", false)
        .await
        .unwrap();
    let (status, _, _) = auth.password_grant("alice", "alice-password-1", None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    let rows = auth.audit_rows().await;
    let failed: Vec<_> = rows
        .iter()
        .filter(|r| r.event.event_type == "login_failed")
        .collect();
    assert_eq!(failed.len(), 3);
    // A name that matches no account is stored only as a keyed hash (it may be a password
    // typed into the wrong field): see storage_attacks.rs.
    assert!(
        failed
            .iter()
            .any(|r| r.event.event_data.as_ref().unwrap()["login_hmac"].is_string())
    );
    assert!(!serde_json::to_string(&rows).unwrap().contains("nobody"));
    assert!(
        failed
            .iter()
            .all(|r| r.event.ip_address.as_deref() == Some("127.0.0.1"))
    );
    let text = serde_json::to_string(&rows).unwrap();
    assert!(!text.contains("wrong-password-9") && !text.contains("whatever-123"));
    assert!(!text.contains("alice-password-1"));
}

async fn refresh_rotates_and_reuse_revokes_only_that_family(backend: Backend) {
    let auth = Auth::start(backend).await;
    let first = auth.login("admin", ADMIN_PASSWORD).await;
    let other_session = auth.login("admin", ADMIN_PASSWORD).await;

    let old = first.refresh.unwrap();
    let (status, body) = auth.refresh(&old).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["token_type"], "bearer");
    assert_eq!(body["scope"], "api:read api:write");
    let rotated = tokens_of(body).refresh.unwrap();
    assert_ne!(rotated, old);

    // The old token comes back: reuse. The whole family (including the rotated token) dies.
    let (status, body) = auth.refresh(&old).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(body["error"], "invalid_grant");
    assert_eq!(
        body["error_description"],
        "Refresh token has been revoked (reuse detected)"
    );
    let (status, _) = auth.refresh(&rotated).await;
    assert_eq!(
        status,
        StatusCode::UNAUTHORIZED,
        "the rotated token belongs to the family"
    );
    // The other login is another family and still works.
    let (status, body) = auth
        .refresh(other_session.refresh.as_deref().unwrap())
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let events: Vec<String> = auth
        .audit_rows()
        .await
        .into_iter()
        .map(|r| r.event.event_type)
        .collect();
    assert!(
        events.contains(&"refresh_reuse_detected".to_owned()),
        "{events:?}"
    );
    assert!(events.contains(&"token_refresh".to_owned()));
}

async fn concurrent_refreshes_with_one_token_let_exactly_one_through(backend: Backend) {
    let auth = Arc::new(Auth::start(backend).await);
    let refresh = auth.login("admin", ADMIN_PASSWORD).await.refresh.unwrap();
    let mut tasks = Vec::new();
    for _ in 0..6 {
        let auth = Arc::clone(&auth);
        let refresh = refresh.clone();
        tasks.push(tokio::spawn(async move { auth.refresh(&refresh).await }));
    }
    let mut ok = 0;
    for task in tasks {
        let (status, body) = task.await.unwrap();
        if status == StatusCode::OK {
            ok += 1;
        } else {
            assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
            assert_eq!(body["error"], "invalid_grant");
        }
    }
    assert_eq!(ok, 1, "exactly one concurrent refresh may succeed");
}

async fn client_credentials_for_confidential_clients_only(backend: Backend) {
    let auth = Auth::start(backend).await;
    // HTTP Basic.
    let (status, headers, body) = auth
        .post_form(
            "/oauth/token",
            &[("grant_type", "client_credentials")],
            &[("authorization", &basic(INTERNAL, INTERNAL_SECRET))],
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(headers["cache-control"], "no-store");
    assert!(
        body.get("refresh_token").is_none(),
        "no refresh token: {body}"
    );
    assert_eq!(body["expires_in"], 3600);
    assert_eq!(body["scope"], "api:admin api:read api:write");
    let claims = auth
        .introspect(body["access_token"].as_str().unwrap())
        .await;
    assert_eq!(claims["sub"], "codelab-internal");
    // client_secret_post with a narrower scope.
    let scope = [("scope", "api:read")];
    let (status, _, body) = auth.internal_grant(INTERNAL_SECRET, &scope).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["scope"], "api:read");
    // Wrong secret over Basic: 401 invalid_client with a Basic challenge.
    let (status, headers, body) = auth
        .post_form(
            "/oauth/token",
            &[("grant_type", "client_credentials")],
            &[("authorization", &basic(INTERNAL, "wrong"))],
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(body["error"], "invalid_client");
    assert!(
        headers["www-authenticate"]
            .to_str()
            .unwrap()
            .starts_with("Basic")
    );
    // Without a secret in the body: 401 invalid_client, no challenge.
    let (status, headers, body) = auth
        .token(&[
            ("grant_type", "client_credentials"),
            ("client_id", INTERNAL),
        ])
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(body["error"], "invalid_client");
    assert!(headers.get("www-authenticate").is_none());
    // A public client may not use it.
    let (status, _, body) = auth
        .token(&[("grant_type", "client_credentials"), ("client_id", FLUTTER)])
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"], "unauthorized_client");
}

#[tokio::test]
async fn malformed_requests_get_clear_4xx_answers() {
    let auth = Auth::start(Backend::Sqlite).await;
    // (form, status, error, error_description)
    type Case<'a> = (&'a [(&'a str, &'a str)], StatusCode, &'a str, &'a str);
    let cases: Vec<Case> = vec![
        (
            &[("client_id", FLUTTER)],
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "Missing required parameter: grant_type",
        ),
        (
            &[
                ("grant_type", "password"),
                ("client_id", FLUTTER),
                ("username", "admin"),
            ],
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "Missing required parameters: username and password",
        ),
        (
            &[("grant_type", "refresh_token"), ("client_id", FLUTTER)],
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "Missing required parameter: refresh_token",
        ),
        (
            &[("grant_type", "implicit"), ("client_id", FLUTTER)],
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            "Grant type 'implicit' is not supported",
        ),
        (
            &[
                ("grant_type", "password"),
                ("username", "admin"),
                ("password", "x"),
            ],
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "Missing required parameter: client_id",
        ),
        (
            &[
                ("grant_type", "password"),
                ("client_id", "no-such-client"),
                ("username", "admin"),
                ("password", "x"),
            ],
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            "Unknown or inactive client",
        ),
        (
            &[
                ("grant_type", "password"),
                ("client_id", "codelab-web"),
                ("username", "admin"),
                ("password", ADMIN_PASSWORD),
            ],
            StatusCode::BAD_REQUEST,
            "unauthorized_client",
            "Client is not allowed to use grant type 'password'",
        ),
        (
            &[
                ("grant_type", "refresh_token"),
                ("client_id", FLUTTER),
                ("refresh_token", "garbage"),
            ],
            StatusCode::UNAUTHORIZED,
            "invalid_grant",
            "Invalid or expired refresh token",
        ),
    ];
    for (form, status, error, description) in cases {
        let (got, _, body) = auth.token(form).await;
        assert_eq!(got, status, "{form:?}: {body}");
        assert_eq!(body["error"], error, "{form:?}");
        assert_eq!(body["error_description"], description, "{form:?}");
    }

    let post = |body: String, content_type: &'static str| {
        let request = auth
            .http
            .post(auth.url("/oauth/token"))
            .header("content-type", content_type)
            .body(body);
        async move { parts(request.send().await.unwrap()).await }
    };
    // Repeated parameters (RFC 6749 §3.2); JSON bodies are not accepted.
    for (request, content_type, reason) in [
        (
            "grant_type=password&grant_type=password&client_id=x",
            "application/x-www-form-urlencoded",
            "repeated",
        ),
        (
            r#"{"grant_type":"password"}"#,
            "application/json",
            "form-encoded",
        ),
    ] {
        let (status, _, text) = post(request.into(), content_type).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        let body: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(body["error"], "invalid_request");
        assert!(body["error_description"].as_str().unwrap().contains(reason));
    }
    // A huge field: 400; a body over the limit: 413.
    let huge = format!(
        "grant_type=password&client_id={FLUTTER}&username={}",
        "a".repeat(5000)
    );
    let long_password = format!(
        "grant_type=password&client_id={FLUTTER}&username=admin&password={}",
        "p".repeat(1025)
    );
    let oversized = format!("grant_type=password&x={}", "a".repeat(100 * 1024));
    for (request, expected) in [
        (huge, StatusCode::BAD_REQUEST),
        (long_password, StatusCode::BAD_REQUEST),
        (oversized, StatusCode::PAYLOAD_TOO_LARGE),
    ] {
        let (status, _, _) = post(request, "application/x-www-form-urlencoded").await;
        assert_eq!(status, expected);
    }
    // Wrong method.
    let (status, _, _) = auth.get_text("/oauth/token").await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
}

#[tokio::test]
async fn bcrypt_hashes_from_the_original_verify_and_are_rehashed_to_argon2id() {
    let auth = Auth::start(Backend::Sqlite).await;
    let bcrypt_hash = bcrypt::hash("legacy-password-1", 4).unwrap();
    let user = auth.add_user_with_hash("legacy", &bcrypt_hash).await;
    auth.login("legacy", "legacy-password-1").await;
    let stored = auth.state.store.get_user(&user.id).await.unwrap().unwrap();
    assert!(
        stored.password_hash.starts_with("$argon2id$"),
        "rehashed on login"
    );
    assert!(stored.last_login_at.is_some());
    // And the new hash verifies.
    auth.login("legacy", "legacy-password-1").await;
}

#[tokio::test]
async fn refresh_may_only_narrow_scope_and_is_bound_to_its_client() {
    let auth = Auth::start(Backend::Sqlite).await;
    let tokens = auth.login("admin", ADMIN_PASSWORD).await;
    let refresh = tokens.refresh.unwrap();
    // A scope beyond the original grant.
    let (status, _, body) = auth
        .refresh_grant(FLUTTER, &refresh, &[("scope", "api:read api:admin")])
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"], "invalid_scope");
    // Another client presenting it.
    let (status, _, body) = auth.refresh_grant("codelab-cli", &refresh, &[]).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(body["error_description"], "Invalid refresh token");
    // Narrowing works, and the failures above left the token usable.
    let (status, _, body) = auth
        .refresh_grant(FLUTTER, &refresh, &[("scope", "api:read")])
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["scope"], "api:read");
    // The narrowing applied to that access token only: the rotated refresh token keeps the
    // original grant (RFC 6749 §6), so the next refresh without `scope` gets all of it back.
    let rotated = body["refresh_token"].as_str().unwrap().to_owned();
    let (status, _, body) = auth.refresh_grant(FLUTTER, &rotated, &[]).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["scope"], tokens.body["scope"]);
}

#[tokio::test]
async fn expired_refresh_tokens_and_disabled_users_are_refused() {
    let auth = Auth::start(Backend::Sqlite).await;
    auth.add_user("bob", "bob-password-1").await;
    let tokens = auth.login("bob", "bob-password-1").await;
    let refresh = tokens.refresh.unwrap();
    // Disabling a user revokes their tokens (as `codelab admin user disable` does).
    let user = auth
        .state
        .store
        .set_user_active("bob", false)
        .await
        .unwrap();
    auth.state
        .store
        .revoke_user_tokens(&user.id, auth.state.now())
        .await
        .unwrap();
    let (status, _) = auth.refresh(&refresh).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    let tokens = auth.login("admin", ADMIN_PASSWORD).await;
    auth.clock.advance(Duration::from_secs(2_592_000 + 120));
    let (status, body) = auth.refresh(tokens.refresh.as_deref().unwrap()).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        body["error_description"],
        "Invalid or expired refresh token"
    );
}

#[tokio::test]
async fn seeding_is_idempotent_and_prints_nothing_twice() {
    let (_dir, _, url) = sqlite_file();
    let config = || codelab_auth::Config {
        db_url: url.clone(),
        ..codelab_auth::Config::default()
    };
    let first =
        codelab_auth::AuthService::build(config(), codelab_core::service::SharedDeps::default())
            .await
            .unwrap();
    let report = first.take_seed_report().unwrap();
    let password = report.admin_password.unwrap();
    assert!(report.admin_password_generated);
    assert_eq!(password.expose().len(), 20);
    assert!(report.internal_client_secret.is_some());
    assert!(first.take_seed_report().is_none(), "reported once");
    let clients = first.store.list_clients().await.unwrap();
    let ids: Vec<&str> = clients.iter().map(|c| c.client_id.as_str()).collect();
    for id in [
        "codelab-flutter-app",
        "codelab-cli",
        "codelab-web",
        "codelab-internal",
    ] {
        assert!(ids.contains(&id), "{id} seeded: {ids:?}");
    }
    drop(first);
    let second =
        codelab_auth::AuthService::build(config(), codelab_core::service::SharedDeps::default())
            .await
            .unwrap();
    let report = second.take_seed_report().unwrap();
    assert!(report.admin_password.is_none() && report.internal_client_secret.is_none());
    assert_eq!(second.store.list_users().await.unwrap().len(), 1);

    // `codelab up --admin-password` sets it.
    codelab_auth::seed::set_admin_password(&second.store, "new-admin-pass")
        .await
        .unwrap();
    assert!(
        codelab_auth::seed::set_admin_password(&second.store, "short")
            .await
            .is_err(),
        "the password policy applies"
    );
}

#[tokio::test]
async fn production_refuses_a_placeholder_master_key() {
    use codelab_core::config::Environment;
    let (_dir, _, db_url) = sqlite_file();
    let config = codelab_auth::Config {
        db_url,
        public_url: "https://auth.example.com".into(),
        master_key: "change-me-in-production".into(),
        // Present, so that the placeholder admin password is what stops the start.
        key_encryption_key: "q83vEjRWeJDx2sXo0LqHkN6sYbF2cW5zZ1VnUkB4aTQ=".into(),
        internal_client_secret: "internal-secret-0123456789".into(),
        ..codelab_auth::Config::default()
    };
    // Keys are generated into the shared database in every environment, so the only thing
    // that stops this start is the published placeholder admin password.
    let error = codelab_auth::AuthService::build(
        config,
        codelab_core::service::SharedDeps::isolated(Environment::Production),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(error, codelab_auth::BuildError::Seed(_)),
        "{error}"
    );
}

#[tokio::test]
async fn a_body_over_the_limit_is_refused_in_the_rfc_6749_shape() {
    let auth = Auth::start(Backend::Sqlite).await;
    let oversized = format!("grant_type=password&x={}", "a".repeat(100 * 1024));
    let response = auth
        .http
        .post(auth.url("/oauth/token"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(oversized)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
    let body: Value = response.json().await.unwrap();
    assert!(body["error"].is_string(), "{body}");
    assert!(body["error_description"].is_string(), "{body}");
    assert!(body.get("detail").is_none(), "{body}");
}

#[tokio::test]
async fn a_rotated_token_is_reuse_even_with_a_bad_scope_or_another_client() {
    let auth = Auth::start(Backend::Sqlite).await;
    let old = auth.login("admin", ADMIN_PASSWORD).await.refresh.unwrap();
    let (status, body) = auth.refresh(&old).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let rotated = tokens_of(body).refresh.unwrap();
    // The copy comes back asking for more than its grant, and through another client: the
    // reuse is what is answered, and the family dies.
    for (client, extra) in [
        (FLUTTER, &[("scope", "api:read api:admin")][..]),
        ("codelab-cli", &[][..]),
    ] {
        let (status, _, body) = auth.refresh_grant(client, &old, extra).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
        assert_eq!(
            body["error_description"],
            "Refresh token has been revoked (reuse detected)"
        );
    }
    let (status, _) = auth.refresh(&rotated).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "the family was revoked");
}

#[tokio::test]
async fn a_disabled_users_refresh_token_does_not_rotate_until_they_are_enabled() {
    let auth = Auth::start(Backend::Sqlite).await;
    auth.add_user("carol", "carol-password-1").await;
    let refresh = auth
        .login("carol", "carol-password-1")
        .await
        .refresh
        .unwrap();
    // Disabled without revoking the tokens: the rotation itself refuses, and consumes nothing.
    auth.state
        .store
        .set_user_active("carol", false)
        .await
        .unwrap();
    let (status, body) = auth.refresh(&refresh).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(body["error_description"], "Invalid refresh token");
    auth.state
        .store
        .set_user_active("carol", true)
        .await
        .unwrap();
    let (status, body) = auth.refresh(&refresh).await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

#[tokio::test]
async fn a_fresh_start_tells_which_admin_password_it_seeded() {
    let (_dir, _, url) = sqlite_file();
    let master = "seeded-admin-password-1";
    let config = || codelab_auth::Config {
        db_url: url.clone(),
        master_key: codelab_core::config::Secret::new(master),
        ..codelab_auth::Config::default()
    };
    let first =
        codelab_auth::AuthService::build(config(), codelab_core::service::SharedDeps::default())
            .await
            .unwrap();
    // `codelab up --admin-password` skips setting (and hashing) it again on such a start.
    assert!(first.seeded_admin_with(master));
    assert!(!first.seeded_admin_with("another-password-1"));
    drop(first);
    let second =
        codelab_auth::AuthService::build(config(), codelab_core::service::SharedDeps::default())
            .await
            .unwrap();
    assert!(
        !second.seeded_admin_with(master),
        "the admin existed: nothing was seeded"
    );
}
