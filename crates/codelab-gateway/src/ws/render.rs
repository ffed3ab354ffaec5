//! Runtime events as IDE frames, per client profile. Pure functions.
//!
//! The Flutter IDE appends every frame it receives as its own chat bubble and renders any type
//! it does not know as an (empty) assistant bubble, so it gets only the four types it knows,
//! each assistant message whole; a plan waiting for approval and a warning reach it as
//! assistant messages. Protocol-2 clients (`codelab chat`, the website) get token deltas, approvals, turn
//! ends, session info and the plan frames, each stored event with its `seq` so they can resume;
//! a Flutter-profile client that declared the `plans` capability gets the plan frames too
//! (docs/websocket-protocol.md). No frame ever carries a `null` key.

use codelab_protocol::ide::{FrameError, FrameMetadata, ServerFrame, ServerFrameType};
use codelab_protocol::plans::PlanView;
use codelab_protocol::runtime::{RuntimeEvent, SequencedEvent};
use serde_json::Value;

/// The capability a `hello` declares to get the plan frames in the Flutter profile.
pub const PLANS_CAPABILITY: &str = "plans";

/// How a socket's client reads frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Profile {
    /// The Flutter IDE (the default): whole messages, four frame types.
    Flutter,
    /// The Flutter profile plus the four plan frames: a client that declared the `plans`
    /// capability in `hello`.
    FlutterWithPlans,
    /// Protocol 2: deltas plus `approval_required`, `turn_finished`, `session_info` and the
    /// plan frames.
    V2,
}

impl Profile {
    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            Profile::Flutter | Profile::FlutterWithPlans => "flutter",
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

    /// The profile a `hello` asks for: its protocol number, and for protocol 1 whether it
    /// declared the `plans` capability (other capabilities are ignored).
    pub fn from_hello(protocol: u64, capabilities: &[String]) -> Option<Profile> {
        match Profile::from_number(protocol)? {
            Profile::Flutter if capabilities.iter().any(|c| c == PLANS_CAPABILITY) => {
                Some(Profile::FlutterWithPlans)
            }
            profile => Some(profile),
        }
    }

    /// Whether the client reads the plan frames.
    fn shows_plans(self) -> bool {
        matches!(self, Profile::FlutterWithPlans | Profile::V2)
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
                Profile::Flutter | Profile::FlutterWithPlans => None,
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
        (RuntimeEvent::Warning { message, code }, Profile::V2) => ServerFrame {
            content: Some(message.clone()),
            metadata: Some(FrameMetadata {
                code: Some(code.clone()),
                ..FrameMetadata::default()
            }),
            ..ServerFrame::new(ServerFrameType::Warning)
        },
        // The Flutter IDE shows an unknown type as an empty bubble: it reads the warning as
        // an assistant message (docs/websocket-protocol.md).
        (RuntimeEvent::Warning { message, .. }, _) => ServerFrame::assistant_message(message, true),
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
        (RuntimeEvent::PlanApprovalRequired { plan, .. }, Profile::Flutter) => {
            ServerFrame::assistant_message(&plan_as_message(plan), true)
        }
        (event, profile) if profile.shows_plans() => plan_frame(event)?,
        _ => return None,
    };
    Some(match profile {
        // Merges `"metadata": {"seq": N}` into a protocol-2 frame of a stored event.
        Profile::V2 => frame.with_seq(event.seq),
        Profile::Flutter | Profile::FlutterWithPlans => frame,
    })
}

/// The frame of a plan event, for a client that reads plan frames; `None` for other events.
fn plan_frame(event: &RuntimeEvent) -> Option<Frame> {
    Some(match event {
        RuntimeEvent::PlanApprovalRequired {
            plan_id,
            approval_request_id,
            plan_summary,
            plan,
        } => ServerFrame {
            plan_id: Some(plan_id.clone()),
            approval_request_id: Some(approval_request_id.clone()),
            plan_summary: Some(plan_summary.clone()),
            plan: Some(plan.clone()),
            ..ServerFrame::new(ServerFrameType::PlanApprovalRequired)
        },
        RuntimeEvent::PlanUpdate { plan_id, plan } => ServerFrame {
            plan_id: Some(plan_id.clone()),
            plan: Some(plan.clone()),
            ..ServerFrame::new(ServerFrameType::PlanUpdate)
        },
        RuntimeEvent::PlanProgress {
            plan_id,
            subtask_id,
            status,
            result,
        } => ServerFrame {
            plan_id: Some(plan_id.clone()),
            subtask_id: Some(*subtask_id),
            status: Some(status.as_str().to_owned()),
            result: result.clone().map(Value::String),
            ..ServerFrame::new(ServerFrameType::PlanProgress)
        },
        RuntimeEvent::ExecutionCompleted {
            plan_id,
            status,
            summary,
        } => ServerFrame {
            plan_id: Some(plan_id.clone()),
            status: Some(status.clone()),
            summary: Some(summary.clone()),
            ..ServerFrame::new(ServerFrameType::ExecutionCompleted)
        },
        _ => return None,
    })
}

/// A plan waiting for approval as one assistant message, for a Flutter IDE that renders no
/// plan frames (and, without a token, may not send `plan_decision`): the checklist, then the
/// ways it can be decided.
pub fn plan_as_message(plan: &PlanView) -> String {
    format!(
        "{}\nThis plan waits for your decision: approve, reject or modify it on this session's \
         page in the console, or with POST /api/v1/plans/{}/decision \
         {{\"decision\": \"approve\"}} (\"reject\", or \"modify\" with \"feedback\").",
        plan.as_text(),
        plan.id
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use codelab_protocol::plans::{PlanStatus, SubtaskStatus, SubtaskView};
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
    fn a_warning_is_a_warning_frame_in_protocol_two_and_an_assistant_message_for_flutter() {
        let warning = seq(
            7,
            RuntimeEvent::Warning {
                message: "Budget warning: 80% used".into(),
                code: "budget_warning".into(),
            },
        );
        assert_eq!(
            json_of(render(Profile::V2, &warning).unwrap()),
            json!({"type": "warning", "content": "Budget warning: 80% used",
                   "metadata": {"code": "budget_warning", "seq": 7}})
        );
        for profile in [Profile::Flutter, Profile::FlutterWithPlans] {
            assert_eq!(
                text(&render(profile, &warning).unwrap()),
                r#"{"content":"Budget warning: 80% used","is_final":true,"token":"Budget warning: 80% used","type":"assistant_message"}"#
            );
        }
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
            plan_update(),
            plan_progress(),
            execution_completed(),
        ] {
            assert_eq!(
                render(Profile::Flutter, &seq(3, event.clone())),
                None,
                "{event:?}"
            );
        }
    }

    fn plan() -> PlanView {
        PlanView {
            id: "plan_1".into(),
            session_id: "s".into(),
            version: 1,
            title: "Add login".into(),
            description: "Forms and routes".into(),
            status: PlanStatus::AwaitingApproval,
            approval_request_id: "call_p".into(),
            created_at: "2026-12-07T11:00:00Z".into(),
            updated_at: "2026-12-07T11:00:00Z".into(),
            feedback: None,
            summary: None,
            subtasks: vec![SubtaskView {
                id: 0,
                title: "form".into(),
                description: "write the form".into(),
                agent: "coder".into(),
                estimated_time_minutes: 5,
                dependencies: Vec::new(),
                status: SubtaskStatus::Pending,
                result: None,
                error: None,
            }],
            versions: Vec::new(),
        }
    }

    fn plan_approval_required() -> RuntimeEvent {
        let plan = plan();
        RuntimeEvent::PlanApprovalRequired {
            plan_id: plan.id.clone(),
            approval_request_id: plan.approval_request_id.clone(),
            plan_summary: plan.summary_view(),
            plan: Box::new(plan),
        }
    }

    fn plan_update() -> RuntimeEvent {
        RuntimeEvent::PlanUpdate {
            plan_id: "plan_1".into(),
            plan: Box::new(PlanView {
                status: PlanStatus::Approved,
                ..plan()
            }),
        }
    }

    fn plan_progress() -> RuntimeEvent {
        RuntimeEvent::PlanProgress {
            plan_id: "plan_1".into(),
            subtask_id: 0,
            status: SubtaskStatus::Completed,
            result: Some("form written".into()),
        }
    }

    fn execution_completed() -> RuntimeEvent {
        RuntimeEvent::ExecutionCompleted {
            plan_id: "plan_1".into(),
            status: "completed".into(),
            summary: "1 of 1 subtasks completed".into(),
        }
    }

    /// The four plan events with the frames a client that reads plan frames gets (without
    /// `metadata`).
    fn plan_events_and_frames() -> Vec<(RuntimeEvent, Value)> {
        let plan_json = serde_json::to_value(plan()).unwrap();
        let approved_json = serde_json::to_value(PlanView {
            status: PlanStatus::Approved,
            ..plan()
        })
        .unwrap();
        vec![
            (
                plan_approval_required(),
                json!({"type": "plan_approval_required", "plan_id": "plan_1",
                       "approval_request_id": "call_p",
                       "plan_summary": {"title": "Add login", "description": "Forms and routes",
                                        "subtasks_count": 1, "total_estimated_time_minutes": 5},
                       "plan": plan_json}),
            ),
            (
                plan_update(),
                json!({"type": "plan_update", "plan_id": "plan_1", "plan": approved_json}),
            ),
            (
                plan_progress(),
                json!({"type": "plan_progress", "plan_id": "plan_1", "subtask_id": 0,
                       "status": "completed", "result": "form written"}),
            ),
            (
                execution_completed(),
                json!({"type": "execution_completed", "plan_id": "plan_1",
                       "status": "completed", "summary": "1 of 1 subtasks completed"}),
            ),
        ]
    }

    #[test]
    fn protocol_two_gets_the_plan_frames_with_seq() {
        for (at, (event, expected)) in (20..).zip(plan_events_and_frames()) {
            let mut expected = expected;
            expected["metadata"] = json!({"seq": at});
            assert_eq!(
                json_of(render(Profile::V2, &seq(at, event.clone())).unwrap()),
                expected,
                "{event:?}"
            );
        }
    }

    #[test]
    fn the_plans_capability_gives_the_flutter_profile_the_plan_frames() {
        for (event, expected) in plan_events_and_frames() {
            assert_eq!(
                json_of(render(Profile::FlutterWithPlans, &seq(20, event.clone())).unwrap()),
                expected,
                "{event:?}"
            );
        }
        // Otherwise it stays the Flutter profile: whole messages, no protocol-2 types.
        let delta = RuntimeEvent::AssistantDelta {
            message_id: "m".into(),
            agent: "coder".into(),
            delta: "Hel".into(),
        };
        let turn_end = RuntimeEvent::TurnFinished {
            outcome: TurnOutcome::Completed,
        };
        for event in [delta, turn_end] {
            assert_eq!(render(Profile::FlutterWithPlans, &seq(0, event)), None);
        }
        let message = seq(
            4,
            RuntimeEvent::AssistantMessage {
                message_id: "m".into(),
                agent: "coder".into(),
                content: "Hello!".into(),
            },
        );
        assert_eq!(
            render(Profile::FlutterWithPlans, &message),
            render(Profile::Flutter, &message)
        );
    }

    #[test]
    fn without_the_capability_a_plan_is_one_assistant_message() {
        let frame = render(Profile::Flutter, &seq(20, plan_approval_required())).unwrap();
        assert_eq!(frame.kind, ServerFrameType::AssistantMessage);
        let content = frame.content.clone().unwrap();
        assert!(content.starts_with(&plan().as_text()), "{content}");
        assert!(
            content.contains("POST /api/v1/plans/plan_1/decision"),
            "{content}"
        );
        assert!(content.contains("console"), "{content}");
        assert_eq!(
            map_of(frame).keys().collect::<Vec<_>>(),
            ["content", "is_final", "token", "type"]
        );
        for event in [plan_update(), plan_progress(), execution_completed()] {
            assert_eq!(
                render(Profile::Flutter, &seq(21, event.clone())),
                None,
                "{event:?}"
            );
        }
    }

    /// Every event the runtime sends, rendered for the Flutter IDE without the capability, is
    /// one of the four types it renders (issue 18: it never gets an unknown type).
    #[test]
    fn the_flutter_profile_gets_only_the_types_it_renders() {
        let mut events = vec![
            RuntimeEvent::AssistantDelta {
                message_id: "m".into(),
                agent: "coder".into(),
                delta: "d".into(),
            },
            RuntimeEvent::AssistantMessage {
                message_id: "m".into(),
                agent: "coder".into(),
                content: "c".into(),
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
            RuntimeEvent::SessionInfo {
                session_id: "s".into(),
                current_agent: "coder".into(),
            },
            RuntimeEvent::Error {
                message: "m".into(),
                code: None,
            },
        ];
        events.extend(plan_events_and_frames().into_iter().map(|(event, _)| event));
        for event in events {
            if let Some(frame) = render(Profile::Flutter, &seq(1, event.clone())) {
                assert!(
                    ["assistant_message", "tool_call", "agent_switched", "error"]
                        .contains(&frame_type(&frame)),
                    "{event:?} became {}",
                    frame_type(&frame)
                );
            }
        }
    }

    #[test]
    fn hello_picks_the_profile_and_ignores_unknown_capabilities() {
        let caps = |names: &[&str]| -> Vec<String> { names.iter().map(|n| (*n).into()).collect() };
        assert_eq!(
            Profile::from_hello(1, &caps(&["plans"])),
            Some(Profile::FlutterWithPlans)
        );
        assert_eq!(
            Profile::from_hello(1, &caps(&["telepathy", "plans"])),
            Some(Profile::FlutterWithPlans)
        );
        assert_eq!(
            Profile::from_hello(1, &caps(&["telepathy"])),
            Some(Profile::Flutter)
        );
        assert_eq!(Profile::from_hello(1, &[]), Some(Profile::Flutter));
        assert_eq!(Profile::from_hello(2, &[]), Some(Profile::V2));
        assert_eq!(Profile::from_hello(2, &caps(&["plans"])), Some(Profile::V2));
        assert_eq!(Profile::from_hello(3, &caps(&["plans"])), None);
        assert_eq!(Profile::FlutterWithPlans.label(), "flutter");
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
            plan_approval_required(),
            plan_update(),
            plan_progress(),
            execution_completed(),
        ];
        let mut checked = 0;
        for profile in [Profile::Flutter, Profile::FlutterWithPlans, Profile::V2] {
            for event in &events {
                // The Flutter profile gets no frame for three of the plan events.
                let Some(frame) = render(profile, &seq(1, event.clone())) else {
                    continue;
                };
                checked += 1;
                let frame = map_of(frame);
                assert!(!has_null(&frame), "{frame:?}");
            }
        }
        assert_eq!(checked, 4 + 7 + 7);
    }
}
