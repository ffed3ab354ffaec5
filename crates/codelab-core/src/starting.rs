//! A service whose database does not answer yet: it is built again with a bounded backoff
//! while its listener answers `/health` (alive) and `/ready` 503 (not ready, naming the
//! database), so an orchestrator or `codelab up` waits for the database instead of exiting
//! (docs/reliability.md, "PostgreSQL unavailable at start"). `codelab serve` and the stack
//! behind `codelab up` share it.

use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::Duration;

use axum::Router;
use axum::extract::Request;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use tower::ServiceExt as _;

use crate::service::{Service, SharedDeps};

/// First pause between two attempts to build a service whose database does not answer; it
/// doubles up to [`DATABASE_RETRY_MAX`] (each attempt also waits for the pool's connect
/// timeout).
pub const DATABASE_RETRY_FIRST: Duration = Duration::from_millis(500);
/// Longest pause between two attempts.
pub const DATABASE_RETRY_MAX: Duration = Duration::from_secs(5);
/// `Retry-After` of the 503 answers while a service starts, in seconds.
pub const RETRY_AFTER_SECONDS: &str = "5";

/// Whether `error` (or what caused it) is a database that does not answer yet
/// ([`crate::db::database_unavailable`]: refused, timed out, starting up, shutting down).
/// A database that answers and refuses (wrong password, no `pg_hba.conf` entry) is not.
pub fn database_unreachable(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(error);
    while let Some(error) = next {
        if let Some(sqlx_error) = error.downcast_ref::<sqlx::Error>() {
            return crate::db::database_unavailable(sqlx_error);
        }
        next = error.source();
    }
    false
}

/// Builds `S` again and again, after a first attempt that failed with `first_error`, while
/// the reason it cannot start is its database not answering; `waiting` hears each such reason
/// (the first included) before the pause. Any other error is returned at once. `None` when
/// the shutdown token of `deps` fired first (an attempt in progress is abandoned).
pub async fn build_when_database_answers<S: Service>(
    config: &S::Config,
    deps: &SharedDeps,
    first_error: String,
    mut waiting: impl FnMut(&str),
) -> Result<Option<Arc<S>>, S::BuildError> {
    let shutdown = deps.shutdown.clone();
    let mut pause = DATABASE_RETRY_FIRST;
    let mut error = first_error;
    loop {
        // The error names the database with its password redacted.
        tracing::warn!(
            service = S::NAME,
            %error,
            retry_in_ms = pause.as_millis() as u64,
            "the database does not answer; not ready, retrying"
        );
        waiting(&error);
        tokio::select! {
            () = shutdown.cancelled() => return Ok(None),
            () = tokio::time::sleep(pause) => {}
        }
        pause = (pause * 2).min(DATABASE_RETRY_MAX);
        let built = tokio::select! {
            () = shutdown.cancelled() => return Ok(None),
            built = S::build(config.clone(), deps.clone()) => built,
        };
        error = match built {
            Ok(state) => return Ok(Some(state)),
            Err(error) if database_unreachable(&error) => error.to_string(),
            Err(error) => return Err(error),
        };
    }
}

/// A listener's router while a service starts: every request goes to the service's router
/// once [`Starting::serve`] handed it over, and meanwhile to a router that answers for it
/// (by default `/health` 200, `/ready` 503 naming the database, anything else 503).
#[derive(Clone, Default)]
pub struct Starting {
    service: Arc<OnceLock<Router>>,
    why: Arc<Mutex<String>>,
}

impl Starting {
    /// Records why the service is not ready (shown by `/ready` of [`Starting::router`]).
    pub fn not_ready(&self, why: impl Into<String>) {
        *self.why.lock().unwrap_or_else(PoisonError::into_inner) = why.into();
    }

    /// Why the service is not ready, as last recorded.
    pub fn why(&self) -> String {
        self.why
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Hands every later request to `router` (the first router handed over stays).
    pub fn serve(&self, router: Router) {
        let _ = self.service.set(router);
    }

    /// The router of a service's own listener while it waits for its database.
    pub fn router(&self) -> Router {
        let starting = self.clone();
        self.router_answering(Router::new().fallback(move |request: Request| {
            let starting = starting.clone();
            async move { starting.answer(request.uri().path()) }
        }))
    }

    /// Hands every request to the service's router once it is there, to `waiting` meanwhile
    /// (the front door of `codelab up` answers in each routed service's own error shape).
    pub fn router_answering(&self, waiting: Router) -> Router {
        let starting = self.clone();
        Router::new().fallback(move |request: Request| {
            let router = starting.service.get().cloned().unwrap_or(waiting.clone());
            async move { router.oneshot(request).await.into_response() }
        })
    }

    fn answer(&self, path: &str) -> Response {
        match path {
            // Alive: a liveness probe must not restart a process that waits for its database.
            "/health" => axum::Json(serde_json::json!({"status": "starting"})).into_response(),
            "/ready" => (
                StatusCode::SERVICE_UNAVAILABLE,
                axum::Json(serde_json::json!({
                    "status": "not_ready",
                    "checks": {"database": self.why()},
                })),
            )
                .into_response(),
            _ => (
                StatusCode::SERVICE_UNAVAILABLE,
                [(header::RETRY_AFTER, RETRY_AFTER_SECONDS)],
                axum::Json(serde_json::json!({
                    "detail": "the service is starting: its database does not answer yet",
                })),
            )
                .into_response(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::{DbError, DbKind};

    fn connect_error(source: sqlx::Error) -> DbError {
        DbError::Connect {
            kind: DbKind::Postgres,
            url: "postgres://u:***@db/x".into(),
            source,
        }
    }

    #[test]
    fn a_database_that_does_not_answer_is_waited_for() {
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        for error in [
            connect_error(sqlx::Error::PoolTimedOut),
            connect_error(sqlx::Error::Io(refused)),
        ] {
            assert!(database_unreachable(&error), "{error}");
            // Wrapped by a service's error, as `Service::build` returns it.
            let wrapped = ServiceFailed(error);
            assert!(database_unreachable(&wrapped));
        }
    }

    #[derive(Debug, thiserror::Error)]
    #[error("the service failed")]
    struct ServiceFailed(#[source] DbError);

    #[test]
    fn other_start_errors_stop_the_process() {
        let refused_setting = connect_error(sqlx::Error::Configuration("bad url".into()));
        assert!(!database_unreachable(&refused_setting));
        let plain = std::io::Error::other("no such file");
        assert!(!database_unreachable(&plain));
    }

    #[tokio::test]
    async fn the_waiting_answers_give_way_to_the_service() {
        let starting = Starting::default();
        starting.not_ready("unreachable: refused");
        let router = starting.router();
        let status = |router: Router, path: &'static str| async move {
            let request = Request::builder().uri(path).body(axum::body::Body::empty());
            router
                .oneshot(request.expect("a valid request"))
                .await
                .map(|response| response.status())
        };
        assert_eq!(status(router.clone(), "/health").await, Ok(StatusCode::OK));
        assert_eq!(
            status(router.clone(), "/ready").await,
            Ok(StatusCode::SERVICE_UNAVAILABLE)
        );
        assert_eq!(
            status(router.clone(), "/sessions").await,
            Ok(StatusCode::SERVICE_UNAVAILABLE)
        );
        starting.serve(Router::new().fallback(|| async { StatusCode::NO_CONTENT }));
        assert_eq!(status(router, "/ready").await, Ok(StatusCode::NO_CONTENT));
    }
}
