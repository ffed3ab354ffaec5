//! The turn loop: one turn's steps, from the first LLM call to the end of the turn or a wait
//! for the IDE. Each step routes to a specialist when the session is on the orchestrator,
//! calls the model, and commits the reply with its tool calls in one transaction
//! (`step.rs`); what follows a step is decided from its stored calls alone, so a settlement
//! or a recovery continues a turn exactly as its runner would have.

use std::sync::Arc;

use codelab_protocol::runtime::{RuntimeEvent, TurnOutcome};

use super::budget::budget_exceeded;
use super::plans::SubtaskRun;
use super::step::{StepEnd, StepResult, StepState, count_step_end, step_end_events};
use super::switch::Switch;
use super::usage::{UsagePlace, usage_row};
use super::{Cx, Engine, EngineError};
use crate::agents::AgentKind;
use crate::llm::CallMeter;
use crate::metrics;
use crate::model::{
    Committed, LlmUsage, NewMessage, PlanWrite, PlanningMode, Role, Session, StepCommit,
    ToolCallRecord, Turn, TurnStatus, UsagePurpose,
};
use crate::routing;

/// One turn as it runs: the engine's parts, the session's event sink and the turn itself,
/// which is everything each step needs.
pub(crate) struct TurnLoop<'a> {
    pub(super) engine: &'a Engine,
    pub(super) cx: Cx<'a>,
    pub(super) turn: &'a mut Turn,
    /// The session's current agent when this frame knows it: it read the session or changed
    /// the agent itself, under the session lock (which every change of agent takes), so the
    /// session need not be read again before each step.
    pub(super) session_agent: Option<String>,
    /// The plan's subtask the next step works on, in a turn that runs a plan.
    pub(super) subtask: Option<SubtaskRun>,
    /// LLM calls made and not yet stored: they go with the turn's next commit, so a call is
    /// counted once, with the step it belongs to (docs/usage.md).
    pub(super) usage: Vec<LlmUsage>,
}

impl<'a> TurnLoop<'a> {
    pub(crate) fn new(engine: &'a Engine, cx: Cx<'a>, turn: &'a mut Turn) -> TurnLoop<'a> {
        TurnLoop {
            engine,
            cx,
            turn,
            session_agent: None,
            subtask: None,
            usage: Vec::new(),
        }
    }

    /// Keeps `call` (made by `agent` for `purpose`) for the turn's next commit, and counts it.
    pub(super) fn meter(&mut self, call: CallMeter, agent: AgentKind, purpose: UsagePurpose) {
        let usage = usage_row(
            call,
            UsagePlace {
                session_id: self.cx.session_id,
                turn_id: &self.turn.id,
                step: self.turn.steps,
                agent: agent.as_str(),
                purpose,
            },
            self.engine.now(),
        );
        metrics::llm_usage(&usage);
        self.usage.push(usage);
    }

    /// This loop, knowing that the session is on `agent` (see `session_agent`).
    pub(crate) fn with_session_agent(mut self, agent: String) -> TurnLoop<'a> {
        self.session_agent = Some(agent);
        self
    }

    /// Runs steps until the turn ends, waits for the IDE, or is cancelled. While it runs, the
    /// turn is registered for `cancel_turn` (locally and through the database).
    ///
    /// `started`: the next step is already recorded (a new turn is created at step 1), so it
    /// is not written again. `pending`: events stored with the next step's start (one commit
    /// instead of two), or with the turn's end when no step starts.
    pub(crate) async fn run(
        &mut self,
        mut started: bool,
        mut pending: Vec<RuntimeEvent>,
    ) -> Result<(), EngineError> {
        if let Some(plan_id) = self.turn.plan_id.clone() {
            return Box::pin(self.run_plan(plan_id, started, pending)).await;
        }
        let engine = self.engine;
        let running =
            engine
                .running
                .start(Arc::clone(&engine.store), self.cx.session_id, &self.turn.id);
        if self.turn.cancel_requested_at.is_some() {
            running.token().cancel();
        }
        loop {
            if running.token().is_cancelled() {
                for event in std::mem::take(&mut pending) {
                    self.cx.out.emit(event).await?;
                }
                return self.stop_cancelled().await;
            }
            if !started {
                let limit = engine.limits.max_steps_per_turn;
                if u32::try_from(self.turn.steps).unwrap_or(u32::MAX) >= limit {
                    pending.push(RuntimeEvent::Error {
                        message: format!("step limit reached ({limit} steps)"),
                        code: Some("step_limit".to_owned()),
                    });
                    return self.finish(TurnStatus::StepLimit, pending).await;
                }
            }
            if let Some(refusal) = self.budget_refusal(&mut pending).await? {
                pending.push(budget_exceeded(refusal));
                return self.finish(TurnStatus::Failed, pending).await;
            }
            if !started {
                self.start_step(std::mem::take(&mut pending)).await?;
            } else {
                // The step was stored with the turn: a warning goes out on its own.
                for event in std::mem::take(&mut pending) {
                    self.cx.out.emit(event).await?;
                }
            }
            started = false;
            let agent = self.specialist().await?;
            self.turn.agent = agent.as_str().to_owned();
            metrics::counter_step();
            match self.llm_step(agent, running.token()).await? {
                StepResult::Done(StepEnd::Continue) => {
                    if let Some(plan_id) = self.turn.plan_id.clone() {
                        // An auto-approved plan: this turn runs it from here.
                        drop(running);
                        return Box::pin(self.run_plan(plan_id, false, Vec::new())).await;
                    }
                }
                StepResult::Done(StepEnd::Stop) => return Ok(()),
                StepResult::Failed(error) => {
                    return self.finish(TurnStatus::Failed, vec![error]).await;
                }
                StepResult::Cancelled => return self.stop_cancelled().await,
            }
        }
    }

    /// Records the next step as running, with `pending`, before anything of it happens: a
    /// process that finds it so after a crash runs it again.
    async fn start_step(&mut self, pending: Vec<RuntimeEvent>) -> Result<(), EngineError> {
        self.start_step_with(pending, Vec::new()).await
    }

    /// [`TurnLoop::start_step`] with plan changes stored in the same commit (a subtask that
    /// starts with its first step).
    pub(super) async fn start_step_with(
        &mut self,
        pending: Vec<RuntimeEvent>,
        plans: Vec<PlanWrite>,
    ) -> Result<(), EngineError> {
        self.turn.steps += 1;
        self.turn.status = TurnStatus::Running;
        let committed = self
            .commit(StepCommit {
                session_id: self.cx.session_id.to_owned(),
                turn: Some(self.turn.update_to(TurnStatus::Running, None)),
                plans,
                events: pending,
                ..StepCommit::default()
            })
            .await?;
        self.cx.out.send_all(committed.events).await;
        Ok(())
    }

    /// The agent that takes the next step. A session on the orchestrator (new, or handed back
    /// with `switch_mode`) is routed first: its latest user message is classified, the switch
    /// recorded and announced.
    async fn specialist(&mut self) -> Result<AgentKind, EngineError> {
        let engine = self.engine;
        let session_agent = match self.session_agent.take() {
            Some(agent) => agent,
            None => engine.session(&self.cx).await?.current_agent,
        };
        let current =
            AgentKind::parse(&session_agent).filter(|k| engine.registry.is_registered(*k));
        if let Some(agent) = current.filter(|k| *k != AgentKind::Orchestrator) {
            self.session_agent = Some(session_agent);
            return Ok(agent);
        }
        let history = engine.store.list_messages(self.cx.session_id).await?;
        let text = history
            .iter()
            .rev()
            .find(|m| m.role == Role::User)
            .and_then(|m| m.content.clone())
            .unwrap_or_default();
        let (decision, calls) = routing::classify_metered(
            &engine.llm,
            engine.registry.model_for(AgentKind::Orchestrator),
            &text,
            engine.registry.multi_agent(),
            engine.limits.routing_timeout,
        )
        .await;
        for call in calls {
            self.meter(call, AgentKind::Orchestrator, UsagePurpose::Routing);
        }
        // The classifier only names agents of this mode; the guard keeps a bad answer from
        // parking the session on an agent that does not exist here.
        let mut agent = Some(decision.agent)
            .filter(|k| engine.registry.is_registered(*k) && *k != AgentKind::Orchestrator)
            .or_else(|| {
                engine
                    .registry
                    .specs()
                    .iter()
                    .map(|s| s.kind)
                    .find(|k| *k != AgentKind::Orchestrator)
            })
            .unwrap_or(AgentKind::Coder);
        // Planning is decided in the same classification (no extra LLM call): a complex
        // request, one the user asked to plan, or any request of a session that always plans
        // goes to the architect, told to write a plan.
        let planning = engine.session(&self.cx).await?.planning;
        let wants_plan = match planning {
            PlanningMode::Never => false,
            PlanningMode::Always => true,
            PlanningMode::Auto => decision.complex || routing::asks_for_plan(&text),
        };
        let mut reason = decision.reason.clone();
        if wants_plan && engine.registry.is_registered(AgentKind::Architect) {
            if agent != AgentKind::Architect {
                reason = format!("{reason} (a plan is needed first)");
            }
            agent = AgentKind::Architect;
            self.turn.plan_required = true;
        }
        let switch = Switch {
            from: session_agent,
            to: agent,
            reason,
            confidence: Some(decision.confidence.clone()),
            method: decision.method.as_str(),
            complexity: Some(if decision.complex {
                "complex"
            } else {
                "atomic"
            }),
        };
        let turn = self
            .turn
            .plan_required
            .then(|| self.turn.update_to(self.turn.status, None));
        let usage = std::mem::take(&mut self.usage);
        engine
            .record_switch(&self.cx, switch, Vec::new(), turn, usage)
            .await?;
        self.session_agent = Some(agent.as_str().to_owned());
        Ok(agent)
    }

    /// What follows step `step` once its calls are settled (or some still wait), decided
    /// from its stored calls: the end of the turn is committed with its completion text, and
    /// the next step runs when the agent goes on. Used after a settlement and by recovery.
    pub(crate) async fn continue_after(
        &mut self,
        step: i32,
        calls: Vec<ToolCallRecord>,
    ) -> Result<(), EngineError> {
        if let Some(plan_id) = self.turn.plan_id.clone() {
            return Box::pin(self.continue_plan_after(plan_id, step, calls)).await;
        }
        let state = StepState::of(&calls);
        match &state {
            StepState::Complete(_) => {
                // The completion text, the turn's end and their events in one transaction:
                // after a crash the text is never stored twice, nor the turn left open.
                let committed = self
                    .commit(StepCommit {
                        session_id: self.cx.session_id.to_owned(),
                        messages: state.completion_messages(self.cx.session_id),
                        turn: Some(self.turn.update_to(
                            TurnStatus::Completed,
                            Some((self.turn.status, self.turn.steps)),
                        )),
                        events: step_end_events(step, &state, false),
                        ..StepCommit::default()
                    })
                    .await?;
                self.turn.status = TurnStatus::Completed;
                count_step_end(&state, false);
                self.cx.out.send_all(committed.events).await;
                Ok(())
            }
            StepState::Waiting(_) => {
                for event in step_end_events(step, &state, false) {
                    self.cx.out.emit(event).await?;
                }
                Ok(())
            }
            StepState::Continue => {
                // `step_finished` is stored with the next step's start.
                self.run(false, step_end_events(step, &state, false)).await
            }
        }
    }

    /// Ends the turn with `status`: the turn, the events `before` (an error) and its
    /// `turn_finished` in one transaction, then sent.
    pub(crate) async fn finish(
        &mut self,
        status: TurnStatus,
        before: Vec<RuntimeEvent>,
    ) -> Result<(), EngineError> {
        self.finish_with(status, Vec::new(), Vec::new(), before)
            .await
    }

    /// [`TurnLoop::finish`] with `messages` and plan `writes` in the same transaction.
    pub(super) async fn finish_with(
        &mut self,
        status: TurnStatus,
        messages: Vec<NewMessage>,
        writes: Vec<PlanWrite>,
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
            .commit(StepCommit {
                session_id: self.cx.session_id.to_owned(),
                messages,
                turn: Some(self.turn.update_to(status, None)),
                plans: writes,
                events,
                ..StepCommit::default()
            })
            .await?;
        self.turn.status = status;
        metrics::turn(status.as_str());
        self.cx.out.send_all(committed.events).await;
        Ok(())
    }

    /// Ends the turn someone cancelled while it ran (see [`Engine::stop_cancelled`]).
    pub(crate) async fn stop_cancelled(&mut self) -> Result<(), EngineError> {
        // A call cancelled mid-answer stores nothing of it but what it used: on its own, as
        // cancelling goes on through the session's open work.
        if !self.usage.is_empty() {
            self.commit(StepCommit {
                session_id: self.cx.session_id.to_owned(),
                ..StepCommit::default()
            })
            .await?;
        }
        self.engine.stop_cancelled(&self.cx, self.turn).await
    }

    /// Stores `commit` with the LLM calls made since the turn's last commit: a call is counted
    /// with the step it belongs to, and not at all when that is not stored (docs/usage.md).
    pub(super) async fn commit(
        &mut self,
        mut commit: StepCommit,
    ) -> Result<Committed, EngineError> {
        commit.usage.append(&mut self.usage);
        Ok(self.engine.store.commit_step(commit).await?)
    }
}

impl Engine {
    /// Resumes the session's turn when its runner died: it is `running` although the caller
    /// holds the lock, or it waits on a step whose calls are all settled. A step whose outcome
    /// was never committed runs again (nothing of it was stored); a settled step goes on to
    /// the next one. A turn asked to stop is cancelled instead. [`Recovery::Idle`] when
    /// nothing needed resuming, with what was read. Must be called under the session lock.
    pub(crate) async fn recover(&self, cx: &Cx<'_>) -> Result<Recovery, EngineError> {
        let Some(turn) = self.store.active_turn(cx.session_id).await? else {
            return Ok(Recovery::Idle(None));
        };
        let step_calls = if turn.steps > 0 {
            self.store.list_step_calls(&turn.id, turn.steps).await?
        } else {
            Vec::new()
        };
        self.recover_from(cx, Some(ActiveTurn { turn, step_calls }))
            .await
    }

    /// [`Engine::recover`] from the session's active turn and its step's calls as just read
    /// under the lock.
    pub(crate) async fn recover_from(
        &self,
        cx: &Cx<'_>,
        active: Option<ActiveTurn>,
    ) -> Result<Recovery, EngineError> {
        let Some(ActiveTurn {
            mut turn,
            step_calls: calls,
        }) = active
        else {
            return Ok(Recovery::Idle(None));
        };
        let stalled = match turn.status {
            TurnStatus::Running => true,
            TurnStatus::AwaitingTools => {
                !calls.is_empty() && calls.iter().all(|c| !c.status.is_open())
            }
            _ => false,
        };
        if !stalled {
            return Ok(Recovery::Idle(Some(ActiveTurn {
                turn,
                step_calls: calls,
            })));
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
        let rerun = turn.status == TurnStatus::Running && calls.is_empty();
        let step = turn.steps;
        let mut turn_loop = TurnLoop::new(self, *cx, &mut turn);
        if turn_loop.turn.cancel_requested_at.is_some() {
            turn_loop.stop_cancelled().await?;
        } else if rerun {
            // The step's outcome was never committed: run it again, as the same step.
            turn_loop.turn.steps = (step - 1).max(0);
            turn_loop.run(false, Vec::new()).await?;
        } else {
            turn_loop.continue_after(step, calls).await?;
        }
        Ok(Recovery::Resumed)
    }
}

/// What [`Engine::recover`] did.
pub(crate) enum Recovery {
    /// It resumed the session's turn; what it read is stale now.
    Resumed,
    /// Nothing needed resuming: the session's active turn as read under the lock (none when
    /// there is none), still current for the frame's own work, which may use it instead of
    /// reading it again.
    Idle(Option<ActiveTurn>),
}

/// A session's active turn and the calls of its latest step (none before its first step), in
/// the order the model made them.
pub(crate) struct ActiveTurn {
    pub(crate) turn: Turn,
    pub(crate) step_calls: Vec<ToolCallRecord>,
}

/// What a frame read under the session lock before its work, still current when recovery
/// resumed nothing: the work uses it instead of reading it again.
pub(crate) struct FrameStart {
    pub(crate) session: Session,
    pub(crate) active: Option<ActiveTurn>,
    /// The session's open calls (read for user messages only, which cancel them).
    pub(crate) open_calls: Vec<ToolCallRecord>,
}
