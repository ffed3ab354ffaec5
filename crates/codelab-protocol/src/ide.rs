//! Frames between an IDE and the gateway's WebSocket (`/api/v1/ws/{session_id}`).
//!
//! Incoming frames are read leniently, the way the Flutter IDE writes them: it sends all 15 keys
//! of its DTO on every frame with `null` for the unused ones, so a `null` counts as absent and
//! unknown keys are ignored. Outgoing frames never carry `null` keys (the Flutter IDE accepts
//! both, and absent keys are cheaper).

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

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
    /// Stop the running turn.
    CancelTurn {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
    },
    /// Opt in to a protocol version (`{"type":"hello","protocol":2}`).
    Hello { protocol: u32 },
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

/// The frame types the gateway accepts.
pub const CLIENT_FRAME_TYPES: [&str; 6] = [
    "user_message",
    "tool_result",
    "switch_agent",
    "hitl_decision",
    "cancel_turn",
    "hello",
];

/// Parses one text frame: JSON object, known `type`, fields of the right types. `null` values
/// are dropped first (the Flutter IDE's way of saying "absent").
pub fn parse_client_frame(text: &str) -> Result<(ClientFrame, Map<String, Value>), FrameError> {
    let value: Value =
        serde_json::from_str(text).map_err(|e| FrameError::InvalidJson(e.to_string()))?;
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
    let frame = serde_json::from_value(Value::Object(object.clone()))
        .map_err(|e| FrameError::Invalid(format!("{kind}: {e}")))?;
    Ok((frame, object))
}

fn json_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// A frame sent to the IDE. Only the keys that apply are set; `None` keys are not written.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ServerFrame {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub is_final: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub call_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arguments: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requires_approval: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_code: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_agent: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to_agent: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<Value>,
}

impl ServerFrame {
    /// An error frame with the text in both `content` (the gateway's field) and `error` (the
    /// runtime's field): every client reads one of them.
    pub fn error(text: impl Into<String>, code: Option<&str>) -> Self {
        let text = text.into();
        ServerFrame {
            kind: "error".to_owned(),
            content: Some(text.clone()),
            error: Some(text),
            error_code: code.map(str::to_owned),
            is_final: Some(true),
            ..ServerFrame::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FLUTTER_TOOL_RESULT: &str = r#"{"type":"tool_result","content":null,"role":null,"is_final":null,"call_id":"call_1","tool_name":"write_file","arguments":null,"requires_approval":null,"result":null,"error":"Операция отклонена: write_file","agent_type":null,"from_agent":null,"to_agent":null,"reason":null,"metadata":null}"#;

    #[test]
    fn flutter_frames_with_fifteen_keys_and_nulls_parse() {
        let (frame, _) = parse_client_frame(FLUTTER_TOOL_RESULT).unwrap();
        assert_eq!(
            frame,
            ClientFrame::ToolResult {
                call_id: "call_1".into(),
                tool_name: Some("write_file".into()),
                result: None,
                error: Some("Операция отклонена: write_file".into()),
            }
        );
        let (frame, _) = parse_client_frame(
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
            r#"{"type":"error","content":"boom","is_final":true,"error":"boom","error_code":"INVALID_TYPE"}"#
        );
    }
}
