//! Usage (docs/usage.md, "Reading it"): the caller's own (`GET /api/v1/usage`), everyone's
//! for admins (`GET /api/v1/admin/usage`, JSON or CSV), and the original's
//! `GET /api/v1/events/metrics/session/{id}` (which its benchmark scripts read) in the
//! original's shape. `GET /api/v1/sessions/{id}/usage` is `super::session_resource`.

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use codelab_protocol::usage::{SessionUsage, UsageReport};
use reqwest::Method;
use serde_json::{Value, json};

use super::{
    AdminCaller, ReadCaller, call_runtime, error, gateway_failure, json_object, proxy, usable_id,
};
use crate::AppState;
use crate::runtime_client::{RuntimeError, encode_segment};

/// The longest query string passed on to the runtime (a report's few parameters are short).
const MAX_QUERY_LEN: usize = 1024;

/// The caller's query string, or why it is refused (too long).
fn bounded_query(query: Option<String>) -> Result<String, String> {
    let query = query.unwrap_or_default();
    if query.len() > MAX_QUERY_LEN {
        return Err(format!(
            "the query string is longer than {MAX_QUERY_LEN} bytes"
        ));
    }
    Ok(query)
}

/// 400 `invalid_request` with `detail`.
fn invalid_request(detail: String) -> Response {
    error(StatusCode::BAD_REQUEST, "invalid_request", detail)
}

/// `path` with `query` (none when empty).
fn with_query(path: &str, query: &str) -> String {
    if query.is_empty() {
        path.to_owned()
    } else {
        format!("{path}?{query}")
    }
}

/// `GET /api/v1/admin/budgets`: every budget, the default first (`subject` `*`). Admins only.
pub async fn list_budgets(
    State(state): State<Arc<AppState>>,
    AdminCaller(caller): AdminCaller,
) -> Response {
    proxy(&state, &caller, Method::GET, "/admin/budgets", None).await
}

/// `PUT /api/v1/admin/budgets/{subject}` (a user id, or `default`): sets that budget, replacing
/// the previous one. Admins only.
pub async fn set_budget(
    State(state): State<Arc<AppState>>,
    AdminCaller(caller): AdminCaller,
    Path(subject): Path<String>,
    body: Bytes,
) -> Response {
    match json_object(&body, "{\"daily_tokens\": 100000}") {
        Ok(limits) => budget_call(&state, &caller, Method::PUT, &subject, Some(limits)).await,
        Err(refused) => *refused,
    }
}

/// `DELETE /api/v1/admin/budgets/{subject}`: removes that budget (404 when there is none).
/// Admins only.
pub async fn clear_budget(
    State(state): State<Arc<AppState>>,
    AdminCaller(caller): AdminCaller,
    Path(subject): Path<String>,
) -> Response {
    budget_call(&state, &caller, Method::DELETE, &subject, None).await
}

async fn budget_call(
    state: &AppState,
    caller: &crate::auth::Principal,
    method: Method,
    subject: &str,
    body: Option<Value>,
) -> Response {
    if !usable_id(subject) {
        return invalid_request("the subject is `default` or a user id".to_owned());
    }
    let path = format!("/admin/budgets/{}", encode_segment(subject));
    proxy(state, caller, method, &path, body).await
}

/// Whether `query` asks for CSV (`format=csv`; `json` is the default), and the rest of it, for
/// the runtime to check.
fn split_format(query: &str) -> Result<(bool, String), String> {
    let mut csv = false;
    let mut passed = form_urlencoded::Serializer::new(String::new());
    for (name, value) in form_urlencoded::parse(query.as_bytes()) {
        if name != "format" {
            passed.append_pair(&name, &value);
            continue;
        }
        csv = match value.as_ref() {
            "csv" => true,
            "json" => false,
            _ => return Err("format must be json or csv".to_owned()),
        };
    }
    Ok((csv, passed.finish()))
}

/// `GET /api/v1/usage?from=&to=`: the caller's LLM calls in the range (default: this UTC month
/// so far), in total, per day, model and agent, and the sessions that used the most.
pub async fn my_usage(
    State(state): State<Arc<AppState>>,
    ReadCaller(caller): ReadCaller,
    RawQuery(query): RawQuery,
) -> Response {
    match bounded_query(query) {
        Ok(query) => {
            proxy(
                &state,
                &caller,
                Method::GET,
                &with_query("/usage", &query),
                None,
            )
            .await
        }
        Err(detail) => invalid_request(detail),
    }
}

/// `GET /api/v1/admin/usage?group_by=&from=&to=&user=&format=`: everyone's LLM calls grouped by
/// up to two of `user`, `model`, `agent`, `day`; `format=csv` answers a CSV file. Admins only
/// (`api:admin`).
pub async fn admin_usage(
    State(state): State<Arc<AppState>>,
    AdminCaller(caller): AdminCaller,
    RawQuery(query): RawQuery,
) -> Response {
    let (csv, passed) = match bounded_query(query).and_then(|query| split_format(&query)) {
        Ok(split) => split,
        Err(detail) => return invalid_request(detail),
    };
    let path = with_query("/admin/usage", &passed);
    if !csv {
        return proxy(&state, &caller, Method::GET, &path, None).await;
    }
    let body = match call_runtime(&state, &caller, Method::GET, &path, None).await {
        Ok((_, body)) => body,
        Err(refused) => return refused,
    };
    match serde_json::from_value::<UsageReport>(body) {
        Ok(report) => (
            StatusCode::OK,
            [
                (header::CONTENT_TYPE, "text/csv; charset=utf-8"),
                (
                    header::CONTENT_DISPOSITION,
                    "attachment; filename=\"codelab-usage.csv\"",
                ),
            ],
            report.to_csv(),
        )
            .into_response(),
        Err(failure) => gateway_failure(&RuntimeError::Invalid(format!(
            "unexpected usage report from the runtime: {failure}"
        ))),
    }
}

/// `GET /api/v1/events/metrics/session/{id}`: the session's LLM calls as the original counted
/// them; 404 `{"error": "No metrics found for session <id>"}` for a session without calls,
/// another user's or a missing one.
pub async fn session_metrics(
    State(state): State<Arc<AppState>>,
    ReadCaller(caller): ReadCaller,
    Path(session_id): Path<String>,
) -> Response {
    let none = || {
        let shown: String = session_id.chars().take(super::MAX_ID_LEN).collect();
        (
            StatusCode::NOT_FOUND,
            Json(json!({ "error": format!("No metrics found for session {shown}") })),
        )
            .into_response()
    };
    if !usable_id(&session_id) {
        return none();
    }
    match state
        .runtime
        .session_part::<SessionUsage>(&session_id, &caller.user_id)
        .await
    {
        Ok(usage) if usage.totals.requests > 0 => {
            (StatusCode::OK, Json(original_shape(&usage))).into_response()
        }
        Ok(_) | Err(RuntimeError::Status { status: 404, .. }) => none(),
        Err(failure) => gateway_failure(&failure),
    }
}

/// The original's fields: totals, averages and one entry per call, oldest first.
fn original_shape(usage: &SessionUsage) -> Value {
    let calls = usage
        .turns
        .iter()
        .flat_map(|turn| &turn.steps)
        .flat_map(|step| &step.calls);
    let mut requests = Vec::new();
    let (mut successful, mut with_tools, mut duration_ms) = (0u64, 0u64, 0u64);
    for call in calls {
        let success = call.outcome == "ok";
        successful += u64::from(success);
        with_tools += u64::from(call.tool_calls > 0);
        duration_ms += call.latency_ms;
        requests.push(json!({
            "timestamp": call.created_at,
            "model": call.model.as_deref().unwrap_or(&call.requested_model),
            "duration_ms": call.latency_ms,
            "prompt_tokens": call.prompt_tokens,
            "completion_tokens": call.completion_tokens,
            "total_tokens": call.total_tokens,
            "has_tool_calls": call.tool_calls > 0,
            "success": success,
            "error": if success { None } else { call.error_kind.as_deref().or(Some(call.outcome.as_str())) },
        }));
    }
    let totals = &usage.totals;
    // Averages over at least one call: the caller answers 404 without any.
    let count = totals.requests.max(1) as f64;
    json!({
        "session_id": usage.session_id,
        "total_requests": totals.requests,
        "successful_requests": successful,
        "failed_requests": totals.requests - successful,
        "total_duration_ms": duration_ms,
        "average_duration_ms": duration_ms as f64 / count,
        "total_prompt_tokens": totals.prompt_tokens,
        "total_completion_tokens": totals.completion_tokens,
        "total_tokens": totals.total_tokens,
        "average_tokens_per_request": totals.total_tokens as f64 / count,
        "requests_with_tools": with_tools,
        "requests": requests,
    })
}
