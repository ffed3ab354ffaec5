//! Authentication of REST calls against the real auth service: tokens from its password grant,
//! every kind of bad token refused with its reason (RFC 6750 answers), key rotation seen
//! through a JWKS refetch, the development mode, the internal key, production's refusals.

use codelab_core::service::Service as _;
use std::sync::Arc;
use std::time::Duration;

use crate::common::{
    RUNTIME_KEY, SERVICE_KEY, Stack, access_token, auth_failure_metric, build_error, closed_url,
    forge, jwt_claims, jwt_header, start_stack, start_stack_tweaked, strong_config,
};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use codelab_auth::tokens::TokenService;
use codelab_core::clock::{Clock, ManualClock};
use codelab_core::config::Environment;
use codelab_gateway::config::WsAuthMode;
use jsonwebtoken::{EncodingKey, Header};
use reqwest::Method;
use serde_json::{Value, json};

/// `GET /api/v1/sessions` with `Authorization: Bearer <token>`: status, `WWW-Authenticate`
/// and body.
async fn list_with(stack: &Stack, token: &str) -> (u16, String, Value) {
    let (status, headers, body) = stack
        .send(stack.request(Method::GET, "/api/v1/sessions", Some(token)))
        .await;
    let challenge = headers
        .get("www-authenticate")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    (status, challenge, body)
}

/// Asserts a 401 `invalid_token` answer whose description contains `why`, and that the
/// failure was counted under `reason`.
async fn assert_refused(stack: &Stack, token: &str, reason: &str, why: &str) {
    let (status, challenge, body) = list_with(stack, token).await;
    assert_eq!(status, 401, "{reason}: {body}");
    assert_eq!(body["error"], "invalid_token", "{reason}");
    let description = body["error_description"].as_str().unwrap();
    assert!(description.contains(why), "{reason}: {description}");
    assert_eq!(
        challenge,
        format!("Bearer error=\"invalid_token\", error_description=\"{description}\"")
    );
    let metrics = stack.metrics().await;
    assert!(
        metrics.contains(&auth_failure_metric(reason)),
        "{reason} is counted"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tokens_of_the_password_grant_are_accepted_and_nothing_else() {
    let stack = start_stack().await;
    let tokens = stack
        .login(stack.admin_username, stack.admin_password)
        .await;
    let (status, _, body) = list_with(&stack, &tokens.access).await;
    assert_eq!(status, 200, "{body}");
    // The scheme is case-insensitive (RFC 7235 §2.1).
    let lowercase = format!("bearer {}", tokens.access);
    let request = stack.request(Method::GET, "/api/v1/sessions", None);
    let (status, _, _) = stack.send(request.header("Authorization", lowercase)).await;
    assert_eq!(status, 200);

    // No credentials: 401 with a bare Bearer challenge (RFC 6750 §3.1).
    let (status, headers, body) = stack
        .send(stack.request(Method::GET, "/api/v1/sessions", None))
        .await;
    assert_eq!(status, 401);
    assert_eq!(headers["www-authenticate"], "Bearer");
    assert_eq!(
        body,
        json!({"error": "unauthorized", "error_description": "Authentication required"})
    );

    // A refresh token shares iss and aud with access tokens: `type` refuses it.
    assert_refused(&stack, &tokens.refresh, "wrong_type", "Invalid token type").await;

    let claims = jwt_claims(&tokens.access);
    let sub = claims["sub"].as_str().unwrap();
    let wrong_aud = access_token(
        &stack.signer(&stack.issuer, "someone-else"),
        sub,
        "api:read",
    );
    assert_refused(&stack, &wrong_aud, "wrong_audience", "audience").await;
    let wrong_iss = access_token(
        &stack.signer("https://evil.example", "codelab-api"),
        sub,
        "api:read",
    );
    assert_refused(&stack, &wrong_iss, "wrong_issuer", "issuer").await;

    // `alg: none` with valid claims and no signature.
    let none = forge(&json!({"alg": "none", "typ": "JWT"}), &claims, b"");
    assert_refused(&stack, &none, "unsupported_algorithm", "RS256").await;

    // HS256 "signed" with the RSA public key, the classic key-confusion attack (RFC 8725 §2.1).
    let jwks: Value = stack.jwks().await;
    let public = jwks["keys"][0].to_string();
    let mut header = Header::new(jsonwebtoken::Algorithm::HS256);
    header.kid = jwt_header(&tokens.access)["kid"]
        .as_str()
        .map(str::to_owned);
    let confused = jsonwebtoken::encode(
        &header,
        &claims,
        &EncodingKey::from_secret(public.as_bytes()),
    )
    .unwrap();
    assert_refused(&stack, &confused, "unsupported_algorithm", "RS256").await;

    // Claims changed after signing.
    let mut tampered_claims = claims.clone();
    tampered_claims["sub"] = json!("someone-else");
    let mut parts: Vec<String> = tokens.access.split('.').map(str::to_owned).collect();
    parts[1] = URL_SAFE_NO_PAD.encode(tampered_claims.to_string());
    assert_refused(&stack, &parts.join("."), "bad_signature", "signature").await;

    // A kid the auth service never had.
    let mut header = jwt_header(&tokens.access);
    header["kid"] = json!("no-such-key");
    let unknown = forge(&header, &claims, b"sig");
    assert_refused(&stack, &unknown, "unknown_key", "unknown key").await;

    assert_refused(&stack, "not-a-jwt", "malformed", "malformed").await;

    // A bad token is not rescued by a valid service key (the original's rule).
    let request = stack.request(Method::GET, "/api/v1/sessions", Some("not-a-jwt"));
    let (status, _, _) = stack
        .send(request.header("X-Internal-Auth", SERVICE_KEY))
        .await;
    assert_eq!(status, 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tokens_expire_by_the_injected_clock_with_the_leeway() {
    let stack = start_stack().await;
    let access = stack.admin_token().await;
    let claims = jwt_claims(&access);
    let lifetime = claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap();
    // Within the 30 s leeway it still works.
    stack
        .clock
        .advance(Duration::from_secs(u64::try_from(lifetime).unwrap() + 10));
    let (status, _, _) = list_with(&stack, &access).await;
    assert_eq!(status, 200);
    stack.clock.advance(Duration::from_secs(30));
    assert_refused(&stack, &access, "expired", "expired").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_token_from_beyond_the_leeway_in_the_future_is_not_valid_yet() {
    let stack = start_stack().await;
    let claims = jwt_claims(&stack.admin_token().await);
    let sub = claims["sub"].as_str().unwrap();
    let ahead = ManualClock::new(stack.clock.now() + Duration::from_secs(120));
    let keys = Arc::clone(&stack.auth.keys);
    let signer = TokenService::new(
        keys,
        stack.issuer.clone(),
        "codelab-api",
        30,
        Arc::new(ahead),
    );
    let future = access_token(&signer, sub, "api:read");
    assert_refused(&stack, &future, "not_yet_valid", "not valid yet").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rotated_key_is_fetched_when_its_kid_first_appears() {
    let stack = start_stack().await;
    let before = stack.admin_token().await;
    let (status, _, _) = list_with(&stack, &before).await;
    assert_eq!(status, 200, "the JWKS is cached now");

    let kid = stack.rotate_signing_key().await;
    let after = stack.admin_token().await;
    assert_eq!(jwt_header(&after)["kid"], kid.as_str());
    // The cache is an hour old at most, yet the new kid is found by a refetch.
    let (status, _, body) = list_with(&stack, &after).await;
    assert_eq!(status, 200, "{body}");
    // The old key is still published, so tokens it signed keep working.
    let (status, _, _) = list_with(&stack, &before).await;
    assert_eq!(status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn without_jwt_auth_tokenless_calls_act_as_the_development_user() {
    let stack = start_stack_tweaked(|config| config.use_jwt_auth = false).await;
    let (status, created) = stack
        .call(Method::POST, "/api/v1/sessions", None, None)
        .await;
    assert_eq!(status, 200, "{created}");
    let id = created["id"].as_str().unwrap();
    // The runtime's development user owns it.
    let owned = stack
        .http
        .get(format!("{}/sessions/{id}", stack.runtime_url))
        .header("X-Internal-Auth", RUNTIME_KEY)
        .header("X-Codelab-User-Id", "dev")
        .send()
        .await
        .unwrap();
    assert_eq!(owned.status().as_u16(), 200);
    let (status, list) = stack.get("/api/v1/sessions", None).await;
    assert_eq!(status, 200);
    assert_eq!(list["total"], 1);

    // A presented token is still verified: a bad one is 401, a good one acts as its user.
    let (status, _, _) = list_with(&stack, "not-a-jwt").await;
    assert_eq!(status, 401);
    let token = stack.admin_token().await;
    let (status, _, list) = list_with(&stack, &token).await;
    assert_eq!(status, 200);
    assert_eq!(
        list["total"], 0,
        "the admin does not see the dev user's sessions"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn service_callers_use_the_service_key_and_name_the_user() {
    let stack = start_stack().await;
    let (alice_id, _, session) = stack.user_with_session("alice").await;

    let as_service = |user: Option<&str>, key: &str| {
        stack.as_service(Method::GET, "/api/v1/sessions", key, user)
    };
    let (status, _, list) = stack.send(as_service(Some(&alice_id), SERVICE_KEY)).await;
    assert_eq!(status, 200, "{list}");
    assert_eq!(list["sessions"][0]["id"], session.as_str());
    // Without a user the caller is `system`, who owns nothing.
    let (status, _, list) = stack.send(as_service(None, SERVICE_KEY)).await;
    assert_eq!(status, 200);
    assert_eq!(list["total"], 0);

    let (status, _, body) = stack.send(as_service(Some(&alice_id), "wrong-key")).await;
    assert_eq!(status, 401);
    assert_eq!(body["error"], "unauthorized");
    let (status, _, _) = stack
        .send(as_service(Some("no spaces allowed"), SERVICE_KEY))
        .await;
    assert_eq!(status, 400);
    let metrics = stack.metrics().await;
    assert!(metrics.contains(&auth_failure_metric("bad_internal_key")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn production_refuses_the_development_settings() {
    let dev_user = strong_config(|config| config.use_jwt_auth = false);
    let error = build_error(dev_user, Environment::Production).await;
    assert!(error.to_string().contains("use_jwt_auth"), "{error}");

    let open_sockets = strong_config(|config| config.ws_auth = Some(WsAuthMode::Off));
    let error = build_error(open_sockets, Environment::Production).await;
    assert!(error.to_string().contains("ws_auth"), "{error}");

    let weak_key = codelab_gateway::Config::default();
    let error = build_error(weak_key, Environment::Production).await;
    assert!(error.to_string().contains("internal_api_key"), "{error}");

    let star = strong_config(|config| config.cors_origins = vec!["*".to_owned()]);
    assert!(
        codelab_gateway::GatewayService::build(
            star,
            codelab_core::service::SharedDeps::isolated(Environment::Production)
        )
        .await
        .is_err()
    );

    // The same settings start in development.
    let stack = start_stack_tweaked(|config| {
        config.use_jwt_auth = false;
        config.ws_auth = Some(WsAuthMode::Off);
    })
    .await;
    let (status, _) = stack.get("/api/v1/sessions", None).await;
    assert_eq!(status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn without_any_jwks_tokens_cannot_be_verified_yet_are_not_accepted() {
    // An auth service URL where nothing listens: no keys were ever fetched.
    let closed = closed_url();
    let stack = start_stack_tweaked(move |config| config.auth_service_url = closed).await;
    let token = stack.admin_token().await;
    let (status, headers, body) = stack
        .send(stack.request(Method::GET, "/api/v1/sessions", Some(&token)))
        .await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"], "temporarily_unavailable");
    assert!(headers.get("retry-after").is_some());
    let (status, ready) = stack.get("/ready", None).await;
    assert_eq!(status, 503);
    assert_ne!(ready["checks"]["jwks"], "ok");
}
