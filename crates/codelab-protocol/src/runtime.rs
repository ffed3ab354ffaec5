//! Events of the agent runtime, streamed to the gateway as SSE (`data: <json>` per event).
//!
//! This is our own event model (the original relayed IDE-shaped chunks). The gateway renders it
//! for each client profile: whole messages for the Flutter IDE, token deltas and approval frames
//! for protocol-2 clients.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::plans::{PlanSummary, PlanView, SubtaskStatus};

/// How a turn ended (or paused).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TurnOutcome {
    /// The agent answered without further tool calls.
    Completed,
    /// The turn waits for tool results or decisions from the IDE.
    AwaitingTools,
    /// Stopped by `cancel_turn`.
    Cancelled,
    /// Stopped by the steps-per-turn cap.
    StepLimit,
    /// Stopped by an error (the `error` event before it says which).
    Failed,
}

impl TurnOutcome {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            TurnOutcome::Completed => "completed",
            TurnOutcome::AwaitingTools => "awaiting_tools",
            TurnOutcome::Cancelled => "cancelled",
            TurnOutcome::StepLimit => "step_limit",
            TurnOutcome::Failed => "failed",
        }
    }
}

/// One event of a runtime stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum RuntimeEvent {
    /// First event of every `user_message` stream: the session and its current agent.
    SessionInfo {
        session_id: String,
        current_agent: String,
    },
    /// The session's agent changed.
    AgentSwitched {
        #[serde(default)]
        from_agent: Option<String>,
        to_agent: String,
        reason: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        confidence: Option<String>,
    },
    /// A piece of assistant text, as the model produced it.
    AssistantDelta {
        message_id: String,
        agent: String,
        delta: String,
    },
    /// A complete assistant message (stored before it is sent).
    AssistantMessage {
        message_id: String,
        agent: String,
        content: String,
    },
    /// A tool call the IDE must run (after a human decision when `requires_approval`).
    ToolCall {
        call_id: String,
        tool_name: String,
        arguments: Value,
        requires_approval: bool,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        approval_reason: Option<String>,
        agent: String,
    },
    /// A tool call waits for a human decision (`hitl_decision`, or a Flutter-style `tool_result`).
    ApprovalRequired {
        call_id: String,
        tool_name: String,
        arguments: Value,
        reason: String,
    },
    /// A tool call was settled (result, refusal, decision, cancellation).
    ToolSettled {
        call_id: String,
        tool_name: String,
        /// `succeeded`, `failed`, `rejected`, `cancelled`, `invalid`.
        outcome: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        summary: Option<String>,
    },
    /// One LLM step ended; `pending_calls` tool calls are outstanding.
    StepFinished { step: u32, pending_calls: u32 },
    /// The turn ended or paused.
    TurnFinished { outcome: TurnOutcome },
    /// A plan waits for a person's decision (`plan_decision`, or REST).
    PlanApprovalRequired {
        plan_id: String,
        /// Also names the plan in a `plan_decision`.
        approval_request_id: String,
        plan_summary: PlanSummary,
        /// Boxed: every event would otherwise be the size of a whole plan.
        plan: Box<PlanView>,
    },
    /// The whole plan, after anything in it changed but a subtask's status.
    PlanUpdate {
        plan_id: String,
        plan: Box<PlanView>,
    },
    /// A subtask's status changed; `result` once it finished (or why it failed).
    PlanProgress {
        plan_id: String,
        subtask_id: u32,
        status: SubtaskStatus,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        result: Option<String>,
    },
    /// The plan's run ended (`completed`, `failed`, `cancelled`); `summary` is also stored as
    /// the assistant message that closes it.
    ExecutionCompleted {
        plan_id: String,
        status: String,
        summary: String,
    },
    /// Information that is not an error (e.g. a repeated decision changed nothing).
    Notice { message: String },
    /// Something the user should act on that stopped nothing yet; `code` names what
    /// (`budget_warning`: a day's or a month's budget is 80% used, docs/usage.md).
    Warning { message: String, code: String },
    /// Something failed; the session stays usable.
    Error {
        message: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        code: Option<String>,
    },
}

/// A stored, numbered event: `seq` grows per session so a reconnecting client can ask for what
/// it missed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SequencedEvent {
    pub seq: u64,
    #[serde(flatten)]
    pub event: RuntimeEvent,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_round_trip_with_their_type_tag() {
        let event = SequencedEvent {
            seq: 7,
            event: RuntimeEvent::ToolCall {
                call_id: "call_1".into(),
                tool_name: "read_file".into(),
                arguments: serde_json::json!({"path": "a.py"}),
                requires_approval: false,
                approval_reason: None,
                agent: "coder".into(),
            },
        };
        let text = serde_json::to_string(&event).unwrap();
        assert!(text.starts_with(r#"{"seq":7,"type":"tool_call""#), "{text}");
        assert_eq!(
            serde_json::from_str::<SequencedEvent>(&text).unwrap(),
            event
        );
    }
}
