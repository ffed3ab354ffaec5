//! `/health`, `/ready` and `/metrics`.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Json};
use axum::routing::get;
use futures_util::FutureExt;
use futures_util::future::{BoxFuture, join_all};

use super::ServiceInfo;
use crate::telemetry::{metrics_handle, render_metrics};

/// How long one readiness check may take before it counts as failed.
pub const READY_CHECK_TIMEOUT: Duration = Duration::from_secs(2);

type Check = Arc<dyn Fn() -> BoxFuture<'static, Result<(), String>> + Send + Sync>;

/// The named checks `/ready` runs (database, cache, downstream services).
#[derive(Clone, Default)]
pub struct Readiness {
    checks: Vec<(String, Check)>,
}

impl std::fmt::Debug for Readiness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.checks.iter().map(|(name, _)| name))
            .finish()
    }
}

/// The outcome of running every readiness check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadinessReport {
    /// Whether every check passed.
    pub ready: bool,
    /// Each check's `"ok"` or error text.
    pub checks: BTreeMap<String, String>,
}

impl Readiness {
    /// No checks: always ready.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a check; it passes with `Ok(())` within [`READY_CHECK_TIMEOUT`].
    #[must_use]
    pub fn with_check<F>(mut self, name: impl Into<String>, check: F) -> Self
    where
        F: Fn() -> BoxFuture<'static, Result<(), String>> + Send + Sync + 'static,
    {
        self.checks.push((name.into(), Arc::new(check)));
        self
    }

    /// Adds a check of `target` (a store, a cache, a client): each run calls `probe` with a
    /// clone of it; an error fails the check with its text.
    #[must_use]
    pub fn with_probe<T, P, F, E>(self, name: impl Into<String>, target: T, probe: P) -> Self
    where
        T: Clone + Send + Sync + 'static,
        P: Fn(T) -> F + Send + Sync + 'static,
        F: Future<Output = Result<(), E>> + Send + 'static,
        E: std::fmt::Display,
    {
        self.with_check(name, move || {
            let probed = probe(target.clone());
            async move { probed.await.map_err(|e| e.to_string()) }.boxed()
        })
    }

    /// Runs every check concurrently, each bounded by [`READY_CHECK_TIMEOUT`].
    pub async fn run(&self) -> ReadinessReport {
        let results = join_all(self.checks.iter().map(|(name, check)| {
            let future = check();
            async move {
                let outcome = match tokio::time::timeout(READY_CHECK_TIMEOUT, future).await {
                    Ok(Ok(())) => "ok".to_owned(),
                    Ok(Err(error)) => error,
                    Err(_) => format!("timed out after {}s", READY_CHECK_TIMEOUT.as_secs()),
                };
                (name.clone(), outcome)
            }
        }))
        .await;
        let ready = results.iter().all(|(_, outcome)| outcome == "ok");
        ReadinessReport {
            ready,
            checks: results.into_iter().collect(),
        }
    }
}

/// `GET /health` (liveness, the original's JSON shape), `GET /ready` and `GET /metrics`.
pub fn common_routes(info: ServiceInfo, readiness: Readiness) -> Router {
    // Install the recorder before any handler records a metric.
    let _ = metrics_handle();
    let health = Arc::new(serde_json::json!({
        "status": "healthy",
        "service": info.name,
        "version": info.version,
    }));
    Router::new()
        .route(
            "/health",
            get(move || {
                let health = Arc::clone(&health);
                async move { Json(health.as_ref().clone()) }
            }),
        )
        .route(
            "/ready",
            get(move || {
                let readiness = readiness.clone();
                async move {
                    let report = readiness.run().await;
                    let (status, word) = if report.ready {
                        (StatusCode::OK, "ready")
                    } else {
                        (StatusCode::SERVICE_UNAVAILABLE, "not_ready")
                    };
                    let body = serde_json::json!({ "status": word, "checks": report.checks });
                    (status, Json(body))
                }
            }),
        )
        .route(
            "/metrics",
            get(move || {
                let info = info.clone();
                async move {
                    (
                        [(
                            header::CONTENT_TYPE,
                            "text/plain; version=0.0.4; charset=utf-8",
                        )],
                        render_metrics(&info),
                    )
                        .into_response()
                }
            }),
        )
}
