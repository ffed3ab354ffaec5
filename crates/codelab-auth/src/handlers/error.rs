//! The OAuth error envelope `{"error","error_description"}` (RFC 6749 §5.2) with the statuses
//! and `WWW-Authenticate` headers RFC 6749 and RFC 6750 ask for.
//!
//! Compatibility: the password and refresh grants answer `invalid_grant` with **401** (the
//! original's status, which the Flutter IDE maps to "invalid credentials"), and a lockout with
//! 429. New grant types use the RFC's 400.

use std::fmt;

use axum::Json;
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::store::StoreError;

/// An OAuth error answer.
#[derive(Debug, Clone)]
pub struct OAuthError {
    status: StatusCode,
    error: &'static str,
    description: String,
    headers: Vec<(HeaderName, String)>,
    /// Logged for 5xx, never sent.
    detail: Option<String>,
}

impl OAuthError {
    /// An error with an explicit status.
    pub fn new(status: StatusCode, error: &'static str, description: impl Into<String>) -> Self {
        Self {
            status,
            error,
            description: description.into(),
            headers: Vec::new(),
            detail: None,
        }
    }

    /// 400 `invalid_request`: a missing, repeated or malformed parameter.
    pub fn invalid_request(description: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request", description)
    }

    /// 401 `invalid_client`; RFC 6749 §5.2: with `WWW-Authenticate` when the client tried
    /// HTTP Basic.
    pub fn invalid_client(description: impl Into<String>, basic_used: bool) -> Self {
        let error = Self::new(StatusCode::UNAUTHORIZED, "invalid_client", description);
        if basic_used {
            error.with_header(header::WWW_AUTHENTICATE, "Basic realm=\"codelab\"")
        } else {
            error
        }
    }

    /// 401 `invalid_grant`: the original's status for the password and refresh grants.
    pub fn invalid_grant(description: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "invalid_grant", description)
    }

    /// 400 `invalid_grant` (RFC 6749 §5.2) for the grants the original never served.
    pub fn invalid_grant_400(description: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_grant", description)
    }

    /// 429 `invalid_grant`: the original's lockout answer, plus `Retry-After`.
    pub fn locked(description: impl Into<String>, retry_after_secs: u64) -> Self {
        Self::new(StatusCode::TOO_MANY_REQUESTS, "invalid_grant", description)
            .with_header(header::RETRY_AFTER, retry_after_secs.to_string())
    }

    /// 400 `unauthorized_client`: the client may not use this grant type.
    pub fn unauthorized_client(description: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "unauthorized_client", description)
    }

    /// 400 `unsupported_grant_type`.
    pub fn unsupported_grant_type(description: impl Into<String>) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            description,
        )
    }

    /// 400 `invalid_scope`.
    pub fn invalid_scope(description: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_scope", description)
    }

    /// 429 `rate_limit_exceeded` with the original's body and headers (the real limit).
    pub fn rate_limited(limit: u32, retry_after_secs: u64) -> Self {
        Self::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limit_exceeded",
            "Too many requests. Please try again later.",
        )
        .with_header(
            HeaderName::from_static("x-ratelimit-limit"),
            limit.to_string(),
        )
        .with_header(HeaderName::from_static("x-ratelimit-remaining"), "0")
        .with_header(header::RETRY_AFTER, retry_after_secs.to_string())
    }

    /// 401 `invalid_token` with RFC 6750 §3 `WWW-Authenticate: Bearer error="invalid_token"`.
    pub fn invalid_token(description: impl Into<String>) -> Self {
        let description = description.into();
        let challenge = format!(
            "Bearer realm=\"codelab\", error=\"invalid_token\", error_description=\"{}\"",
            description.replace(['"', '\\'], "'")
        );
        Self::new(StatusCode::UNAUTHORIZED, "invalid_token", description)
            .with_header(header::WWW_AUTHENTICATE, challenge)
    }

    /// 401 without an error code: RFC 6750 §3.1, a request that carried no token at all.
    pub fn missing_token() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "invalid_request",
            "Missing Bearer token",
        )
        .with_header(header::WWW_AUTHENTICATE, "Bearer realm=\"codelab\"")
    }

    /// 500 `server_error` (the original answered 400); `detail` is logged, never sent.
    pub fn server_error(detail: impl fmt::Display) -> Self {
        let mut error = Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "server_error",
            "An internal error occurred",
        );
        error.detail = Some(detail.to_string());
        error
    }

    /// Adds a response header.
    #[must_use]
    pub fn with_header(mut self, name: HeaderName, value: impl Into<String>) -> Self {
        self.headers.push((name, value.into()));
        self
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The OAuth error code (also the `outcome` metric label: a bounded set).
    pub fn code(&self) -> &'static str {
        self.error
    }

    /// The human-readable description.
    pub fn description(&self) -> &str {
        &self.description
    }
}

impl fmt::Display for OAuthError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {}: {}",
            self.status.as_u16(),
            self.error,
            self.description
        )
    }
}

impl std::error::Error for OAuthError {}

impl From<StoreError> for OAuthError {
    fn from(error: StoreError) -> Self {
        Self::server_error(error)
    }
}

/// `Cache-Control: no-store` and `Pragma: no-cache` (RFC 6749 §5.1), for every answer that
/// carries or concerns a token.
pub fn no_store_headers() -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    headers
}

impl IntoResponse for OAuthError {
    fn into_response(self) -> Response {
        // Logged once, here, inside the request span (which carries the request id).
        codelab_core::http::log_error(
            self.status,
            self.error,
            &self.description,
            self.detail.as_deref(),
        );
        let body = serde_json::json!({
            "error": self.error,
            "error_description": self.description,
        });
        let mut response = (self.status, no_store_headers(), Json(body)).into_response();
        for (name, value) in self.headers {
            if let Ok(value) = HeaderValue::from_str(&value) {
                response.headers_mut().insert(name, value);
            }
        }
        response
    }
}
