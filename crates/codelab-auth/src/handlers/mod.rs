//! HTTP handlers, one module per endpoint, and what several of them share: who is calling
//! (IP, user agent), client and user authentication, the scope rule, token issuing and audit.

pub mod admin_api;
pub mod authorize;
pub mod device;
pub mod discovery;
pub mod error;
pub mod form;
pub mod introspect;
pub mod openapi;
pub mod revoke;
pub mod token;
pub mod userinfo;

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use serde::Serialize;

use crate::AppState;
use crate::limits::{self, Lockout, LoginSource};
use crate::metrics;
use crate::model::{ADMIN_SCOPE, AuditEvent, Client, RefreshTokenRecord, User};
use crate::passwords::{self, ClientSecretCheck, PasswordCheck, PasswordError};
use crate::tokens::{self, IssuedToken, TokenType};
use error::OAuthError;
use form::ClientCredentials;

/// Longest user agent kept in the audit log.
const MAX_USER_AGENT_CHARS: usize = 512;

/// Who sent a request: the socket peer (from `ConnectInfo`, absent when a test server was
/// started without it) and the user agent.
#[derive(Debug, Clone, Default)]
pub struct Caller {
    /// The TCP peer.
    pub peer: Option<IpAddr>,
    /// The `User-Agent` header, truncated.
    pub user_agent: Option<String>,
}

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let peer = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|info| info.0.ip());
        let user_agent = parts
            .headers
            .get(header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .map(|ua| ua.chars().take(MAX_USER_AGENT_CHARS).collect());
        Ok(Self { peer, user_agent })
    }
}

/// A request's audit context: the client's IP (after trusted-proxy resolution) and user agent.
#[derive(Debug, Clone)]
pub struct RequestContext {
    /// The client IP bucket used for limits and the audit row.
    pub ip: String,
    /// The user agent, if sent.
    pub user_agent: Option<String>,
}

impl RequestContext {
    /// Resolves the client IP of a request.
    pub fn new(state: &AppState, caller: Caller, headers: &axum::http::HeaderMap) -> Self {
        Self {
            ip: state.limits.client_key(caller.peer, headers),
            user_agent: caller.user_agent,
        }
    }
}

impl RequestContext {
    /// An audit row of `event_type` carrying this request's IP and user agent; callers fill
    /// in the rest with struct update syntax.
    pub fn event(&self, event_type: &str, success: bool) -> AuditEvent {
        AuditEvent {
            user_id: None,
            client_id: None,
            event_type: event_type.to_owned(),
            event_data: None,
            ip_address: Some(self.ip.clone()),
            user_agent: self.user_agent.clone(),
            success,
            error_message: None,
        }
    }
}

/// Writes one audit row; a failure is logged and does not fail the request.
pub async fn audit(state: &AppState, event: AuditEvent) {
    let event_type = event.event_type.clone();
    if let Err(error) = state.store.insert_audit(event).await {
        tracing::warn!(event_type, %error, "cannot write audit row");
    }
}

/// The answer when the password-hashing cap and its queue are full: 503 with `Retry-After`
/// (docs/auth.md, "Protection").
pub fn hashing_busy() -> OAuthError {
    OAuthError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "temporarily_unavailable",
        "The server is busy checking other sign-ins. Please try again shortly.",
    )
    .with_header(
        header::RETRY_AFTER,
        passwords::HASHING_RETRY_AFTER.as_secs().to_string(),
    )
}

/// Finds and authenticates the calling client (RFC 6749 §2.3). Confidential clients must
/// prove their secret; public clients only name themselves and must not send one.
///
/// Client secrets are checked with the fast hash (see [`passwords::verify_client_secret`]);
/// a legacy argon2/bcrypt hash is rewritten to it on the first success. Failures are counted
/// by `endpoint` in `codelab_auth_client_auth_failures_total`, never as failed logins.
pub async fn authenticate_client(
    state: &AppState,
    credentials: &ClientCredentials,
    endpoint: &'static str,
) -> Result<Client, OAuthError> {
    let result = authenticate_client_inner(state, credentials).await;
    if let Err(error) = &result
        && error.code() == "invalid_client"
    {
        metrics::counter_client_auth_failure(endpoint);
    }
    result
}

async fn authenticate_client_inner(
    state: &AppState,
    credentials: &ClientCredentials,
) -> Result<Client, OAuthError> {
    let Some(client_id) = credentials.client_id.as_deref() else {
        return Err(OAuthError::invalid_request(
            "Missing required parameter: client_id",
        ));
    };
    let basic = credentials.basic;
    let client = match state.store.get_client(client_id).await? {
        Some(client) if client.is_active => client,
        _ => {
            return Err(OAuthError::invalid_client(
                "Unknown or inactive client",
                basic,
            ));
        }
    };
    if !client.is_confidential {
        if credentials.secret.is_some() {
            return Err(OAuthError::invalid_client(
                "Public clients authenticate without a secret",
                basic,
            ));
        }
        return Ok(client);
    }
    let (Some(secret), Some(hash)) = (credentials.secret.as_deref(), client.secret_hash.as_deref())
    else {
        return Err(OAuthError::invalid_client(
            "Client authentication required",
            basic,
        ));
    };
    let check = match passwords::verify_client_secret(secret, hash).await {
        Ok(check) => check,
        // A legacy hash whose single verification slot is taken: a refusal, not a 5xx, and
        // never a wait for the slots password logins use.
        Err(PasswordError::Busy) => {
            return Err(OAuthError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "slow_down",
                "Too many client authentications at once. Please try again shortly.",
            )
            .with_header(
                header::RETRY_AFTER,
                passwords::HASHING_RETRY_AFTER.as_secs().to_string(),
            ));
        }
        Err(error) => return Err(OAuthError::server_error(error)),
    };
    match check {
        ClientSecretCheck::Valid { needs_rehash } => {
            if needs_rehash {
                let fast = passwords::hash_client_secret(secret);
                match state
                    .store
                    .set_client_secret_hash(&client.client_id, &fast)
                    .await
                {
                    Ok(()) => tracing::info!(
                        client_id = %client.client_id,
                        "client secret hash rewritten to the fast form"
                    ),
                    Err(error) => tracing::warn!(
                        client_id = %client.client_id,
                        %error,
                        "cannot store the rewritten client secret hash"
                    ),
                }
            }
            Ok(client)
        }
        ClientSecretCheck::Invalid => Err(OAuthError::invalid_client(
            "Client authentication failed",
            basic,
        )),
    }
}

/// Where a sign-in comes from: the password grant (trusted by known address) or the browser
/// login form (trusted by a valid device cookie).
#[derive(Debug, Clone)]
pub enum SignInChannel {
    /// `grant_type=password`: no cookies; an address that signed in before is trusted.
    PasswordGrant,
    /// The authorize form, with the device cookie's account and id when one verified.
    Browser {
        /// `(account id, device id)` of a valid device cookie.
        device: Option<(String, String)>,
    },
}

/// The result of [`sign_in`].
#[derive(Debug)]
pub enum SignIn {
    /// The password matched an active account.
    Success(User),
    /// Unknown login, disabled account or wrong password: callers must not tell them apart.
    Failure,
    /// Refused before checking the password.
    Locked(Lockout),
}

/// Checks a username (or email) and password with brute-force protection: the attempt is
/// reserved against the account's counter (see [`crate::limits`]) before the password is
/// verified, under the password-hashing cap. On success the login time is recorded, a bcrypt
/// or outdated hash is replaced by a fresh argon2id one, the counters are cleared and (for the
/// password grant) the address is remembered as known for the account. A full hashing cap
/// answers [`hashing_busy`].
pub async fn sign_in(
    state: &AppState,
    ip: &str,
    login: &str,
    password: &str,
    channel: &SignInChannel,
) -> Result<SignIn, OAuthError> {
    // Refused before anything is counted, so a busy server does not lock anyone out.
    if passwords::hashing_is_saturated() {
        metrics::counter_hashing_refused();
        return Err(hashing_busy());
    }
    let user = state.store.find_user_by_login(login).await?;
    let account = limits::account_id_for(user.as_ref().map(|u| u.id.as_str()), login);
    let source = match channel {
        SignInChannel::Browser {
            device: Some((device_account, device_id)),
        } if *device_account == account => LoginSource::KnownDevice(device_id.clone()),
        SignInChannel::Browser { .. } => LoginSource::Untrusted,
        SignInChannel::PasswordGrant => {
            if user.is_some() && state.limits.is_known_address(&account, ip).await {
                LoginSource::KnownAddress
            } else {
                LoginSource::Untrusted
            }
        }
    };
    let reservation = match state.limits.reserve_attempt(&account, ip, source).await {
        Ok(reservation) => reservation,
        Err(lockout) => return Ok(SignIn::Locked(lockout)),
    };
    let permit = match passwords::acquire_hashing_permit().await {
        Ok(permit) => permit,
        Err(PasswordError::Busy) => return Err(hashing_busy()),
        Err(error) => return Err(OAuthError::server_error(error)),
    };
    let Some(user) = user else {
        // Same work as a real check, so response time does not reveal which usernames exist.
        passwords::dummy_verify_user(&permit, password).await;
        state.limits.record_failure(&reservation).await;
        return Ok(SignIn::Failure);
    };
    let check = passwords::verify_user_password(&permit, password, &user.password_hash)
        .await
        .map_err(OAuthError::server_error)?;
    let needs_rehash = match check {
        PasswordCheck::Valid { needs_rehash } if user.is_active => needs_rehash,
        _ => {
            state.limits.record_failure(&reservation).await;
            return Ok(SignIn::Failure);
        }
    };
    if needs_rehash {
        match passwords::hash_password(password).await {
            Ok(hash) => {
                if let Err(error) = state.store.set_password_hash(&user.id, &hash).await {
                    tracing::warn!(user_id = %user.id, %error, "cannot store the rehashed password");
                }
            }
            Err(error) => tracing::warn!(user_id = %user.id, %error, "cannot rehash password"),
        }
    }
    drop(permit);
    state.limits.record_success(&reservation).await;
    if matches!(channel, SignInChannel::PasswordGrant) {
        state.limits.remember_address(&account, ip).await;
    }
    if let Err(error) = state.store.record_login(&user.id, state.now()).await {
        tracing::warn!(user_id = %user.id, %error, "cannot record the login time");
    }
    Ok(SignIn::Success(user))
}

/// Whether a scope token has the allowed shape (the original's validator: `[A-Za-z0-9_:.-]`,
/// at most 100 characters).
fn valid_scope_token(token: &str) -> bool {
    !token.is_empty()
        && token.len() <= 100
        && token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_:.-".contains(&b))
}

/// The scope rule. Nothing requested: the client's allowed scopes, without `api:admin` unless
/// the subject is an administrator (kept in the client's order, as the original answered).
/// Something requested: it must be a subset of the allowed scopes (and `api:admin` needs an
/// administrator), and the grant is the requested set de-duplicated, sorted, space-joined.
pub fn grant_scope(
    requested: Option<&str>,
    allowed: &[String],
    is_admin: bool,
) -> Result<String, OAuthError> {
    let permitted = |s: &str| allowed.iter().any(|a| a == s) && (is_admin || s != ADMIN_SCOPE);
    let Some(requested) = requested.map(str::trim).filter(|r| !r.is_empty()) else {
        let mut seen = BTreeSet::new();
        let default: Vec<&str> = allowed
            .iter()
            .map(String::as_str)
            .filter(|s| permitted(s) && seen.insert(*s))
            .collect();
        return Ok(default.join(" "));
    };
    let mut granted = BTreeSet::new();
    for token in requested.split_whitespace() {
        if !valid_scope_token(token) {
            return Err(OAuthError::invalid_scope("Malformed scope value"));
        }
        if !permitted(token) {
            return Err(OAuthError::invalid_scope(format!(
                "Scope '{token}' is not allowed"
            )));
        }
        granted.insert(token);
    }
    Ok(granted.into_iter().collect::<Vec<_>>().join(" "))
}

/// A narrower scope for a refresh (RFC 6749 §6): the requested set must lie within the
/// original grant; nothing requested keeps it.
pub fn narrow_scope(requested: Option<&str>, original: &str) -> Result<String, OAuthError> {
    let Some(requested) = requested.map(str::trim).filter(|r| !r.is_empty()) else {
        return Ok(original.to_owned());
    };
    let original: BTreeSet<&str> = original.split_whitespace().collect();
    let mut granted = BTreeSet::new();
    for token in requested.split_whitespace() {
        if !original.contains(token) {
            return Err(OAuthError::invalid_scope(format!(
                "Scope '{token}' exceeds the original grant"
            )));
        }
        granted.insert(token);
    }
    Ok(granted.into_iter().collect::<Vec<_>>().join(" "))
}

/// The token endpoint's success body (the original's shape: lowercase `bearer`).
#[derive(Debug, Serialize)]
pub struct TokenResponse {
    /// The access JWT.
    pub access_token: String,
    /// The refresh JWT (absent for `client_credentials`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refresh_token: Option<String>,
    /// Always `bearer`.
    pub token_type: &'static str,
    /// Access token lifetime in seconds.
    pub expires_in: i64,
    /// The granted scope.
    pub scope: String,
}

/// Tokens just issued for a subject: the access token and, when asked, a refresh token with
/// the row to store for it.
pub struct Issued {
    /// What the token endpoint answers.
    pub response: TokenResponse,
    /// The refresh token's row: it starts a family of its own.
    pub refresh_record: Option<RefreshTokenRecord>,
}

/// Issues an access token (and, when `new_family`, a refresh token starting its own rotation
/// family) with the client's lifetimes.
pub fn issue_tokens(
    state: &AppState,
    subject: &str,
    client: &Client,
    scope: &str,
    new_family: bool,
) -> Result<Issued, OAuthError> {
    let (response, refresh) =
        sign_tokens(state, subject, client, scope, new_family.then_some(scope))?;
    let refresh_record = refresh.map(|refresh| {
        let jti_hash = tokens::jti_hash(&refresh.jti);
        RefreshTokenRecord {
            family_id: jti_hash.clone(),
            jti_hash,
            user_id: subject.to_owned(),
            client_id: client.client_id.clone(),
            scope: scope.to_owned(),
            expires_at: refresh.expires_at,
            revoked: false,
            revoked_at: None,
            parent_jti_hash: None,
            created_at: state.now(),
        }
    });
    Ok(Issued {
        response,
        refresh_record,
    })
}

/// Signs an access token for `scope` and, when `refresh_scope` is given, a refresh token for
/// it (a rotated refresh token keeps its parent's scope even when the access token was
/// narrowed, RFC 6749 §6), with the client's lifetimes: the answer, and the refresh token.
pub fn sign_tokens(
    state: &AppState,
    subject: &str,
    client: &Client,
    scope: &str,
    refresh_scope: Option<&str>,
) -> Result<(TokenResponse, Option<IssuedToken>), OAuthError> {
    let access = state
        .tokens
        .issue(
            TokenType::Access,
            subject,
            &client.client_id,
            scope,
            client.access_token_lifetime,
        )
        .map_err(OAuthError::server_error)?;
    let refresh = refresh_scope
        .map(|refresh_scope| {
            state.tokens.issue(
                TokenType::Refresh,
                subject,
                &client.client_id,
                refresh_scope,
                client.refresh_token_lifetime,
            )
        })
        .transpose()
        .map_err(OAuthError::server_error)?;
    let response = TokenResponse {
        access_token: access.token,
        refresh_token: refresh.as_ref().map(|refresh| refresh.token.clone()),
        token_type: "bearer",
        expires_in: client.access_token_lifetime,
        scope: scope.to_owned(),
    };
    Ok((response, refresh))
}
