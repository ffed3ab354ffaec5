//! `POST /oauth/revoke` (RFC 7009).
//!
//! Revoking a refresh token revokes its whole rotation family. Access tokens are stateless
//! JWTs that live at most their (short) lifetime: revoking one is accepted and answered 200
//! but changes nothing, which RFC 7009 §2 allows ("the authorization server MAY ... not
//! support the revocation of access tokens"); the family of the refresh token behind them is
//! what ends a session. Unknown, invalid or expired tokens are answered 200 too (RFC 7009 §2.2).

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};

use super::error::{OAuthError, no_store_headers};
use super::form::{client_credentials, parse_form_body};
use super::{Caller, RequestContext, audit, authenticate_client};
use crate::AppState;
use crate::limits::RateDecision;
use crate::model::AuditEvent;
use crate::tokens::{self, TokenType};

/// `POST /oauth/revoke`.
pub async fn revoke_token(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let ctx = RequestContext::new(&state, caller, &headers);
    // Its own per-IP bucket, shared with introspection, never the token endpoint's.
    if let RateDecision::Limited { limit, retry_after } =
        state.limits.check_client_rate(&ctx.ip).await
    {
        return OAuthError::rate_limited(limit, retry_after).into_response();
    }
    match revoke(&state, &ctx, &headers, &body).await {
        Ok(()) => (StatusCode::OK, no_store_headers()).into_response(),
        Err(error) => error.into_response(),
    }
}

async fn revoke(
    state: &AppState,
    ctx: &RequestContext,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<(), OAuthError> {
    let form = parse_form_body(headers, body)?;
    let token = form.require("token")?;
    // RFC 7009 §2.1: confidential clients authenticate; public ones identify with client_id.
    let client = authenticate_client(state, &client_credentials(headers, &form)?, "revoke").await?;
    // The hint only orders lookups; an unknown hint is ignored (RFC 7009 §2.1), and since we
    // can tell the types apart by their `type` claim, there is nothing to order.
    let Ok(claims) = state.tokens.verify(token, TokenType::Refresh).await else {
        return Ok(());
    };
    // RFC 7009 §2.1: a client may only revoke its own tokens.
    if claims.client_id != client.client_id {
        return Err(OAuthError::unauthorized_client(
            "The token was not issued to this client",
        ));
    }
    let Some(record) = state
        .store
        .find_refresh_token(&tokens::jti_hash(&claims.jti))
        .await?
    else {
        return Ok(());
    };
    let revoked = state
        .store
        .revoke_family(&record.family_id, state.now())
        .await?;
    let event = AuditEvent {
        user_id: Some(record.user_id.clone()),
        client_id: Some(client.client_id.clone()),
        event_data: Some(serde_json::json!({ "revoked_tokens": revoked })),
        ..ctx.event("token_revoke", true)
    };
    audit(state, event).await;
    Ok(())
}
