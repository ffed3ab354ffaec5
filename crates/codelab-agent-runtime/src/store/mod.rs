//! Storage of the agent runtime: one trait, implemented once for PostgreSQL and SQLite
//! ([`sql_store::SqlStore`]; `postgres.rs` and `sqlite.rs` keep only the migrations and the
//! session lock), and one conformance suite run against both
//! (`tests/runtime/store_conformance.rs`).
//!
//! Everything stored is stored before it is emitted; every state change that must not race
//! (settling a tool call) or must not be seen half done after a crash (a step's outcome, see
//! [`RuntimeStore::commit_step`]) is one atomic call here.

pub mod postgres;
mod rows;
pub mod sql_store;
pub mod sqlite;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use codelab_core::clock::SharedClock;
use codelab_core::db::DbPool;
use codelab_protocol::runtime::{RuntimeEvent, SequencedEvent};

pub use sql_store::SqlStore;

use crate::model::{
    AgentSwitch, Budget, Committed, LlmUsage, Message, NewMessage, NewSession, OwnerBudget, Plan,
    PlanVersion, PlanningMode, Session, SessionQuery, SessionState, SpendWindows, StepCommit,
    ToolCallRecord, ToolCallStatus, ToolCallUpdate, Turn, TurnStatus, UpdateOutcome, UsageGroup,
    UsageGroupTotals, UsageQuery, WindowSpend,
};

/// A storage failure (shared by every service store; `Stale` is the runtime's conditional
/// writes).
pub use codelab_core::db::StoreError;

/// Held while a session's turn is processed; dropping it releases the session for others
/// (PostgreSQL: an advisory lock on a dedicated connection; SQLite: a process-wide mutex).
pub trait SessionLock: Send {}

/// Everything the runtime stores.
#[async_trait]
pub trait RuntimeStore: Send + Sync + 'static {
    /// Checks the database answers (for `/ready`).
    async fn ping(&self) -> Result<(), StoreError>;

    /// Serialises work on one session across tasks, processes and replicas.
    async fn lock_session(&self, session_id: &str) -> Result<Box<dyn SessionLock>, StoreError>;
    /// [`RuntimeStore::lock_session`] without waiting: `None` when someone holds the lock.
    async fn try_lock_session(
        &self,
        session_id: &str,
    ) -> Result<Option<Box<dyn SessionLock>>, StoreError>;

    /// Stores a step's outcome in one transaction (see [`StepCommit`]): the new turn, the
    /// messages in order, the tool calls, the agent switches, the turn's new state and the
    /// events, or nothing at all. `NotFound` for a missing session or turn; `Conflict` for a
    /// taken call id; `Stale` for a turn no longer in the expected state.
    async fn commit_step(&self, commit: StepCommit) -> Result<Committed, StoreError>;

    // ---- sessions ----
    /// Creates a session; `Conflict` when the id exists (deleted sessions included).
    async fn create_session(&self, session: NewSession) -> Result<Session, StoreError>;
    /// A live (not deleted) session.
    async fn get_session(&self, session_id: &str) -> Result<Option<Session>, StoreError>;
    /// A live session with its active turn, that turn's latest step's calls and, when
    /// `with_open_calls`, the session's open calls: what [`RuntimeStore::get_session`],
    /// [`RuntimeStore::active_turn`], [`RuntimeStore::list_step_calls`] and
    /// [`RuntimeStore::list_open_calls`] read, on one connection (each checkout of a pooled
    /// connection costs a round trip of its own). `None` for a missing or deleted session.
    async fn session_state(
        &self,
        session_id: &str,
        with_open_calls: bool,
    ) -> Result<Option<SessionState>, StoreError>;
    /// An owner's live sessions, most recently active first, and the total that match.
    async fn list_sessions(&self, query: &SessionQuery) -> Result<(Vec<Session>, u64), StoreError>;
    /// Sets the title (also used once from the first user message).
    async fn set_title(&self, session_id: &str, title: &str) -> Result<(), StoreError>;
    /// Sets the session's planning setting.
    async fn set_planning(&self, session_id: &str, mode: PlanningMode) -> Result<(), StoreError>;
    async fn set_current_agent(&self, session_id: &str, agent: &str) -> Result<(), StoreError>;
    /// Soft-deletes a session; `false` when there was no live session with that id.
    async fn delete_session(&self, session_id: &str) -> Result<bool, StoreError>;
    /// Removes (hard-deletes, with everything in them) up to `batch` sessions whose last
    /// activity is before `cutoff`; returns how many were removed.
    async fn purge_idle_sessions(
        &self,
        cutoff: DateTime<Utc>,
        batch: u32,
    ) -> Result<u64, StoreError>;

    // ---- messages ----
    /// Appends a message (next `seq`) and bumps the session's activity and message count.
    async fn append_message(&self, message: NewMessage) -> Result<Message, StoreError>;
    /// Every message of a session in order.
    async fn list_messages(&self, session_id: &str) -> Result<Vec<Message>, StoreError>;

    // ---- agent switches ----
    async fn record_switch(&self, switch: AgentSwitch) -> Result<(), StoreError>;
    /// A session's switches, oldest first.
    async fn list_switches(&self, session_id: &str) -> Result<Vec<AgentSwitch>, StoreError>;

    // ---- usage ----
    /// A session's LLM calls (docs/usage.md), oldest first; those of a deleted session too.
    async fn session_usage(&self, session_id: &str) -> Result<Vec<LlmUsage>, StoreError>;
    /// What `user_id`'s calls used in each window, in one read of the rows from the earliest
    /// window's start on.
    async fn spend_in(
        &self,
        user_id: &str,
        windows: &SpendWindows,
    ) -> Result<WindowSpend, StoreError>;

    /// The calls `query` selects, summed per group of `group_by` (none: one row of totals,
    /// with no keys), at most `limit` groups: by day first in order of their keys, else the
    /// largest first.
    async fn usage_report(
        &self,
        query: &UsageQuery,
        group_by: &[UsageGroup],
        limit: u32,
    ) -> Result<Vec<UsageGroupTotals>, StoreError>;

    // ---- budgets ----
    /// Sets a budget, replacing the subject's previous one.
    async fn set_budget(&self, budget: &Budget) -> Result<(), StoreError>;
    /// `user_id`'s own budget and the default (`model::DEFAULT_BUDGET`), in one read.
    async fn budgets_of(
        &self,
        user_id: &str,
    ) -> Result<(Option<Budget>, Option<Budget>), StoreError>;
    /// The session's owner and the budget that applies to them (their own, else the
    /// default), in one read; `None` when the session does not exist.
    async fn owner_budget(&self, session_id: &str) -> Result<Option<OwnerBudget>, StoreError>;
    /// Records that `user_id` was warned about `limit` in the window starting at
    /// `window_start`: `true` the first time (send the warning), `false` after. Forgets the
    /// user's earlier windows of that limit.
    async fn note_budget_warning(
        &self,
        user_id: &str,
        limit: &str,
        window_start: DateTime<Utc>,
    ) -> Result<bool, StoreError>;
    /// Every budget, the default first, then by subject.
    async fn list_budgets(&self) -> Result<Vec<Budget>, StoreError>;
    /// Removes a budget; `false` when there was none.
    async fn clear_budget(&self, subject: &str) -> Result<bool, StoreError>;

    // ---- tool calls ----
    /// Stores the calls of one reply; `Conflict` if a `call_id` is taken in the session.
    async fn insert_tool_calls(&self, calls: Vec<ToolCallRecord>) -> Result<(), StoreError>;
    async fn get_tool_call(
        &self,
        session_id: &str,
        call_id: &str,
    ) -> Result<Option<ToolCallRecord>, StoreError>;
    /// Whether a call id (ours or a provider's) was ever used in the session.
    async fn call_id_exists(&self, session_id: &str, call_id: &str) -> Result<bool, StoreError>;
    /// Atomically applies `update` only when the call's status is one of `from`, together with
    /// its `tool_message` (one transaction).
    async fn update_tool_call(
        &self,
        session_id: &str,
        call_id: &str,
        from: &[ToolCallStatus],
        update: ToolCallUpdate,
    ) -> Result<UpdateOutcome, StoreError>;
    /// The calls of one turn step, in the order the model made them.
    async fn list_step_calls(
        &self,
        turn_id: &str,
        step: i32,
    ) -> Result<Vec<ToolCallRecord>, StoreError>;
    /// Calls still open (pending approval or awaiting a result) in a session, oldest first.
    async fn list_open_calls(&self, session_id: &str) -> Result<Vec<ToolCallRecord>, StoreError>;
    /// Every call of a session, oldest first (history pages).
    async fn list_session_calls(&self, session_id: &str)
    -> Result<Vec<ToolCallRecord>, StoreError>;
    /// How many calls wait for a human approval (`pending_approval`) in all live sessions
    /// together (for the `codelab_agent_runtime_pending_approvals` gauge).
    async fn count_pending_approvals(&self) -> Result<u64, StoreError>;

    // ---- turns ----
    async fn create_turn(&self, turn: Turn) -> Result<(), StoreError>;
    /// The session's newest turn that is not finished.
    async fn active_turn(&self, session_id: &str) -> Result<Option<Turn>, StoreError>;
    async fn get_turn(&self, turn_id: &str) -> Result<Option<Turn>, StoreError>;
    async fn update_turn(
        &self,
        turn_id: &str,
        status: TurnStatus,
        steps: i32,
        agent: &str,
    ) -> Result<(), StoreError>;

    /// Asks the session's active turn to stop (without the session lock): sets its
    /// `cancel_requested_at` unless already set. Returns the turn, `None` when none is active.
    async fn request_cancel(&self, session_id: &str) -> Result<Option<Turn>, StoreError>;
    /// Unfinished turns of live sessions that nothing visibly waits on — `running`, or
    /// `awaiting_tools` without an open call — oldest change first, at most `limit`. Their
    /// runner died unless it still holds the session lock.
    async fn list_stalled_turns(&self, limit: u32) -> Result<Vec<Turn>, StoreError>;

    // ---- plans ----
    /// A plan with its subtasks in order, by id (of any session: callers check it is theirs).
    async fn get_plan(&self, plan_id: &str) -> Result<Option<Plan>, StoreError>;
    /// The plan of the session whose current version's `create_plan` call is `call_id`.
    async fn plan_of_call(
        &self,
        session_id: &str,
        call_id: &str,
    ) -> Result<Option<Plan>, StoreError>;
    /// Every plan of a session with its subtasks, oldest first.
    async fn list_plans(&self, session_id: &str) -> Result<Vec<Plan>, StoreError>;
    /// Every version of a plan, oldest first.
    async fn list_plan_versions(&self, plan_id: &str) -> Result<Vec<PlanVersion>, StoreError>;

    // ---- events (for reconnect replay) ----
    /// Stores an event with the session's next `seq`.
    async fn append_event(
        &self,
        session_id: &str,
        event: &RuntimeEvent,
    ) -> Result<SequencedEvent, StoreError>;
    /// Events with `seq > after`, oldest first, at most `limit`.
    async fn list_events(
        &self,
        session_id: &str,
        after: u64,
        limit: u32,
    ) -> Result<Vec<SequencedEvent>, StoreError>;
}

/// What a store takes beyond its pool and clock (from the runtime's settings).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreSettings {
    /// The longest a statement of PostgreSQL's session lock connection may go unanswered
    /// before that connection counts as lost (`AGENT_RUNTIME__SESSION_LOCK_STATEMENT_TIMEOUT`).
    pub session_lock_statement_timeout: Duration,
}

impl Default for StoreSettings {
    fn default() -> Self {
        Self {
            session_lock_statement_timeout: DEFAULT_SESSION_LOCK_STATEMENT_TIMEOUT,
        }
    }
}

/// The default of [`StoreSettings::session_lock_statement_timeout`]: each lock statement is
/// one round trip, so this is many times a slow one, yet far below TCP's own timeouts.
pub const DEFAULT_SESSION_LOCK_STATEMENT_TIMEOUT: Duration = Duration::from_secs(5);

/// Opens the store for a connected pool and runs its migrations; `clock` dates what the store
/// stamps itself (activity, deletion, settling, cancel requests).
pub async fn open_store(
    pool: DbPool,
    clock: SharedClock,
) -> Result<Arc<dyn RuntimeStore>, StoreError> {
    open_store_with(pool, clock, StoreSettings::default()).await
}

/// [`open_store`] with `settings` instead of the defaults.
pub async fn open_store_with(
    pool: DbPool,
    clock: SharedClock,
    settings: StoreSettings,
) -> Result<Arc<dyn RuntimeStore>, StoreError> {
    Ok(match pool {
        DbPool::Postgres(pool) => Arc::new(SqlStore::open(pool, clock, &settings).await?),
        DbPool::Sqlite(pool) => Arc::new(SqlStore::open(pool, clock, &settings).await?),
    })
}
