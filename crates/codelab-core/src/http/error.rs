//! The single error envelope: `{"error":{"message","type","param","code"}}` (OpenAI style).

use std::fmt;

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, Request};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;

use super::log_error;

/// An HTTP error rendered as the OpenAI-style envelope; 5xx are logged once when rendered.
#[derive(Debug, Clone)]
pub struct ApiError(Box<ErrorParts>);

/// Boxed so `Result<_, ApiError>` stays small on the happy path.
#[derive(Debug, Clone)]
struct ErrorParts {
    status: StatusCode,
    kind: String,
    message: String,
    code: Option<String>,
    param: Option<String>,
    retry_after: Option<u64>,
    /// Logged for 5xx, never sent to the client.
    detail: Option<String>,
}

impl ApiError {
    /// An error with `status`, envelope `type` = `kind` and a client-facing `message`.
    pub fn new(status: StatusCode, kind: impl Into<String>, message: impl Into<String>) -> Self {
        Self(Box::new(ErrorParts {
            status,
            kind: kind.into(),
            message: message.into(),
            code: None,
            param: None,
            retry_after: None,
            detail: None,
        }))
    }

    /// Sets the envelope's `code`.
    #[must_use]
    pub fn with_code(mut self, code: impl Into<String>) -> Self {
        self.0.code = Some(code.into());
        self
    }

    /// Sets the envelope's `param`: the request field the error is about.
    #[must_use]
    pub fn with_param(mut self, param: impl Into<String>) -> Self {
        self.0.param = Some(param.into());
        self
    }

    /// Sets a `Retry-After` header (seconds).
    #[must_use]
    pub fn with_retry_after(mut self, secs: u64) -> Self {
        self.0.retry_after = Some(secs);
        self
    }

    /// 400 `invalid_request_error`.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request_error", message)
    }

    /// 404 `not_found_error`.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found_error", message)
    }

    /// 401 `authentication_error`.
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "authentication_error", message)
    }

    /// 413 `invalid_request_error` with code `payload_too_large`.
    pub fn payload_too_large(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "invalid_request_error",
            message,
        )
        .with_code("payload_too_large")
    }

    /// 500 `internal_error`; `detail` is logged with the request id but never sent.
    pub fn internal(detail: impl fmt::Display) -> Self {
        let mut error = Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal_error",
            "internal server error",
        );
        error.0.detail = Some(detail.to_string());
        error
    }

    /// 503 `service_unavailable`.
    pub fn service_unavailable(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "service_unavailable",
            message,
        )
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        self.0.status
    }

    /// The envelope's `type`.
    pub fn kind(&self) -> &str {
        &self.0.kind
    }

    /// The client-facing message.
    pub fn message(&self) -> &str {
        &self.0.message
    }

    /// The envelope's `code`, if any.
    pub fn code(&self) -> Option<&str> {
        self.0.code.as_deref()
    }

    /// The `Retry-After` seconds, if any.
    pub fn retry_after(&self) -> Option<u64> {
        self.0.retry_after
    }

    /// The envelope as JSON (also used for SSE error events).
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "error": {
                "message": self.0.message,
                "type": self.0.kind,
                "param": self.0.param,
                "code": self.0.code,
            }
        })
    }
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {}: {}",
            self.0.status.as_u16(),
            self.0.kind,
            self.0.message
        )
    }
}

impl std::error::Error for ApiError {}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        // Logged here, once, inside the request span (which carries the request id).
        log_error(
            self.0.status,
            &self.0.kind,
            &self.0.message,
            self.0.detail.as_deref(),
        );
        let mut response = (self.0.status, Json(self.to_json())).into_response();
        if let Some(secs) = self.0.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}

impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> Self {
        json_rejection_to_api_error(rejection)
    }
}

/// Maps axum's JSON rejections to clear 4xx envelopes: bad syntax 400, wrong or missing
/// fields 422, missing `Content-Type: application/json` 415, oversize body 413.
pub fn json_rejection_to_api_error(rejection: JsonRejection) -> ApiError {
    // The rejection's source is serde's own message (with the field path when known).
    let serde_message = |e: &dyn std::error::Error| {
        e.source()
            .map_or_else(|| e.to_string(), |source| source.to_string())
    };
    match rejection {
        JsonRejection::JsonSyntaxError(e) => ApiError::bad_request(format!(
            "invalid JSON in request body: {}",
            serde_message(&e)
        )),
        JsonRejection::JsonDataError(e) => ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_request_error",
            format!("invalid request body: {}", serde_message(&e)),
        ),
        JsonRejection::MissingJsonContentType(_) => ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "invalid_request_error",
            "expected a request with Content-Type: application/json",
        ),
        JsonRejection::BytesRejection(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            ApiError::payload_too_large("request body is too large")
        }
        other => ApiError::new(
            other.status(),
            "invalid_request_error",
            format!("cannot read request body: {}", other.body_text()),
        ),
    }
}

/// `axum::Json` whose rejection is our envelope (see [`json_rejection_to_api_error`]).
#[derive(Debug, Clone, Copy, Default)]
pub struct ApiJson<T>(pub T);

impl<T, S> FromRequest<S> for ApiJson<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(value)) => Ok(Self(value)),
            Err(rejection) => Err(json_rejection_to_api_error(rejection)),
        }
    }
}
