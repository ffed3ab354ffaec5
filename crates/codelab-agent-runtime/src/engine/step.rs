//! One turn's steps: routing to a specialist when needed, the streamed LLM call, storing the
//! reply and its tool calls, and deciding what comes after a step.

use std::collections::{BTreeMap, HashSet};
use std::time::Instant;

use chrono::Utc;
use codelab_protocol::openai::{ChatCompletionRequest, ChatMessage};
use codelab_protocol::runtime::RuntimeEvent;
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
use crate::llm::{CompletedToolCall, LlmDelta, LlmError};
use crate::metrics;
use crate::model::{NewMessage, Role, ToolCallRecord, ToolCallStatus, Turn, TurnStatus};
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
    /// Runs steps until the turn ends or waits for the IDE.
    pub(crate) async fn run_turn(&self, cx: &Cx<'_>, turn: &mut Turn) -> Result<(), EngineError> {
        loop {
            let agent = self.specialist(cx).await?;
            let limit = self.limits.max_steps_per_turn;
            if u32::try_from(turn.steps).unwrap_or(u32::MAX) >= limit {
                cx.out
                    .emit(RuntimeEvent::Error {
                        message: format!("step limit reached ({limit} steps)"),
                        code: Some("step_limit".to_owned()),
                    })
                    .await?;
                return self.finish_turn(cx, turn, TurnStatus::StepLimit).await;
            }
            turn.steps += 1;
            turn.agent = agent.as_str().to_owned();
            turn.status = TurnStatus::Running;
            self.store
                .update_turn(&turn.id, TurnStatus::Running, turn.steps, &turn.agent)
                .await?;
            metrics::counter_step();
            if !self.llm_step(cx, turn, agent).await? {
                return self.finish_turn(cx, turn, TurnStatus::Failed).await;
            }
            match self.finish_step(cx, turn, turn.steps, true).await? {
                StepEnd::Continue => {}
                StepEnd::Stop => return Ok(()),
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
        )
        .await?;
        cx.out
            .emit(switched_event(
                &session.current_agent,
                agent,
                &decision.reason,
                Some(&decision.confidence),
            ))
            .await?;
        Ok(agent)
    }

    /// One LLM call by `agent`, its text streamed as it comes, the reply and its tool calls
    /// stored and announced. `false` when the call failed (the `error` event is sent; nothing
    /// of the failed answer is stored).
    async fn llm_step(
        &self,
        cx: &Cx<'_>,
        turn: &Turn,
        agent: AgentKind,
    ) -> Result<bool, EngineError> {
        let history = self.store.list_messages(cx.session_id).await?;
        let system = self.prompts.render(
            agent,
            &PromptContext::for_agent(agent, self.registry.multi_agent()),
        )?;
        let messages = match context::fit_to_budget(
            ChatMessage::text("system", system),
            to_chat_messages(&history),
            self.limits.context_tokens,
        ) {
            Ok(messages) => messages,
            Err(error) => {
                cx.out
                    .emit(RuntimeEvent::Error {
                        message: error.to_string(),
                        code: Some("context_too_large".to_owned()),
                    })
                    .await?;
                return Ok(false);
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
            .stream_answer(cx, request, &reply_id, agent, started)
            .await
        {
            Ok(answer) => answer,
            Err(error) => {
                metrics::llm_request(started.elapsed(), false);
                tracing::warn!(session_id = %cx.session_id, agent = agent.as_str(), %error, "LLM step failed");
                cx.out
                    .emit(RuntimeEvent::Error {
                        message: error.to_string(),
                        code: Some("llm_error".to_owned()),
                    })
                    .await?;
                return Ok(false);
            }
        };
        metrics::llm_request(started.elapsed(), true);
        self.store_reply(cx, turn, agent, &reply_id, answer).await?;
        Ok(true)
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
    ) -> Result<Answer, LlmError> {
        // Never cancelled in part 1: a client leaving must not lose the answer.
        let mut stream = self.llm.stream(request, CancellationToken::new()).await?;
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

    /// Stores the reply as one assistant message, its tool calls with their verdicts, the
    /// results of refused and server-side calls, and agent switches; then announces them.
    async fn store_reply(
        &self,
        cx: &Cx<'_>,
        turn: &Turn,
        agent: AgentKind,
        reply_id: &str,
        answer: Answer,
    ) -> Result<(), EngineError> {
        let now = Utc::now();
        let cap = usize::try_from(self.limits.max_tool_calls_per_step).unwrap_or(usize::MAX);
        let mut taken_in_reply: HashSet<String> = HashSet::new();
        let mut current = agent;
        let mut planned: Vec<Planned> = Vec::with_capacity(answer.calls.len());
        let mut wire_calls: Vec<Value> = Vec::with_capacity(answer.calls.len());
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

        // Store everything first.
        self.store
            .append_message(NewMessage {
                session_id: cx.session_id.to_owned(),
                role: Role::Assistant,
                content: (!answer.content.is_empty()).then(|| answer.content.clone()),
                agent: Some(agent.as_str().to_owned()),
                tool_calls: (!wire_calls.is_empty()).then_some(Value::Array(wire_calls)),
                tool_call_id: None,
            })
            .await?;
        self.store
            .insert_tool_calls(planned.iter().map(|p| p.record.clone()).collect())
            .await?;
        for plan in &planned {
            if let Some(text) = &plan.tool_message {
                self.append_tool_message(cx, &plan.record.call_id, text.clone())
                    .await?;
            }
            if let Some((from, to, reason)) = &plan.switch {
                self.record_switch(cx, from.as_str(), *to, reason.clone(), None, "tool")
                    .await?;
            }
        }

        // Then tell.
        if !answer.content.is_empty() {
            cx.out
                .emit(RuntimeEvent::AssistantMessage {
                    message_id: reply_id.to_owned(),
                    agent: agent.as_str().to_owned(),
                    content: answer.content,
                })
                .await?;
        }
        for plan in planned {
            let call = plan.record;
            match call.status {
                ToolCallStatus::Invalid => {
                    metrics::tool_call_settled(&call.tool_name, "invalid");
                    let summary = call.error.clone();
                    cx.out.emit(super::settled_event(&call, summary)).await?;
                }
                ToolCallStatus::PendingApproval => {
                    cx.out
                        .emit(RuntimeEvent::ToolCall {
                            call_id: call.call_id.clone(),
                            tool_name: call.tool_name.clone(),
                            arguments: call.arguments.clone(),
                            requires_approval: true,
                            approval_reason: call.approval_reason.clone(),
                            agent: call.agent.clone(),
                        })
                        .await?;
                    cx.out
                        .emit(RuntimeEvent::ApprovalRequired {
                            call_id: call.call_id,
                            tool_name: call.tool_name,
                            arguments: call.arguments,
                            reason: call.approval_reason.unwrap_or_default(),
                        })
                        .await?;
                }
                ToolCallStatus::AwaitingResult => {
                    cx.out
                        .emit(RuntimeEvent::ToolCall {
                            call_id: call.call_id,
                            tool_name: call.tool_name,
                            arguments: call.arguments,
                            requires_approval: false,
                            approval_reason: None,
                            agent: call.agent,
                        })
                        .await?;
                }
                _ => {
                    metrics::tool_call_settled(&call.tool_name, call.status.as_str());
                    if let Some((from, to, reason)) = plan.switch {
                        cx.out
                            .emit(switched_event(from.as_str(), to, &reason, None))
                            .await?;
                    }
                }
            }
        }
        Ok(())
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

    /// Stores a `tool` message answering `call_id`.
    pub(crate) async fn append_tool_message(
        &self,
        cx: &Cx<'_>,
        call_id: &str,
        content: String,
    ) -> Result<(), EngineError> {
        self.store
            .append_message(NewMessage {
                session_id: cx.session_id.to_owned(),
                role: Role::Tool,
                content: Some(content),
                agent: None,
                tool_calls: None,
                tool_call_id: Some(call_id.to_owned()),
            })
            .await?;
        Ok(())
    }

    /// What follows step `step`, decided from its stored calls alone: open calls → wait
    /// (`fresh`: this request ran the step, so the turn is announced as awaiting tools);
    /// finished by `attempt_completion`/`ask_followup_question`, or no calls → the turn is
    /// complete (the completion's text is stored and sent now, after every result of the
    /// step, so the history stays valid for providers); otherwise the next step.
    pub(crate) async fn finish_step(
        &self,
        cx: &Cx<'_>,
        turn: &mut Turn,
        step: i32,
        fresh: bool,
    ) -> Result<StepEnd, EngineError> {
        let calls = self.store.list_step_calls(&turn.id, step).await?;
        let step_number = u32::try_from(step).unwrap_or(0);
        let open = calls.iter().filter(|c| c.status.is_open()).count();
        if open > 0 {
            cx.out
                .emit(RuntimeEvent::StepFinished {
                    step: step_number,
                    pending_calls: u32::try_from(open).unwrap_or(u32::MAX),
                })
                .await?;
            if fresh {
                self.finish_turn(cx, turn, TurnStatus::AwaitingTools)
                    .await?;
            }
            return Ok(StepEnd::Stop);
        }
        let finished_by_tool = calls.iter().any(ends_turn);
        if finished_by_tool || calls.is_empty() {
            for call in calls.iter().filter(|c| ends_turn(c)) {
                let Some(text) = completion_text(call) else {
                    continue;
                };
                let message = self
                    .store
                    .append_message(NewMessage {
                        session_id: cx.session_id.to_owned(),
                        role: Role::Assistant,
                        content: Some(text.clone()),
                        agent: Some(call.agent.clone()),
                        tool_calls: None,
                        tool_call_id: None,
                    })
                    .await?;
                cx.out
                    .emit(RuntimeEvent::AssistantMessage {
                        message_id: message.id,
                        agent: call.agent.clone(),
                        content: text,
                    })
                    .await?;
            }
            cx.out
                .emit(RuntimeEvent::StepFinished {
                    step: step_number,
                    pending_calls: 0,
                })
                .await?;
            self.finish_turn(cx, turn, TurnStatus::Completed).await?;
            return Ok(StepEnd::Stop);
        }
        cx.out
            .emit(RuntimeEvent::StepFinished {
                step: step_number,
                pending_calls: 0,
            })
            .await?;
        Ok(StepEnd::Continue)
    }
}
