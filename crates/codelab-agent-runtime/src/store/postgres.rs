//! [`RuntimeStore`] on PostgreSQL: timestamps are `TIMESTAMPTZ`, JSON is `JSONB`, and a
//! session is serialised across replicas with a session-level advisory lock.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use codelab_protocol::runtime::{RuntimeEvent, SequencedEvent};
use sqlx::migrate::Migrator;
use sqlx::pool::PoolConnection;
use sqlx::postgres::PgPoolOptions;
use sqlx::{PgConnection, PgPool, Postgres};

use super::rows::{self, sql};
use super::{RuntimeStore, SessionLock, StoreError};
use crate::model::{
    AgentSwitch, Committed, Message, NewMessage, NewSession, Session, SessionQuery, StepCommit,
    ToolCallRecord, ToolCallStatus, ToolCallUpdate, Turn, TurnStatus, TurnUpdate, UpdateOutcome,
};

/// The PostgreSQL migrations, embedded in the binary.
pub static MIGRATOR: Migrator = sqlx::migrate!("./migrations/postgres");

/// The message id is a `UUID` column; sqlx here has no `uuid` type support, so it travels as
/// text and is cast at the boundary.
macro_rules! message_columns {
    () => {
        "CAST(id AS TEXT) AS id, session_id, seq, role, content, agent, tool_calls, \
         tool_call_id, created_at"
    };
}

/// $1 id, $2 session, $3 seq, $4 role, $5 content, $6 agent, $7 tool calls, $8 tool call id,
/// $9 now.
const INSERT_MESSAGE: &str = concat!(
    "INSERT INTO messages (id, session_id, seq, role, content, agent, tool_calls, tool_call_id, \
     created_at) VALUES (CAST($1 AS UUID), $2, $3, $4, $5, $6, $7, $8, $9) RETURNING ",
    message_columns!()
);

/// $1 session.
const LIST_MESSAGES: &str = concat!(
    "SELECT ",
    message_columns!(),
    " FROM messages WHERE session_id = $1 AND ",
    sql::live_session!(),
    " ORDER BY seq"
);

/// The advisory lock key of a session: a 64-bit hash computed by the server
/// (`hashtextextended` is stable across versions, as hash partitioning depends on it), so
/// every replica agrees. The prefix keeps our keys apart from other users of advisory locks
/// in the same database.
const LOCK: &str =
    "SELECT pg_advisory_lock(hashtextextended('codelab-agent-runtime/session/' || $1, 0))";
const UNLOCK: &str =
    "SELECT pg_advisory_unlock(hashtextextended('codelab-agent-runtime/session/' || $1, 0))";
/// [`LOCK`] without waiting: `false` when another connection holds it.
const TRY_LOCK: &str =
    "SELECT pg_try_advisory_lock(hashtextextended('codelab-agent-runtime/session/' || $1, 0))";

/// The agent runtime's store on a PostgreSQL pool.
#[derive(Debug, Clone)]
pub struct PostgresStore {
    pool: PgPool,
    /// Connections that hold session locks. Separate from `pool` because a lock is held for a
    /// whole turn: were locks taken from `pool`, as many concurrent turns as it has
    /// connections would leave none for the turns' own queries, and they would all stall.
    /// Its size (the main pool's) caps the sessions one replica holds locked at once; further
    /// `lock_session` calls wait for a connection up to the pool's acquire timeout.
    locks: PgPool,
}

impl PostgresStore {
    /// Runs the migrations and wraps the pool. Lock connections are opened lazily, with the
    /// pool's connect options and size.
    pub async fn open(pool: PgPool) -> Result<Self, StoreError> {
        MIGRATOR
            .run(&pool)
            .await
            .map_err(|e| StoreError::Migration(e.to_string()))?;
        let options = pool.options();
        let locks = PgPoolOptions::new()
            .max_connections(options.get_max_connections())
            .acquire_timeout(options.get_acquire_timeout())
            .connect_lazy_with(pool.connect_options().as_ref().clone());
        Ok(Self { pool, locks })
    }
}

/// A held advisory lock and the connection that holds it.
///
/// Session-level advisory locks belong to a connection, so the connection must never go back
/// to the pool while it holds (or may still be granted) the lock: dropping the guard unlocks
/// on a spawned task before the connection is returned, and every path that cannot unlock
/// cleanly closes the connection instead, which makes the server release the lock.
struct PgSessionLock {
    conn: Option<PoolConnection<Postgres>>,
    session_id: String,
    /// Whether `pg_advisory_lock` returned. Until then the request may still be queued on the
    /// server (the acquiring future was cancelled mid-wait), and would be granted later to
    /// whoever reused the connection.
    locked: bool,
}

impl SessionLock for PgSessionLock {}

impl Drop for PgSessionLock {
    fn drop(&mut self) {
        let Some(conn) = self.conn.take() else {
            return;
        };
        let runtime = tokio::runtime::Handle::try_current();
        match runtime {
            // Not tracked for shutdown on purpose: if the runtime drops the task, the
            // connection is closed with it, which releases the lock just the same.
            Ok(runtime) if self.locked => {
                let session_id = std::mem::take(&mut self.session_id);
                runtime.spawn(unlock(conn, session_id));
            }
            // Detaching drops the socket without a task: the server ends the backend and
            // with it the lock (or the queued lock request).
            _ => drop(conn.detach()),
        }
    }
}

/// Releases the lock, then lets the connection return to the pool; closes it if the unlock
/// cannot be confirmed.
async fn unlock(mut conn: PoolConnection<Postgres>, session_id: String) {
    let released = sqlx::query_scalar::<_, bool>(UNLOCK)
        .bind(&session_id)
        .fetch_one(&mut *conn)
        .await;
    match released {
        Ok(true) => {}
        outcome => {
            tracing::warn!(
                session_id,
                ?outcome,
                "could not release a session lock; closing its connection"
            );
            drop(conn.detach());
        }
    }
}

#[async_trait]
impl RuntimeStore for PostgresStore {
    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query(sql::PING).execute(&self.pool).await?;
        Ok(())
    }

    async fn lock_session(&self, session_id: &str) -> Result<Box<dyn SessionLock>, StoreError> {
        let conn = self.locks.acquire().await?;
        // The guard exists before the lock request is sent, so a cancelled or failed wait
        // closes the connection instead of returning it to the pool.
        let mut guard = PgSessionLock {
            conn: Some(conn),
            session_id: session_id.to_owned(),
            locked: false,
        };
        if let Some(conn) = guard.conn.as_mut() {
            sqlx::query(LOCK)
                .bind(&guard.session_id)
                .execute(&mut **conn)
                .await?;
            guard.locked = true;
        }
        Ok(Box::new(guard))
    }

    async fn try_lock_session(
        &self,
        session_id: &str,
    ) -> Result<Option<Box<dyn SessionLock>>, StoreError> {
        let conn = self.locks.acquire().await?;
        // As in `lock_session`: the guard owns the connection before the request is sent.
        let mut guard = PgSessionLock {
            conn: Some(conn),
            session_id: session_id.to_owned(),
            locked: false,
        };
        let Some(conn) = guard.conn.as_mut() else {
            return Ok(None);
        };
        let granted: bool = sqlx::query_scalar(TRY_LOCK)
            .bind(&guard.session_id)
            .fetch_one(&mut **conn)
            .await?;
        if !granted {
            // Not granted, nothing queued: the connection may go back to the pool as is.
            guard.conn = None;
            return Ok(None);
        }
        guard.locked = true;
        Ok(Some(Box::new(guard)))
    }

    async fn commit_step(&self, commit: StepCommit) -> Result<Committed, StoreError> {
        let now = rows::now();
        let mut tx = self.pool.begin().await?;
        require_live(&mut tx, &commit.session_id).await?;
        if let Some(turn) = &commit.new_turn {
            insert_turn(&mut tx, turn).await?;
        }
        if let Some(title) = &commit.title {
            sqlx::query(sql::SET_TITLE_IF_UNSET)
                .bind(&commit.session_id)
                .bind(title)
                .bind(rows::fold_title(title))
                .execute(&mut *tx)
                .await?;
        }
        let mut stored = Vec::with_capacity(commit.messages.len());
        for message in &commit.messages {
            stored.push(append_message(&mut tx, message, now).await?);
        }
        for call in &commit.calls {
            insert_call(&mut tx, call).await?;
        }
        for switch in &commit.switches {
            insert_switch(&mut tx, switch).await?;
        }
        if let Some(last) = commit.switches.last() {
            let done = sqlx::query(sql::SET_CURRENT_AGENT)
                .bind(&commit.session_id)
                .bind(&last.to_agent)
                .execute(&mut *tx)
                .await?;
            require_session(done.rows_affected(), &commit.session_id)?;
        }
        if let Some(update) = &commit.turn {
            update_turn(&mut tx, update, now).await?;
        }
        let mut events = Vec::with_capacity(commit.events.len());
        for event in &commit.events {
            events.push(append_event(&mut tx, &commit.session_id, event, now).await?);
        }
        tx.commit().await?;
        Ok(Committed {
            messages: stored,
            events,
        })
    }

    // ---- sessions ----

    async fn create_session(&self, session: NewSession) -> Result<Session, StoreError> {
        let row = sqlx::query(sql::INSERT_SESSION)
            .bind(&session.id)
            .bind(&session.owner)
            .bind(&session.current_agent)
            .bind(rows::now())
            .fetch_one(&self.pool)
            .await
            .map_err(|e| rows::classify(e, || rows::session_name(&session.id), "session"))?;
        rows::session(&row)
    }

    async fn get_session(&self, session_id: &str) -> Result<Option<Session>, StoreError> {
        sqlx::query(sql::GET_SESSION)
            .bind(session_id)
            .fetch_optional(&self.pool)
            .await?
            .as_ref()
            .map(rows::session)
            .transpose()
    }

    async fn list_sessions(&self, query: &SessionQuery) -> Result<(Vec<Session>, u64), StoreError> {
        let pattern = rows::search_pattern(query.search.as_deref());
        let found = sqlx::query(sql::LIST_SESSIONS)
            .bind(&query.owner)
            .bind(&pattern)
            .bind(i64::from(query.limit))
            .bind(i64::from(query.offset))
            .fetch_all(&self.pool)
            .await?;
        let total: i64 = sqlx::query_scalar(sql::COUNT_SESSIONS)
            .bind(&query.owner)
            .bind(&pattern)
            .fetch_one(&self.pool)
            .await?;
        Ok((
            rows::all(&found, rows::session)?,
            u64::try_from(total).unwrap_or(0),
        ))
    }

    async fn set_title(&self, session_id: &str, title: &str) -> Result<(), StoreError> {
        let done = sqlx::query(sql::SET_TITLE)
            .bind(session_id)
            .bind(title)
            .bind(rows::fold_title(title))
            .execute(&self.pool)
            .await?;
        require_session(done.rows_affected(), session_id)
    }

    async fn set_current_agent(&self, session_id: &str, agent: &str) -> Result<(), StoreError> {
        let done = sqlx::query(sql::SET_CURRENT_AGENT)
            .bind(session_id)
            .bind(agent)
            .execute(&self.pool)
            .await?;
        require_session(done.rows_affected(), session_id)
    }

    async fn delete_session(&self, session_id: &str) -> Result<bool, StoreError> {
        let done = sqlx::query(sql::DELETE_SESSION)
            .bind(session_id)
            .bind(rows::now())
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() > 0)
    }

    async fn purge_idle_sessions(
        &self,
        cutoff: DateTime<Utc>,
        batch: u32,
    ) -> Result<u64, StoreError> {
        let done = sqlx::query(sql::PURGE_SESSIONS)
            .bind(cutoff)
            .bind(i64::from(batch))
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected())
    }

    // ---- messages ----

    async fn append_message(&self, message: NewMessage) -> Result<Message, StoreError> {
        let mut tx = self.pool.begin().await?;
        let stored = append_message(&mut tx, &message, rows::now()).await?;
        tx.commit().await?;
        Ok(stored)
    }

    async fn list_messages(&self, session_id: &str) -> Result<Vec<Message>, StoreError> {
        let found = sqlx::query(LIST_MESSAGES)
            .bind(session_id)
            .fetch_all(&self.pool)
            .await?;
        rows::all(&found, rows::message)
    }

    // ---- agent switches ----

    async fn record_switch(&self, switch: AgentSwitch) -> Result<(), StoreError> {
        let mut conn = self.pool.acquire().await?;
        insert_switch(&mut conn, &switch).await
    }

    async fn list_switches(&self, session_id: &str) -> Result<Vec<AgentSwitch>, StoreError> {
        let found = sqlx::query(sql::LIST_SWITCHES)
            .bind(session_id)
            .fetch_all(&self.pool)
            .await?;
        rows::all(&found, rows::switch)
    }

    // ---- tool calls ----

    async fn insert_tool_calls(&self, calls: Vec<ToolCallRecord>) -> Result<(), StoreError> {
        if calls.is_empty() {
            return Ok(());
        }
        // One transaction: the calls of a reply are stored together or not at all.
        let mut tx = self.pool.begin().await?;
        let mut checked: Vec<&str> = Vec::new();
        for call in &calls {
            if !checked.contains(&call.session_id.as_str()) {
                require_live(&mut tx, &call.session_id).await?;
                checked.push(&call.session_id);
            }
            insert_call(&mut tx, call).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn get_tool_call(
        &self,
        session_id: &str,
        call_id: &str,
    ) -> Result<Option<ToolCallRecord>, StoreError> {
        sqlx::query(sql::GET_CALL)
            .bind(session_id)
            .bind(call_id)
            .fetch_optional(&self.pool)
            .await?
            .as_ref()
            .map(rows::tool_call)
            .transpose()
    }

    async fn call_id_exists(&self, session_id: &str, call_id: &str) -> Result<bool, StoreError> {
        let hit: Option<i32> = sqlx::query_scalar(sql::CALL_ID_EXISTS)
            .bind(session_id)
            .bind(call_id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(hit.is_some())
    }

    async fn update_tool_call(
        &self,
        session_id: &str,
        call_id: &str,
        from: &[ToolCallStatus],
        update: ToolCallUpdate,
    ) -> Result<UpdateOutcome, StoreError> {
        if !from.is_empty() {
            let text = sql::update_call(from.len());
            let mut tx = self.pool.begin().await?;
            let mut query = sqlx::query(&text)
                .bind(session_id)
                .bind(call_id)
                .bind(update.status.as_str())
                .bind(&update.decision)
                .bind(&update.feedback)
                .bind(rows::opt_json(update.modified_arguments.as_ref()))
                .bind(rows::opt_json(update.result.as_ref()))
                .bind(&update.error)
                .bind(update.settle.then(rows::now));
            for status in from {
                query = query.bind(status.as_str());
            }
            if let Some(row) = query.fetch_optional(&mut *tx).await? {
                let updated = rows::tool_call(&row)?;
                if let Some(text) = &update.tool_message {
                    let message = rows::tool_message(session_id, call_id, text);
                    append_message(&mut tx, &message, rows::now()).await?;
                }
                tx.commit().await?;
                return Ok(UpdateOutcome::Updated(updated));
            }
        }
        Ok(match self.get_tool_call(session_id, call_id).await? {
            Some(current) => UpdateOutcome::Unchanged(current),
            None => UpdateOutcome::NotFound,
        })
    }

    async fn list_step_calls(
        &self,
        turn_id: &str,
        step: i32,
    ) -> Result<Vec<ToolCallRecord>, StoreError> {
        let found = sqlx::query(sql::LIST_STEP_CALLS)
            .bind(turn_id)
            .bind(step)
            .fetch_all(&self.pool)
            .await?;
        rows::all(&found, rows::tool_call)
    }

    async fn list_open_calls(&self, session_id: &str) -> Result<Vec<ToolCallRecord>, StoreError> {
        let found = sqlx::query(sql::LIST_OPEN_CALLS)
            .bind(session_id)
            .fetch_all(&self.pool)
            .await?;
        rows::all(&found, rows::tool_call)
    }

    async fn list_session_calls(
        &self,
        session_id: &str,
    ) -> Result<Vec<ToolCallRecord>, StoreError> {
        let found = sqlx::query(sql::LIST_SESSION_CALLS)
            .bind(session_id)
            .fetch_all(&self.pool)
            .await?;
        rows::all(&found, rows::tool_call)
    }

    async fn count_pending_approvals(&self) -> Result<u64, StoreError> {
        let count: i64 = sqlx::query_scalar(sql::COUNT_PENDING_APPROVALS)
            .fetch_one(&self.pool)
            .await?;
        Ok(u64::try_from(count).unwrap_or(0))
    }

    // ---- turns ----

    async fn create_turn(&self, turn: Turn) -> Result<(), StoreError> {
        let mut conn = self.pool.acquire().await?;
        insert_turn(&mut conn, &turn).await
    }

    async fn active_turn(&self, session_id: &str) -> Result<Option<Turn>, StoreError> {
        sqlx::query(sql::ACTIVE_TURN)
            .bind(session_id)
            .fetch_optional(&self.pool)
            .await?
            .as_ref()
            .map(rows::turn)
            .transpose()
    }

    async fn get_turn(&self, turn_id: &str) -> Result<Option<Turn>, StoreError> {
        sqlx::query(sql::GET_TURN)
            .bind(turn_id)
            .fetch_optional(&self.pool)
            .await?
            .as_ref()
            .map(rows::turn)
            .transpose()
    }

    async fn update_turn(
        &self,
        turn_id: &str,
        status: TurnStatus,
        steps: i32,
        agent: &str,
    ) -> Result<(), StoreError> {
        let done = sqlx::query(sql::UPDATE_TURN)
            .bind(turn_id)
            .bind(status.as_str())
            .bind(steps)
            .bind(agent)
            .bind(rows::now())
            .execute(&self.pool)
            .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound(format!("turn {turn_id:?}")));
        }
        Ok(())
    }

    async fn request_cancel(&self, session_id: &str) -> Result<Option<Turn>, StoreError> {
        sqlx::query(sql::REQUEST_CANCEL)
            .bind(session_id)
            .bind(rows::now())
            .fetch_optional(&self.pool)
            .await?
            .as_ref()
            .map(rows::turn)
            .transpose()
    }

    async fn list_stalled_turns(&self, limit: u32) -> Result<Vec<Turn>, StoreError> {
        let found = sqlx::query(sql::LIST_STALLED_TURNS)
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await?;
        rows::all(&found, rows::turn)
    }

    // ---- events ----

    async fn append_event(
        &self,
        session_id: &str,
        event: &RuntimeEvent,
    ) -> Result<SequencedEvent, StoreError> {
        let mut tx = self.pool.begin().await?;
        let stored = append_event(&mut tx, session_id, event, rows::now()).await?;
        tx.commit().await?;
        Ok(stored)
    }

    async fn list_events(
        &self,
        session_id: &str,
        after: u64,
        limit: u32,
    ) -> Result<Vec<SequencedEvent>, StoreError> {
        let found = sqlx::query(sql::LIST_EVENTS)
            .bind(session_id)
            .bind(rows::clamp_i64(after))
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await?;
        rows::all(&found, rows::event)
    }
}

/// `NotFound` for the session when a statement touched no row.
fn require_session(rows_affected: u64, session_id: &str) -> Result<(), StoreError> {
    if rows_affected == 0 {
        return Err(StoreError::NotFound(rows::session_name(session_id)));
    }
    Ok(())
}

// ---- statements inside a transaction ----

/// `NotFound` unless the session is live.
async fn require_live(conn: &mut PgConnection, session_id: &str) -> Result<(), StoreError> {
    let live: Option<i32> = sqlx::query_scalar(sql::SESSION_IS_LIVE)
        .bind(session_id)
        .fetch_optional(&mut *conn)
        .await?;
    match live {
        Some(_) => Ok(()),
        None => Err(StoreError::NotFound(rows::session_name(session_id))),
    }
}

/// Appends a message with the session's next seq; the seq UPDATE holds the session row's lock
/// until the transaction ends, so concurrent appends queue there.
async fn append_message(
    conn: &mut PgConnection,
    message: &NewMessage,
    now: DateTime<Utc>,
) -> Result<Message, StoreError> {
    let seq: Option<i64> = sqlx::query_scalar(sql::NEXT_MESSAGE_SEQ)
        .bind(&message.session_id)
        .bind(now)
        .fetch_optional(&mut *conn)
        .await?;
    let Some(seq) = seq else {
        return Err(StoreError::NotFound(rows::session_name(
            &message.session_id,
        )));
    };
    let row = sqlx::query(INSERT_MESSAGE)
        .bind(codelab_core::new_id().to_string())
        .bind(&message.session_id)
        .bind(seq)
        .bind(message.role.as_str())
        .bind(&message.content)
        .bind(&message.agent)
        .bind(rows::opt_json(message.tool_calls.as_ref()))
        .bind(&message.tool_call_id)
        .bind(now)
        .fetch_one(&mut *conn)
        .await?;
    rows::message(&row)
}

async fn insert_call(conn: &mut PgConnection, call: &ToolCallRecord) -> Result<(), StoreError> {
    sqlx::query(sql::INSERT_CALL)
        .bind(&call.call_id)
        .bind(&call.session_id)
        .bind(&call.turn_id)
        .bind(call.step)
        .bind(&call.provider_call_id)
        .bind(&call.tool_name)
        .bind(rows::json(&call.arguments))
        .bind(call.requires_approval)
        .bind(&call.approval_reason)
        .bind(&call.agent)
        .bind(call.status.as_str())
        .bind(&call.decision)
        .bind(&call.feedback)
        .bind(rows::opt_json(call.modified_arguments.as_ref()))
        .bind(rows::opt_json(call.result.as_ref()))
        .bind(&call.error)
        .bind(call.created_at)
        .bind(call.settled_at)
        .execute(&mut *conn)
        .await
        .map_err(|e| {
            rows::classify(
                e,
                || {
                    format!(
                        "tool call {:?} in session {:?}",
                        call.call_id, call.session_id
                    )
                },
                "session",
            )
        })?;
    Ok(())
}

async fn insert_switch(conn: &mut PgConnection, switch: &AgentSwitch) -> Result<(), StoreError> {
    let done = sqlx::query(sql::INSERT_SWITCH)
        .bind(&switch.session_id)
        .bind(&switch.from_agent)
        .bind(&switch.to_agent)
        .bind(&switch.reason)
        .bind(&switch.confidence)
        .bind(&switch.method)
        .bind(switch.created_at)
        .execute(&mut *conn)
        .await
        .map_err(|e| rows::classify(e, || "agent switch".to_owned(), "session"))?;
    require_session(done.rows_affected(), &switch.session_id)
}

async fn insert_turn(conn: &mut PgConnection, turn: &Turn) -> Result<(), StoreError> {
    let done = sqlx::query(sql::INSERT_TURN)
        .bind(&turn.session_id)
        .bind(&turn.id)
        .bind(turn.status.as_str())
        .bind(turn.steps)
        .bind(&turn.agent)
        .bind(turn.created_at)
        .bind(turn.updated_at)
        .execute(&mut *conn)
        .await
        .map_err(|e| rows::classify(e, || format!("turn {:?}", turn.id), "session"))?;
    require_session(done.rows_affected(), &turn.session_id)
}

/// Applies a step's turn update; `Conflict` when the turn left the expected state.
async fn update_turn(
    conn: &mut PgConnection,
    update: &TurnUpdate,
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    let query = match update.expect {
        Some((status, steps)) => sqlx::query(sql::UPDATE_TURN_IF)
            .bind(&update.turn_id)
            .bind(update.status.as_str())
            .bind(update.steps)
            .bind(&update.agent)
            .bind(now)
            .bind(status.as_str())
            .bind(steps),
        None => sqlx::query(sql::UPDATE_TURN)
            .bind(&update.turn_id)
            .bind(update.status.as_str())
            .bind(update.steps)
            .bind(&update.agent)
            .bind(now),
    };
    if query.execute(&mut *conn).await?.rows_affected() == 0 {
        return Err(rows::turn_not_updated(update));
    }
    Ok(())
}

/// Appends an event with the session's next seq (the seq UPDATE holds the session row until
/// the transaction ends).
async fn append_event(
    conn: &mut PgConnection,
    session_id: &str,
    event: &RuntimeEvent,
    now: DateTime<Utc>,
) -> Result<SequencedEvent, StoreError> {
    let json = rows::event_json(event)?;
    let seq: Option<i64> = sqlx::query_scalar(sql::NEXT_EVENT_SEQ)
        .bind(session_id)
        .bind(now)
        .fetch_optional(&mut *conn)
        .await?;
    let Some(seq) = seq else {
        return Err(StoreError::NotFound(rows::session_name(session_id)));
    };
    sqlx::query(sql::INSERT_EVENT)
        .bind(session_id)
        .bind(seq)
        .bind(rows::json(&json))
        .bind(now)
        .execute(&mut *conn)
        .await?;
    Ok(SequencedEvent {
        seq: rows::event_seq(seq)?,
        event: event.clone(),
    })
}
