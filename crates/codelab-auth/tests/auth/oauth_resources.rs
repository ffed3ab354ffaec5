//! Revocation (RFC 7009), introspection (RFC 7662), userinfo (RFC 6750), discovery (RFC 8414),
//! the JWKS checked by an independent JWT library, key rotation, and the operational routes.

use std::time::Duration;

use crate::support::{ADMIN_PASSWORD, Auth, Backend, FLUTTER, INTERNAL_SECRET};
use jsonwebtoken::{Algorithm, DecodingKey, Validation, decode, decode_header};
use reqwest::StatusCode;
use serde_json::Value;

/// Verifies `token` the way a resource server would: only with the JWKS fetched over HTTP.
async fn verify_with_served_jwks(jwks_url: &str, token: &str, issuer: &str) -> Value {
    let jwks: jsonwebtoken::jwk::JwkSet =
        reqwest::get(jwks_url).await.unwrap().json().await.unwrap();
    let header = decode_header(token).unwrap();
    assert_eq!(header.alg, Algorithm::RS256);
    let kid = header.kid.expect("tokens carry a kid");
    let jwk = jwks.find(&kid).expect("the kid is published");
    let key = DecodingKey::from_jwk(jwk).unwrap();
    let mut validation = Validation::new(Algorithm::RS256);
    validation.set_audience(&["codelab-api"]);
    validation.set_issuer(&[issuer]);
    decode::<Value>(token, &key, &validation).unwrap().claims
}

#[tokio::test]
async fn tokens_verify_with_an_independent_library_against_the_served_jwks() {
    let auth = Auth::start(Backend::Sqlite).await;
    let (status, headers, jwks) = auth.get_json("/.well-known/jwks.json").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["cache-control"], "public, max-age=300");
    let key = &jwks["keys"][0];
    assert_eq!(key["kty"], "RSA");
    assert_eq!(key["alg"], "RS256");
    assert_eq!(key["use"], "sig");
    assert!(key.get("d").is_none(), "only public parameters");

    let tokens = auth.login("admin", ADMIN_PASSWORD).await;
    let claims = verify_with_served_jwks(
        &auth.url("/.well-known/jwks.json"),
        &tokens.access,
        &auth.base,
    )
    .await;
    // The original's claim set, with iss from the public URL.
    assert_eq!(claims["iss"], auth.base);
    assert_eq!(claims["aud"], "codelab-api");
    assert_eq!(claims["type"], "access");
    assert_eq!(claims["client_id"], FLUTTER);
    assert_eq!(claims["scope"], "api:read api:write");
    assert_eq!(claims["nbf"], claims["iat"]);
    assert_eq!(
        claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap(),
        900
    );
    assert!(claims["jti"].is_string() && claims["sub"].is_string());
    let refresh = verify_with_served_jwks(
        &auth.url("/.well-known/jwks.json"),
        tokens.refresh.as_deref().unwrap(),
        &auth.base,
    )
    .await;
    assert_eq!(refresh["type"], "refresh");
    assert_eq!(
        refresh["exp"].as_i64().unwrap() - refresh["iat"].as_i64().unwrap(),
        2_592_000
    );
}

#[tokio::test]
async fn key_rotation_keeps_old_tokens_valid_until_expiry_and_signs_with_the_new_kid() {
    let auth = Auth::start(Backend::Sqlite).await;
    let old = auth.login("admin", ADMIN_PASSWORD).await;
    let old_kid = decode_header(&old.access).unwrap().kid.unwrap();

    let new_kid = codelab_auth::keys::KeyManager::rotate(
        auth.state.store.as_ref(),
        &auth.clock,
        Duration::from_secs(90 * 24 * 3600),
    )
    .await
    .unwrap();
    auth.state.keys.reload().await.unwrap();
    assert_ne!(new_kid, old_kid);

    let new = auth.login("admin", ADMIN_PASSWORD).await;
    assert_eq!(decode_header(&new.access).unwrap().kid.unwrap(), new_kid);
    let (_, _, jwks) = auth.get_json("/.well-known/jwks.json").await;
    let kids: Vec<&str> = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["kid"].as_str().unwrap())
        .collect();
    assert!(
        kids.contains(&old_kid.as_str()) && kids.contains(&new_kid.as_str()),
        "{kids:?}"
    );

    // Both verify, independently and by introspection.
    let jwks_url = auth.url("/.well-known/jwks.json");
    verify_with_served_jwks(&jwks_url, &old.access, &auth.base).await;
    verify_with_served_jwks(&jwks_url, &new.access, &auth.base).await;
    assert_eq!(auth.introspect(&old.access).await["active"], true);
    // The old refresh token still rotates (into a token signed by the new key).
    let (status, body) = auth.refresh(old.refresh.as_deref().unwrap()).await;
    assert_eq!(status, StatusCode::OK, "{body}");

    // After the access lifetime (plus leeway) the old access token is inactive.
    auth.clock.advance(Duration::from_secs(900 + 120));
    assert_eq!(
        auth.introspect(&old.access).await,
        serde_json::json!({"active": false})
    );
}

#[tokio::test]
async fn introspection_reports_active_tokens_and_nothing_about_the_rest() {
    let auth = Auth::start(Backend::Sqlite).await;
    let tokens = auth.login("admin", ADMIN_PASSWORD).await;
    let (_, headers, _) = auth.introspect_with("x", INTERNAL_SECRET).await;
    assert_eq!(headers["cache-control"], "no-store");

    let active = auth.introspect(&tokens.access).await;
    assert_eq!(active["active"], true);
    assert_eq!(active["username"], "admin");
    assert_eq!(active["client_id"], FLUTTER);
    assert_eq!(active["scope"], "api:read api:write");
    for field in [
        "exp",
        "iat",
        "nbf",
        "sub",
        "aud",
        "iss",
        "jti",
        "token_type",
    ] {
        assert!(active.get(field).is_some(), "{field} in {active}");
    }
    let refresh = tokens.refresh.unwrap();
    assert_eq!(auth.introspect(&refresh).await["active"], true);
    let inactive = serde_json::json!({"active": false});
    assert_eq!(auth.introspect("garbage").await, inactive);
    // Revoked refresh tokens are inactive.
    let (status, _, _) = auth
        .revoke(&[("token", &refresh), ("client_id", FLUTTER)])
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(auth.introspect(&refresh).await, inactive);
    // Expired access tokens are inactive.
    auth.clock.advance(Duration::from_secs(900 + 120));
    assert_eq!(auth.introspect(&tokens.access).await, inactive);

    // Public clients may not introspect.
    let (status, _, body) = auth
        .post_form(
            "/oauth/introspect",
            &[("token", "x"), ("client_id", FLUTTER)],
            &[],
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(body["error"], "invalid_client");

    // No client authentication at all (schemathesis found it answered 400 invalid_request):
    // invalid_client with the Basic challenge, as the description says.
    for form in [
        &[("token", "x")][..],
        &[("token", "x"), ("client_id", " ")][..],
    ] {
        let (status, headers, body) = auth.post_form("/oauth/introspect", form, &[]).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{form:?}");
        assert_eq!(body["error"], "invalid_client");
        assert!(headers.contains_key("www-authenticate"));
    }
}

#[tokio::test]
async fn revocation_kills_the_family_and_answers_200_for_unknown_tokens() {
    let auth = Auth::start(Backend::Sqlite).await;
    let session = auth.login("admin", ADMIN_PASSWORD).await;
    let other = auth.login("admin", ADMIN_PASSWORD).await;
    let (status, body) = auth.refresh(session.refresh.as_deref().unwrap()).await;
    assert_eq!(status, StatusCode::OK);
    let rotated = body["refresh_token"].as_str().unwrap().to_owned();

    let (status, headers, _) = auth
        .revoke(&[
            ("token", &rotated),
            ("token_type_hint", "refresh_token"),
            ("client_id", FLUTTER),
        ])
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["cache-control"], "no-store");
    let (status, _) = auth.refresh(&rotated).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _) = auth.refresh(other.refresh.as_deref().unwrap()).await;
    assert_eq!(status, StatusCode::OK, "other sessions survive");
    assert!(
        auth.audit_rows()
            .await
            .iter()
            .any(|r| r.event.event_type == "token_revoke")
    );

    // RFC 7009 §2.2: unknown and invalid tokens, and access tokens, are answered 200.
    for token in ["garbage", session.access.as_str()] {
        let (status, _, _) = auth
            .revoke(&[("token", token), ("client_id", FLUTTER)])
            .await;
        assert_eq!(status, StatusCode::OK);
    }
    // A token of another client cannot be revoked by this one.
    let fresh = auth.login("admin", ADMIN_PASSWORD).await.refresh.unwrap();
    let (status, _, body) = auth
        .revoke(&[("token", &fresh), ("client_id", "codelab-cli")])
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let (status, _, body) = auth.revoke(&[("client_id", FLUTTER)]).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"], "invalid_request");
}

#[tokio::test]
async fn userinfo_needs_a_valid_bearer_access_token() {
    let auth = Auth::start(Backend::Sqlite).await;
    let tokens = auth.login("admin", ADMIN_PASSWORD).await;
    let bearer = format!("bearer {}", tokens.access);
    let response = auth.userinfo(Some(&bearer)).await;
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["username"], "admin");
    assert_eq!(body["email"], "admin@codelab.local");
    assert_eq!(body["is_admin"], true);
    assert_eq!(body["scope"], "api:read api:write");

    let response = auth.userinfo(None).await;
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    let challenge = response.headers()["www-authenticate"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        challenge.starts_with("Bearer") && !challenge.contains("error="),
        "{challenge}"
    );

    // A refresh token is not an access token.
    for token in [tokens.refresh.as_deref().unwrap(), "garbage"] {
        let response = auth.userinfo(Some(&format!("Bearer {token}"))).await;
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        let challenge = response.headers()["www-authenticate"].to_str().unwrap();
        assert!(challenge.contains("error=\"invalid_token\""), "{challenge}");
    }
}

#[tokio::test]
async fn discovery_metadata_matches_what_is_served() {
    let auth = Auth::start(Backend::Sqlite).await;
    let (status, _, metadata) = auth
        .get_json("/.well-known/oauth-authorization-server")
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(metadata["issuer"], auth.base);
    assert_eq!(
        metadata["code_challenge_methods_supported"],
        serde_json::json!(["S256"])
    );
    assert_eq!(
        metadata["response_types_supported"],
        serde_json::json!(["code"])
    );
    // Every advertised endpoint is really served (a wrong method or empty request is a 4xx
    // from the handler, never a 404).
    for (field, method) in [
        ("token_endpoint", "POST"),
        ("authorization_endpoint", "GET"),
        ("jwks_uri", "GET"),
        ("revocation_endpoint", "POST"),
        ("userinfo_endpoint", "GET"),
    ] {
        let url = metadata[field].as_str().unwrap();
        assert!(url.starts_with(&auth.base), "{field}: {url}");
        let request = if method == "GET" {
            auth.http.get(url)
        } else {
            auth.http.post(url)
        };
        let status = request.send().await.unwrap().status();
        assert_ne!(status, StatusCode::NOT_FOUND, "{field}");
        assert_ne!(status, StatusCode::METHOD_NOT_ALLOWED, "{field}");
    }
    // Introspection is internal: the public metadata does not point clients at it.
    assert!(metadata.get("introspection_endpoint").is_none());
    let (_, _, openid) = auth.get_json("/.well-known/openid-configuration").await;
    assert_eq!(openid["issuer"], auth.base);
    assert_eq!(
        openid["subject_types_supported"],
        serde_json::json!(["public"])
    );
    assert_eq!(
        openid["id_token_signing_alg_values_supported"],
        serde_json::json!(["RS256"])
    );

    let (_, _, openapi) = auth.get_json("/openapi.json").await;
    assert_eq!(openapi["openapi"], "3.1.0");
    for path in [
        "/oauth/token",
        "/oauth/authorize",
        "/oauth/revoke",
        "/oauth/introspect",
        "/oauth/userinfo",
        "/.well-known/jwks.json",
    ] {
        assert!(openapi["paths"].get(path).is_some(), "{path}");
    }
    // Every operation lists the listener's refusals (crates/codelab/tests/schema sends bodies
    // over the limit to each) and the token routes their 429.
    for (path, item) in openapi["paths"].as_object().unwrap() {
        for (method, operation) in item.as_object().unwrap() {
            for status in ["408", "413"] {
                assert!(
                    operation["responses"].get(status).is_some(),
                    "{method} {path} does not list {status}"
                );
            }
        }
    }
    for path in ["/oauth/token", "/oauth/revoke", "/oauth/introspect"] {
        assert!(
            openapi["paths"][path]["post"]["responses"]
                .get("429")
                .is_some()
        );
    }
}

#[tokio::test]
async fn health_ready_and_metrics() {
    let auth = Auth::start(Backend::Sqlite).await;
    let (status, _, health) = auth.get_json("/health").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(health["status"], "healthy");
    assert_eq!(health["environment"], "development");
    assert!(health["version"].is_string());
    let (status, _, ready) = auth.get_json("/ready").await;
    assert_eq!(status, StatusCode::OK, "{ready}");
    assert_eq!(ready["checks"]["database"], "ok");
    assert_eq!(ready["checks"]["cache"], "ok");

    auth.login("admin", ADMIN_PASSWORD).await;
    let (status, _, _) = auth.password_grant("admin", "nope-nope", None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (_, _, text) = auth.get_text("/metrics").await;
    assert!(
        text.contains(
            "codelab_auth_token_requests_total{grant_type=\"password\",outcome=\"success\"}"
        ),
        "{text}"
    );
    assert!(text.contains("codelab_auth_failed_logins_total"));
    assert!(text.contains("codelab_auth_token_request_duration_seconds"));
    assert!(!text.contains(ADMIN_PASSWORD));
}
