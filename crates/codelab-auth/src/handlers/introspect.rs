//! `POST /oauth/introspect` (RFC 7662), for confidential clients only (resource servers).
//!
//! An active token gets its full claim set; anything else (expired, revoked, garbage, a
//! refresh token whose row is revoked, a token of a disabled user) only `{"active":false}`.

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::error::{OAuthError, no_store_headers};
use super::form::{client_credentials, parse_form_body};
use super::{Caller, authenticate_client};
use crate::AppState;
use crate::limits::RateDecision;
use crate::tokens::{self, Claims, TokenType};

/// `POST /oauth/introspect`. Counted by the per-IP limiter in the bucket it shares with
/// revocation (see [`crate::limits::Limits::check_client_rate`]).
pub async fn introspect_token(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let ip = state.limits.client_key(caller.peer, &headers);
    if let RateDecision::Limited { limit, retry_after } = state.limits.check_client_rate(&ip).await
    {
        return OAuthError::rate_limited(limit, retry_after).into_response();
    }
    match introspect(&state, &headers, &body).await {
        Ok(answer) => (no_store_headers(), Json(answer)).into_response(),
        Err(error) => error.into_response(),
    }
}

async fn introspect(
    state: &AppState,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Value, OAuthError> {
    let form = parse_form_body(headers, body)?;
    let credentials = client_credentials(headers, &form)?;
    // RFC 7662 §2.1 and RFC 6749 §5.2: a call without client authentication is refused as
    // invalid_client (401 with the Basic challenge), not as a malformed request.
    if credentials
        .client_id
        .as_deref()
        .is_none_or(|id| id.trim().is_empty())
    {
        return Err(OAuthError::invalid_client(
            "Client authentication is required (HTTP Basic)",
            true,
        ));
    }
    let client = authenticate_client(state, &credentials, "introspect").await?;
    // RFC 7662 §2.1: the endpoint requires authorization; here, a confidential client.
    if !client.is_confidential {
        return Err(OAuthError::invalid_client(
            "Introspection is only available to confidential clients",
            credentials.basic,
        ));
    }
    let token = form.require("token")?;
    let inactive = json!({ "active": false });
    let prefer_refresh = form.get("token_type_hint") == Some("refresh_token");
    let order = if prefer_refresh {
        [TokenType::Refresh, TokenType::Access]
    } else {
        [TokenType::Access, TokenType::Refresh]
    };
    let mut verified = None;
    for kind in order {
        if let Ok(claims) = state.tokens.verify(token, kind).await {
            verified = Some((kind, claims));
            break;
        }
    }
    let Some((kind, claims)) = verified else {
        return Ok(inactive);
    };
    if kind == TokenType::Refresh {
        let record = state
            .store
            .find_refresh_token(&tokens::jti_hash(&claims.jti))
            .await?;
        match record {
            Some(record) if !record.revoked && record.expires_at > state.now() => {}
            _ => return Ok(inactive),
        }
    }
    // A token of a user who was disabled (or deleted) since it was issued is no longer active.
    let username = if claims.sub == claims.client_id {
        None
    } else {
        match state.store.get_user(&claims.sub).await? {
            Some(user) if user.is_active => Some(user.username),
            _ => return Ok(inactive),
        }
    };
    Ok(active_answer(&claims, kind, username))
}

fn active_answer(claims: &Claims, kind: TokenType, username: Option<String>) -> Value {
    let (token_type, token_use) = match kind {
        TokenType::Access => ("Bearer", "access_token"),
        TokenType::Refresh => ("refresh_token", "refresh_token"),
    };
    let mut answer = json!({
        "active": true,
        "scope": claims.scope,
        "client_id": claims.client_id,
        "token_type": token_type,
        "token_use": token_use,
        "exp": claims.exp,
        "iat": claims.iat,
        "nbf": claims.nbf,
        "sub": claims.sub,
        "aud": claims.aud,
        "iss": claims.iss,
        "jti": claims.jti,
    });
    if let (Some(username), Some(map)) = (username, answer.as_object_mut()) {
        map.insert("username".to_owned(), Value::String(username));
    }
    answer
}
