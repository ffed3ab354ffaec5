//! One LLM step of a turn: the request built from the stored history, the answer streamed
//! to the client as it comes, and the reply committed with its tool calls in one transaction.

use codelab_protocol::plans::CREATE_PLAN_TOOL;
use std::collections::{BTreeMap, HashSet};
use std::time::Instant;

use codelab_protocol::openai::{ChatCompletionRequest, ChatMessage};
use codelab_protocol::runtime::{RuntimeEvent, TurnOutcome};
use futures_util::StreamExt;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use super::EngineError;
use super::calls::{
    CallCheck, Verdict, choose_call_id, completion_text, ends_turn, is_usable_id, to_chat_messages,
    wire_arguments, wire_name,
};
use super::plans::{AUTO_APPROVED, PLAN_APPROVAL_REASON, subtask_result};
use super::switch::Switch;
use super::turn::TurnLoop;
use crate::agents::{AgentKind, AgentRegistry};
use crate::context;
use crate::hitl;
use crate::llm::{CompletedToolCall, LlmDelta, LlmError, Meter};
use crate::metrics;
use crate::model::{
    NewMessage, Plan, PlanStatus, PlanWrite, Role, StepCommit, SubtaskStatus, ToolCallRecord,
    ToolCallStatus, TurnStatus, UsagePurpose,
};
use crate::planning;
use crate::prompts::PromptContext;
use crate::tools;

/// What follows a step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StepEnd {
    /// Every call is settled and the agent has not finished: run the next step.
    Continue,
    /// The turn ended or waits for the IDE.
    Stop,
}

/// How an LLM step ended.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum StepResult {
    /// Committed; what follows.
    Done(StepEnd),
    /// The call failed, with the `error` event to send (nothing of the answer is stored).
    Failed(RuntimeEvent),
    /// Someone cancelled the turn mid-step (nothing of the answer is stored).
    Cancelled,
}

/// What a step's calls say about its turn.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum StepState {
    /// This many calls still wait for the IDE or a person.
    Waiting(usize),
    /// The turn is complete (no calls, or the agent finished or asked): the texts of its
    /// completion calls, with their agents, to show as assistant messages.
    Complete(Vec<(String, String)>),
    /// Every call is settled and the agent goes on.
    Continue,
}

impl StepState {
    /// Decided from the step's calls alone.
    pub(crate) fn of(calls: &[ToolCallRecord]) -> StepState {
        let open = calls.iter().filter(|c| c.status.is_open()).count();
        if open > 0 {
            return StepState::Waiting(open);
        }
        if calls.is_empty() || calls.iter().any(ends_turn) {
            return StepState::Complete(
                calls
                    .iter()
                    .filter(|c| ends_turn(c))
                    .filter_map(|c| completion_text(c).map(|text| (c.agent.clone(), text)))
                    .collect(),
            );
        }
        StepState::Continue
    }

    /// The turn's status once the step is in this state.
    pub(super) fn turn_status(&self) -> TurnStatus {
        match self {
            StepState::Waiting(_) => TurnStatus::AwaitingTools,
            StepState::Complete(_) => TurnStatus::Completed,
            StepState::Continue => TurnStatus::Running,
        }
    }

    /// The assistant messages showing the completion texts.
    pub(super) fn completion_messages(&self, session_id: &str) -> Vec<NewMessage> {
        let StepState::Complete(texts) = self else {
            return Vec::new();
        };
        texts
            .iter()
            .map(|(agent, text)| NewMessage {
                agent: Some(agent.clone()),
                ..NewMessage::text(session_id, Role::Assistant, text)
            })
            .collect()
    }
}

/// A streamed answer, accumulated.
#[derive(Debug, Default)]
struct Answer {
    content: String,
    calls: Vec<CompletedToolCall>,
}

/// The reply of one step: its id in the stream (its deltas and the `assistant_message`
/// closing it), the agent answering, and when the LLM call began.
struct Reply {
    id: String,
    agent: AgentKind,
    started: Instant,
}

/// One call of a reply, ready to store.
struct Planned {
    record: ToolCallRecord,
    /// The tool message stored at once (refused and server-side calls).
    tool_message: Option<String>,
    /// A `switch_mode` that changes the agent.
    switch: Option<Switch>,
    /// The plan a valid `create_plan` proposes.
    plan: Option<Plan>,
}

/// The calls of a reply, ready to store.
#[derive(Default)]
struct PlannedCalls {
    planned: Vec<Planned>,
    /// The calls as the stored assistant message lists them (OpenAI's wire shape).
    wire: Vec<Value>,
}

impl TurnLoop<'_> {
    /// One LLM call by `agent`, its text streamed as it comes, the reply and its tool calls
    /// committed and announced. A failed or cancelled call stores nothing of its answer.
    pub(super) async fn llm_step(
        &mut self,
        agent: AgentKind,
        cancel: &CancellationToken,
    ) -> Result<StepResult, EngineError> {
        let engine = self.engine;
        let history = engine.store.list_messages(self.cx.session_id).await?;
        let system = engine.prompts.render(
            agent,
            &PromptContext {
                plan_required: self.turn.plan_required && self.subtask.is_none(),
                ..PromptContext::for_agent(agent, engine.registry.multi_agent())
            },
        )?;
        // A subtask of a plan sees its own focused context: the plan, its task and its
        // dependencies' results, then only what it did itself (`planning::subtask_prompt`).
        let conversation = match &self.subtask {
            Some(run) => {
                let subtask = run.subtask();
                let from = subtask.context_from.unwrap_or(i64::MAX);
                let mut messages = vec![ChatMessage::text(
                    "user",
                    planning::subtask_prompt(&run.plan, subtask),
                )];
                let own: Vec<_> = history.into_iter().filter(|m| m.seq > from).collect();
                messages.extend(to_chat_messages(&own));
                messages
            }
            None => to_chat_messages(&history),
        };
        // Every step is fitted to the budget: the history grows within a turn too.
        let messages = match context::fit_to_budget(
            ChatMessage::text("system", system),
            conversation,
            engine.limits.context_tokens,
        ) {
            Ok(messages) => messages,
            Err(error) => {
                return Ok(StepResult::Failed(RuntimeEvent::Error {
                    message: error.to_string(),
                    code: Some("context_too_large".to_owned()),
                }));
            }
        };
        let mut tools = tools::definitions_for(agent);
        if self.subtask.is_some() {
            // A subtask's agent is the plan's choice: it does not hand the work to another.
            tools.retain(|tool| tool.function.name != "switch_mode");
        }
        let request = ChatCompletionRequest {
            model: engine.registry.model_for(agent).to_owned(),
            messages,
            tools: (!tools.is_empty()).then_some(tools),
            ..ChatCompletionRequest::default()
        };
        let mut meter = Meter::start(&request.model);
        let reply = Reply {
            id: codelab_core::new_id().to_string(),
            agent,
            started: meter.started(),
        };
        let result = self
            .stream_answer(request, &reply, cancel, &mut meter)
            .await;
        self.meter(meter.finish(&result), agent, UsagePurpose::Step);
        let answer = match result {
            Ok(answer) => answer,
            Err(LlmError::Cancelled) => {
                metrics::llm_request(reply.started.elapsed(), false);
                tracing::info!(session = %codelab_core::ids::log_reference(self.cx.session_id), "turn cancelled mid-step");
                return Ok(StepResult::Cancelled);
            }
            Err(error) => {
                metrics::llm_request(reply.started.elapsed(), false);
                tracing::warn!(session = %codelab_core::ids::log_reference(self.cx.session_id), agent = agent.as_str(), %error, "LLM step failed");
                return Ok(StepResult::Failed(RuntimeEvent::Error {
                    message: error.to_string(),
                    code: Some("llm_error".to_owned()),
                }));
            }
        };
        metrics::llm_request(reply.started.elapsed(), true);
        let end = self.commit_reply(&reply, answer).await?;
        Ok(StepResult::Done(end))
    }

    /// Streams the answer, forwarding text as `assistant_delta` events (not stored: the whole
    /// text is, as the `assistant_message` that follows).
    async fn stream_answer(
        &self,
        request: ChatCompletionRequest,
        reply: &Reply,
        cancel: &CancellationToken,
        meter: &mut Meter,
    ) -> Result<Answer, LlmError> {
        // Only `cancel_turn` cancels: a client leaving must not lose the answer. Dropping the
        // stream closes the connection, which cancels the upstream request.
        let mut stream = self.engine.llm.stream(request, cancel.clone()).await?;
        meter.opened(&stream);
        let mut answer = Answer::default();
        let mut calls: BTreeMap<u32, CompletedToolCall> = BTreeMap::new();
        while let Some(delta) = stream.next().await {
            let delta = delta?;
            if meter.saw(&delta) {
                metrics::llm_ttft(reply.started.elapsed());
            }
            match delta {
                LlmDelta::Text(text) => {
                    answer.content.push_str(&text);
                    self.cx
                        .out
                        .send_unstored(RuntimeEvent::AssistantDelta {
                            message_id: reply.id.clone(),
                            agent: reply.agent.as_str().to_owned(),
                            delta: text,
                        })
                        .await;
                }
                LlmDelta::ToolCallStart { index, id, name } => {
                    let call = calls.entry(index).or_insert_with(|| CompletedToolCall {
                        index,
                        id: String::new(),
                        name: String::new(),
                        arguments: String::new(),
                    });
                    call.id = id;
                    call.name = name;
                }
                LlmDelta::ToolCallArgs { index, fragment } => {
                    calls
                        .entry(index)
                        .or_insert_with(|| CompletedToolCall {
                            index,
                            id: String::new(),
                            name: String::new(),
                            arguments: String::new(),
                        })
                        .arguments
                        .push_str(&fragment);
                }
                // Counted with the call's usage record.
                LlmDelta::Usage(_) | LlmDelta::Finish { .. } => {}
            }
        }
        answer.calls = calls.into_values().collect();
        Ok(answer)
    }

    /// Commits the reply in one transaction — the assistant message, its tool calls with
    /// their verdicts, the results of refused and server-side calls, agent switches, the
    /// completion text when the turn ends, and the turn's new status — then announces it.
    async fn commit_reply(
        &mut self,
        reply: &Reply,
        answer: Answer,
    ) -> Result<StepEnd, EngineError> {
        let session_id = self.cx.session_id;
        let agent = reply.agent;
        let PlannedCalls { planned, wire } = self.plan_calls(agent, &answer).await?;
        let records: Vec<ToolCallRecord> = planned.iter().map(|p| p.record.clone()).collect();
        if records
            .iter()
            .any(|call| call.status == ToolCallStatus::PendingApproval)
        {
            self.cx.out.note_approvals_changed();
        }
        let state = StepState::of(&records);
        // A plan proposed in this reply; auto-approved, it becomes the turn's to run.
        let proposed: Option<&Plan> = planned.iter().find_map(|p| p.plan.as_ref());
        let mut plan_writes: Vec<PlanWrite> = Vec::new();
        let mut plan_events: Vec<RuntimeEvent> = Vec::new();
        if let Some(plan) = proposed {
            let mut plan = plan.clone();
            if self.engine.limits.plan_auto_approve {
                plan.status = PlanStatus::Approved;
                self.turn.plan_id = Some(plan.id.clone());
                plan_events.push(RuntimeEvent::PlanUpdate {
                    plan_id: plan.id.clone(),
                    plan: Box::new(planning::view(&plan)),
                });
            } else {
                let view = planning::view(&plan);
                plan_events.push(RuntimeEvent::PlanApprovalRequired {
                    plan_id: plan.id.clone(),
                    approval_request_id: plan.call_id.clone(),
                    plan_summary: view.summary_view(),
                    plan: Box::new(view),
                });
            }
            plan_writes.push(PlanWrite::Propose(plan));
        }
        // A subtask whose agent finished: recorded, and the plan goes on within this turn.
        let finished_subtask = match (&state, &self.subtask) {
            (StepState::Complete(texts), Some(run)) => {
                let result = subtask_result(texts, &answer.content);
                Some(run.finish(SubtaskStatus::Completed, Some(result), None))
            }
            _ => None,
        };
        let mut messages = vec![NewMessage {
            session_id: session_id.to_owned(),
            role: Role::Assistant,
            content: (!answer.content.is_empty()).then(|| answer.content.clone()),
            agent: Some(agent.as_str().to_owned()),
            tool_calls: (!wire.is_empty()).then_some(Value::Array(wire)),
            tool_call_id: None,
        }];
        messages.extend(planned.iter().filter_map(|plan| {
            plan.tool_message
                .as_ref()
                .map(|text| NewMessage::tool_result(session_id, &plan.record.call_id, text))
        }));
        messages.extend(state.completion_messages(session_id));
        let now = self.engine.now();
        let switches = planned
            .iter()
            .filter_map(|plan| plan.switch.as_ref())
            .map(|switch| switch.record(session_id, now))
            .collect();
        let mut events = Vec::new();
        if !answer.content.is_empty() {
            events.push(RuntimeEvent::AssistantMessage {
                message_id: reply.id.clone(),
                agent: agent.as_str().to_owned(),
                content: answer.content,
            });
        }
        for plan in &planned {
            events.extend(call_events(&plan.record, plan.switch.as_ref()));
        }
        events.extend(plan_events);
        let status = match &finished_subtask {
            Some((write, event)) => {
                plan_writes.push(write.clone());
                events.push(event.clone());
                events.extend(step_end_events(self.turn.steps, &StepState::Continue, true));
                TurnStatus::Running
            }
            None => {
                events.extend(step_end_events(self.turn.steps, &state, true));
                state.turn_status()
            }
        };
        let committed = self
            .commit(StepCommit {
                session_id: session_id.to_owned(),
                new_turn: None,
                title: None,
                messages,
                calls: records,
                switches,
                turn: Some(
                    self.turn
                        .update_to(status, Some((TurnStatus::Running, self.turn.steps))),
                ),
                plans: plan_writes,
                events,
                // The call that made this reply, added by `commit`.
                usage: Vec::new(),
            })
            .await?;
        self.turn.status = status;
        if finished_subtask.is_some() {
            // The next iteration of the plan's loop reads the plan again.
            self.subtask = None;
        }
        if let Some(last) = planned.iter().rev().find_map(|plan| plan.switch.as_ref()) {
            self.session_agent = Some(last.to.as_str().to_owned());
        }
        for plan in &planned {
            if let Some(switch) = &plan.switch {
                metrics::routing_decision(switch.to.as_str(), switch.method);
            }
            if !plan.record.status.is_open() {
                metrics::tool_call_settled(&plan.record.tool_name, plan.record.status.as_str());
            }
        }
        if finished_subtask.is_none() {
            count_step_end(&state, true);
        }
        self.cx.out.send_all(committed.events).await;
        Ok(match state {
            StepState::Continue => StepEnd::Continue,
            StepState::Complete(_) if finished_subtask.is_some() => StepEnd::Continue,
            _ => StepEnd::Stop,
        })
    }

    /// The reply's calls with the ids the IDE will see, checked, and settled at once when
    /// refused or server-side (a `switch_mode` changes the agent for the calls after it).
    async fn plan_calls(
        &self,
        agent: AgentKind,
        answer: &Answer,
    ) -> Result<PlannedCalls, EngineError> {
        let engine = self.engine;
        let session_id = self.cx.session_id;
        let now = engine.now();
        let check = CallCheck {
            registry: &engine.registry,
            hitl: &engine.hitl,
            agent,
            exemptions_allowed: self.exemptions_allowed(agent, answer).await?,
            cap: usize::try_from(engine.limits.max_tool_calls_per_step).unwrap_or(usize::MAX),
        };
        let mut taken_in_reply: HashSet<String> = HashSet::new();
        let mut current = agent;
        let mut calls = PlannedCalls {
            planned: Vec::with_capacity(answer.calls.len()),
            wire: Vec::with_capacity(answer.calls.len()),
        };
        for (index, call) in answer.calls.iter().enumerate() {
            let in_session =
                is_usable_id(&call.id) && engine.store.call_id_exists(session_id, &call.id).await?;
            let call_id = choose_call_id(&call.id, |id| {
                taken_in_reply.contains(id) || (in_session && id == call.id)
            });
            taken_in_reply.insert(call_id.clone());
            calls.wire.push(json!({
                "id": call_id,
                "type": "function",
                "function": {
                    "name": wire_name(&call.name),
                    "arguments": wire_arguments(&call.arguments),
                },
            }));
            let mut record = ToolCallRecord {
                call_id: call_id.clone(),
                session_id: session_id.to_owned(),
                turn_id: self.turn.id.clone(),
                step: self.turn.steps,
                provider_call_id: (!call.id.is_empty() && call.id != call_id)
                    .then(|| call.id.clone()),
                tool_name: call.name.clone(),
                arguments: Value::Null,
                requires_approval: false,
                approval_reason: None,
                agent: agent.as_str().to_owned(),
                status: ToolCallStatus::Invalid,
                decision: None,
                feedback: None,
                modified_arguments: None,
                result: None,
                error: None,
                created_at: now,
                settled_at: None,
            };
            let mut tool_message = None;
            let mut switch = None;
            let mut plan = None;
            match check.verdict(index, &call.name, &call.arguments) {
                Verdict::Invalid { arguments, error } => {
                    record.arguments = arguments;
                    record.status = ToolCallStatus::Invalid;
                    record.settled_at = Some(now);
                    tool_message = Some(format!("Error: {error}"));
                    record.error = Some(error);
                }
                Verdict::Server { arguments } if call.name == CREATE_PLAN_TOOL => {
                    let proposal = if calls.planned.iter().any(|p| p.plan.is_some()) {
                        Err("one plan per reply: this plan was not made".to_owned())
                    } else {
                        self.propose_plan(&arguments, &call_id).await?
                    };
                    match proposal {
                        Ok(proposed) => {
                            if engine.limits.plan_auto_approve {
                                record.status = ToolCallStatus::Executed;
                                record.decision = Some("approve".to_owned());
                                record.settled_at = Some(now);
                                let message = AUTO_APPROVED.to_owned();
                                record.result = Some(Value::String(message.clone()));
                                tool_message = Some(message);
                            } else {
                                record.status = ToolCallStatus::PendingApproval;
                                record.requires_approval = true;
                                record.approval_reason = Some(PLAN_APPROVAL_REASON.to_owned());
                            }
                            plan = Some(proposed);
                        }
                        Err(error) => {
                            record.status = ToolCallStatus::Invalid;
                            record.settled_at = Some(now);
                            tool_message = Some(format!("Error: {error}"));
                            record.error = Some(error);
                        }
                    }
                    record.arguments = arguments;
                }
                Verdict::Server { arguments } => {
                    let in_subtask = self.subtask.is_some();
                    match server_tool(&engine.registry, &call.name, &arguments, current).and_then(
                        |done| match done {
                            (_, Some(_)) if in_subtask => Err(
                                "switch_mode is not available inside a plan's subtask: finish it \
                                 with attempt_completion"
                                    .to_owned(),
                            ),
                            done => Ok(done),
                        },
                    ) {
                        Ok((message, to)) => {
                            if let Some((to, reason)) = to {
                                switch = Some(Switch {
                                    from: current.as_str().to_owned(),
                                    to,
                                    reason,
                                    confidence: None,
                                    method: "tool",
                                    complexity: None,
                                });
                                current = to;
                            }
                            record.status = ToolCallStatus::Executed;
                            record.result = Some(Value::String(message.clone()));
                            tool_message = Some(message);
                        }
                        Err(error) => {
                            record.status = ToolCallStatus::Invalid;
                            tool_message = Some(format!("Error: {error}"));
                            record.error = Some(error);
                        }
                    }
                    record.arguments = arguments;
                    record.settled_at = Some(now);
                }
                Verdict::Ide {
                    arguments,
                    requires_approval,
                    reason,
                } => {
                    record.arguments = arguments;
                    record.requires_approval = requires_approval;
                    record.approval_reason = reason;
                    record.status = if requires_approval {
                        ToolCallStatus::PendingApproval
                    } else {
                        ToolCallStatus::AwaitingResult
                    };
                }
            }
            calls.planned.push(Planned {
                record,
                tool_message,
                switch,
                plan,
            });
        }
        Ok(calls)
    }

    /// Whether `agent`'s HITL exemptions apply to this reply's calls: only when the user chose
    /// it, so a model cannot reach an exemption with `switch_mode` (`docs/agent-runtime.md`,
    /// "HITL policy file"). The switches are read only when it can matter.
    async fn exemptions_allowed(
        &self,
        agent: AgentKind,
        answer: &Answer,
    ) -> Result<bool, EngineError> {
        let engine = self.engine;
        if answer.calls.is_empty() || engine.hitl.exemptions(agent).is_empty() {
            return Ok(true);
        }
        let switches = engine.store.list_switches(self.cx.session_id).await?;
        Ok(hitl::agents_chosen_by_user(&switches).contains(&agent))
    }
}

/// Runs a server-side tool: its tool message, and the agent to switch to (with the
/// reason) for a `switch_mode` that changes it. `current` is the agent at this point of
/// the reply (an earlier call of the same reply may have switched already).
fn server_tool(
    registry: &AgentRegistry,
    name: &str,
    arguments: &Value,
    current: AgentKind,
) -> Result<(String, Option<(AgentKind, String)>), String> {
    match name {
        "switch_mode" => {
            let mode = arguments.get("mode").and_then(Value::as_str).unwrap_or("");
            let Some(to) = AgentKind::parse(mode).filter(|k| registry.is_registered(*k)) else {
                return Err(format!("the agent \"{mode}\" is not available"));
            };
            if to == current {
                return Ok((
                    format!("You are already the {to} agent; go on with the task"),
                    None,
                ));
            }
            let reason = arguments
                .get("reason")
                .and_then(Value::as_str)
                .filter(|r| !r.trim().is_empty())
                .unwrap_or("Agent requested switch")
                .to_owned();
            Ok((format!("Switched to {to} agent"), Some((to, reason))))
        }
        "attempt_completion" => Ok(("completed".to_owned(), None)),
        "ask_followup_question" => Ok((
            "The question was shown to the user; their answer will come as the next user \
             message"
                .to_owned(),
            None,
        )),
        other => Err(format!("{other} is not a server-side tool")),
    }
}

/// The events announcing one call of a fresh reply.
fn call_events(call: &ToolCallRecord, switch: Option<&Switch>) -> Vec<RuntimeEvent> {
    if call.tool_name == CREATE_PLAN_TOOL && call.status != ToolCallStatus::Invalid {
        // Told by the plan's own events: no client runs or approves this call as a tool.
        return Vec::new();
    }
    let tool_call = |requires_approval: bool| RuntimeEvent::ToolCall {
        call_id: call.call_id.clone(),
        tool_name: call.tool_name.clone(),
        arguments: call.arguments.clone(),
        requires_approval,
        approval_reason: requires_approval
            .then(|| call.approval_reason.clone())
            .flatten(),
        agent: call.agent.clone(),
    };
    match call.status {
        ToolCallStatus::Invalid => vec![super::settled_event(call, call.error.clone())],
        ToolCallStatus::PendingApproval => vec![
            tool_call(true),
            RuntimeEvent::ApprovalRequired {
                call_id: call.call_id.clone(),
                tool_name: call.tool_name.clone(),
                arguments: call.arguments.clone(),
                reason: call.approval_reason.clone().unwrap_or_default(),
            },
        ],
        ToolCallStatus::AwaitingResult => vec![tool_call(false)],
        _ => switch.map(Switch::event).into_iter().collect(),
    }
}

/// The events ending step `step`: `step_finished`; the completion texts and
/// `turn_finished{completed}` when the turn ended; `turn_finished{awaiting_tools}` when the
/// step just ran (`fresh`) and waits for the IDE.
pub(super) fn step_end_events(step: i32, state: &StepState, fresh: bool) -> Vec<RuntimeEvent> {
    let step = u32::try_from(step).unwrap_or(0);
    let finished = |pending: usize| RuntimeEvent::StepFinished {
        step,
        pending_calls: u32::try_from(pending).unwrap_or(u32::MAX),
    };
    match state {
        StepState::Waiting(open) => {
            let mut events = vec![finished(*open)];
            if fresh {
                events.push(RuntimeEvent::TurnFinished {
                    outcome: TurnOutcome::AwaitingTools,
                });
            }
            events
        }
        StepState::Complete(texts) => {
            let mut events = completion_events(texts);
            events.push(finished(0));
            events.push(RuntimeEvent::TurnFinished {
                outcome: TurnOutcome::Completed,
            });
            events
        }
        StepState::Continue => vec![finished(0)],
    }
}

/// The `assistant_message`s showing completion texts (agent, text).
pub(super) fn completion_events(texts: &[(String, String)]) -> Vec<RuntimeEvent> {
    texts
        .iter()
        .map(|(agent, text)| RuntimeEvent::AssistantMessage {
            message_id: codelab_core::new_id().to_string(),
            agent: agent.clone(),
            content: text.clone(),
        })
        .collect()
}

/// Counts the turn outcome a step end announced.
pub(super) fn count_step_end(state: &StepState, fresh: bool) {
    match state {
        StepState::Waiting(_) if fresh => metrics::turn(TurnStatus::AwaitingTools.as_str()),
        StepState::Complete(_) => metrics::turn(TurnStatus::Completed.as_str()),
        _ => {}
    }
}
