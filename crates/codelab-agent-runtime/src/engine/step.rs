//! One turn's steps: routing to a specialist when needed, the streamed LLM call, committing
//! the reply with its tool calls in one transaction, and deciding what comes after a step.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Instant;

use chrono::Utc;
use codelab_protocol::openai::{ChatCompletionRequest, ChatMessage};
use codelab_protocol::runtime::{RuntimeEvent, TurnOutcome};
use futures_util::StreamExt;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use super::calls::{
    Verdict, check_call, choose_call_id, completion_text, ends_turn, is_usable_id,
    to_chat_messages, wire_arguments, wire_name,
};
use super::{Cx, Engine, EngineError, switched_event};
use crate::agents::AgentKind;
use crate::context;
use crate::hitl;
use crate::llm::{CompletedToolCall, LlmDelta, LlmError};
use crate::metrics;
use crate::model::{
    NewMessage, Role, StepCommit, ToolCallRecord, ToolCallStatus, Turn, TurnStatus, TurnUpdate,
};
use crate::prompts::PromptContext;
use crate::routing;
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
enum StepResult {
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
    fn turn_status(&self) -> TurnStatus {
        match self {
            StepState::Waiting(_) => TurnStatus::AwaitingTools,
            StepState::Complete(_) => TurnStatus::Completed,
            StepState::Continue => TurnStatus::Running,
        }
    }

    /// The assistant messages showing the completion texts.
    fn completion_messages(&self, session_id: &str) -> Vec<NewMessage> {
        let StepState::Complete(texts) = self else {
            return Vec::new();
        };
        texts
            .iter()
            .map(|(agent, text)| NewMessage {
                session_id: session_id.to_owned(),
                role: Role::Assistant,
                content: Some(text.clone()),
                agent: Some(agent.clone()),
                tool_calls: None,
                tool_call_id: None,
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

/// One call of a reply, ready to store.
struct Planned {
    record: ToolCallRecord,
    /// The tool message stored at once (refused and server-side calls).
    tool_message: Option<String>,
    /// A `switch_mode` that changes the agent: (from, to, reason).
    switch: Option<(AgentKind, AgentKind, String)>,
}

impl Engine {
    /// Runs steps until the turn ends, waits for the IDE, or is cancelled.
    pub(crate) async fn run_turn(&self, cx: &Cx<'_>, turn: &mut Turn) -> Result<(), EngineError> {
        self.run_steps(cx, turn, false, Vec::new()).await
    }

    /// Runs steps until the turn ends, waits for the IDE, or is cancelled. While it runs, the
    /// turn is registered for `cancel_turn` (locally and through the database).
    ///
    /// `started`: the next step is already recorded (a new turn is created at step 1), so it
    /// is not written again. `pending`: events stored with the next step's start (one commit
    /// instead of two), or with the turn's end when no step starts.
    pub(crate) async fn run_steps(
        &self,
        cx: &Cx<'_>,
        turn: &mut Turn,
        mut started: bool,
        mut pending: Vec<RuntimeEvent>,
    ) -> Result<(), EngineError> {
        let running = self
            .running
            .start(Arc::clone(&self.store), cx.session_id, &turn.id);
        if turn.cancel_requested_at.is_some() {
            running.token().cancel();
        }
        loop {
            if running.token().is_cancelled() {
                for event in std::mem::take(&mut pending) {
                    cx.out.emit(event).await?;
                }
                return self.stop_cancelled(cx, turn).await;
            }
            if !started {
                let limit = self.limits.max_steps_per_turn;
                if u32::try_from(turn.steps).unwrap_or(u32::MAX) >= limit {
                    pending.push(RuntimeEvent::Error {
                        message: format!("step limit reached ({limit} steps)"),
                        code: Some("step_limit".to_owned()),
                    });
                    return self
                        .finish_turn(cx, turn, TurnStatus::StepLimit, pending)
                        .await;
                }
                // The step is recorded as running before anything of it happens: a process
                // that finds it so after a crash runs it again.
                turn.steps += 1;
                turn.status = TurnStatus::Running;
                let committed = self
                    .store
                    .commit_step(StepCommit {
                        session_id: cx.session_id.to_owned(),
                        turn: Some(TurnUpdate {
                            turn_id: turn.id.clone(),
                            status: TurnStatus::Running,
                            steps: turn.steps,
                            agent: turn.agent.clone(),
                            expect: None,
                        }),
                        events: std::mem::take(&mut pending),
                        ..StepCommit::default()
                    })
                    .await?;
                cx.out.send_all(committed.events).await;
            }
            started = false;
            let agent = self.specialist(cx).await?;
            turn.agent = agent.as_str().to_owned();
            metrics::counter_step();
            match self.llm_step(cx, turn, agent, running.token()).await? {
                StepResult::Done(StepEnd::Continue) => {}
                StepResult::Done(StepEnd::Stop) => return Ok(()),
                StepResult::Failed(error) => {
                    return self
                        .finish_turn(cx, turn, TurnStatus::Failed, vec![error])
                        .await;
                }
                StepResult::Cancelled => return self.stop_cancelled(cx, turn).await,
            }
        }
    }

    /// The agent that takes the next step. A session on the orchestrator (new, or handed back
    /// with `switch_mode`) is routed first: its latest user message is classified, the switch
    /// recorded and announced.
    async fn specialist(&self, cx: &Cx<'_>) -> Result<AgentKind, EngineError> {
        let session = self.session(cx).await?;
        let current =
            AgentKind::parse(&session.current_agent).filter(|k| self.registry.is_registered(*k));
        if let Some(agent) = current.filter(|k| *k != AgentKind::Orchestrator) {
            return Ok(agent);
        }
        let history = self.store.list_messages(cx.session_id).await?;
        let text = history
            .iter()
            .rev()
            .find(|m| m.role == Role::User)
            .and_then(|m| m.content.clone())
            .unwrap_or_default();
        let decision = routing::classify(
            &self.llm,
            self.registry.model_for(AgentKind::Orchestrator),
            &text,
            self.registry.multi_agent(),
            self.limits.routing_timeout,
        )
        .await;
        // The classifier only names agents of this mode; the guard keeps a bad answer from
        // parking the session on an agent that does not exist here.
        let agent = Some(decision.agent)
            .filter(|k| self.registry.is_registered(*k) && *k != AgentKind::Orchestrator)
            .or_else(|| {
                self.registry
                    .specs()
                    .iter()
                    .map(|s| s.kind)
                    .find(|k| *k != AgentKind::Orchestrator)
            })
            .unwrap_or(AgentKind::Coder);
        self.record_switch(
            cx,
            &session.current_agent,
            agent,
            decision.reason.clone(),
            Some(decision.confidence.clone()),
            decision.method.as_str(),
            Vec::new(),
        )
        .await?;
        Ok(agent)
    }

    /// One LLM call by `agent`, its text streamed as it comes, the reply and its tool calls
    /// committed and announced. A failed or cancelled call stores nothing of its answer.
    async fn llm_step(
        &self,
        cx: &Cx<'_>,
        turn: &mut Turn,
        agent: AgentKind,
        cancel: &CancellationToken,
    ) -> Result<StepResult, EngineError> {
        let history = self.store.list_messages(cx.session_id).await?;
        let system = self.prompts.render(
            agent,
            &PromptContext::for_agent(agent, self.registry.multi_agent()),
        )?;
        // Every step is fitted to the budget: the history grows within a turn too.
        let messages = match context::fit_to_budget(
            ChatMessage::text("system", system),
            to_chat_messages(&history),
            self.limits.context_tokens,
        ) {
            Ok(messages) => messages,
            Err(error) => {
                return Ok(StepResult::Failed(RuntimeEvent::Error {
                    message: error.to_string(),
                    code: Some("context_too_large".to_owned()),
                }));
            }
        };
        let tools = tools::definitions_for(agent);
        let request = ChatCompletionRequest {
            model: self.registry.model_for(agent).to_owned(),
            messages,
            tools: (!tools.is_empty()).then_some(tools),
            ..ChatCompletionRequest::default()
        };
        // Identifies this reply in the stream: its deltas and the assistant_message closing it.
        let reply_id = codelab_core::new_id().to_string();
        let started = Instant::now();
        let answer = match self
            .stream_answer(cx, request, &reply_id, agent, started, cancel)
            .await
        {
            Ok(answer) => answer,
            Err(LlmError::Cancelled) => {
                metrics::llm_request(started.elapsed(), false);
                tracing::info!(session = %codelab_core::ids::log_reference(cx.session_id), "turn cancelled mid-step");
                return Ok(StepResult::Cancelled);
            }
            Err(error) => {
                metrics::llm_request(started.elapsed(), false);
                tracing::warn!(session = %codelab_core::ids::log_reference(cx.session_id), agent = agent.as_str(), %error, "LLM step failed");
                return Ok(StepResult::Failed(RuntimeEvent::Error {
                    message: error.to_string(),
                    code: Some("llm_error".to_owned()),
                }));
            }
        };
        metrics::llm_request(started.elapsed(), true);
        let end = self
            .commit_reply(cx, turn, agent, &reply_id, answer)
            .await?;
        Ok(StepResult::Done(end))
    }

    /// Streams the answer, forwarding text as `assistant_delta` events (not stored: the whole
    /// text is, as the `assistant_message` that follows).
    async fn stream_answer(
        &self,
        cx: &Cx<'_>,
        request: ChatCompletionRequest,
        reply_id: &str,
        agent: AgentKind,
        started: Instant,
        cancel: &CancellationToken,
    ) -> Result<Answer, LlmError> {
        // Only `cancel_turn` cancels: a client leaving must not lose the answer. Dropping the
        // stream closes the connection, which cancels the upstream request.
        let mut stream = self.llm.stream(request, cancel.clone()).await?;
        let mut answer = Answer::default();
        let mut calls: BTreeMap<u32, CompletedToolCall> = BTreeMap::new();
        let mut first = true;
        while let Some(delta) = stream.next().await {
            let delta = delta?;
            if first && matches!(delta, LlmDelta::Text(_) | LlmDelta::ToolCallStart { .. }) {
                metrics::llm_ttft(started.elapsed());
                first = false;
            }
            match delta {
                LlmDelta::Text(text) => {
                    answer.content.push_str(&text);
                    cx.out
                        .send_unstored(RuntimeEvent::AssistantDelta {
                            message_id: reply_id.to_owned(),
                            agent: agent.as_str().to_owned(),
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
                LlmDelta::Usage { prompt, completion } => metrics::llm_tokens(prompt, completion),
                LlmDelta::Finish { .. } => {}
            }
        }
        answer.calls = calls.into_values().collect();
        Ok(answer)
    }

    /// Commits the reply in one transaction — the assistant message, its tool calls with
    /// their verdicts, the results of refused and server-side calls, agent switches, the
    /// completion text when the turn ends, and the turn's new status — then announces it.
    async fn commit_reply(
        &self,
        cx: &Cx<'_>,
        turn: &mut Turn,
        agent: AgentKind,
        reply_id: &str,
        answer: Answer,
    ) -> Result<StepEnd, EngineError> {
        let now = Utc::now();
        let cap = usize::try_from(self.limits.max_tool_calls_per_step).unwrap_or(usize::MAX);
        let mut taken_in_reply: HashSet<String> = HashSet::new();
        let mut current = agent;
        let mut planned: Vec<Planned> = Vec::with_capacity(answer.calls.len());
        let mut wire_calls: Vec<Value> = Vec::with_capacity(answer.calls.len());
        let exemptions_allowed = self.exemptions_allowed(cx, agent, &answer).await?;
        for (index, call) in answer.calls.iter().enumerate() {
            let in_session = is_usable_id(&call.id)
                && self.store.call_id_exists(cx.session_id, &call.id).await?;
            let call_id = choose_call_id(&call.id, |id| {
                taken_in_reply.contains(id) || (in_session && id == call.id)
            });
            taken_in_reply.insert(call_id.clone());
            wire_calls.push(json!({
                "id": call_id,
                "type": "function",
                "function": {
                    "name": wire_name(&call.name),
                    "arguments": wire_arguments(&call.arguments),
                },
            }));
            let mut record = ToolCallRecord {
                call_id: call_id.clone(),
                session_id: cx.session_id.to_owned(),
                turn_id: turn.id.clone(),
                step: turn.steps,
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
            let verdict = check_call(
                &self.registry,
                &self.hitl,
                agent,
                exemptions_allowed,
                index,
                cap,
                &call.name,
                &call.arguments,
            );
            match verdict {
                Verdict::Invalid { arguments, error } => {
                    record.arguments = arguments;
                    record.status = ToolCallStatus::Invalid;
                    record.settled_at = Some(now);
                    tool_message = Some(format!("Error: {error}"));
                    record.error = Some(error);
                }
                Verdict::Server { arguments } => {
                    match self.server_tool(&call.name, &arguments, current) {
                        Ok((message, to)) => {
                            if let Some((to, reason)) = to {
                                switch = Some((current, to, reason));
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
            planned.push(Planned {
                record,
                tool_message,
                switch,
            });
        }

        // The reply, its calls, their results, the switches, the turn's new state and the
        // events telling about them: one transaction, then sent.
        let records: Vec<ToolCallRecord> = planned.iter().map(|p| p.record.clone()).collect();
        let state = StepState::of(&records);
        let mut messages = vec![NewMessage {
            session_id: cx.session_id.to_owned(),
            role: Role::Assistant,
            content: (!answer.content.is_empty()).then(|| answer.content.clone()),
            agent: Some(agent.as_str().to_owned()),
            tool_calls: (!wire_calls.is_empty()).then_some(Value::Array(wire_calls)),
            tool_call_id: None,
        }];
        messages.extend(planned.iter().filter_map(|plan| {
            plan.tool_message.as_ref().map(|text| NewMessage {
                session_id: cx.session_id.to_owned(),
                role: Role::Tool,
                content: Some(text.clone()),
                agent: None,
                tool_calls: None,
                tool_call_id: Some(plan.record.call_id.clone()),
            })
        }));
        messages.extend(state.completion_messages(cx.session_id));
        let switches = planned
            .iter()
            .filter_map(|plan| plan.switch.as_ref())
            .map(|(from, to, reason)| {
                self.switch_record(cx, from.as_str(), *to, reason.clone(), None, "tool")
            })
            .collect();
        let mut events = Vec::new();
        if !answer.content.is_empty() {
            events.push(RuntimeEvent::AssistantMessage {
                message_id: reply_id.to_owned(),
                agent: agent.as_str().to_owned(),
                content: answer.content,
            });
        }
        for plan in &planned {
            events.extend(call_events(&plan.record, plan.switch.as_ref()));
        }
        events.extend(step_end_events(turn.steps, &state, true));
        let status = state.turn_status();
        let committed = self
            .store
            .commit_step(StepCommit {
                session_id: cx.session_id.to_owned(),
                new_turn: None,
                title: None,
                messages,
                calls: records,
                switches,
                turn: Some(TurnUpdate {
                    turn_id: turn.id.clone(),
                    status,
                    steps: turn.steps,
                    agent: turn.agent.clone(),
                    expect: Some((TurnStatus::Running, turn.steps)),
                }),
                events,
            })
            .await?;
        turn.status = status;
        for plan in &planned {
            if let Some((_, to, _)) = &plan.switch {
                metrics::routing_decision(to.as_str(), "tool");
            }
            if !plan.record.status.is_open() {
                metrics::tool_call_settled(&plan.record.tool_name, plan.record.status.as_str());
            }
        }
        count_step_end(&state, true);
        cx.out.send_all(committed.events).await;
        Ok(match state {
            StepState::Continue => StepEnd::Continue,
            _ => StepEnd::Stop,
        })
    }

    /// Whether `agent`'s HITL exemptions apply to this reply's calls: only when the user chose
    /// it, so a model cannot reach an exemption with `switch_mode` (`docs/agent-runtime.md`,
    /// "HITL policy file"). The switches are read only when it can matter.
    async fn exemptions_allowed(
        &self,
        cx: &Cx<'_>,
        agent: AgentKind,
        answer: &Answer,
    ) -> Result<bool, EngineError> {
        if answer.calls.is_empty() || self.hitl.exemptions(agent).is_empty() {
            return Ok(true);
        }
        let switches = self.store.list_switches(cx.session_id).await?;
        Ok(hitl::agents_chosen_by_user(&switches).contains(&agent))
    }

    /// Runs a server-side tool: its tool message, and the agent to switch to (with the
    /// reason) for a `switch_mode` that changes it. `current` is the agent at this point of
    /// the reply (an earlier call of the same reply may have switched already).
    fn server_tool(
        &self,
        name: &str,
        arguments: &Value,
        current: AgentKind,
    ) -> Result<(String, Option<(AgentKind, String)>), String> {
        match name {
            "switch_mode" => {
                let mode = arguments.get("mode").and_then(Value::as_str).unwrap_or("");
                let Some(to) = AgentKind::parse(mode).filter(|k| self.registry.is_registered(*k))
                else {
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

    /// What follows step `step` once its calls are settled (or some still wait), decided
    /// from its stored calls: the end of the turn is committed with its completion text, and
    /// the next step runs when the agent goes on. Used after a settlement and by recovery.
    pub(crate) async fn continue_after_step(
        &self,
        cx: &Cx<'_>,
        turn: &mut Turn,
        step: i32,
        calls: Vec<ToolCallRecord>,
    ) -> Result<(), EngineError> {
        let state = StepState::of(&calls);
        match &state {
            StepState::Complete(_) => {
                // The completion text, the turn's end and their events in one transaction:
                // after a crash the text is never stored twice, nor the turn left open.
                let committed = self
                    .store
                    .commit_step(StepCommit {
                        session_id: cx.session_id.to_owned(),
                        messages: state.completion_messages(cx.session_id),
                        turn: Some(TurnUpdate {
                            turn_id: turn.id.clone(),
                            status: TurnStatus::Completed,
                            steps: turn.steps,
                            agent: turn.agent.clone(),
                            expect: Some((turn.status, turn.steps)),
                        }),
                        events: step_end_events(step, &state, false),
                        ..StepCommit::default()
                    })
                    .await?;
                turn.status = TurnStatus::Completed;
                count_step_end(&state, false);
                cx.out.send_all(committed.events).await;
                Ok(())
            }
            StepState::Waiting(_) => {
                for event in step_end_events(step, &state, false) {
                    cx.out.emit(event).await?;
                }
                Ok(())
            }
            StepState::Continue => {
                // `step_finished` is stored with the next step's start.
                self.run_steps(cx, turn, false, step_end_events(step, &state, false))
                    .await
            }
        }
    }
}

/// The events announcing one call of a fresh reply.
fn call_events(
    call: &ToolCallRecord,
    switch: Option<&(AgentKind, AgentKind, String)>,
) -> Vec<RuntimeEvent> {
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
        _ => switch
            .map(|(from, to, reason)| switched_event(from.as_str(), *to, reason, None))
            .into_iter()
            .collect(),
    }
}

/// The events ending step `step`: `step_finished`; the completion texts and
/// `turn_finished{completed}` when the turn ended; `turn_finished{awaiting_tools}` when the
/// step just ran (`fresh`) and waits for the IDE.
fn step_end_events(step: i32, state: &StepState, fresh: bool) -> Vec<RuntimeEvent> {
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
            let mut events: Vec<RuntimeEvent> = texts
                .iter()
                .map(|(agent, text)| RuntimeEvent::AssistantMessage {
                    message_id: codelab_core::new_id().to_string(),
                    agent: agent.clone(),
                    content: text.clone(),
                })
                .collect();
            events.push(finished(0));
            events.push(RuntimeEvent::TurnFinished {
                outcome: TurnOutcome::Completed,
            });
            events
        }
        StepState::Continue => vec![finished(0)],
    }
}

/// Counts the turn outcome a step end announced.
fn count_step_end(state: &StepState, fresh: bool) {
    match state {
        StepState::Waiting(_) if fresh => metrics::turn(TurnStatus::AwaitingTools.as_str()),
        StepState::Complete(_) => metrics::turn(TurnStatus::Completed.as_str()),
        _ => {}
    }
}
