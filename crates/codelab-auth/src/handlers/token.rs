//! `POST /oauth/token` (RFC 6749 §3.2): the password and refresh grants exactly as the original
//! answers them (the Flutter IDE maps 401 and 429), plus `client_credentials` for confidential
//! clients and `authorization_code` with PKCE S256 (RFC 7636) for the website.

use std::sync::Arc;
use std::time::Instant;

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderName, HeaderValue};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};

use super::error::{OAuthError, no_store_headers};
use super::form::{FormParams, client_credentials, parse_form_body};
use super::{
    Caller, Issued, RequestContext, SignIn, SignInChannel, audit, authenticate_client, grant_scope,
    issue_tokens, narrow_scope, sign_in, sign_tokens,
};
use crate::AppState;
use crate::limits::RateDecision;
use crate::metrics;
use crate::model::{AuditEvent, Client, RotateOutcome, Rotation};
use crate::tokens::{self, TokenType};

/// Longest accepted username (the original's validator allows 255).
const MAX_USERNAME_CHARS: usize = 255;

/// `POST /oauth/token`.
pub async fn issue_token(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let started = Instant::now();
    let ctx = RequestContext::new(&state, caller, &headers);
    let rate = state.limits.check_rate(&ctx.ip).await;
    let form = parse_form_body(&headers, &body);
    let grant_type = form
        .as_ref()
        .ok()
        .and_then(|f| f.get("grant_type"))
        .map(str::to_owned);
    let grant_label = metrics::grant_label(grant_type.as_deref());

    let result = match (rate, form) {
        (RateDecision::Limited { limit, retry_after }, _) => {
            Err(OAuthError::rate_limited(limit, retry_after))
        }
        (_, Err(error)) => Err(error),
        (_, Ok(form)) => dispatch(&state, &ctx, &headers, &form).await,
    };
    let outcome = match &result {
        Ok(_) => "success",
        Err(error) => error.code(),
    };
    metrics::counter_token_request(grant_label, outcome);
    metrics::histogram_token_duration(grant_label, started.elapsed().as_secs_f64());

    let mut response = match result {
        Ok(body) => (no_store_headers(), Json(body)).into_response(),
        Err(error) => error.into_response(),
    };
    if let RateDecision::Allowed { limit, remaining } = rate {
        let headers = response.headers_mut();
        headers.insert(
            HeaderName::from_static("x-ratelimit-limit"),
            HeaderValue::from(limit),
        );
        headers.insert(
            HeaderName::from_static("x-ratelimit-remaining"),
            HeaderValue::from(remaining),
        );
    }
    response
}

async fn dispatch(
    state: &AppState,
    ctx: &RequestContext,
    headers: &HeaderMap,
    form: &FormParams,
) -> Result<super::TokenResponse, OAuthError> {
    let grant_type = form.require("grant_type")?;
    if !matches!(
        grant_type,
        "password" | "refresh_token" | "client_credentials" | "authorization_code"
    ) {
        return Err(OAuthError::unsupported_grant_type(format!(
            "Grant type '{grant_type}' is not supported"
        )));
    }
    let credentials = client_credentials(headers, form)?;
    match grant_type {
        "password" => password_grant(state, ctx, form, &credentials).await,
        "refresh_token" => refresh_grant(state, ctx, form, &credentials).await,
        "client_credentials" => client_credentials_grant(state, ctx, form, &credentials).await,
        _ => authorization_code_grant(state, ctx, form, &credentials).await,
    }
}

/// Refuses a grant the client is not registered for (RFC 6749 §5.2 `unauthorized_client`).
fn require_grant(client: &Client, grant_type: &str) -> Result<(), OAuthError> {
    if client.allows_grant(grant_type) {
        Ok(())
    } else {
        Err(OAuthError::unauthorized_client(format!(
            "Client is not allowed to use grant type '{grant_type}'"
        )))
    }
}

/// The original's generic answer to every password-grant failure.
fn bad_credentials() -> OAuthError {
    OAuthError::invalid_grant("Invalid username or password")
}

async fn password_grant(
    state: &AppState,
    ctx: &RequestContext,
    form: &FormParams,
    credentials: &super::form::ClientCredentials,
) -> Result<super::TokenResponse, OAuthError> {
    let (Some(username), Some(password)) = (form.get("username"), form.get("password")) else {
        return Err(OAuthError::invalid_request(
            "Missing required parameters: username and password",
        ));
    };
    if username.chars().count() > MAX_USERNAME_CHARS {
        return Err(OAuthError::invalid_request(
            "Parameter username is too long",
        ));
    }
    let client = authenticate_client(state, credentials, "token").await?;
    require_grant(&client, "password")?;
    let user = match sign_in(
        state,
        &ctx.ip,
        username,
        password,
        &SignInChannel::PasswordGrant,
    )
    .await?
    {
        SignIn::Success(user) => user,
        SignIn::Locked(lockout) => {
            return Err(OAuthError::locked(lockout.message, lockout.retry_after));
        }
        SignIn::Failure => {
            // The account, or a keyed hash of text that names none (it may be a password).
            let event = AuditEvent {
                client_id: Some(client.client_id.clone()),
                event_data: Some(crate::audit::failed_login_data(state, username).await),
                error_message: Some("Invalid credentials".to_owned()),
                ..ctx.event("login_failed", false)
            };
            audit(state, event).await;
            return Err(bad_credentials());
        }
    };
    let scope = grant_scope(form.get("scope"), &client.allowed_scopes, user.is_admin)?;
    let Issued {
        response,
        refresh_record,
    } = issue_tokens(state, &user.id, &client, &scope, true)?;
    if let Some(record) = refresh_record {
        state.store.insert_refresh_token(record).await?;
    }
    let event = AuditEvent {
        user_id: Some(user.id.clone()),
        client_id: Some(client.client_id.clone()),
        event_data: Some(serde_json::json!({ "scope": scope })),
        ..ctx.event("login_success", true)
    };
    audit(state, event).await;
    Ok(response)
}

async fn refresh_grant(
    state: &AppState,
    ctx: &RequestContext,
    form: &FormParams,
    credentials: &super::form::ClientCredentials,
) -> Result<super::TokenResponse, OAuthError> {
    let Some(presented) = form.get("refresh_token") else {
        return Err(OAuthError::invalid_request(
            "Missing required parameter: refresh_token",
        ));
    };
    let client = authenticate_client(state, credentials, "token").await?;
    require_grant(&client, "refresh_token")?;
    let claims = state
        .tokens
        .verify(presented, TokenType::Refresh)
        .await
        .map_err(|_| OAuthError::invalid_grant("Invalid or expired refresh token"))?;
    let old_hash = tokens::jti_hash(&claims.jti);
    let now = state.now();
    // The verified token names its user, client and scope, and the rotation commits only
    // while the stored row agrees (and is active, unexpired, its user enabled): so the grant
    // signs first and then writes once, with no read before (docs/auth.md, "Tokens and
    // keys"). A request that cannot succeed that way is answered from the stored row.
    // RFC 6749 §6 / §10.4: a refresh token is bound to the client it was issued to.
    let narrowed = narrow_scope(form.get("scope"), &claims.scope);
    let (Ok(scope), true) = (narrowed, claims.client_id == client.client_id) else {
        return Err(refusal(state, ctx, form, &client, &claims.client_id, &old_hash, now).await);
    };
    // The new refresh token keeps the old one's scope, even when the access token was narrowed
    // (RFC 6749 §6: a rotated refresh token's scope is identical to the old).
    let (response, refresh) =
        sign_tokens(state, &claims.sub, &client, &scope, Some(&claims.scope))?;
    let Some(refresh) = refresh else {
        return Err(OAuthError::server_error(
            "refresh grant issued no refresh token",
        ));
    };
    let rotation = Rotation {
        old_jti_hash: old_hash,
        user_id: claims.sub,
        client_id: claims.client_id,
        scope: claims.scope,
        new_jti_hash: tokens::jti_hash(&refresh.jti),
        new_expires_at: refresh.expires_at,
    };
    // Committed with the rotation: one commit per grant, and no rotation without its row.
    let event = AuditEvent {
        user_id: Some(rotation.user_id.clone()),
        client_id: Some(client.client_id.clone()),
        ..ctx.event("token_refresh", true)
    };
    // One atomic check-and-revoke: of two concurrent refreshes with the same token, exactly
    // one finds it active; the other sees it revoked and is treated as reuse.
    match state
        .store
        .rotate_refresh_token(&rotation, &event, now)
        .await?
    {
        RotateOutcome::Rotated { .. } => {}
        RotateOutcome::NotFound => {
            return Err(OAuthError::invalid_grant("Refresh token not found"));
        }
        RotateOutcome::Expired { .. } => {
            return Err(OAuthError::invalid_grant("Refresh token has expired"));
        }
        RotateOutcome::AlreadyRevoked { old } => {
            return Err(
                reuse_detected(state, ctx, &old.family_id, &old.user_id, &old.client_id).await,
            );
        }
        // Another client's, another user's or scope, or a disabled user's token.
        RotateOutcome::Mismatch { .. } => {
            return Err(OAuthError::invalid_grant("Invalid refresh token"));
        }
    }
    metrics::counter_refresh_rotation();
    Ok(response)
}

/// Why a verified refresh token that names another client, or a request for a scope beyond
/// its grant, is refused: from the stored row, checked in the grant's order (unknown,
/// revoked, expired, client, user, scope), so a copy of a rotated token is reuse whatever
/// else is wrong with the request.
async fn refusal(
    state: &AppState,
    ctx: &RequestContext,
    form: &FormParams,
    client: &Client,
    claimed_client_id: &str,
    old_hash: &str,
    now: DateTime<Utc>,
) -> OAuthError {
    let (old, owner_active) = match state.store.find_refresh_token_with_owner(old_hash).await {
        Ok(Some(found)) => found,
        Ok(None) => return OAuthError::invalid_grant("Refresh token not found"),
        Err(error) => return error.into(),
    };
    if old.revoked {
        return reuse_detected(state, ctx, &old.family_id, &old.user_id, &old.client_id).await;
    }
    if old.expires_at <= now {
        return OAuthError::invalid_grant("Refresh token has expired");
    }
    if claimed_client_id != client.client_id || old.client_id != client.client_id || !owner_active {
        return OAuthError::invalid_grant("Invalid refresh token");
    }
    match narrow_scope(form.get("scope"), &old.scope) {
        Err(error) => error,
        // Not reached while the row matches the token; refuse rather than guess.
        Ok(_) => OAuthError::invalid_grant("Invalid refresh token"),
    }
}

/// A rotated (or revoked) refresh token came back: someone holds a copy. RFC 9700 §4.14.2:
/// revoke the whole family (the chain started by that login); the user's other sessions stay.
async fn reuse_detected(
    state: &AppState,
    ctx: &RequestContext,
    family_id: &str,
    user_id: &str,
    client_id: &str,
) -> OAuthError {
    let revoked = match state.store.revoke_family(family_id, state.now()).await {
        Ok(revoked) => revoked,
        Err(error) => return OAuthError::server_error(error),
    };
    metrics::counter_refresh_reuse();
    tracing::warn!(
        user_id,
        client_id,
        revoked,
        "refresh token reuse detected; family revoked"
    );
    let event = AuditEvent {
        user_id: Some(user_id.to_owned()),
        client_id: Some(client_id.to_owned()),
        event_data: Some(serde_json::json!({ "revoked_tokens": revoked })),
        error_message: Some("Refresh token reuse detected".to_owned()),
        ..ctx.event("refresh_reuse_detected", false)
    };
    audit(state, event).await;
    OAuthError::invalid_grant("Refresh token has been revoked (reuse detected)")
}

async fn client_credentials_grant(
    state: &AppState,
    ctx: &RequestContext,
    form: &FormParams,
    credentials: &super::form::ClientCredentials,
) -> Result<super::TokenResponse, OAuthError> {
    let client = authenticate_client(state, credentials, "token").await?;
    // RFC 6749 §4.4: only confidential clients may use this grant.
    if !client.is_confidential {
        return Err(OAuthError::unauthorized_client(
            "client_credentials requires a confidential client",
        ));
    }
    require_grant(&client, "client_credentials")?;
    // A service acting for itself: every scope it is registered for may be granted.
    let scope = grant_scope(form.get("scope"), &client.allowed_scopes, true)?;
    let Issued { response, .. } = issue_tokens(state, &client.client_id, &client, &scope, false)?;
    let event = AuditEvent {
        client_id: Some(client.client_id.clone()),
        event_data: Some(serde_json::json!({ "scope": scope })),
        ..ctx.event("client_credentials_token", true)
    };
    audit(state, event).await;
    Ok(response)
}

/// Whether `verifier` has RFC 7636 §4.1's shape: 43 to 128 unreserved characters.
fn valid_verifier(verifier: &str) -> bool {
    (43..=128).contains(&verifier.len())
        && verifier
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._~".contains(&b))
}

async fn authorization_code_grant(
    state: &AppState,
    ctx: &RequestContext,
    form: &FormParams,
    credentials: &super::form::ClientCredentials,
) -> Result<super::TokenResponse, OAuthError> {
    let code = form.require("code")?;
    let redirect_uri = form.require("redirect_uri")?;
    let verifier = form.require("code_verifier")?;
    if !valid_verifier(verifier) {
        return Err(OAuthError::invalid_request(
            "code_verifier must be 43 to 128 characters of [A-Za-z0-9-._~] (RFC 7636 §4.1)",
        ));
    }
    let client = authenticate_client(state, credentials, "token").await?;
    require_grant(&client, "authorization_code")?;
    // Taken atomically: a code works once, even when two requests race with it.
    let Some(grant) = state
        .store
        .consume_authorization_code(&tokens::sha256_hex(code.as_bytes()), state.now())
        .await?
    else {
        return Err(OAuthError::invalid_grant_400(
            "Invalid, expired or already used authorization code",
        ));
    };
    if grant.client_id != client.client_id {
        return Err(OAuthError::invalid_grant_400(
            "Authorization code was issued to another client",
        ));
    }
    // RFC 6749 §4.1.3: the same redirect_uri as in the authorization request.
    if grant.redirect_uri != redirect_uri {
        return Err(OAuthError::invalid_grant_400("redirect_uri does not match"));
    }
    // RFC 7636 §4.6: BASE64URL(SHA256(verifier)) must equal the stored S256 challenge.
    if !constant_time_eq(
        tokens::pkce_s256(verifier).as_bytes(),
        grant.code_challenge.as_bytes(),
    ) {
        return Err(OAuthError::invalid_grant_400("PKCE verification failed"));
    }
    let user = match state.store.get_user(&grant.user_id).await? {
        Some(user) if user.is_active => user,
        _ => {
            return Err(OAuthError::invalid_grant_400(
                "The user is no longer active",
            ));
        }
    };
    let new_family = client.allows_grant("refresh_token");
    let Issued {
        response,
        refresh_record,
    } = issue_tokens(state, &user.id, &client, &grant.scope, new_family)?;
    if let Some(record) = refresh_record {
        state.store.insert_refresh_token(record).await?;
    }
    let event = AuditEvent {
        user_id: Some(user.id.clone()),
        client_id: Some(client.client_id.clone()),
        event_data: Some(serde_json::json!({ "scope": grant.scope })),
        ..ctx.event("authorization_code_exchange", true)
    };
    audit(state, event).await;
    Ok(response)
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    use subtle::ConstantTimeEq;
    a.len() == b.len() && bool::from(a.ct_eq(b))
}
