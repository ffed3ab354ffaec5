//! The client frames the engine takes, checked before any processing.

use codelab_protocol::ide::{ClientFrame, Decision};
use codelab_protocol::plans::PlanDecision;
use serde_json::{Map, Value};

use crate::agents::{AgentKind, AgentRegistry};

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
    /// A person's decision on a plan, named by its id or its approval request id.
    PlanDecision {
        plan: PlanRef,
        decision: PlanDecision,
        feedback: Option<String>,
    },
    /// Stop the turn in progress.
    CancelTurn { reason: Option<String> },
}

/// How a `plan_decision` names its plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PlanRef {
    /// The plan's id.
    Plan(String),
    /// The `approval_request_id` of `plan_approval_required` (its `create_plan` call).
    ApprovalRequest(String),
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
            ClientFrame::PlanDecision {
                plan_id,
                approval_request_id,
                decision,
                feedback,
            } => {
                let named = |id: Option<String>| id.filter(|id| !id.trim().is_empty());
                let plan = match (named(plan_id), named(approval_request_id)) {
                    (Some(id), _) => PlanRef::Plan(id),
                    (None, Some(id)) => PlanRef::ApprovalRequest(id),
                    (None, None) => {
                        return Err(WorkError(
                            "plan_decision: plan_id or approval_request_id is required".to_owned(),
                        ));
                    }
                };
                Ok(Work::PlanDecision {
                    plan,
                    decision,
                    feedback: feedback.filter(|f| !f.trim().is_empty()),
                })
            }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn registry(multi: bool) -> AgentRegistry {
        AgentRegistry::new(multi, "mock-llm", "").unwrap_or_else(|e| panic!("{e}"))
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
        let hello = ClientFrame::Hello {
            protocol: 2,
            last_seq: None,
            capabilities: Vec::new(),
        };
        let err = Work::from_frame(hello, &multi).unwrap_err().0;
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
