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
use super::{RuntimeStore, SessionLock, StoreError, StoreSettings};
use crate::model::{
    AgentSwitch, Budget, Committed, DEFAULT_BUDGET, LlmUsage, Message, NewMessage, NewSession,
    OwnerBudget, Plan, PlanVersion, PlanWrite, PlanningMode, Session, SessionQuery, SessionState,
    SpendWindows, StepCommit, ToolCallRecord, ToolCallStatus, ToolCallUpdate, Turn, TurnStatus,
    TurnUpdate, UpdateOutcome, UsageGroup, UsageGroupTotals, UsageQuery, WindowSpend,
};

/// What the runtime store does differently on a database beyond [`Backend`].
pub trait StoreBackend: Backend {
    /// The session locks of one store.
    type Locks: SessionLocking;
    /// The runtime's migrations for this database.
    fn migrator() -> &'static Migrator;
    /// Sets up the session locks of a store on `pool`.
    fn session_locks(pool: &Pool<Self>, settings: &StoreSettings) -> Self::Locks;
    /// The pool the store's writes go through (see [`SqlStore`]'s `writer`).
    fn writer_pool(pool: &Pool<Self>) -> Pool<Self>;
    /// The SQL of a usage row's UTC day as `YYYY-MM-DD` (times are stored differently).
    fn usage_day() -> &'static str;
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
    /// Reads.
    pool: Pool<B>,
    /// Writes: on SQLite one connection of its own, so writers queue here in order instead of
    /// retrying on SQLite's busy lock with growing sleeps (the database takes one writer at a
    /// time anyway); on PostgreSQL the same pool as reads (its row locks serialise writers).
    writer: Pool<B>,
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
    pub async fn open(
        pool: Pool<B>,
        clock: SharedClock,
        settings: &StoreSettings,
    ) -> Result<Self, StoreError> {
        B::run_migrations(B::migrator(), &pool)
            .await
            .map_err(|e| StoreError::Migration(e.to_string()))?;
        let locks = B::session_locks(&pool, settings);
        let writer = B::writer_pool(&pool);
        Ok(Self {
            pool,
            writer,
            locks,
            clock,
        })
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
        let mut tx = B::begin_write(&self.writer).await?;
        // Also the liveness check: `NotFound` before anything is written.
        let seqs = reserve_seqs(
            &mut tx,
            &commit.session_id,
            commit.messages.len(),
            commit.events.len(),
            now,
        )
        .await?;
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
        let stored = insert_messages(
            &mut tx,
            &commit.session_id,
            &commit.messages,
            seqs.first_message,
            now,
        )
        .await?;
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
        apply_plan_writes(&mut tx, &commit.session_id, &commit.plans, now).await?;
        for usage in &commit.usage {
            insert_usage(On::from(&mut tx), usage).await?;
        }
        if let Some(update) = &commit.turn {
            update_turn_in(On::from(&mut tx), update, now).await?;
        }
        let events = insert_events(
            &mut tx,
            &commit.session_id,
            &commit.events,
            seqs.first_event,
            now,
        )
        .await?;
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
            .fetch_one(&self.writer)
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

    async fn session_state(
        &self,
        session_id: &str,
        with_open_calls: bool,
    ) -> Result<Option<SessionState>, StoreError> {
        let mut conn = self.pool.acquire().await?;
        let session = query(sql::GET_SESSION)
            .bind(session_id)
            .fetch_optional_as(&mut conn, rows::session)
            .await?;
        let Some(session) = session else {
            return Ok(None);
        };
        let active_turn = query(sql::ACTIVE_TURN)
            .bind(session_id)
            .fetch_optional_as(&mut conn, rows::turn)
            .await?;
        let step_calls = match &active_turn {
            Some(turn) if turn.steps > 0 => {
                query(sql::LIST_STEP_CALLS)
                    .bind(&turn.id)
                    .bind(turn.steps)
                    .fetch_all_as(&mut conn, rows::tool_call)
                    .await?
            }
            _ => Vec::new(),
        };
        let open_calls = if with_open_calls {
            query(sql::LIST_OPEN_CALLS)
                .bind(session_id)
                .fetch_all_as(&mut conn, rows::tool_call)
                .await?
        } else {
            Vec::new()
        };
        Ok(Some(SessionState {
            session,
            active_turn,
            step_calls,
            open_calls,
        }))
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
            .execute(&self.writer)
            .await?;
        require_session(done, session_id)
    }

    async fn set_planning(&self, session_id: &str, mode: PlanningMode) -> Result<(), StoreError> {
        let done = query(sql::SET_PLANNING)
            .bind(session_id)
            .bind(mode.as_str())
            .execute(&self.writer)
            .await?;
        require_session(done, session_id)
    }

    async fn set_current_agent(&self, session_id: &str, agent: &str) -> Result<(), StoreError> {
        let done = query(sql::SET_CURRENT_AGENT)
            .bind(session_id)
            .bind(agent)
            .execute(&self.writer)
            .await?;
        require_session(done, session_id)
    }

    async fn delete_session(&self, session_id: &str) -> Result<bool, StoreError> {
        let done = query(sql::DELETE_SESSION)
            .bind(session_id)
            .bind(DbTime(self.now()))
            .execute(&self.writer)
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
            .execute(&self.writer)
            .await?;
        Ok(done)
    }

    // ---- messages ----

    async fn append_message(&self, message: NewMessage) -> Result<Message, StoreError> {
        let mut tx = B::begin_write(&self.writer).await?;
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
        insert_switch(On::from(&self.writer), &switch).await
    }

    async fn list_switches(&self, session_id: &str) -> Result<Vec<AgentSwitch>, StoreError> {
        query(sql::LIST_SWITCHES)
            .bind(session_id)
            .fetch_all_as(&self.pool, rows::switch)
            .await
    }

    // ---- usage ----

    async fn session_usage(&self, session_id: &str) -> Result<Vec<LlmUsage>, StoreError> {
        query(sql::SESSION_USAGE)
            .bind(session_id)
            .fetch_all_as(&self.pool, rows::usage)
            .await
    }

    async fn spend_in(
        &self,
        user_id: &str,
        windows: &SpendWindows,
    ) -> Result<WindowSpend, StoreError> {
        let earliest = windows.minute.min(windows.day).min(windows.month);
        let row = query(sql::SPEND_IN)
            .bind(user_id)
            .bind(DbTime(windows.minute))
            .bind(DbTime(windows.day))
            .bind(DbTime(windows.month))
            .bind(DbTime(earliest))
            .fetch_one(&self.pool)
            .await?;
        rows::window_spend(&row)
    }

    async fn usage_report(
        &self,
        usage: &UsageQuery,
        group_by: &[UsageGroup],
        limit: u32,
    ) -> Result<Vec<UsageGroupTotals>, StoreError> {
        let sql = sql::usage_report(group_by, B::usage_day());
        let found = query(&sql)
            .bind(DbTime(usage.from))
            .bind(DbTime(usage.to))
            .bind(usage.user_id.clone())
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await?;
        found
            .iter()
            .map(|row| rows::usage_group(row, group_by.len()))
            .collect()
    }

    // ---- budgets ----

    async fn set_budget(&self, budget: &Budget) -> Result<(), StoreError> {
        query(sql::SET_BUDGET)
            .bind(&budget.subject)
            .bind(budget.daily_tokens.map(rows::signed))
            .bind(budget.monthly_tokens.map(rows::signed))
            .bind(budget.daily_cost)
            .bind(budget.monthly_cost)
            .bind(budget.requests_per_minute.map(rows::signed))
            .bind(budget.tokens_per_minute.map(rows::signed))
            .bind(DbTime(budget.updated_at))
            .execute(&self.writer)
            .await?;
        Ok(())
    }

    async fn budgets_of(
        &self,
        user_id: &str,
    ) -> Result<(Option<Budget>, Option<Budget>), StoreError> {
        let found = query(sql::BUDGETS_OF)
            .bind(user_id)
            .fetch_all_as(&self.pool, rows::budget)
            .await?;
        let (default, own): (Vec<Budget>, Vec<Budget>) = found
            .into_iter()
            .partition(|budget| budget.subject == DEFAULT_BUDGET);
        Ok((own.into_iter().next(), default.into_iter().next()))
    }

    async fn owner_budget(&self, session_id: &str) -> Result<Option<OwnerBudget>, StoreError> {
        let found = query(sql::OWNER_BUDGET)
            .bind(session_id)
            .fetch_all(&self.pool)
            .await?;
        rows::owner_budget(&found)
    }

    async fn note_budget_warning(
        &self,
        user_id: &str,
        limit: &str,
        window_start: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let noted = query(sql::NOTE_BUDGET_WARNING)
            .bind(user_id)
            .bind(limit)
            .bind(DbTime(window_start))
            .execute(&self.writer)
            .await?;
        // A step in the warned band repeats the insert alone; earlier windows are forgotten
        // once, when a new one is noted.
        if noted > 0 {
            query(sql::FORGET_BUDGET_WARNINGS)
                .bind(user_id)
                .bind(limit)
                .bind(DbTime(window_start))
                .execute(&self.writer)
                .await?;
        }
        Ok(noted > 0)
    }

    async fn list_budgets(&self) -> Result<Vec<Budget>, StoreError> {
        query(sql::LIST_BUDGETS)
            .fetch_all_as(&self.pool, rows::budget)
            .await
    }

    async fn clear_budget(&self, subject: &str) -> Result<bool, StoreError> {
        let done = query(sql::CLEAR_BUDGET)
            .bind(subject)
            .execute(&self.writer)
            .await?;
        Ok(done > 0)
    }

    // ---- tool calls ----

    async fn insert_tool_calls(&self, calls: Vec<ToolCallRecord>) -> Result<(), StoreError> {
        if calls.is_empty() {
            return Ok(());
        }
        // One transaction: the calls of a reply are stored together or not at all.
        let mut tx = B::begin_write(&self.writer).await?;
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
            let mut tx = B::begin_write(&self.writer).await?;
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
                apply_plan_writes(&mut tx, session_id, &update.plans, self.now()).await?;
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
        insert_turn(On::from(&self.writer), &turn).await
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
            plan_id: None,
            plan_required: false,
            expect: None,
        };
        update_turn_in(On::from(&self.writer), &update, self.now()).await
    }

    async fn request_cancel(&self, session_id: &str) -> Result<Option<Turn>, StoreError> {
        query(sql::REQUEST_CANCEL)
            .bind(session_id)
            .bind(DbTime(self.now()))
            .fetch_optional_as(&self.writer, rows::turn)
            .await
    }

    async fn list_stalled_turns(&self, limit: u32) -> Result<Vec<Turn>, StoreError> {
        query(sql::LIST_STALLED_TURNS)
            .bind(i64::from(limit))
            .fetch_all_as(&self.pool, rows::turn)
            .await
    }

    // ---- plans ----

    async fn get_plan(&self, plan_id: &str) -> Result<Option<Plan>, StoreError> {
        let found = query(sql::GET_PLAN)
            .bind(plan_id)
            .fetch_all(&self.pool)
            .await?;
        Ok(rows::plans(&found)?.into_iter().next())
    }

    async fn plan_of_call(
        &self,
        session_id: &str,
        call_id: &str,
    ) -> Result<Option<Plan>, StoreError> {
        let found = query(sql::PLAN_OF_CALL)
            .bind(session_id)
            .bind(call_id)
            .fetch_all(&self.pool)
            .await?;
        Ok(rows::plans(&found)?.into_iter().next())
    }

    async fn list_plans(&self, session_id: &str) -> Result<Vec<Plan>, StoreError> {
        let found = query(sql::LIST_PLANS)
            .bind(session_id)
            .fetch_all(&self.pool)
            .await?;
        rows::plans(&found)
    }

    async fn list_plan_versions(&self, plan_id: &str) -> Result<Vec<PlanVersion>, StoreError> {
        query(sql::LIST_PLAN_VERSIONS)
            .bind(plan_id)
            .fetch_all_as(&self.pool, rows::plan_version)
            .await
    }

    // ---- events ----

    async fn append_event(
        &self,
        session_id: &str,
        event: &RuntimeEvent,
    ) -> Result<SequencedEvent, StoreError> {
        let now = self.now();
        let mut tx = B::begin_write(&self.writer).await?;
        let seqs = reserve_seqs(&mut tx, session_id, 0, 1, now).await?;
        let mut stored = insert_events(
            &mut tx,
            session_id,
            std::slice::from_ref(event),
            seqs.first_event,
            now,
        )
        .await?;
        tx.commit().await?;
        stored
            .pop()
            .ok_or_else(|| StoreError::Corrupt("an appended event was not returned".to_owned()))
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

/// Appends a message with the session's next seq inside a write transaction (see
/// [`reserve_seqs`]).
async fn append_message_in<B: StoreBackend>(
    tx: &mut Transaction<'static, B>,
    message: &NewMessage,
    now: DateTime<Utc>,
) -> Result<Message, StoreError> {
    let seqs = reserve_seqs(tx, &message.session_id, 1, 0, now).await?;
    let mut stored = insert_messages(
        tx,
        &message.session_id,
        std::slice::from_ref(message),
        seqs.first_message,
        now,
    )
    .await?;
    stored
        .pop()
        .ok_or_else(|| StoreError::Corrupt("an appended message was not returned".to_owned()))
}

/// The first seqs [`reserve_seqs`] reserved.
struct ReservedSeqs {
    first_message: i64,
    first_event: i64,
}

/// Reserves the session's next `messages` message seqs and `events` event seqs inside a write
/// transaction, in one statement that also checks the session is live (`NotFound`) and bumps
/// its activity when anything is appended. The UPDATE holds the session row (PostgreSQL) or
/// the database (SQLite) until the transaction ends, so concurrent appends queue there.
async fn reserve_seqs<B: StoreBackend>(
    tx: &mut Transaction<'static, B>,
    session_id: &str,
    messages: usize,
    events: usize,
    now: DateTime<Utc>,
) -> Result<ReservedSeqs, StoreError> {
    let count = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
    let row = query(sql::RESERVE_SEQS)
        .bind(session_id)
        .bind(count(messages))
        .bind(count(events))
        .bind(DbTime(now))
        .fetch_optional(&mut *tx)
        .await?;
    let Some(row) = row else {
        return Err(StoreError::NotFound(rows::session_name(session_id)));
    };
    Ok(ReservedSeqs {
        first_message: row.int("message_count")? - count(messages) + 1,
        first_event: row.int("last_event_seq")? - count(events) + 1,
    })
}

/// Inserts `messages` of `session_id` with the seqs from `first_seq` (reserved by
/// [`reserve_seqs`]), [`sql::MAX_ROWS_PER_INSERT`] rows per statement; returns them as stored.
async fn insert_messages<B: StoreBackend>(
    tx: &mut Transaction<'static, B>,
    session_id: &str,
    messages: &[NewMessage],
    first_seq: i64,
    now: DateTime<Utc>,
) -> Result<Vec<Message>, StoreError> {
    let stored: Vec<Message> = messages
        .iter()
        .zip(first_seq..)
        .map(|(message, seq)| Message {
            id: codelab_core::new_id().to_string(),
            session_id: session_id.to_owned(),
            seq,
            role: message.role,
            content: message.content.clone(),
            agent: message.agent.clone(),
            tool_calls: message.tool_calls.clone(),
            tool_call_id: message.tool_call_id.clone(),
            created_at: now,
        })
        .collect();
    for chunk in stored.chunks(sql::MAX_ROWS_PER_INSERT) {
        let mut statement = query(sql::insert_messages(B::KIND, chunk.len()));
        for message in chunk {
            statement = statement
                .bind(&message.id)
                .bind(&message.session_id)
                .bind(message.seq)
                .bind(message.role.as_str())
                .bind(&message.content)
                .bind(&message.agent)
                .bind(rows::opt_json(message.tool_calls.as_ref()))
                .bind(&message.tool_call_id)
                .bind(DbTime(now));
        }
        statement.execute(&mut *tx).await?;
    }
    Ok(stored)
}

/// Inserts `events` of `session_id` with the seqs from `first_seq` (reserved by
/// [`reserve_seqs`]), [`sql::MAX_ROWS_PER_INSERT`] rows per statement; returns them with
/// their seqs.
async fn insert_events<B: StoreBackend>(
    tx: &mut Transaction<'static, B>,
    session_id: &str,
    events: &[RuntimeEvent],
    first_seq: i64,
    now: DateTime<Utc>,
) -> Result<Vec<SequencedEvent>, StoreError> {
    let json = events
        .iter()
        .map(rows::event_json)
        .collect::<Result<Vec<_>, _>>()?;
    let seqs: Vec<i64> = (first_seq..).take(events.len()).collect();
    for (chunk, (json, seqs)) in events.chunks(sql::MAX_ROWS_PER_INSERT).zip(
        json.chunks(sql::MAX_ROWS_PER_INSERT)
            .zip(seqs.chunks(sql::MAX_ROWS_PER_INSERT)),
    ) {
        let mut statement = query(sql::insert_events(chunk.len()));
        for (json, seq) in json.iter().zip(seqs) {
            statement = statement
                .bind(session_id)
                .bind(*seq)
                .bind(rows::json(json))
                .bind(DbTime(now));
        }
        statement.execute(&mut *tx).await?;
    }
    events
        .iter()
        .zip(seqs)
        .map(|(event, seq)| {
            Ok(SequencedEvent {
                seq: rows::event_seq(seq)?,
                event: event.clone(),
            })
        })
        .collect()
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
        .bind(&switch.complexity)
        .execute(on)
        .await
        .map_err(|e| StoreError::of_write(e, |_| "agent switch".to_owned(), "session"))?;
    require_session(done, &switch.session_id)
}

async fn insert_usage<'e, B: Backend>(
    on: On<'e, B>,
    usage: &'e LlmUsage,
) -> Result<(), StoreError> {
    let done = query(sql::INSERT_USAGE)
        .bind(&usage.session_id)
        .bind(&usage.id)
        .bind(DbTime(usage.created_at))
        .bind(&usage.turn_id)
        .bind(usage.step)
        .bind(&usage.agent)
        .bind(usage.purpose.as_str())
        .bind(&usage.requested_model)
        .bind(&usage.provider)
        .bind(&usage.model)
        .bind(rows::signed(usage.prompt_tokens))
        .bind(rows::signed(usage.completion_tokens))
        .bind(rows::signed(usage.total_tokens))
        .bind(rows::signed(usage.cached_tokens))
        .bind(usage.cost)
        .bind(rows::signed(usage.latency_ms))
        .bind(usage.ttft_ms.map(rows::signed))
        .bind(i32::try_from(usage.tool_calls).unwrap_or(i32::MAX))
        .bind(usage.outcome.as_str())
        .bind(&usage.error_kind)
        .execute(on)
        .await
        .map_err(|e| StoreError::of_write(e, |_| format!("usage {}", usage.id), "session"))?;
    require_session(done, &usage.session_id)
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
        .bind(&turn.plan_id)
        .bind(turn.plan_required)
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
    .bind(DbTime(now))
    .bind(&update.plan_id)
    .bind(update.plan_required);
    if let Some((status, steps)) = update.expect {
        statement = statement.bind(status.as_str()).bind(steps);
    }
    if statement.execute(on).await? == 0 {
        return Err(rows::turn_not_updated(update));
    }
    Ok(())
}

/// Applies a step's or a settlement's plan writes in order inside its write transaction, all
/// in `session_id`: a plan of another session is not found (Status, Subtask) or taken
/// (Propose), so a write never reaches into another session's plans. Any failure fails the
/// whole transaction.
async fn apply_plan_writes<B: StoreBackend>(
    tx: &mut Transaction<'static, B>,
    session_id: &str,
    writes: &[PlanWrite],
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    for write in writes {
        match write {
            PlanWrite::Propose(plan) => propose_plan(tx, session_id, plan).await?,
            PlanWrite::Status {
                plan_id,
                status,
                turn_id,
                feedback,
                summary,
            } => {
                let done = query(sql::UPDATE_PLAN_STATUS)
                    .bind(plan_id)
                    .bind(session_id)
                    .bind(status.as_str())
                    .bind(turn_id)
                    .bind(feedback)
                    .bind(summary)
                    .bind(DbTime(now))
                    .execute(&mut *tx)
                    .await?;
                if done == 0 {
                    return Err(StoreError::NotFound(rows::plan_name(plan_id)));
                }
                if let Some(turn_id) = turn_id {
                    query(sql::SET_TURN_PLAN)
                        .bind(plan_id)
                        .bind(turn_id)
                        .bind(session_id)
                        .execute(&mut *tx)
                        .await?;
                }
            }
            PlanWrite::Subtask {
                plan_id,
                position,
                status,
                result,
                error,
                context_from,
                first_step,
            } => {
                let done = query(sql::UPDATE_SUBTASK)
                    .bind(plan_id)
                    .bind(*position)
                    .bind(status.as_str())
                    .bind(result)
                    .bind(error)
                    .bind(*context_from)
                    .bind(*first_step)
                    .bind(session_id)
                    .execute(&mut *tx)
                    .await?;
                if done == 0 {
                    return Err(StoreError::NotFound(format!(
                        "subtask {position} of {}",
                        rows::plan_name(plan_id)
                    )));
                }
            }
        }
    }
    Ok(())
}

/// Stores `plan` as proposed: a new plan (its row, subtasks and first version), or a new
/// version of a plan of `session_id` (its row updated to this version, its subtasks replaced,
/// the feedback that asked for it kept on the previous version, the version kept). The
/// plan's own times are stored as given, as a new turn's are.
async fn propose_plan<B: StoreBackend>(
    tx: &mut Transaction<'static, B>,
    session_id: &str,
    plan: &Plan,
) -> Result<(), StoreError> {
    let taken =
        || StoreError::Conflict(format!("{} of another session", rows::plan_name(&plan.id)));
    if plan.session_id != session_id {
        return Err(taken());
    }
    let before = query(sql::PLAN_BEFORE_REVISION)
        .bind(&plan.id)
        .fetch_optional(&mut *tx)
        .await?;
    let subtasks_proposed = rows::proposed_subtasks(&plan.subtasks);
    match before {
        None => {
            query(sql::INSERT_PLAN)
                .bind(&plan.id)
                .bind(&plan.session_id)
                .bind(plan.version)
                .bind(&plan.title)
                .bind(&plan.description)
                .bind(plan.status.as_str())
                .bind(&plan.call_id)
                .bind(&plan.turn_id)
                .bind(&plan.feedback)
                .bind(&plan.summary)
                .bind(DbTime(plan.created_at))
                .bind(DbTime(plan.updated_at))
                .execute(&mut *tx)
                .await
                .map_err(|e| {
                    StoreError::of_write(
                        e,
                        |_| rows::plan_name(&plan.id),
                        &rows::session_name(session_id),
                    )
                })?;
        }
        Some(row) => {
            if row.text("session_id")? != session_id {
                return Err(taken());
            }
            let previous = row.int32("version")?;
            let feedback = row.opt_text("feedback")?;
            query(sql::REVISE_PLAN)
                .bind(&plan.id)
                .bind(plan.version)
                .bind(&plan.title)
                .bind(&plan.description)
                .bind(plan.status.as_str())
                .bind(&plan.call_id)
                .bind(&plan.turn_id)
                .bind(DbTime(plan.updated_at))
                .execute(&mut *tx)
                .await?;
            query(sql::DELETE_SUBTASKS)
                .bind(&plan.id)
                .execute(&mut *tx)
                .await?;
            query(sql::SET_VERSION_FEEDBACK)
                .bind(&plan.id)
                .bind(previous)
                .bind(feedback)
                .execute(&mut *tx)
                .await?;
        }
    }
    insert_subtasks(tx, plan).await?;
    query(sql::INSERT_PLAN_VERSION)
        .bind(&plan.id)
        .bind(plan.version)
        .bind(&plan.title)
        .bind(&plan.description)
        .bind(rows::json(&subtasks_proposed))
        .bind(DbTime(plan.updated_at))
        .execute(&mut *tx)
        .await
        .map_err(|e| {
            let what = format!("version {} of {}", plan.version, rows::plan_name(&plan.id));
            StoreError::of_write(e, |_| what, &rows::plan_name(&plan.id))
        })?;
    Ok(())
}

/// Inserts the subtasks of `plan`, [`sql::MAX_ROWS_PER_INSERT`] rows per statement.
async fn insert_subtasks<B: StoreBackend>(
    tx: &mut Transaction<'static, B>,
    plan: &Plan,
) -> Result<(), StoreError> {
    let dependencies: Vec<_> = plan
        .subtasks
        .iter()
        .map(|subtask| rows::dependencies_json(&subtask.dependencies))
        .collect();
    for (chunk, dependencies) in plan
        .subtasks
        .chunks(sql::MAX_ROWS_PER_INSERT)
        .zip(dependencies.chunks(sql::MAX_ROWS_PER_INSERT))
    {
        let mut statement = query(sql::insert_subtasks(chunk.len()));
        for (subtask, dependencies) in chunk.iter().zip(dependencies) {
            statement = statement
                .bind(&plan.id)
                .bind(subtask.position)
                .bind(&subtask.title)
                .bind(&subtask.description)
                .bind(&subtask.agent)
                .bind(subtask.estimated_minutes)
                .bind(rows::json(dependencies))
                .bind(subtask.status.as_str())
                .bind(&subtask.result)
                .bind(&subtask.error)
                .bind(subtask.context_from)
                .bind(subtask.first_step);
        }
        statement.execute(&mut *tx).await.map_err(|e| {
            StoreError::of_write(
                e,
                |_| format!("a subtask position of {}", rows::plan_name(&plan.id)),
                &rows::plan_name(&plan.id),
            )
        })?;
    }
    Ok(())
}
