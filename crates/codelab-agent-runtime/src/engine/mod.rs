//! The turn engine: what each client frame does to a session, as a state machine kept in the
//! store (`docs/agent-runtime.md`, "Durability").
//!
//! The engine holds no per-session state in memory between frames: every decision reads the
//! store (the session's agent, the turn's step count, the step's tool calls), so any process
//! holding the session's lock can continue a session that another one started. Within a frame,
//! under the lock, what it read or wrote itself is reused instead of read again. Everything is stored
//! before the event that tells about it is emitted, and every event except the streamed text
//! deltas is stored too (with its `seq`), so a reconnecting client can replay what it missed.
//!
//! One frame is processed at a time per session (`RuntimeStore::lock_session`). Processing
//! runs in its own task and does not stop when the client goes away: the LLM answer is kept
//! and the turn reaches a consistent point.
//!
//! Durability: each transition is one transaction (`RuntimeStore::commit_step` for the start
//! of a turn, a step's outcome and the end of a turn; `update_tool_call` with its tool message
//! for a settlement), so after a crash the store holds a state the engine can resume from.
//! Whoever takes the session lock next and finds the turn `running` (its runner died: the
//! lock was free) or waiting on a step whose calls are all settled resumes it ([`Engine::recover`]):
//! an uncommitted step runs again, a settled step goes on to the next one.

mod budget;
mod calls;
mod cancel;
mod emit;
mod message;
mod plans;
mod settle;
mod step;
mod switch;
mod turn;
mod usage;
mod work;

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use codelab_core::clock::SharedClock;
use codelab_core::db::now_from;
use codelab_protocol::runtime::{RuntimeEvent, SequencedEvent, TurnOutcome};
use tokio::sync::mpsc;

pub use budget::{BUDGET_EXCEEDED, BUDGET_WARNING};
pub use calls::{choose_call_id, fresh_call_id};
pub use cancel::{CANCEL_POLL, CANCEL_WAIT};
pub use message::{MAX_TITLE_CHARS, title_of};
pub use work::{PlanRef, Work, WorkError};

use crate::agents::AgentRegistry;
use crate::config::Config;
use crate::hitl::HitlPolicy;
use crate::llm::LlmClient;
use crate::metrics;
use crate::model::TurnStatus;
use crate::prompts::{PromptError, Prompts};
use crate::store::{RuntimeStore, StoreError};
use cancel::RunningTurns;
pub(crate) use emit::{Cx, Emitter};
use settle::{HumanDecision, ToolOutcome};
use turn::{ActiveTurn, FrameStart, Recovery};

/// Stalled turns resumed per sweep.
pub const RECOVERY_BATCH: u32 = 100;

/// The turn loop's limits, from the settings.
#[derive(Debug, Clone)]
pub struct Limits {
    /// LLM steps one turn may take before it is stopped.
    pub max_steps_per_turn: u32,
    /// Tool calls of one reply that are considered; the rest get an error result.
    pub max_tool_calls_per_step: u32,
    /// Token budget of the context sent to the model (0: everything).
    pub context_tokens: u64,
    /// Bound of one routing classification attempt.
    pub routing_timeout: Duration,
    /// Most subtasks of one plan.
    pub max_plan_subtasks: usize,
    /// Plans run without waiting for a person's approval.
    pub plan_auto_approve: bool,
}

impl Limits {
    /// The limits the settings describe (validated by `Config::validate`).
    pub fn from_config(config: &Config) -> Limits {
        Limits {
            max_steps_per_turn: config.max_steps_per_turn.max(1),
            max_tool_calls_per_step: config.max_tool_calls_per_step.max(1),
            context_tokens: config.context_tokens,
            routing_timeout: Duration::try_from_secs_f64(config.routing_timeout)
                .unwrap_or(Duration::from_secs(5)),
            max_plan_subtasks: usize::try_from(config.max_plan_subtasks).unwrap_or(usize::MAX),
            plan_auto_approve: config.plan_auto_approve,
        }
    }
}

/// Why processing a frame stopped early; the client gets an `error` event.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Prompt(#[from] PromptError),
    /// Stored data contradicts itself (e.g. a call names a turn that does not exist).
    #[error("inconsistent session state: {0}")]
    Inconsistent(String),
}

/// What an [`Engine`] is made of.
pub struct EngineParts {
    /// Where sessions, turns, calls and events are kept.
    pub store: Arc<dyn RuntimeStore>,
    pub registry: AgentRegistry,
    pub prompts: Prompts,
    pub hitl: HitlPolicy,
    /// The model, through the LLM proxy.
    pub llm: LlmClient,
    pub limits: Limits,
    /// The time of every record the engine creates (turns, calls, switches).
    pub clock: SharedClock,
}

/// The turn engine over a store; its parts read as its own fields (`engine.store`).
pub struct Engine {
    parts: EngineParts,
    /// The turns this process is running, for `cancel_turn`.
    pub(crate) running: Arc<RunningTurns>,
}

impl std::ops::Deref for Engine {
    type Target = EngineParts;

    fn deref(&self) -> &EngineParts {
        &self.parts
    }
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

impl Engine {
    /// An engine made of `parts`.
    pub fn new(parts: EngineParts) -> Engine {
        Engine {
            parts,
            running: Arc::default(),
        }
    }

    /// The current time, from the injected clock.
    pub(crate) fn now(&self) -> DateTime<Utc> {
        now_from(self.clock.as_ref())
    }

    /// The registered agents.
    pub fn registry(&self) -> &AgentRegistry {
        &self.registry
    }

    /// Processes one frame for an existing session under its lock, sending every event to
    /// `tx` after storing it. Returns when the work for the frame is done, whether or not
    /// the receiver is still there. A turn left behind by a runner that died is resumed
    /// first; `cancel_turn` asks the running turn to stop before it waits for the lock.
    pub async fn process(&self, session_id: String, work: Work, tx: mpsc::Sender<SequencedEvent>) {
        let _active = metrics::ActiveTurnGuard::start();
        let out = Emitter::new(Arc::clone(&self.store), session_id.clone(), tx);
        let cx = Cx {
            session_id: &session_id,
            out: &out,
        };
        self.process_frame(&cx, work).await;
        // Recounted when the frame asked for or settled an approval, after the session lock is
        // released but before the stream ends (`out` holds its sender), so a client that reads
        // `/metrics` after its frame's answer sees the new number. Other replicas' changes
        // arrive with the periodic recount.
        if out.approvals_changed() {
            metrics::refresh_pending_approvals(self.store.as_ref()).await;
        }
    }

    async fn process_frame(&self, cx: &Cx<'_>, work: Work) {
        let session_id = cx.session_id;
        if let Work::CancelTurn { reason } = work {
            if let Err(error) = self.cancel_turn(cx, reason).await {
                tracing::error!(session = %codelab_core::ids::log_reference(session_id), %error, "cancelling a turn failed");
                cx.out.emit_best_effort(internal_error()).await;
            }
            return;
        }
        if let Work::PlanDecision {
            plan,
            decision: codelab_protocol::plans::PlanDecision::Cancel,
            ..
        } = &work
        {
            // A plan's run holds the session lock for as long as it runs: it is asked to stop
            // first, as `cancel_turn` does, and ends the plan as it stops.
            self.request_plan_stop(session_id, plan).await;
        }
        let _lock = match self.store.lock_session(session_id).await {
            Ok(lock) => lock,
            Err(error) => {
                tracing::error!(session = %codelab_core::ids::log_reference(session_id), %error, "cannot lock the session");
                cx.out.send_unstored(internal_error()).await;
                return;
            }
        };
        let result = self.start_frame(cx, work).await;
        if let Err(error) = result {
            self.fail(cx, error).await;
        }
    }

    /// Under the session lock: reads the session's state once, resumes a turn left behind
    /// (see [`Engine::recover`]), then does the frame's work with what was read when it is
    /// still current.
    async fn start_frame(&self, cx: &Cx<'_>, work: Work) -> Result<(), EngineError> {
        let with_open_calls = matches!(work, Work::UserMessage { .. });
        let Some(state) = self
            .store
            .session_state(cx.session_id, with_open_calls)
            .await?
        else {
            // Gone meanwhile: the work finds (and reports) that itself.
            return self.dispatch(cx, work, None).await;
        };
        let active = state.active_turn.map(|turn| ActiveTurn {
            turn,
            step_calls: state.step_calls,
        });
        let known = match self.recover_from(cx, active).await? {
            Recovery::Idle(active) => Some(FrameStart {
                session: state.session,
                active,
                open_calls: state.open_calls,
            }),
            Recovery::Resumed => None,
        };
        self.dispatch(cx, work, known).await
    }

    /// Does the frame's work; `known`: what the frame read before, when still current.
    async fn dispatch(
        &self,
        cx: &Cx<'_>,
        work: Work,
        known: Option<FrameStart>,
    ) -> Result<(), EngineError> {
        match work {
            Work::UserMessage { content, agent } => {
                self.user_message(cx, content, agent, known).await
            }
            Work::ToolResult {
                call_id,
                result,
                error,
            } => {
                let outcome = ToolOutcome { result, error };
                self.tool_result(cx, &call_id, outcome, known).await
            }
            Work::SwitchAgent { agent, reason } => {
                let session = known.map(|known| known.session);
                self.switch_agent(cx, agent, reason, session).await
            }
            Work::HitlDecision {
                call_id,
                decision,
                modified_arguments,
                feedback,
            } => {
                let human = HumanDecision {
                    decision,
                    modified_arguments,
                    feedback,
                };
                self.hitl_decision(cx, &call_id, human).await
            }
            Work::PlanDecision {
                plan,
                decision,
                feedback,
            } => self.plan_decision(cx, plan, decision, feedback).await,
            Work::CancelTurn { reason } => self.cancel_turn(cx, reason).await,
        }
    }

    /// Resumes the turns whose runner died (see [`Engine::recover`]) in sessions nobody holds
    /// right now, up to [`RECOVERY_BATCH`]; returns how many were resumed. Their events are
    /// stored for the client's replay (`GET /sessions/{id}/events`).
    pub async fn recover_stalled_turns(&self) -> Result<usize, StoreError> {
        let mut resumed = 0;
        for turn in self.store.list_stalled_turns(RECOVERY_BATCH).await? {
            // Held by a live runner (here or on another replica): not stalled after all.
            let Some(_lock) = self.store.try_lock_session(&turn.session_id).await? else {
                continue;
            };
            let (tx, rx) = mpsc::channel(1);
            // Nobody listens: the events are stored for replay.
            drop(rx);
            let out = Emitter::new(Arc::clone(&self.store), turn.session_id.clone(), tx);
            let cx = Cx {
                session_id: &turn.session_id,
                out: &out,
            };
            match self.recover(&cx).await {
                Ok(Recovery::Resumed) => resumed += 1,
                Ok(Recovery::Idle(_)) => {}
                Err(error) => self.fail(&cx, error).await,
            }
        }
        if resumed > 0 {
            // A resumed turn may have asked for (or settled) approvals.
            metrics::refresh_pending_approvals(self.store.as_ref()).await;
        }
        Ok(resumed)
    }

    /// After an unexpected failure: the turn in progress is marked failed (best effort) and
    /// the client is told. A turn another runner moved on (`Stale`) is left to it.
    async fn fail(&self, cx: &Cx<'_>, error: EngineError) {
        tracing::error!(session = %codelab_core::ids::log_reference(cx.session_id), %error, "processing a frame failed");
        let told = failure_event(&error);
        if matches!(error, EngineError::Store(StoreError::Stale(_))) {
            cx.out.emit_best_effort(told).await;
            return;
        }
        if let Ok(Some(turn)) = self.store.active_turn(cx.session_id).await {
            let _ = self
                .store
                .update_turn(&turn.id, TurnStatus::Failed, turn.steps, &turn.agent)
                .await;
        }
        cx.out.emit_best_effort(told).await;
        metrics::turn("failed");
        cx.out
            .emit_best_effort(RuntimeEvent::TurnFinished {
                outcome: TurnOutcome::Failed,
            })
            .await;
    }

    /// The live session being processed.
    async fn session(&self, cx: &Cx<'_>) -> Result<crate::model::Session, EngineError> {
        self.store
            .get_session(cx.session_id)
            .await?
            .ok_or_else(|| StoreError::NotFound(format!("session {:?}", cx.session_id)).into())
    }
}

/// What the client is told about `error`: a full database disk by name (the user or the
/// operator can act on it), anything else as an internal error.
fn failure_event(error: &EngineError) -> RuntimeEvent {
    match error {
        EngineError::Store(store) if store.is_disk_full() => RuntimeEvent::Error {
            message: DATABASE_DISK_FULL.to_owned(),
            code: Some("storage_full".to_owned()),
        },
        _ => internal_error(),
    }
}

/// What a client is told when the database refused a write for lack of space.
pub const DATABASE_DISK_FULL: &str = "the runtime's database disk is full: this message could not \
                                      be processed; try again once space is freed (the session \
                                      stays usable)";

/// The `error` event of an unexpected failure (details go to the log, not the client).
fn internal_error() -> RuntimeEvent {
    RuntimeEvent::Error {
        message: "internal error: the runtime could not process this message; the session \
                  stays usable"
            .to_owned(),
        code: Some("internal".to_owned()),
    }
}

/// The `tool_settled` event of a call in a final state.
pub(crate) fn settled_event(
    call: &crate::model::ToolCallRecord,
    summary: Option<String>,
) -> RuntimeEvent {
    RuntimeEvent::ToolSettled {
        call_id: call.call_id.clone(),
        tool_name: call.tool_name.clone(),
        outcome: call.status.as_str().to_owned(),
        summary,
    }
}
