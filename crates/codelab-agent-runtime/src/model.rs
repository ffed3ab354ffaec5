//! Records of the agent runtime: sessions, messages, tool calls, agent switches, turns.
//!
//! The turn is a state machine kept here, not in a call stack: after a crash or on another
//! replica, the rows say exactly what is awaited.

use chrono::{DateTime, Utc};
use codelab_protocol::runtime::{RuntimeEvent, SequencedEvent};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// `as_str` (the stored name; for [`Role`] also the OpenAI role name) and `parse` from one
/// table, so the two directions cannot drift apart.
// `as_str` / `parse` of the stored names, the same macro as the wire types'.
use codelab_protocol::wire_names as stored_names;

/// A conversation.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Session {
    /// Random UUID v4 for sessions we create (the gateway treats it as a capability); in the
    /// development WebSocket mode a client-chosen id of safe characters.
    pub id: String,
    /// The user id that owns the session (`sub` of the token, or the development user).
    pub owner: String,
    /// The first user message, trimmed to 500 characters; settable.
    pub title: Option<String>,
    pub current_agent: String,
    pub message_count: i64,
    pub created_at: DateTime<Utc>,
    pub last_activity: DateTime<Utc>,
    /// Whether the session's requests become plans (`docs/agent-runtime.md`, "Planning").
    pub planning: PlanningMode,
}

/// A session's planning setting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PlanningMode {
    /// The router's verdict (or the user's request) decides.
    #[default]
    Auto,
    /// Every routed request is planned.
    Always,
    /// Nothing is planned: the router's verdict is ignored and `create_plan` is refused.
    Never,
}

stored_names!(PlanningMode {
    Auto => "auto",
    Always => "always",
    Never => "never",
});

/// What is needed to create a session.
#[derive(Debug, Clone, PartialEq)]
pub struct NewSession {
    pub id: String,
    pub owner: String,
    pub current_agent: String,
}

/// Filters and paging for listing sessions.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct SessionQuery {
    pub owner: String,
    /// Case-insensitive substring of the title.
    pub search: Option<String>,
    pub limit: u32,
    pub offset: u32,
}

/// Role of a stored message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    User,
    Assistant,
    System,
    Tool,
}

stored_names!(Role {
    User => "user",
    Assistant => "assistant",
    System => "system",
    Tool => "tool",
});

/// A stored message of the conversation, in the order the LLM sees it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Message {
    pub id: String,
    pub session_id: String,
    /// Position in the session, from 1.
    pub seq: i64,
    pub role: Role,
    pub content: Option<String>,
    /// The agent that produced an assistant message.
    pub agent: Option<String>,
    /// OpenAI-style `tool_calls` of an assistant message, with our call ids.
    pub tool_calls: Option<Value>,
    /// For a `tool` message: the call it answers.
    pub tool_call_id: Option<String>,
    pub created_at: DateTime<Utc>,
}

/// A message to append (id, seq and time are assigned by the store).
#[derive(Debug, Clone, PartialEq)]
pub struct NewMessage {
    pub session_id: String,
    pub role: Role,
    pub content: Option<String>,
    pub agent: Option<String>,
    pub tool_calls: Option<Value>,
    pub tool_call_id: Option<String>,
}

impl NewMessage {
    /// A message of `role` holding `text` alone (no agent, tool calls or call id).
    pub fn text(session_id: &str, role: Role, text: &str) -> Self {
        NewMessage {
            session_id: session_id.to_owned(),
            role,
            content: Some(text.to_owned()),
            agent: None,
            tool_calls: None,
            tool_call_id: None,
        }
    }

    /// The `tool` message answering `call_id`.
    pub fn tool_result(session_id: &str, call_id: &str, text: &str) -> Self {
        NewMessage {
            tool_call_id: Some(call_id.to_owned()),
            ..NewMessage::text(session_id, Role::Tool, text)
        }
    }
}

/// Where a tool call stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ToolCallStatus {
    /// Waits for a human decision (and then the IDE's result).
    PendingApproval,
    /// Sent to the IDE; waits for its result.
    AwaitingResult,
    /// The IDE returned a result.
    Succeeded,
    /// The IDE returned an error.
    Failed,
    /// A human refused it.
    Rejected,
    /// The turn was cancelled before it settled.
    Cancelled,
    /// The arguments did not match the tool's schema, or the agent may not use the tool; the
    /// error went back to the model.
    Invalid,
    /// A server-side tool (`switch_mode`, `attempt_completion`, ...) that ran in the runtime.
    Executed,
}

impl ToolCallStatus {
    /// Whether the call still waits for something.
    pub fn is_open(self) -> bool {
        matches!(
            self,
            ToolCallStatus::PendingApproval | ToolCallStatus::AwaitingResult
        )
    }
}

stored_names!(ToolCallStatus {
    PendingApproval => "pending_approval",
    AwaitingResult => "awaiting_result",
    Succeeded => "succeeded",
    Failed => "failed",
    Rejected => "rejected",
    Cancelled => "cancelled",
    Invalid => "invalid",
    Executed => "executed",
});

/// One tool call of an assistant reply, with its approval verdict and outcome.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ToolCallRecord {
    /// Unique per session; what the IDE sees.
    pub call_id: String,
    pub session_id: String,
    pub turn_id: String,
    /// Step of the turn (1-based) whose reply made the call.
    pub step: i32,
    /// The id the provider gave, when it differs from `call_id` (repeated ids are replaced).
    pub provider_call_id: Option<String>,
    pub tool_name: String,
    /// Arguments exactly as the model sent them (a JSON object, never default-filled).
    pub arguments: Value,
    pub requires_approval: bool,
    pub approval_reason: Option<String>,
    pub agent: String,
    pub status: ToolCallStatus,
    /// `approve`, `edit`, `reject` when a human decided.
    pub decision: Option<String>,
    pub feedback: Option<String>,
    /// Edited arguments of an `edit` decision.
    pub modified_arguments: Option<Value>,
    pub result: Option<Value>,
    pub error: Option<String>,
    pub created_at: DateTime<Utc>,
    pub settled_at: Option<DateTime<Utc>>,
}

/// A change of a tool call's state, applied only if the call is in one of `from`.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolCallUpdate {
    pub status: ToolCallStatus,
    pub decision: Option<String>,
    pub feedback: Option<String>,
    pub modified_arguments: Option<Value>,
    pub result: Option<Value>,
    pub error: Option<String>,
    /// Set `settled_at` (terminal states).
    pub settle: bool,
    /// The `tool` message answering the call, appended in the same transaction when the
    /// update applies (so a settled call always has its result in the history, exactly once).
    pub tool_message: Option<String>,
    /// Plan changes stored in the same transaction when the call is updated (a decision on
    /// a plan settles its `create_plan` call).
    pub plans: Vec<PlanWrite>,
}

impl ToolCallUpdate {
    /// A change to `status` alone: every other field keeps its stored value, nothing settles.
    pub fn to(status: ToolCallStatus) -> Self {
        ToolCallUpdate {
            status,
            decision: None,
            feedback: None,
            modified_arguments: None,
            result: None,
            error: None,
            settle: false,
            tool_message: None,
            plans: Vec::new(),
        }
    }
}

/// Outcome of an atomic tool-call update.
#[derive(Debug, Clone, PartialEq)]
pub enum UpdateOutcome {
    /// The call was in an expected state and now has the new one.
    Updated(ToolCallRecord),
    /// The call is in another state; nothing changed.
    Unchanged(ToolCallRecord),
    /// No such call in this session.
    NotFound,
}

/// A recorded change of agent.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AgentSwitch {
    pub session_id: String,
    pub from_agent: Option<String>,
    pub to_agent: String,
    pub reason: String,
    pub confidence: Option<String>,
    /// `llm`, `fallback`, `explicit`, `tool`, `single_agent`.
    pub method: String,
    pub created_at: DateTime<Utc>,
    /// The router's verdict on the request it routed (`atomic`, `complex`); `None` for other
    /// changes of agent.
    pub complexity: Option<String>,
}

/// Where a turn stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TurnStatus {
    /// An LLM step is being produced.
    Running,
    /// Waiting for tool results or decisions.
    AwaitingTools,
    Completed,
    Cancelled,
    Failed,
    StepLimit,
}

stored_names!(TurnStatus {
    Running => "running",
    AwaitingTools => "awaiting_tools",
    Completed => "completed",
    Cancelled => "cancelled",
    Failed => "failed",
    StepLimit => "step_limit",
});

impl TurnStatus {
    /// Whether the turn is over.
    pub fn is_finished(self) -> bool {
        !matches!(self, TurnStatus::Running | TurnStatus::AwaitingTools)
    }
}

/// One user request and the steps it took.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Turn {
    pub id: String,
    pub session_id: String,
    pub status: TurnStatus,
    /// Steps taken so far.
    pub steps: i32,
    pub agent: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// When a `cancel_turn` asked for this turn to stop (set without the session lock; the
    /// process running the turn polls it).
    pub cancel_requested_at: Option<DateTime<Utc>>,
    /// The plan this turn runs, once a plan was approved in it (or resumed by a decision).
    pub plan_id: Option<String>,
    /// The turn must produce a plan (its request was classified complex, the session always
    /// plans, or the user asked for one): the architect is told so.
    pub plan_required: bool,
}

impl Turn {
    /// This turn, at its current steps and agent, moving to `status` (only while still in
    /// `expect`, when given).
    pub fn update_to(&self, status: TurnStatus, expect: Option<(TurnStatus, i32)>) -> TurnUpdate {
        TurnUpdate {
            turn_id: self.id.clone(),
            status,
            steps: self.steps,
            agent: self.agent.clone(),
            plan_id: self.plan_id.clone(),
            plan_required: self.plan_required,
            expect,
        }
    }
}

/// A turn's new state, part of a [`StepCommit`].
#[derive(Debug, Clone, PartialEq)]
pub struct TurnUpdate {
    pub turn_id: String,
    pub status: TurnStatus,
    pub steps: i32,
    pub agent: String,
    /// The plan the turn runs (kept when `None`: a turn never leaves its plan).
    pub plan_id: Option<String>,
    /// Set once, never cleared.
    pub plan_required: bool,
    /// Apply only if the turn is still in this state (status, steps); otherwise the whole
    /// commit is refused with `Conflict` and nothing of it is stored. Guards against a second
    /// runner of the same step (e.g. a lock lost with its connection).
    pub expect: Option<(TurnStatus, i32)>,
}

/// Everything one step of a turn changes, stored in one transaction: all of it or none.
///
/// A step's outcome is the assistant message, its tool calls, the tool messages of the calls
/// settled at once (refused or server-side), agent switches, the completion text when the turn
/// ends, the turn's new status, and the events that tell about all that. The start of a turn
/// (the user message and the new turn) and the end of a turn after its last result (the
/// completion text and the status) are commits too, so after a crash the stored state is
/// always one the engine can resume from, and the event log (the client's replay) says
/// exactly what the state holds.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct StepCommit {
    pub session_id: String,
    /// A turn to create, before anything else.
    pub new_turn: Option<Turn>,
    /// The session's title, set only if it has none (a session is named by its first message).
    pub title: Option<String>,
    /// Messages to append to the session, in this order (stored as the session's: their own
    /// `session_id` is expected to be the same).
    pub messages: Vec<NewMessage>,
    /// Tool calls to store; `Conflict` (and nothing stored) when a `call_id` is taken.
    pub calls: Vec<ToolCallRecord>,
    /// Agent changes, in order; the session's current agent becomes the last `to_agent`.
    pub switches: Vec<AgentSwitch>,
    /// The turn's new state.
    pub turn: Option<TurnUpdate>,
    /// Plans written, changed or advanced by the step, in order.
    pub plans: Vec<PlanWrite>,
    /// Events stored last, with the session's next seqs.
    pub events: Vec<RuntimeEvent>,
    /// The LLM calls the step made (docs/usage.md): counted with the step, so a step stored
    /// is counted once and a step lost is not counted.
    pub usage: Vec<LlmUsage>,
}

/// The subject of the default budget: everyone without one of their own.
pub const DEFAULT_BUDGET: &str = "*";

/// A user's limits, or everyone's default (docs/usage.md, "Budgets"); `None` is no limit.
#[derive(Debug, Clone, PartialEq)]
pub struct Budget {
    /// A user's id, or [`DEFAULT_BUDGET`].
    pub subject: String,
    /// Tokens per UTC calendar day and month.
    pub daily_tokens: Option<u64>,
    pub monthly_tokens: Option<u64>,
    /// USD per UTC calendar day and month.
    pub daily_cost: Option<f64>,
    pub monthly_cost: Option<f64>,
    /// LLM calls and tokens in the last 60 seconds.
    pub requests_per_minute: Option<u64>,
    pub tokens_per_minute: Option<u64>,
    pub updated_at: DateTime<Utc>,
}

impl Budget {
    /// The budget as the admin API and `codelab admin budget show --json` answer it.
    pub fn view(&self) -> codelab_protocol::usage::BudgetView {
        codelab_protocol::usage::BudgetView {
            subject: self.subject.clone(),
            daily_tokens: self.daily_tokens,
            monthly_tokens: self.monthly_tokens,
            daily_cost: self.daily_cost,
            monthly_cost: self.monthly_cost,
            requests_per_minute: self.requests_per_minute,
            tokens_per_minute: self.tokens_per_minute,
            updated_at: self
                .updated_at
                .to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
        }
    }
}

/// What a user's LLM calls used since some time (from `llm_usage`).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Spend {
    pub requests: u64,
    pub tokens: u64,
    /// USD of the calls that had a price.
    pub cost: f64,
}

/// The starts of the windows a budget check sums a user's calls over (`budgets::windows`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SpendWindows {
    pub minute: DateTime<Utc>,
    pub day: DateTime<Utc>,
    pub month: DateTime<Utc>,
}

/// What a user's calls used in each of [`SpendWindows`].
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct WindowSpend {
    pub minute: Spend,
    pub day: Spend,
    pub month: Spend,
}

/// Which LLM calls a usage report sums: from `from` (inclusive) to `to` (exclusive), of one
/// user or everyone.
#[derive(Debug, Clone, PartialEq)]
pub struct UsageQuery {
    pub user_id: Option<String>,
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
}

/// What a usage report groups calls by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UsageGroup {
    /// The session's owner.
    User,
    /// The model that answered, else the one asked for.
    Model,
    Agent,
    /// The UTC day, `YYYY-MM-DD`.
    Day,
    Session,
}

stored_names!(UsageGroup {
    User => "user",
    Model => "model",
    Agent => "agent",
    Day => "day",
    Session => "session",
});

/// The sums of one group of a usage report; `keys` in the order the report grouped by.
#[derive(Debug, Clone, PartialEq)]
pub struct UsageGroupTotals {
    pub keys: Vec<String>,
    pub totals: codelab_protocol::usage::UsageTotals,
}

/// The budget that applies to a session's owner: their own, else the default, else none.
#[derive(Debug, Clone, PartialEq)]
pub struct OwnerBudget {
    pub owner: String,
    pub budget: Option<Budget>,
}

/// Why the runtime called the LLM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UsagePurpose {
    /// An agent's answer in a step.
    Step,
    /// The orchestrator's classification of the user's message.
    Routing,
}

/// How an LLM call ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UsageOutcome {
    Ok,
    Error,
    Cancelled,
}

stored_names!(UsagePurpose {
    Step => "step",
    Routing => "routing",
});

stored_names!(UsageOutcome {
    Ok => "ok",
    Error => "error",
    Cancelled => "cancelled",
});

/// One LLM call the runtime made (a row of `llm_usage`, docs/usage.md). The user is the
/// session's owner, read by the insert itself.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LlmUsage {
    pub id: String,
    pub created_at: DateTime<Utc>,
    /// Filled in when read; the insert takes the session's owner.
    pub user_id: String,
    pub session_id: String,
    pub turn_id: Option<String>,
    /// The turn's step (a routing call has the step it routed).
    pub step: i32,
    pub agent: String,
    pub purpose: UsagePurpose,
    pub requested_model: String,
    /// The deployment that answered, as the proxy named it.
    pub provider: Option<String>,
    pub model: Option<String>,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub total_tokens: u64,
    pub cached_tokens: u64,
    /// USD; `None` when the model has no price.
    pub cost: Option<f64>,
    pub latency_ms: u64,
    /// `None` when no token arrived.
    pub ttft_ms: Option<u64>,
    /// Tool calls the answer made.
    pub tool_calls: u32,
    pub outcome: UsageOutcome,
    /// For [`UsageOutcome::Error`]: what failed.
    pub error_kind: Option<String>,
}

/// What processing a frame reads first, under the session lock
/// ([`crate::store::RuntimeStore::session_state`]).
#[derive(Debug, Clone, PartialEq)]
pub struct SessionState {
    pub session: Session,
    /// The session's newest unfinished turn.
    pub active_turn: Option<Turn>,
    /// The calls of the active turn's latest step, in the order the model made them (none
    /// before its first step, or without an active turn).
    pub step_calls: Vec<ToolCallRecord>,
    /// Calls still open in the session, oldest first; read only when asked for.
    pub open_calls: Vec<ToolCallRecord>,
}

/// What a [`StepCommit`] stored.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Committed {
    /// The messages, in order.
    pub messages: Vec<Message>,
    /// The events with their seqs, in order.
    pub events: Vec<SequencedEvent>,
}

pub use codelab_protocol::plans::{PlanStatus, SubtaskStatus};

/// A plan of subtasks written by the architect's `create_plan` (`docs/agent-runtime.md`,
/// "Planning"), with its subtasks in order.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Plan {
    pub id: String,
    pub session_id: String,
    /// 1, then one more per revision a `modify` asked for.
    pub version: i32,
    pub title: String,
    pub description: String,
    pub status: PlanStatus,
    /// The `create_plan` call of the current version: its approval is the plan's.
    pub call_id: String,
    /// The turn that wrote it, then the turn that runs it.
    pub turn_id: String,
    /// The feedback of the latest `modify`.
    pub feedback: Option<String>,
    /// The final summary, once its run ended.
    pub summary: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub subtasks: Vec<Subtask>,
}

/// One subtask of a [`Plan`]; `position` (0-based) is its id within the plan.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Subtask {
    pub position: i32,
    pub title: String,
    pub description: String,
    /// `coder`, `debug` or `ask`.
    pub agent: String,
    pub estimated_minutes: i32,
    /// Positions of the subtasks that must be done first.
    pub dependencies: Vec<i32>,
    pub status: SubtaskStatus,
    pub result: Option<String>,
    pub error: Option<String>,
    /// The seq of the session's last message before the subtask started: its own context is
    /// what came after (set when it starts, reset by a retry).
    pub context_from: Option<i64>,
    /// The turn's step count when the subtask started (its step cap counts from there).
    pub first_step: Option<i32>,
}

/// A version of a plan as proposed (kept when a `modify` replaces it).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PlanVersion {
    pub plan_id: String,
    pub version: i32,
    pub title: String,
    pub description: String,
    /// The subtasks as proposed (`create_plan`'s shape).
    pub subtasks: Value,
    /// The feedback that asked for the next version, if one followed.
    pub feedback: Option<String>,
    pub created_at: DateTime<Utc>,
}

/// A change to a plan, stored with a step ([`StepCommit::plans`]) or a call's settlement
/// ([`ToolCallUpdate::plans`]).
#[derive(Debug, Clone, PartialEq)]
pub enum PlanWrite {
    /// A new plan (version 1) or a new version of an existing one: the plan's row is written
    /// (inserted, or updated to this version with its subtasks replaced) and the version kept.
    Propose(Plan),
    /// The plan's status changes; `Some` fields change too.
    Status {
        plan_id: String,
        status: PlanStatus,
        turn_id: Option<String>,
        feedback: Option<String>,
        summary: Option<String>,
    },
    /// A subtask's state changes (the whole state is written).
    Subtask {
        plan_id: String,
        position: i32,
        status: SubtaskStatus,
        result: Option<String>,
        error: Option<String>,
        context_from: Option<i64>,
        first_step: Option<i32>,
    },
}

impl PlanWrite {
    /// `plan_id` moving to `status`, nothing else changed.
    pub fn status(plan_id: &str, status: PlanStatus) -> PlanWrite {
        PlanWrite::Status {
            plan_id: plan_id.to_owned(),
            status,
            turn_id: None,
            feedback: None,
            summary: None,
        }
    }

    /// `subtask` of `plan_id` as it is now.
    pub fn subtask(plan_id: &str, subtask: &Subtask) -> PlanWrite {
        PlanWrite::Subtask {
            plan_id: plan_id.to_owned(),
            position: subtask.position,
            status: subtask.status,
            result: subtask.result.clone(),
            error: subtask.error.clone(),
            context_from: subtask.context_from,
            first_step: subtask.first_step,
        }
    }
}
