//! What both backends share: SQL text ([`sql`]), row mapping and value encoding, so a record
//! reads the same way from PostgreSQL and SQLite (cells are read through
//! `codelab_core::db::cells`).
//!
//! Stored forms: timestamps are `TIMESTAMPTZ` on PostgreSQL and fixed-width RFC 3339 UTC text
//! on SQLite (`2024-01-02T03:04:05.123456Z`), so text order is time order in SQL comparisons
//! (`codelab_core::db::DbTime` binds either form, so bind it, never a bare `DateTime`);
//! JSON is `JSONB` on PostgreSQL and JSON text on SQLite (sqlx's `Json` binds either).

use codelab_core::db::cells::Cells;
use codelab_core::from_row;
use codelab_protocol::runtime::{RuntimeEvent, SequencedEvent};
use serde_json::Value;
use sqlx::types::Json;

use super::StoreError;
use crate::model::{
    AgentSwitch, Budget, DEFAULT_BUDGET, LlmUsage, Message, OwnerBudget, Plan, PlanStatus,
    PlanVersion, PlanningMode, Role, Session, Spend, Subtask, SubtaskStatus, ToolCallRecord,
    ToolCallStatus, Turn, TurnStatus, TurnUpdate, UsageGroupTotals, UsageOutcome, UsagePurpose,
    WindowSpend,
};
use codelab_protocol::usage::UsageTotals;

/// A JSON value to bind (JSONB on PostgreSQL, text on SQLite).
pub(super) fn json(value: &Value) -> Json<&Value> {
    Json(value)
}

/// An optional JSON value to bind; `None` binds SQL NULL.
pub(super) fn opt_json(value: Option<&Value>) -> Option<Json<&Value>> {
    value.map(Json)
}

/// The lower-cased title the search compares with: folding in Rust gives the same Unicode
/// folding on both databases (SQLite's `lower` only folds ASCII).
pub(super) fn fold_title(title: &str) -> String {
    title.to_lowercase()
}

/// The `LIKE` pattern of a case-insensitive substring search (`ESCAPE '\'`): the user's `%`,
/// `_` and `\` match themselves.
pub(super) fn search_pattern(search: Option<&str>) -> Option<String> {
    let search = search?;
    let mut pattern = String::with_capacity(search.len() + 2);
    pattern.push('%');
    for c in search.to_lowercase().chars() {
        if matches!(c, '%' | '_' | '\\') {
            pattern.push('\\');
        }
        pattern.push(c);
    }
    pattern.push('%');
    Some(pattern)
}

/// An event as stored.
pub(super) fn event_json(event: &RuntimeEvent) -> Result<Value, StoreError> {
    serde_json::to_value(event)
        .map_err(|e| StoreError::Corrupt(format!("cannot encode event as JSON: {e}")))
}

/// A `u64` bound to a BIGINT; values past `i64::MAX` mean "everything" anyway.
pub(super) fn clamp_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// The error of a turn update that touched no row: `Stale` when it was conditional (the turn
/// moved on, or is gone), `NotFound` otherwise.
pub(super) fn turn_not_updated(update: &TurnUpdate) -> StoreError {
    match update.expect {
        Some((status, steps)) => StoreError::Stale(format!(
            "turn {:?} is no longer {} at step {steps}",
            update.turn_id,
            status.as_str()
        )),
        None => StoreError::NotFound(format!("turn {:?}", update.turn_id)),
    }
}

/// The `NotFound` text of a session.
pub(super) fn session_name(session_id: &str) -> String {
    format!("session {session_id:?}")
}

/// The `NotFound` text of a plan.
pub(super) fn plan_name(plan_id: &str) -> String {
    format!("plan {plan_id:?}")
}

/// A subtask's dependencies as stored (a JSON array of positions).
pub(super) fn dependencies_json(dependencies: &[i32]) -> Value {
    Value::from(dependencies.to_vec())
}

/// A version's subtasks as stored in `plan_versions`: `create_plan`'s argument shape, so a
/// kept version reads as the architect proposed it.
pub(super) fn proposed_subtasks(subtasks: &[Subtask]) -> Value {
    Value::Array(
        subtasks
            .iter()
            .map(|subtask| {
                serde_json::json!({
                    "title": subtask.title,
                    "description": subtask.description,
                    "agent": subtask.agent,
                    "estimated_time_minutes": subtask.estimated_minutes,
                    "dependencies": subtask.dependencies,
                })
            })
            .collect(),
    )
}

// ---- records ----

/// A row of the session columns (`part!(session_columns)` in [`sql`]).
pub(super) fn session(row: &impl Cells) -> Result<Session, StoreError> {
    Ok(from_row!(row => Session {
        id: text, owner: text, title: opt_text, current_agent: text, message_count: int,
        created_at: time, last_activity: time,
        planning = named(row, "planning", PlanningMode::parse, "a planning setting")?,
    }))
}

/// A row of the message columns (the id read as text).
pub(super) fn message(row: &impl Cells) -> Result<Message, StoreError> {
    Ok(from_row!(row => Message {
        id: text, session_id: text, seq: int,
        role = named(row, "role", Role::parse, "a message role (user, assistant, system, tool)")?,
        content: opt_text, agent: opt_text, tool_calls: opt_json, tool_call_id: opt_text,
        created_at: time,
    }))
}

/// A column holding one of a fixed set of names, read with `parse`; `Corrupt` otherwise.
fn named<T>(
    row: &impl Cells,
    column: &str,
    parse: fn(&str) -> Option<T>,
    expected: &str,
) -> Result<T, StoreError> {
    let name = row.text(column)?;
    parse(&name).ok_or_else(|| StoreError::Corrupt(format!("expected {expected}, got {name:?}")))
}

/// A row of the agent-switch columns (`part!(switch_columns)` in [`sql`]).
pub(super) fn switch(row: &impl Cells) -> Result<AgentSwitch, StoreError> {
    Ok(from_row!(row => AgentSwitch {
        session_id: text, from_agent: opt_text, to_agent: text, reason: text,
        confidence: opt_text, method: text, created_at: time, complexity: opt_text,
    }))
}

/// A count stored signed (`BIGINT`/`INTEGER`) read back as unsigned.
fn count(row: &impl Cells, column: &str) -> Result<u64, StoreError> {
    let value = row.int(column)?;
    u64::try_from(value)
        .map_err(|_| StoreError::Corrupt(format!("{column}: expected a count, got {value}")))
}

/// A count to bind (`BIGINT`/`INTEGER`): past `i64::MAX` it is capped, never wrapped.
pub(super) fn signed(count: u64) -> i64 {
    i64::try_from(count).unwrap_or(i64::MAX)
}

/// An optional count stored signed, read back as unsigned (a negative one is corrupt).
fn opt_count(row: &impl Cells, column: &str) -> Result<Option<u64>, StoreError> {
    row.opt_int(column)?
        .map(|value| {
            u64::try_from(value).map_err(|_| {
                StoreError::Corrupt(format!("{column}: expected a count, got {value}"))
            })
        })
        .transpose()
}

/// A row of the budget columns (`part!(budget_columns)` in [`sql`]).
pub(super) fn budget(row: &impl Cells) -> Result<Budget, StoreError> {
    Ok(from_row!(row => Budget {
        subject: text,
        daily_tokens = opt_count(row, "daily_tokens")?,
        monthly_tokens = opt_count(row, "monthly_tokens")?,
        daily_cost: opt_float,
        monthly_cost: opt_float,
        requests_per_minute = opt_count(row, "requests_per_minute")?,
        tokens_per_minute = opt_count(row, "tokens_per_minute")?,
        updated_at: time,
    }))
}

/// The row of [`sql::SPEND_IN`].
pub(super) fn window_spend(row: &impl Cells) -> Result<WindowSpend, StoreError> {
    let spend = |window: &str| -> Result<Spend, StoreError> {
        Ok(Spend {
            requests: count(row, &format!("{window}_requests"))?,
            tokens: count(row, &format!("{window}_tokens"))?,
            cost: row.opt_float(&format!("{window}_cost"))?.unwrap_or(0.0),
        })
    };
    Ok(WindowSpend {
        minute: spend("minute")?,
        day: spend("day")?,
        month: spend("month")?,
    })
}

/// A row of [`sql::usage_report`] grouped by `keys` columns.
pub(super) fn usage_group(row: &impl Cells, keys: usize) -> Result<UsageGroupTotals, StoreError> {
    Ok(UsageGroupTotals {
        keys: (0..keys)
            .map(|i| Ok(row.opt_text(&format!("key{i}"))?.unwrap_or_default()))
            .collect::<Result<_, StoreError>>()?,
        totals: UsageTotals {
            requests: count(row, "requests")?,
            prompt_tokens: count(row, "prompt_tokens")?,
            completion_tokens: count(row, "completion_tokens")?,
            total_tokens: count(row, "total_tokens")?,
            cached_tokens: count(row, "cached_tokens")?,
            cost: row.opt_float("cost")?,
            unpriced_requests: count(row, "unpriced_requests")?,
        },
    })
}

/// The rows of [`sql::OWNER_BUDGET`]: the owner, and their own budget before the default.
pub(super) fn owner_budget(rows: &[impl Cells]) -> Result<Option<OwnerBudget>, StoreError> {
    let Some(first) = rows.first() else {
        return Ok(None);
    };
    let owner = first.text("owner")?;
    let mut own = None;
    let mut default = None;
    for row in rows {
        if row.opt_text("subject")?.is_none() {
            continue;
        }
        let found = budget(row)?;
        if found.subject == DEFAULT_BUDGET {
            default = Some(found);
        } else {
            own = Some(found);
        }
    }
    Ok(Some(OwnerBudget {
        owner,
        budget: own.or(default),
    }))
}

/// A row of the usage columns (`part!(usage_columns)` in [`sql`]).
pub(super) fn usage(row: &impl Cells) -> Result<LlmUsage, StoreError> {
    let ttft_ms = row
        .opt_int("ttft_ms")?
        .map(|ms| u64::try_from(ms).unwrap_or(0));
    Ok(from_row!(row => LlmUsage {
        id: text, created_at: time, user_id: text, session_id: text, turn_id: opt_text,
        step: int32, agent: text,
        purpose = named(row, "purpose", UsagePurpose::parse, "a usage purpose")?,
        requested_model: text, provider: opt_text, model: opt_text,
        prompt_tokens = count(row, "prompt_tokens")?,
        completion_tokens = count(row, "completion_tokens")?,
        total_tokens = count(row, "total_tokens")?,
        cached_tokens = count(row, "cached_tokens")?,
        cost: opt_float,
        latency_ms = count(row, "latency_ms")?,
        ttft_ms = ttft_ms,
        tool_calls = u32::try_from(row.int32("tool_calls")?).unwrap_or(0),
        outcome = named(row, "outcome", UsageOutcome::parse, "a usage outcome")?,
        error_kind: opt_text,
    }))
}

/// A row of the tool-call columns (`part!(call_columns)` in [`sql`]).
pub(super) fn tool_call(row: &impl Cells) -> Result<ToolCallRecord, StoreError> {
    Ok(from_row!(row => ToolCallRecord {
        call_id: text, session_id: text, turn_id: text, step: int32, provider_call_id: opt_text,
        tool_name: text, arguments: json, requires_approval: flag, approval_reason: opt_text,
        agent: text, status = named(row, "status", ToolCallStatus::parse, "a tool call status")?,
        decision: opt_text, feedback: opt_text, modified_arguments: opt_json, result: opt_json,
        error: opt_text, created_at: time, settled_at: opt_time,
    }))
}

/// A row of the turn columns (`part!(turn_columns)` in [`sql`]).
pub(super) fn turn(row: &impl Cells) -> Result<Turn, StoreError> {
    Ok(from_row!(row => Turn {
        id: text, session_id: text,
        status = named(row, "status", TurnStatus::parse, "a turn status")?,
        steps: int32, agent: text, created_at: time, updated_at: time,
        cancel_requested_at: opt_time, plan_id: opt_text, plan_required: flag,
    }))
}

/// The rows of a plan query ([`sql::GET_PLAN`], [`sql::PLAN_OF_CALL`], [`sql::LIST_PLANS`]):
/// one per subtask, a plan's rows consecutive and in position order (a plan without subtasks
/// has one row whose subtask columns are NULL); the plans in row order.
pub(super) fn plans<R: Cells>(rows: &[R]) -> Result<Vec<Plan>, StoreError> {
    let mut plans: Vec<Plan> = Vec::new();
    for row in rows {
        let id = row.text("id")?;
        if plans.last().map(|plan| plan.id.as_str()) != Some(id.as_str()) {
            plans.push(plan(row)?);
        }
        if let (Some(subtask), Some(plan)) = (subtask(row)?, plans.last_mut()) {
            plan.subtasks.push(subtask);
        }
    }
    Ok(plans)
}

/// The plan columns of a plan query's row (`part!(plan_columns)` in [`sql`]), without its
/// subtasks.
fn plan(row: &impl Cells) -> Result<Plan, StoreError> {
    Ok(from_row!(row => Plan {
        id: text, session_id: text, version: int32, title: text, description: text,
        status = named(row, "status", PlanStatus::parse, "a plan status")?,
        call_id: text, turn_id: text, feedback: opt_text, summary: opt_text,
        created_at: time, updated_at: time, subtasks = Vec::new(),
    }))
}

/// The subtask columns of a plan query's row (`part!(subtask_columns)` in [`sql`]); `None`
/// for the row of a plan without subtasks.
fn subtask(row: &impl Cells) -> Result<Option<Subtask>, StoreError> {
    // `title` is NOT NULL in the table: NULL here is the LEFT JOIN finding no subtask.
    let Some(title) = row.opt_text("subtask_title")? else {
        return Ok(None);
    };
    let position = row.int32("subtask_position")?;
    let dependencies = serde_json::from_value(row.json("subtask_dependencies")?).map_err(|e| {
        StoreError::Corrupt(format!(
            "expected the dependencies of subtask {position} as an array of positions: {e}"
        ))
    })?;
    Ok(Some(Subtask {
        position,
        title,
        description: row.text("subtask_description")?,
        agent: row.text("subtask_agent")?,
        estimated_minutes: row.int32("subtask_estimated_minutes")?,
        dependencies,
        status: named(
            row,
            "subtask_status",
            SubtaskStatus::parse,
            "a subtask status",
        )?,
        result: row.opt_text("subtask_result")?,
        error: row.opt_text("subtask_error")?,
        context_from: opt_int_text(row, "subtask_context_from")?,
        first_step: opt_int_text(row, "subtask_first_step")?,
    }))
}

/// A nullable integer column selected as text (`CAST(.. AS TEXT)`): `Cells` reads integers
/// only when they are not NULL.
fn opt_int_text<T: std::str::FromStr>(
    row: &impl Cells,
    column: &str,
) -> Result<Option<T>, StoreError> {
    row.opt_text(column)?
        .map(|text| {
            text.parse().map_err(|_| {
                StoreError::Corrupt(format!("{column}: expected an integer, got {text:?}"))
            })
        })
        .transpose()
}

/// A row of [`sql::LIST_PLAN_VERSIONS`].
pub(super) fn plan_version(row: &impl Cells) -> Result<PlanVersion, StoreError> {
    Ok(from_row!(row => PlanVersion {
        plan_id: text, version: int32, title: text, description: text, subtasks: json,
        feedback: opt_text, created_at: time,
    }))
}

/// A row of [`sql::LIST_EVENTS`].
pub(super) fn event(row: &impl Cells) -> Result<SequencedEvent, StoreError> {
    let seq = event_seq(row.int("seq")?)?;
    let event = serde_json::from_value(row.json("event")?)
        .map_err(|e| StoreError::Corrupt(format!("event {seq} is not a runtime event: {e}")))?;
    Ok(SequencedEvent { seq, event })
}

/// Converts a stored seq (assigned by the store, from 1) to the protocol's `u64`.
pub(super) fn event_seq(seq: i64) -> Result<u64, StoreError> {
    u64::try_from(seq)
        .map_err(|_| StoreError::Corrupt(format!("expected a positive event seq, got {seq}")))
}

/// SQL text shared by both backends: PostgreSQL and SQLite (≥ 3.35, for `RETURNING`) agree on
/// every statement here, and sqlx binds `$n` placeholders on both. What differs is only the
/// type of bound timestamps (`DbTime` binds each database's form, see the module docs) and
/// the bound message id ([`insert_messages`]).
pub(super) mod sql {
    use std::sync::LazyLock;

    use codelab_core::db::DbKind;

    /// Fragments of the statements below, spelled once (`concat!` takes only literals).
    macro_rules! part {
        // Restricts a statement whose `$1` is a session id to live (not deleted) sessions:
        // soft-deleted sessions are invisible to every read.
        (live_session) => {
            "EXISTS (SELECT 1 FROM sessions s WHERE s.id = $1 AND s.deleted_at IS NULL)"
        };
        (session_columns) => {
            "id, owner, title, current_agent, message_count, created_at, last_activity, planning"
        };
        (budget_columns) => {
            "subject, daily_tokens, monthly_tokens, daily_cost, monthly_cost, \
             requests_per_minute, tokens_per_minute, updated_at"
        };
        (usage_columns) => {
            "id, created_at, user_id, session_id, turn_id, step, agent, purpose, \
             requested_model, provider, model, prompt_tokens, completion_tokens, total_tokens, \
             cached_tokens, cost, latency_ms, ttft_ms, tool_calls, outcome, error_kind"
        };
        (switch_columns) => {
            "session_id, from_agent, to_agent, reason, confidence, method, created_at, complexity"
        };
        (call_columns) => {
            "call_id, session_id, turn_id, step, provider_call_id, tool_name, arguments, \
             requires_approval, approval_reason, agent, status, decision, feedback, \
             modified_arguments, result, error, created_at, settled_at"
        };
        (turn_columns) => {
            "id, session_id, status, steps, agent, created_at, updated_at, cancel_requested_at, \
             plan_id, plan_required"
        };
        // A plan query selects `plans p LEFT JOIN plan_subtasks st`, aliasing every column:
        // SQLite leaves the name of an unaliased `p.id` unspecified, and the two tables share
        // names.
        (plan_columns) => {
            "p.id AS id, p.session_id AS session_id, p.version AS version, p.title AS title, \
             p.description AS description, p.status AS status, p.call_id AS call_id, \
             p.turn_id AS turn_id, p.feedback AS feedback, p.summary AS summary, \
             p.created_at AS created_at, p.updated_at AS updated_at"
        };
        // The nullable integers are read as text: `Cells` has no optional integer.
        (subtask_columns) => {
            "st.position AS subtask_position, st.title AS subtask_title, \
             st.description AS subtask_description, st.agent AS subtask_agent, \
             st.estimated_minutes AS subtask_estimated_minutes, \
             st.dependencies AS subtask_dependencies, st.status AS subtask_status, \
             st.result AS subtask_result, st.error AS subtask_error, \
             CAST(st.context_from AS TEXT) AS subtask_context_from, \
             CAST(st.first_step AS TEXT) AS subtask_first_step"
        };
        (plans_with_subtasks) => {
            " FROM plans p LEFT JOIN plan_subtasks st ON st.plan_id = p.id"
        };
        // The statuses of an open call; spelled as in the partial index `ix_tool_calls_open`,
        // which SQLite only uses when the query repeats its predicate.
        (open_statuses) => {
            "status IN ('pending_approval', 'awaiting_result')"
        };
        // The statuses of an unfinished turn, as in the partial index `ix_turns_active`.
        (active_statuses) => {
            "status IN ('running', 'awaiting_tools')"
        };
        // The message id is a `UUID` column on PostgreSQL and text on SQLite; sqlx here has no
        // `uuid` type support, so it is read as text on both (a no-op cast on SQLite).
        (message_columns) => {
            "CAST(id AS TEXT) AS id, session_id, seq, role, content, agent, tool_calls, \
             tool_call_id, created_at"
        };
    }

    pub(in crate::store) const PING: &str = "SELECT 1";

    // ---- sessions ----

    /// $1 id, $2 owner, $3 current agent, $4 now.
    pub(in crate::store) const INSERT_SESSION: &str = concat!(
        "INSERT INTO sessions (id, owner, title, title_folded, current_agent, message_count, \
         last_event_seq, created_at, last_activity, deleted_at) \
         VALUES ($1, $2, NULL, NULL, $3, 0, 0, $4, $4, NULL) RETURNING ",
        part!(session_columns)
    );

    /// $1 id.
    pub(in crate::store) const GET_SESSION: &str = concat!(
        "SELECT ",
        part!(session_columns),
        " FROM sessions WHERE id = $1 AND deleted_at IS NULL"
    );

    /// $1 owner, $2 `LIKE` pattern on the folded title or NULL, $3 limit, $4 offset. The id
    /// breaks ties so pages never overlap.
    pub(in crate::store) const LIST_SESSIONS: &str = concat!(
        "SELECT ",
        part!(session_columns),
        " FROM sessions WHERE owner = $1 AND deleted_at IS NULL \
         AND ($2 IS NULL OR title_folded LIKE $2 ESCAPE '\\') \
         ORDER BY last_activity DESC, id LIMIT $3 OFFSET $4"
    );

    /// $1 owner, $2 pattern or NULL (as [`LIST_SESSIONS`]); the count is `total`.
    pub(in crate::store) const COUNT_SESSIONS: &str = "SELECT COUNT(*) AS total FROM sessions \
         WHERE owner = $1 AND deleted_at IS NULL \
         AND ($2 IS NULL OR title_folded LIKE $2 ESCAPE '\\')";

    /// $1 id, $2 title, $3 folded title.
    pub(in crate::store) const SET_TITLE: &str =
        "UPDATE sessions SET title = $2, title_folded = $3 WHERE id = $1 AND deleted_at IS NULL";

    /// $1 id, $2 title, $3 folded title; keeps a title already set.
    pub(in crate::store) const SET_TITLE_IF_UNSET: &str = "UPDATE sessions \
         SET title = COALESCE(title, $2), title_folded = COALESCE(title_folded, $3) \
         WHERE id = $1 AND deleted_at IS NULL";

    /// $1 id, $2 agent.
    pub(in crate::store) const SET_CURRENT_AGENT: &str =
        "UPDATE sessions SET current_agent = $2 WHERE id = $1 AND deleted_at IS NULL";

    /// $1 id, $2 now.
    pub(in crate::store) const DELETE_SESSION: &str =
        "UPDATE sessions SET deleted_at = $2 WHERE id = $1 AND deleted_at IS NULL";

    /// $1 cutoff, $2 batch size. Deleted sessions go too; children follow by `ON DELETE
    /// CASCADE`.
    pub(in crate::store) const PURGE_SESSIONS: &str = "DELETE FROM sessions WHERE id IN \
         (SELECT id FROM sessions WHERE last_activity < $1 ORDER BY last_activity LIMIT $2)";

    // ---- messages ----

    /// $1 session.
    pub(in crate::store) const LIST_MESSAGES: &str = concat!(
        "SELECT ",
        part!(message_columns),
        " FROM messages WHERE session_id = $1 AND ",
        part!(live_session),
        " ORDER BY seq"
    );

    // ---- sequence numbers ----

    /// $1 id, $2 messages, $3 events, $4 now. Reserves the seqs of `$2` messages and `$3`
    /// events to append in the same transaction, and bumps the activity when there are any;
    /// returns the newest reserved seqs (`message_count`, `last_event_seq`), no row for a
    /// missing or deleted session. Takes the session row's write lock until the transaction
    /// ends, so no other append can get the same seqs. One statement instead of one per
    /// message and event plus a liveness check: every statement is a round trip to the
    /// database (docs/benchmarks.md, "Agent runtime turns").
    pub(in crate::store) const RESERVE_SEQS: &str = "UPDATE sessions \
         SET message_count = message_count + $2, last_event_seq = last_event_seq + $3, \
         last_activity = CASE WHEN $2 + $3 > 0 THEN $4 ELSE last_activity END \
         WHERE id = $1 AND deleted_at IS NULL RETURNING message_count, last_event_seq";

    /// Most rows one multi-row `INSERT` carries: bounds the distinct statement texts (each is
    /// prepared and cached per connection) and the bound parameters; longer lists take several.
    pub(in crate::store) const MAX_ROWS_PER_INSERT: usize = 8;

    /// `(...), (...)` of `rows` groups of `columns` consecutive placeholders from `$1`;
    /// `first` spells a group's first placeholder (a cast).
    fn value_groups(rows: usize, columns: usize, first: fn(usize) -> String) -> String {
        (0..rows)
            .map(|row| {
                let base = row * columns;
                let rest = (2..=columns).map(|column| format!(", ${}", base + column));
                format!("({}{})", first(base + 1), rest.collect::<String>())
            })
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// The statement texts for 1..=[`MAX_ROWS_PER_INSERT`] rows, made once.
    fn by_rows(make: fn(usize) -> String) -> Vec<String> {
        (1..=MAX_ROWS_PER_INSERT).map(make).collect()
    }

    static MESSAGE_INSERTS_POSTGRES: LazyLock<Vec<String>> = LazyLock::new(|| {
        by_rows(|rows| insert_messages_text(rows, |n| format!("CAST(${n} AS UUID)")))
    });
    static MESSAGE_INSERTS_SQLITE: LazyLock<Vec<String>> =
        LazyLock::new(|| by_rows(|rows| insert_messages_text(rows, |n| format!("${n}"))));
    static SUBTASK_INSERTS: LazyLock<Vec<String>> = LazyLock::new(|| {
        by_rows(|rows| {
            format!(
                "INSERT INTO plan_subtasks (plan_id, position, title, description, agent, \
                 estimated_minutes, dependencies, status, result, error, context_from, \
                 first_step) VALUES {}",
                value_groups(rows, 12, |n| format!("${n}"))
            )
        })
    });
    static EVENT_INSERTS: LazyLock<Vec<String>> = LazyLock::new(|| {
        by_rows(|rows| {
            format!(
                "INSERT INTO events (session_id, seq, event, created_at) VALUES {}",
                value_groups(rows, 4, |n| format!("${n}"))
            )
        })
    });

    fn insert_messages_text(rows: usize, id: fn(usize) -> String) -> String {
        format!(
            "INSERT INTO messages (id, session_id, seq, role, content, agent, tool_calls, \
             tool_call_id, created_at) VALUES {}",
            value_groups(rows, 9, id)
        )
    }

    /// Inserts `rows` (1..=[`MAX_ROWS_PER_INSERT`]) messages, 9 parameters each: id, session,
    /// seq, role, content, agent, tool calls, tool call id, now; the id is cast to `UUID` on
    /// PostgreSQL.
    pub(in crate::store) fn insert_messages(kind: DbKind, rows: usize) -> &'static str {
        let texts = match kind {
            DbKind::Postgres => &MESSAGE_INSERTS_POSTGRES,
            DbKind::Sqlite => &MESSAGE_INSERTS_SQLITE,
        };
        &texts[rows.clamp(1, MAX_ROWS_PER_INSERT) - 1]
    }

    /// Inserts `rows` (1..=[`MAX_ROWS_PER_INSERT`]) events, 4 parameters each: session, seq,
    /// event, now.
    pub(in crate::store) fn insert_events(rows: usize) -> &'static str {
        &EVENT_INSERTS[rows.clamp(1, MAX_ROWS_PER_INSERT) - 1]
    }

    /// Inserts `rows` (1..=[`MAX_ROWS_PER_INSERT`]) subtasks, 12 parameters each: plan,
    /// position, title, description, agent, estimated minutes, dependencies, status, result,
    /// error, context from, first step.
    pub(in crate::store) fn insert_subtasks(rows: usize) -> &'static str {
        &SUBTASK_INSERTS[rows.clamp(1, MAX_ROWS_PER_INSERT) - 1]
    }

    // ---- agent switches ----

    /// $1 session, $2 from, $3 to, $4 reason, $5 confidence, $6 method, $7 at, $8 complexity.
    /// Inserts
    /// nothing for a missing or deleted session.
    pub(in crate::store) const INSERT_SWITCH: &str = concat!(
        "INSERT INTO agent_switches (",
        part!(switch_columns),
        ") SELECT $1, $2, $3, $4, $5, $6, $7, $8 WHERE ",
        part!(live_session)
    );

    /// $1 session.
    pub(in crate::store) const LIST_SWITCHES: &str = concat!(
        "SELECT ",
        part!(switch_columns),
        " FROM agent_switches WHERE session_id = $1 AND ",
        part!(live_session),
        " ORDER BY id"
    );

    // ---- tool calls ----

    /// $1 session: whether it is live (before inserting children).
    pub(in crate::store) const SESSION_IS_LIVE: &str =
        "SELECT 1 FROM sessions WHERE id = $1 AND deleted_at IS NULL";

    /// Every column of [`CALL_COLUMNS`] in order, $1..$18.
    pub(in crate::store) const INSERT_CALL: &str = concat!(
        "INSERT INTO tool_calls (",
        part!(call_columns),
        ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, \
         $18)"
    );

    /// $1 session, $2 call id.
    pub(in crate::store) const GET_CALL: &str = concat!(
        "SELECT ",
        part!(call_columns),
        " FROM tool_calls WHERE session_id = $1 AND call_id = $2"
    );

    /// $1 session, $2 call id: ours or the provider's.
    pub(in crate::store) const CALL_ID_EXISTS: &str = "SELECT 1 FROM tool_calls \
         WHERE session_id = $1 AND (call_id = $2 OR provider_call_id = $2) LIMIT 1";

    /// $1 turn, $2 step. `id` is the insertion order, i.e. the order of the model's reply.
    pub(in crate::store) const LIST_STEP_CALLS: &str = concat!(
        "SELECT ",
        part!(call_columns),
        " FROM tool_calls WHERE turn_id = $1 AND step = $2 ORDER BY id"
    );

    /// $1 session.
    pub(in crate::store) const LIST_OPEN_CALLS: &str = concat!(
        "SELECT ",
        part!(call_columns),
        " FROM tool_calls WHERE session_id = $1 AND ",
        part!(open_statuses),
        " AND ",
        part!(live_session),
        " ORDER BY id"
    );

    /// No parameters; the count is `total`. Calls waiting for a human decision in every live
    /// session (all replicas share the database, so this is the deployment's number). The
    /// open-call predicate is repeated so SQLite may use the partial index `ix_tool_calls_open`.
    pub(in crate::store) const COUNT_PENDING_APPROVALS: &str = concat!(
        "SELECT COUNT(*) AS total FROM tool_calls c WHERE c.",
        part!(open_statuses),
        " AND c.status = 'pending_approval' AND EXISTS (SELECT 1 FROM sessions s \
         WHERE s.id = c.session_id AND s.deleted_at IS NULL)"
    );

    /// $1 session.
    pub(in crate::store) const LIST_SESSION_CALLS: &str = concat!(
        "SELECT ",
        part!(call_columns),
        " FROM tool_calls WHERE session_id = $1 AND ",
        part!(live_session),
        " ORDER BY id"
    );

    /// The one atomic conditional update of a call: $1 session, $2 call id, $3 new status,
    /// $4 decision, $5 feedback, $6 modified arguments, $7 result, $8 error, $9 settled at
    /// (NULL params keep the stored value), then one placeholder per expected status. The
    /// status test and the write are one statement, so of racing updates exactly one matches.
    pub(in crate::store) fn update_call(expected: usize) -> String {
        let placeholders = (0..expected)
            .map(|i| format!("${}", i + 10))
            .collect::<Vec<_>>()
            .join(", ");
        format!(
            "UPDATE tool_calls SET status = $3, decision = COALESCE($4, decision), \
             feedback = COALESCE($5, feedback), \
             modified_arguments = COALESCE($6, modified_arguments), \
             result = COALESCE($7, result), error = COALESCE($8, error), \
             settled_at = COALESCE($9, settled_at) \
             WHERE session_id = $1 AND call_id = $2 AND status IN ({placeholders}) \
             RETURNING {}",
            part!(call_columns)
        )
    }

    // ---- turns ----

    /// $1 session, $2 id, $3 status, $4 steps, $5 agent, $6 created, $7 updated, $8 plan.
    /// Inserts nothing for a missing or deleted session.
    pub(in crate::store) const INSERT_TURN: &str = concat!(
        "INSERT INTO turns (session_id, id, status, steps, agent, created_at, updated_at, \
         plan_id, plan_required) SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9 WHERE ",
        part!(live_session)
    );

    /// $1 session.
    pub(in crate::store) const ACTIVE_TURN: &str = concat!(
        "SELECT ",
        part!(turn_columns),
        " FROM turns WHERE session_id = $1 AND ",
        part!(active_statuses),
        " AND ",
        part!(live_session),
        " ORDER BY created_at DESC, id DESC LIMIT 1"
    );

    /// $1 id.
    pub(in crate::store) const GET_TURN: &str =
        concat!("SELECT ", part!(turn_columns), " FROM turns WHERE id = $1");

    /// $1 id, $2 status, $3 steps, $4 agent, $5 now, $6 plan or NULL (a turn never leaves its
    /// plan, so NULL keeps the stored one), $7 plan required (once required, it stays).
    pub(in crate::store) const UPDATE_TURN: &str = "UPDATE turns \
         SET status = $2, steps = $3, agent = $4, updated_at = $5, \
         plan_id = COALESCE($6, plan_id), plan_required = (plan_required OR $7) WHERE id = $1";

    /// As [`UPDATE_TURN`], only while the turn is still in state ($8 status, $9 steps).
    pub(in crate::store) const UPDATE_TURN_IF: &str = "UPDATE turns \
         SET status = $2, steps = $3, agent = $4, updated_at = $5, \
         plan_id = COALESCE($6, plan_id), plan_required = (plan_required OR $7) \
         WHERE id = $1 AND status = $8 AND steps = $9";

    /// $1 session, $2 planning setting.
    pub(in crate::store) const SET_PLANNING: &str =
        "UPDATE sessions SET planning = $2 WHERE id = $1 AND deleted_at IS NULL";

    /// $1 session, $2 now. Marks the newest unfinished turn as cancel-requested, keeping the
    /// time of an earlier request; returns it.
    pub(in crate::store) const REQUEST_CANCEL: &str = concat!(
        "UPDATE turns SET cancel_requested_at = COALESCE(cancel_requested_at, $2) \
         WHERE id = (SELECT id FROM turns WHERE session_id = $1 AND ",
        part!(active_statuses),
        " AND ",
        part!(live_session),
        " ORDER BY created_at DESC, id DESC LIMIT 1) RETURNING ",
        part!(turn_columns)
    );

    /// $1 limit. Unfinished turns of live sessions that no step is visibly waiting on, as
    /// `Engine::recover` judges them, so that no listed turn is passed over by every sweep:
    /// `running` ones, and `awaiting_tools` ones whose latest step made calls and has none
    /// open; only a session's newest unfinished turn (the one `recover` reads). Oldest change
    /// first.
    pub(in crate::store) const LIST_STALLED_TURNS: &str = concat!(
        "SELECT ",
        part!(turn_columns),
        " FROM turns t WHERE t.",
        part!(active_statuses),
        " AND (t.status = 'running' OR (EXISTS (SELECT 1 FROM tool_calls c \
         WHERE c.turn_id = t.id AND c.step = t.steps) AND NOT EXISTS (SELECT 1 FROM tool_calls c \
         WHERE c.turn_id = t.id AND c.",
        part!(open_statuses),
        "))) AND NOT EXISTS (SELECT 1 FROM turns n WHERE n.session_id = t.session_id AND n.",
        part!(active_statuses),
        " AND (n.created_at > t.created_at OR (n.created_at = t.created_at AND n.id > t.id))) \
         AND EXISTS (SELECT 1 FROM sessions s WHERE s.id = t.session_id \
         AND s.deleted_at IS NULL) ORDER BY t.updated_at LIMIT $1"
    );

    // ---- usage ----

    /// $1 session, $2 id, $3 created, $4 turn, $5 step, $6 agent, $7 purpose, $8 requested
    /// model, $9 provider, $10 model, $11 prompt, $12 completion, $13 total, $14 cached tokens,
    /// $15 cost, $16 latency, $17 ttft, $18 tool calls, $19 outcome, $20 error kind. The user is
    /// the session's owner; nothing is inserted for a missing session.
    pub(in crate::store) const INSERT_USAGE: &str = concat!(
        "INSERT INTO llm_usage (",
        part!(usage_columns),
        ") SELECT $2, $3, s.owner, $1, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, \
         $16, $17, $18, $19, $20 FROM sessions s WHERE s.id = $1"
    );

    /// $1 user, $2 minute, $3 day, $4 month window starts, $5 the earliest of them: the
    /// user's calls in each window, summed in one pass over the rows from $5 on (the index of
    /// user and time).
    pub(in crate::store) const SPEND_IN: &str = "SELECT \
         CAST(COALESCE(SUM(CASE WHEN created_at >= $2 THEN 1 ELSE 0 END), 0) AS BIGINT) \
             AS minute_requests, \
         CAST(COALESCE(SUM(CASE WHEN created_at >= $2 THEN total_tokens ELSE 0 END), 0) \
             AS BIGINT) AS minute_tokens, \
         SUM(CASE WHEN created_at >= $2 THEN cost END) AS minute_cost, \
         CAST(COALESCE(SUM(CASE WHEN created_at >= $3 THEN 1 ELSE 0 END), 0) AS BIGINT) \
             AS day_requests, \
         CAST(COALESCE(SUM(CASE WHEN created_at >= $3 THEN total_tokens ELSE 0 END), 0) \
             AS BIGINT) AS day_tokens, \
         SUM(CASE WHEN created_at >= $3 THEN cost END) AS day_cost, \
         CAST(COALESCE(SUM(CASE WHEN created_at >= $4 THEN 1 ELSE 0 END), 0) AS BIGINT) \
             AS month_requests, \
         CAST(COALESCE(SUM(CASE WHEN created_at >= $4 THEN total_tokens ELSE 0 END), 0) \
             AS BIGINT) AS month_tokens, \
         SUM(CASE WHEN created_at >= $4 THEN cost END) AS month_cost \
         FROM llm_usage WHERE user_id = $1 AND created_at >= $5";

    /// $1 subject, ..., $8 updated: sets (or replaces) a budget.
    pub(in crate::store) const SET_BUDGET: &str = concat!(
        "INSERT INTO budgets (",
        part!(budget_columns),
        ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (subject) DO UPDATE SET \
         daily_tokens = excluded.daily_tokens, monthly_tokens = excluded.monthly_tokens, \
         daily_cost = excluded.daily_cost, monthly_cost = excluded.monthly_cost, \
         requests_per_minute = excluded.requests_per_minute, \
         tokens_per_minute = excluded.tokens_per_minute, updated_at = excluded.updated_at"
    );

    /// $1 user: the user's own budget and the default, in one read.
    pub(in crate::store) const BUDGETS_OF: &str = concat!(
        "SELECT ",
        part!(budget_columns),
        " FROM budgets WHERE subject IN ($1, '*')"
    );

    /// A usage report grouped by `group_by` (see `RuntimeStore::usage_report`): $1 from, $2 to,
    /// $3 the user or NULL for everyone, $4 the most groups. `day` is the backend's SQL of a
    /// row's UTC day. Built from fixed pieces only: nothing a caller sent is in the text.
    pub(in crate::store) fn usage_report(
        group_by: &[crate::model::UsageGroup],
        day: &str,
    ) -> String {
        use crate::model::UsageGroup;
        let keys: Vec<String> = group_by
            .iter()
            .enumerate()
            .map(|(i, group)| {
                let column = match group {
                    UsageGroup::User => "user_id",
                    UsageGroup::Model => "COALESCE(model, requested_model)",
                    UsageGroup::Agent => "agent",
                    UsageGroup::Day => day,
                    UsageGroup::Session => "session_id",
                };
                format!("{column} AS key{i}, ")
            })
            .collect();
        let positions: Vec<String> = (1..=group_by.len()).map(|i| i.to_string()).collect();
        let (group, order) = if positions.is_empty() {
            (String::new(), String::new())
        } else if group_by.first() == Some(&UsageGroup::Day) {
            let by = positions.join(", ");
            (format!(" GROUP BY {by}"), format!(" ORDER BY {by}"))
        } else {
            let by = positions.join(", ");
            (
                format!(" GROUP BY {by}"),
                format!(" ORDER BY total_tokens DESC, {by}"),
            )
        };
        format!(
            "SELECT {keys}COUNT(*) AS requests, \
             CAST(COALESCE(SUM(prompt_tokens), 0) AS BIGINT) AS prompt_tokens, \
             CAST(COALESCE(SUM(completion_tokens), 0) AS BIGINT) AS completion_tokens, \
             CAST(COALESCE(SUM(total_tokens), 0) AS BIGINT) AS total_tokens, \
             CAST(COALESCE(SUM(cached_tokens), 0) AS BIGINT) AS cached_tokens, \
             SUM(cost) AS cost, \
             CAST(COALESCE(SUM(CASE WHEN cost IS NULL THEN 1 ELSE 0 END), 0) AS BIGINT) \
                 AS unpriced_requests \
             FROM llm_usage WHERE created_at >= $1 AND created_at < $2 \
             AND ($3 IS NULL OR user_id = $3){group}{order} LIMIT $4",
            keys = keys.concat(),
        )
    }

    /// $1 session: its owner, with the owner's budget and the default when they exist (one
    /// row with NULL budget columns when neither does; none when the session does not).
    pub(in crate::store) const OWNER_BUDGET: &str = "SELECT s.owner AS owner, b.* \
         FROM sessions s LEFT JOIN budgets b ON b.subject = s.owner OR b.subject = '*' \
         WHERE s.id = $1";

    /// $1 user, $2 limit, $3 window start: forgets the user's warnings of that limit in earlier
    /// windows.
    pub(in crate::store) const FORGET_BUDGET_WARNINGS: &str = "DELETE FROM budget_warnings WHERE user_id = $1 AND budget_limit = $2 \
         AND window_start < $3";

    /// $1 user, $2 limit, $3 window start: one row the first time, none after.
    pub(in crate::store) const NOTE_BUDGET_WARNING: &str = "INSERT INTO budget_warnings (user_id, budget_limit, window_start) VALUES ($1, $2, $3) \
         ON CONFLICT DO NOTHING";

    /// Every budget, the default first.
    pub(in crate::store) const LIST_BUDGETS: &str = concat!(
        "SELECT ",
        part!(budget_columns),
        " FROM budgets ORDER BY subject <> '*', subject"
    );

    /// $1 subject.
    pub(in crate::store) const CLEAR_BUDGET: &str = "DELETE FROM budgets WHERE subject = $1";

    /// $1 session: its LLM calls, oldest first (deleted sessions included: usage outlives
    /// them).
    pub(in crate::store) const SESSION_USAGE: &str = concat!(
        "SELECT ",
        part!(usage_columns),
        " FROM llm_usage WHERE session_id = $1 ORDER BY created_at, id"
    );

    // ---- plans ----

    /// $1 id, $2 session, $3 version, $4 title, $5 description, $6 status, $7 call id, $8 turn
    /// id, $9 feedback, $10 summary, $11 created, $12 updated.
    pub(in crate::store) const INSERT_PLAN: &str = "INSERT INTO plans (id, session_id, version, \
         title, description, status, call_id, turn_id, feedback, summary, created_at, \
         updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)";

    /// $1 id: what a new version of the plan replaces.
    pub(in crate::store) const PLAN_BEFORE_REVISION: &str =
        "SELECT session_id, version, feedback FROM plans WHERE id = $1";

    /// $1 id, $2 version, $3 title, $4 description, $5 status, $6 call id, $7 turn id, $8
    /// updated. The feedback that asked for this version moves to the previous version's row.
    pub(in crate::store) const REVISE_PLAN: &str = "UPDATE plans SET version = $2, title = $3, \
         description = $4, status = $5, call_id = $6, turn_id = $7, feedback = NULL, \
         updated_at = $8 WHERE id = $1";

    /// $1 plan.
    pub(in crate::store) const DELETE_SUBTASKS: &str =
        "DELETE FROM plan_subtasks WHERE plan_id = $1";

    /// $1 plan, $2 version, $3 title, $4 description, $5 subtasks, $6 created.
    pub(in crate::store) const INSERT_PLAN_VERSION: &str = "INSERT INTO plan_versions \
         (plan_id, version, title, description, subtasks, feedback, created_at) \
         VALUES ($1, $2, $3, $4, $5, NULL, $6)";

    /// $1 plan, $2 version, $3 the feedback that asked for the next version.
    pub(in crate::store) const SET_VERSION_FEEDBACK: &str =
        "UPDATE plan_versions SET feedback = $3 WHERE plan_id = $1 AND version = $2";

    /// $1 id, $2 session, $3 status, $4 turn id, $5 feedback, $6 summary (NULL keeps the stored
    /// value), $7 now.
    pub(in crate::store) const UPDATE_PLAN_STATUS: &str = "UPDATE plans SET status = $3, \
         turn_id = COALESCE($4, turn_id), feedback = COALESCE($5, feedback), \
         summary = CASE WHEN $3 = 'in_progress' THEN $6 ELSE COALESCE($6, summary) END, \
         updated_at = $7 WHERE id = $1 AND session_id = $2";

    /// $1 plan, $2 turn, $3 session: the turn runs the plan (with the plan's status write that
    /// names the turn, so a decision and the turn that acts on it are stored together).
    pub(in crate::store) const SET_TURN_PLAN: &str =
        "UPDATE turns SET plan_id = $1 WHERE id = $2 AND session_id = $3";

    /// $1 plan, $2 position, $3 status, $4 result, $5 error, $6 context from, $7 first step
    /// (all written as given), $8 the plan's session.
    pub(in crate::store) const UPDATE_SUBTASK: &str = "UPDATE plan_subtasks SET status = $3, \
         result = $4, error = $5, context_from = $6, first_step = $7 \
         WHERE plan_id = $1 AND position = $2 \
         AND EXISTS (SELECT 1 FROM plans p WHERE p.id = $1 AND p.session_id = $8)";

    /// $1 id. Rows as [`super::plans`] reads them.
    pub(in crate::store) const GET_PLAN: &str = concat!(
        "SELECT ",
        part!(plan_columns),
        ", ",
        part!(subtask_columns),
        part!(plans_with_subtasks),
        " WHERE p.id = $1 AND EXISTS (SELECT 1 FROM sessions s WHERE s.id = p.session_id \
         AND s.deleted_at IS NULL) ORDER BY st.position"
    );

    /// $1 session, $2 call id. Rows as [`super::plans`] reads them.
    pub(in crate::store) const PLAN_OF_CALL: &str = concat!(
        "SELECT ",
        part!(plan_columns),
        ", ",
        part!(subtask_columns),
        part!(plans_with_subtasks),
        " WHERE p.session_id = $1 AND p.call_id = $2 AND ",
        part!(live_session),
        " ORDER BY p.created_at, p.id, st.position"
    );

    /// $1 session. Rows as [`super::plans`] reads them, oldest plan first.
    pub(in crate::store) const LIST_PLANS: &str = concat!(
        "SELECT ",
        part!(plan_columns),
        ", ",
        part!(subtask_columns),
        part!(plans_with_subtasks),
        " WHERE p.session_id = $1 AND ",
        part!(live_session),
        " ORDER BY p.created_at, p.id, st.position"
    );

    /// $1 plan.
    pub(in crate::store) const LIST_PLAN_VERSIONS: &str = "SELECT plan_id, version, title, \
         description, subtasks, feedback, created_at FROM plan_versions \
         WHERE plan_id = $1 AND EXISTS (SELECT 1 FROM plans p JOIN sessions s \
         ON s.id = p.session_id WHERE p.id = $1 AND s.deleted_at IS NULL) ORDER BY version";

    // ---- events ----

    /// $1 session, $2 after, $3 limit.
    pub(in crate::store) const LIST_EVENTS: &str = concat!(
        "SELECT seq, event FROM events WHERE session_id = $1 AND seq > $2 AND ",
        part!(live_session),
        " ORDER BY seq LIMIT $3"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn search_patterns_escape_like_wildcards_and_fold_case() {
        assert_eq!(search_pattern(None), None);
        assert_eq!(search_pattern(Some("Fix")).as_deref(), Some("%fix%"));
        assert_eq!(
            search_pattern(Some(r"50%_a\b")).as_deref(),
            Some(r"%50\%\_a\\b%")
        );
    }

    #[test]
    fn multi_row_inserts_number_their_placeholders_row_after_row() {
        use codelab_core::db::DbKind;
        assert_eq!(
            sql::insert_events(2),
            "INSERT INTO events (session_id, seq, event, created_at) \
             VALUES ($1, $2, $3, $4), ($5, $6, $7, $8)"
        );
        let messages = sql::insert_messages(DbKind::Postgres, 2);
        assert!(
            messages.ends_with(
                "VALUES (CAST($1 AS UUID), $2, $3, $4, $5, $6, $7, $8, $9), \
                 (CAST($10 AS UUID), $11, $12, $13, $14, $15, $16, $17, $18)"
            ),
            "{messages}"
        );
        assert!(
            sql::insert_messages(DbKind::Sqlite, 1)
                .ends_with("VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)")
        );
        let longest = sql::insert_events(sql::MAX_ROWS_PER_INSERT);
        assert!(longest.contains(&format!("${}", 4 * sql::MAX_ROWS_PER_INSERT)));
    }

    #[test]
    fn the_update_statement_has_one_placeholder_per_expected_status() {
        let text = sql::update_call(2);
        assert!(text.contains("status IN ($10, $11)"), "{text}");
    }
}
