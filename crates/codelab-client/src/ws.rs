//! The session WebSocket, protocol 2: `ws://{server}/api/v1/ws/{session}?protocol=2` with
//! `Authorization: Bearer`, resumable with `last_seq`.

use std::time::Duration;

use codelab_protocol::ide::ClientFrame;
use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::api::segment;

/// How long opening a socket may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);

/// Why a socket could not be opened or used.
#[derive(Debug, thiserror::Error)]
pub enum SocketError {
    /// No connection (refused, DNS, timeout).
    #[error("cannot reach the gateway at {url}: {reason}")]
    Unreachable {
        /// The socket URL (without credentials).
        url: String,
        /// What went wrong.
        reason: String,
    },
    /// The gateway answered the upgrade with an HTTP error.
    #[error("the gateway refused the connection (HTTP {status}): {description}")]
    Refused {
        /// HTTP status (400, 401, 403, 503).
        status: u16,
        /// `error` of the answer.
        error: String,
        /// `error_description` of the answer.
        description: String,
    },
    /// The connection ended.
    #[error("the connection was lost{}", match .code { Some(code) => format!(" (close code {code}{})", if .reason.is_empty() { String::new() } else { format!(": {}", .reason) }), None => String::new() })]
    Closed {
        /// The close code, when the server sent one.
        code: Option<u16>,
        /// The close reason.
        reason: String,
    },
    /// Any other WebSocket failure.
    #[error("websocket error: {0}")]
    Protocol(String),
}

impl SocketError {
    /// Whether trying again later may work (the server restarts, the network comes back).
    pub fn is_retryable(&self) -> bool {
        match self {
            SocketError::Unreachable { .. } | SocketError::Closed { .. } => true,
            SocketError::Refused { status, .. } => matches!(status, 429 | 502 | 503 | 504),
            SocketError::Protocol(_) => true,
        }
    }

    /// Whether the token was refused (a refresh may help).
    pub fn is_auth_refusal(&self) -> bool {
        match self {
            SocketError::Refused { status: 401, .. } => true,
            // 403 is also the answer for a session that is not the user's; only a token
            // error is worth a refresh.
            SocketError::Refused {
                status: 403, error, ..
            } => error != "forbidden",
            _ => false,
        }
    }
}

/// The socket URL of a session: `http` becomes `ws`, `https` becomes `wss`.
pub fn socket_url(server: &str, session_id: &str, last_seq: Option<u64>) -> String {
    let base = server.trim_end_matches('/');
    let base = if let Some(rest) = base.strip_prefix("https://") {
        format!("wss://{rest}")
    } else if let Some(rest) = base.strip_prefix("http://") {
        format!("ws://{rest}")
    } else {
        base.to_owned()
    };
    let mut url = format!("{base}/api/v1/ws/{}?protocol=2", segment(session_id));
    if let Some(seq) = last_seq {
        url.push_str(&format!("&last_seq={seq}"));
    }
    url
}

type Stream = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// An open protocol-2 socket.
pub struct GatewaySocket {
    stream: Stream,
}

impl std::fmt::Debug for GatewaySocket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GatewaySocket").finish_non_exhaustive()
    }
}

fn map_error(error: tungstenite::Error) -> SocketError {
    match error {
        tungstenite::Error::ConnectionClosed
        | tungstenite::Error::AlreadyClosed
        | tungstenite::Error::Io(_)
        | tungstenite::Error::Protocol(_) => SocketError::Closed {
            code: None,
            reason: String::new(),
        },
        other => SocketError::Protocol(other.to_string()),
    }
}

impl GatewaySocket {
    /// Opens the session's socket, resuming after `last_seq` when given.
    pub async fn connect(
        server: &str,
        session_id: &str,
        token: &str,
        last_seq: Option<u64>,
    ) -> Result<GatewaySocket, SocketError> {
        let url = socket_url(server, session_id, last_seq);
        let unreachable = |reason: String| SocketError::Unreachable {
            url: url.clone(),
            reason,
        };
        let mut request = url
            .as_str()
            .into_client_request()
            .map_err(|e| unreachable(format!("bad URL: {e}")))?;
        let bearer = HeaderValue::from_str(&format!("Bearer {token}"))
            .map_err(|_| unreachable("the access token is not a valid header value".into()))?;
        request.headers_mut().insert("authorization", bearer);
        let connect = tokio_tungstenite::connect_async(request);
        let (stream, _) = match tokio::time::timeout(CONNECT_TIMEOUT, connect).await {
            Err(_) => return Err(unreachable(format!("no answer within {CONNECT_TIMEOUT:?}"))),
            Ok(Err(tungstenite::Error::Http(response))) => {
                let status = response.status().as_u16();
                let body: Value = response
                    .body()
                    .as_deref()
                    .and_then(|b| serde_json::from_slice(b).ok())
                    .unwrap_or(Value::Null);
                let field = |k: &str| {
                    body.get(k)
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                        .to_owned()
                };
                return Err(SocketError::Refused {
                    status,
                    error: field("error"),
                    description: field("error_description"),
                });
            }
            Ok(Err(tungstenite::Error::Io(e))) => return Err(unreachable(e.to_string())),
            Ok(Err(e)) => return Err(unreachable(e.to_string())),
            Ok(Ok(pair)) => pair,
        };
        Ok(GatewaySocket { stream })
    }

    /// Sends one frame.
    pub async fn send(&mut self, frame: &ClientFrame) -> Result<(), SocketError> {
        let text =
            serde_json::to_string(frame).map_err(|e| SocketError::Protocol(e.to_string()))?;
        self.stream
            .send(Message::text(text))
            .await
            .map_err(map_error)
    }

    /// The next frame as JSON (a text frame that is not JSON comes as a string). Pings are
    /// answered by the library while reading.
    pub async fn next(&mut self) -> Result<Value, SocketError> {
        loop {
            match self.stream.next().await {
                None => {
                    return Err(SocketError::Closed {
                        code: None,
                        reason: String::new(),
                    });
                }
                Some(Err(e)) => return Err(map_error(e)),
                Some(Ok(Message::Text(text))) => {
                    return Ok(serde_json::from_str(&text)
                        .unwrap_or_else(|_| Value::String(text.to_string())));
                }
                Some(Ok(Message::Binary(bytes))) => {
                    return Ok(serde_json::from_slice(&bytes).unwrap_or(Value::Null));
                }
                Some(Ok(Message::Close(frame))) => {
                    return Err(SocketError::Closed {
                        code: frame.as_ref().map(|f| u16::from(f.code)),
                        reason: frame.map(|f| f.reason.to_string()).unwrap_or_default(),
                    });
                }
                Some(Ok(_)) => {}
            }
        }
    }

    /// Closes normally (bounded wait for the server's answer).
    pub async fn close(mut self) {
        let frame = CloseFrame {
            code: CloseCode::Normal,
            reason: "".into(),
        };
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            if self.stream.close(Some(frame)).await.is_ok() {
                while let Some(Ok(_)) = self.stream.next().await {}
            }
        })
        .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socket_urls_follow_the_server() {
        assert_eq!(
            socket_url("http://127.0.0.1:8080/", "abc", None),
            "ws://127.0.0.1:8080/api/v1/ws/abc?protocol=2"
        );
        assert_eq!(
            socket_url("https://codelab.example", "abc", Some(41)),
            "wss://codelab.example/api/v1/ws/abc?protocol=2&last_seq=41"
        );
    }

    #[tokio::test]
    async fn tls_servers_are_dialled_with_tls() {
        // A plain TCP peer that hangs up: the TLS handshake fails with an error (not "TLS
        // support is not compiled in", and no panic choosing a crypto provider).
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        crate::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                drop(socket);
            }
        });
        let error = GatewaySocket::connect(&format!("https://127.0.0.1:{port}"), "s", "t", None)
            .await
            .unwrap_err();
        let text = error.to_string();
        assert!(matches!(error, SocketError::Unreachable { .. }), "{text}");
        assert!(!text.to_lowercase().contains("not compiled"), "{text}");
    }

    #[test]
    fn only_token_refusals_are_worth_a_refresh() {
        let refused = |status, error: &str| SocketError::Refused {
            status,
            error: error.into(),
            description: String::new(),
        };
        assert!(refused(403, "invalid_token").is_auth_refusal());
        assert!(!refused(403, "forbidden").is_auth_refusal());
        assert!(refused(503, "temporarily_unavailable").is_retryable());
        assert!(!refused(400, "invalid_request").is_retryable());
    }
}
