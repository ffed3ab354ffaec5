//! Settling tool calls: IDE results (including the Flutter IDE's refusals), human decisions,
//! and cancellation. Every change is one atomic `update_tool_call` from the expected states,
//! with the call's tool message in the same transaction, so a repeated or racing frame changes
//! nothing and gets a `notice`, and a crash never leaves a settled call without its result.

use codelab_protocol::ide::Decision;
use codelab_protocol::plans::CREATE_PLAN_TOOL;
use codelab_protocol::plans::PlanDecision;
use codelab_protocol::runtime::{RuntimeEvent, TurnOutcome};
use serde_json::{Map, Value};

use super::calls::result_message;
use super::cancel::CANCEL_WAIT;
use super::turn::{ActiveTurn, FrameStart, TurnLoop};
use super::{Cx, Engine, EngineError, PlanRef, settled_event};
use crate::agents::AgentKind;
use crate::metrics;
use crate::model::{
    ToolCallRecord, ToolCallStatus, ToolCallUpdate, Turn, TurnStatus, UpdateOutcome,
};
use crate::tools;

/// The tool message of calls cancelled with their turn.
const CANCELLED_BY_USER: &str = "Cancelled: the user cancelled the turn";

/// How many times a settlement re-reads a call that changed under it before giving up.
const SETTLE_ATTEMPTS: usize = 3;

/// The IDE's outcome for a tool call (`tool_result`): a result, or the error it reported.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ToolOutcome {
    pub(crate) result: Option<Value>,
    pub(crate) error: Option<String>,
}

/// A person's decision on a call that waits for approval (`hitl_decision`).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct HumanDecision {
    pub(crate) decision: Decision,
    /// The arguments to run the call with instead (an `edit`).
    pub(crate) modified_arguments: Option<Map<String, Value>>,
    pub(crate) feedback: Option<String>,
}

impl Engine {
    // ---- tool_result ----

    /// The IDE's outcome for a call. For a call waiting for approval it is also the decision
    /// (the Flutter IDE asks the user itself): an error means refused, a result approved and
    /// run. `known`: the session's state when already read under the lock (the call is
    /// usually one of its active turn's step calls).
    pub(crate) async fn tool_result(
        &self,
        cx: &Cx<'_>,
        call_id: &str,
        outcome: ToolOutcome,
        known: Option<FrameStart>,
    ) -> Result<(), EngineError> {
        let ToolOutcome { result, error } = outcome;
        // Settling a call does not change the session's agent.
        let session_agent = known
            .as_ref()
            .map(|known| known.session.current_agent.clone());
        let mut active = known.and_then(|known| known.active);
        let mut attempt = 0;
        let mut known_call = active
            .as_ref()
            .and_then(|active| active.step_calls.iter().find(|c| c.call_id == call_id))
            .cloned();
        let settled = loop {
            let call = match known_call.take() {
                Some(call) => call,
                None => match self.store.get_tool_call(cx.session_id, call_id).await? {
                    Some(call) => call,
                    None => return self.unknown_call(cx, call_id).await,
                },
            };
            if !call.status.is_open() {
                return self.already_settled(cx, &call).await;
            }
            if call.tool_name == CREATE_PLAN_TOOL {
                cx.out
                    .emit(RuntimeEvent::Error {
                        message: format!(
                            "call {call_id} proposes a plan: decide it with plan_decision (or \
                             POST /api/v1/plans/{{id}}/decision), not with a tool result"
                        ),
                        code: Some("conflict".to_owned()),
                    })
                    .await?;
                return Ok(());
            }
            if call.status == ToolCallStatus::PendingApproval {
                cx.out.note_approvals_changed();
            }
            let (status, decision, feedback) = match (call.status, &error) {
                (ToolCallStatus::PendingApproval, Some(error)) => (
                    ToolCallStatus::Rejected,
                    Some("reject"),
                    Some(error.clone()),
                ),
                (ToolCallStatus::PendingApproval, None) => {
                    (ToolCallStatus::Succeeded, Some("approve"), None)
                }
                (_, Some(_)) => (ToolCallStatus::Failed, None, None),
                (_, None) => (ToolCallStatus::Succeeded, None, None),
            };
            let outcome_error = error.as_deref();
            let outcome_result = if error.is_some() {
                None
            } else {
                result.as_ref()
            };
            // As the row will read after the update (its decision is kept when none is given),
            // so an edited call's result says it was edited.
            let decided = ToolCallRecord {
                decision: decision
                    .map(str::to_owned)
                    .or_else(|| call.decision.clone()),
                ..call.clone()
            };
            let update = ToolCallUpdate {
                decision: decision.map(str::to_owned),
                feedback,
                result: outcome_result.cloned(),
                error: error.clone(),
                settle: true,
                tool_message: Some(result_message(&decided, outcome_result, outcome_error)),
                ..ToolCallUpdate::to(status)
            };
            match self
                .store
                .update_tool_call(cx.session_id, call_id, &[call.status], update)
                .await?
            {
                UpdateOutcome::Updated(updated) => {
                    if let Some(decision) = decision {
                        metrics::approval(decision);
                    }
                    break updated;
                }
                UpdateOutcome::NotFound => return self.unknown_call(cx, call_id).await,
                UpdateOutcome::Unchanged(current) => {
                    // Someone else changed the call: what was read before is stale.
                    active = None;
                    attempt += 1;
                    if !current.status.is_open() || attempt >= SETTLE_ATTEMPTS {
                        return self.already_settled(cx, &current).await;
                    }
                }
            }
        };
        metrics::tool_call_settled(&settled.tool_name, settled.status.as_str());
        cx.out.emit(settled_event(&settled, error)).await?;
        self.after_settlement(cx, &settled, active, session_agent)
            .await
    }

    // ---- hitl_decision ----

    /// A person's decision on a call that waits for approval. Approve and edit hand the call
    /// to the IDE (a new `tool_call` without `requires_approval`); reject settles it.
    pub(crate) async fn hitl_decision(
        &self,
        cx: &Cx<'_>,
        call_id: &str,
        human: HumanDecision,
    ) -> Result<(), EngineError> {
        let HumanDecision {
            decision,
            modified_arguments,
            feedback,
        } = human;
        let Some(call) = self.store.get_tool_call(cx.session_id, call_id).await? else {
            return self.unknown_call(cx, call_id).await;
        };
        if call.tool_name == CREATE_PLAN_TOOL {
            // Approving or rejecting a plan's call decides the plan.
            let plan_decision = match decision {
                Decision::Approve => PlanDecision::Approve,
                Decision::Reject => PlanDecision::Reject,
                Decision::Edit => {
                    cx.out
                        .emit(RuntimeEvent::Error {
                            message: "a plan is not edited: decide it with modify and feedback"
                                .to_owned(),
                            code: Some("invalid_request".to_owned()),
                        })
                        .await?;
                    return Ok(());
                }
            };
            let plan = PlanRef::ApprovalRequest(call_id.to_owned());
            return Box::pin(self.plan_decision(cx, plan, plan_decision, feedback)).await;
        }
        let modified = modified_arguments.map(Value::Object);
        let same_edit = decision != Decision::Edit || call.modified_arguments == modified;
        if call.decision.as_deref() == Some(decision.as_str()) && same_edit {
            cx.out
                .emit(RuntimeEvent::Notice {
                    message: format!(
                        "call {call_id} was already decided ({}); nothing changed",
                        decision.as_str()
                    ),
                })
                .await?;
            return Ok(());
        }
        if call.status != ToolCallStatus::PendingApproval {
            return self.conflict(cx, &call).await;
        }
        match decision {
            Decision::Approve | Decision::Edit => {
                let edited = if decision == Decision::Edit {
                    match self.check_edit(&call, modified) {
                        Ok(edited) => Some(edited),
                        Err(message) => {
                            cx.out
                                .emit(RuntimeEvent::Error {
                                    message,
                                    code: Some("invalid_arguments".to_owned()),
                                })
                                .await?;
                            return Ok(());
                        }
                    }
                } else {
                    None
                };
                let update = ToolCallUpdate {
                    decision: Some(decision.as_str().to_owned()),
                    feedback: feedback.clone(),
                    modified_arguments: edited.clone(),
                    ..ToolCallUpdate::to(ToolCallStatus::AwaitingResult)
                };
                let Some(call) = self.apply_decision(cx, call_id, update).await? else {
                    return Ok(());
                };
                metrics::approval(decision.as_str());
                cx.out
                    .emit(RuntimeEvent::ToolCall {
                        call_id: call.call_id.clone(),
                        tool_name: call.tool_name.clone(),
                        arguments: edited.unwrap_or_else(|| call.arguments.clone()),
                        requires_approval: false,
                        approval_reason: None,
                        agent: call.agent.clone(),
                    })
                    .await?;
                self.report_open_calls(cx, &call.turn_id, call.step).await
            }
            Decision::Reject => {
                let mut text = "The user rejected this call.".to_owned();
                if let Some(feedback) = &feedback {
                    text.push_str(" Feedback: ");
                    text.push_str(feedback);
                }
                let update = ToolCallUpdate {
                    decision: Some("reject".to_owned()),
                    feedback: feedback.clone(),
                    settle: true,
                    tool_message: Some(text),
                    ..ToolCallUpdate::to(ToolCallStatus::Rejected)
                };
                let Some(call) = self.apply_decision(cx, call_id, update).await? else {
                    return Ok(());
                };
                metrics::approval("reject");
                metrics::tool_call_settled(&call.tool_name, "rejected");
                cx.out.emit(settled_event(&call, feedback)).await?;
                self.after_settlement(cx, &call, None, None).await
            }
        }
    }

    /// Applies a person's decision to a call still waiting for approval; `None` when it was
    /// not (it moved on, or is gone), after telling the client so.
    async fn apply_decision(
        &self,
        cx: &Cx<'_>,
        call_id: &str,
        update: ToolCallUpdate,
    ) -> Result<Option<ToolCallRecord>, EngineError> {
        cx.out.note_approvals_changed();
        let outcome = self
            .store
            .update_tool_call(
                cx.session_id,
                call_id,
                &[ToolCallStatus::PendingApproval],
                update,
            )
            .await?;
        match outcome {
            UpdateOutcome::Updated(call) => Ok(Some(call)),
            UpdateOutcome::Unchanged(current) => self.conflict(cx, &current).await.map(|()| None),
            UpdateOutcome::NotFound => self.unknown_call(cx, call_id).await.map(|()| None),
        }
    }

    /// The edited arguments of an `edit` decision, checked like the model's own.
    fn check_edit(&self, call: &ToolCallRecord, modified: Option<Value>) -> Result<Value, String> {
        let Some(edited) = modified else {
            return Err(format!(
                "an edit of call {} needs modified_arguments: the arguments to run {} with",
                call.call_id, call.tool_name
            ));
        };
        if let Some(agent) = AgentKind::parse(&call.agent) {
            self.registry
                .check_tool_allowed(agent, &call.tool_name, &edited)
                .map_err(|e| format!("the edited arguments are refused: {e}"))?;
        }
        tools::validate_arguments(&call.tool_name, &edited.to_string())
            .map_err(|e| format!("the edited arguments are invalid: {e}"))
    }

    // ---- cancel_turn ----

    /// Stops the turn in progress without waiting behind its lock: the running turn is asked
    /// to stop (locally and through the database, for another replica), then, under the lock
    /// once it is free (at most [`CANCEL_WAIT`]), whatever is still open is cancelled (with
    /// tool messages, so the history stays valid) and the turn is marked cancelled.
    pub(crate) async fn cancel_turn(
        &self,
        cx: &Cx<'_>,
        reason: Option<String>,
    ) -> Result<(), EngineError> {
        let requested = self.store.request_cancel(cx.session_id).await?;
        if let Some(turn) = &requested {
            self.running.cancel(cx.session_id, &turn.id);
        }
        let Ok(lock) =
            tokio::time::timeout(CANCEL_WAIT, self.store.lock_session(cx.session_id)).await
        else {
            cx.out
                .emit(RuntimeEvent::Notice {
                    message: format!(
                        "cancellation requested: the turn did not stop within {} s and stops \
                         at its next check",
                        CANCEL_WAIT.as_secs()
                    ),
                })
                .await?;
            return Ok(());
        };
        let _lock = lock?;
        let text = format!(
            "Cancelled: {}",
            reason.as_deref().unwrap_or("the user cancelled the turn")
        );
        let had_turn = self.store.active_turn(cx.session_id).await?.is_some();
        let cancelled = self.cancel_open_work(cx, &text, None).await?;
        if had_turn || !cancelled.is_empty() {
            return announce_cancelled(cx, &cancelled).await;
        }
        // Nothing is open any more: the running turn stopped itself (or ended first).
        if let Some(turn) = requested
            && let Some(now) = self.store.get_turn(&turn.id).await?
        {
            if now.status == TurnStatus::Cancelled {
                cx.out
                    .emit(RuntimeEvent::TurnFinished {
                        outcome: TurnOutcome::Cancelled,
                    })
                    .await?;
            } else {
                cx.out
                    .emit(RuntimeEvent::Notice {
                        message: format!(
                            "the turn ended ({}) before it could be cancelled",
                            now.status.as_str()
                        ),
                    })
                    .await?;
            }
            return Ok(());
        }
        cx.out
            .emit(RuntimeEvent::Notice {
                message: "no turn is in progress; nothing to cancel".to_owned(),
            })
            .await?;
        Ok(())
    }

    /// Ends a turn someone cancelled while it ran (called by its runner, under the lock):
    /// open calls are cancelled, the turn is marked cancelled, and the client is told.
    pub(crate) async fn stop_cancelled(
        &self,
        cx: &Cx<'_>,
        turn: &mut Turn,
    ) -> Result<(), EngineError> {
        let cancelled = self.cancel_open_work(cx, CANCELLED_BY_USER, None).await?;
        turn.status = TurnStatus::Cancelled;
        announce_cancelled(cx, &cancelled).await
    }

    /// Cancels every open call of the session (each answered by a tool message `text`) and
    /// the active turn; returns the calls it cancelled. Emits nothing about them; the plans
    /// they belonged to end too, with their events. `known`: the open work
    /// when already read under the lock (settling calls does not change the turn).
    pub(crate) async fn cancel_open_work(
        &self,
        cx: &Cx<'_>,
        text: &str,
        known: Option<OpenWork>,
    ) -> Result<Vec<ToolCallRecord>, EngineError> {
        let (active, open_calls) = match known {
            Some(OpenWork { active, calls }) => (Some(active), calls),
            None => (None, self.store.list_open_calls(cx.session_id).await?),
        };
        let mut cancelled = Vec::new();
        for call in open_calls {
            if call.status == ToolCallStatus::PendingApproval {
                cx.out.note_approvals_changed();
            }
            let update = ToolCallUpdate {
                error: Some(text.to_owned()),
                settle: true,
                tool_message: Some(text.to_owned()),
                ..ToolCallUpdate::to(ToolCallStatus::Cancelled)
            };
            let outcome = self
                .store
                .update_tool_call(
                    cx.session_id,
                    &call.call_id,
                    &[
                        ToolCallStatus::PendingApproval,
                        ToolCallStatus::AwaitingResult,
                    ],
                    update,
                )
                .await?;
            if let UpdateOutcome::Updated(call) = outcome {
                metrics::tool_call_settled(&call.tool_name, "cancelled");
                cancelled.push(call);
            }
        }
        let active = match active {
            Some(known) => known,
            None => self.store.active_turn(cx.session_id).await?,
        };
        if let Some(turn) = &active {
            self.store
                .update_turn(&turn.id, TurnStatus::Cancelled, turn.steps, &turn.agent)
                .await?;
            metrics::turn("cancelled");
        }
        self.cancel_plans_of(cx, &cancelled, active.as_ref())
            .await?;
        Ok(cancelled)
    }

    // ---- shared ----

    /// After a call settled: the next step when it was the step's last open call, else a
    /// `step_finished` saying how many remain. `active`: the session's active turn and its
    /// step's calls as read before `call` settled, when nothing else changed since;
    /// `session_agent`: the session's current agent, when known.
    async fn after_settlement(
        &self,
        cx: &Cx<'_>,
        call: &ToolCallRecord,
        active: Option<ActiveTurn>,
        session_agent: Option<String>,
    ) -> Result<(), EngineError> {
        let known = active.filter(|active| active.turn.id == call.turn_id);
        let (mut turn, known_calls) = match known {
            Some(ActiveTurn { turn, step_calls }) => {
                let same_step = turn.steps == call.step;
                (turn, same_step.then_some(step_calls))
            }
            None => match self.store.get_turn(&call.turn_id).await? {
                Some(turn) => (turn, None),
                None => {
                    return Err(EngineError::Inconsistent(format!(
                        "call {} names turn {}, which does not exist",
                        call.call_id, call.turn_id
                    )));
                }
            },
        };
        if turn.status.is_finished() {
            // Open calls of a finished turn are not expected; settle without continuing.
            return self.report_open_calls(cx, &turn.id, call.step).await;
        }
        // The step's calls as read before, with this one as it is now; read again when it
        // was not among them.
        let calls = match known_calls.map(|calls| with_settled(calls, call)) {
            Some(Some(calls)) => calls,
            _ => self.store.list_step_calls(&turn.id, call.step).await?,
        };
        let mut turn_loop = TurnLoop::new(self, *cx, &mut turn);
        turn_loop.session_agent = session_agent;
        turn_loop.continue_after(call.step, calls).await
    }

    /// Tells the client how many calls of the step are still open (a `step_finished`).
    async fn report_open_calls(
        &self,
        cx: &Cx<'_>,
        turn_id: &str,
        step: i32,
    ) -> Result<(), EngineError> {
        let open = self
            .store
            .list_step_calls(turn_id, step)
            .await?
            .iter()
            .filter(|c| c.status.is_open())
            .count();
        cx.out
            .emit(RuntimeEvent::StepFinished {
                step: u32::try_from(step).unwrap_or(0),
                pending_calls: u32::try_from(open).unwrap_or(u32::MAX),
            })
            .await?;
        Ok(())
    }

    async fn unknown_call(&self, cx: &Cx<'_>, call_id: &str) -> Result<(), EngineError> {
        cx.out
            .emit(RuntimeEvent::Error {
                message: format!("unknown call_id \"{call_id}\" in this session"),
                code: Some("unknown_call".to_owned()),
            })
            .await?;
        Ok(())
    }

    async fn already_settled(&self, cx: &Cx<'_>, call: &ToolCallRecord) -> Result<(), EngineError> {
        cx.out
            .emit(RuntimeEvent::Notice {
                message: format!(
                    "call {} is already settled ({})",
                    call.call_id,
                    call.status.as_str()
                ),
            })
            .await?;
        Ok(())
    }

    async fn conflict(&self, cx: &Cx<'_>, call: &ToolCallRecord) -> Result<(), EngineError> {
        let message = if !call.requires_approval {
            format!("call {} does not wait for approval", call.call_id)
        } else if let Some(decision) = &call.decision {
            format!(
                "call {} was already decided ({decision}; now {})",
                call.call_id,
                call.status.as_str()
            )
        } else {
            format!(
                "call {} is already settled ({}) and takes no decision",
                call.call_id,
                call.status.as_str()
            )
        };
        cx.out
            .emit(RuntimeEvent::Error {
                message,
                code: Some("conflict".to_owned()),
            })
            .await?;
        Ok(())
    }
}

/// A session's open work as read under its lock: the active turn and the open calls.
pub(crate) struct OpenWork {
    pub(crate) active: Option<Turn>,
    pub(crate) calls: Vec<ToolCallRecord>,
}

/// `calls` with `settled` in place of the call of the same id; `None` when none has it.
fn with_settled(
    mut calls: Vec<ToolCallRecord>,
    settled: &ToolCallRecord,
) -> Option<Vec<ToolCallRecord>> {
    let slot = calls
        .iter_mut()
        .find(|call| call.call_id == settled.call_id)?;
    *slot = settled.clone();
    Some(calls)
}

/// Tells the client about the calls a cancellation settled, then that the turn is cancelled.
async fn announce_cancelled(cx: &Cx<'_>, cancelled: &[ToolCallRecord]) -> Result<(), EngineError> {
    for call in cancelled {
        cx.out.emit(settled_event(call, None)).await?;
    }
    cx.out
        .emit(RuntimeEvent::TurnFinished {
            outcome: TurnOutcome::Cancelled,
        })
        .await?;
    Ok(())
}
