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
    AgentSwitch, Message, Role, Session, ToolCallRecord, ToolCallStatus, Turn, TurnStatus,
    TurnUpdate,
};

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

// ---- records ----

/// A row of the session columns (`part!(session_columns)` in [`sql`]).
pub(super) fn session(row: &impl Cells) -> Result<Session, StoreError> {
    Ok(from_row!(row => Session {
        id: text, owner: text, title: opt_text, current_agent: text, message_count: int,
        created_at: time, last_activity: time,
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
        confidence: opt_text, method: text, created_at: time,
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
        cancel_requested_at: opt_time,
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
            "id, owner, title, current_agent, message_count, created_at, last_activity"
        };
        (switch_columns) => {
            "session_id, from_agent, to_agent, reason, confidence, method, created_at"
        };
        (call_columns) => {
            "call_id, session_id, turn_id, step, provider_call_id, tool_name, arguments, \
             requires_approval, approval_reason, agent, status, decision, feedback, \
             modified_arguments, result, error, created_at, settled_at"
        };
        (turn_columns) => {
            "id, session_id, status, steps, agent, created_at, updated_at, cancel_requested_at"
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

    // ---- agent switches ----

    /// $1 session, $2 from, $3 to, $4 reason, $5 confidence, $6 method, $7 at. Inserts
    /// nothing for a missing or deleted session.
    pub(in crate::store) const INSERT_SWITCH: &str = concat!(
        "INSERT INTO agent_switches (",
        part!(switch_columns),
        ") SELECT $1, $2, $3, $4, $5, $6, $7 WHERE ",
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

    /// $1 session, $2 id, $3 status, $4 steps, $5 agent, $6 created, $7 updated. Inserts
    /// nothing for a missing or deleted session.
    pub(in crate::store) const INSERT_TURN: &str = concat!(
        "INSERT INTO turns (session_id, id, status, steps, agent, created_at, updated_at) \
         SELECT $1, $2, $3, $4, $5, $6, $7 WHERE ",
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

    /// $1 id, $2 status, $3 steps, $4 agent, $5 now.
    pub(in crate::store) const UPDATE_TURN: &str = "UPDATE turns \
         SET status = $2, steps = $3, agent = $4, updated_at = $5 WHERE id = $1";

    /// As [`UPDATE_TURN`], only while the turn is still in state ($6 status, $7 steps).
    pub(in crate::store) const UPDATE_TURN_IF: &str = "UPDATE turns \
         SET status = $2, steps = $3, agent = $4, updated_at = $5 \
         WHERE id = $1 AND status = $6 AND steps = $7";

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

    /// $1 limit. Unfinished turns of live sessions that no step is visibly waiting on:
    /// `running` ones, and `awaiting_tools` ones without an open call. Oldest change first.
    pub(in crate::store) const LIST_STALLED_TURNS: &str = concat!(
        "SELECT ",
        part!(turn_columns),
        " FROM turns t WHERE t.",
        part!(active_statuses),
        " AND (t.status = 'running' OR NOT EXISTS (SELECT 1 FROM tool_calls c \
         WHERE c.turn_id = t.id AND c.",
        part!(open_statuses),
        ")) AND EXISTS (SELECT 1 FROM sessions s WHERE s.id = t.session_id \
         AND s.deleted_at IS NULL) ORDER BY t.updated_at LIMIT $1"
    );

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
