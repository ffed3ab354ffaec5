//! [`RuntimeStore`] on SQLite: timestamps are fixed-width RFC 3339 UTC text
//! ([`rows::sqlite_time`]) so SQL comparisons on them compare instants; JSON is text. Writes
//! that read first run in `BEGIN IMMEDIATE` transactions (a deferred one could not upgrade
//! its read lock once another writer committed), and a session is serialised by a
//! process-wide mutex: with SQLite the runtime is a single process.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex, PoisonError, Weak};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use codelab_protocol::runtime::{RuntimeEvent, SequencedEvent};
use sqlx::migrate::Migrator;
use sqlx::{SqliteConnection, SqlitePool};
use tokio::sync::OwnedMutexGuard;

use super::rows::{self, sql};
use super::{RuntimeStore, SessionLock, StoreError};
use crate::model::{
    AgentSwitch, Committed, Message, NewMessage, NewSession, Session, SessionQuery, StepCommit,
    ToolCallRecord, ToolCallStatus, ToolCallUpdate, Turn, TurnStatus, TurnUpdate, UpdateOutcome,
};

/// The SQLite migrations, embedded in the binary.
pub static MIGRATOR: Migrator = sqlx::migrate!("./migrations/sqlite");

/// Starts a write transaction at once, taking SQLite's write lock up front.
const BEGIN_IMMEDIATE: &str = "BEGIN IMMEDIATE";

macro_rules! message_columns {
    () => {
        "id, session_id, seq, role, content, agent, tool_calls, tool_call_id, created_at"
    };
}

/// $1 id, $2 session, $3 seq, $4 role, $5 content, $6 agent, $7 tool calls, $8 tool call id,
/// $9 now.
const INSERT_MESSAGE: &str = concat!(
    "INSERT INTO messages (",
    message_columns!(),
    ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) RETURNING ",
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

/// The agent runtime's store on a SQLite pool.
#[derive(Debug, Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
    /// Names the database in the lock registry, so two stores on the same file in one process
    /// share their session locks and stores on different files never block each other.
    lock_scope: Arc<str>,
}

impl SqliteStore {
    /// Runs the migrations and wraps the pool.
    pub async fn open(pool: SqlitePool) -> Result<Self, StoreError> {
        MIGRATOR
            .run(&pool)
            .await
            .map_err(|e| StoreError::Migration(e.to_string()))?;
        let file = pool.connect_options().get_filename().to_owned();
        // The same file reached by another path should share locks too.
        let file = std::fs::canonicalize(&file).unwrap_or(file);
        Ok(Self {
            pool,
            lock_scope: Arc::from(file.to_string_lossy().as_ref()),
        })
    }
}

/// Session mutexes of this process, by database and session id. Entries are weak: a mutex
/// lives while a guard or a waiter holds it, and its entry is removed when the last one goes.
static SESSION_LOCKS: LazyLock<Mutex<LockRegistry>> = LazyLock::new(Mutex::default);

#[derive(Default)]
struct LockRegistry {
    mutexes: HashMap<(Arc<str>, String), Weak<tokio::sync::Mutex<()>>>,
    /// Size at which dead entries (left by cancelled waiters) are swept next; doubling keeps
    /// the sweeps amortised O(1) per lock.
    sweep_at: usize,
}

impl LockRegistry {
    /// The mutex of a session, created on first use.
    fn mutex(&mut self, key: (Arc<str>, String)) -> Arc<tokio::sync::Mutex<()>> {
        if let Some(mutex) = self.mutexes.get(&key).and_then(Weak::upgrade) {
            return mutex;
        }
        if self.mutexes.len() >= self.sweep_at.max(64) {
            self.mutexes.retain(|_, mutex| mutex.strong_count() > 0);
            self.sweep_at = self.mutexes.len() * 2;
        }
        let mutex = Arc::new(tokio::sync::Mutex::new(()));
        self.mutexes.insert(key, Arc::downgrade(&mutex));
        mutex
    }

    /// Forgets a session's mutex once nobody holds or waits for it.
    fn release(&mut self, key: &(Arc<str>, String)) {
        if self
            .mutexes
            .get(key)
            .is_some_and(|mutex| mutex.strong_count() == 0)
        {
            self.mutexes.remove(key);
        }
    }
}

fn registry() -> std::sync::MutexGuard<'static, LockRegistry> {
    // Nothing panics while the registry is held; if something did, the map is still valid.
    SESSION_LOCKS.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A held session mutex.
struct SqliteSessionLock {
    guard: Option<OwnedMutexGuard<()>>,
    key: (Arc<str>, String),
}

impl SessionLock for SqliteSessionLock {}

impl Drop for SqliteSessionLock {
    fn drop(&mut self) {
        // Unlock first, so the entry is removable when nobody waits.
        drop(self.guard.take());
        registry().release(&self.key);
    }
}

#[async_trait]
impl RuntimeStore for SqliteStore {
    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query(sql::PING).execute(&self.pool).await?;
        Ok(())
    }

    async fn lock_session(&self, session_id: &str) -> Result<Box<dyn SessionLock>, StoreError> {
        let key = (self.lock_scope.clone(), session_id.to_owned());
        let mutex = registry().mutex(key.clone());
        let guard = mutex.lock_owned().await;
        Ok(Box::new(SqliteSessionLock {
            guard: Some(guard),
            key,
        }))
    }

    async fn try_lock_session(
        &self,
        session_id: &str,
    ) -> Result<Option<Box<dyn SessionLock>>, StoreError> {
        let key = (self.lock_scope.clone(), session_id.to_owned());
        let mutex = registry().mutex(key.clone());
        let Ok(guard) = mutex.try_lock_owned() else {
            registry().release(&key);
            return Ok(None);
        };
        Ok(Some(Box::new(SqliteSessionLock {
            guard: Some(guard),
            key,
        })))
    }

    async fn commit_step(&self, commit: StepCommit) -> Result<Committed, StoreError> {
        let now = rows::now();
        let mut tx = self.pool.begin_with(BEGIN_IMMEDIATE).await?;
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
            .bind(rows::sqlite_time(rows::now()))
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
            .bind(rows::sqlite_time(rows::now()))
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
            .bind(rows::sqlite_time(cutoff))
            .bind(i64::from(batch))
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected())
    }

    // ---- messages ----

    async fn append_message(&self, message: NewMessage) -> Result<Message, StoreError> {
        // BEGIN IMMEDIATE holds the write lock until commit: concurrent appends queue there.
        let mut tx = self.pool.begin_with(BEGIN_IMMEDIATE).await?;
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
        let mut tx = self.pool.begin_with(BEGIN_IMMEDIATE).await?;
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
            let mut tx = self.pool.begin_with(BEGIN_IMMEDIATE).await?;
            let mut query = sqlx::query(&text)
                .bind(session_id)
                .bind(call_id)
                .bind(update.status.as_str())
                .bind(&update.decision)
                .bind(&update.feedback)
                .bind(rows::opt_json(update.modified_arguments.as_ref()))
                .bind(rows::opt_json(update.result.as_ref()))
                .bind(&update.error)
                .bind(update.settle.then(|| rows::sqlite_time(rows::now())));
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
            .bind(rows::sqlite_time(rows::now()))
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
            .bind(rows::sqlite_time(rows::now()))
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
        let mut tx = self.pool.begin_with(BEGIN_IMMEDIATE).await?;
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
async fn require_live(conn: &mut SqliteConnection, session_id: &str) -> Result<(), StoreError> {
    let live: Option<i32> = sqlx::query_scalar(sql::SESSION_IS_LIVE)
        .bind(session_id)
        .fetch_optional(&mut *conn)
        .await?;
    match live {
        Some(_) => Ok(()),
        None => Err(StoreError::NotFound(rows::session_name(session_id))),
    }
}

/// Appends a message with the session's next seq (inside a write transaction).
async fn append_message(
    conn: &mut SqliteConnection,
    message: &NewMessage,
    now: DateTime<Utc>,
) -> Result<Message, StoreError> {
    let seq: Option<i64> = sqlx::query_scalar(sql::NEXT_MESSAGE_SEQ)
        .bind(&message.session_id)
        .bind(rows::sqlite_time(now))
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
        .bind(rows::sqlite_time(now))
        .fetch_one(&mut *conn)
        .await?;
    rows::message(&row)
}

async fn insert_call(conn: &mut SqliteConnection, call: &ToolCallRecord) -> Result<(), StoreError> {
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
        .bind(rows::sqlite_time(call.created_at))
        .bind(call.settled_at.map(rows::sqlite_time))
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

async fn insert_switch(
    conn: &mut SqliteConnection,
    switch: &AgentSwitch,
) -> Result<(), StoreError> {
    let done = sqlx::query(sql::INSERT_SWITCH)
        .bind(&switch.session_id)
        .bind(&switch.from_agent)
        .bind(&switch.to_agent)
        .bind(&switch.reason)
        .bind(&switch.confidence)
        .bind(&switch.method)
        .bind(rows::sqlite_time(switch.created_at))
        .execute(&mut *conn)
        .await
        .map_err(|e| rows::classify(e, || "agent switch".to_owned(), "session"))?;
    require_session(done.rows_affected(), &switch.session_id)
}

async fn insert_turn(conn: &mut SqliteConnection, turn: &Turn) -> Result<(), StoreError> {
    let done = sqlx::query(sql::INSERT_TURN)
        .bind(&turn.session_id)
        .bind(&turn.id)
        .bind(turn.status.as_str())
        .bind(turn.steps)
        .bind(&turn.agent)
        .bind(rows::sqlite_time(turn.created_at))
        .bind(rows::sqlite_time(turn.updated_at))
        .execute(&mut *conn)
        .await
        .map_err(|e| rows::classify(e, || format!("turn {:?}", turn.id), "session"))?;
    require_session(done.rows_affected(), &turn.session_id)
}

/// Applies a step's turn update; `Stale` when the turn left the expected state.
async fn update_turn(
    conn: &mut SqliteConnection,
    update: &TurnUpdate,
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    let query = match update.expect {
        Some((status, steps)) => sqlx::query(sql::UPDATE_TURN_IF)
            .bind(&update.turn_id)
            .bind(update.status.as_str())
            .bind(update.steps)
            .bind(&update.agent)
            .bind(rows::sqlite_time(now))
            .bind(status.as_str())
            .bind(steps),
        None => sqlx::query(sql::UPDATE_TURN)
            .bind(&update.turn_id)
            .bind(update.status.as_str())
            .bind(update.steps)
            .bind(&update.agent)
            .bind(rows::sqlite_time(now)),
    };
    if query.execute(&mut *conn).await?.rows_affected() == 0 {
        return Err(rows::turn_not_updated(update));
    }
    Ok(())
}

/// Appends an event with the session's next seq (the seq UPDATE holds the session row until
/// the transaction ends).
async fn append_event(
    conn: &mut SqliteConnection,
    session_id: &str,
    event: &RuntimeEvent,
    now: DateTime<Utc>,
) -> Result<SequencedEvent, StoreError> {
    let json = rows::event_json(event)?;
    let seq: Option<i64> = sqlx::query_scalar(sql::NEXT_EVENT_SEQ)
        .bind(session_id)
        .bind(rows::sqlite_time(now))
        .fetch_optional(&mut *conn)
        .await?;
    let Some(seq) = seq else {
        return Err(StoreError::NotFound(rows::session_name(session_id)));
    };
    sqlx::query(sql::INSERT_EVENT)
        .bind(session_id)
        .bind(seq)
        .bind(rows::json(&json))
        .bind(rows::sqlite_time(now))
        .execute(&mut *conn)
        .await?;
    Ok(SequencedEvent {
        seq: rows::event_seq(seq)?,
        event: event.clone(),
    })
}
