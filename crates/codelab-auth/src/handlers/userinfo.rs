//! `GET /oauth/userinfo`: who a Bearer access token belongs to. Failures follow RFC 6750 §3:
//! 401 with `WWW-Authenticate: Bearer`, plus `error="invalid_token"` when a token was sent.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::error::{OAuthError, no_store_headers};
use crate::AppState;
use crate::tokens::TokenType;

/// The token of an `Authorization: Bearer` header (the scheme is case-insensitive, RFC 6750
/// §2.1); `Err` when there is none.
pub fn bearer_token(headers: &HeaderMap) -> Result<&str, OAuthError> {
    let value = headers
        .get(header::AUTHORIZATION)
        .ok_or_else(OAuthError::missing_token)?
        .to_str()
        .map_err(|_| OAuthError::invalid_request("Malformed Authorization header"))?;
    match value.trim().split_once(' ') {
        Some((scheme, token))
            if scheme.eq_ignore_ascii_case("bearer") && !token.trim().is_empty() =>
        {
            Ok(token.trim())
        }
        _ => Err(OAuthError::missing_token()),
    }
}

/// `GET /oauth/userinfo`.
pub async fn show_userinfo(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    let result = async {
        let token = bearer_token(&headers)?;
        let claims = state
            .tokens
            .verify(token, TokenType::Access)
            .await
            .map_err(|_| OAuthError::invalid_token("The access token is invalid or expired"))?;
        let user = match state.store.get_user(&claims.sub).await? {
            Some(user) if user.is_active => user,
            _ => return Err(OAuthError::invalid_token("The token's user is not active")),
        };
        Ok(json!({
            "sub": user.id,
            "username": user.username,
            "email": user.email,
            "is_admin": user.is_admin,
            "scope": claims.scope,
        }))
    }
    .await;
    match result {
        Ok(body) => (no_store_headers(), Json(body)).into_response(),
        Err(error) => error.into_response(),
    }
}
