//! `/admin/*`: what `codelab admin user|client list` and the user commands do, over HTTP, for
//! the website's admin pages. Every call needs `Authorization: Bearer <access token>` whose
//! scope holds `api:admin` and whose user is, right now, an active administrator; the work
//! itself is [`crate::admin`]'s (checks, hashing, audit rows). Each change's audit row names
//! the acting administrator and the caller's IP (resolved through the trusted proxies).
//!
//! Not routed by nginx or `codelab up`'s public listener: callers reach the auth service
//! directly (the website does, server to server).

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use super::error::{OAuthError, no_store_headers};
use super::userinfo::bearer_token;
use super::{Caller, RequestContext};
use crate::AppState;
use crate::admin::{self, Actor, AdminError, UserUpdate};
use crate::model::{ADMIN_SCOPE, User};
use crate::tokens::TokenType;

/// Longest accepted password, as the token endpoint's form limit.
const MAX_PASSWORD_CHARS: usize = super::form::MAX_PASSWORD_CHARS;

/// `POST /admin/users`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NewUserBody {
    username: String,
    password: String,
    #[serde(default)]
    email: Option<String>,
    #[serde(default)]
    admin: bool,
}

/// `POST /admin/users/{username}/password`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PasswordBody {
    password: String,
}

/// RFC 6750 §3.1: a valid token without the scope the call needs.
fn insufficient_scope(description: &str) -> OAuthError {
    OAuthError::new(StatusCode::FORBIDDEN, "insufficient_scope", description).with_header(
        header::WWW_AUTHENTICATE,
        format!("Bearer realm=\"codelab\", error=\"insufficient_scope\", scope=\"{ADMIN_SCOPE}\""),
    )
}

/// The administrator behind the request's Bearer token.
async fn require_admin(state: &AppState, headers: &HeaderMap) -> Result<User, OAuthError> {
    let token = bearer_token(headers)?;
    let claims = state
        .tokens
        .verify(token, TokenType::Access)
        .await
        .map_err(|_| OAuthError::invalid_token("The access token is invalid or expired"))?;
    if !claims.scope.split_whitespace().any(|s| s == ADMIN_SCOPE) {
        return Err(insufficient_scope("This call needs the api:admin scope"));
    }
    // The scope was granted at login; the account may have lost its rights since.
    match state.store.get_user(&claims.sub).await? {
        Some(user) if user.is_active && user.is_admin => Ok(user),
        _ => Err(insufficient_scope(
            "The token's user is not an active administrator",
        )),
    }
}

/// The administrator making a changing call ([`require_admin`]) and its audit actor: the
/// administrator and the client's IP bucket (the same resolution through trusted proxies as
/// the limits use).
async fn acting_admin(
    state: &AppState,
    caller: Caller,
    headers: &HeaderMap,
) -> Result<(User, Actor), OAuthError> {
    let admin = require_admin(state, headers).await?;
    let context = RequestContext::new(state, caller, headers);
    let actor = Actor::admin_api(admin.id.clone(), context.ip, context.user_agent);
    Ok((admin, actor))
}

fn parse_body<T: DeserializeOwned>(body: &[u8]) -> Result<T, OAuthError> {
    serde_json::from_slice(body)
        .map_err(|e| OAuthError::invalid_request(format!("expected a JSON body: {e}")))
}

/// One envelope for admin failures: the RFC 6749 shape, with the statuses a REST caller
/// expects (400 bad input, 404 unknown, 409 taken).
fn admin_error(error: AdminError) -> OAuthError {
    match error {
        AdminError::InvalidUsername(_)
        | AdminError::InvalidEmail(_)
        | AdminError::InvalidPassword(_)
        | AdminError::InvalidClient(_) => OAuthError::invalid_request(error.to_string()),
        AdminError::Taken(_) => {
            OAuthError::new(StatusCode::CONFLICT, "conflict", error.to_string())
        }
        AdminError::UnknownUser(_) | AdminError::UnknownClient(_) => {
            OAuthError::new(StatusCode::NOT_FOUND, "not_found", error.to_string())
        }
        AdminError::Hashing(_) | AdminError::Audit(_) | AdminError::Store(_) => {
            OAuthError::server_error(error)
        }
    }
}

fn user_json(user: &User) -> Value {
    json!({
        "id": user.id,
        "username": user.username,
        "email": user.email,
        "is_active": user.is_active,
        "is_admin": user.is_admin,
        "is_verified": user.is_verified,
        "created_at": user.created_at,
        "updated_at": user.updated_at,
        "last_login_at": user.last_login_at,
    })
}

fn update_json(update: &UserUpdate) -> Value {
    json!({
        "user": user_json(&update.user),
        "revoked_refresh_tokens": update.revoked_refresh_tokens,
    })
}

fn answer(result: Result<(StatusCode, Value), OAuthError>) -> Response {
    match result {
        Ok((status, body)) => (status, no_store_headers(), Json(body)).into_response(),
        Err(error) => error.into_response(),
    }
}

fn check_password_length(password: &str) -> Result<(), OAuthError> {
    if password.chars().count() > MAX_PASSWORD_CHARS {
        return Err(OAuthError::invalid_request(format!(
            "password must be at most {MAX_PASSWORD_CHARS} characters"
        )));
    }
    Ok(())
}

/// `GET /admin/users`: every user, by username.
pub async fn list_users(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    let store = state.store.as_ref();
    let list = async {
        let users = admin::list_users(store).await.map_err(admin_error)?;
        let users: Vec<Value> = users.iter().map(user_json).collect();
        Ok(json!({ "users": users }))
    };
    admin_read(&state, &headers, list).await
}

/// Answers a reading call with `read`'s JSON once the caller is an administrator.
async fn admin_read(
    state: &AppState,
    headers: &HeaderMap,
    read: impl Future<Output = Result<Value, OAuthError>>,
) -> Response {
    let result = match require_admin(state, headers).await {
        Ok(_) => read.await.map(|body| (StatusCode::OK, body)),
        Err(error) => Err(error),
    };
    answer(result)
}

/// `POST /admin/users` `{"username","password","email"?,"admin"?}`: 201 with the user.
pub async fn create_user(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    answer(
        async {
            let (actor, audit_actor) = acting_admin(&state, caller, &headers).await?;
            let body: NewUserBody = parse_body(&body)?;
            check_password_length(&body.password)?;
            let email = body.email.as_deref().map(str::trim).filter(|e| !e.is_empty());
            let user = admin::add_user_by(
                state.store.as_ref(),
                &audit_actor,
                body.username.trim(),
                &body.password,
                email,
                body.admin,
            )
            .await
            .map_err(admin_error)?;
            tracing::info!(actor = %actor.id, user = %user.id, admin = body.admin, "user created over the admin API");
            Ok((StatusCode::CREATED, user_json(&user)))
        }
        .await,
    )
}

/// `POST /admin/users/{username}/{disable|enable|password}`.
pub async fn change_user(
    State(state): State<Arc<AppState>>,
    Path((username, action)): Path<(String, String)>,
    caller: Caller,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    answer(
        async {
            let (actor, audit_actor) = acting_admin(&state, caller, &headers).await?;
            let store = state.store.as_ref();
            let update = match action.as_str() {
                "disable" => {
                    if actor.username.eq_ignore_ascii_case(&username) {
                        // Locking oneself out leaves nobody to undo it from the console.
                        return Err(OAuthError::invalid_request(
                            "an administrator cannot disable their own account",
                        ));
                    }
                    admin::set_user_enabled_by(store, &audit_actor, &username, false).await
                }
                "enable" => admin::set_user_enabled_by(store, &audit_actor, &username, true).await,
                "password" => {
                    let body: PasswordBody = parse_body(&body)?;
                    check_password_length(&body.password)?;
                    admin::set_password_by(store, &audit_actor, &username, &body.password).await
                }
                _ => {
                    return Err(OAuthError::new(
                        StatusCode::NOT_FOUND,
                        "not_found",
                        "Not found",
                    ));
                }
            }
            .map_err(admin_error)?;
            tracing::info!(actor = %actor.id, user = %update.user.id, action = %action, "user changed over the admin API");
            Ok((StatusCode::OK, update_json(&update)))
        }
        .await,
    )
}

/// `GET /admin/clients`: every OAuth client (never a secret or its hash).
pub async fn list_clients(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    let store = state.store.as_ref();
    let list = async {
        let clients = admin::list_clients(store).await.map_err(admin_error)?;
        Ok(json!({ "clients": clients }))
    };
    admin_read(&state, &headers, list).await
}
