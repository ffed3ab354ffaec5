//! A replica of the Flutter IDE (`codelab_ide` master, package `codelab_ai_assistant`), the
//! gateway's only real client. Everything here mirrors its Dart code: the login form, the REST
//! calls and the casts its generated `fromJson` code performs, the WebSocket opened without
//! credentials, the 15-key `MessageModel` it sends with `null` for unused keys, and how it turns
//! each received frame into exactly one chat bubble.

use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Map, Value};
use tokio::time::Instant;

use super::{
    CloseInfo, ConnectError, DEFAULT_TIMEOUT, RawIncoming, SocketError, WsConn, session_ws_url,
};

/// The OAuth client the Flutter IDE logs in as.
pub const FLUTTER_CLIENT_ID: &str = "codelab-flutter-app";

/// The text the Flutter IDE sends as a `tool_result` error when the user refuses a tool call
/// (followed by the tool's name).
pub const REFUSAL_PREFIX: &str = "Операция отклонена: ";

/// The frame types the Flutter IDE's `MessageModel.toEntity` knows; anything else still renders,
/// as an assistant bubble with `content` (an empty bubble when there is none).
pub const FLUTTER_FRAME_TYPES: [&str; 6] = [
    "user_message",
    "assistant_message",
    "tool_call",
    "tool_result",
    "agent_switched",
    "error",
];

/// Most tool calls one [`FlutterSocket::run_turn`] answers before giving up (the benchmark
/// client's cap).
const MAX_TOOL_CALLS_PER_TURN: usize = 100;

// ---------------------------------------------------------------------------------------------
// Dart casts
// ---------------------------------------------------------------------------------------------

/// `(json[key] as num).toInt()`: any JSON number, truncated; anything else (including `null`
/// and a missing key) fails.
fn dart_int<'de, D: Deserializer<'de>>(deserializer: D) -> Result<i64, D::Error> {
    let number = serde_json::Number::deserialize(deserializer)?;
    if let Some(n) = number.as_i64() {
        return Ok(n);
    }
    number
        .as_f64()
        // Dart's `num.toInt()` truncates toward zero; the cast is what it does.
        .map(|f| f as i64)
        .ok_or_else(|| serde::de::Error::custom(format!("{number} is not an int")))
}

/// `json[key] == null ? null : DateTime.parse(json[key] as String)`.
fn opt_dart_datetime<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<String>, D::Error> {
    let value = Option::<String>::deserialize(deserializer)?;
    match value {
        None => Ok(None),
        Some(text) if dart_datetime_parses(&text) => Ok(Some(text)),
        Some(text) => Err(serde::de::Error::custom(format!(
            "DateTime.parse fails on {text:?}"
        ))),
    }
}

/// `DateTime.parse(json[key] as String)` on a required field.
fn dart_datetime<'de, D: Deserializer<'de>>(deserializer: D) -> Result<String, D::Error> {
    let text = String::deserialize(deserializer)?;
    if dart_datetime_parses(&text) {
        Ok(text)
    } else {
        Err(serde::de::Error::custom(format!(
            "DateTime.parse fails on {text:?}"
        )))
    }
}

/// Whether Dart's `DateTime.parse` accepts `text` (the ISO 8601 subset servers emit: a date, an
/// optional `T`/space time with fractions, an optional `Z` or offset).
pub(crate) fn dart_datetime_parses(text: &str) -> bool {
    use chrono::{DateTime, NaiveDate, NaiveDateTime};
    if DateTime::parse_from_rfc3339(text).is_ok() {
        return true;
    }
    let with_offset = ["%Y-%m-%dT%H:%M:%S%.f%z", "%Y-%m-%d %H:%M:%S%.f%z"];
    if with_offset
        .iter()
        .any(|f| DateTime::parse_from_str(text, f).is_ok())
    {
        return true;
    }
    let trimmed = text.strip_suffix(['Z', 'z']).unwrap_or(text);
    let naive = [
        "%Y-%m-%dT%H:%M:%S%.f",
        "%Y-%m-%d %H:%M:%S%.f",
        "%Y-%m-%dT%H:%M",
        "%Y-%m-%d %H:%M",
    ];
    naive
        .iter()
        .any(|f| NaiveDateTime::parse_from_str(trimmed, f).is_ok())
        || NaiveDate::parse_from_str(trimmed, "%Y-%m-%d").is_ok()
}

// ---------------------------------------------------------------------------------------------
// REST models (the Dart `fromJson` requirements)
// ---------------------------------------------------------------------------------------------

/// The answer of `POST /oauth/token` as `AuthTokenModel.fromJson` reads it.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct TokenSet {
    /// Required string.
    pub access_token: String,
    /// Required string.
    pub refresh_token: String,
    /// Required string (`bearer`).
    pub token_type: String,
    /// Required number.
    #[serde(deserialize_with = "dart_int")]
    pub expires_in: i64,
    /// Optional string.
    pub scope: Option<String>,
    /// Optional ISO date.
    #[serde(default, deserialize_with = "opt_dart_datetime")]
    pub issued_at: Option<String>,
}

/// A session as `SessionModel.fromJson` reads it (`POST /sessions`, items of `GET /sessions`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct SessionModel {
    /// Required string.
    pub id: String,
    /// Optional ISO date.
    #[serde(default, deserialize_with = "opt_dart_datetime")]
    pub created_at: Option<String>,
    /// Optional ISO date.
    #[serde(default, deserialize_with = "opt_dart_datetime")]
    pub updated_at: Option<String>,
    /// Optional ISO date.
    #[serde(default, deserialize_with = "opt_dart_datetime")]
    pub last_activity: Option<String>,
    /// Optional string.
    pub current_agent: Option<String>,
    /// Required number.
    #[serde(deserialize_with = "dart_int")]
    pub message_count: i64,
    /// Optional string.
    pub title: Option<String>,
    /// Optional string.
    pub description: Option<String>,
    /// Optional bool.
    pub is_active: Option<bool>,
}

/// `GET /sessions`: the IDE reads `data['sessions'] as List` only.
#[derive(Debug, Deserialize)]
struct SessionList {
    sessions: Vec<SessionModel>,
}

/// One message of `GET /sessions/{id}/history` (`ChatMessage.fromJson`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct SessionHistoryMessage {
    /// Required string.
    pub role: String,
    /// Optional string.
    pub content: Option<String>,
    /// Optional string.
    pub name: Option<String>,
    /// Optional string.
    pub tool_call_id: Option<String>,
    /// Optional list of objects (OpenAI style `{"id","function":{"name","arguments"}}`).
    pub tool_calls: Option<Vec<Map<String, Value>>>,
}

/// One agent change of the history (`AgentSwitch.fromJson`: every field an optional string).
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct AgentSwitchRecord {
    /// Optional string.
    pub from: Option<String>,
    /// Optional string.
    pub to: Option<String>,
    /// Optional string.
    pub reason: Option<String>,
    /// Optional string.
    pub timestamp: Option<String>,
}

/// `GET /sessions/{id}/history` as `SessionHistory.fromJson` reads it.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct SessionHistory {
    /// Required string.
    pub session_id: String,
    /// Required list.
    pub messages: Vec<SessionHistoryMessage>,
    /// Required number.
    #[serde(deserialize_with = "dart_int")]
    pub message_count: i64,
    /// Optional string.
    pub last_activity: Option<String>,
    /// Optional string.
    pub current_agent: Option<String>,
    /// Optional list (`null` means empty).
    pub agent_history: Option<Vec<AgentSwitchRecord>>,
}

impl SessionHistory {
    /// The bubbles the IDE shows for the stored messages (`_chatMessageToWSMessage`): a message
    /// it cannot convert is skipped (the IDE logs and drops it), reported here as `Err`.
    #[must_use]
    pub fn bubbles(&self) -> Vec<Result<Bubble, String>> {
        self.messages.iter().map(history_bubble).collect()
    }
}

fn history_bubble(message: &SessionHistoryMessage) -> Result<Bubble, String> {
    if let Some(first) = message.tool_calls.as_ref().and_then(|calls| calls.first()) {
        let function = match first.get("function") {
            None | Some(Value::Null) => None,
            Some(Value::Object(f)) => Some(f),
            Some(other) => return Err(format!("tool_calls[0].function is {other}")),
        };
        let call_id = opt_str(first.get("id")).map_err(|e| format!("tool_calls[0].id {e}"))?;
        let tool_name = match function {
            Some(f) => opt_str(f.get("name")).map_err(|e| format!("function.name {e}"))?,
            None => None,
        };
        // The IDE accepts arguments as a JSON string or an object, keeping junk for debugging.
        let arguments = match function.and_then(|f| f.get("arguments")) {
            Some(Value::String(text)) => match serde_json::from_str::<Value>(text) {
                Ok(Value::Object(map)) => map,
                _ => Map::from_iter([("_raw".to_owned(), Value::String(text.clone()))]),
            },
            Some(Value::Object(map)) => map.clone(),
            _ => Map::new(),
        };
        return Ok(Bubble::ToolCall(ToolCallRequest {
            call_id: call_id.unwrap_or_default(),
            tool_name: tool_name.unwrap_or_default(),
            arguments,
            requires_approval: false,
        }));
    }
    if let Some(call_id) = &message.tool_call_id {
        return Ok(Bubble::ToolResult {
            call_id: call_id.clone(),
            tool_name: message.name.clone(),
            result: None,
            error: None,
        });
    }
    let text = message.content.clone().unwrap_or_default();
    Ok(match message.role.as_str() {
        "user" => Bubble::Text {
            role: Role::User,
            text,
            is_final: true,
        },
        "system" if text.to_lowercase().contains("error") => Bubble::Error { message: text },
        _ => Bubble::Text {
            role: Role::Assistant,
            text,
            is_final: true,
        },
    })
}

fn opt_str(value: Option<&Value>) -> Result<Option<String>, String> {
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(other) => Err(format!("is not a String: {other}")),
    }
}

/// One entry of `GET /sessions/{id}/pending-approvals`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct PendingApproval {
    /// Required string.
    pub call_id: String,
    /// Required string (never `null`).
    pub tool_name: String,
    /// Required object.
    pub arguments: Map<String, Value>,
    /// Required string the IDE feeds to `DateTime.parse`.
    #[serde(deserialize_with = "dart_datetime")]
    pub created_at: String,
    /// Optional string.
    pub reason: Option<String>,
}

/// `GET /sessions/{id}/pending-approvals` as the IDE reads it.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct PendingApprovals {
    /// Required string.
    pub session_id: String,
    /// Required number.
    #[serde(deserialize_with = "dart_int")]
    pub count: i64,
    /// Required list.
    pub pending_approvals: Vec<PendingApproval>,
}

/// Why a login failed, as the IDE's `AuthRemoteDataSource` tells them apart.
#[derive(Debug, thiserror::Error)]
pub enum LoginError {
    /// HTTP 401 (`Invalid credentials`).
    #[error("invalid credentials")]
    InvalidCredentials,
    /// HTTP 429 (`Too many attempts. Please try again later.`).
    #[error("too many attempts")]
    TooManyAttempts,
    /// Any other status or a transport error.
    #[error("authentication failed (status {status:?}): {message}")]
    Failed {
        /// The HTTP status, if an answer came.
        status: Option<u16>,
        /// What went wrong.
        message: String,
    },
    /// A 2xx answer the IDE's `AuthTokenModel.fromJson` cannot read.
    #[error("unreadable token answer: {0}")]
    InvalidResponse(String),
}

/// A failed REST call.
#[derive(Debug, thiserror::Error)]
pub enum RestError {
    /// A non-2xx answer (Dio throws on these).
    #[error("HTTP {status}: {body}")]
    Status {
        /// The status.
        status: u16,
        /// The body text.
        body: String,
    },
    /// A 2xx answer the IDE's models cannot parse.
    #[error("the IDE cannot parse the answer: {0}")]
    Parse(String),
    /// No answer.
    #[error("transport error: {0}")]
    Transport(String),
}

impl RestError {
    /// The HTTP status of a non-2xx answer.
    #[must_use]
    pub fn status(&self) -> Option<u16> {
        match self {
            RestError::Status { status, .. } => Some(*status),
            _ => None,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// WebSocket frames
// ---------------------------------------------------------------------------------------------

/// The IDE's `MessageModel`: what it sends (all 15 keys, `null` for unused ones, in this order)
/// and how it parses what it receives (every field optional but `type`; a value of the wrong
/// type fails the whole frame).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct MessageModel {
    /// Required.
    #[serde(rename = "type")]
    pub kind: String,
    /// Text of user and assistant messages, errors.
    pub content: Option<String>,
    /// `user` on the IDE's messages.
    pub role: Option<String>,
    /// Whether an assistant message is complete.
    pub is_final: Option<bool>,
    /// Tool call correlation id.
    pub call_id: Option<String>,
    /// Tool name.
    pub tool_name: Option<String>,
    /// Tool arguments.
    pub arguments: Option<Map<String, Value>>,
    /// Whether a tool call needs the user's consent.
    pub requires_approval: Option<bool>,
    /// A tool's result.
    pub result: Option<Map<String, Value>>,
    /// A tool's error or an error's text.
    pub error: Option<String>,
    /// Target agent of `switch_agent`.
    pub agent_type: Option<String>,
    /// Previous agent of `agent_switched`.
    pub from_agent: Option<String>,
    /// New agent of `agent_switched`.
    pub to_agent: Option<String>,
    /// Why (agent switch).
    pub reason: Option<String>,
    /// Anything else.
    pub metadata: Option<Map<String, Value>>,
}

impl MessageModel {
    /// `AgentRepositoryImpl.sendMessage`: type, content, role `user`.
    #[must_use]
    pub fn user_message(text: &str) -> Self {
        MessageModel {
            kind: "user_message".to_owned(),
            content: Some(text.to_owned()),
            role: Some("user".to_owned()),
            ..MessageModel::default()
        }
    }

    /// `AgentRepositoryImpl.sendToolResult`: call id, tool name, result object or error text.
    #[must_use]
    pub fn tool_result(
        call_id: &str,
        tool_name: &str,
        result: Option<Map<String, Value>>,
        error: Option<String>,
    ) -> Self {
        MessageModel {
            kind: "tool_result".to_owned(),
            call_id: Some(call_id.to_owned()),
            tool_name: Some(tool_name.to_owned()),
            result,
            error,
            ..MessageModel::default()
        }
    }

    /// The refusal the IDE sends when the user declines a tool call.
    #[must_use]
    pub fn refusal(call_id: &str, tool_name: &str) -> Self {
        Self::tool_result(
            call_id,
            tool_name,
            None,
            Some(format!("{REFUSAL_PREFIX}{tool_name}")),
        )
    }

    /// `AgentRepositoryImpl.switchAgent`: agent type and the user's text.
    #[must_use]
    pub fn switch_agent(agent_type: &str, content: &str) -> Self {
        MessageModel {
            kind: "switch_agent".to_owned(),
            agent_type: Some(agent_type.to_owned()),
            content: Some(content.to_owned()),
            ..MessageModel::default()
        }
    }

    /// The JSON text the IDE puts on the socket (`jsonEncode(message.toJson())`).
    #[must_use]
    pub fn to_json_text(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|e| {
            unreachable!("a struct of strings, bools and JSON maps always serialises: {e}")
        })
    }

    /// `MessageModel.toEntity`: the bubble the IDE renders for this frame. Fails only where the
    /// Dart code would throw (a `metadata` agent name that is not a string).
    pub fn to_bubble(&self) -> Result<Bubble, String> {
        let text = || self.content.clone().unwrap_or_default();
        Ok(match self.kind.as_str() {
            "user_message" | "assistant_message" => Bubble::Text {
                role: if self.kind == "user_message" {
                    Role::User
                } else {
                    Role::Assistant
                },
                text: text(),
                is_final: self.is_final.unwrap_or(true),
            },
            "tool_call" => Bubble::ToolCall(ToolCallRequest {
                call_id: self.call_id.clone().unwrap_or_default(),
                tool_name: self.tool_name.clone().unwrap_or_default(),
                arguments: self.arguments.clone().unwrap_or_default(),
                requires_approval: self.requires_approval.unwrap_or(false),
            }),
            "tool_result" => Bubble::ToolResult {
                call_id: self.call_id.clone().unwrap_or_default(),
                tool_name: self.tool_name.clone(),
                result: self.result.clone(),
                error: self.error.clone(),
            },
            "agent_switched" => {
                // Top-level names first, then `metadata['from_agent'] as String?` (which throws
                // on a non-string); `reason` is read from the top level only.
                let from_meta = |key: &str| -> Result<Option<String>, String> {
                    let value = self.metadata.as_ref().and_then(|m| m.get(key));
                    opt_str(value).map_err(|e| format!("metadata.{key} {e}"))
                };
                let pick = |top: &Option<String>, key: &str| -> Result<String, String> {
                    match top {
                        Some(name) if !name.is_empty() => Ok(name.clone()),
                        _ if self.metadata.is_some() => {
                            Ok(from_meta(key)?.unwrap_or_else(|| "unknown".to_owned()))
                        }
                        _ => Ok("unknown".to_owned()),
                    }
                };
                Bubble::AgentSwitch {
                    from_agent: pick(&self.from_agent, "from_agent")?,
                    to_agent: pick(&self.to_agent, "to_agent")?,
                    reason: self.reason.clone(),
                }
            }
            "error" => Bubble::Error {
                message: self
                    .content
                    .clone()
                    .or_else(|| self.error.clone())
                    .unwrap_or_else(|| "Unknown error".to_owned()),
            },
            _ => Bubble::Text {
                role: if self.role.as_deref() == Some("user") {
                    Role::User
                } else {
                    Role::Assistant
                },
                text: text(),
                is_final: true,
            },
        })
    }
}

/// `jsonDecode(event as String) as Map<String, dynamic>` then `MessageModel.fromJson`: what the
/// IDE does with each text frame. An error here is a frame the IDE drops as a `ParseException`.
pub fn parse_flutter_frame(text: &str) -> Result<MessageModel, String> {
    let value: Value = serde_json::from_str(text).map_err(|e| format!("invalid JSON: {e}"))?;
    if !value.is_object() {
        return Err(format!("not a JSON object: {value}"));
    }
    serde_json::from_value(value).map_err(|e| format!("MessageModel.fromJson: {e}"))
}

/// The author of a text bubble (`MessageRole`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The user.
    User,
    /// The assistant.
    Assistant,
}

/// A tool call as the IDE sees it (and hands to its executor).
#[derive(Debug, Clone, PartialEq)]
pub struct ToolCallRequest {
    /// `call_id` (empty if absent).
    pub call_id: String,
    /// `tool_name` (empty if absent).
    pub tool_name: String,
    /// `arguments` (empty if absent).
    pub arguments: Map<String, Value>,
    /// `requires_approval` (false if absent).
    pub requires_approval: bool,
}

/// One chat bubble, as the IDE renders a frame.
#[derive(Debug, Clone, PartialEq)]
pub enum Bubble {
    /// A text message (assistant text comes from `content` only).
    Text {
        /// Who wrote it.
        role: Role,
        /// The text (empty when `content` was absent).
        text: String,
        /// `is_final`, default true.
        is_final: bool,
    },
    /// A tool request.
    ToolCall(ToolCallRequest),
    /// A tool's result.
    ToolResult {
        /// `call_id`.
        call_id: String,
        /// `tool_name`.
        tool_name: Option<String>,
        /// `result`.
        result: Option<Map<String, Value>>,
        /// `error`.
        error: Option<String>,
    },
    /// An agent indicator.
    AgentSwitch {
        /// Previous agent (`unknown` if not given).
        from_agent: String,
        /// New agent (`unknown` if not given).
        to_agent: String,
        /// Why.
        reason: Option<String>,
    },
    /// An error bubble (`content`, else `error`).
    Error {
        /// The text shown.
        message: String,
    },
}

/// One frame as the IDE received it.
#[derive(Debug, Clone, PartialEq)]
pub struct ReceivedFrame {
    /// The frame's text (binary frames as `<binary N bytes>`).
    pub raw: String,
    /// The parsed model, or why the IDE would drop the frame.
    pub model: Result<MessageModel, String>,
    /// The bubble it renders (none for a dropped frame).
    pub bubble: Option<Bubble>,
}

impl ReceivedFrame {
    fn from_raw(raw: RawIncoming) -> Self {
        let (raw, model) = match raw {
            RawIncoming::Text(text) => {
                let model = parse_flutter_frame(&text);
                (text, model)
            }
            // `event as String` throws on a binary frame.
            RawIncoming::Binary(bytes) => (
                format!("<binary {} bytes>", bytes.len()),
                Err("binary frame: `event as String` fails".to_owned()),
            ),
        };
        let (model, bubble) = match model {
            Ok(model) => match model.to_bubble() {
                Ok(bubble) => (Ok(model), Some(bubble)),
                Err(e) => (Err(format!("toEntity: {e}")), None),
            },
            Err(e) => (Err(e), None),
        };
        ReceivedFrame { raw, model, bubble }
    }

    /// The frame's `type`, when it parsed.
    #[must_use]
    pub fn kind(&self) -> Option<&str> {
        self.model.as_ref().ok().map(|m| m.kind.as_str())
    }
}

/// What the IDE does with a tool call: run it and report, report a failure, or (for a call that
/// needs approval) refuse it.
#[derive(Debug, Clone, PartialEq)]
pub enum ToolDecision {
    /// Executed; this is the `result` object (e.g. `{"success": true, "content": "..."}`).
    Result(Map<String, Value>),
    /// Executed and failed with this text.
    Error(String),
    /// The user declined: `error: "Операция отклонена: <tool_name>"`.
    Refuse,
}

/// The frames of one turn of [`FlutterSocket::run_turn`].
#[derive(Debug, Clone, PartialEq)]
pub struct TurnTranscript {
    /// Every frame received during the turn, in order.
    pub frames: Vec<ReceivedFrame>,
    /// The tool calls the IDE answered, in order.
    pub tool_calls: Vec<ToolCallRequest>,
    /// The bubble that ended the turn (an assistant text or an error).
    pub last: Bubble,
}

impl TurnTranscript {
    /// The bubbles of the turn, in order.
    #[must_use]
    pub fn bubbles(&self) -> Vec<&Bubble> {
        self.frames
            .iter()
            .filter_map(|f| f.bubble.as_ref())
            .collect()
    }

    /// Assistant text bubbles of the turn.
    #[must_use]
    pub fn assistant_texts(&self) -> Vec<&str> {
        self.bubbles()
            .into_iter()
            .filter_map(|b| match b {
                Bubble::Text {
                    role: Role::Assistant,
                    text,
                    ..
                } => Some(text.as_str()),
                _ => None,
            })
            .collect()
    }
}

// ---------------------------------------------------------------------------------------------
// The client
// ---------------------------------------------------------------------------------------------

/// The Flutter IDE's REST side and socket factory.
#[derive(Debug, Clone)]
pub struct FlutterReplicaClient {
    http: reqwest::Client,
    gateway_url: String,
    tokens: Option<TokenSet>,
    timeout: Duration,
}

impl FlutterReplicaClient {
    /// A client for the gateway at `gateway_url` (`http://host:port`, no `/api/v1`).
    #[must_use]
    pub fn new(gateway_url: &str) -> Self {
        let http = reqwest::Client::builder()
            // Dio on dart:io identifies itself like this.
            .user_agent("Dart/3.6 (dart:io)")
            .timeout(DEFAULT_TIMEOUT)
            .build()
            .unwrap_or_else(|e| {
                unreachable!("a plain reqwest client without TLS options always builds: {e}")
            });
        FlutterReplicaClient {
            http,
            gateway_url: gateway_url.trim_end_matches('/').to_owned(),
            tokens: None,
            timeout: DEFAULT_TIMEOUT,
        }
    }

    /// Sets the bound of every wait of this client and its sockets.
    #[must_use]
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Uses `access_token` for REST calls (as if logged in).
    pub fn set_access_token(&mut self, access_token: &str) {
        self.tokens = Some(TokenSet {
            access_token: access_token.to_owned(),
            refresh_token: String::new(),
            token_type: "bearer".to_owned(),
            expires_in: 0,
            scope: None,
            issued_at: None,
        });
    }

    /// The tokens of the last successful login.
    #[must_use]
    pub fn tokens(&self) -> Option<&TokenSet> {
        self.tokens.as_ref()
    }

    /// The current access token.
    #[must_use]
    pub fn access_token(&self) -> Option<&str> {
        self.tokens.as_ref().map(|t| t.access_token.as_str())
    }

    /// The gateway base URL.
    #[must_use]
    pub fn gateway_url(&self) -> &str {
        &self.gateway_url
    }

    /// `POST {auth_url}/oauth/token` with the form `grant_type=password&username=..&password=..
    /// &client_id=codelab-flutter-app` (no scope), as `loginWithPassword` does; keeps the tokens.
    pub async fn login(
        &mut self,
        auth_url: &str,
        username: &str,
        password: &str,
    ) -> Result<TokenSet, LoginError> {
        let body = form_urlencoded::Serializer::new(String::new())
            .append_pair("grant_type", "password")
            .append_pair("username", username)
            .append_pair("password", password)
            .append_pair("client_id", FLUTTER_CLIENT_ID)
            .finish();
        let url = format!("{}/oauth/token", auth_url.trim_end_matches('/'));
        let response = self
            .http
            .post(&url)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body)
            .send()
            .await
            .map_err(|e| LoginError::Failed {
                status: None,
                message: e.to_string(),
            })?;
        let status = response.status().as_u16();
        let text = response.text().await.unwrap_or_default();
        match status {
            200..=299 => {}
            401 => return Err(LoginError::InvalidCredentials),
            429 => return Err(LoginError::TooManyAttempts),
            _ => {
                return Err(LoginError::Failed {
                    status: Some(status),
                    message: text,
                });
            }
        }
        let tokens = parse_object::<TokenSet>(&text).map_err(LoginError::InvalidResponse)?;
        self.tokens = Some(tokens.clone());
        Ok(tokens)
    }

    /// `POST /api/v1/sessions` with the Bearer token and no body; the answer must have `id`
    /// (string) and `message_count` (number).
    pub async fn create_session(&self) -> Result<SessionModel, RestError> {
        let text = self
            .rest(reqwest::Method::POST, "/api/v1/sessions", None)
            .await?;
        parse_object::<SessionModel>(&text).map_err(RestError::Parse)
    }

    /// `GET /api/v1/sessions`: `data['sessions'] as List` of sessions.
    pub async fn list_sessions(&self) -> Result<Vec<SessionModel>, RestError> {
        let text = self
            .rest(reqwest::Method::GET, "/api/v1/sessions", None)
            .await?;
        parse_object::<SessionList>(&text)
            .map(|l| l.sessions)
            .map_err(RestError::Parse)
    }

    /// `GET /api/v1/sessions/{id}` as `SessionModel.fromJson`; on 404 the IDE falls back to
    /// scanning `GET /api/v1/sessions` (the original gateway had no such route).
    pub async fn get_session(&self, session_id: &str) -> Result<SessionModel, RestError> {
        let path = format!("/api/v1/sessions/{session_id}");
        match self.rest(reqwest::Method::GET, &path, None).await {
            Ok(text) => parse_object::<SessionModel>(&text).map_err(RestError::Parse),
            Err(RestError::Status { status: 404, body }) => self
                .list_sessions()
                .await?
                .into_iter()
                .find(|s| s.id == session_id)
                .ok_or(RestError::Status { status: 404, body }),
            Err(e) => Err(e),
        }
    }

    /// `PATCH /api/v1/sessions/{id}` with `{"title": ...}` (Dio sends it as JSON).
    pub async fn rename_session(
        &self,
        session_id: &str,
        title: &str,
    ) -> Result<SessionModel, RestError> {
        let path = format!("/api/v1/sessions/{session_id}");
        let body = serde_json::json!({ "title": title });
        let text = self.rest(reqwest::Method::PATCH, &path, Some(body)).await?;
        parse_object::<SessionModel>(&text).map_err(RestError::Parse)
    }

    /// `DELETE /api/v1/sessions/{id}` (any 2xx is success).
    pub async fn delete_session(&self, session_id: &str) -> Result<(), RestError> {
        let path = format!("/api/v1/sessions/{session_id}");
        self.rest(reqwest::Method::DELETE, &path, None)
            .await
            .map(drop)
    }

    /// `GET /api/v1/sessions/{id}/history` (the IDE shows an empty history on 404).
    pub async fn history(&self, session_id: &str) -> Result<SessionHistory, RestError> {
        let path = format!("/api/v1/sessions/{session_id}/history");
        let text = self.rest(reqwest::Method::GET, &path, None).await?;
        parse_object::<SessionHistory>(&text).map_err(RestError::Parse)
    }

    /// `GET /api/v1/sessions/{id}/pending-approvals` (the IDE treats 404 as none).
    pub async fn pending_approvals(&self, session_id: &str) -> Result<PendingApprovals, RestError> {
        let path = format!("/api/v1/sessions/{session_id}/pending-approvals");
        let text = self.rest(reqwest::Method::GET, &path, None).await?;
        parse_object::<PendingApprovals>(&text).map_err(RestError::Parse)
    }

    /// Opens `ws://.../api/v1/ws/{session_id}` with no credentials at all, as
    /// `WebSocketChannel.connect(uri)` does.
    pub async fn connect(&self, session_id: &str) -> Result<FlutterSocket, ConnectError> {
        let url = session_ws_url(&self.gateway_url, session_id);
        let conn = WsConn::open(&url, &[], self.timeout).await?;
        Ok(FlutterSocket {
            conn,
            session_id: session_id.to_owned(),
            frames: Vec::new(),
        })
    }

    async fn rest(
        &self,
        method: reqwest::Method,
        path: &str,
        json_body: Option<Value>,
    ) -> Result<String, RestError> {
        let mut request = self
            .http
            .request(method, format!("{}{path}", self.gateway_url))
            .timeout(self.timeout);
        if let Some(token) = self.access_token() {
            request = request.bearer_auth(token);
        }
        if let Some(body) = json_body {
            request = request
                .header("content-type", "application/json; charset=utf-8")
                .body(body.to_string());
        }
        let response = request
            .send()
            .await
            .map_err(|e| RestError::Transport(e.to_string()))?;
        let status = response.status().as_u16();
        let text = response
            .text()
            .await
            .map_err(|e| RestError::Transport(e.to_string()))?;
        if (200..300).contains(&status) {
            Ok(text)
        } else {
            Err(RestError::Status { status, body: text })
        }
    }
}

/// `response.data as Map<String, dynamic>` then `fromJson`.
fn parse_object<T: serde::de::DeserializeOwned>(text: &str) -> Result<T, String> {
    let value: Value = serde_json::from_str(text).map_err(|e| format!("invalid JSON: {e}"))?;
    if !value.is_object() {
        return Err(format!("not a JSON object: {text}"));
    }
    serde_json::from_value(value).map_err(|e| format!("{e} in {text}"))
}

/// The IDE's socket to one session: sends `MessageModel`s, keeps every received frame and its
/// bubble.
#[derive(Debug)]
pub struct FlutterSocket {
    conn: WsConn,
    session_id: String,
    frames: Vec<ReceivedFrame>,
}

impl FlutterSocket {
    /// The session this socket was opened for.
    #[must_use]
    pub fn session_id(&self) -> &str {
        &self.session_id
    }

    /// Changes the bound of each wait.
    pub fn set_timeout(&mut self, timeout: Duration) {
        self.conn.set_timeout(timeout);
    }

    /// Every frame received so far.
    #[must_use]
    pub fn frames(&self) -> &[ReceivedFrame] {
        &self.frames
    }

    /// Every bubble rendered so far.
    #[must_use]
    pub fn bubbles(&self) -> Vec<&Bubble> {
        self.frames
            .iter()
            .filter_map(|f| f.bubble.as_ref())
            .collect()
    }

    /// The frames the IDE would have dropped, with the reason.
    #[must_use]
    pub fn parse_errors(&self) -> Vec<(&str, &str)> {
        self.frames
            .iter()
            .filter_map(|f| match &f.model {
                Err(e) => Some((f.raw.as_str(), e.as_str())),
                Ok(_) => None,
            })
            .collect()
    }

    /// Types received that the IDE does not know (each became an assistant bubble).
    #[must_use]
    pub fn unknown_types(&self) -> Vec<&str> {
        self.frames
            .iter()
            .filter_map(ReceivedFrame::kind)
            .filter(|k| !FLUTTER_FRAME_TYPES.contains(k))
            .collect()
    }

    /// How the socket ended, once it has.
    #[must_use]
    pub fn close_info(&self) -> Option<&CloseInfo> {
        self.conn.close_info()
    }

    /// Sends one `MessageModel` as the IDE does.
    pub async fn send(&mut self, message: &MessageModel) -> Result<(), SocketError> {
        self.conn.send_text(message.to_json_text()).await
    }

    /// Sends any text (for robustness tests; the IDE itself only sends `MessageModel`s).
    pub async fn send_raw_text(&mut self, text: &str) -> Result<(), SocketError> {
        self.conn.send_text(text.to_owned()).await
    }

    /// Sends a `user_message`.
    pub async fn send_user_message(&mut self, text: &str) -> Result<(), SocketError> {
        self.send(&MessageModel::user_message(text)).await
    }

    /// Sends a successful `tool_result`.
    pub async fn send_tool_result(
        &mut self,
        call_id: &str,
        tool_name: &str,
        result: Map<String, Value>,
    ) -> Result<(), SocketError> {
        let message = MessageModel::tool_result(call_id, tool_name, Some(result), None);
        self.send(&message).await
    }

    /// Sends a failed `tool_result`.
    pub async fn send_tool_error(
        &mut self,
        call_id: &str,
        tool_name: &str,
        error: &str,
    ) -> Result<(), SocketError> {
        let message = MessageModel::tool_result(call_id, tool_name, None, Some(error.to_owned()));
        self.send(&message).await
    }

    /// Sends the refusal of a call that needed approval.
    pub async fn send_refusal(
        &mut self,
        call_id: &str,
        tool_name: &str,
    ) -> Result<(), SocketError> {
        self.send(&MessageModel::refusal(call_id, tool_name)).await
    }

    /// Sends `switch_agent`.
    pub async fn send_switch_agent(
        &mut self,
        agent_type: &str,
        content: &str,
    ) -> Result<(), SocketError> {
        self.send(&MessageModel::switch_agent(agent_type, content))
            .await
    }

    /// The next frame (bounded by the timeout), recorded with its bubble.
    pub async fn next_frame(&mut self) -> Result<ReceivedFrame, SocketError> {
        let raw = self.conn.recv("the next frame").await?;
        let frame = ReceivedFrame::from_raw(raw);
        self.frames.push(frame.clone());
        Ok(frame)
    }

    /// Reads frames until one satisfies `predicate`, all within one timeout.
    pub async fn wait_for(
        &mut self,
        what: &str,
        mut predicate: impl FnMut(&ReceivedFrame) -> bool,
    ) -> Result<ReceivedFrame, SocketError> {
        let deadline = Instant::now() + self.conn.timeout();
        loop {
            let raw = self.conn.recv_until(deadline, what).await?;
            let frame = ReceivedFrame::from_raw(raw);
            self.frames.push(frame.clone());
            if predicate(&frame) {
                return Ok(frame);
            }
        }
    }

    /// Reads frames until the server closes the socket; returns how it closed.
    pub async fn expect_closed(&mut self) -> Result<CloseInfo, SocketError> {
        let deadline = Instant::now() + self.conn.timeout();
        loop {
            match self.conn.recv_until(deadline, "the socket to close").await {
                Ok(raw) => self.frames.push(ReceivedFrame::from_raw(raw)),
                Err(SocketError::Closed(info)) => return Ok(info),
                Err(e) => return Err(e),
            }
        }
    }

    /// The IDE's chat loop for one user message: sends it, answers every `tool_call` with
    /// `executor`'s decision, and returns when an `assistant_message` or an `error` arrives.
    pub async fn run_turn(
        &mut self,
        text: &str,
        executor: impl FnMut(&ToolCallRequest) -> ToolDecision,
    ) -> Result<TurnTranscript, SocketError> {
        let start = self.frames.len();
        self.send_user_message(text).await?;
        self.finish_turn(start, executor).await
    }

    /// Like [`run_turn`](Self::run_turn) without sending anything first (after a reconnect, or
    /// after answering a call by hand).
    pub async fn continue_turn(
        &mut self,
        executor: impl FnMut(&ToolCallRequest) -> ToolDecision,
    ) -> Result<TurnTranscript, SocketError> {
        let start = self.frames.len();
        self.finish_turn(start, executor).await
    }

    async fn finish_turn(
        &mut self,
        start: usize,
        mut executor: impl FnMut(&ToolCallRequest) -> ToolDecision,
    ) -> Result<TurnTranscript, SocketError> {
        let mut tool_calls = Vec::new();
        loop {
            let frame = self.next_frame().await?;
            let last = match (&frame.bubble, frame.kind()) {
                (Some(Bubble::ToolCall(call)), _) => {
                    if tool_calls.len() >= MAX_TOOL_CALLS_PER_TURN {
                        return Err(SocketError::Ws(format!(
                            "more than {MAX_TOOL_CALLS_PER_TURN} tool calls in one turn"
                        )));
                    }
                    let message = match executor(call) {
                        ToolDecision::Result(result) => MessageModel::tool_result(
                            &call.call_id,
                            &call.tool_name,
                            Some(result),
                            None,
                        ),
                        ToolDecision::Error(error) => MessageModel::tool_result(
                            &call.call_id,
                            &call.tool_name,
                            None,
                            Some(error),
                        ),
                        ToolDecision::Refuse => {
                            MessageModel::refusal(&call.call_id, &call.tool_name)
                        }
                    };
                    tool_calls.push(call.clone());
                    self.send(&message).await?;
                    continue;
                }
                (Some(bubble @ Bubble::Error { .. }), _) => bubble.clone(),
                (Some(bubble), Some("assistant_message")) => bubble.clone(),
                _ => continue,
            };
            return Ok(TurnTranscript {
                frames: self.frames[start..].to_vec(),
                tool_calls,
                last,
            });
        }
    }

    /// Closes normally (the IDE's `sink.close()`).
    pub async fn close(mut self) {
        self.conn.close().await;
    }

    /// Drops the connection without a close handshake (the IDE crashed or lost the network).
    pub fn abort(self) {
        self.conn.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn user_message_carries_all_fifteen_keys_in_order() {
        assert_eq!(
            MessageModel::user_message("hi").to_json_text(),
            r#"{"type":"user_message","content":"hi","role":"user","is_final":null,"call_id":null,"tool_name":null,"arguments":null,"requires_approval":null,"result":null,"error":null,"agent_type":null,"from_agent":null,"to_agent":null,"reason":null,"metadata":null}"#
        );
    }

    #[test]
    fn tool_results_and_refusals_match_the_ide() {
        // serde_json maps keep keys sorted (no `preserve_order`); Dart keeps insertion order.
        // Key order inside `result` means nothing to a JSON reader, so the test uses sorted keys.
        let result = json!({"content": "x = 1\n", "success": true});
        let Value::Object(result) = result else {
            unreachable!()
        };
        assert_eq!(
            MessageModel::tool_result("call_1", "read_file", Some(result), None).to_json_text(),
            r#"{"type":"tool_result","content":null,"role":null,"is_final":null,"call_id":"call_1","tool_name":"read_file","arguments":null,"requires_approval":null,"result":{"content":"x = 1\n","success":true},"error":null,"agent_type":null,"from_agent":null,"to_agent":null,"reason":null,"metadata":null}"#
        );
        assert_eq!(
            MessageModel::refusal("call_2", "write_file").to_json_text(),
            r#"{"type":"tool_result","content":null,"role":null,"is_final":null,"call_id":"call_2","tool_name":"write_file","arguments":null,"requires_approval":null,"result":null,"error":"Операция отклонена: write_file","agent_type":null,"from_agent":null,"to_agent":null,"reason":null,"metadata":null}"#
        );
        assert_eq!(
            MessageModel::switch_agent("debug", "why?").to_json_text(),
            r#"{"type":"switch_agent","content":"why?","role":null,"is_final":null,"call_id":null,"tool_name":null,"arguments":null,"requires_approval":null,"result":null,"error":null,"agent_type":"debug","from_agent":null,"to_agent":null,"reason":null,"metadata":null}"#
        );
    }

    #[test]
    fn the_ides_frames_are_read_by_the_gateways_parser() {
        for message in [
            MessageModel::user_message("hi"),
            MessageModel::refusal("c", "write_file"),
            MessageModel::switch_agent("coder", "go"),
        ] {
            let parsed = codelab_protocol::ide::parse_client_frame(&message.to_json_text());
            assert!(parsed.is_ok(), "{message:?}: {parsed:?}");
        }
    }

    #[test]
    fn wrong_types_fail_the_frame() {
        for bad in [
            r#"{"type":"assistant_message","content":42}"#,
            r#"{"type":"assistant_message","is_final":"true"}"#,
            r#"{"type":"tool_call","call_id":"c","arguments":"{}"}"#,
            r#"{"type":"tool_call","call_id":"c","requires_approval":1}"#,
            r#"{"type":"tool_result","call_id":"c","result":"done"}"#,
            r#"{"type":"error","metadata":[1]}"#,
            r#"{"content":"no type"}"#,
            r#"[1]"#,
            r#"{"#,
        ] {
            assert!(parse_flutter_frame(bad).is_err(), "{bad} should fail");
        }
        // Nulls and unknown keys are fine.
        let ok = parse_flutter_frame(
            r#"{"type":"assistant_message","content":"Hi","token":"Hi","is_final":true,"call_id":null,"seq":3,"metadata":{"seq":3}}"#,
        )
        .unwrap();
        assert_eq!(ok.content.as_deref(), Some("Hi"));
    }

    #[test]
    fn each_frame_renders_one_bubble_like_the_ide() {
        let bubble = |text: &str| parse_flutter_frame(text).unwrap().to_bubble().unwrap();
        assert_eq!(
            bubble(
                r#"{"type":"assistant_message","content":"Done","token":"Done","is_final":true}"#
            ),
            Bubble::Text {
                role: Role::Assistant,
                text: "Done".into(),
                is_final: true
            }
        );
        // Only `content` is read for text; `token` alone renders an empty bubble.
        assert_eq!(
            bubble(r#"{"type":"assistant_message","token":"lost"}"#),
            Bubble::Text {
                role: Role::Assistant,
                text: String::new(),
                is_final: true
            }
        );
        assert_eq!(
            bubble(r#"{"type":"error","error":"boom","is_final":true}"#),
            Bubble::Error {
                message: "boom".into()
            }
        );
        assert_eq!(
            bubble(r#"{"type":"error","content":"first","error":"second"}"#),
            Bubble::Error {
                message: "first".into()
            }
        );
        assert_eq!(
            bubble(
                r#"{"type":"agent_switched","content":"Switched","metadata":{"from_agent":"orchestrator","to_agent":"coder","reason":"r"}}"#
            ),
            Bubble::AgentSwitch {
                from_agent: "orchestrator".into(),
                to_agent: "coder".into(),
                reason: None
            }
        );
        assert_eq!(
            bubble(r#"{"type":"agent_switched","from_agent":"a","to_agent":"b","reason":"why"}"#),
            Bubble::AgentSwitch {
                from_agent: "a".into(),
                to_agent: "b".into(),
                reason: Some("why".into())
            }
        );
        assert!(
            parse_flutter_frame(r#"{"type":"agent_switched","metadata":{"to_agent":7}}"#)
                .unwrap()
                .to_bubble()
                .is_err()
        );
        // Unknown types become (possibly empty) assistant bubbles.
        assert_eq!(
            bubble(r#"{"type":"session_info","session_id":"s"}"#),
            Bubble::Text {
                role: Role::Assistant,
                text: String::new(),
                is_final: true
            }
        );
        assert_eq!(
            bubble(
                r#"{"type":"tool_call","call_id":"c1","tool_name":"read_file","arguments":{"path":"a.py"},"requires_approval":false,"is_final":true}"#
            ),
            Bubble::ToolCall(ToolCallRequest {
                call_id: "c1".into(),
                tool_name: "read_file".into(),
                arguments: Map::from_iter([("path".to_owned(), json!("a.py"))]),
                requires_approval: false
            })
        );
    }

    #[test]
    fn binary_frames_are_parse_errors() {
        let frame = ReceivedFrame::from_raw(RawIncoming::Binary(b"{}".to_vec()));
        assert!(frame.model.is_err());
        assert!(frame.bubble.is_none());
    }

    #[test]
    fn rest_models_require_what_the_dart_models_require() {
        let session: SessionModel = parse_object(
            r#"{"id":"s1","message_count":0,"created_at":"2026-01-29T10:00:00.123456Z","is_active":true,"current_agent":"orchestrator","title":null}"#,
        )
        .unwrap();
        assert_eq!(session.id, "s1");
        assert!(parse_object::<SessionModel>(r#"{"session_id":"s1","message_count":0}"#).is_err());
        assert!(parse_object::<SessionModel>(r#"{"id":1,"message_count":0}"#).is_err());
        assert!(parse_object::<SessionModel>(r#"{"id":"s","message_count":"0"}"#).is_err());
        assert!(parse_object::<SessionModel>(r#"{"id":"s"}"#).is_err());
        assert!(
            parse_object::<SessionModel>(
                r#"{"id":"s","message_count":0,"created_at":"yesterday"}"#
            )
            .is_err()
        );
        assert!(
            parse_object::<SessionModel>(r#"{"id":"s","message_count":0,"is_active":"yes"}"#)
                .is_err()
        );

        let tokens: TokenSet = parse_object(
            r#"{"access_token":"a","refresh_token":"r","token_type":"bearer","expires_in":900,"scope":"api:read"}"#,
        )
        .unwrap();
        assert_eq!(tokens.expires_in, 900);
        assert!(
            parse_object::<TokenSet>(
                r#"{"access_token":"a","token_type":"bearer","expires_in":900}"#
            )
            .is_err()
        );

        let history: SessionHistory = parse_object(
            r#"{"session_id":"s","messages":[{"role":"user","content":"hi"},{"role":"assistant","content":"","name":"coder","tool_calls":[{"id":"c1","type":"function","function":{"name":"read_file","arguments":"{\"path\":\"a.py\"}"}}]},{"role":"tool","content":"x","tool_call_id":"c1"}],"message_count":3,"last_activity":"2026-01-29T10:00:00Z","current_agent":"coder","agent_history":[{"from":"orchestrator","to":"coder","reason":"r","timestamp":"2026-01-29T10:00:00Z","confidence":"high","method":"fallback"}],"tool_calls":[]}"#,
        )
        .unwrap();
        let bubbles = history.bubbles();
        assert!(matches!(&bubbles[1], Ok(Bubble::ToolCall(c)) if c.arguments["path"] == "a.py"));
        assert!(
            parse_object::<SessionHistory>(
                r#"{"session_id":"s","messages":[{"content":"x"}],"message_count":1}"#
            )
            .is_err()
        );
        assert!(
            parse_object::<SessionHistory>(
                r#"{"session_id":"s","messages":[],"message_count":0,"agent_history":[{"from":1}]}"#
            )
            .is_err()
        );

        let pending: PendingApprovals = parse_object(
            r#"{"session_id":"s","count":1,"pending_approvals":[{"request_id":"c","request_type":"tool","subject":"write_file","details":{},"reason":"File modification requires user approval","created_at":"2026-01-29T10:00:00+00:00","call_id":"c","tool_name":"write_file","arguments":{"path":"a.md"}}]}"#,
        )
        .unwrap();
        assert_eq!(pending.pending_approvals[0].tool_name, "write_file");
        assert!(
            parse_object::<PendingApprovals>(r#"{"session_id":"s","count":1,"pending_approvals":[{"call_id":"c","tool_name":null,"arguments":{},"created_at":"2026-01-29T10:00:00Z"}]}"#)
                .is_err()
        );
        assert!(
            parse_object::<PendingApprovals>(r#"{"session_id":"s","count":1,"pending_approvals":[{"call_id":"c","tool_name":"w","arguments":"{}","created_at":"2026-01-29T10:00:00Z"}]}"#)
                .is_err()
        );
    }

    #[test]
    fn dart_dates() {
        for ok in [
            "2026-01-29T10:00:00Z",
            "2026-01-29T10:00:00.123456",
            "2026-01-29 10:00:00",
            "2026-01-29T10:00:00.5+00:00",
            "2026-01-29",
        ] {
            assert!(dart_datetime_parses(ok), "{ok}");
        }
        for bad in ["", "yesterday", "29.01.2026", "1738144800"] {
            assert!(!dart_datetime_parses(bad), "{bad}");
        }
    }
}
