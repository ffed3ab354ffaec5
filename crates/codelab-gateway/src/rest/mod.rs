//! The REST half of `/api/v1`: sessions, approvals, plans, agents and the OpenAPI document, proxied
//! to the agent runtime for the authenticated user, in the shapes the Flutter IDE parses
//! (`docs/gateway.md`, "REST endpoints").
//!
//! Every call acts for the caller's user (`X-Codelab-User-Id` on the runtime link), so another
//! user's session answers 404 exactly like a missing one. Runtime errors keep their status as
//! `{"error": "Agent Runtime error: <status>", "detail": <runtime detail>}`; an unreachable
//! runtime is 502 `{"error": "Gateway error", "detail": ...}`. The original's
//! `GET /events/metrics`, `/events/metrics/sessions`, `/events/audit-log` and `/events/stats`
//! passthroughs are gone (the runtime's metrics are Prometheus series at `/metrics`);
//! `/events/metrics/session/{id}` is answered from the usage records (`usage`).

mod agents;
mod approvals;
mod plans;
mod sessions;
mod usage;

use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::extract::{FromRequestParts, Path, State};
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use codelab_core::http::log_error;
use codelab_protocol::internal::SessionResource;
use codelab_protocol::plans::SessionPlans;
use codelab_protocol::usage::SessionUsage;
use serde::Serialize;
use serde_json::{Value, json};

use crate::AppState;
use crate::auth::{ADMIN_SCOPE, Principal, READ_SCOPE, WRITE_SCOPE, credentials_required};
use crate::runtime_client::{RuntimeError, encode_segment};

/// Longest id accepted in a path (session, call or agent); the runtime's are shorter.
const MAX_ID_LEN: usize = 128;

/// The REST routes (health, sessions, approvals, plans, agents, OpenAPI), without layers.
pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/api/v1/health", get(show_health))
        .route("/api/v1/openapi.json", get(show_openapi))
        .route("/openapi.json", get(show_openapi))
        .route(
            "/api/v1/sessions",
            get(sessions::list_sessions).post(sessions::create_session),
        )
        .route(
            "/api/v1/sessions/{id}",
            get(sessions::get_session)
                .patch(sessions::update_session)
                .delete(sessions::delete_session),
        )
        .route(
            "/api/v1/sessions/{id}/history",
            get(sessions::session_history),
        )
        .route(
            "/api/v1/sessions/{id}/pending-approvals",
            get(sessions::pending_approvals),
        )
        .route(
            "/api/v1/sessions/{id}/approvals/{call_id}",
            post(approvals::decide_approval),
        )
        .route("/api/v1/sessions/{id}/cancel", post(approvals::cancel_turn))
        .route(
            "/api/v1/sessions/{id}/plans",
            get(session_resource::<SessionPlans>),
        )
        .route(
            "/api/v1/sessions/{id}/usage",
            get(session_resource::<SessionUsage>),
        )
        .route(
            "/api/v1/events/metrics/session/{id}",
            get(usage::session_metrics),
        )
        .route("/api/v1/usage", get(usage::my_usage))
        .route("/api/v1/admin/usage", get(usage::admin_usage))
        .route("/api/v1/admin/budgets", get(usage::list_budgets))
        .route(
            "/api/v1/admin/budgets/{subject}",
            axum::routing::put(usage::set_budget).delete(usage::clear_budget),
        )
        .route("/api/v1/plans/{id}", get(plans::get_plan))
        .route("/api/v1/plans/{id}/decision", post(plans::decide_plan))
        .route("/api/v1/agents", get(agents::list_agents))
        .route("/api/v1/agents/{id}", get(agents::get_agent))
        .route("/api/v1/agents/{id}/current", get(agents::current_agent))
}

/// `GET /api/v1/health`: the same liveness answer as `/health`, in the original's shape.
async fn show_health(State(state): State<Arc<AppState>>) -> Json<Value> {
    Json(health_body(&state))
}

/// `{"status": "healthy", "service": "gateway", "version": ...}`.
pub fn health_body(state: &AppState) -> Value {
    json!({
        "status": "healthy",
        "service": state.info.name,
        "version": state.info.version,
    })
}

/// `GET /api/v1/openapi.json` (and `/openapi.json`).
async fn show_openapi(State(state): State<Arc<AppState>>) -> Json<Value> {
    Json(crate::openapi::document(&state.info.version))
}

/// The authenticated caller of a REST request, with any scope.
///
/// A presented credential is always checked (an invalid one is 401 in every mode). Without
/// one, `use_jwt_auth = false` (development only) acts as the development user `dev`;
/// otherwise the answer is 401 with `WWW-Authenticate: Bearer`.
#[derive(Debug, Clone)]
pub struct Caller(pub Principal);

impl FromRequestParts<Arc<AppState>> for Caller {
    type Rejection = Response;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<AppState>,
    ) -> Result<Self, Self::Rejection> {
        match state.auth.authenticate(&parts.headers, None).await {
            Ok(Some(principal)) => Ok(Caller(principal)),
            Ok(None) if !state.config.use_jwt_auth => Ok(Caller(Principal::dev())),
            Ok(None) => Err(credentials_required()),
            Err(error) => {
                crate::metrics::auth_failure(error.reason());
                tracing::debug!(reason = error.reason(), "refused REST credentials");
                Err(error.into_response())
            }
        }
    }
}

/// A [`Caller`] that holds `scope`, else 403 `insufficient_scope`.
async fn caller_with_scope(
    parts: &mut Parts,
    state: &Arc<AppState>,
    scope: &'static str,
) -> Result<Principal, Response> {
    let Caller(principal) = Caller::from_request_parts(parts, state).await?;
    principal.require(scope).map_err(|error| {
        crate::metrics::auth_failure(error.reason());
        error.into_response()
    })?;
    Ok(principal)
}

/// A caller that may read (`api:read`): listing and reading sessions, history, approvals and
/// agents.
#[derive(Debug, Clone)]
pub struct ReadCaller(pub Principal);

impl FromRequestParts<Arc<AppState>> for ReadCaller {
    type Rejection = Response;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<AppState>,
    ) -> Result<Self, Self::Rejection> {
        caller_with_scope(parts, state, READ_SCOPE).await.map(Self)
    }
}

/// A caller that may act (`api:write`): creating, renaming and deleting sessions, deciding
/// approvals, cancelling turns.
#[derive(Debug, Clone)]
pub struct WriteCaller(pub Principal);

impl FromRequestParts<Arc<AppState>> for WriteCaller {
    type Rejection = Response;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<AppState>,
    ) -> Result<Self, Self::Rejection> {
        caller_with_scope(parts, state, WRITE_SCOPE).await.map(Self)
    }
}

/// A caller that may use the admin routes (`api:admin`; service callers and the development
/// user always may).
#[derive(Debug, Clone)]
pub struct AdminCaller(pub Principal);

impl FromRequestParts<Arc<AppState>> for AdminCaller {
    type Rejection = Response;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<AppState>,
    ) -> Result<Self, Self::Rejection> {
        caller_with_scope(parts, state, ADMIN_SCOPE).await.map(Self)
    }
}

/// A path id the gateway forwards: 1 to 128 characters, no control characters, and not a dot
/// segment (which URL normalisation would turn into another path on the runtime).
/// `GET /api/v1/sessions/{id}/plans` (`{"plans": [...]}`, oldest first) and `/usage` (the LLM
/// calls per turn and step, docs/usage.md): the runtime's answer for the caller's session, as
/// it is.
async fn session_resource<T: SessionResource + Serialize>(
    State(state): State<Arc<AppState>>,
    ReadCaller(caller): ReadCaller,
    Path(session_id): Path<String>,
) -> Response {
    if !usable_id(&session_id) {
        return session_not_found(&session_id);
    }
    match state
        .runtime
        .session_part::<T>(&session_id, &caller.user_id)
        .await
    {
        Ok(answer) => (StatusCode::OK, Json(answer)).into_response(),
        Err(failure) => gateway_failure(&failure),
    }
}

fn usable_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_ID_LEN
        && !id.chars().all(|c| c == '.')
        && !id.chars().any(char::is_control)
}

/// Relays a call about one session to the runtime path `{prefix}/{id}{suffix}`; an id the
/// gateway will not forward answers as an unknown session.
async fn proxy_session(
    state: &AppState,
    caller: &Principal,
    method: reqwest::Method,
    (prefix, id, suffix): (&str, &str, &str),
    body: Option<Value>,
) -> Response {
    if !usable_id(id) {
        return session_not_found(id);
    }
    let path = format!("{prefix}/{}{suffix}", encode_segment(id));
    proxy(state, caller, method, &path, body).await
}

/// A request body that must be a JSON object (`example` shows one), or the 400 refusing it
/// (boxed: a response is large next to the value).
fn json_object(body: &[u8], example: &str) -> Result<Value, Box<Response>> {
    match serde_json::from_slice::<Value>(body) {
        Ok(body @ Value::Object(_)) => Ok(body),
        Ok(_) => Err(Box::new(error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            format!("expected a JSON object such as {example}"),
        ))),
        Err(e) => Err(Box::new(error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            format!("invalid JSON in request body: {e}"),
        ))),
    }
}

/// A gateway-made error: `{"error": <code>, "detail": <text>}`.
fn error(status: StatusCode, code: &str, detail: impl Into<Value>) -> Response {
    let detail = detail.into();
    log_error(status, "gateway_error", code, Some(&detail.to_string()));
    (status, Json(json!({ "error": code, "detail": detail }))).into_response()
}

/// 404 for an id the gateway will not forward (the same answer as an unknown session).
fn session_not_found(id: &str) -> Response {
    let shown: String = id.chars().take(MAX_ID_LEN).collect();
    error(
        StatusCode::NOT_FOUND,
        "Agent Runtime error: 404",
        format!("session {shown} not found"),
    )
}

/// A runtime answer that is not 2xx, its status preserved, in the shape of the endpoint's
/// branch (`docs/gateway.md`, "Errors").
fn runtime_failure(status: u16, body: &Value) -> Response {
    let detail = match body.get("detail") {
        Some(detail) => detail.clone(),
        None => body.clone(),
    };
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY);
    error(
        status,
        &format!("Agent Runtime error: {}", status.as_u16()),
        detail,
    )
}

/// A failed runtime call: a status answer keeps its status; no answer is 502 (504 when it
/// timed out), as `{"error": "Gateway error", "detail": ...}`.
fn gateway_failure(failure: &RuntimeError) -> Response {
    match failure {
        RuntimeError::Status { status, detail } => {
            runtime_failure(*status, &json!({ "detail": detail }))
        }
        RuntimeError::Timeout(_) => error(
            StatusCode::GATEWAY_TIMEOUT,
            "Gateway error",
            failure.to_string(),
        ),
        _ => error(
            StatusCode::BAD_GATEWAY,
            "Gateway error",
            failure.to_string(),
        ),
    }
}

/// One REST call to the runtime as `caller`: `Ok((status, body))` for a 2xx answer, the
/// error response otherwise.
async fn call_runtime(
    state: &AppState,
    caller: &Principal,
    method: reqwest::Method,
    path_and_query: &str,
    body: Option<Value>,
) -> Result<(u16, Value), Response> {
    match state
        .runtime
        .request(method, path_and_query, &caller.user_id, body, false)
        .await
    {
        Ok((status, body)) if (200..300).contains(&status) => Ok((status, body)),
        Ok((status, body)) => Err(runtime_failure(status, &body)),
        Err(failure) => Err(gateway_failure(&failure)),
    }
}

/// Relays a runtime call: any 2xx is 200 with the body (201 becomes 200, as the original
/// gateway answered), 204 stays 204.
async fn proxy(
    state: &AppState,
    caller: &Principal,
    method: reqwest::Method,
    path_and_query: &str,
    body: Option<Value>,
) -> Response {
    match call_runtime(state, caller, method, path_and_query, body).await {
        Ok((204, _)) => StatusCode::NO_CONTENT.into_response(),
        Ok((_, body)) => (StatusCode::OK, Json(body)).into_response(),
        Err(response) => response,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dot_segments_and_control_characters_are_not_forwarded() {
        for bad in ["", ".", "..", "...", "a\nb", &"x".repeat(129)] {
            assert!(!usable_id(bad), "{bad:?}");
        }
        for ok in [
            "0f8fad5b-d9cb-469f-a165-70867728950e",
            "new_1",
            "a.b",
            "call_1:x",
        ] {
            assert!(usable_id(ok), "{ok:?}");
        }
    }

    #[test]
    fn runtime_errors_keep_their_status_and_detail() {
        let response = runtime_failure(404, &json!({"detail": "session s not found"}));
        assert_eq!(response.status(), StatusCode::NOT_FOUND);
        let response = gateway_failure(&RuntimeError::Unreachable("refused".into()));
        assert_eq!(response.status(), StatusCode::BAD_GATEWAY);
        let response = gateway_failure(&RuntimeError::Timeout(30.0));
        assert_eq!(response.status(), StatusCode::GATEWAY_TIMEOUT);
    }
}
