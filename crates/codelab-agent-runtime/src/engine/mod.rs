//! The turn engine: what each client frame does to a session, as a state machine kept in the
//! store (architecture §6).
//!
//! The engine holds no per-session state in memory: every decision reads the store (the
//! session's agent, the turn's step count, the step's tool calls), so any process holding the
//! session's lock can continue a session that another one started. Everything is stored
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

mod calls;
mod cancel;
mod settle;
mod step;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use chrono::Utc;
use codelab_protocol::ide::{ClientFrame, Decision};
use codelab_protocol::runtime::{RuntimeEvent, SequencedEvent, TurnOutcome};
use serde_json::{Map, Value};
use tokio::sync::mpsc;

pub use calls::{choose_call_id, fresh_call_id};
pub use cancel::{CANCEL_POLL, CANCEL_WAIT};

use crate::agents::{AgentKind, AgentRegistry};
use crate::config::Config;
use crate::hitl::HitlPolicy;
use crate::llm::LlmClient;
use crate::metrics;
use crate::model::{AgentSwitch, NewMessage, Role, StepCommit, Turn, TurnStatus, TurnUpdate};
use crate::prompts::{PromptError, Prompts};
use crate::store::{RuntimeStore, StoreError};
use cancel::RunningTurns;

/// Longest stored title (the original's column size).
pub const MAX_TITLE_CHARS: usize = 500;
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
        }
    }
}

/// A client frame, checked and ready for the engine (`hello` is the gateway's business).
#[derive(Debug, Clone, PartialEq)]
pub enum Work {
    /// A user message, optionally aimed at an agent.
    UserMessage {
        content: String,
        agent: Option<AgentKind>,
    },
    /// The IDE's result for a tool call (or its refusal, Flutter style).
    ToolResult {
        call_id: String,
        result: Option<Value>,
        error: Option<String>,
    },
    /// Switch the session to another agent, without an LLM call.
    SwitchAgent {
        agent: AgentKind,
        reason: Option<String>,
    },
    /// A human decision on a call that waits for approval.
    HitlDecision {
        call_id: String,
        decision: Decision,
        modified_arguments: Option<Map<String, Value>>,
        feedback: Option<String>,
    },
    /// Stop the turn in progress.
    CancelTurn { reason: Option<String> },
}

/// A frame the runtime refuses before any processing (the handler answers 400).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct WorkError(pub String);

impl Work {
    /// Checks a parsed frame against this process's agents; the error says what is wrong.
    pub fn from_frame(frame: ClientFrame, registry: &AgentRegistry) -> Result<Work, WorkError> {
        match frame {
            ClientFrame::UserMessage {
                content,
                agent_type,
                ..
            } => {
                if content.trim().is_empty() {
                    return Err(WorkError(
                        "user_message: content must not be empty".to_owned(),
                    ));
                }
                let agent = agent_type
                    .as_deref()
                    .map(|name| agent_of(registry, "user_message", name))
                    .transpose()?;
                Ok(Work::UserMessage { content, agent })
            }
            ClientFrame::ToolResult {
                call_id,
                result,
                error,
                ..
            } => Ok(Work::ToolResult {
                call_id: non_empty_call_id("tool_result", call_id)?,
                result,
                error,
            }),
            ClientFrame::SwitchAgent {
                agent_type, reason, ..
            } => Ok(Work::SwitchAgent {
                agent: agent_of(registry, "switch_agent", &agent_type)?,
                reason: reason.filter(|r| !r.trim().is_empty()),
            }),
            ClientFrame::HitlDecision {
                call_id,
                decision,
                modified_arguments,
                feedback,
            } => Ok(Work::HitlDecision {
                call_id: non_empty_call_id("hitl_decision", call_id)?,
                decision,
                modified_arguments,
                feedback: feedback.filter(|f| !f.trim().is_empty()),
            }),
            ClientFrame::CancelTurn { reason } => Ok(Work::CancelTurn {
                reason: reason.filter(|r| !r.trim().is_empty()),
            }),
            ClientFrame::Hello { .. } => Err(WorkError(
                "hello is answered by the gateway; the runtime takes user_message, tool_result, \
                 switch_agent, hitl_decision and cancel_turn"
                    .to_owned(),
            )),
        }
    }
}

fn non_empty_call_id(frame: &str, call_id: String) -> Result<String, WorkError> {
    if call_id.trim().is_empty() {
        return Err(WorkError(format!("{frame}: call_id must not be empty")));
    }
    Ok(call_id)
}

/// A registered agent named by a frame.
fn agent_of(registry: &AgentRegistry, frame: &str, name: &str) -> Result<AgentKind, WorkError> {
    let available = || {
        registry
            .specs()
            .iter()
            .map(|s| s.kind.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    match AgentKind::parse(name) {
        Some(kind) if registry.is_registered(kind) => Ok(kind),
        Some(kind) => Err(WorkError(format!(
            "{frame}: agent_type \"{kind}\" is not available in {} mode (available: {})",
            if registry.multi_agent() {
                "multi-agent"
            } else {
                "single-agent"
            },
            available()
        ))),
        None => Err(WorkError(format!(
            "{frame}: unknown agent_type \"{name}\" (expected one of {})",
            available()
        ))),
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

/// Stores events and sends them to the client, in that order.
pub(crate) struct Emitter {
    store: Arc<dyn RuntimeStore>,
    session_id: String,
    tx: mpsc::Sender<SequencedEvent>,
    /// The client went away: stop trying to send (storing goes on).
    gone: AtomicBool,
}

impl Emitter {
    fn new(
        store: Arc<dyn RuntimeStore>,
        session_id: String,
        tx: mpsc::Sender<SequencedEvent>,
    ) -> Emitter {
        Emitter {
            store,
            session_id,
            tx,
            gone: AtomicBool::new(false),
        }
    }

    /// Stores `event` with the session's next `seq`, then sends it.
    pub(crate) async fn emit(&self, event: RuntimeEvent) -> Result<(), StoreError> {
        let stored = self.store.append_event(&self.session_id, &event).await?;
        self.send(stored).await;
        Ok(())
    }

    /// Sends events a commit already stored.
    pub(crate) async fn send_all(&self, events: Vec<SequencedEvent>) {
        for event in events {
            self.send(event).await;
        }
    }

    /// Sends without storing (`seq` 0): streamed text deltas, whose whole is stored as the
    /// `assistant_message` that follows them.
    pub(crate) async fn send_unstored(&self, event: RuntimeEvent) {
        self.send(SequencedEvent { seq: 0, event }).await;
    }

    /// Stores and sends; when storing fails, still tells the client (unstored).
    async fn emit_best_effort(&self, event: RuntimeEvent) {
        if let Err(error) = self.emit(event.clone()).await {
            tracing::warn!(session = %codelab_core::ids::log_reference(&self.session_id), %error, "cannot store an event");
            self.send_unstored(event).await;
        }
    }

    async fn send(&self, event: SequencedEvent) {
        if self.gone.load(Ordering::Relaxed) {
            return;
        }
        if self.tx.send(event).await.is_err() {
            // The client disconnected; processing continues to a consistent point.
            tracing::debug!(session = %codelab_core::ids::log_reference(&self.session_id), "client left; continuing without it");
            self.gone.store(true, Ordering::Relaxed);
        }
    }
}

/// Everything one frame's processing needs.
pub(crate) struct Cx<'a> {
    pub(crate) session_id: &'a str,
    pub(crate) out: &'a Emitter,
}

/// The turn engine over a store.
pub struct Engine {
    pub(crate) store: Arc<dyn RuntimeStore>,
    pub(crate) registry: AgentRegistry,
    pub(crate) prompts: Prompts,
    pub(crate) hitl: HitlPolicy,
    pub(crate) llm: LlmClient,
    pub(crate) limits: Limits,
    /// The turns this process is running, for `cancel_turn`.
    pub(crate) running: Arc<RunningTurns>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

impl Engine {
    /// An engine over `store`, talking to the model through `llm`.
    pub fn new(
        store: Arc<dyn RuntimeStore>,
        registry: AgentRegistry,
        prompts: Prompts,
        hitl: HitlPolicy,
        llm: LlmClient,
        limits: Limits,
    ) -> Engine {
        Engine {
            store,
            registry,
            prompts,
            hitl,
            llm,
            limits,
            running: Arc::default(),
        }
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
        let _active = metrics::ActiveTurnGuard::new();
        let out = Emitter::new(Arc::clone(&self.store), session_id.clone(), tx);
        let cx = Cx {
            session_id: &session_id,
            out: &out,
        };
        self.process_frame(&cx, work).await;
        // Nearly every frame can ask for or settle an approval. Recounted after the session
        // lock is released but before the stream ends (`out` holds its sender), so a client
        // that reads `/metrics` after its frame's answer sees the new number.
        metrics::refresh_pending_approvals(self.store.as_ref()).await;
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
        let _lock = match self.store.lock_session(session_id).await {
            Ok(lock) => lock,
            Err(error) => {
                tracing::error!(session = %codelab_core::ids::log_reference(session_id), %error, "cannot lock the session");
                cx.out.send_unstored(internal_error()).await;
                return;
            }
        };
        let result = match self.recover(cx).await {
            Ok(_) => self.dispatch(cx, work).await,
            Err(error) => Err(error),
        };
        if let Err(error) = result {
            self.fail(cx, error).await;
        }
    }

    async fn dispatch(&self, cx: &Cx<'_>, work: Work) -> Result<(), EngineError> {
        match work {
            Work::UserMessage { content, agent } => self.user_message(cx, content, agent).await,
            Work::ToolResult {
                call_id,
                result,
                error,
            } => self.tool_result(cx, &call_id, result, error).await,
            Work::SwitchAgent { agent, reason } => self.switch_agent(cx, agent, reason).await,
            Work::HitlDecision {
                call_id,
                decision,
                modified_arguments,
                feedback,
            } => {
                self.hitl_decision(cx, &call_id, decision, modified_arguments, feedback)
                    .await
            }
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
                Ok(true) => resumed += 1,
                Ok(false) => {}
                Err(error) => self.fail(&cx, error).await,
            }
        }
        if resumed > 0 {
            // A resumed turn may have asked for (or settled) approvals.
            metrics::refresh_pending_approvals(self.store.as_ref()).await;
        }
        Ok(resumed)
    }

    /// Resumes the session's turn when its runner died: it is `running` although the caller
    /// holds the lock, or it waits on a step whose calls are all settled. A step whose outcome
    /// was never committed runs again (nothing of it was stored); a settled step goes on to
    /// the next one. A turn asked to stop is cancelled instead. `false` when nothing needed
    /// resuming. Must be called under the session lock.
    pub(crate) async fn recover(&self, cx: &Cx<'_>) -> Result<bool, EngineError> {
        let Some(mut turn) = self.store.active_turn(cx.session_id).await? else {
            return Ok(false);
        };
        let calls = if turn.steps > 0 {
            self.store.list_step_calls(&turn.id, turn.steps).await?
        } else {
            Vec::new()
        };
        let stalled = match turn.status {
            TurnStatus::Running => true,
            TurnStatus::AwaitingTools => {
                !calls.is_empty() && calls.iter().all(|c| !c.status.is_open())
            }
            _ => false,
        };
        if !stalled {
            return Ok(false);
        }
        tracing::warn!(
            session = %codelab_core::ids::log_reference(cx.session_id),
            turn_id = %turn.id,
            step = turn.steps,
            status = turn.status.as_str(),
            "resuming a turn whose runner stopped"
        );
        metrics::turn_recovered();
        cx.out
            .emit(RuntimeEvent::Notice {
                message: format!(
                    "resuming the turn that was interrupted at step {}",
                    turn.steps
                ),
            })
            .await?;
        if turn.cancel_requested_at.is_some() {
            self.stop_cancelled(cx, &mut turn).await?;
        } else if turn.status == TurnStatus::Running && calls.is_empty() {
            // The step's outcome was never committed: run it again, as the same step.
            turn.steps = (turn.steps - 1).max(0);
            self.run_turn(cx, &mut turn).await?;
        } else {
            let step = turn.steps;
            self.continue_after_step(cx, &mut turn, step, calls).await?;
        }
        Ok(true)
    }

    /// After an unexpected failure: the turn in progress is marked failed (best effort) and
    /// the client is told. A turn another runner moved on (`Stale`) is left to it.
    async fn fail(&self, cx: &Cx<'_>, error: EngineError) {
        tracing::error!(session = %codelab_core::ids::log_reference(cx.session_id), %error, "processing a frame failed");
        if matches!(error, EngineError::Store(StoreError::Stale(_))) {
            cx.out.emit_best_effort(internal_error()).await;
            return;
        }
        if let Ok(Some(turn)) = self.store.active_turn(cx.session_id).await {
            let _ = self
                .store
                .update_turn(&turn.id, TurnStatus::Failed, turn.steps, &turn.agent)
                .await;
        }
        cx.out.emit_best_effort(internal_error()).await;
        metrics::turn("failed");
        cx.out
            .emit_best_effort(RuntimeEvent::TurnFinished {
                outcome: TurnOutcome::Failed,
            })
            .await;
    }

    // ---- user_message ----

    async fn user_message(
        &self,
        cx: &Cx<'_>,
        content: String,
        agent: Option<AgentKind>,
    ) -> Result<(), EngineError> {
        // Calls still open from an earlier turn are answered first, so the stored history
        // keeps every assistant tool call directly followed by its results (providers reject
        // anything else).
        let cancelled = self
            .cancel_open_work(cx, "Cancelled: the user sent a new message")
            .await?;
        let session = self.session(cx).await?;
        let now = Utc::now();
        // Created at step 1, running: the first step starts with the turn (one commit less).
        let mut turn = Turn {
            id: codelab_core::new_id().to_string(),
            session_id: cx.session_id.to_owned(),
            status: TurnStatus::Running,
            steps: 1,
            agent: session.current_agent.clone(),
            created_at: now,
            updated_at: now,
            cancel_requested_at: None,
        };
        let explicit = agent.filter(|a| a.as_str() != session.current_agent);
        let mut switches = Vec::new();
        if let Some(agent) = explicit {
            switches.push(self.switch_record(
                cx,
                &session.current_agent,
                agent,
                "User requested".to_owned(),
                Some("high".to_owned()),
                "explicit",
            ));
            turn.agent = agent.as_str().to_owned();
        }
        let mut events = vec![RuntimeEvent::SessionInfo {
            session_id: cx.session_id.to_owned(),
            current_agent: session.current_agent.clone(),
        }];
        events.extend(cancelled.iter().map(|call| settled_event(call, None)));
        if let Some(agent) = explicit {
            events.push(switched_event(
                &session.current_agent,
                agent,
                "User requested",
                Some("high"),
            ));
        }
        // The message, the turn that answers it and their events are stored together: after
        // a crash a message is never left without its turn.
        let committed = self
            .store
            .commit_step(StepCommit {
                session_id: cx.session_id.to_owned(),
                new_turn: Some(turn.clone()),
                title: session.title.is_none().then(|| title_of(&content)),
                messages: vec![NewMessage {
                    session_id: cx.session_id.to_owned(),
                    role: Role::User,
                    content: Some(content.clone()),
                    agent: None,
                    tool_calls: None,
                    tool_call_id: None,
                }],
                switches,
                events,
                ..StepCommit::default()
            })
            .await?;
        if let Some(agent) = explicit {
            metrics::routing_decision(agent.as_str(), "explicit");
        }
        cx.out.send_all(committed.events).await;
        self.run_steps(cx, &mut turn, true, Vec::new()).await
    }

    // ---- switch_agent ----

    async fn switch_agent(
        &self,
        cx: &Cx<'_>,
        agent: AgentKind,
        reason: Option<String>,
    ) -> Result<(), EngineError> {
        let session = self.session(cx).await?;
        if session.current_agent == agent.as_str() && !self.confirms_exemptions(cx, agent).await? {
            cx.out
                .emit(RuntimeEvent::Notice {
                    message: format!("the session is already with the {agent} agent"),
                })
                .await?;
            return Ok(());
        }
        let reason = reason.unwrap_or_else(|| "User requested agent switch".to_owned());
        self.record_switch(
            cx,
            &session.current_agent,
            agent,
            reason,
            Some("high".to_owned()),
            "explicit",
            vec![RuntimeEvent::TurnFinished {
                outcome: TurnOutcome::Completed,
            }],
        )
        .await
    }

    /// Whether a `switch_agent` to the session's own agent is the user's choice of an agent
    /// the model switched to: its HITL exemptions apply from then on, so it is recorded.
    async fn confirms_exemptions(
        &self,
        cx: &Cx<'_>,
        agent: AgentKind,
    ) -> Result<bool, EngineError> {
        if self.hitl.exemptions(agent).is_empty() {
            return Ok(false);
        }
        let switches = self.store.list_switches(cx.session_id).await?;
        Ok(!crate::hitl::agents_chosen_by_user(&switches).contains(&agent))
    }

    // ---- shared helpers ----

    /// The live session being processed.
    async fn session(&self, cx: &Cx<'_>) -> Result<crate::model::Session, EngineError> {
        self.store
            .get_session(cx.session_id)
            .await?
            .ok_or_else(|| StoreError::NotFound(format!("session {:?}", cx.session_id)).into())
    }

    /// A change of agent to store (in a [`StepCommit`]).
    pub(crate) fn switch_record(
        &self,
        cx: &Cx<'_>,
        from: &str,
        to: AgentKind,
        reason: String,
        confidence: Option<String>,
        method: &'static str,
    ) -> AgentSwitch {
        AgentSwitch {
            session_id: cx.session_id.to_owned(),
            from_agent: Some(from.to_owned()),
            to_agent: to.as_str().to_owned(),
            reason,
            confidence,
            method: method.to_owned(),
            created_at: Utc::now(),
        }
    }

    /// Stores a change of agent, the session's new agent, its `agent_switched` event and
    /// `then` together, then sends the events.
    #[allow(clippy::too_many_arguments)] // the fields of the switch, spelled out at each call
    pub(crate) async fn record_switch(
        &self,
        cx: &Cx<'_>,
        from: &str,
        to: AgentKind,
        reason: String,
        confidence: Option<String>,
        method: &'static str,
        then: Vec<RuntimeEvent>,
    ) -> Result<(), EngineError> {
        let mut events = vec![switched_event(from, to, &reason, confidence.as_deref())];
        events.extend(then);
        let switch = self.switch_record(cx, from, to, reason, confidence, method);
        let committed = self
            .store
            .commit_step(StepCommit {
                session_id: cx.session_id.to_owned(),
                switches: vec![switch],
                events,
                ..StepCommit::default()
            })
            .await?;
        metrics::routing_decision(to.as_str(), method);
        cx.out.send_all(committed.events).await;
        Ok(())
    }

    /// Ends the turn with `status`: the turn, the events `before` (an error) and its
    /// `turn_finished` in one transaction, then sent.
    pub(crate) async fn finish_turn(
        &self,
        cx: &Cx<'_>,
        turn: &mut Turn,
        status: TurnStatus,
        before: Vec<RuntimeEvent>,
    ) -> Result<(), EngineError> {
        let outcome = match status {
            TurnStatus::AwaitingTools => TurnOutcome::AwaitingTools,
            TurnStatus::Cancelled => TurnOutcome::Cancelled,
            TurnStatus::StepLimit => TurnOutcome::StepLimit,
            TurnStatus::Failed => TurnOutcome::Failed,
            TurnStatus::Completed | TurnStatus::Running => TurnOutcome::Completed,
        };
        let mut events = before;
        events.push(RuntimeEvent::TurnFinished { outcome });
        let committed = self
            .store
            .commit_step(StepCommit {
                session_id: cx.session_id.to_owned(),
                turn: Some(TurnUpdate {
                    turn_id: turn.id.clone(),
                    status,
                    steps: turn.steps,
                    agent: turn.agent.clone(),
                    expect: None,
                }),
                events,
                ..StepCommit::default()
            })
            .await?;
        turn.status = status;
        metrics::turn(status.as_str());
        cx.out.send_all(committed.events).await;
        Ok(())
    }
}

/// The `error` event of an unexpected failure (details go to the log, not the client).
fn internal_error() -> RuntimeEvent {
    RuntimeEvent::Error {
        message: "internal error: the runtime could not process this message; the session \
                  stays usable"
            .to_owned(),
        code: Some("internal".to_owned()),
    }
}

/// A session title from its first user message: trimmed, at most 500 characters.
pub fn title_of(content: &str) -> String {
    content.trim().chars().take(MAX_TITLE_CHARS).collect()
}

/// The `agent_switched` event.
pub(crate) fn switched_event(
    from: &str,
    to: AgentKind,
    reason: &str,
    confidence: Option<&str>,
) -> RuntimeEvent {
    RuntimeEvent::AgentSwitched {
        from_agent: Some(from.to_owned()),
        to_agent: to.as_str().to_owned(),
        reason: reason.to_owned(),
        confidence: confidence.map(str::to_owned),
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

#[cfg(test)]
mod tests {
    use super::*;

    fn registry(multi: bool) -> AgentRegistry {
        AgentRegistry::new(multi, "mock-llm", "").unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn titles_are_trimmed_and_capped() {
        assert_eq!(title_of("  hello \n"), "hello");
        let long = "é".repeat(600);
        assert_eq!(title_of(&long).chars().count(), 500);
    }

    #[test]
    fn frames_are_checked_against_the_registered_agents() {
        let multi = registry(true);
        let frame = ClientFrame::SwitchAgent {
            agent_type: "wizard".into(),
            content: None,
            reason: None,
        };
        let err = Work::from_frame(frame, &multi).unwrap_err().0;
        assert!(
            err.starts_with("switch_agent: unknown agent_type \"wizard\""),
            "{err}"
        );
        let frame = ClientFrame::UserMessage {
            content: "hi".into(),
            role: None,
            agent_type: Some("universal".into()),
        };
        let err = Work::from_frame(frame, &multi).unwrap_err().0;
        assert!(err.contains("not available in multi-agent mode"), "{err}");
        let frame = ClientFrame::UserMessage {
            content: "  ".into(),
            role: None,
            agent_type: None,
        };
        assert!(Work::from_frame(frame, &multi).is_err());
        let err = Work::from_frame(ClientFrame::Hello { protocol: 2 }, &multi)
            .unwrap_err()
            .0;
        assert!(err.contains("gateway"), "{err}");
        let frame = ClientFrame::ToolResult {
            call_id: " ".into(),
            tool_name: None,
            result: None,
            error: None,
        };
        assert_eq!(
            Work::from_frame(frame, &multi).unwrap_err().0,
            "tool_result: call_id must not be empty"
        );
    }
}
