//! Usage (docs/usage.md): a session's LLM calls per turn and step, read by its owner; a user's
//! calls per day, model and agent; everyone's, grouped, for admins.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use chrono::{DateTime, NaiveDate, Utc};
use codelab_core::db::now_from;
use codelab_protocol::usage::{
    MyUsage, SessionUsage, UsageCall, UsageReport, UsageRow, UsageTotals,
};

use super::sessions::{Params, params};
use super::{HttpError, Owner, is_valid_user_id, owned_session, time};
use crate::AppState;
use crate::budgets;
use crate::model::{LlmUsage, UsageGroup, UsageGroupTotals, UsageQuery};

/// `GET /sessions/{id}/usage`: the session's calls, oldest first, grouped by turn and step,
/// with totals at every level.
pub async fn session_usage(
    State(state): State<Arc<AppState>>,
    owner: Owner,
    Path(session_id): Path<String>,
) -> Result<Json<SessionUsage>, HttpError> {
    owned_session(&state, &owner, &session_id).await?;
    let rows = state.store.session_usage(&session_id).await?;
    let calls = rows
        .into_iter()
        .map(|row| (row.turn_id.clone(), row.step, usage_call(row)))
        .collect();
    Ok(Json(SessionUsage::of(&session_id, calls)))
}

/// A stored call as the usage answers show it.
pub fn usage_call(row: LlmUsage) -> UsageCall {
    UsageCall {
        id: row.id,
        created_at: time(row.created_at),
        agent: row.agent,
        purpose: row.purpose.as_str().to_owned(),
        requested_model: row.requested_model,
        provider: row.provider,
        model: row.model,
        prompt_tokens: row.prompt_tokens,
        completion_tokens: row.completion_tokens,
        total_tokens: row.total_tokens,
        cached_tokens: row.cached_tokens,
        cost: row.cost,
        latency_ms: row.latency_ms,
        ttft_ms: row.ttft_ms,
        tool_calls: row.tool_calls,
        outcome: row.outcome.as_str().to_owned(),
        error_kind: row.error_kind,
    }
}

/// The most groups of one usage report; more are cut, largest kept, and the answer says so.
pub const MAX_REPORT_ROWS: u32 = 10_000;
/// The longest range a usage report covers.
pub const MAX_REPORT_DAYS: i64 = 400;
/// How many sessions `GET /usage` names as the top ones.
const TOP_SESSIONS: u32 = 10;

/// `from`/`to` of a report: RFC 3339 times or `YYYY-MM-DD` (midnight UTC); by default from the
/// start of this UTC month to now. `to` is exclusive.
fn range(
    params: &HashMap<String, String>,
    now: DateTime<Utc>,
) -> Result<(DateTime<Utc>, DateTime<Utc>), HttpError> {
    let parse = |name: &str| -> Result<Option<DateTime<Utc>>, HttpError> {
        let Some(raw) = params.get(name) else {
            return Ok(None);
        };
        let raw = raw.trim();
        if let Ok(at) = DateTime::parse_from_rfc3339(raw) {
            return Ok(Some(at.with_timezone(&Utc)));
        }
        NaiveDate::parse_from_str(raw, "%Y-%m-%d")
            .map(|day| Some(budgets::midnight(day)))
            .map_err(|_| {
                HttpError::bad_request(format!(
                    "{name} must be an RFC 3339 time or a YYYY-MM-DD date"
                ))
            })
    };
    let from = parse("from")?.unwrap_or_else(|| budgets::month_start(now));
    let to = parse("to")?.unwrap_or(now);
    if from >= to {
        return Err(HttpError::bad_request("from must be before to"));
    }
    if to - from > chrono::Duration::days(MAX_REPORT_DAYS) {
        return Err(HttpError::bad_request(format!(
            "a report covers at most {MAX_REPORT_DAYS} days"
        )));
    }
    Ok((from, to))
}

/// Refuses parameters other than `known` (a typo would otherwise be silently ignored).
fn only(params: &HashMap<String, String>, known: &[&str]) -> Result<(), HttpError> {
    match params.keys().find(|name| !known.contains(&name.as_str())) {
        Some(name) => {
            let shown: String = name.chars().take(64).collect();
            Err(HttpError::bad_request(format!(
                "unknown parameter {shown:?}; known: {}",
                known.join(", ")
            )))
        }
        None => Ok(()),
    }
}

/// A store group as an answer's row: each key under the name of what it groups by.
fn usage_row(group_by: &[UsageGroup], group: UsageGroupTotals) -> UsageRow {
    let mut row = UsageRow {
        totals: group.totals,
        ..UsageRow::default()
    };
    for (by, key) in group_by.iter().zip(group.keys) {
        let slot = match by {
            UsageGroup::Day => &mut row.day,
            UsageGroup::User => &mut row.user,
            UsageGroup::Model => &mut row.model,
            UsageGroup::Agent => &mut row.agent,
            UsageGroup::Session => &mut row.session_id,
        };
        *slot = Some(key);
    }
    row
}

/// The calls `query` selects grouped by `group_by`, as rows; `true` when there were more than
/// `limit` groups (the rest are cut).
async fn grouped(
    state: &AppState,
    query: &UsageQuery,
    group_by: &[UsageGroup],
    limit: u32,
) -> Result<(Vec<UsageRow>, bool), HttpError> {
    let mut groups = state
        .store
        .usage_report(query, group_by, limit.saturating_add(1))
        .await?;
    let truncated = groups.len() > usize::try_from(limit).unwrap_or(usize::MAX);
    groups.truncate(usize::try_from(limit).unwrap_or(usize::MAX));
    let rows = groups
        .into_iter()
        .map(|group| usage_row(group_by, group))
        .collect();
    Ok((rows, truncated))
}

/// The totals of the calls `query` selects.
async fn totals(state: &AppState, query: &UsageQuery) -> Result<UsageTotals, HttpError> {
    let (rows, _) = grouped(state, query, &[], 1).await?;
    Ok(rows
        .into_iter()
        .next()
        .map(|row| row.totals)
        .unwrap_or_default())
}

/// `GET /usage?from=&to=`: the caller's calls in the range, in total, per day, model and agent,
/// per day and model, and the ten sessions that used the most.
pub async fn my_usage(
    State(state): State<Arc<AppState>>,
    owner: Owner,
    query: Params,
) -> Result<Json<MyUsage>, HttpError> {
    let params = params(query)?;
    only(&params, &["from", "to"])?;
    let (from, to) = range(&params, now_from(state.clock.as_ref()))?;
    let query = UsageQuery {
        user_id: Some(owner.0),
        from,
        to,
    };
    let all = MAX_REPORT_ROWS;
    Ok(Json(MyUsage {
        from: time(from),
        to: time(to),
        totals: totals(&state, &query).await?,
        by_day: grouped(&state, &query, &[UsageGroup::Day], all).await?.0,
        by_model: grouped(&state, &query, &[UsageGroup::Model], all).await?.0,
        by_agent: grouped(&state, &query, &[UsageGroup::Agent], all).await?.0,
        by_day_and_model: grouped(&state, &query, &[UsageGroup::Day, UsageGroup::Model], all)
            .await?
            .0,
        top_sessions: grouped(&state, &query, &[UsageGroup::Session], TOP_SESSIONS)
            .await?
            .0,
    }))
}

/// `GET /admin/usage?group_by=&from=&to=&user=`: everyone's calls (or one user's) grouped by
/// up to two of `user`, `model`, `agent`, `day` (comma-separated; default `user`). The gateway
/// lets only admins reach it.
pub async fn admin_usage(
    State(state): State<Arc<AppState>>,
    query: Params,
) -> Result<Json<UsageReport>, HttpError> {
    let params = params(query)?;
    only(&params, &["group_by", "from", "to", "user"])?;
    let group_by = group_by(params.get("group_by").map_or("user", String::as_str))?;
    let (from, to) = range(&params, now_from(state.clock.as_ref()))?;
    let user_id = match params.get("user") {
        Some(user) if !is_valid_user_id(user) => {
            return Err(HttpError::bad_request(
                "user must be 1 to 128 characters of A-Z a-z 0-9 _ . - @ : |",
            ));
        }
        user => user.cloned(),
    };
    let query = UsageQuery { user_id, from, to };
    let (rows, truncated) = grouped(&state, &query, &group_by, MAX_REPORT_ROWS).await?;
    Ok(Json(UsageReport {
        group_by: group_by.iter().map(|g| g.as_str().to_owned()).collect(),
        from: time(from),
        to: time(to),
        totals: totals(&state, &query).await?,
        rows,
        truncated,
    }))
}

/// The groups of `group_by`: one or two distinct names of `user`, `model`, `agent`, `day`.
fn group_by(raw: &str) -> Result<Vec<UsageGroup>, HttpError> {
    let refused = || {
        HttpError::bad_request(
            "group_by must be one or two of user, model, agent, day (comma-separated)",
        )
    };
    let mut groups = Vec::new();
    for name in raw.split(',') {
        let group = UsageGroup::parse(name.trim())
            .filter(|g| *g != UsageGroup::Session && !groups.contains(g))
            .ok_or_else(refused)?;
        groups.push(group);
    }
    if groups.len() > 2 {
        return Err(refused());
    }
    Ok(groups)
}
