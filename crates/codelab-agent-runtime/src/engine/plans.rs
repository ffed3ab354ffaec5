//! Plans in the turn loop (`docs/agent-runtime.md`, "Planning"): the architect's `create_plan`
//! proposes one (a new plan, or the next version of the one a person asked to change); a
//! person's decision settles its call; an approved plan's subtasks run in the same turn, one at
//! a time, each by its agent in its own context; a failed subtask stops the plan until a
//! person retries it, skips it or cancels the plan.
//!
//! Like every other transition, each change is stored with the step or settlement it belongs
//! to, and what happens next is decided from the stored plan: a restarted runtime resumes a
//! plan's run exactly like any turn (the turn knows its plan).

use codelab_protocol::plans::CREATE_PLAN_TOOL;
use codelab_protocol::plans::PlanDecision;
use codelab_protocol::runtime::{RuntimeEvent, TurnOutcome};
use serde_json::Value;

use super::budget::budget_exceeded;
use super::step::{StepEnd, StepResult, StepState, completion_events, step_end_events};
use super::turn::TurnLoop;
use super::{Cx, Engine, EngineError, PlanRef};
use crate::agents::AgentKind;
use crate::metrics;
use crate::model::{
    NewMessage, Plan, PlanStatus, PlanWrite, PlanningMode, Role, StepCommit, Subtask,
    SubtaskStatus, ToolCallRecord, ToolCallStatus, ToolCallUpdate, Turn, TurnStatus, UpdateOutcome,
};
use crate::planning;

/// Why a `create_plan` call waits (its `approval_reason`).
pub(crate) const PLAN_APPROVAL_REASON: &str = "a plan runs only once the user approves it";
/// The tool message of an auto-approved `create_plan`.
pub(crate) const AUTO_APPROVED: &str =
    "The plan was approved automatically; its subtasks run now, one by one.";
/// The tool message of an approved `create_plan`.
const APPROVED: &str = "The user approved the plan; its subtasks run now, one by one.";
/// The agent named on the messages that close a plan's run.
const PLAN_AGENT: &str = "architect";

/// The subtask a step of a plan's run works on, with the plan as read for it.
#[derive(Debug, Clone)]
pub(crate) struct SubtaskRun {
    pub(crate) plan: Plan,
    /// Index into `plan.subtasks`.
    pub(crate) index: usize,
}

impl SubtaskRun {
    pub(crate) fn subtask(&self) -> &Subtask {
        &self.plan.subtasks[self.index]
    }

    /// The write and the event that end the subtask with `status`.
    pub(crate) fn finish(
        &self,
        status: SubtaskStatus,
        result: Option<String>,
        error: Option<String>,
    ) -> (PlanWrite, RuntimeEvent) {
        let subtask = Subtask {
            status,
            result: result.clone(),
            error: error.clone(),
            ..self.subtask().clone()
        };
        let event = RuntimeEvent::PlanProgress {
            plan_id: self.plan.id.clone(),
            subtask_id: u32::try_from(subtask.position).unwrap_or(0),
            status,
            result: result.or(error),
        };
        (PlanWrite::subtask(&self.plan.id, &subtask), event)
    }
}

/// A finished subtask's result: its agent's completion texts, else its last answer.
pub(crate) fn subtask_result(completions: &[(String, String)], answer: &str) -> String {
    let texts: Vec<&str> = completions.iter().map(|(_, text)| text.as_str()).collect();
    if texts.is_empty() {
        answer.trim().to_owned()
    } else {
        texts.join("\n")
    }
}

/// The plan's status after a subtask changed, as the events tell it.
fn plan_events(plan: &Plan) -> RuntimeEvent {
    RuntimeEvent::PlanUpdate {
        plan_id: plan.id.clone(),
        plan: Box::new(planning::view(plan)),
    }
}

impl TurnLoop<'_> {
    /// The plan a valid `create_plan` call proposes: the next version of the plan whose
    /// `modify` this turn is answering, else a new plan. `Ok(Err(..))`: refused, with the
    /// reason for the model.
    pub(super) async fn propose_plan(
        &self,
        arguments: &Value,
        call_id: &str,
    ) -> Result<Result<Plan, String>, EngineError> {
        let engine = self.engine;
        if engine.session(&self.cx).await?.planning == PlanningMode::Never {
            return Ok(Err(
                "planning is off in this session (its planning setting is \
                           \"never\"): do the task without a plan"
                    .to_owned(),
            ));
        }
        let proposed = match planning::read_plan(arguments, engine.limits.max_plan_subtasks) {
            Ok(proposed) => proposed,
            Err(error) => return Ok(Err(error)),
        };
        let revising = engine
            .store
            .list_plans(self.cx.session_id)
            .await?
            .into_iter()
            .rev()
            .find(|plan| {
                plan.turn_id == self.turn.id
                    && plan.status == PlanStatus::AwaitingApproval
                    && plan.feedback.is_some()
            });
        let now = engine.now();
        let (id, version, created_at) = match &revising {
            Some(plan) => (plan.id.clone(), plan.version + 1, plan.created_at),
            None => (codelab_core::new_id().to_string(), 1, now),
        };
        Ok(Ok(Plan {
            id,
            session_id: self.cx.session_id.to_owned(),
            version,
            title: proposed.title,
            description: proposed.description,
            status: PlanStatus::AwaitingApproval,
            call_id: call_id.to_owned(),
            turn_id: self.turn.id.clone(),
            feedback: None,
            summary: None,
            created_at,
            updated_at: now,
            subtasks: planning::pending_subtasks(proposed.subtasks),
        }))
    }

    /// Runs the turn's plan: each iteration reads the plan, picks the subtask in progress or
    /// starts the next one that can run, and takes one step of it; ends the turn when the plan
    /// completed, a subtask failed, or the turn waits for the IDE. `started` and `pending` as
    /// in [`TurnLoop::run`].
    pub(super) async fn run_plan(
        &mut self,
        plan_id: String,
        started: bool,
        mut pending: Vec<RuntimeEvent>,
    ) -> Result<(), EngineError> {
        let engine = self.engine;
        let running = engine.running.start(
            std::sync::Arc::clone(&engine.store),
            self.cx.session_id,
            &self.turn.id,
        );
        if self.turn.cancel_requested_at.is_some() {
            running.token().cancel();
        }
        let mut started = started;
        loop {
            if running.token().is_cancelled() {
                for event in std::mem::take(&mut pending) {
                    self.cx.out.emit(event).await?;
                }
                return self.stop_cancelled().await;
            }
            let Some(mut plan) = engine.store.get_plan(&plan_id).await? else {
                return Err(EngineError::Inconsistent(format!(
                    "turn {} runs plan {plan_id}, which does not exist",
                    self.turn.id
                )));
            };
            if plan.status.is_final() || plan.status == PlanStatus::Failed {
                // Ended meanwhile (cancelled elsewhere): the turn ends with it.
                return self.finish(TurnStatus::Completed, pending).await;
            }
            let Some(index) = planning::next_subtask(&plan.subtasks) else {
                return self.complete_plan(plan, pending).await;
            };
            let mut writes = Vec::new();
            if plan.status != PlanStatus::InProgress {
                plan.status = PlanStatus::InProgress;
                writes.push(PlanWrite::status(&plan.id, PlanStatus::InProgress));
            }
            let limit = i32::try_from(engine.limits.max_steps_per_turn).unwrap_or(i32::MAX);
            let subtask = &mut plan.subtasks[index];
            if subtask.status == SubtaskStatus::Pending {
                let session = engine.session(&self.cx).await?;
                subtask.status = SubtaskStatus::InProgress;
                subtask.context_from = Some(session.message_count);
                subtask.first_step = Some(self.turn.steps);
                writes.push(PlanWrite::subtask(&plan.id, subtask));
                pending.push(RuntimeEvent::PlanProgress {
                    plan_id: plan.id.clone(),
                    subtask_id: u32::try_from(subtask.position).unwrap_or(0),
                    status: SubtaskStatus::InProgress,
                    result: None,
                });
            }
            let taken = self.turn.steps - subtask.first_step.unwrap_or(self.turn.steps);
            let agent = AgentKind::parse(&subtask.agent)
                .filter(|kind| engine.registry.is_registered(*kind));
            let run = SubtaskRun { plan, index };
            let refusal = match agent {
                None => Some(format!(
                    "the agent \"{}\" is not available here",
                    run.subtask().agent
                )),
                Some(_) if !started && taken >= limit => {
                    Some(format!("step limit reached ({limit} steps)"))
                }
                Some(_) => None,
            };
            if let Some(error) = refusal {
                return self.fail_subtask(run, writes, pending, error).await;
            }
            if let Some(refusal) = self.budget_refusal(&mut pending).await? {
                pending.push(budget_exceeded(refusal.clone()));
                return self.fail_subtask(run, writes, pending, refusal).await;
            }
            let agent = agent.unwrap_or(AgentKind::Coder);
            if !started {
                self.start_step_with(std::mem::take(&mut pending), writes)
                    .await?;
            } else if !writes.is_empty() || !pending.is_empty() {
                self.store_plan_start(writes, std::mem::take(&mut pending))
                    .await?;
            }
            started = false;
            self.turn.agent = agent.as_str().to_owned();
            self.subtask = Some(run.clone());
            metrics::counter_step();
            match self.llm_step(agent, running.token()).await? {
                StepResult::Done(StepEnd::Continue) => {}
                StepResult::Done(StepEnd::Stop) => return Ok(()),
                StepResult::Failed(RuntimeEvent::Error { message, code }) => {
                    let before = vec![RuntimeEvent::Error {
                        message: message.clone(),
                        code,
                    }];
                    return self.fail_subtask(run, Vec::new(), before, message).await;
                }
                StepResult::Failed(other) => {
                    return self
                        .fail_subtask(run, Vec::new(), vec![other], "the step failed".to_owned())
                        .await;
                }
                StepResult::Cancelled => return self.stop_cancelled().await,
            }
        }
    }

    /// Stores a subtask's start when its step was recorded already (a new turn starts at
    /// step 1): the writes and events alone.
    async fn store_plan_start(
        &mut self,
        writes: Vec<PlanWrite>,
        events: Vec<RuntimeEvent>,
    ) -> Result<(), EngineError> {
        let committed = self
            .commit(StepCommit {
                session_id: self.cx.session_id.to_owned(),
                plans: writes,
                events,
                ..StepCommit::default()
            })
            .await?;
        self.cx.out.send_all(committed.events).await;
        Ok(())
    }

    /// Ends the plan's run at a failed subtask: the subtask and the plan failed, the summary
    /// as an assistant message, the turn failed, all in one transaction.
    async fn fail_subtask(
        &mut self,
        run: SubtaskRun,
        mut writes: Vec<PlanWrite>,
        mut events: Vec<RuntimeEvent>,
        error: String,
    ) -> Result<(), EngineError> {
        let (write, progress) = run.finish(SubtaskStatus::Failed, None, Some(error.clone()));
        writes.push(write);
        let summary = planning::failed_summary(&run.plan, run.subtask(), &error);
        writes.push(PlanWrite::Status {
            plan_id: run.plan.id.clone(),
            status: PlanStatus::Failed,
            turn_id: None,
            feedback: None,
            summary: Some(summary.clone()),
        });
        events.push(progress);
        events.push(RuntimeEvent::AssistantMessage {
            message_id: codelab_core::new_id().to_string(),
            agent: PLAN_AGENT.to_owned(),
            content: summary.clone(),
        });
        events.push(RuntimeEvent::ExecutionCompleted {
            plan_id: run.plan.id.clone(),
            status: PlanStatus::Failed.as_str().to_owned(),
            summary: summary.clone(),
        });
        self.subtask = None;
        self.end_plan_turn(TurnStatus::Failed, writes, summary, events)
            .await
    }

    /// Ends the plan's run when no subtask is left: the plan completed with its summary.
    async fn complete_plan(
        &mut self,
        plan: Plan,
        mut events: Vec<RuntimeEvent>,
    ) -> Result<(), EngineError> {
        let summary = planning::completed_summary(&plan);
        let writes = vec![PlanWrite::Status {
            plan_id: plan.id.clone(),
            status: PlanStatus::Completed,
            turn_id: None,
            feedback: None,
            summary: Some(summary.clone()),
        }];
        let mut done = plan.clone();
        done.status = PlanStatus::Completed;
        done.summary = Some(summary.clone());
        events.push(RuntimeEvent::AssistantMessage {
            message_id: codelab_core::new_id().to_string(),
            agent: PLAN_AGENT.to_owned(),
            content: summary.clone(),
        });
        events.push(plan_events(&done));
        events.push(RuntimeEvent::ExecutionCompleted {
            plan_id: plan.id.clone(),
            status: PlanStatus::Completed.as_str().to_owned(),
            summary: summary.clone(),
        });
        self.end_plan_turn(TurnStatus::Completed, writes, summary, events)
            .await
    }

    /// Ends the turn with `status`: `writes`, the summary as an assistant message, `events`
    /// and `turn_finished`, in one transaction.
    async fn end_plan_turn(
        &mut self,
        status: TurnStatus,
        writes: Vec<PlanWrite>,
        summary: String,
        events: Vec<RuntimeEvent>,
    ) -> Result<(), EngineError> {
        let message = NewMessage {
            agent: Some(PLAN_AGENT.to_owned()),
            ..NewMessage::text(self.cx.session_id, Role::Assistant, &summary)
        };
        self.finish_with(status, vec![message], writes, events)
            .await
    }

    /// [`TurnLoop::continue_after`] in a turn that runs a plan: a subtask whose last calls
    /// settled with a completion is recorded done, and the plan goes on.
    pub(super) async fn continue_plan_after(
        &mut self,
        plan_id: String,
        step: i32,
        calls: Vec<ToolCallRecord>,
    ) -> Result<(), EngineError> {
        let state = StepState::of(&calls);
        match &state {
            StepState::Waiting(_) => {
                for event in step_end_events(step, &state, false) {
                    self.cx.out.emit(event).await?;
                }
                Ok(())
            }
            StepState::Continue => {
                self.run_plan(plan_id, false, step_end_events(step, &state, false))
                    .await
            }
            StepState::Complete(texts) => {
                let mut pending = step_end_events(step, &StepState::Continue, false);
                let plan = self.engine.store.get_plan(&plan_id).await?;
                let running = plan.and_then(|plan| {
                    let index = plan
                        .subtasks
                        .iter()
                        .position(|s| s.status == SubtaskStatus::InProgress)?;
                    Some(SubtaskRun { plan, index })
                });
                if let Some(run) = running {
                    let (write, progress) = run.finish(
                        SubtaskStatus::Completed,
                        Some(subtask_result(texts, "")),
                        None,
                    );
                    let completions = state.completion_messages(self.cx.session_id);
                    let mut events = completion_events(texts);
                    events.push(progress);
                    let committed = self
                        .commit(StepCommit {
                            session_id: self.cx.session_id.to_owned(),
                            messages: completions,
                            plans: vec![write],
                            events,
                            ..StepCommit::default()
                        })
                        .await?;
                    self.cx.out.send_all(committed.events).await;
                    self.subtask = None;
                } else {
                    pending.clear();
                }
                self.run_plan(plan_id, false, pending).await
            }
        }
    }
}

impl Engine {
    /// Before a `cancel` decision waits for the session lock: the turn running (or waiting
    /// for the approval of) the plan is asked to stop. Best effort: the decision itself, under
    /// the lock, ends whatever is still open.
    pub(crate) async fn request_plan_stop(&self, session_id: &str, plan_ref: &PlanRef) {
        let plan = match plan_ref {
            PlanRef::Plan(id) => self.store.get_plan(id).await,
            PlanRef::ApprovalRequest(id) => self.store.plan_of_call(session_id, id).await,
        };
        let Ok(Some(plan)) = plan else {
            return;
        };
        if plan.session_id != session_id || plan.status.is_final() {
            return;
        }
        let Ok(Some(turn)) = self.store.active_turn(session_id).await else {
            return;
        };
        if turn.plan_id.as_deref() != Some(plan.id.as_str()) && turn.id != plan.turn_id {
            return;
        }
        if let Ok(Some(turn)) = self.store.request_cancel(session_id).await {
            self.running.cancel(session_id, &turn.id);
        }
    }

    /// A person's decision on a plan (`plan_decision`, REST). Under the session lock.
    pub(crate) async fn plan_decision(
        &self,
        cx: &Cx<'_>,
        plan_ref: PlanRef,
        decision: PlanDecision,
        feedback: Option<String>,
    ) -> Result<(), EngineError> {
        let plan = match &plan_ref {
            PlanRef::Plan(id) => self.store.get_plan(id).await?,
            PlanRef::ApprovalRequest(id) => self.store.plan_of_call(cx.session_id, id).await?,
        }
        .filter(|plan| plan.session_id == cx.session_id);
        let Some(plan) = plan else {
            let named = match &plan_ref {
                PlanRef::Plan(id) => format!("plan \"{id}\""),
                PlanRef::ApprovalRequest(id) => format!("approval request \"{id}\""),
            };
            return emit_error(
                cx,
                format!("unknown {named} in this session"),
                "unknown_plan",
            )
            .await;
        };
        match decision {
            PlanDecision::Approve | PlanDecision::Reject | PlanDecision::Modify => {
                self.decide_proposal(cx, plan, decision, feedback).await
            }
            PlanDecision::Retry | PlanDecision::Skip => {
                self.resume_failed_plan(cx, plan, decision).await
            }
            PlanDecision::Cancel => self.cancel_plan(cx, plan).await,
        }
    }

    /// `approve`, `reject` or `modify` on a plan that waits for approval: its `create_plan`
    /// call settles with the plan's new status in one transaction, then the turn goes on
    /// (runs the plan, ends, or lets the architect revise it).
    async fn decide_proposal(
        &self,
        cx: &Cx<'_>,
        plan: Plan,
        decision: PlanDecision,
        feedback: Option<String>,
    ) -> Result<(), EngineError> {
        let repeated = match decision {
            PlanDecision::Approve => matches!(
                plan.status,
                PlanStatus::Approved | PlanStatus::InProgress | PlanStatus::Completed
            ),
            PlanDecision::Reject => plan.status == PlanStatus::Rejected,
            _ => false,
        };
        if repeated {
            return emit_notice(
                cx,
                format!(
                    "plan {} was already decided ({}); nothing changed",
                    plan.id,
                    decision.as_str()
                ),
            )
            .await;
        }
        let call = self
            .store
            .get_tool_call(cx.session_id, &plan.call_id)
            .await?;
        let waiting = plan.status == PlanStatus::AwaitingApproval
            && call
                .as_ref()
                .is_some_and(|call| call.status == ToolCallStatus::PendingApproval);
        if !waiting {
            let why = if plan.status == PlanStatus::AwaitingApproval {
                "is being revised by the architect".to_owned()
            } else {
                format!("is {}", plan.status.as_str())
            };
            return emit_error(
                cx,
                format!(
                    "plan {} {why}: it does not wait for a decision ({} refused)",
                    plan.id,
                    decision.as_str()
                ),
                "conflict",
            )
            .await;
        }
        let feedback = feedback.filter(|f| !f.trim().is_empty());
        if decision == PlanDecision::Modify && feedback.is_none() {
            return emit_error(
                cx,
                "modify needs feedback: what should change in the plan".to_owned(),
                "invalid_request",
            )
            .await;
        }
        let (status, call_status, message, plan_status) = match decision {
            PlanDecision::Approve => (
                "approve",
                ToolCallStatus::Executed,
                APPROVED.to_owned(),
                PlanStatus::Approved,
            ),
            PlanDecision::Reject => (
                "reject",
                ToolCallStatus::Rejected,
                match &feedback {
                    Some(text) => format!("The user rejected the plan. Feedback: {text}"),
                    None => "The user rejected the plan.".to_owned(),
                },
                PlanStatus::Rejected,
            ),
            _ => (
                "modify",
                ToolCallStatus::Rejected,
                format!(
                    "The user asks for changes to the plan: {}\nRevise it and call create_plan \
                     again with the whole revised plan.",
                    feedback.as_deref().unwrap_or_default()
                ),
                PlanStatus::AwaitingApproval,
            ),
        };
        let update = ToolCallUpdate {
            decision: Some(status.to_owned()),
            feedback: feedback.clone(),
            result: (call_status == ToolCallStatus::Executed)
                .then(|| Value::String("approved".to_owned())),
            settle: true,
            tool_message: Some(message),
            plans: vec![PlanWrite::Status {
                plan_id: plan.id.clone(),
                status: plan_status,
                // Approved: the turn that waited runs it, stored with the decision so a
                // restart resumes the plan rather than the architect.
                turn_id: (decision == PlanDecision::Approve).then(|| plan.turn_id.clone()),
                feedback: feedback
                    .clone()
                    .filter(|_| decision == PlanDecision::Modify),
                summary: None,
            }],
            ..ToolCallUpdate::to(call_status)
        };
        cx.out.note_approvals_changed();
        let call = match self
            .store
            .update_tool_call(
                cx.session_id,
                &plan.call_id,
                &[ToolCallStatus::PendingApproval],
                update,
            )
            .await?
        {
            UpdateOutcome::Updated(call) => call,
            UpdateOutcome::Unchanged(_) | UpdateOutcome::NotFound => {
                return emit_error(
                    cx,
                    format!("plan {} was decided meanwhile", plan.id),
                    "conflict",
                )
                .await;
            }
        };
        metrics::approval(status);
        let mut decided = plan.clone();
        decided.status = plan_status;
        if decision == PlanDecision::Modify {
            decided.feedback = feedback.clone();
        }
        cx.out.emit(plan_events(&decided)).await?;
        let Some(mut turn) = self.store.get_turn(&call.turn_id).await? else {
            return Err(EngineError::Inconsistent(format!(
                "plan {} names turn {}, which does not exist",
                plan.id, call.turn_id
            )));
        };
        if turn.status.is_finished() {
            return Ok(());
        }
        if decision == PlanDecision::Reject {
            let text = format!("The plan \"{}\" was rejected.", plan.title);
            let committed = self
                .store
                .commit_step(StepCommit {
                    session_id: cx.session_id.to_owned(),
                    messages: vec![NewMessage {
                        agent: Some(PLAN_AGENT.to_owned()),
                        ..NewMessage::text(cx.session_id, Role::Assistant, &text)
                    }],
                    turn: Some(turn.update_to(TurnStatus::Completed, None)),
                    events: vec![
                        RuntimeEvent::AssistantMessage {
                            message_id: codelab_core::new_id().to_string(),
                            agent: PLAN_AGENT.to_owned(),
                            content: text.clone(),
                        },
                        RuntimeEvent::TurnFinished {
                            outcome: TurnOutcome::Completed,
                        },
                    ],
                    ..StepCommit::default()
                })
                .await?;
            metrics::turn(TurnStatus::Completed.as_str());
            cx.out.send_all(committed.events).await;
            return Ok(());
        }
        if decision == PlanDecision::Approve {
            turn.plan_id = Some(plan.id.clone());
        }
        let calls = self.store.list_step_calls(&turn.id, call.step).await?;
        TurnLoop::new(self, *cx, &mut turn)
            .continue_after(call.step, calls)
            .await
    }

    /// `retry` or `skip` on a plan stopped at a failed subtask: the subtask is reset (or
    /// skipped) and a new turn runs the rest of the plan.
    async fn resume_failed_plan(
        &self,
        cx: &Cx<'_>,
        plan: Plan,
        decision: PlanDecision,
    ) -> Result<(), EngineError> {
        let failed = plan
            .subtasks
            .iter()
            .find(|s| s.status == SubtaskStatus::Failed)
            .cloned();
        let Some(failed) = failed.filter(|_| plan.status == PlanStatus::Failed) else {
            return emit_error(
                cx,
                format!(
                    "plan {} is {}: only a plan stopped at a failed subtask takes {}",
                    plan.id,
                    plan.status.as_str(),
                    decision.as_str()
                ),
                "conflict",
            )
            .await;
        };
        if self.store.active_turn(cx.session_id).await?.is_some() {
            return emit_error(
                cx,
                "a turn is in progress in this session: wait for it or cancel it first".to_owned(),
                "conflict",
            )
            .await;
        }
        let subtask = if decision == PlanDecision::Retry {
            Subtask {
                status: SubtaskStatus::Pending,
                result: None,
                error: None,
                context_from: None,
                first_step: None,
                ..failed
            }
        } else {
            Subtask {
                status: SubtaskStatus::Skipped,
                ..failed
            }
        };
        let now = self.now();
        let mut turn = Turn {
            id: codelab_core::new_id().to_string(),
            session_id: cx.session_id.to_owned(),
            status: TurnStatus::Running,
            steps: 0,
            agent: subtask.agent.clone(),
            created_at: now,
            updated_at: now,
            cancel_requested_at: None,
            plan_id: Some(plan.id.clone()),
            plan_required: false,
        };
        let mut resumed = plan.clone();
        resumed.status = PlanStatus::InProgress;
        resumed.summary = None;
        if let Some(slot) = resumed
            .subtasks
            .iter_mut()
            .find(|s| s.position == subtask.position)
        {
            *slot = subtask.clone();
        }
        let committed = self
            .store
            .commit_step(StepCommit {
                session_id: cx.session_id.to_owned(),
                new_turn: Some(turn.clone()),
                plans: vec![
                    PlanWrite::subtask(&plan.id, &subtask),
                    PlanWrite::Status {
                        plan_id: plan.id.clone(),
                        status: PlanStatus::InProgress,
                        turn_id: Some(turn.id.clone()),
                        feedback: None,
                        summary: None,
                    },
                ],
                events: vec![
                    RuntimeEvent::PlanProgress {
                        plan_id: plan.id.clone(),
                        subtask_id: u32::try_from(subtask.position).unwrap_or(0),
                        status: subtask.status,
                        result: None,
                    },
                    plan_events(&resumed),
                ],
                ..StepCommit::default()
            })
            .await?;
        cx.out.send_all(committed.events).await;
        TurnLoop::new(self, *cx, &mut turn)
            .run(false, Vec::new())
            .await
    }

    /// `cancel`: the plan ends now, whatever it was doing; a turn running it or waiting for its
    /// approval is cancelled (open calls answered) first.
    async fn cancel_plan(&self, cx: &Cx<'_>, plan: Plan) -> Result<(), EngineError> {
        if plan.status.is_final() {
            let message = if plan.status == PlanStatus::Cancelled {
                format!("plan {} was already cancelled; nothing changed", plan.id)
            } else {
                format!(
                    "plan {} is {}; nothing to cancel",
                    plan.id,
                    plan.status.as_str()
                )
            };
            return emit_notice(cx, message).await;
        }
        let active = self.store.active_turn(cx.session_id).await?;
        let owns_turn = active.as_ref().is_some_and(|turn| {
            turn.plan_id.as_deref() == Some(plan.id.as_str()) || turn.id == plan.turn_id
        });
        let cancelled = if owns_turn {
            self.cancel_open_work(cx, "Cancelled: the user cancelled the plan", None)
                .await?
        } else {
            Vec::new()
        };
        // Cancelling the turn may have ended the plan already (see `cancel_plans_of`).
        let still = self.store.get_plan(&plan.id).await?;
        if let Some(plan) = still.filter(|p| !p.status.is_final()) {
            self.end_plan(cx, plan).await?;
        }
        if owns_turn {
            for call in &cancelled {
                if call.tool_name != CREATE_PLAN_TOOL {
                    cx.out.emit(super::settled_event(call, None)).await?;
                }
            }
            cx.out
                .emit(RuntimeEvent::TurnFinished {
                    outcome: TurnOutcome::Cancelled,
                })
                .await?;
        }
        Ok(())
    }

    /// Marks `plan` and its unfinished subtasks cancelled and tells the client.
    pub(crate) async fn end_plan(&self, cx: &Cx<'_>, mut plan: Plan) -> Result<(), EngineError> {
        let mut writes = vec![PlanWrite::status(&plan.id, PlanStatus::Cancelled)];
        for subtask in &mut plan.subtasks {
            if matches!(
                subtask.status,
                SubtaskStatus::Pending | SubtaskStatus::InProgress | SubtaskStatus::Failed
            ) {
                subtask.status = SubtaskStatus::Cancelled;
                writes.push(PlanWrite::subtask(&plan.id, subtask));
            }
        }
        plan.status = PlanStatus::Cancelled;
        let summary = format!("Plan \"{}\" was cancelled.", plan.title);
        let committed = self
            .store
            .commit_step(StepCommit {
                session_id: cx.session_id.to_owned(),
                plans: writes,
                events: vec![
                    plan_events(&plan),
                    RuntimeEvent::ExecutionCompleted {
                        plan_id: plan.id.clone(),
                        status: PlanStatus::Cancelled.as_str().to_owned(),
                        summary,
                    },
                ],
                ..StepCommit::default()
            })
            .await?;
        cx.out.send_all(committed.events).await;
        Ok(())
    }

    /// After open work was cancelled (a new message, `cancel_turn`): the plans it belonged to
    /// end too — one waiting for approval (its `create_plan` call was cancelled), and the one
    /// the cancelled turn ran.
    pub(crate) async fn cancel_plans_of(
        &self,
        cx: &Cx<'_>,
        cancelled_calls: &[ToolCallRecord],
        cancelled_turn: Option<&Turn>,
    ) -> Result<(), EngineError> {
        let mut ended: Vec<String> = Vec::new();
        for call in cancelled_calls
            .iter()
            .filter(|call| call.tool_name == CREATE_PLAN_TOOL)
        {
            if let Some(plan) = self
                .store
                .plan_of_call(cx.session_id, &call.call_id)
                .await?
                && !plan.status.is_final()
            {
                ended.push(plan.id.clone());
                self.end_plan(cx, plan).await?;
            }
        }
        if let Some(plan_id) = cancelled_turn.and_then(|turn| turn.plan_id.clone())
            && !ended.contains(&plan_id)
            && let Some(plan) = self.store.get_plan(&plan_id).await?
            && !plan.status.is_final()
        {
            self.end_plan(cx, plan).await?;
        }
        Ok(())
    }
}

async fn emit_error(cx: &Cx<'_>, message: String, code: &str) -> Result<(), EngineError> {
    cx.out
        .emit(RuntimeEvent::Error {
            message,
            code: Some(code.to_owned()),
        })
        .await?;
    Ok(())
}

async fn emit_notice(cx: &Cx<'_>, message: String) -> Result<(), EngineError> {
    cx.out.emit(RuntimeEvent::Notice { message }).await?;
    Ok(())
}
