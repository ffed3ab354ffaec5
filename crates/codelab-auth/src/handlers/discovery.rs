//! `/.well-known/jwks.json` (RFC 7517), `/.well-known/oauth-authorization-server` (RFC 8414),
//! `/.well-known/openid-configuration`, `/health` (the original's shape) and `/`.
//!
//! Every URL in the metadata is built from `public_url` (what `codelab up` or the operator says
//! clients use), and lists only what is really served.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::AppState;
use crate::model::ADMIN_SCOPE;

/// Browsers and verifiers may cache the key set this long; short so a rotation propagates
/// well within an access token's lifetime (the original said 3600).
const JWKS_MAX_AGE: &str = "public, max-age=300";

/// `GET /.well-known/jwks.json`.
pub async fn show_jwks(State(state): State<Arc<AppState>>) -> Response {
    let mut response = Json(state.keys.jwks()).into_response();
    response.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static(JWKS_MAX_AGE),
    );
    response
}

/// The RFC 8414 metadata (also the base of the OpenID document). Introspection is left out: it
/// serves callers inside the deployment at auth's own address and is not routed at the public
/// URL (docs/security.md).
pub fn metadata(state: &AppState) -> Value {
    let base = state.config.public_url.trim_end_matches('/');
    let url = |path: &str| format!("{base}{path}");
    json!({
        "issuer": state.config.issuer(),
        "authorization_endpoint": url("/oauth/authorize"),
        "token_endpoint": url("/oauth/token"),
        "jwks_uri": url("/.well-known/jwks.json"),
        "revocation_endpoint": url("/oauth/revoke"),
        "userinfo_endpoint": url("/oauth/userinfo"),
        "grant_types_supported": ["password", "refresh_token", "authorization_code", "client_credentials"],
        "response_types_supported": ["code"],
        "response_modes_supported": ["query"],
        "code_challenge_methods_supported": ["S256"],
        "token_endpoint_auth_methods_supported": ["none", "client_secret_basic", "client_secret_post"],
        "revocation_endpoint_auth_methods_supported": ["none", "client_secret_basic", "client_secret_post"],
        "scopes_supported": ["api:read", "api:write", ADMIN_SCOPE],
        "service_documentation": url("/openapi.json"),
    })
}

/// `GET /.well-known/oauth-authorization-server`.
pub async fn show_oauth_metadata(State(state): State<Arc<AppState>>) -> Response {
    cached_json(metadata(&state))
}

/// `GET /.well-known/openid-configuration`: the same metadata plus the fields OpenID
/// Connect Discovery requires. No ID tokens are issued; RS256 is what our JWTs use.
pub async fn show_openid_configuration(State(state): State<Arc<AppState>>) -> Response {
    let mut document = metadata(&state);
    if let Some(map) = document.as_object_mut() {
        map.insert("subject_types_supported".into(), json!(["public"]));
        map.insert(
            "id_token_signing_alg_values_supported".into(),
            json!(["RS256"]),
        );
    }
    cached_json(document)
}

fn cached_json(value: Value) -> Response {
    let mut response = Json(value).into_response();
    response.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=3600"),
    );
    response
}

/// `GET /health`: liveness in the original's shape (no database probe; see `/ready`).
pub async fn show_health(State(state): State<Arc<AppState>>) -> Json<Value> {
    Json(json!({
        "status": "healthy",
        "service": crate::SERVICE_NAME,
        "version": state.config.version,
        "environment": state.environment.as_str(),
    }))
}

/// `GET /`: the original's service banner (its `/docs` is our `/openapi.json`).
pub async fn show_root(State(state): State<Arc<AppState>>) -> Json<Value> {
    Json(json!({
        "service": "CodeLab Auth Service",
        "version": state.config.version,
        "docs": "/openapi.json",
    }))
}
