//! `GET /openapi.json`: a hand-written OpenAPI 3.1 description of exactly the routes served.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use serde_json::{Value, json};

use crate::AppState;

fn error_response(description: &str) -> Value {
    json!({
        "description": description,
        "content": { "application/json": { "schema": { "$ref": "#/components/schemas/OAuthError" } } }
    })
}

fn form_body(schema: &str) -> Value {
    json!({
        "required": true,
        "content": { "application/x-www-form-urlencoded": {
            "schema": { "$ref": format!("#/components/schemas/{schema}") }
        } }
    })
}

fn json_ok(description: &str, schema: Value) -> Value {
    json!({ "description": description, "content": { "application/json": { "schema": schema } } })
}

/// The OpenAPI document for this deployment (its server URL is `public_url`).
pub fn document(state: &AppState) -> Value {
    let mut doc = operations_and_schemas(state);
    add_listener_refusals(&mut doc);
    doc
}

/// Every route sits behind the shared listener layers (docs/architecture.md), which answer a
/// body over AUTH_SERVICE__MAX_BODY_BYTES with 413 and a body that arrives too slowly with
/// 408, both as an OAuth error: so every operation lists both.
fn add_listener_refusals(doc: &mut Value) {
    codelab_core::http::openapi::add_to_every_operation(
        doc,
        &[
            (
                "408",
                error_response(
                    "request_timeout: the body did not arrive in time (HTTP__BODY_READ_TIMEOUT)",
                ),
            ),
            (
                "413",
                error_response(
                    "payload_too_large: the body is larger than AUTH_SERVICE__MAX_BODY_BYTES",
                ),
            ),
        ],
    );
}

fn operations_and_schemas(state: &AppState) -> Value {
    let string = json!({ "type": "string" });
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "CodeLab Auth Service",
            "version": state.config.version,
            "description": "OAuth 2.0 authorization server issuing RS256 JWTs (RFC 6749, 7636, 7009, 7662, 8414)."
        },
        "servers": [{ "url": state.config.public_url.trim_end_matches('/') }],
        "paths": {
            "/oauth/token": { "post": {
                "summary": "Issue tokens (password, refresh_token, client_credentials, authorization_code + PKCE)",
                "security": [{}, { "clientBasic": [] }],
                "requestBody": form_body("TokenRequest"),
                "responses": {
                    "200": json_ok("Tokens (Cache-Control: no-store)", json!({ "$ref": "#/components/schemas/TokenResponse" })),
                    "400": error_response("invalid_request, invalid_scope, unsupported_grant_type, unauthorized_client, invalid_grant (authorization_code)"),
                    "401": error_response("invalid_client; invalid_grant for the password and refresh grants"),
                    "429": error_response("invalid_grant (lockout after failed logins), rate_limit_exceeded, or slow_down (a client secret in an old hash format is being checked)"),
                    "500": error_response("server_error"),
                    "503": error_response("temporarily_unavailable: every password-hashing slot is busy (Retry-After)")
                }
            } },
            "/oauth/authorize": {
                "get": {
                    "summary": "Start the authorization code flow (PKCE S256 required); renders the login page",
                    "parameters": [
                        { "name": "response_type", "in": "query", "required": true, "schema": { "const": "code" } },
                        { "name": "client_id", "in": "query", "required": true, "schema": string },
                        { "name": "redirect_uri", "in": "query", "required": true, "schema": string },
                        { "name": "code_challenge", "in": "query", "required": true, "schema": string },
                        { "name": "code_challenge_method", "in": "query", "required": true, "schema": { "const": "S256" } },
                        { "name": "scope", "in": "query", "schema": string },
                        { "name": "state", "in": "query", "schema": string }
                    ],
                    "responses": {
                        "200": { "description": "Login page", "content": { "text/html": {} } },
                        "302": { "description": "Error redirect to the registered redirect_uri" },
                        "400": { "description": "Unknown client or unregistered redirect_uri (HTML, never a redirect)", "content": { "text/html": {} } }
                    }
                },
                "post": {
                    "summary": "Submit the login form (CSRF-protected); redirects with code and state",
                    "requestBody": { "required": true, "content": { "application/x-www-form-urlencoded": { "schema": { "type": "object" } } } },
                    "responses": {
                        "303": { "description": "Redirect to redirect_uri with code and state, or error=access_denied" },
                        "200": { "description": "Login page again with an error", "content": { "text/html": {} } },
                        "400": { "description": "Bad request or CSRF failure (HTML)", "content": { "text/html": {} } },
                        "429": { "description": "Locked out or rate-limited (HTML, Retry-After)", "content": { "text/html": {} } },
                        "503": { "description": "Every password-hashing slot is busy (HTML, Retry-After)", "content": { "text/html": {} } }
                    }
                }
            },
            "/oauth/revoke": { "post": {
                "summary": "Revoke a token (RFC 7009); a refresh token revokes its rotation family",
                "security": [{}, { "clientBasic": [] }],
                "requestBody": form_body("TokenActionRequest"),
                "responses": {
                    "200": { "description": "Revoked, or the token was unknown/invalid" },
                    "400": error_response("invalid_request or unauthorized_client"),
                    "401": error_response("invalid_client"),
                    "429": error_response("rate_limit_exceeded (per client address) or slow_down (a client secret in an old hash format is being checked)")
                }
            } },
            "/oauth/introspect": { "post": {
                "summary": "Introspect a token (RFC 7662); confidential clients only, at auth's own address (not routed publicly)",
                "security": [{ "clientBasic": [] }],
                "requestBody": form_body("TokenActionRequest"),
                "responses": {
                    "200": json_ok("Introspection answer", json!({ "$ref": "#/components/schemas/Introspection" })),
                    "400": error_response("invalid_request"),
                    "401": error_response("invalid_client"),
                    "429": error_response("rate_limit_exceeded (per client address) or slow_down (a client secret in an old hash format is being checked)")
                }
            } },
            "/oauth/userinfo": { "get": {
                "summary": "The user an access token belongs to",
                "security": [{ "bearer": [] }],
                "responses": {
                    "200": json_ok("User", json!({ "$ref": "#/components/schemas/UserInfo" })),
                    "401": error_response("invalid_token (WWW-Authenticate: Bearer)")
                }
            } },
            "/.well-known/jwks.json": { "get": {
                "summary": "Public signing keys (RFC 7517)",
                "responses": { "200": json_ok("Key set", json!({ "type": "object", "required": ["keys"] })) }
            } },
            "/.well-known/oauth-authorization-server": { "get": {
                "summary": "Authorization server metadata (RFC 8414)",
                "responses": { "200": json_ok("Metadata", json!({ "type": "object" })) }
            } },
            "/.well-known/openid-configuration": { "get": {
                "summary": "The same metadata in OpenID Connect Discovery form",
                "responses": { "200": json_ok("Metadata", json!({ "type": "object" })) }
            } },
            "/health": { "get": {
                "summary": "Liveness",
                "responses": { "200": json_ok("Healthy", json!({ "type": "object", "properties": {
                    "status": { "const": "healthy" }, "service": string, "version": string, "environment": string
                } })) }
            } },
            "/ready": { "get": {
                "summary": "Readiness: database and cache reachable",
                "responses": {
                    "200": json_ok("Ready", json!({ "type": "object" })),
                    "503": json_ok("Not ready", json!({ "type": "object" }))
                }
            } },
            "/metrics": { "get": {
                "summary": "Prometheus metrics",
                "responses": { "200": { "description": "Prometheus text", "content": { "text/plain": {} } } }
            } },
            "/openapi.json": { "get": {
                "summary": "This document",
                "responses": { "200": json_ok("OpenAPI 3.1", json!({ "type": "object" })) }
            } }
        },
        "components": {
            "securitySchemes": {
                "clientBasic": { "type": "http", "scheme": "basic", "description": "Confidential client id and secret (client_secret_post is also accepted)" },
                "bearer": { "type": "http", "scheme": "bearer", "bearerFormat": "JWT" }
            },
            "schemas": {
                "TokenRequest": { "type": "object", "required": ["grant_type"], "properties": {
                    "grant_type": { "enum": ["password", "refresh_token", "client_credentials", "authorization_code"] },
                    "client_id": string, "client_secret": string,
                    "username": string, "password": string, "scope": string,
                    "refresh_token": string, "code": string, "redirect_uri": string, "code_verifier": string
                } },
                "TokenActionRequest": { "type": "object", "required": ["token"], "properties": {
                    "token": { "type": "string", "minLength": 1 },
                    "token_type_hint": { "enum": ["access_token", "refresh_token"] },
                    "client_id": string, "client_secret": string
                } },
                "TokenResponse": { "type": "object", "required": ["access_token", "token_type", "expires_in", "scope"], "properties": {
                    "access_token": string, "refresh_token": string,
                    "token_type": { "const": "bearer" }, "expires_in": { "type": "integer" }, "scope": string
                } },
                "OAuthError": { "type": "object", "required": ["error", "error_description"], "properties": {
                    "error": string, "error_description": string
                } },
                "Introspection": { "type": "object", "required": ["active"], "properties": {
                    "active": { "type": "boolean" }, "scope": string, "client_id": string, "username": string,
                    "token_type": string, "exp": { "type": "integer" }, "iat": { "type": "integer" },
                    "nbf": { "type": "integer" }, "sub": string, "aud": string, "iss": string, "jti": string
                } },
                "UserInfo": { "type": "object", "properties": {
                    "sub": string, "username": string, "email": { "type": ["string", "null"] },
                    "is_admin": { "type": "boolean" }, "scope": string
                } }
            }
        }
    })
}

/// `GET /openapi.json`.
pub async fn show_openapi(State(state): State<Arc<AppState>>) -> Json<Value> {
    Json(document(&state))
}
