//! The runtime's internal HTTP API (called by the gateway): the streaming endpoint, sessions
//! and agents. Errors are the original's FastAPI shape, `{"detail": "<text>"}`.
//!
//! Every route requires `X-Internal-Auth`; the user is `X-Codelab-User-Id` (honoured only
//! behind a valid key, which the auth layer guarantees), the development user `dev` when the
//! header is absent. A session of another user answers 404, exactly like a missing one.

pub mod agents;
pub mod budgets;
pub mod plans;
pub mod sessions;
pub mod stream;
pub mod usage;

use std::fmt;

use axum::Json;
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, SecondsFormat, Utc};
use codelab_protocol::internal::SessionSummary;
use serde_json::json;

use crate::AppState;
use crate::model::Session;
use crate::store::StoreError;

use codelab_protocol::internal::is_bounded_id;
/// The headers naming the user a request acts for, and the gateway's development mode
/// (`GATEWAY__SESSION_MODE=off`: a client-chosen session id may then create a session).
pub use codelab_protocol::internal::{DEV_SESSIONS_HEADER, USER_HEADER, is_valid_user_id};
/// The owner of requests without [`USER_HEADER`] (single-user development setups).
pub const DEV_USER: &str = "dev";
/// Longest client-chosen session id.
const MAX_SESSION_ID_LEN: usize = 64;

/// An HTTP error as `{"detail": "<text>"}`; 5xx are logged once here with their cause and
/// answered with a generic text.
#[derive(Debug)]
pub struct HttpError {
    status: StatusCode,
    detail: String,
    /// Logged for 5xx, never sent.
    cause: Option<String>,
}

impl HttpError {
    /// An error with `status` and a client-facing `detail`.
    pub fn new(status: StatusCode, detail: impl Into<String>) -> HttpError {
        HttpError {
            status,
            detail: detail.into(),
            cause: None,
        }
    }

    /// 400.
    pub fn bad_request(detail: impl Into<String>) -> HttpError {
        HttpError::new(StatusCode::BAD_REQUEST, detail)
    }

    /// 404.
    pub fn not_found(detail: impl Into<String>) -> HttpError {
        HttpError::new(StatusCode::NOT_FOUND, detail)
    }

    /// 404 for a session that does not exist or belongs to someone else (the same answer,
    /// so session ids cannot be probed).
    pub fn session_not_found(session_id: &str) -> HttpError {
        HttpError::not_found(format!("session {session_id} not found"))
    }

    /// 500; `cause` is logged, not sent.
    pub fn internal(cause: impl fmt::Display) -> HttpError {
        HttpError {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            detail: "internal server error".to_owned(),
            cause: Some(cause.to_string()),
        }
    }

    /// The status.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The client-facing text.
    pub fn detail(&self) -> &str {
        &self.detail
    }
}

/// What a client is told when the database does not answer (the cause is logged).
pub const DATABASE_UNAVAILABLE: &str = "the database is unavailable; try again shortly";

impl From<StoreError> for HttpError {
    /// A database that does not answer is a 503 the user can act on (try again), not an
    /// internal error (docs/reliability.md, "Several hosts").
    fn from(error: StoreError) -> HttpError {
        if error.is_unavailable() {
            return HttpError {
                status: StatusCode::SERVICE_UNAVAILABLE,
                detail: DATABASE_UNAVAILABLE.to_owned(),
                cause: Some(error.to_string()),
            };
        }
        // A full disk: 507 naming it (docs/reliability.md, "Faults").
        if error.is_disk_full() {
            return HttpError {
                status: StatusCode::INSUFFICIENT_STORAGE,
                detail: crate::engine::DATABASE_DISK_FULL.to_owned(),
                cause: Some(error.to_string()),
            };
        }
        HttpError::internal(error)
    }
}

impl IntoResponse for HttpError {
    fn into_response(self) -> Response {
        codelab_core::http::log_error(
            self.status,
            "http_error",
            &self.detail,
            self.cause.as_deref(),
        );
        (self.status, Json(json!({ "detail": self.detail }))).into_response()
    }
}

/// Answer of unknown paths, as FastAPI's.
pub async fn not_found() -> HttpError {
    HttpError::not_found("Not Found")
}

/// The user a request acts for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner(pub String);

/// Whether `id` may name a session a client chose: 1 to 64 of `A-Z a-z 0-9 _ . -`.
pub fn is_valid_session_id(id: &str) -> bool {
    is_bounded_id(id, MAX_SESSION_ID_LEN, b"_.-")
}

impl<S: Send + Sync> FromRequestParts<S> for Owner {
    type Rejection = HttpError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Owner, HttpError> {
        let Some(value) = parts.headers.get(USER_HEADER) else {
            return Ok(Owner(DEV_USER.to_owned()));
        };
        match value.to_str() {
            Ok(id) if is_valid_user_id(id) => Ok(Owner(id.to_owned())),
            _ => Err(HttpError::bad_request(
                "X-Codelab-User-Id must be 1 to 128 characters of A-Z a-z 0-9 _ . - @ : |",
            )),
        }
    }
}

/// Whether the gateway asked for its development session mode.
pub fn dev_sessions(headers: &HeaderMap) -> bool {
    headers
        .get(DEV_SESSIONS_HEADER)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("true"))
}

/// The live session `session_id` if `owner` owns it; 404 otherwise.
pub async fn owned_session(
    state: &AppState,
    owner: &Owner,
    session_id: &str,
) -> Result<Session, HttpError> {
    match state.store.get_session(session_id).await? {
        Some(session) if session.owner == owner.0 => Ok(session),
        _ => Err(HttpError::session_not_found(session_id)),
    }
}

/// RFC 3339 UTC with microseconds, as every timestamp of the API.
pub fn time(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Micros, true)
}

/// A session as `GET /sessions/{id}` and the list show it (flat, as the Flutter IDE reads it).
pub fn session_summary(session: &Session) -> SessionSummary {
    SessionSummary {
        created_at: Some(time(session.created_at)),
        current_agent: Some(session.current_agent.clone()),
        id: session.id.clone(),
        is_active: true,
        last_activity: Some(time(session.last_activity)),
        message_count: count(session.message_count),
        planning: Some(session.planning.as_str().to_owned()),
        title: session.title.clone(),
    }
}

/// A stored count as the API shows it (never negative).
pub fn count(stored: i64) -> u64 {
    u64::try_from(stored).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_ids_are_bounded_safe_text() {
        for ok in [
            "dev",
            "auth0|abc",
            "a@b.c",
            "0f8fad5b-d9cb-469f-a165-70867728950e",
        ] {
            assert!(is_valid_user_id(ok), "{ok}");
        }
        for bad in ["", "a b", "é", "a\n", &"x".repeat(129)] {
            assert!(!is_valid_user_id(bad), "{bad:?}");
        }
    }

    /// Regression (several hosts: a runtime cut from PostgreSQL answered "500: internal
    /// server error"): a database that does not answer is a 503 saying so; other store errors
    /// stay internal.
    #[test]
    fn an_unreachable_database_is_a_503_that_says_so() {
        for unreachable in [
            sqlx::Error::PoolTimedOut,
            sqlx::Error::Io(std::io::Error::from(std::io::ErrorKind::ConnectionReset)),
        ] {
            let error = HttpError::from(StoreError::Database(unreachable));
            assert_eq!(error.status(), StatusCode::SERVICE_UNAVAILABLE);
            assert_eq!(error.detail(), DATABASE_UNAVAILABLE);
        }
        let error = HttpError::from(StoreError::Database(sqlx::Error::RowNotFound));
        assert_eq!(error.status(), StatusCode::INTERNAL_SERVER_ERROR);
        let error = HttpError::from(StoreError::Corrupt("x".into()));
        assert_eq!(error.status(), StatusCode::INTERNAL_SERVER_ERROR);
    }

    /// A write refused for lack of space (SQLITE_FULL, here from a database that may not
    /// grow) is a 507 naming the full disk, not an internal error (docs/reliability.md,
    /// "Faults").
    #[tokio::test]
    async fn a_full_database_disk_is_a_507_that_says_so() {
        use sqlx::Connection;
        let mut conn = sqlx::SqliteConnection::connect("sqlite::memory:")
            .await
            .unwrap();
        sqlx::query("CREATE TABLE t (v BLOB)")
            .execute(&mut conn)
            .await
            .unwrap();
        sqlx::query("PRAGMA max_page_count = 4")
            .execute(&mut conn)
            .await
            .unwrap();
        let full = sqlx::query("INSERT INTO t VALUES (zeroblob(100000))")
            .execute(&mut conn)
            .await
            .unwrap_err();
        let error = HttpError::from(StoreError::Database(full));
        assert_eq!(error.status(), StatusCode::INSUFFICIENT_STORAGE);
        assert_eq!(error.detail(), crate::engine::DATABASE_DISK_FULL);
    }

    #[test]
    fn client_chosen_session_ids_are_bounded_safe_text() {
        assert!(is_valid_session_id("new_1739180000000"));
        assert!(is_valid_session_id("a.b-c_D9"));
        for bad in ["", "a/b", "a b", "x:y", &"x".repeat(65)] {
            assert!(!is_valid_session_id(bad), "{bad:?}");
        }
    }
}
