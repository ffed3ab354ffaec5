//! The browser flow over real HTTP: `/oauth/authorize`, the CSRF-protected login page, the
//! authorization code grant with PKCE S256 (RFC 7636), exact redirect-URI matching, security
//! headers and CORS.

use crate::support::{ADMIN_LOGIN, ADMIN_PASSWORD, Auth, Backend, Options, WEB, WEB_REDIRECT};
use crate::support::{hidden_field, location_params, param, pkce_pair};
use reqwest::StatusCode;

/// Logs in through the page and returns the code from the redirect.
async fn obtain_code(auth: &Auth, challenge: &str) -> String {
    let headers = auth.sign_in(challenge, &ADMIN_LOGIN).await;
    let (base, params) = location_params(&headers);
    assert_eq!(base, WEB_REDIRECT);
    assert_eq!(
        param(&params, "state"),
        Some("xyz state/1"),
        "state round-trips"
    );
    param(&params, "code").unwrap().to_owned()
}

async fn authorization_code_flow_with_pkce(backend: Backend) {
    let auth = Auth::start(backend).await;
    let (verifier, challenge) = pkce_pair();
    let code = obtain_code(&auth, &challenge).await;
    let (status, body) = auth.redeem(&code, &verifier).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["token_type"], "bearer");
    // The admin gets api:admin by default on the web client, which allows it.
    assert_eq!(body["scope"], "api:read api:write api:admin");
    let refresh = body["refresh_token"].as_str().unwrap();
    let (status, _, body) = auth.refresh_grant(WEB, refresh, &[]).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // Codes are single-use.
    let (status, body) = auth.redeem(&code, &verifier).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"], "invalid_grant");

    // A wrong verifier burns the code.
    let (verifier, challenge) = pkce_pair();
    let code = obtain_code(&auth, &challenge).await;
    let (other_verifier, _) = pkce_pair();
    let (status, body) = auth.redeem(&code, &other_verifier).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"], "invalid_grant");
    assert_eq!(body["error_description"], "PKCE verification failed");
    let (status, _) = auth.redeem(&code, &verifier).await;
    assert_eq!(
        status,
        StatusCode::BAD_REQUEST,
        "a failed attempt consumed the code"
    );

    // A different redirect_uri at the token endpoint.
    let (verifier, challenge) = pkce_pair();
    let code = obtain_code(&auth, &challenge).await;
    let (status, _, body) = auth
        .token(&[
            ("grant_type", "authorization_code"),
            ("client_id", WEB),
            ("code", &code),
            ("redirect_uri", "http://localhost:3000/other"),
            ("code_verifier", &verifier),
        ])
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"], "invalid_grant");

    // Expired codes (10 minutes).
    let (verifier, challenge) = pkce_pair();
    let code = obtain_code(&auth, &challenge).await;
    auth.clock.advance(std::time::Duration::from_secs(601));
    let (status, _) = auth.redeem(&code, &verifier).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn authorization_code_flow_with_pkce_on_sqlite() {
    authorization_code_flow_with_pkce(Backend::Sqlite).await;
}

#[tokio::test]
async fn authorization_code_flow_with_pkce_on_postgres() {
    authorization_code_flow_with_pkce(Backend::Postgres).await;
}

#[tokio::test]
async fn bad_client_or_redirect_uri_gets_a_page_never_a_redirect() {
    let auth = Auth::start(Backend::Sqlite).await;
    let (_, challenge) = pkce_pair();
    for extra in [
        vec![("redirect_uri", "http://evil.example/cb")],
        vec![("redirect_uri", "http://localhost:3000/cb/")],
        vec![("redirect_uri", "")],
        vec![("client_id", "no-such-client")],
        vec![("client_id", "codelab-flutter-app")],
    ] {
        let (status, headers, html) = auth.authorize_page(&challenge, &extra).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{extra:?}");
        assert!(headers.get("location").is_none(), "{extra:?}");
        assert!(
            headers["content-type"]
                .to_str()
                .unwrap()
                .starts_with("text/html")
        );
        assert!(html.contains("Sign-in request refused"));
    }
}

#[tokio::test]
async fn invalid_requests_to_a_good_redirect_uri_come_back_as_error_redirects() {
    let auth = Auth::start(Backend::Sqlite).await;
    let (_, challenge) = pkce_pair();
    let cases = [
        (vec![("code_challenge", "")], "invalid_request"),
        (vec![("code_challenge_method", "plain")], "invalid_request"),
        (vec![("code_challenge_method", "")], "invalid_request"),
        (
            vec![("response_type", "token")],
            "unsupported_response_type",
        ),
        (vec![("scope", "api:read root")], "invalid_scope"),
    ];
    for (extra, error) in cases {
        let (status, headers, _) = auth.authorize_page(&challenge, &extra).await;
        assert_eq!(status, StatusCode::FOUND, "{extra:?}");
        let (base, params) = location_params(&headers);
        assert_eq!(base, WEB_REDIRECT);
        assert_eq!(param(&params, "error"), Some(error), "{extra:?}");
        assert_eq!(param(&params, "state"), Some("xyz state/1"));
    }
}

#[tokio::test]
async fn login_page_is_csrf_protected_and_carries_security_headers() {
    let auth = Auth::start(Backend::Sqlite).await;
    let (_, challenge) = pkce_pair();
    let (status, headers, html) = auth.authorize_page(&challenge, &[]).await;
    assert_eq!(status, StatusCode::OK);
    let csp = headers["content-security-policy"].to_str().unwrap();
    assert!(csp.contains("frame-ancestors 'none'") && !csp.contains("unsafe-inline"));
    assert_eq!(headers["x-content-type-options"], "nosniff");
    assert!(headers.get("referrer-policy").is_some());
    assert!(!html.contains("<script"));
    let cookie = headers["set-cookie"].to_str().unwrap();
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Lax"),
        "{cookie}"
    );
    let token = hidden_field(&html, "csrf_token").unwrap();

    // No cookie: refused.
    let form = [
        ("csrf_token", token.as_str()),
        ("response_type", "code"),
        ("client_id", WEB),
        ("redirect_uri", WEB_REDIRECT),
        ("code_challenge", challenge.as_str()),
        ("code_challenge_method", "S256"),
        ("username", "admin"),
        ("password", ADMIN_PASSWORD),
    ];
    let response = auth
        .form_request("/oauth/authorize", &form)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    assert!(response.headers().get("location").is_none());
    // A cookie that does not match the field: refused.
    let (status, headers, _) = auth
        .submit_login(
            &headers,
            &html,
            &[
                ("csrf_token", "forged"),
                ("username", "admin"),
                ("password", ADMIN_PASSWORD),
            ],
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(headers.get("location").is_none());
}

#[tokio::test]
async fn wrong_password_rerenders_and_cancel_denies_access() {
    let auth = Auth::start(Backend::Sqlite).await;
    let (_, challenge) = pkce_pair();
    let (_, headers, html) = auth.authorize_page(&challenge, &[]).await;
    let (status, headers, html) = auth
        .submit_login(
            &headers,
            &html,
            &[("username", "admin"), ("password", "not-the-password")],
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert!(html.contains("Invalid username or password"));
    assert!(
        !html.contains("not-the-password"),
        "the password is never echoed"
    );
    let failed = auth.audit_rows().await;
    assert!(failed.iter().any(|r| r.event.event_type == "login_failed"));
    // The re-rendered form has a fresh CSRF token; cancelling goes back with access_denied.
    let (status, headers, _) = auth
        .submit_login(&headers, &html, &[("action", "cancel")])
        .await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    let (base, params) = location_params(&headers);
    assert_eq!(base, WEB_REDIRECT);
    assert_eq!(param(&params, "error"), Some("access_denied"));
    assert_eq!(param(&params, "state"), Some("xyz state/1"));
}

#[tokio::test]
async fn cors_allows_any_origin_only_in_development_and_the_list_elsewhere() {
    let auth = Auth::start(Backend::Sqlite).await;
    let response = auth
        .http
        .get(auth.url("/.well-known/jwks.json"))
        .header("origin", "http://anything.example")
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["access-control-allow-origin"], "*");
    assert!(
        response
            .headers()
            .get("access-control-allow-credentials")
            .is_none()
    );

    let (private_pem, _) = codelab_auth::keys::KeyManager::generate_pem().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let pem = dir.path().join("key.pem");
    std::fs::write(&pem, private_pem).unwrap();
    let options = Options {
        environment: codelab_core::config::Environment::Staging,
        ..Options::new(Backend::Sqlite)
    }
    .tweak(move |config| {
        config.cors_origins = vec!["https://app.example".into()];
        config.private_key_path = Some(pem);
        config.master_key = "a-strong-staging-admin-password".into();
        // Required outside development (docs/auth.md, "Signing keys").
        config.key_encryption_key = "q83vEjRWeJDx2sXo0LqHkN6sYbF2cW5zZ1VnUkB4aTQ=".into();
    });
    let staging = Auth::start_with(options).await;
    for (origin, allowed) in [
        ("https://app.example", true),
        ("https://evil.example", false),
    ] {
        let response = staging
            .http
            .get(staging.url("/.well-known/jwks.json"))
            .header("origin", origin)
            .send()
            .await
            .unwrap();
        let header = response.headers().get("access-control-allow-origin");
        if allowed {
            assert_eq!(header.unwrap(), origin);
        } else {
            assert!(header.is_none(), "{origin} must not be allowed");
        }
    }
}
