//! Who is calling: a Bearer JWT of the auth service verified locally (never a call to the auth
//! service per request), or a service caller with the gateway's own service key; and what the
//! caller may do (scopes: `api:read` to read, `api:write` to act).
//!
//! Token checks follow RFC 7519 §7.2 and RFC 8725: the algorithm is pinned to RS256 before
//! any key is touched (RFC 8725 §3.1: no `none`, no HS256 signed with the RSA public key),
//! the key is chosen by `kid` from the cached JWKS, and `exp`/`nbf`/`iat` (with `jwt_leeway`,
//! against the injected clock), `iss`, `aud` and `type == "access"` are all required to
//! match — refresh tokens share `iss`/`aud` with access tokens (`docs/auth.md`), so `type` is
//! what keeps one from acting as the other (RFC 8725 §3.11). Failures answer RFC 6750 §3
//! errors.

pub mod jwks;

use std::time::{Duration, UNIX_EPOCH};

use axum::Json;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use codelab_core::clock::SharedClock;
use codelab_core::config::Secret;
use codelab_core::http::{ErrorEnvelope, ErrorShape, INTERNAL_AUTH_HEADER};
pub use codelab_protocol::internal::is_valid_user_id;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use serde_json::json;

use crate::config::Config;
use jwks::JwksCache;

/// The header naming the user an internal-key caller acts for (as on the runtime's API).
pub use codelab_protocol::internal::USER_HEADER;
/// The scope a token needs to read sessions, history, approvals and agents.
pub const READ_SCOPE: &str = "api:read";
/// The scope a token needs to act: send messages, decide approvals, create or delete sessions.
pub const WRITE_SCOPE: &str = "api:write";
/// The scope a token needs for the admin routes (everyone's usage): the auth service grants it
/// to admin users only.
pub const ADMIN_SCOPE: &str = "api:admin";
/// The user of internal-key callers that name none (the original's `system`).
pub const SYSTEM_USER: &str = "system";
/// The user of unauthenticated REST calls when `use_jwt_auth = false` (development only).
pub const DEV_USER: &str = "dev";
/// The only accepted `alg` (RFC 8725 §3.1: an allowlist of one).
const ALG: &str = "RS256";
/// Longest token considered at all (a real one is about 1 KiB).
const MAX_TOKEN_LEN: usize = 8 * 1024;

/// How a caller authenticated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallerKind {
    /// A user's access token: limited to its scopes.
    Token,
    /// A service holding `service_api_key`: not limited by scopes.
    Service,
    /// No credentials with `use_jwt_auth = false` (development only): not limited by scopes.
    Development,
}

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// How the caller authenticated; decides whether scopes apply. Never derived from a
    /// token's claims, so no `scope` value can make a token unrestricted.
    pub kind: CallerKind,
    /// The user requests act for (`sub` of the token; `system` or `X-Codelab-User-Id` for
    /// internal-key callers; `dev` in the development mode without a token).
    pub user_id: String,
    /// Granted scopes (space-separated `scope` claim); `internal` for internal-key callers.
    pub scopes: Vec<String>,
    /// The OAuth client the token was issued to; `internal` for internal-key callers.
    pub client_id: Option<String>,
}

impl Principal {
    /// The development user of unauthenticated calls when `use_jwt_auth = false`.
    pub fn dev() -> Self {
        Self {
            kind: CallerKind::Development,
            user_id: DEV_USER.to_owned(),
            scopes: vec!["dev".to_owned()],
            client_id: None,
        }
    }

    /// Whether this is a service caller holding the internal key.
    pub fn is_internal(&self) -> bool {
        self.kind == CallerKind::Service
    }

    /// Whether the caller may read (`api:read`; service callers and the development user
    /// always may).
    pub fn may_read(&self) -> bool {
        self.has_scope(READ_SCOPE)
    }

    /// Whether the caller may act (`api:write`; service callers and the development user
    /// always may).
    pub fn may_write(&self) -> bool {
        self.has_scope(WRITE_SCOPE)
    }

    /// `Ok` when the caller holds `scope` (one of [`READ_SCOPE`], [`WRITE_SCOPE`], [`ADMIN_SCOPE`]), else the
    /// `insufficient_scope` refusal (RFC 6750 §3.1).
    pub fn require(&self, scope: &'static str) -> Result<(), AuthError> {
        if self.has_scope(scope) {
            Ok(())
        } else {
            Err(AuthError::InsufficientScope(scope))
        }
    }

    fn has_scope(&self, scope: &str) -> bool {
        match self.kind {
            CallerKind::Token => self.scopes.iter().any(|s| s == scope),
            // Neither holds a token: the key, or the development mode, is the whole grant.
            CallerKind::Service | CallerKind::Development => true,
        }
    }
}

/// Why presented credentials were refused. Descriptions are fixed texts (never the token, never
/// attacker-chosen text), so they are safe in a `WWW-Authenticate` quoted string.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// `exp` has passed (beyond the leeway).
    #[error("the access token has expired")]
    Expired,
    /// `nbf` or `iat` lies in the future (beyond the leeway).
    #[error("the access token is not valid yet")]
    NotYetValid,
    /// The signature does not verify with the key named by `kid`.
    #[error("the token signature is invalid")]
    BadSignature,
    /// `iss` is not `jwt_issuer`.
    #[error("the token was issued by another issuer")]
    WrongIssuer,
    /// `aud` does not contain `jwt_audience`.
    #[error("the token is intended for another audience")]
    WrongAudience,
    /// `type` is not `access` (a refresh token, or none).
    #[error("Invalid token type: expected an access token")]
    WrongType,
    /// The `kid` is not in the JWKS, even after a refetch.
    #[error("the token was signed with an unknown key")]
    UnknownKey,
    /// Not a compact JWS with the claims we need.
    #[error("malformed token: {0}")]
    Malformed(&'static str),
    /// The header's `alg` is not RS256.
    #[error("unsupported token algorithm: only RS256 is accepted")]
    UnsupportedAlgorithm,
    /// `X-Internal-Auth` was presented with a wrong value.
    #[error("invalid internal key")]
    BadInternalKey,
    /// `X-Internal-Auth` was presented, but no service key is configured.
    #[error("this gateway accepts no service callers (GATEWAY__SERVICE_API_KEY is not set)")]
    ServiceCallersDisabled,
    /// The token is valid but lacks the scope the call needs.
    #[error("this call needs the {0} scope")]
    InsufficientScope(&'static str),
    /// An internal-key caller named an unusable user in `X-Codelab-User-Id`.
    #[error("X-Codelab-User-Id must be 1 to 128 characters of A-Z a-z 0-9 _ . - @ : |")]
    BadUserHeader,
    /// No key set could be fetched from the auth service and none is cached.
    #[error("cannot verify tokens now: the signing keys of the auth service are unavailable")]
    JwksUnavailable,
}

impl AuthError {
    /// The bounded label of `codelab_gateway_auth_failures_total{reason}`.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Expired => "expired",
            Self::NotYetValid => "not_yet_valid",
            Self::BadSignature => "bad_signature",
            Self::WrongIssuer => "wrong_issuer",
            Self::WrongAudience => "wrong_audience",
            Self::WrongType => "wrong_type",
            Self::UnknownKey => "unknown_key",
            Self::Malformed(_) | Self::BadUserHeader => "malformed",
            Self::UnsupportedAlgorithm => "unsupported_algorithm",
            Self::BadInternalKey => "bad_internal_key",
            Self::ServiceCallersDisabled => "service_callers_disabled",
            Self::InsufficientScope(_) => "insufficient_scope",
            Self::JwksUnavailable => "jwks_unavailable",
        }
    }

    /// The HTTP status of the refusal: 401, except 400 for a bad user header, 403 for a
    /// missing scope and 503 when keys are unavailable (the caller's token may be fine;
    /// retrying later can work).
    pub fn status(&self) -> StatusCode {
        match self {
            Self::BadUserHeader => StatusCode::BAD_REQUEST,
            Self::InsufficientScope(_) => StatusCode::FORBIDDEN,
            Self::JwksUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::UNAUTHORIZED,
        }
    }

    /// The OAuth error code of the body (RFC 6750 §3.1).
    pub fn error_code(&self) -> &'static str {
        match self {
            Self::BadInternalKey | Self::ServiceCallersDisabled => "unauthorized",
            Self::BadUserHeader => "invalid_request",
            Self::InsufficientScope(_) => "insufficient_scope",
            Self::JwksUnavailable => "temporarily_unavailable",
            _ => "invalid_token",
        }
    }

    /// Whether a token (rather than the internal key or a header) was refused.
    pub fn is_token_error(&self) -> bool {
        self.error_code() == "invalid_token"
    }
}

impl IntoResponse for AuthError {
    fn into_response(self) -> Response {
        let description = self.to_string();
        let mut response = ErrorEnvelope {
            status: self.status(),
            kind: self.error_code(),
            code: None,
            message: &description,
            detail: None,
        }
        .render(ErrorShape::OAuth);
        let challenge = if self.is_token_error() {
            // RFC 6750 §3: the error and its description in the challenge.
            format!("Bearer error=\"invalid_token\", error_description=\"{description}\"")
        } else if let Self::InsufficientScope(scope) = self {
            // RFC 6750 §3: the scope that would have been enough.
            format!("Bearer error=\"insufficient_scope\", scope=\"{scope}\"")
        } else {
            "Bearer".to_owned()
        };
        let challenged = matches!(
            self.status(),
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN
        );
        if challenged && let Ok(value) = HeaderValue::from_str(&challenge) {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, value);
        }
        if self == Self::JwksUnavailable {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
        }
        response
    }
}

/// 401 for a request that presented no credentials where they are required: RFC 6750 §3.1
/// says such a challenge carries no error code. The body is the original gateway's.
pub fn credentials_required() -> Response {
    let body = json!({ "error": "unauthorized", "error_description": "Authentication required" });
    let mut response = (StatusCode::UNAUTHORIZED, Json(body)).into_response();
    response
        .headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    response
}

/// Verifies Bearer JWTs against the auth service's JWKS and recognises the service key.
#[derive(Debug)]
pub struct Authenticator {
    jwks: JwksCache,
    issuer: String,
    audience: String,
    leeway_secs: u64,
    /// `service_api_key`: never the runtime's key (`build` refuses equal keys); empty when
    /// service callers are not accepted.
    service_key: Secret,
    clock: SharedClock,
}

/// The header fields read before choosing a key; anything else is ignored.
#[derive(Deserialize)]
struct PeekHeader {
    alg: Option<String>,
    #[serde(default)]
    kid: Option<String>,
    /// RFC 7515 §4.1.11: we understand no extension, so a token that requires one is refused.
    #[serde(default)]
    crit: Option<serde_json::Value>,
}

/// `aud` is a string or an array of strings (RFC 7519 §4.1.3).
#[derive(Deserialize)]
#[serde(untagged)]
enum Audience {
    One(String),
    Many(Vec<String>),
}

/// The claims we read; others are ignored. All optional here so that each missing claim gets
/// its own precise refusal.
#[derive(Deserialize)]
struct Claims {
    #[serde(default)]
    iss: Option<String>,
    #[serde(default)]
    sub: Option<String>,
    #[serde(default)]
    aud: Option<Audience>,
    #[serde(default)]
    exp: Option<serde_json::Number>,
    #[serde(default)]
    nbf: Option<serde_json::Number>,
    #[serde(default)]
    iat: Option<serde_json::Number>,
    #[serde(default, rename = "type")]
    token_type: Option<String>,
    #[serde(default)]
    scope: Option<String>,
    #[serde(default)]
    client_id: Option<String>,
}

impl Authenticator {
    /// An authenticator for the settings in `config`, with time from `clock`.
    pub fn new(config: &Config, clock: SharedClock) -> Result<Self, reqwest::Error> {
        let jwks = JwksCache::new(
            &config.auth_service_url,
            Duration::from_secs(config.jwks_cache_ttl.max(1)),
            clock.clone(),
        )?;
        Ok(Self {
            jwks,
            issuer: config.jwt_issuer.clone(),
            audience: config.jwt_audience.clone(),
            leeway_secs: config.jwt_leeway,
            service_key: config.service_api_key.clone(),
            clock,
        })
    }

    /// The JWKS cache (readiness checks it).
    pub fn jwks(&self) -> &JwksCache {
        &self.jwks
    }

    /// Authenticates a request: an `Authorization: Bearer` JWT (scheme case-insensitive,
    /// RFC 6750 §2.1), else `query_token` (the WebSocket passes `?access_token=`), else
    /// `X-Internal-Auth` with `service_api_key` (compared in constant time; such callers may
    /// name the acting user in `X-Codelab-User-Id`; refused when no service key is set).
    ///
    /// `Ok(None)` when nothing was presented; `Err` when something presented is invalid.
    /// The caller counts refusals with [`crate::metrics::auth_failure`]`(error.reason())`
    /// (once per request, where it decides how to answer). As in the original, a Bearer
    /// header decides alone: a bad token is not rescued by a valid internal key.
    pub async fn authenticate(
        &self,
        headers: &HeaderMap,
        query_token: Option<&str>,
    ) -> Result<Option<Principal>, AuthError> {
        if let Some(token) = bearer_token(headers)? {
            return self.verify(token).await.map(Some);
        }
        if let Some(token) = query_token.map(str::trim).filter(|t| !t.is_empty()) {
            return self.verify(token).await.map(Some);
        }
        if let Some(presented) = headers.get(INTERNAL_AUTH_HEADER) {
            // Refused rather than ignored, so a misconfigured service learns why at once.
            if self.service_key.is_empty() {
                return Err(AuthError::ServiceCallersDisabled);
            }
            if !self.service_key.matches(presented.as_bytes()) {
                return Err(AuthError::BadInternalKey);
            }
            let user_id = match headers.get(USER_HEADER) {
                None => SYSTEM_USER.to_owned(),
                Some(value) => match value.to_str() {
                    Ok(id) if is_valid_user_id(id) => id.to_owned(),
                    _ => return Err(AuthError::BadUserHeader),
                },
            };
            return Ok(Some(Principal {
                kind: CallerKind::Service,
                user_id,
                scopes: vec!["internal".to_owned()],
                client_id: Some("internal".to_owned()),
            }));
        }
        Ok(None)
    }

    /// Verifies one access token and returns its principal.
    pub async fn verify(&self, token: &str) -> Result<Principal, AuthError> {
        if token.len() > MAX_TOKEN_LEN {
            return Err(AuthError::Malformed("the token is too long"));
        }
        let header = peek_header(token)?;
        // RFC 8725 §3.1: decide the algorithm before looking at any key, so neither `none`
        // nor an HS256 token "signed" with our RSA public key gets near a verifier.
        if header.alg.as_deref() != Some(ALG) {
            return Err(AuthError::UnsupportedAlgorithm);
        }
        if header.crit.is_some() {
            return Err(AuthError::Malformed(
                "the token requires header extensions (crit)",
            ));
        }
        let keys = self.jwks.keys_for(header.kid.as_deref()).await?;
        let claims = verify_signature(token, &keys)?;
        self.check_claims(claims)
    }

    fn now_secs(&self) -> f64 {
        match self.clock.now().duration_since(UNIX_EPOCH) {
            Ok(d) => d.as_secs_f64(),
            Err(before) => -before.duration().as_secs_f64(),
        }
    }

    /// RFC 7519 §4.1 claim checks against the injected clock.
    fn check_claims(&self, claims: Claims) -> Result<Principal, AuthError> {
        let now = self.now_secs();
        let leeway = self.leeway_secs as f64;
        // An access token without `exp` would never expire (RFC 8725 §3.10 asks for limits).
        let exp = claims
            .exp
            .as_ref()
            .and_then(serde_json::Number::as_f64)
            .ok_or(AuthError::Malformed("the token has no numeric exp claim"))?;
        // PyJWT's comparisons, which the original used: expired when exp <= now - leeway.
        if exp <= now - leeway {
            return Err(AuthError::Expired);
        }
        for claim in [&claims.nbf, &claims.iat].into_iter().flatten() {
            let at = claim
                .as_f64()
                .ok_or(AuthError::Malformed("nbf and iat must be numbers"))?;
            if at > now + leeway {
                return Err(AuthError::NotYetValid);
            }
        }
        if claims.iss.as_deref() != Some(self.issuer.as_str()) {
            return Err(AuthError::WrongIssuer);
        }
        let audience_ok = match &claims.aud {
            Some(Audience::One(aud)) => *aud == self.audience,
            Some(Audience::Many(auds)) => auds.contains(&self.audience),
            None => false,
        };
        if !audience_ok {
            return Err(AuthError::WrongAudience);
        }
        if claims.token_type.as_deref() != Some("access") {
            return Err(AuthError::WrongType);
        }
        let user_id = claims
            .sub
            .filter(|s| is_valid_user_id(s))
            .ok_or(AuthError::Malformed("the token has no usable sub claim"))?;
        Ok(Principal {
            kind: CallerKind::Token,
            user_id,
            scopes: claims
                .scope
                .unwrap_or_default()
                .split_whitespace()
                .map(str::to_owned)
                .collect(),
            client_id: claims.client_id,
        })
    }
}

/// The token of an `Authorization: Bearer <token>` header. Other schemes are ignored (the
/// original fell through to the internal key), a Bearer header without a token is malformed.
fn bearer_token(headers: &HeaderMap) -> Result<Option<&str>, AuthError> {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Ok(None);
    };
    let Ok(value) = value.to_str() else {
        return Err(AuthError::Malformed(
            "the Authorization header is not plain text",
        ));
    };
    let value = value.trim();
    let (scheme, rest) = value
        .split_once(|c: char| c.is_ascii_whitespace())
        .unwrap_or((value, ""));
    // RFC 7235 §2.1: the auth scheme is case-insensitive.
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Ok(None);
    }
    let token = rest.trim();
    if token.is_empty() {
        return Err(AuthError::Malformed("the Bearer header carries no token"));
    }
    Ok(Some(token))
}

/// The JOSE header of a compact JWS, read without verifying anything.
fn peek_header(token: &str) -> Result<PeekHeader, AuthError> {
    let mut parts = token.split('.');
    let (Some(header), Some(_), Some(_), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(AuthError::Malformed(
            "expected three base64url parts separated by dots",
        ));
    };
    let bytes = URL_SAFE_NO_PAD
        .decode(header)
        .map_err(|_| AuthError::Malformed("the header is not base64url"))?;
    serde_json::from_slice(&bytes).map_err(|_| AuthError::Malformed("the header is not JSON"))
}

/// Checks the signature with each candidate key (one, unless the token names no `kid`);
/// jsonwebtoken's own time, audience and required-claim checks are off because
/// [`Authenticator::check_claims`] does them against the injected clock.
fn verify_signature(token: &str, keys: &[DecodingKey]) -> Result<Claims, AuthError> {
    let mut validation = Validation::new(Algorithm::RS256);
    validation.validate_exp = false;
    validation.validate_nbf = false;
    validation.validate_aud = false;
    validation.required_spec_claims.clear();
    let mut last = AuthError::BadSignature;
    for key in keys {
        match jsonwebtoken::decode::<Claims>(token, key, &validation) {
            Ok(data) => return Ok(data.claims),
            Err(error) => {
                last = match error.kind() {
                    ErrorKind::InvalidSignature
                    | ErrorKind::InvalidKeyFormat
                    | ErrorKind::InvalidRsaKey(_) => AuthError::BadSignature,
                    ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName => {
                        AuthError::UnsupportedAlgorithm
                    }
                    ErrorKind::Base64(_) | ErrorKind::Utf8(_) => {
                        AuthError::Malformed("a part is not base64url")
                    }
                    ErrorKind::Json(_) => AuthError::Malformed("the claims are not a JSON object"),
                    _ => AuthError::Malformed("the token cannot be decoded"),
                };
                if last != AuthError::BadSignature {
                    // Not a key mismatch: another key will not help.
                    return Err(last);
                }
            }
        }
    }
    Err(last)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(
                axum::http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        map
    }

    #[test]
    fn bearer_scheme_is_case_insensitive_and_other_schemes_are_ignored() {
        let h = headers(&[("authorization", "bEaReR abc.def.ghi")]);
        assert_eq!(bearer_token(&h).unwrap(), Some("abc.def.ghi"));
        let h = headers(&[("authorization", "Basic dXNlcjpwdw==")]);
        assert_eq!(bearer_token(&h).unwrap(), None);
        let h = headers(&[("authorization", "Bearer   ")]);
        assert_eq!(bearer_token(&h).unwrap_err().reason(), "malformed");
        assert_eq!(bearer_token(&HeaderMap::new()).unwrap(), None);
    }

    #[test]
    fn headers_are_read_without_verifying() {
        let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#);
        let peeked = peek_header(&format!("{header}.e30.")).unwrap();
        assert_eq!(peeked.alg.as_deref(), Some("none"));
        assert!(peek_header("a.b").is_err());
        assert!(peek_header("!!.b.c").is_err());
    }

    #[test]
    fn challenges_follow_rfc_6750() {
        let response = AuthError::Expired.into_response();
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        let challenge = response.headers()[header::WWW_AUTHENTICATE]
            .to_str()
            .unwrap();
        assert_eq!(
            challenge,
            "Bearer error=\"invalid_token\", error_description=\"the access token has expired\""
        );
        let response = credentials_required();
        assert_eq!(response.headers()[header::WWW_AUTHENTICATE], "Bearer");
        let response = AuthError::InsufficientScope(WRITE_SCOPE).into_response();
        assert_eq!(response.status(), StatusCode::FORBIDDEN);
        assert_eq!(
            response.headers()[header::WWW_AUTHENTICATE],
            "Bearer error=\"insufficient_scope\", scope=\"api:write\""
        );
        let response = AuthError::JwksUnavailable.into_response();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(response.headers().get(header::WWW_AUTHENTICATE).is_none());
    }

    #[test]
    fn every_description_is_a_valid_quoted_string() {
        // RFC 6750 §3: error_description excludes `"` and `\`.
        for error in [
            AuthError::Expired,
            AuthError::NotYetValid,
            AuthError::BadSignature,
            AuthError::WrongIssuer,
            AuthError::WrongAudience,
            AuthError::WrongType,
            AuthError::UnknownKey,
            AuthError::Malformed("the token has no usable sub claim"),
            AuthError::UnsupportedAlgorithm,
        ] {
            let text = error.to_string();
            assert!(
                text.bytes()
                    .all(|b| (0x20..=0x7e).contains(&b) && b != b'"' && b != b'\\'),
                "{text}"
            );
        }
    }
}
