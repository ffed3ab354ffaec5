//! One error envelope helper for every service: logs a 5xx once (inside the request span,
//! which carries the request id) and renders the service's own wire shape.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

/// The shape a service's errors take on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ErrorShape {
    /// OpenAI's `{"error":{"message","type","param","code"}}`: the LLM proxy (and [`ApiError`]).
    ///
    /// [`ApiError`]: super::ApiError
    #[default]
    OpenAi,
    /// RFC 6749 §5.2's `{"error": code, "error_description": message}`: the auth service.
    OAuth,
    /// The original Python services' `{"detail": message}`: the agent runtime and gateway.
    Detail,
    /// The message as `text/plain`: the website, whose pages are HTML, not JSON.
    PlainText,
}

/// One error about to be answered: status, a kind and code (`payload_too_large`), the
/// client-facing message and, for 5xx, a detail that is logged but never sent.
#[derive(Debug, Clone)]
pub struct ErrorEnvelope<'a> {
    /// The HTTP status.
    pub status: StatusCode,
    /// The OpenAI `type` (`invalid_request_error`).
    pub kind: &'a str,
    /// A machine-readable code: the OpenAI `code`; the RFC 6749 `error` (`kind` when `None`).
    pub code: Option<&'a str>,
    /// What the client reads.
    pub message: &'a str,
    /// Logged for 5xx, never sent.
    pub detail: Option<&'a str>,
}

impl ErrorEnvelope<'_> {
    /// Logs the error (5xx once at error level, the rest at debug) and renders it in `shape`.
    pub fn render(&self, shape: ErrorShape) -> Response {
        log_error(self.status, self.kind, self.message, self.detail);
        let body = match shape {
            ErrorShape::OpenAi => serde_json::json!({
                "error": {
                    "message": self.message,
                    "type": self.kind,
                    "param": null,
                    "code": self.code,
                }
            }),
            ErrorShape::OAuth => serde_json::json!({
                "error": self.code.unwrap_or(self.kind),
                "error_description": self.message,
            }),
            ErrorShape::Detail => serde_json::json!({ "detail": self.message }),
            ErrorShape::PlainText => {
                let mut response = (self.status, self.message.to_owned()).into_response();
                response.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("text/plain; charset=utf-8"),
                );
                return response;
            }
        };
        (self.status, Json(body)).into_response()
    }
}

/// Logs an error answer once: 5xx at error level with its (never sent) detail, the rest at
/// debug. Every service's error type calls this from its `IntoResponse`.
pub fn log_error(status: StatusCode, kind: &str, message: &str, detail: Option<&str>) {
    if status.is_server_error() {
        tracing::error!(
            status = status.as_u16(),
            error.kind = kind,
            error.detail = detail.unwrap_or(""),
            "{message}"
        );
    } else {
        tracing::debug!(status = status.as_u16(), error.kind = kind, "{message}");
    }
}

/// A response extension naming the shape the service answers errors in, stamped by
/// [`with_standard_layers`](super::with_standard_layers) from its
/// [`ServiceInfo`](super::ServiceInfo), so the listener's 408 (rendered outside the router)
/// uses it too.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServiceErrorShape(pub ErrorShape);

#[cfg(test)]
mod tests {
    use super::*;

    async fn rendered(shape: ErrorShape) -> (StatusCode, Option<String>, String) {
        let response = ErrorEnvelope {
            status: StatusCode::PAYLOAD_TOO_LARGE,
            kind: "invalid_request_error",
            code: Some("payload_too_large"),
            message: "too big",
            detail: None,
        }
        .render(shape);
        let status = response.status();
        let content_type = response
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let body = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .expect("a rendered body");
        (
            status,
            content_type,
            String::from_utf8_lossy(&body).into_owned(),
        )
    }

    fn json(text: &str) -> serde_json::Value {
        serde_json::from_str(text).expect("a JSON body")
    }

    #[tokio::test]
    async fn each_shape_renders_its_own_wire_format() {
        let (status, _, body) = rendered(ErrorShape::OpenAi).await;
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(
            json(&body),
            serde_json::json!({"error": {"message": "too big", "type": "invalid_request_error",
                "param": null, "code": "payload_too_large"}})
        );
        let (_, _, body) = rendered(ErrorShape::OAuth).await;
        assert_eq!(
            json(&body),
            serde_json::json!({"error": "payload_too_large", "error_description": "too big"})
        );
        let (_, _, body) = rendered(ErrorShape::Detail).await;
        assert_eq!(json(&body), serde_json::json!({"detail": "too big"}));
        let (_, content_type, body) = rendered(ErrorShape::PlainText).await;
        assert_eq!(body, "too big");
        assert!(content_type.is_some_and(|v| v.starts_with("text/plain")));
    }
}
