//! A client of protocol 2: token deltas (`assistant_message` with `is_final: false`), a final
//! `assistant_message` with the whole text, `approval_required`, `turn_finished`,
//! `session_info`, `metadata.seq` on every stored event, `hitl_decision`, `cancel_turn`, and
//! replay after a reconnect from the last `seq` seen.

use std::time::Duration;

use serde_json::{Value, json};
use tokio::time::Instant;

use super::{
    CloseInfo, ConnectError, DEFAULT_TIMEOUT, RawIncoming, SocketError, WsConn, session_ws_url,
};

/// How the client opts in to protocol 2.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HelloMode {
    /// `?protocol=2` on the URL.
    Query,
    /// A first frame `{"type":"hello","protocol":2}` (with `last_seq` when resuming).
    Frame,
    /// Both.
    Both,
}

/// Where the access token goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenPlacement {
    /// `?access_token=...`.
    Query,
    /// `Authorization: Bearer ...` on the upgrade request.
    Header,
}

/// Connection options of a [`Protocol2Client`].
#[derive(Debug, Clone)]
pub struct Protocol2Options {
    /// How protocol 2 is requested.
    pub hello: HelloMode,
    /// How a resume point is sent: `?last_seq=N` (`Query`), in the hello frame (`Frame`), or
    /// both.
    pub resume: HelloMode,
    /// A token, if any.
    pub access_token: Option<String>,
    /// Where the token goes.
    pub token_placement: TokenPlacement,
    /// Resume after this `seq` (set by [`Protocol2Client::reconnect`]).
    pub last_seq: Option<u64>,
    /// Bound of every wait.
    pub timeout: Duration,
}

impl Default for Protocol2Options {
    fn default() -> Self {
        Protocol2Options {
            hello: HelloMode::Query,
            resume: HelloMode::Query,
            access_token: None,
            token_placement: TokenPlacement::Query,
            last_seq: None,
            timeout: DEFAULT_TIMEOUT,
        }
    }
}

impl Protocol2Options {
    /// With a token in the given place.
    #[must_use]
    pub fn with_token(mut self, token: &str, placement: TokenPlacement) -> Self {
        self.access_token = Some(token.to_owned());
        self.token_placement = placement;
        self
    }
}

/// One received frame (any JSON; a frame that is not JSON is kept as a string value).
#[derive(Debug, Clone, PartialEq)]
pub struct P2Frame(pub Value);

impl P2Frame {
    /// `type` (empty if absent).
    #[must_use]
    pub fn kind(&self) -> &str {
        self.str("type").unwrap_or("")
    }

    /// A string field.
    #[must_use]
    pub fn str(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(Value::as_str)
    }

    /// Any field.
    #[must_use]
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.0.get(key)
    }

    /// `metadata.seq` (or a top-level `seq`); 0 and absent mean "not stored" (deltas).
    #[must_use]
    pub fn seq(&self) -> Option<u64> {
        self.0
            .get("metadata")
            .and_then(|m| m.get("seq"))
            .or_else(|| self.0.get("seq"))
            .and_then(Value::as_u64)
            .filter(|seq| *seq > 0)
    }

    /// `is_final` (absent = false).
    #[must_use]
    pub fn is_final(&self) -> bool {
        self.0
            .get("is_final")
            .and_then(Value::as_bool)
            .unwrap_or(false)
    }

    /// `content`.
    #[must_use]
    pub fn content(&self) -> Option<&str> {
        self.str("content")
    }

    /// `call_id`.
    #[must_use]
    pub fn call_id(&self) -> Option<&str> {
        self.str("call_id")
    }

    /// `requires_approval` (absent = false).
    #[must_use]
    pub fn requires_approval(&self) -> bool {
        self.0
            .get("requires_approval")
            .and_then(Value::as_bool)
            .unwrap_or(false)
    }

    /// A token delta: `assistant_message` with `is_final: false`.
    #[must_use]
    pub fn is_delta(&self) -> bool {
        self.kind() == "assistant_message" && !self.is_final()
    }

    /// The final `assistant_message` of a reply.
    #[must_use]
    pub fn is_final_text(&self) -> bool {
        self.kind() == "assistant_message" && self.is_final()
    }

    /// `turn_finished` with this outcome (from `outcome` or `metadata.outcome`).
    #[must_use]
    pub fn is_turn_finished(&self, outcome: &str) -> bool {
        self.kind() == "turn_finished" && self.outcome() == Some(outcome)
    }

    /// The `outcome` of a `turn_finished` (top level or `metadata`).
    #[must_use]
    pub fn outcome(&self) -> Option<&str> {
        self.str("outcome").or_else(|| {
            self.0
                .get("metadata")
                .and_then(|m| m.get("outcome"))
                .and_then(Value::as_str)
        })
    }
}

/// A protocol-2 socket to one session, keeping every frame it received.
#[derive(Debug)]
pub struct Protocol2Client {
    conn: WsConn,
    base_url: String,
    session_id: String,
    options: Protocol2Options,
    frames: Vec<P2Frame>,
    last_seq: u64,
}

impl Protocol2Client {
    /// Opens `ws://.../api/v1/ws/{session_id}` with the options' query parameters and headers,
    /// then sends the hello frame if the options say so.
    pub async fn connect(
        base_url: &str,
        session_id: &str,
        options: Protocol2Options,
    ) -> Result<Self, ConnectError> {
        // A block: the serializer is not `Send` and must be gone before the await, so that a
        // connecting client can be spawned on a multi-threaded runtime.
        let mut headers = Vec::new();
        let query = {
            let mut query = form_urlencoded::Serializer::new(String::new());
            if matches!(options.hello, HelloMode::Query | HelloMode::Both) {
                query.append_pair("protocol", "2");
            }
            if let Some(token) = &options.access_token {
                match options.token_placement {
                    TokenPlacement::Query => {
                        query.append_pair("access_token", token);
                    }
                    TokenPlacement::Header => {
                        headers.push(("authorization", format!("Bearer {token}")))
                    }
                }
            }
            if let Some(seq) = options.last_seq
                && matches!(options.resume, HelloMode::Query | HelloMode::Both)
            {
                query.append_pair("last_seq", &seq.to_string());
            }
            query.finish()
        };
        let mut url = session_ws_url(base_url, session_id);
        if !query.is_empty() {
            url = format!("{url}?{query}");
        }
        let conn = WsConn::open(&url, &headers, options.timeout).await?;
        let mut client = Protocol2Client {
            conn,
            base_url: base_url.to_owned(),
            session_id: session_id.to_owned(),
            last_seq: options.last_seq.unwrap_or(0),
            options,
            frames: Vec::new(),
        };
        if matches!(client.options.hello, HelloMode::Frame | HelloMode::Both) {
            let mut hello = json!({"type": "hello", "protocol": 2});
            if let Some(seq) = client.options.last_seq
                && matches!(client.options.resume, HelloMode::Frame | HelloMode::Both)
            {
                hello["last_seq"] = json!(seq);
            }
            client
                .send_json(&hello)
                .await
                .map_err(|e| ConnectError::Failed(format!("sending hello: {e}")))?;
        }
        Ok(client)
    }

    /// The session id of the URL.
    #[must_use]
    pub fn session_id(&self) -> &str {
        &self.session_id
    }

    /// Every frame received on this connection.
    #[must_use]
    pub fn frames(&self) -> &[P2Frame] {
        &self.frames
    }

    /// The highest `seq` seen (including the resume point this connection started from).
    #[must_use]
    pub fn last_seq(&self) -> u64 {
        self.last_seq
    }

    /// How the socket ended, once it has.
    #[must_use]
    pub fn close_info(&self) -> Option<&CloseInfo> {
        self.conn.close_info()
    }

    /// Changes the bound of each wait.
    pub fn set_timeout(&mut self, timeout: Duration) {
        self.conn.set_timeout(timeout);
        self.options.timeout = timeout;
    }

    /// Sends a JSON value as one text frame.
    pub async fn send_json(&mut self, value: &Value) -> Result<(), SocketError> {
        self.conn.send_text(value.to_string()).await
    }

    /// Sends any text.
    pub async fn send_raw_text(&mut self, text: &str) -> Result<(), SocketError> {
        self.conn.send_text(text.to_owned()).await
    }

    /// Sends a binary frame.
    pub async fn send_binary(&mut self, bytes: Vec<u8>) -> Result<(), SocketError> {
        self.conn.send_binary(bytes).await
    }

    /// Sends `user_message`.
    pub async fn send_user_message(&mut self, text: &str) -> Result<(), SocketError> {
        self.send_json(&json!({"type": "user_message", "content": text, "role": "user"}))
            .await
    }

    /// Sends a successful `tool_result`.
    pub async fn send_tool_result(
        &mut self,
        call_id: &str,
        tool_name: &str,
        result: Value,
    ) -> Result<(), SocketError> {
        self.send_json(&json!({
            "type": "tool_result", "call_id": call_id, "tool_name": tool_name, "result": result,
        }))
        .await
    }

    /// Sends a failed `tool_result`.
    pub async fn send_tool_error(
        &mut self,
        call_id: &str,
        tool_name: &str,
        error: &str,
    ) -> Result<(), SocketError> {
        self.send_json(&json!({
            "type": "tool_result", "call_id": call_id, "tool_name": tool_name, "error": error,
        }))
        .await
    }

    /// Sends `hitl_decision` (`approve`, `edit` with `modified_arguments`, `reject` with
    /// `feedback`).
    pub async fn send_hitl_decision(
        &mut self,
        call_id: &str,
        decision: &str,
        modified_arguments: Option<Value>,
        feedback: Option<&str>,
    ) -> Result<(), SocketError> {
        let mut frame = json!({"type": "hitl_decision", "call_id": call_id, "decision": decision});
        if let Some(arguments) = modified_arguments {
            frame["modified_arguments"] = arguments;
        }
        if let Some(feedback) = feedback {
            frame["feedback"] = json!(feedback);
        }
        self.send_json(&frame).await
    }

    /// Sends `cancel_turn`.
    pub async fn cancel_turn(&mut self) -> Result<(), SocketError> {
        self.send_json(&json!({"type": "cancel_turn"})).await
    }

    fn record(&mut self, raw: RawIncoming) -> P2Frame {
        let value = match raw {
            RawIncoming::Text(text) => serde_json::from_str(&text).unwrap_or(Value::String(text)),
            RawIncoming::Binary(bytes) => Value::String(format!("<binary {} bytes>", bytes.len())),
        };
        let frame = P2Frame(value);
        if let Some(seq) = frame.seq() {
            self.last_seq = self.last_seq.max(seq);
        }
        self.frames.push(frame.clone());
        frame
    }

    /// The next frame (bounded by the timeout).
    pub async fn next_frame(&mut self) -> Result<P2Frame, SocketError> {
        let raw = self.conn.recv("the next frame").await?;
        Ok(self.record(raw))
    }

    /// Reads frames until one satisfies `predicate`, all within one timeout.
    pub async fn wait_for(
        &mut self,
        what: &str,
        mut predicate: impl FnMut(&P2Frame) -> bool,
    ) -> Result<P2Frame, SocketError> {
        let deadline = Instant::now() + self.conn.timeout();
        loop {
            let raw = self.conn.recv_until(deadline, what).await?;
            let frame = self.record(raw);
            if predicate(&frame) {
                return Ok(frame);
            }
        }
    }

    /// Reads frames until one of type `kind` arrives.
    pub async fn wait_for_type(&mut self, kind: &str) -> Result<P2Frame, SocketError> {
        self.wait_for(kind, |f| f.kind() == kind).await
    }

    /// Reads frames until `predicate` holds and returns every frame read meanwhile (inclusive).
    pub async fn collect_until(
        &mut self,
        what: &str,
        predicate: impl FnMut(&P2Frame) -> bool,
    ) -> Result<Vec<P2Frame>, SocketError> {
        let start = self.frames.len();
        self.wait_for(what, predicate).await?;
        Ok(self.frames[start..].to_vec())
    }

    /// Reads frames until the server closes the socket; returns how it closed.
    pub async fn expect_closed(&mut self) -> Result<CloseInfo, SocketError> {
        let deadline = Instant::now() + self.conn.timeout();
        loop {
            match self.conn.recv_until(deadline, "the socket to close").await {
                Ok(raw) => {
                    self.record(raw);
                }
                Err(SocketError::Closed(info)) => return Ok(info),
                Err(e) => return Err(e),
            }
        }
    }

    /// The text of the token deltas received so far, concatenated (`content` of each).
    #[must_use]
    pub fn delta_text(&self) -> String {
        self.frames
            .iter()
            .filter(|f| f.is_delta())
            .filter_map(P2Frame::content)
            .collect()
    }

    /// Closes normally (a close frame, then the server's answer within the timeout).
    pub async fn close(mut self) {
        self.conn.close().await;
    }

    /// Closes normally and opens a new connection that resumes after [`last_seq`](Self::last_seq).
    pub async fn reconnect(mut self) -> Result<Protocol2Client, ConnectError> {
        self.conn.close().await;
        let mut options = self.options.clone();
        options.last_seq = Some(self.last_seq);
        Protocol2Client::connect(&self.base_url, &self.session_id, options).await
    }

    /// Drops the connection without a close handshake; returns what a resume needs
    /// (base URL, session id, last seq, options).
    #[must_use]
    pub fn abort(self) -> ResumePoint {
        let point = ResumePoint {
            base_url: self.base_url,
            session_id: self.session_id,
            last_seq: self.last_seq,
            options: self.options,
            frames: self.frames,
        };
        self.conn.abort();
        point
    }
}

/// Where an aborted [`Protocol2Client`] stopped.
#[derive(Debug, Clone)]
pub struct ResumePoint {
    /// Gateway base URL.
    pub base_url: String,
    /// Session.
    pub session_id: String,
    /// Highest `seq` received.
    pub last_seq: u64,
    /// The options it connected with.
    pub options: Protocol2Options,
    /// Every frame it had received.
    pub frames: Vec<P2Frame>,
}

impl ResumePoint {
    /// Connects again, resuming after `last_seq`.
    pub async fn resume(&self) -> Result<Protocol2Client, ConnectError> {
        let mut options = self.options.clone();
        options.last_seq = Some(self.last_seq);
        Protocol2Client::connect(&self.base_url, &self.session_id, options).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_expose_seq_deltas_and_outcomes() {
        let delta = P2Frame(json!({"type":"assistant_message","content":"Hel","is_final":false}));
        assert!(delta.is_delta());
        assert_eq!(delta.seq(), None);
        let done =
            P2Frame(json!({"type":"turn_finished","outcome":"cancelled","metadata":{"seq":9}}));
        assert!(done.is_turn_finished("cancelled"));
        assert_eq!(done.seq(), Some(9));
        let nested =
            P2Frame(json!({"type":"turn_finished","metadata":{"seq":3,"outcome":"completed"}}));
        assert!(nested.is_turn_finished("completed"));
        let zero = P2Frame(json!({"type":"assistant_message","metadata":{"seq":0}}));
        assert_eq!(zero.seq(), None);
    }
}
