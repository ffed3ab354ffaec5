//! [`RuntimeStore`] written once for both databases. What differs per backend: how a write
//! transaction starts ([`Backend`]), the migrations and the session lock ([`StoreBackend`],
//! implemented in `postgres.rs` and `sqlite.rs`). Timestamps bind through [`DbTime`], which
//! stores the form each database keeps (see `rows.rs`); the SQL is in `rows::sql`.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use codelab_core::clock::SharedClock;
use codelab_core::db::cells::Cells;
use codelab_core::db::{Backend, DbTime, On, map_rows, now_from, query};
use codelab_protocol::runtime::{RuntimeEvent, SequencedEvent};
use sqlx::migrate::Migrator;
use sqlx::{Pool, Transaction};

use super::rows::{self, sql};
use super::{RuntimeStore, SessionLock, StoreError};
use crate::model::{
    AgentSwitch, Committed, Message, NewMessage, NewSession, Session, SessionQuery, StepCommit,
    ToolCallRecord, ToolCallStatus, ToolCallUpdate, Turn, TurnStatus, TurnUpdate, UpdateOutcome,
};

/// What the runtime store does differently on a database beyond [`Backend`].
pub trait StoreBackend: Backend {
    /// The session locks of one store.
    type Locks: SessionLocking;
    /// The runtime's migrations for this database.
    fn migrator() -> &'static Migrator;
    /// Sets up the session locks of a store on `pool`.
    fn session_locks(pool: &Pool<Self>) -> Self::Locks;
}

/// How a backend serialises work on one session (see [`RuntimeStore::lock_session`]).
#[async_trait]
pub trait SessionLocking: Send + Sync + 'static {
    async fn lock(&self, session_id: &str) -> Result<Box<dyn SessionLock>, StoreError>;
    /// `None` when someone holds the lock.
    async fn try_lock(&self, session_id: &str) -> Result<Option<Box<dyn SessionLock>>, StoreError>;
}

/// The agent runtime's store on a pool of either database.
pub struct SqlStore<B: StoreBackend> {
    pool: Pool<B>,
    locks: B::Locks,
    clock: SharedClock,
}

impl<B: StoreBackend> std::fmt::Debug for SqlStore<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqlStore").finish_non_exhaustive()
    }
}

impl<B: StoreBackend> SqlStore<B> {
    /// Runs the migrations and wraps the pool; `clock` dates every record the store stamps.
    pub async fn open(pool: Pool<B>, clock: SharedClock) -> Result<Self, StoreError> {
        B::run_migrations(B::migrator(), &pool)
            .await
            .map_err(|e| StoreError::Migration(e.to_string()))?;
        let locks = B::session_locks(&pool);
        Ok(Self { pool, locks, clock })
    }

    /// The injected clock's time at the precision both databases keep (microseconds), so a
    /// record read back equals the one returned when it was written.
    fn now(&self) -> DateTime<Utc> {
        now_from(self.clock.as_ref())
    }
}

#[async_trait]
impl<B: StoreBackend> RuntimeStore for SqlStore<B> {
    async fn ping(&self) -> Result<(), StoreError> {
        query(sql::PING).execute(&self.pool).await?;
        Ok(())
    }

    async fn lock_session(&self, session_id: &str) -> Result<Box<dyn SessionLock>, StoreError> {
        self.locks.lock(session_id).await
    }

    async fn try_lock_session(
        &self,
        session_id: &str,
    ) -> Result<Option<Box<dyn SessionLock>>, StoreError> {
        self.locks.try_lock(session_id).await
    }

    async fn commit_step(&self, commit: StepCommit) -> Result<Committed, StoreError> {
        let now = self.now();
        let mut tx = B::begin_write(&self.pool).await?;
        require_live(On::from(&mut tx), &commit.session_id).await?;
        if let Some(turn) = &commit.new_turn {
            insert_turn(On::from(&mut tx), turn).await?;
        }
        if let Some(title) = &commit.title {
            query(sql::SET_TITLE_IF_UNSET)
                .bind(&commit.session_id)
                .bind(title)
                .bind(rows::fold_title(title))
                .execute(&mut tx)
                .await?;
        }
        let mut stored = Vec::with_capacity(commit.messages.len());
        for message in &commit.messages {
            stored.push(append_message_in(&mut tx, message, now).await?);
        }
        for call in &commit.calls {
            insert_call(On::from(&mut tx), call).await?;
        }
        for switch in &commit.switches {
            insert_switch(On::from(&mut tx), switch).await?;
        }
        if let Some(last) = commit.switches.last() {
            let done = query(sql::SET_CURRENT_AGENT)
                .bind(&commit.session_id)
                .bind(&last.to_agent)
                .execute(&mut tx)
                .await?;
            require_session(done, &commit.session_id)?;
        }
        if let Some(update) = &commit.turn {
            update_turn_in(On::from(&mut tx), update, now).await?;
        }
        let mut events = Vec::with_capacity(commit.events.len());
        for event in &commit.events {
            events.push(append_event_in(&mut tx, &commit.session_id, event, now).await?);
        }
        tx.commit().await?;
        Ok(Committed {
            messages: stored,
            events,
        })
    }

    // ---- sessions ----

    async fn create_session(&self, session: NewSession) -> Result<Session, StoreError> {
        let row = query(sql::INSERT_SESSION)
            .bind(&session.id)
            .bind(&session.owner)
            .bind(&session.current_agent)
            .bind(DbTime(self.now()))
            .fetch_one(&self.pool)
            .await
            .map_err(|e| StoreError::of_write(e, |_| rows::session_name(&session.id), "session"))?;
        rows::session(&row)
    }

    async fn get_session(&self, session_id: &str) -> Result<Option<Session>, StoreError> {
        query(sql::GET_SESSION)
            .bind(session_id)
            .fetch_optional_as(&self.pool, rows::session)
            .await
    }

    async fn list_sessions(
        &self,
        filter: &SessionQuery,
    ) -> Result<(Vec<Session>, u64), StoreError> {
        let pattern = rows::search_pattern(filter.search.as_deref());
        let found = query(sql::LIST_SESSIONS)
            .bind(&filter.owner)
            .bind(&pattern)
            .bind(i64::from(filter.limit))
            .bind(i64::from(filter.offset))
            .fetch_all(&self.pool)
            .await?;
        let total = query(sql::COUNT_SESSIONS)
            .bind(&filter.owner)
            .bind(&pattern)
            .fetch_one(&self.pool)
            .await?
            .int("total")?;
        Ok((
            map_rows(&found, rows::session)?,
            u64::try_from(total).unwrap_or(0),
        ))
    }

    async fn set_title(&self, session_id: &str, title: &str) -> Result<(), StoreError> {
        let done = query(sql::SET_TITLE)
            .bind(session_id)
            .bind(title)
            .bind(rows::fold_title(title))
            .execute(&self.pool)
            .await?;
        require_session(done, session_id)
    }

    async fn set_current_agent(&self, session_id: &str, agent: &str) -> Result<(), StoreError> {
        let done = query(sql::SET_CURRENT_AGENT)
            .bind(session_id)
            .bind(agent)
            .execute(&self.pool)
            .await?;
        require_session(done, session_id)
    }

    async fn delete_session(&self, session_id: &str) -> Result<bool, StoreError> {
        let done = query(sql::DELETE_SESSION)
            .bind(session_id)
            .bind(DbTime(self.now()))
            .execute(&self.pool)
            .await?;
        Ok(done > 0)
    }

    async fn purge_idle_sessions(
        &self,
        cutoff: DateTime<Utc>,
        batch: u32,
    ) -> Result<u64, StoreError> {
        let done = query(sql::PURGE_SESSIONS)
            .bind(DbTime(cutoff))
            .bind(i64::from(batch))
            .execute(&self.pool)
            .await?;
        Ok(done)
    }

    // ---- messages ----

    async fn append_message(&self, message: NewMessage) -> Result<Message, StoreError> {
        let mut tx = B::begin_write(&self.pool).await?;
        let stored = append_message_in(&mut tx, &message, self.now()).await?;
        tx.commit().await?;
        Ok(stored)
    }

    async fn list_messages(&self, session_id: &str) -> Result<Vec<Message>, StoreError> {
        query(sql::LIST_MESSAGES)
            .bind(session_id)
            .fetch_all_as(&self.pool, rows::message)
            .await
    }

    // ---- agent switches ----

    async fn record_switch(&self, switch: AgentSwitch) -> Result<(), StoreError> {
        insert_switch(On::from(&self.pool), &switch).await
    }

    async fn list_switches(&self, session_id: &str) -> Result<Vec<AgentSwitch>, StoreError> {
        query(sql::LIST_SWITCHES)
            .bind(session_id)
            .fetch_all_as(&self.pool, rows::switch)
            .await
    }

    // ---- tool calls ----

    async fn insert_tool_calls(&self, calls: Vec<ToolCallRecord>) -> Result<(), StoreError> {
        if calls.is_empty() {
            return Ok(());
        }
        // One transaction: the calls of a reply are stored together or not at all.
        let mut tx = B::begin_write(&self.pool).await?;
        let mut checked: Vec<&str> = Vec::new();
        for call in &calls {
            if !checked.contains(&call.session_id.as_str()) {
                require_live(On::from(&mut tx), &call.session_id).await?;
                checked.push(&call.session_id);
            }
            insert_call(On::from(&mut tx), call).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn get_tool_call(
        &self,
        session_id: &str,
        call_id: &str,
    ) -> Result<Option<ToolCallRecord>, StoreError> {
        query(sql::GET_CALL)
            .bind(session_id)
            .bind(call_id)
            .fetch_optional_as(&self.pool, rows::tool_call)
            .await
    }

    async fn call_id_exists(&self, session_id: &str, call_id: &str) -> Result<bool, StoreError> {
        let hit = query(sql::CALL_ID_EXISTS)
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
            let mut tx = B::begin_write(&self.pool).await?;
            let mut statement = query(&text)
                .bind(session_id)
                .bind(call_id)
                .bind(update.status.as_str())
                .bind(&update.decision)
                .bind(&update.feedback)
                .bind(rows::opt_json(update.modified_arguments.as_ref()))
                .bind(rows::opt_json(update.result.as_ref()))
                .bind(&update.error)
                .bind(update.settle.then(|| DbTime(self.now())));
            for status in from {
                statement = statement.bind(status.as_str());
            }
            if let Some(row) = statement.fetch_optional(&mut tx).await? {
                let updated = rows::tool_call(&row)?;
                if let Some(text) = &update.tool_message {
                    let message = NewMessage::tool_result(session_id, call_id, text);
                    append_message_in(&mut tx, &message, self.now()).await?;
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
        query(sql::LIST_STEP_CALLS)
            .bind(turn_id)
            .bind(step)
            .fetch_all_as(&self.pool, rows::tool_call)
            .await
    }

    async fn list_open_calls(&self, session_id: &str) -> Result<Vec<ToolCallRecord>, StoreError> {
        query(sql::LIST_OPEN_CALLS)
            .bind(session_id)
            .fetch_all_as(&self.pool, rows::tool_call)
            .await
    }

    async fn list_session_calls(
        &self,
        session_id: &str,
    ) -> Result<Vec<ToolCallRecord>, StoreError> {
        query(sql::LIST_SESSION_CALLS)
            .bind(session_id)
            .fetch_all_as(&self.pool, rows::tool_call)
            .await
    }

    async fn count_pending_approvals(&self) -> Result<u64, StoreError> {
        let count = query(sql::COUNT_PENDING_APPROVALS)
            .fetch_one(&self.pool)
            .await?
            .int("total")?;
        Ok(u64::try_from(count).unwrap_or(0))
    }

    // ---- turns ----

    async fn create_turn(&self, turn: Turn) -> Result<(), StoreError> {
        insert_turn(On::from(&self.pool), &turn).await
    }

    async fn active_turn(&self, session_id: &str) -> Result<Option<Turn>, StoreError> {
        query(sql::ACTIVE_TURN)
            .bind(session_id)
            .fetch_optional_as(&self.pool, rows::turn)
            .await
    }

    async fn get_turn(&self, turn_id: &str) -> Result<Option<Turn>, StoreError> {
        query(sql::GET_TURN)
            .bind(turn_id)
            .fetch_optional_as(&self.pool, rows::turn)
            .await
    }

    async fn update_turn(
        &self,
        turn_id: &str,
        status: TurnStatus,
        steps: i32,
        agent: &str,
    ) -> Result<(), StoreError> {
        let update = TurnUpdate {
            turn_id: turn_id.to_owned(),
            status,
            steps,
            agent: agent.to_owned(),
            expect: None,
        };
        update_turn_in(On::from(&self.pool), &update, self.now()).await
    }

    async fn request_cancel(&self, session_id: &str) -> Result<Option<Turn>, StoreError> {
        query(sql::REQUEST_CANCEL)
            .bind(session_id)
            .bind(DbTime(self.now()))
            .fetch_optional_as(&self.pool, rows::turn)
            .await
    }

    async fn list_stalled_turns(&self, limit: u32) -> Result<Vec<Turn>, StoreError> {
        query(sql::LIST_STALLED_TURNS)
            .bind(i64::from(limit))
            .fetch_all_as(&self.pool, rows::turn)
            .await
    }

    // ---- events ----

    async fn append_event(
        &self,
        session_id: &str,
        event: &RuntimeEvent,
    ) -> Result<SequencedEvent, StoreError> {
        let mut tx = B::begin_write(&self.pool).await?;
        let stored = append_event_in(&mut tx, session_id, event, self.now()).await?;
        tx.commit().await?;
        Ok(stored)
    }

    async fn list_events(
        &self,
        session_id: &str,
        after: u64,
        limit: u32,
    ) -> Result<Vec<SequencedEvent>, StoreError> {
        query(sql::LIST_EVENTS)
            .bind(session_id)
            .bind(rows::clamp_i64(after))
            .bind(i64::from(limit))
            .fetch_all_as(&self.pool, rows::event)
            .await
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
async fn require_live<'e, B: Backend>(
    on: On<'e, B>,
    session_id: &'e str,
) -> Result<(), StoreError> {
    let live = query(sql::SESSION_IS_LIVE)
        .bind(session_id)
        .fetch_optional(on)
        .await?;
    match live {
        Some(_) => Ok(()),
        None => Err(StoreError::NotFound(rows::session_name(session_id))),
    }
}

/// Appends a message with the session's next seq inside a write transaction: the seq
/// UPDATE holds the session row (PostgreSQL) or the database (SQLite) until it ends, so
/// concurrent appends queue there.
async fn append_message_in<B: StoreBackend>(
    tx: &mut Transaction<'static, B>,
    message: &NewMessage,
    now: DateTime<Utc>,
) -> Result<Message, StoreError> {
    let seq = query(sql::NEXT_MESSAGE_SEQ)
        .bind(&message.session_id)
        .bind(DbTime(now))
        .fetch_optional(&mut *tx)
        .await?;
    let Some(seq) = seq.map(|row| row.int("message_count")).transpose()? else {
        return Err(StoreError::NotFound(rows::session_name(
            &message.session_id,
        )));
    };
    let row = query(sql::insert_message(B::KIND))
        .bind(codelab_core::new_id().to_string())
        .bind(&message.session_id)
        .bind(seq)
        .bind(message.role.as_str())
        .bind(&message.content)
        .bind(&message.agent)
        .bind(rows::opt_json(message.tool_calls.as_ref()))
        .bind(&message.tool_call_id)
        .bind(DbTime(now))
        .fetch_one(&mut *tx)
        .await?;
    rows::message(&row)
}

async fn insert_call<'e, B: Backend>(
    on: On<'e, B>,
    call: &'e ToolCallRecord,
) -> Result<(), StoreError> {
    query(sql::INSERT_CALL)
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
        .bind(DbTime(call.created_at))
        .bind(call.settled_at.map(DbTime))
        .execute(on)
        .await
        .map_err(|e| {
            let what = format!(
                "tool call {:?} in session {:?}",
                call.call_id, call.session_id
            );
            StoreError::of_write(e, |_| what, "session")
        })?;
    Ok(())
}

async fn insert_switch<'e, B: Backend>(
    on: On<'e, B>,
    switch: &'e AgentSwitch,
) -> Result<(), StoreError> {
    let done = query(sql::INSERT_SWITCH)
        .bind(&switch.session_id)
        .bind(&switch.from_agent)
        .bind(&switch.to_agent)
        .bind(&switch.reason)
        .bind(&switch.confidence)
        .bind(&switch.method)
        .bind(DbTime(switch.created_at))
        .execute(on)
        .await
        .map_err(|e| StoreError::of_write(e, |_| "agent switch".to_owned(), "session"))?;
    require_session(done, &switch.session_id)
}

async fn insert_turn<'e, B: Backend>(on: On<'e, B>, turn: &'e Turn) -> Result<(), StoreError> {
    let done = query(sql::INSERT_TURN)
        .bind(&turn.session_id)
        .bind(&turn.id)
        .bind(turn.status.as_str())
        .bind(turn.steps)
        .bind(&turn.agent)
        .bind(DbTime(turn.created_at))
        .bind(DbTime(turn.updated_at))
        .execute(on)
        .await
        .map_err(|e| StoreError::of_write(e, |_| format!("turn {:?}", turn.id), "session"))?;
    require_session(done, &turn.session_id)
}

/// Applies a step's turn update; `Stale` when the turn left the expected state.
async fn update_turn_in<'e, B: Backend>(
    on: On<'e, B>,
    update: &'e TurnUpdate,
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    let mut statement = query(match update.expect {
        Some(_) => sql::UPDATE_TURN_IF,
        None => sql::UPDATE_TURN,
    })
    .bind(&update.turn_id)
    .bind(update.status.as_str())
    .bind(update.steps)
    .bind(&update.agent)
    .bind(DbTime(now));
    if let Some((status, steps)) = update.expect {
        statement = statement.bind(status.as_str()).bind(steps);
    }
    if statement.execute(on).await? == 0 {
        return Err(rows::turn_not_updated(update));
    }
    Ok(())
}

/// Appends an event with the session's next seq (the seq UPDATE holds the session until
/// the transaction ends).
async fn append_event_in<B: Backend>(
    tx: &mut Transaction<'static, B>,
    session_id: &str,
    event: &RuntimeEvent,
    now: DateTime<Utc>,
) -> Result<SequencedEvent, StoreError> {
    let json = rows::event_json(event)?;
    let seq = query(sql::NEXT_EVENT_SEQ)
        .bind(session_id)
        .bind(DbTime(now))
        .fetch_optional(&mut *tx)
        .await?;
    let Some(seq) = seq.map(|row| row.int("last_event_seq")).transpose()? else {
        return Err(StoreError::NotFound(rows::session_name(session_id)));
    };
    query(sql::INSERT_EVENT)
        .bind(session_id)
        .bind(seq)
        .bind(rows::json(&json))
        .bind(DbTime(now))
        .execute(&mut *tx)
        .await?;
    Ok(SequencedEvent {
        seq: rows::event_seq(seq)?,
        event: event.clone(),
    })
}
