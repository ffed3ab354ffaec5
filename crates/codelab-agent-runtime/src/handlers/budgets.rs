//! Budgets through the API (docs/usage.md, "Budgets"): list, set and clear, by user id or
//! `default`. The gateway admits only admins (`api:admin`); `codelab admin budget` does the same
//! on the database by username.

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use codelab_core::db::now_from;
use codelab_protocol::usage::{BudgetList, BudgetView};
use serde::Deserialize;
use serde_json::Number;

use super::{HttpError, is_valid_user_id};
use crate::AppState;
use crate::budgets;
use crate::model::{Budget, DEFAULT_BUDGET};

/// The path name of the default budget (`*` in the store).
pub const DEFAULT_SUBJECT: &str = "default";

/// The limits of `PUT /admin/budgets/{subject}`: each optional, `null` or absent is no limit.
/// Counts are JSON numbers without a fraction (`149.0` is 149, as JSON Schema reads it).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Limits {
    daily_tokens: Option<Number>,
    monthly_tokens: Option<Number>,
    daily_cost: Option<f64>,
    monthly_cost: Option<f64>,
    requests_per_minute: Option<Number>,
    tokens_per_minute: Option<Number>,
}

/// A count limit as a whole number, or 400 naming `name`.
fn count(name: &str, value: Option<Number>) -> Result<Option<u64>, HttpError> {
    let Some(value) = value else {
        return Ok(None);
    };
    let whole = value.as_u64().or_else(|| {
        value
            .as_f64()
            .filter(|v| v.fract() == 0.0 && (0.0..=budgets::MAX_COUNT as f64).contains(v))
            .map(|v| v as u64)
    });
    whole.map(Some).ok_or_else(|| {
        HttpError::bad_request(format!(
            "{name} must be a whole number from 1 to {}",
            budgets::MAX_COUNT
        ))
    })
}

/// The store's subject of a path's: `default`, or a user id.
fn subject(raw: &str) -> Result<String, HttpError> {
    if raw == DEFAULT_SUBJECT {
        Ok(DEFAULT_BUDGET.to_owned())
    } else if is_valid_user_id(raw) {
        Ok(raw.to_owned())
    } else {
        Err(HttpError::bad_request(
            "the subject is `default` or a user id (1 to 128 characters of A-Z a-z 0-9 _ . - @ : |)",
        ))
    }
}

/// `GET /admin/budgets`: `{"budgets": [...]}`, the default first.
pub async fn list_budgets(
    State(state): State<Arc<AppState>>,
) -> Result<Json<BudgetList>, HttpError> {
    let budgets = state.store.list_budgets().await?;
    Ok(Json(BudgetList {
        budgets: budgets.iter().map(Budget::view).collect(),
    }))
}

/// `PUT /admin/budgets/{subject}`: sets the budget, replacing the previous one (a limit not
/// given is no limit); answers it.
pub async fn set_budget(
    State(state): State<Arc<AppState>>,
    Path(raw): Path<String>,
    body: Bytes,
) -> Result<Json<BudgetView>, HttpError> {
    let subject = subject(&raw)?;
    let limits: Limits = serde_json::from_slice(&body)
        .map_err(|error| HttpError::bad_request(format!("invalid budget: {error}")))?;
    let budget = Budget {
        subject,
        daily_tokens: count("daily_tokens", limits.daily_tokens)?,
        monthly_tokens: count("monthly_tokens", limits.monthly_tokens)?,
        daily_cost: limits.daily_cost,
        monthly_cost: limits.monthly_cost,
        requests_per_minute: count("requests_per_minute", limits.requests_per_minute)?,
        tokens_per_minute: count("tokens_per_minute", limits.tokens_per_minute)?,
        updated_at: now_from(state.clock.as_ref()),
    };
    if let Some(refusal) = budgets::refusal(&budget) {
        return Err(HttpError::bad_request(refusal));
    }
    state.store.set_budget(&budget).await?;
    Ok(Json(budget.view()))
}

/// `DELETE /admin/budgets/{subject}`: 204, or 404 when there was none.
pub async fn clear_budget(
    State(state): State<Arc<AppState>>,
    Path(raw): Path<String>,
) -> Result<StatusCode, HttpError> {
    let subject = subject(&raw)?;
    if state.store.clear_budget(&subject).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(HttpError::not_found(format!("{raw} has no budget")))
    }
}
