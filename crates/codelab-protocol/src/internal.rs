//! The internal (service-to-service) HTTP contract: the headers every internal call carries,
//! and the agent runtime's API as the gateway calls it — the stream request, sessions and
//! their pages, history, pending approvals.
//!
//! The runtime writes these types and the gateway, the terminal client and the website read
//! them. Fields are declared in alphabetical order on purpose: the answers used to be built as
//! `serde_json` maps, which write their keys sorted, and the bytes on the wire stay the same.
//! `null` is written where the original wrote it (`title`, `decision`, ...); readers take a
//! missing key as its default.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::ide::{ClientFrame, FrameError};
use crate::runtime::SequencedEvent;

/// Header carrying the internal key between services.
pub const INTERNAL_AUTH_HEADER: &str = "x-internal-auth";
/// Header naming the user an internal call acts for (believed only behind a valid key).
pub const USER_HEADER: &str = "x-codelab-user-id";
/// Header of the gateway's development session mode: a client-chosen session id may create a
/// session.
pub const DEV_SESSIONS_HEADER: &str = "x-codelab-dev-sessions";
/// Longest user id [`USER_HEADER`] may carry.
pub const MAX_USER_ID_LEN: usize = 128;

/// Whether `id` is a usable user id for [`USER_HEADER`]: 1 to [`MAX_USER_ID_LEN`] of
/// `A-Z a-z 0-9 _ . - @ : |` (subjects such as UUIDs, `auth0|abc` or e-mail addresses pass;
/// spaces and control characters do not).
pub fn is_valid_user_id(id: &str) -> bool {
    is_bounded_id(id, MAX_USER_ID_LEN, b"_.-@:|")
}

/// Whether `id` is 1 to `max_len` bytes of ASCII letters, digits and `punctuation`.
pub fn is_bounded_id(id: &str, max_len: usize, punctuation: &[u8]) -> bool {
    !id.is_empty()
        && id.len() <= max_len
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || punctuation.contains(&b))
}

/// Body of `POST /agent/message/stream`: one client frame for a session.
///
/// `M` is [`ClientFrame`] everywhere but in tests, which send raw JSON to see the runtime
/// refuse it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StreamRequest<M = ClientFrame> {
    /// The client frame to process.
    pub message: M,
    /// The session; `None` lets a first `user_message` start a new one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub session_id: Option<String>,
}

/// Why a stream request was refused; the text is the runtime's `detail`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StreamRequestError {
    #[error("invalid JSON in request body: {0}")]
    InvalidJson(String),
    #[error("expected a JSON object with \"session_id\" and \"message\"")]
    NotAnObject,
    #[error("\"message\" is required: the client frame to process")]
    MissingMessage,
    #[error("{0}")]
    Frame(#[from] FrameError),
    #[error("session_id must be a non-empty string")]
    InvalidSessionId,
}

impl StreamRequest {
    /// Reads a request body: the text is parsed once, the frame taken out of it as it is
    /// (with the IDE's leniency, see [`ClientFrame::from_value`]).
    pub fn from_json(body: &[u8]) -> Result<StreamRequest, StreamRequestError> {
        let body: Value = serde_json::from_slice(body)
            .map_err(|e| StreamRequestError::InvalidJson(e.to_string()))?;
        let Value::Object(mut body) = body else {
            return Err(StreamRequestError::NotAnObject);
        };
        let message = match body.remove("message") {
            None | Some(Value::Null) => return Err(StreamRequestError::MissingMessage),
            Some(message) => ClientFrame::from_value(message)?,
        };
        let session_id = match body.remove("session_id") {
            None | Some(Value::Null) => None,
            Some(Value::String(id)) if !id.trim().is_empty() => Some(id),
            Some(_) => return Err(StreamRequestError::InvalidSessionId),
        };
        Ok(StreamRequest {
            message,
            session_id,
        })
    }
}

/// A session as `GET /sessions/{id}`, the session list and `POST /sessions` show it: flat, as
/// the Flutter IDE reads it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionSummary {
    /// RFC 3339 UTC with microseconds.
    #[serde(default)]
    pub created_at: Option<String>,
    /// The agent in charge.
    #[serde(default)]
    pub current_agent: Option<String>,
    /// The session id.
    pub id: String,
    /// Whether the session is open (stored sessions always are).
    #[serde(default)]
    pub is_active: bool,
    /// RFC 3339; absent from the answer of `POST /sessions`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_activity: Option<String>,
    /// Messages stored.
    #[serde(default)]
    pub message_count: u64,
    /// Whether its requests become plans: `auto`, `always` or `never`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub planning: Option<String>,
    /// Its title, once set.
    #[serde(default)]
    pub title: Option<String>,
}

/// One page of `GET /sessions?limit=&offset=&search=`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionPage {
    /// The page size asked for.
    #[serde(default)]
    pub limit: u32,
    /// Sessions skipped before this page.
    #[serde(default)]
    pub offset: u32,
    /// The sessions on the page, most recent activity first.
    #[serde(default)]
    pub sessions: Vec<SessionSummary>,
    /// How many match in all.
    #[serde(default)]
    pub total: u64,
}

/// `GET /internal/sessions/{id}/owner`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionOwner {
    /// The user who owns the session.
    pub owner: String,
}

/// `GET /sessions/{id}/events?after=&limit=`: stored events, oldest first. A reader that must
/// survive event types it does not know reads `StoredEvents<serde_json::Value>` and converts
/// each on its own.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StoredEvents<E = SequencedEvent> {
    pub events: Vec<E>,
}

/// `GET /sessions/{id}/history`: the conversation, agent switches, tool calls and the turn in
/// progress.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SessionHistory {
    /// The turn in progress, if any.
    #[serde(default)]
    pub active_turn: Option<ActiveTurn>,
    /// Every agent switch, oldest first.
    #[serde(default)]
    pub agent_history: Vec<HistoryAgentSwitch>,
    /// The agent in charge.
    #[serde(default)]
    pub current_agent: String,
    /// RFC 3339.
    #[serde(default)]
    pub last_activity: String,
    /// Messages stored.
    #[serde(default)]
    pub message_count: u64,
    /// The conversation, oldest first.
    #[serde(default)]
    pub messages: Vec<HistoryMessage>,
    /// The session id.
    #[serde(default)]
    pub session_id: String,
    /// Every tool call, oldest first.
    #[serde(default)]
    pub tool_calls: Vec<HistoryToolCall>,
}

/// One message of a history, in the OpenAI chat shape.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct HistoryMessage {
    /// The text (empty when a message has only tool calls).
    #[serde(default)]
    pub content: String,
    /// The agent that wrote an assistant message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// `user`, `assistant`, `tool`, `system`.
    pub role: String,
    /// The call a `tool` message answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_call_id: Option<String>,
    /// The calls of an assistant message, as the model made them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<Value>,
}

/// One agent switch of a history.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryAgentSwitch {
    /// The router's verdict on the request it routed: `atomic` or `complex` (a plan).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub complexity: Option<String>,
    #[serde(default)]
    pub confidence: Option<String>,
    /// The agent before (`None` for the first switch).
    #[serde(default)]
    pub from: Option<String>,
    /// How it was decided (`explicit`, `routed`, ...).
    #[serde(default)]
    pub method: String,
    #[serde(default)]
    pub reason: String,
    /// RFC 3339.
    #[serde(default)]
    pub timestamp: String,
    /// The agent after.
    #[serde(default)]
    pub to: String,
}

/// Where a tool call stands (the runtime's stored status).
pub mod call_status {
    /// Waits for a human decision.
    pub const PENDING_APPROVAL: &str = "pending_approval";
    /// Waits for the IDE to run it and answer.
    pub const AWAITING_RESULT: &str = "awaiting_result";
}

/// One tool call of a history.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct HistoryToolCall {
    /// The arguments as the model wrote them.
    #[serde(default)]
    pub arguments: Value,
    pub call_id: String,
    /// `approve`, `edit`, `reject` once decided.
    #[serde(default)]
    pub decision: Option<String>,
    #[serde(default)]
    pub error: Option<String>,
    #[serde(default)]
    pub requires_approval: bool,
    #[serde(default)]
    pub result: Option<Value>,
    /// See [`call_status`].
    #[serde(default)]
    pub status: String,
    pub tool_name: String,
}

impl HistoryToolCall {
    /// Whether the call still waits for a person or the IDE.
    pub fn is_open(&self) -> bool {
        matches!(
            self.status.as_str(),
            call_status::PENDING_APPROVAL | call_status::AWAITING_RESULT
        )
    }

    /// Whether the call waits for a human decision.
    pub fn is_pending_approval(&self) -> bool {
        self.status == call_status::PENDING_APPROVAL
    }
}

/// The turn in progress of a history.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActiveTurn {
    #[serde(default)]
    pub agent: String,
    #[serde(default)]
    pub cancel_requested: bool,
    pub id: String,
    /// Its calls that still wait.
    #[serde(default)]
    pub open_calls: Vec<OpenCall>,
    #[serde(default)]
    pub status: String,
    /// LLM steps taken.
    #[serde(default)]
    pub step: u32,
}

/// A call of the active turn that still waits.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpenCall {
    pub call_id: String,
    #[serde(default)]
    pub status: String,
    pub tool_name: String,
}

/// `GET /sessions/{id}/pending-approvals`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PendingApprovals {
    #[serde(default)]
    pub count: usize,
    #[serde(default)]
    pub pending_approvals: Vec<PendingApproval>,
    #[serde(default)]
    pub session_id: String,
}

/// A tool call waiting for a human decision. The `request_*`, `subject` and `details` keys are
/// the original's generic approval shape; `call_id`, `tool_name` and `arguments` say the same
/// for tool calls.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PendingApproval {
    #[serde(default)]
    pub arguments: Value,
    pub call_id: String,
    /// RFC 3339.
    #[serde(default)]
    pub created_at: String,
    #[serde(default)]
    pub details: ApprovalDetails,
    /// Why approval is needed.
    #[serde(default)]
    pub reason: Option<String>,
    #[serde(default)]
    pub request_id: String,
    #[serde(default)]
    pub request_type: String,
    #[serde(default)]
    pub subject: String,
    pub tool_name: String,
}

/// `details` of a [`PendingApproval`].
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ApprovalDetails {
    #[serde(default)]
    pub arguments: Value,
}

/// An answer about one session, read at `/sessions/{id}{SUFFIX}` on the runtime (and under
/// `/api/v1` on the gateway), so a reader picks the path by the type it wants.
pub trait SessionResource: serde::de::DeserializeOwned {
    /// What follows the session id in the path.
    const SUFFIX: &'static str;
}

impl SessionResource for SessionSummary {
    const SUFFIX: &'static str = "";
}

impl SessionResource for SessionHistory {
    const SUFFIX: &'static str = "/history";
}

impl SessionResource for PendingApprovals {
    const SUFFIX: &'static str = "/pending-approvals";
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each type written as a `serde_json` map would write it: keys sorted.
    fn assert_sorted<T: Serialize>(value: &T) {
        let typed = serde_json::to_string(value).unwrap();
        let as_map = serde_json::to_string(&serde_json::to_value(value).unwrap()).unwrap();
        assert_eq!(typed, as_map);
    }

    #[test]
    fn answers_write_their_keys_as_the_maps_did() {
        let summary = SessionSummary {
            created_at: Some("t".into()),
            current_agent: Some("coder".into()),
            id: "s".into(),
            is_active: true,
            last_activity: Some("t".into()),
            message_count: 2,
            planning: Some("auto".into()),
            title: None,
        };
        assert_sorted(&summary);
        assert_sorted(&SessionPage {
            limit: 1,
            offset: 0,
            sessions: vec![summary],
            total: 1,
        });
        assert_sorted(&SessionHistory {
            active_turn: Some(ActiveTurn {
                id: "t".into(),
                open_calls: vec![OpenCall::default()],
                ..ActiveTurn::default()
            }),
            agent_history: vec![HistoryAgentSwitch::default()],
            messages: vec![HistoryMessage {
                name: Some("coder".into()),
                tool_call_id: Some("c".into()),
                tool_calls: Some(serde_json::json!([])),
                ..HistoryMessage::default()
            }],
            tool_calls: vec![HistoryToolCall::default()],
            ..SessionHistory::default()
        });
        assert_sorted(&PendingApprovals {
            count: 1,
            pending_approvals: vec![PendingApproval::default()],
            session_id: "s".into(),
        });
        let request = StreamRequest {
            message: ClientFrame::CancelTurn { reason: None },
            session_id: Some("s".into()),
        };
        assert_sorted(&request);
    }

    #[test]
    fn a_frame_the_gateway_read_reaches_the_runtime_unchanged() {
        for text in [
            r#"{"type":"tool_result","content":null,"role":null,"is_final":null,"call_id":"call_1","tool_name":"write_file","arguments":null,"requires_approval":null,"result":{"ok":true,"v":null},"error":null,"agent_type":null,"from_agent":null,"to_agent":null,"reason":null,"metadata":null}"#,
            r#"{"type":"user_message","content":"hi","role":"user","agent_type":"coder"}"#,
            r#"{"type":"switch_agent","agent_type":"ask","content":"x","reason":"why"}"#,
            r#"{"type":"hitl_decision","call_id":"c","decision":"edit","modified_arguments":{"path":"b"},"feedback":"f"}"#,
            r#"{"type":"cancel_turn","reason":"stop"}"#,
        ] {
            let frame = crate::ide::parse_client_frame(text).unwrap();
            let body = serde_json::to_vec(&StreamRequest {
                message: &frame,
                session_id: Some("s".to_owned()),
            })
            .unwrap();
            let request = StreamRequest::from_json(&body).unwrap();
            assert_eq!(request.message, frame, "{text}");
            assert_eq!(request.session_id.as_deref(), Some("s"));
        }
    }

    #[test]
    fn a_created_session_has_no_last_activity_and_a_null_title() {
        let created = SessionSummary {
            created_at: Some("t".into()),
            current_agent: Some("orchestrator".into()),
            id: "s".into(),
            is_active: true,
            ..SessionSummary::default()
        };
        assert_eq!(
            serde_json::to_string(&created).unwrap(),
            r#"{"created_at":"t","current_agent":"orchestrator","id":"s","is_active":true,"message_count":0,"title":null}"#
        );
    }

    #[test]
    fn stream_requests_read_the_frame_once_and_say_what_is_wrong() {
        let request =
            StreamRequest::from_json(br#"{"session_id":"s","message":{"type":"cancel_turn"}}"#)
                .unwrap();
        assert_eq!(request.session_id.as_deref(), Some("s"));
        assert_eq!(request.message, ClientFrame::CancelTurn { reason: None });
        let text = |body: &str| {
            StreamRequest::from_json(body.as_bytes())
                .unwrap_err()
                .to_string()
        };
        assert!(text("{nope").starts_with("invalid JSON in request body"));
        assert_eq!(
            text(r#"{"session_id":"s"}"#),
            "\"message\" is required: the client frame to process"
        );
        assert_eq!(
            text(r#"{"message":[1]}"#),
            "Invalid JSON message: expected a JSON object, got an array"
        );
        assert_eq!(
            text(r#"{"session_id":5,"message":{"type":"cancel_turn"}}"#),
            "session_id must be a non-empty string"
        );
        let new = StreamRequest::from_json(br#"{"message":{"type":"user_message","content":"x"}}"#)
            .unwrap();
        assert_eq!(new.session_id, None);
    }
}
