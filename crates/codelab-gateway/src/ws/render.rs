//! Runtime events as IDE frames, per client profile. Pure functions.
//!
//! The Flutter IDE appends every frame it receives as its own chat bubble and renders any type
//! it does not know as an (empty) assistant bubble, so it gets only the four types it knows,
//! each assistant message whole. Protocol-2 clients (`codelab chat`, the website) get token
//! deltas, approvals, turn ends and session info, each stored event with its `seq` so they can
//! resume. No frame ever carries a `null` key.

use codelab_protocol::ide::{FrameError, FrameMetadata, ServerFrame, ServerFrameType};
use codelab_protocol::runtime::{RuntimeEvent, SequencedEvent};

/// How a socket's client reads frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Profile {
    /// The Flutter IDE (the default): whole messages, four frame types.
    Flutter,
    /// Protocol 2: deltas plus `approval_required`, `turn_finished`, `session_info`.
    V2,
}

impl Profile {
    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            Profile::Flutter => "flutter",
            Profile::V2 => "protocol2",
        }
    }

    /// The profile of a protocol number (`1` or `2`).
    pub fn from_number(protocol: u64) -> Option<Profile> {
        match protocol {
            1 => Some(Profile::Flutter),
            2 => Some(Profile::V2),
            _ => None,
        }
    }
}

/// A frame for the socket.
pub type Frame = ServerFrame;

/// The frame type of `frame` (for metrics).
pub fn frame_type(frame: &Frame) -> &'static str {
    frame.kind.as_str()
}

/// The `error` frame for a refused client frame.
pub fn frame_error(error: &FrameError) -> Frame {
    ServerFrame::error(error.to_string(), Some(error.code()))
}

/// `metadata` naming an assistant message and its agent (protocol 2).
fn message_metadata(message_id: &str, agent: &str) -> Option<FrameMetadata> {
    Some(FrameMetadata {
        agent: Some(agent.to_owned()),
        message_id: Some(message_id.to_owned()),
        ..FrameMetadata::default()
    })
}

/// The frame a client of `profile` gets for `event`, if any.
pub fn render(profile: Profile, event: &SequencedEvent) -> Option<Frame> {
    let frame = match (&event.event, profile) {
        // The Flutter IDE would show each delta as its own bubble: it gets the whole message.
        (RuntimeEvent::AssistantDelta { .. }, Profile::Flutter) => return None,
        (
            RuntimeEvent::AssistantDelta {
                message_id,
                agent,
                delta,
            },
            Profile::V2,
        ) => ServerFrame {
            metadata: message_metadata(message_id, agent),
            ..ServerFrame::assistant_message(delta, false)
        },
        (
            RuntimeEvent::AssistantMessage {
                message_id,
                agent,
                content,
            },
            _,
        ) => ServerFrame {
            metadata: match profile {
                Profile::V2 => message_metadata(message_id, agent),
                Profile::Flutter => None,
            },
            ..ServerFrame::assistant_message(content, true)
        },
        (
            RuntimeEvent::ToolCall {
                call_id,
                tool_name,
                arguments,
                requires_approval,
                approval_reason,
                ..
            },
            _,
        ) => ServerFrame::tool_call(
            call_id,
            tool_name,
            arguments,
            *requires_approval,
            approval_reason.as_deref(),
        ),
        (
            RuntimeEvent::AgentSwitched {
                from_agent,
                to_agent,
                reason,
                confidence,
            },
            _,
        ) => {
            // The Flutter IDE reads the top-level fields first, then `metadata` (what the
            // original runtime sent): both are filled.
            ServerFrame {
                content: Some(format!("Switched to {to_agent} agent")),
                from_agent: from_agent.clone(),
                to_agent: Some(to_agent.clone()),
                reason: Some(reason.clone()),
                confidence: confidence.clone(),
                metadata: Some(FrameMetadata {
                    from_agent: from_agent.clone(),
                    to_agent: Some(to_agent.clone()),
                    reason: Some(reason.clone()),
                    confidence: confidence.clone(),
                    ..FrameMetadata::default()
                }),
                is_final: Some(false),
                ..ServerFrame::new(ServerFrameType::AgentSwitched)
            }
        }
        (RuntimeEvent::Error { message, code }, _) => {
            ServerFrame::error(message.as_str(), code.as_deref())
        }
        (
            RuntimeEvent::ApprovalRequired {
                call_id,
                tool_name,
                arguments,
                reason,
            },
            Profile::V2,
        ) => ServerFrame::approval_required(call_id, tool_name, arguments, reason),
        (RuntimeEvent::TurnFinished { outcome }, Profile::V2) => {
            let outcome = outcome.as_str();
            ServerFrame {
                content: Some(outcome.to_owned()),
                metadata: Some(FrameMetadata {
                    outcome: Some(outcome.to_owned()),
                    ..FrameMetadata::default()
                }),
                ..ServerFrame::new(ServerFrameType::TurnFinished)
            }
        }
        (
            RuntimeEvent::SessionInfo {
                session_id,
                current_agent,
            },
            Profile::V2,
        ) => ServerFrame::session_info(session_id, Some(current_agent)),
        _ => return None,
    };
    Some(match profile {
        // Merges `"metadata": {"seq": N}` into a protocol-2 frame of a stored event.
        Profile::V2 => frame.with_seq(event.seq),
        Profile::Flutter => frame,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use codelab_protocol::runtime::TurnOutcome;
    use serde_json::{Map, Value, json};

    /// The frame as JSON, to compare with `json!`.
    fn json_of(frame: Frame) -> Value {
        serde_json::to_value(frame).unwrap()
    }

    /// The frame's keys and values.
    fn map_of(frame: Frame) -> Map<String, Value> {
        match json_of(frame) {
            Value::Object(map) => map,
            other => panic!("a frame that is not an object: {other}"),
        }
    }

    fn seq(seq: u64, event: RuntimeEvent) -> SequencedEvent {
        SequencedEvent { seq, event }
    }

    fn text(frame: &Frame) -> String {
        serde_json::to_string(frame).unwrap()
    }

    #[test]
    fn the_flutter_profile_gets_whole_messages_only() {
        let delta = seq(
            0,
            RuntimeEvent::AssistantDelta {
                message_id: "m".into(),
                agent: "coder".into(),
                delta: "Hel".into(),
            },
        );
        assert_eq!(render(Profile::Flutter, &delta), None);
        let message = seq(
            4,
            RuntimeEvent::AssistantMessage {
                message_id: "m".into(),
                agent: "coder".into(),
                content: "Hello!".into(),
            },
        );
        assert_eq!(
            text(&render(Profile::Flutter, &message).unwrap()),
            r#"{"content":"Hello!","is_final":true,"token":"Hello!","type":"assistant_message"}"#
        );
    }

    #[test]
    fn the_flutter_profile_never_sees_protocol_two_types() {
        for event in [
            RuntimeEvent::SessionInfo {
                session_id: "s".into(),
                current_agent: "coder".into(),
            },
            RuntimeEvent::ApprovalRequired {
                call_id: "c".into(),
                tool_name: "write_file".into(),
                arguments: json!({}),
                reason: "writes".into(),
            },
            RuntimeEvent::TurnFinished {
                outcome: TurnOutcome::Completed,
            },
            RuntimeEvent::ToolSettled {
                call_id: "c".into(),
                tool_name: "read_file".into(),
                outcome: "succeeded".into(),
                summary: None,
            },
            RuntimeEvent::StepFinished {
                step: 1,
                pending_calls: 0,
            },
            RuntimeEvent::Notice {
                message: "nothing to cancel".into(),
            },
        ] {
            assert_eq!(
                render(Profile::Flutter, &seq(3, event.clone())),
                None,
                "{event:?}"
            );
        }
    }

    #[test]
    fn tool_calls_carry_the_approval_and_its_reason() {
        let event = seq(
            7,
            RuntimeEvent::ToolCall {
                call_id: "call_1".into(),
                tool_name: "write_file".into(),
                arguments: json!({"path": "a.py", "content": null}),
                requires_approval: true,
                approval_reason: Some("writes a file".into()),
                agent: "coder".into(),
            },
        );
        let flutter = render(Profile::Flutter, &event).unwrap();
        assert_eq!(
            json_of(flutter),
            json!({"type": "tool_call", "call_id": "call_1", "tool_name": "write_file",
                   "arguments": {"path": "a.py", "content": null}, "requires_approval": true,
                   "reason": "writes a file", "is_final": true})
        );
        let v2 = json_of(render(Profile::V2, &event).unwrap());
        assert_eq!(v2["metadata"], json!({"seq": 7}));
        let plain = seq(
            8,
            RuntimeEvent::ToolCall {
                call_id: "call_2".into(),
                tool_name: "read_file".into(),
                arguments: json!({"path": "a.py"}),
                requires_approval: false,
                approval_reason: None,
                agent: "coder".into(),
            },
        );
        let flutter = map_of(render(Profile::Flutter, &plain).unwrap());
        assert_eq!(flutter["requires_approval"], json!(false));
        assert!(!flutter.contains_key("reason"));
    }

    #[test]
    fn agent_switches_are_top_level_and_in_metadata() {
        let event = seq(
            2,
            RuntimeEvent::AgentSwitched {
                from_agent: Some("orchestrator".into()),
                to_agent: "coder".into(),
                reason: "coding task".into(),
                confidence: Some("high".into()),
            },
        );
        assert_eq!(
            json_of(render(Profile::Flutter, &event).unwrap()),
            json!({"type": "agent_switched", "content": "Switched to coder agent",
                   "from_agent": "orchestrator", "to_agent": "coder", "reason": "coding task",
                   "confidence": "high",
                   "metadata": {"from_agent": "orchestrator", "to_agent": "coder",
                                "reason": "coding task", "confidence": "high"},
                   "is_final": false})
        );
        let first = seq(
            1,
            RuntimeEvent::AgentSwitched {
                from_agent: None,
                to_agent: "ask".into(),
                reason: "question".into(),
                confidence: None,
            },
        );
        let frame = map_of(render(Profile::V2, &first).unwrap());
        assert!(!frame.contains_key("from_agent"));
        assert!(!frame.contains_key("confidence"));
        assert_eq!(
            frame["metadata"],
            json!({"to_agent": "ask", "reason": "question", "seq": 1})
        );
    }

    #[test]
    fn errors_fill_content_and_error() {
        let event = seq(
            9,
            RuntimeEvent::Error {
                message: "the model is unavailable".into(),
                code: Some("llm_error".into()),
            },
        );
        let frame = map_of(render(Profile::Flutter, &event).unwrap());
        assert_eq!(frame["content"], "the model is unavailable");
        assert_eq!(frame["error"], "the model is unavailable");
        assert_eq!(frame["is_final"], true);
        let frame = frame_error(&FrameError::UnknownType("ping".into()));
        assert_eq!(
            json_of(frame),
            json!({"type": "error", "content": "Unknown message type: ping",
                   "error": "Unknown message type: ping", "error_code": "INVALID_TYPE",
                   "is_final": true})
        );
    }

    #[test]
    fn protocol_two_streams_deltas_then_the_final_text_with_seq() {
        let delta = seq(
            0,
            RuntimeEvent::AssistantDelta {
                message_id: "m1".into(),
                agent: "coder".into(),
                delta: "Hel".into(),
            },
        );
        assert_eq!(
            json_of(render(Profile::V2, &delta).unwrap()),
            json!({"type": "assistant_message", "content": "Hel", "token": "Hel",
                   "is_final": false, "metadata": {"message_id": "m1", "agent": "coder"}})
        );
        let full = seq(
            5,
            RuntimeEvent::AssistantMessage {
                message_id: "m1".into(),
                agent: "coder".into(),
                content: "Hello".into(),
            },
        );
        assert_eq!(
            json_of(render(Profile::V2, &full).unwrap()),
            json!({"type": "assistant_message", "content": "Hello", "token": "Hello",
                   "is_final": true,
                   "metadata": {"message_id": "m1", "agent": "coder", "seq": 5}})
        );
    }

    #[test]
    fn protocol_two_gets_approvals_turn_ends_and_session_info() {
        let approval = seq(
            6,
            RuntimeEvent::ApprovalRequired {
                call_id: "c".into(),
                tool_name: "execute_command".into(),
                arguments: json!({"command": "rm -rf build"}),
                reason: "runs a command".into(),
            },
        );
        assert_eq!(
            json_of(render(Profile::V2, &approval).unwrap()),
            json!({"type": "approval_required", "call_id": "c", "tool_name": "execute_command",
                   "arguments": {"command": "rm -rf build"}, "reason": "runs a command",
                   "metadata": {"seq": 6}})
        );
        let finished = seq(
            10,
            RuntimeEvent::TurnFinished {
                outcome: TurnOutcome::AwaitingTools,
            },
        );
        assert_eq!(
            json_of(render(Profile::V2, &finished).unwrap()),
            json!({"type": "turn_finished", "content": "awaiting_tools",
                   "metadata": {"outcome": "awaiting_tools", "seq": 10}})
        );
        let info = seq(
            1,
            RuntimeEvent::SessionInfo {
                session_id: "s1".into(),
                current_agent: "orchestrator".into(),
            },
        );
        assert_eq!(
            json_of(render(Profile::V2, &info).unwrap()),
            json!({"type": "session_info", "session_id": "s1", "agent_type": "orchestrator",
                   "metadata": {"seq": 1}})
        );
        let settled = seq(
            11,
            RuntimeEvent::ToolSettled {
                call_id: "c".into(),
                tool_name: "read_file".into(),
                outcome: "succeeded".into(),
                summary: None,
            },
        );
        assert_eq!(render(Profile::V2, &settled), None);
    }

    #[test]
    fn no_frame_carries_a_null_key() {
        // Top level and metadata; tool arguments are the model's and pass unchanged.
        fn has_null(frame: &Map<String, Value>) -> bool {
            frame.values().any(Value::is_null)
                || frame
                    .get("metadata")
                    .and_then(Value::as_object)
                    .is_some_and(|m| m.values().any(Value::is_null))
        }
        let events = [
            RuntimeEvent::AgentSwitched {
                from_agent: None,
                to_agent: "coder".into(),
                reason: "r".into(),
                confidence: None,
            },
            RuntimeEvent::Error {
                message: "m".into(),
                code: None,
            },
            RuntimeEvent::ToolCall {
                call_id: "c".into(),
                tool_name: "t".into(),
                arguments: json!({"a": null, "b": {"c": null}}),
                requires_approval: false,
                approval_reason: None,
                agent: "coder".into(),
            },
        ];
        for profile in [Profile::Flutter, Profile::V2] {
            for event in &events {
                let frame = map_of(render(profile, &seq(1, event.clone())).unwrap());
                assert!(!has_null(&frame), "{frame:?}");
            }
        }
    }
}
