//! IDE clients for end-to-end tests and benchmarks of the gateway.
//!
//! - [`FlutterReplicaClient`] behaves like the Flutter IDE (`codelab_ide`, package
//!   `codelab_ai_assistant`), the only real client of the gateway: its OAuth login, its REST calls
//!   and the exact field requirements of its Dart models, its WebSocket without credentials, its
//!   15-key frames with `null`s, and its strict parsing and rendering of what comes back (one bubble
//!   per frame). A gateway change that would break the IDE breaks these tests.
//! - [`Protocol2Client`] speaks our protocol 2 (token deltas, `approval_required`, `turn_finished`,
//!   `hitl_decision`, `cancel_turn`, replay after reconnect by `seq`).
//!
//! Every wait is bounded by the client's timeout and returns as soon as its condition holds:
//! nothing here sleeps.

mod flutter;
mod protocol2;
pub mod steps;

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub use flutter::{
    Bubble, FLUTTER_CLIENT_ID, FLUTTER_FRAME_TYPES, FlutterReplicaClient, FlutterSocket,
    LoginError, MessageModel, PendingApproval, PendingApprovals, REFUSAL_PREFIX, ReceivedFrame,
    RestError, Role, SessionHistory, SessionHistoryMessage, SessionModel, TokenSet,
    ToolCallRequest, ToolDecision, TurnTranscript, parse_flutter_frame,
};
pub use protocol2::{
    HelloMode, P2Frame, Protocol2Client, Protocol2Options, ResumePoint, TokenPlacement,
};

/// How long a client waits for one expected frame or answer before giving up.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a WebSocket could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The server answered the upgrade request with an HTTP status instead of `101`.
    #[error("upgrade refused with HTTP {status}: {body}")]
    Refused {
        /// The HTTP status of the answer (401, 403, 404, ...).
        status: u16,
        /// The answer's body, if any.
        body: String,
    },
    /// Anything else: bad URL, TCP error, timeout, handshake failure.
    #[error("websocket connect failed: {0}")]
    Failed(String),
}

impl ConnectError {
    /// The HTTP status of a refused upgrade.
    #[must_use]
    pub fn status(&self) -> Option<u16> {
        match self {
            ConnectError::Refused { status, .. } => Some(*status),
            ConnectError::Failed(_) => None,
        }
    }
}

/// How a socket ended: the close frame's code and reason (no code when the TCP connection just
/// dropped).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloseInfo {
    /// The close code (1000 normal, 1008 policy, 1009 too big, ...).
    pub code: Option<u16>,
    /// The close reason text.
    pub reason: String,
}

/// A failure while waiting for frames.
#[derive(Debug, thiserror::Error)]
pub enum SocketError {
    /// Nothing matching arrived in time.
    #[error("timed out after {0:?} waiting for {1}")]
    Timeout(Duration, String),
    /// The server closed the socket (or the connection dropped).
    #[error("socket closed (code {:?}, reason {:?})", .0.code, .0.reason)]
    Closed(CloseInfo),
    /// A transport or protocol error.
    #[error("websocket error: {0}")]
    Ws(String),
}

impl SocketError {
    /// The close information when the socket was closed.
    #[must_use]
    pub fn close_info(&self) -> Option<&CloseInfo> {
        match self {
            SocketError::Closed(info) => Some(info),
            _ => None,
        }
    }
}

/// One data message as it came off the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum RawIncoming {
    Text(String),
    Binary(Vec<u8>),
}

type WsStream = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A WebSocket with bounded reads; shared by both clients.
pub(crate) struct WsConn {
    stream: WsStream,
    timeout: Duration,
    closed: Option<CloseInfo>,
}

impl std::fmt::Debug for WsConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WsConn")
            .field("timeout", &self.timeout)
            .field("closed", &self.closed)
            .finish_non_exhaustive()
    }
}

impl WsConn {
    /// Opens `url` (`ws://...`) with the given extra headers.
    pub(crate) async fn open(
        url: &str,
        headers: &[(&'static str, String)],
        timeout: Duration,
    ) -> Result<Self, ConnectError> {
        let mut request = url
            .into_client_request()
            .map_err(|e| ConnectError::Failed(format!("bad url {url}: {e}")))?;
        for (name, value) in headers {
            let value = HeaderValue::from_str(value)
                .map_err(|e| ConnectError::Failed(format!("bad header {name}: {e}")))?;
            request.headers_mut().insert(*name, value);
        }
        let connect = tokio_tungstenite::connect_async(request);
        let (stream, _response) = match tokio::time::timeout(timeout, connect).await {
            Err(_) => {
                return Err(ConnectError::Failed(format!(
                    "no answer within {timeout:?}"
                )));
            }
            Ok(Err(tungstenite::Error::Http(response))) => {
                let status = response.status().as_u16();
                let body = response
                    .body()
                    .as_ref()
                    .map(|b| String::from_utf8_lossy(b).into_owned())
                    .unwrap_or_default();
                return Err(ConnectError::Refused { status, body });
            }
            Ok(Err(e)) => return Err(ConnectError::Failed(e.to_string())),
            Ok(Ok(pair)) => pair,
        };
        Ok(WsConn {
            stream,
            timeout,
            closed: None,
        })
    }

    pub(crate) fn timeout(&self) -> Duration {
        self.timeout
    }

    pub(crate) fn set_timeout(&mut self, timeout: Duration) {
        self.timeout = timeout;
    }

    /// How the socket ended, once it has.
    pub(crate) fn close_info(&self) -> Option<&CloseInfo> {
        self.closed.as_ref()
    }

    /// Sends one text frame.
    pub(crate) async fn send_text(&mut self, text: String) -> Result<(), SocketError> {
        if let Some(info) = &self.closed {
            return Err(SocketError::Closed(info.clone()));
        }
        self.stream
            .send(Message::text(text))
            .await
            .map_err(|e| self.map_error(e))
    }

    /// Sends one binary frame (the Flutter IDE never does; robustness tests do).
    pub(crate) async fn send_binary(&mut self, bytes: Vec<u8>) -> Result<(), SocketError> {
        self.stream
            .send(Message::binary(bytes))
            .await
            .map_err(|e| self.map_error(e))
    }

    /// The next data message, waiting at most until `deadline`. Pings are answered by
    /// tungstenite itself (like the IDE's library does), so they are skipped here.
    pub(crate) async fn recv_until(
        &mut self,
        deadline: Instant,
        waiting_for: &str,
    ) -> Result<RawIncoming, SocketError> {
        if let Some(info) = &self.closed {
            return Err(SocketError::Closed(info.clone()));
        }
        loop {
            let next = match tokio::time::timeout_at(deadline, self.stream.next()).await {
                Err(_) => {
                    return Err(SocketError::Timeout(self.timeout, waiting_for.to_owned()));
                }
                Ok(next) => next,
            };
            match next {
                None => return Err(self.mark_closed(None)),
                Some(Err(e)) => return Err(self.map_error(e)),
                Some(Ok(Message::Text(text))) => return Ok(RawIncoming::Text(text.to_string())),
                Some(Ok(Message::Binary(bytes))) => return Ok(RawIncoming::Binary(bytes.to_vec())),
                Some(Ok(Message::Close(frame))) => return Err(self.mark_closed(frame)),
                Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {}
            }
        }
    }

    /// The next data message within the client's timeout.
    pub(crate) async fn recv(&mut self, waiting_for: &str) -> Result<RawIncoming, SocketError> {
        let deadline = Instant::now() + self.timeout;
        self.recv_until(deadline, waiting_for).await
    }

    /// Sends a normal close and waits (bounded) for the server's answer.
    pub(crate) async fn close(&mut self) {
        if self.closed.is_some() {
            return;
        }
        let frame = CloseFrame {
            code: CloseCode::Normal,
            reason: "".into(),
        };
        if self.stream.close(Some(frame)).await.is_err() {
            return;
        }
        let deadline = Instant::now() + self.timeout;
        while let Ok(Some(Ok(_))) = tokio::time::timeout_at(deadline, self.stream.next()).await {}
        self.closed.get_or_insert(CloseInfo {
            code: Some(1000),
            reason: String::new(),
        });
    }

    /// Drops the TCP connection without a close handshake (a crashed or offline IDE).
    pub(crate) fn abort(self) {
        drop(self.stream);
    }

    fn mark_closed(&mut self, frame: Option<CloseFrame>) -> SocketError {
        let info = self.closed.get_or_insert_with(|| CloseInfo {
            code: frame.as_ref().map(|f| u16::from(f.code)),
            reason: frame.map(|f| f.reason.to_string()).unwrap_or_default(),
        });
        SocketError::Closed(info.clone())
    }

    fn map_error(&mut self, e: tungstenite::Error) -> SocketError {
        match e {
            tungstenite::Error::ConnectionClosed
            | tungstenite::Error::AlreadyClosed
            | tungstenite::Error::Io(_)
            | tungstenite::Error::Protocol(
                tungstenite::error::ProtocolError::ResetWithoutClosingHandshake,
            ) => self.mark_closed(None),
            other => SocketError::Ws(other.to_string()),
        }
    }
}

/// `http://host:port[/prefix]` → `ws://host:port[/prefix]` (and `https` → `wss`), without a
/// trailing slash.
#[must_use]
pub fn ws_base(http_base: &str) -> String {
    let base = http_base.trim_end_matches('/');
    if let Some(rest) = base.strip_prefix("https://") {
        format!("wss://{rest}")
    } else if let Some(rest) = base.strip_prefix("http://") {
        format!("ws://{rest}")
    } else {
        base.to_owned()
    }
}

/// The IDE socket URL of a session: `{ws base}/api/v1/ws/{session_id}`.
#[must_use]
pub fn session_ws_url(http_base: &str, session_id: &str) -> String {
    format!("{}/api/v1/ws/{session_id}", ws_base(http_base))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ws_urls_follow_the_http_base() {
        assert_eq!(ws_base("http://127.0.0.1:8000/"), "ws://127.0.0.1:8000");
        assert_eq!(ws_base("https://codelab.example"), "wss://codelab.example");
        assert_eq!(
            session_ws_url("http://localhost", "abc"),
            "ws://localhost/api/v1/ws/abc"
        );
    }
}
