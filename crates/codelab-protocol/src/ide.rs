//! Frames between an IDE and the gateway's WebSocket (`/api/v1/ws/{session_id}`).
//!
//! Incoming frames are read leniently, the way the Flutter IDE writes them: it sends all 15 keys
//! of its DTO on every frame with `null` for the unused ones, so a `null` counts as absent and
//! unknown keys are ignored. Outgoing frames never carry `null` keys (the Flutter IDE accepts
//! both, and absent keys are cheaper).

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::plans::{PlanSummary, PlanView};

/// A human decision on a tool call that requires approval.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Decision {
    Approve,
    Edit,
    Reject,
}

impl Decision {
    /// The wire name (`approve`, `edit`, `reject`).
    pub fn as_str(self) -> &'static str {
        match self {
            Decision::Approve => "approve",
            Decision::Edit => "edit",
            Decision::Reject => "reject",
        }
    }
}

impl PartialEq<&str> for Decision {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

/// A frame sent by the IDE.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ClientFrame {
    /// The user's message; `agent_type` optionally targets an agent.
    UserMessage {
        content: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        role: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        agent_type: Option<String>,
    },
    /// The outcome of a tool the IDE ran (or refused: then `error` is set). For a call that
    /// required approval it is also the decision, as the Flutter IDE does HITL.
    ToolResult {
        call_id: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        tool_name: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        result: Option<Value>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<String>,
    },
    /// Switch the session to another agent.
    SwitchAgent {
        agent_type: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        content: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
    },
    /// A decision on a pending approval, made in the IDE or the console.
    HitlDecision {
        call_id: String,
        decision: Decision,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        modified_arguments: Option<Map<String, Value>>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        feedback: Option<String>,
    },
    /// A decision on a plan: `plan_id` or `approval_request_id` names it (either is accepted,
    /// as the original's backend and IDE branches disagree on which).
    PlanDecision {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        plan_id: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        approval_request_id: Option<String>,
        decision: crate::plans::PlanDecision,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        feedback: Option<String>,
    },
    /// Stop the running turn.
    CancelTurn {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
    },
    /// Opt in to a protocol version (`{"type":"hello","protocol":2,"last_seq":S}`); a
    /// protocol-2 client names the last event it saw to get what it missed.
    Hello {
        protocol: u32,
        /// Read leniently, as before it was typed: anything but a non-negative integer counts
        /// as absent.
        #[serde(
            default,
            deserialize_with = "lenient_u64",
            skip_serializing_if = "Option::is_none"
        )]
        last_seq: Option<u64>,
        /// Optional features the client renders (`plans`: the plan frames in the Flutter
        /// profile too).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        capabilities: Vec<String>,
    },
}

impl ClientFrame {
    /// The wire name of the frame's type.
    pub fn kind(&self) -> &'static str {
        match self {
            ClientFrame::UserMessage { .. } => "user_message",
            ClientFrame::ToolResult { .. } => "tool_result",
            ClientFrame::SwitchAgent { .. } => "switch_agent",
            ClientFrame::HitlDecision { .. } => "hitl_decision",
            ClientFrame::PlanDecision { .. } => "plan_decision",
            ClientFrame::CancelTurn { .. } => "cancel_turn",
            ClientFrame::Hello { .. } => "hello",
        }
    }

    /// Reads a frame from JSON already parsed (one parse per hop: the gateway reads the
    /// socket's text, the runtime its request body). `null` values are dropped first (the
    /// Flutter IDE's way of saying "absent"), then the `type` is checked, then the fields.
    pub fn from_value(value: Value) -> Result<ClientFrame, FrameError> {
        let Value::Object(mut object) = value else {
            return Err(FrameError::NotAnObject(json_kind(&value)));
        };
        object.retain(|_, v| !v.is_null());
        let kind = match object.get("type") {
            None => return Err(FrameError::MissingType),
            Some(Value::String(kind)) => kind.clone(),
            Some(other) => return Err(FrameError::UnknownType(other.to_string())),
        };
        if !CLIENT_FRAME_TYPES.contains(&kind.as_str()) {
            return Err(FrameError::UnknownType(kind));
        }
        serde_json::from_value(Value::Object(object))
            .map_err(|e| FrameError::Invalid(format!("{kind}: {e}")))
    }
}

fn lenient_u64<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Option<u64>, D::Error> {
    Ok(Value::deserialize(deserializer)?.as_u64())
}

/// Why a frame was refused; the text is what the IDE shows.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("Invalid JSON message: {0}")]
    InvalidJson(String),
    #[error("Invalid JSON message: expected a JSON object, got {0}")]
    NotAnObject(&'static str),
    #[error("Unknown message type: None")]
    MissingType,
    #[error("Unknown message type: {0}")]
    UnknownType(String),
    #[error("Invalid JSON message: {0}")]
    Invalid(String),
}

impl FrameError {
    /// A stable code for the error frame's `error_code` (the documented WS names).
    pub fn code(&self) -> &'static str {
        match self {
            FrameError::InvalidJson(_) | FrameError::NotAnObject(_) => "INVALID_FORMAT",
            FrameError::MissingType | FrameError::UnknownType(_) => "INVALID_TYPE",
            FrameError::Invalid(_) => "MISSING_FIELD",
        }
    }
}

/// The tools an IDE executes (the runtime offers them, the IDE runs them), in the order the
/// runtime offers them.
pub const IDE_TOOLS: [&str; 6] = [
    "read_file",
    "write_file",
    "list_files",
    "create_directory",
    "execute_command",
    "search_in_code",
];

/// The frame types the gateway accepts.
pub const CLIENT_FRAME_TYPES: [&str; 7] = [
    "user_message",
    "tool_result",
    "switch_agent",
    "hitl_decision",
    "plan_decision",
    "cancel_turn",
    "hello",
];

/// Parses one text frame: JSON object, known `type`, fields of the right types (see
/// [`ClientFrame::from_value`]).
pub fn parse_client_frame(text: &str) -> Result<ClientFrame, FrameError> {
    let value: Value =
        serde_json::from_str(text).map_err(|e| FrameError::InvalidJson(e.to_string()))?;
    ClientFrame::from_value(value)
}

/// How an error message names the type of a JSON value ("a string", "an object", ...).
pub fn json_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// The type of a [`ServerFrame`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ServerFrameType {
    /// Assistant text: a whole message (`is_final: true`) or, for protocol 2, a delta.
    AssistantMessage,
    /// A tool for the IDE to run.
    ToolCall,
    /// The session's agent changed.
    AgentSwitched,
    /// Something failed.
    Error,
    /// A tool call waits for a human decision (protocol 2).
    ApprovalRequired,
    /// The turn ended or paused (protocol 2).
    TurnFinished,
    /// The session and its agent (protocol 2).
    SessionInfo,
    /// A plan waits for a person's decision (protocol 2, or the `plans` capability).
    PlanApprovalRequired,
    /// The whole plan after a change (protocol 2, or the `plans` capability).
    PlanUpdate,
    /// A subtask's status changed (protocol 2, or the `plans` capability).
    PlanProgress,
    /// A plan's run ended (protocol 2, or the `plans` capability).
    ExecutionCompleted,
    /// Something the user should act on, e.g. a budget nearly used up (protocol 2).
    Warning,
}

impl ServerFrameType {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            ServerFrameType::AssistantMessage => "assistant_message",
            ServerFrameType::ToolCall => "tool_call",
            ServerFrameType::AgentSwitched => "agent_switched",
            ServerFrameType::Error => "error",
            ServerFrameType::ApprovalRequired => "approval_required",
            ServerFrameType::TurnFinished => "turn_finished",
            ServerFrameType::SessionInfo => "session_info",
            ServerFrameType::PlanApprovalRequired => "plan_approval_required",
            ServerFrameType::PlanUpdate => "plan_update",
            ServerFrameType::PlanProgress => "plan_progress",
            ServerFrameType::ExecutionCompleted => "execution_completed",
            ServerFrameType::Warning => "warning",
        }
    }
}

/// A frame sent to the IDE. Only the keys that apply are set; `None` keys are not written.
///
/// Fields are declared in alphabetical order on purpose: frames used to be `serde_json` maps,
/// which write their keys sorted, and the Flutter IDE replica tests hold the gateway to the
/// same bytes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServerFrame {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_type: Option<String>,
    /// The `create_plan` call that also names a plan in a `plan_decision`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval_request_id: Option<String>,
    /// Tool arguments, passed on as the model wrote them (a `null` inside may mean something
    /// to the tool).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arguments: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub call_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub confidence: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_code: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_agent: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub is_final: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<FrameMetadata>,
    /// The whole plan (boxed: most frames carry none, and a plan is large).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan: Option<Box<PlanView>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan_summary: Option<PlanSummary>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requires_approval: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_id: Option<String>,
    /// A subtask's status (`plan_progress`) or how a plan's run ended (`execution_completed`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subtask_id: Option<u32>,
    /// A plan run's final summary (`execution_completed`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub summary: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to_agent: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_name: Option<String>,
    #[serde(rename = "type")]
    pub kind: ServerFrameType,
}

/// `metadata` of a [`ServerFrame`]; alphabetical like the frame, `None` keys not written.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FrameMetadata {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<String>,
    /// What a `warning` is about (`budget_warning`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub confidence: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_agent: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The stored event's number, for a protocol-2 client to resume after.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to_agent: Option<String>,
}

impl ServerFrame {
    /// A frame of `kind` with no other key.
    pub fn new(kind: ServerFrameType) -> Self {
        ServerFrame {
            agent_type: None,
            approval_request_id: None,
            arguments: None,
            call_id: None,
            confidence: None,
            content: None,
            error: None,
            error_code: None,
            from_agent: None,
            is_final: None,
            metadata: None,
            plan: None,
            plan_id: None,
            plan_summary: None,
            reason: None,
            requires_approval: None,
            result: None,
            session_id: None,
            status: None,
            subtask_id: None,
            summary: None,
            to_agent: None,
            token: None,
            tool_name: None,
            kind,
        }
    }

    /// An error frame with the text in both `content` (the gateway's field) and `error` (the
    /// runtime's field): every client reads one of them.
    pub fn error(text: impl Into<String>, code: Option<&str>) -> Self {
        let text = text.into();
        ServerFrame {
            content: Some(text.clone()),
            error: Some(text),
            error_code: code.map(str::to_owned),
            is_final: Some(true),
            ..ServerFrame::new(ServerFrameType::Error)
        }
    }

    /// Assistant text in `content` and `token` (clients read either).
    pub fn assistant_message(text: &str, is_final: bool) -> Self {
        ServerFrame {
            content: Some(text.to_owned()),
            token: Some(text.to_owned()),
            is_final: Some(is_final),
            ..ServerFrame::new(ServerFrameType::AssistantMessage)
        }
    }

    /// A tool call for the IDE; `reason` says why it needs approval.
    pub fn tool_call(
        call_id: &str,
        tool_name: &str,
        arguments: &Value,
        requires_approval: bool,
        reason: Option<&str>,
    ) -> Self {
        ServerFrame {
            call_id: Some(call_id.to_owned()),
            tool_name: Some(tool_name.to_owned()),
            arguments: present(arguments),
            requires_approval: Some(requires_approval),
            reason: reason.map(str::to_owned),
            is_final: Some(true),
            ..ServerFrame::new(ServerFrameType::ToolCall)
        }
    }

    /// A tool call waiting for a human decision (protocol 2).
    pub fn approval_required(
        call_id: &str,
        tool_name: &str,
        arguments: &Value,
        reason: &str,
    ) -> Self {
        ServerFrame {
            call_id: Some(call_id.to_owned()),
            tool_name: Some(tool_name.to_owned()),
            arguments: present(arguments),
            reason: Some(reason.to_owned()),
            ..ServerFrame::new(ServerFrameType::ApprovalRequired)
        }
    }

    /// The session and its agent, when known (protocol 2).
    pub fn session_info(session_id: &str, agent: Option<&str>) -> Self {
        ServerFrame {
            session_id: Some(session_id.to_owned()),
            agent_type: agent.map(str::to_owned),
            ..ServerFrame::new(ServerFrameType::SessionInfo)
        }
    }

    /// Sets `metadata.seq` (adding `metadata` when there is none); `0`, an event that was not
    /// stored, changes nothing.
    pub fn with_seq(mut self, seq: u64) -> Self {
        if seq > 0 {
            self.metadata.get_or_insert_with(FrameMetadata::default).seq = Some(seq);
        }
        self
    }
}

/// `None` for a JSON `null`: a frame never carries a `null` key.
fn present(value: &Value) -> Option<Value> {
    (!value.is_null()).then(|| value.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    const FLUTTER_TOOL_RESULT: &str = r#"{"type":"tool_result","content":null,"role":null,"is_final":null,"call_id":"call_1","tool_name":"write_file","arguments":null,"requires_approval":null,"result":null,"error":"Операция отклонена: write_file","agent_type":null,"from_agent":null,"to_agent":null,"reason":null,"metadata":null}"#;

    #[test]
    fn flutter_frames_with_fifteen_keys_and_nulls_parse() {
        let frame = parse_client_frame(FLUTTER_TOOL_RESULT).unwrap();
        assert_eq!(
            frame,
            ClientFrame::ToolResult {
                call_id: "call_1".into(),
                tool_name: Some("write_file".into()),
                result: None,
                error: Some("Операция отклонена: write_file".into()),
            }
        );
        let frame = parse_client_frame(
            r#"{"type":"user_message","content":"hi","role":"user","call_id":null}"#,
        )
        .unwrap();
        assert!(matches!(frame, ClientFrame::UserMessage { .. }));
    }

    #[test]
    fn bad_frames_say_what_is_wrong() {
        assert!(matches!(
            parse_client_frame("{nope"),
            Err(FrameError::InvalidJson(_))
        ));
        assert_eq!(
            parse_client_frame("[1]").unwrap_err().to_string(),
            "Invalid JSON message: expected a JSON object, got an array"
        );
        assert_eq!(
            parse_client_frame(r#"{"content":"x"}"#)
                .unwrap_err()
                .to_string(),
            "Unknown message type: None"
        );
        assert_eq!(
            parse_client_frame(r#"{"type":"ping"}"#)
                .unwrap_err()
                .to_string(),
            "Unknown message type: ping"
        );
        let err = parse_client_frame(r#"{"type":"tool_result"}"#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("call_id"), "{err}");
        let err =
            parse_client_frame(r#"{"type":"hitl_decision","call_id":"c","decision":"APPROVE"}"#)
                .unwrap_err();
        assert!(err.to_string().contains("APPROVE"), "{err}");
    }

    #[test]
    fn server_frames_omit_absent_keys() {
        let frame = ServerFrame::error("boom", Some("INVALID_TYPE"));
        let text = serde_json::to_string(&frame).unwrap();
        assert_eq!(
            text,
            // Keys sorted, as the gateway's frames always were on the wire (they were maps).
            r#"{"content":"boom","error":"boom","error_code":"INVALID_TYPE","is_final":true,"type":"error"}"#
        );
    }

    #[test]
    fn server_frames_write_their_keys_sorted_as_the_maps_did() {
        let every_key = ServerFrame {
            agent_type: Some("a".into()),
            approval_request_id: Some("call_p".into()),
            arguments: Some(serde_json::json!({"b": null, "a": 1})),
            call_id: Some("c".into()),
            confidence: Some("high".into()),
            content: Some("x".into()),
            error: Some("e".into()),
            error_code: Some("E".into()),
            from_agent: Some("f".into()),
            is_final: Some(true),
            metadata: Some(FrameMetadata {
                agent: Some("a".into()),
                code: Some("k".into()),
                confidence: Some("c".into()),
                from_agent: Some("f".into()),
                message_id: Some("m".into()),
                outcome: Some("o".into()),
                reason: Some("r".into()),
                seq: Some(3),
                to_agent: Some("t".into()),
            }),
            // A plan's and its summary's own keys are not sorted (no replica compares plan
            // frames), so the byte comparison leaves them out; the top-level order is checked
            // below with both.
            plan: None,
            plan_id: Some("p".into()),
            plan_summary: None,
            reason: Some("r".into()),
            requires_approval: Some(false),
            result: Some(serde_json::json!("done")),
            session_id: Some("s".into()),
            status: Some("completed".into()),
            subtask_id: Some(0),
            summary: Some("done".into()),
            to_agent: Some("t".into()),
            token: Some("x".into()),
            tool_name: Some("read_file".into()),
            kind: ServerFrameType::ToolCall,
        };
        let typed = serde_json::to_string(&every_key).unwrap();
        let as_map = serde_json::to_value(&every_key).unwrap().to_string();
        assert_eq!(typed, as_map);
        let plan = sample_plan();
        let with_plan = ServerFrame {
            plan_summary: Some(plan.summary_view()),
            plan: Some(Box::new(plan)),
            ..every_key
        };
        let keys = top_level_keys(&serde_json::to_string(&with_plan).unwrap());
        let mut sorted = keys.clone();
        sorted.sort();
        assert_eq!(keys, sorted);
        assert_eq!(keys.len(), 25, "every key: {keys:?}");
        assert!(
            !serde_json::to_string(&ServerFrame::tool_call("c", "t", &Value::Null, false, None))
                .unwrap()
                .contains("arguments")
        );
    }

    /// The keys of a JSON object in the order the text has them.
    fn top_level_keys(text: &str) -> Vec<String> {
        struct Keys(Vec<String>);
        impl<'de> Deserialize<'de> for Keys {
            fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                struct Visitor;
                impl<'de> serde::de::Visitor<'de> for Visitor {
                    type Value = Keys;
                    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                        f.write_str("an object")
                    }
                    fn visit_map<A: serde::de::MapAccess<'de>>(
                        self,
                        mut map: A,
                    ) -> Result<Keys, A::Error> {
                        let mut keys = Vec::new();
                        while let Some(key) = map.next_key::<String>()? {
                            map.next_value::<serde::de::IgnoredAny>()?;
                            keys.push(key);
                        }
                        Ok(Keys(keys))
                    }
                }
                deserializer.deserialize_map(Visitor)
            }
        }
        serde_json::from_str::<Keys>(text).unwrap().0
    }

    fn sample_plan() -> PlanView {
        PlanView {
            id: "p".into(),
            session_id: "s".into(),
            version: 1,
            title: "t".into(),
            description: "d".into(),
            status: crate::plans::PlanStatus::AwaitingApproval,
            approval_request_id: "call_p".into(),
            created_at: "2026-01-01T00:00:00Z".into(),
            updated_at: "2026-01-01T00:00:00Z".into(),
            feedback: None,
            summary: None,
            subtasks: Vec::new(),
            versions: Vec::new(),
        }
    }

    #[test]
    fn hello_reads_last_seq_leniently() {
        for (text, last_seq) in [
            (r#"{"type":"hello","protocol":2,"last_seq":7}"#, Some(7)),
            (r#"{"type":"hello","protocol":2,"last_seq":"7"}"#, None),
            (r#"{"type":"hello","protocol":2,"last_seq":-1}"#, None),
            (r#"{"type":"hello","protocol":2}"#, None),
        ] {
            assert_eq!(
                parse_client_frame(text).unwrap(),
                ClientFrame::Hello {
                    protocol: 2,
                    last_seq,
                    capabilities: Vec::new(),
                },
                "{text}"
            );
        }
        assert_eq!(
            parse_client_frame(r#"{"type":"hello","protocol":1,"capabilities":["plans","x"]}"#)
                .unwrap(),
            ClientFrame::Hello {
                protocol: 1,
                last_seq: None,
                capabilities: vec!["plans".into(), "x".into()],
            }
        );
    }
}
