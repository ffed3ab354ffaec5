//! The IDE WebSocket, `GET /api/v1/ws/{session_id}` (alias `/ws/{session_id}`).
//!
//! The upgrade decides who the socket acts for (`GATEWAY__WS_AUTH`, see
//! `docs/websocket-protocol.md`): with a token, its user, who must own the session; without
//! one, in `session` mode, the owner of the existing session whose unguessable id was
//! presented; in `off` mode (development), `dev`, with sessions created on first use. Before
//! that, a browser's `Origin` must be allowed (`origin`); the socket's
//! [`permissions::FramePermissions`] follow from how it authenticated. After the upgrade
//! `connection` relays frames to the runtime and renders the session's events (from the
//! fan-out) for the socket's profile (`render`).

pub mod connection;
mod limits;
pub mod origin;
pub mod permissions;
pub mod render;

use std::collections::HashMap;
use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::extract::rejection::QueryRejection;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::json;

pub use render::Profile;

use crate::AppState;
use crate::auth::{AuthError, Principal, READ_SCOPE};
use crate::config::WsAuthMode;
use crate::metrics;
use crate::runtime_client::{MAX_RECORD_BYTES, RuntimeError, encode_segment};
use permissions::FramePermissions;

/// The user of sockets in `off` mode on sessions that do not exist yet (the runtime's
/// development user).
pub const DEV_USER: &str = "dev";
/// The subprotocol a browser uses to carry a token (`Sec-WebSocket-Protocol: bearer, <token>`:
/// browsers cannot set headers on a WebSocket).
pub const BEARER_SUBPROTOCOL: &str = "bearer";
/// Longest session id accepted in the path.
const MAX_SESSION_ID_LEN: usize = 128;
/// Longest id a client may choose in `off` mode (the runtime's rule).
const MAX_CHOSEN_ID_LEN: usize = 64;
/// Read buffer of a socket. tungstenite allocates and zero-fills it up front and keeps it
/// while the socket lives, so it is a large part of an idle socket's memory (1 KiB would be
/// 100 MB for 100,000 sockets, docs/gateway.md#benchmark); a larger message still arrives
/// whole, read 512 bytes per system call (IDE frames are mostly far smaller).
const READ_BUFFER_BYTES: usize = 512;

/// The WebSocket routes.
pub fn routes() -> Router<Arc<AppState>> {
    metrics::describe();
    Router::new()
        .route("/api/v1/ws/{session_id}", get(upgrade))
        .route("/ws/{session_id}", get(upgrade))
}

/// Who a socket acts for, on which session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Access {
    /// The session.
    pub session_id: String,
    /// The user every runtime call acts for.
    pub user_id: String,
    /// The runtime may create the session (`off` mode).
    pub dev_sessions: bool,
    /// Which frames the socket may send.
    pub permissions: FramePermissions,
}

/// Why an upgrade was refused.
#[derive(Debug)]
enum Refusal {
    BadRequest(String),
    /// A browser page of an origin that is not allowed.
    Origin,
    Unauthenticated,
    BadCredentials(AuthError),
    Forbidden,
    Runtime(RuntimeError),
}

impl Refusal {
    fn outcome(&self) -> &'static str {
        match self {
            Refusal::BadRequest(_) => "bad_request",
            Refusal::Origin => "origin_refused",
            Refusal::Unauthenticated => "unauthorized",
            Refusal::BadCredentials(_) | Refusal::Forbidden => "forbidden",
            Refusal::Runtime(_) => "runtime_unavailable",
        }
    }
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        let (status, error, description) = match self {
            Refusal::BadRequest(text) => (StatusCode::BAD_REQUEST, "invalid_request", text),
            Refusal::Origin => (
                StatusCode::FORBIDDEN,
                "forbidden",
                "this origin may not open WebSockets here; an operator can allow it in \
                 GATEWAY__WS_ALLOWED_ORIGINS"
                    .to_owned(),
            ),
            Refusal::Unauthenticated => return token_required(),
            // Keys unavailable: the token may be fine, retrying later can work.
            Refusal::BadCredentials(error @ AuthError::JwksUnavailable) => {
                return error.into_response();
            }
            Refusal::BadCredentials(error) => {
                (StatusCode::FORBIDDEN, error.error_code(), error.to_string())
            }
            // The same answer for a missing and a foreign session: ids cannot be probed.
            Refusal::Forbidden => (
                StatusCode::FORBIDDEN,
                "forbidden",
                "no such session for these credentials".to_owned(),
            ),
            Refusal::Runtime(error) => {
                tracing::warn!(%error, "cannot check a WebSocket's session");
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "temporarily_unavailable",
                    "the agent runtime cannot be reached; try again later".to_owned(),
                )
            }
        };
        (
            status,
            Json(json!({"error": error, "error_description": description})),
        )
            .into_response()
    }
}

/// The upgrade: profile and resume point from the query, credentials, session access.
async fn upgrade(
    State(state): State<Arc<AppState>>,
    Path(session_id): Path<String>,
    query: Result<Query<HashMap<String, String>>, QueryRejection>,
    headers: HeaderMap,
    ws: WebSocketUpgrade,
) -> Response {
    let query = query.map(|Query(q)| q).unwrap_or_default();
    let (profile, last_seq, access, subprotocol) =
        match admit(&state, &session_id, &query, &headers).await {
            Ok(admitted) => admitted,
            Err(refusal) => {
                metrics::connection(refusal.outcome());
                return refusal.into_response();
            }
        };
    // Counted against the user the socket acts for: a tokenless socket in `session` mode
    // counts against the session's owner.
    let claim = match limits::claim(&state, &access.user_id) {
        Ok(claim) => claim,
        Err(refused) => return refused.into_response(),
    };
    metrics::connection("accepted");
    let config = &state.config;
    let frame_limit = config.ws_max_frame_bytes.max(1024);
    let mut ws = ws
        .read_buffer_size(READ_BUFFER_BYTES)
        // Frames go out as they are written; nothing waits in a per-socket buffer.
        .write_buffer_size(0)
        // Room for the largest event the runtime may send (a tool call carrying a whole
        // file) and some unsent rest before writes count as failing.
        .max_write_buffer_size(MAX_RECORD_BYTES.saturating_mul(2))
        .max_message_size(frame_limit)
        .max_frame_size(frame_limit);
    if subprotocol {
        ws = ws.protocols([BEARER_SUBPROTOCOL]);
    }
    ws.on_failed_upgrade(|error| tracing::debug!(%error, "WebSocket upgrade failed"))
        .on_upgrade(move |socket| connection::run(socket, state, access, profile, last_seq, claim))
}

/// Everything decided before the upgrade; the `bool` says the token came as a subprotocol.
async fn admit(
    state: &AppState,
    session_id: &str,
    query: &HashMap<String, String>,
    headers: &HeaderMap,
) -> Result<(Profile, Option<u64>, Access, bool), Refusal> {
    let profile = match query.get("protocol").map(|p| p.trim()) {
        None | Some("") => Profile::Flutter,
        Some(raw) => raw
            .parse::<u64>()
            .ok()
            .and_then(Profile::from_number)
            .ok_or_else(|| {
                Refusal::BadRequest(format!("protocol must be 1 or 2, got \"{raw}\""))
            })?,
    };
    let last_seq = match query.get("last_seq").map(|s| s.trim()) {
        None | Some("") => None,
        Some(raw) => Some(raw.parse::<u64>().map_err(|_| {
            Refusal::BadRequest(format!(
                "last_seq must be a non-negative integer, got \"{raw}\""
            ))
        })?),
    };
    if !usable_session_id(session_id) {
        return Err(Refusal::BadRequest(format!(
            "the session id must be 1 to {MAX_SESSION_ID_LEN} characters of A-Z a-z 0-9 _ . -"
        )));
    }
    if !origin::allowed(headers, &state.config) {
        tracing::debug!("refused a WebSocket from an origin that is not allowed");
        return Err(Refusal::Origin);
    }
    let subprotocol_token = subprotocol_token(headers);
    let query_token = query
        .get("access_token")
        .or_else(|| query.get("token"))
        .map(String::as_str)
        .filter(|t| !t.trim().is_empty());
    let principal = state
        .auth
        .authenticate(headers, query_token.or(subprotocol_token.as_deref()))
        .await
        .map_err(|error| {
            metrics::auth_failure(error.reason());
            tracing::debug!(reason = error.reason(), "refused WebSocket credentials");
            Refusal::BadCredentials(error)
        })?;
    // Watching a session is reading it; acting is checked per frame (`permissions`).
    if let Some(principal) = &principal
        && let Err(error) = principal.require(READ_SCOPE)
    {
        metrics::auth_failure(error.reason());
        return Err(Refusal::BadCredentials(error));
    }
    let mode = state.config.ws_auth_mode();
    let access = decide_access(state, session_id, principal, mode).await?;
    Ok((profile, last_seq, access, subprotocol_token.is_some()))
}

/// The session access of a socket (see the module docs).
async fn decide_access(
    state: &AppState,
    session_id: &str,
    principal: Option<Principal>,
    mode: WsAuthMode,
) -> Result<Access, Refusal> {
    let runtime = &state.runtime;
    let caller = principal.as_ref();
    let access = |user_id: String, dev_sessions: bool| Access {
        session_id: session_id.to_owned(),
        user_id,
        dev_sessions,
        permissions: FramePermissions::for_socket(caller, dev_sessions),
    };
    match (principal.as_ref().map(|p| p.user_id.clone()), mode) {
        (Some(user_id), _) => {
            let path = format!("/sessions/{}", encode_segment(session_id));
            let (status, _) = runtime
                .request(reqwest::Method::GET, &path, &user_id, None, false)
                .await
                .map_err(Refusal::Runtime)?;
            match status {
                200 => Ok(access(user_id, false)),
                // Development: the user's session is created on first use, unless the id
                // is someone else's.
                404 if mode == WsAuthMode::Off && creatable_session_id(session_id) => match runtime
                    .session_owner(session_id)
                    .await
                    .map_err(Refusal::Runtime)?
                {
                    None => Ok(access(user_id, true)),
                    Some(_) => Err(Refusal::Forbidden),
                },
                404 => Err(Refusal::Forbidden),
                status => Err(Refusal::Runtime(RuntimeError::Status {
                    status,
                    detail: "unexpected answer to a session lookup".to_owned(),
                })),
            }
        }
        (None, WsAuthMode::Required) => {
            metrics::auth_failure("missing_token");
            // Once per process: the operator of an IDE that cannot send a token learns the
            // setting from the log as well as from the refusal.
            static HINTED: std::sync::Once = std::sync::Once::new();
            HINTED.call_once(|| tracing::warn!("{TOKEN_REQUIRED}"));
            Err(Refusal::Unauthenticated)
        }
        (None, WsAuthMode::Session | WsAuthMode::Off) => {
            let owner = runtime
                .session_owner(session_id)
                .await
                .map_err(Refusal::Runtime)?;
            let development = mode == WsAuthMode::Off;
            match owner {
                // Knowing the unguessable id is the capability: act as its owner.
                Some(owner) => Ok(access(owner, development)),
                None if development && creatable_session_id(session_id) => {
                    Ok(access(DEV_USER.to_owned(), true))
                }
                None => Err(Refusal::Forbidden),
            }
        }
    }
}

/// Why a socket without a token is refused in `required` mode, naming the setting to change.
const TOKEN_REQUIRED: &str = "a token is required (GATEWAY__WS_AUTH=required); set \
    GATEWAY__WS_AUTH=session to let IDEs without tokens (the Flutter IDE) attach to existing \
    sessions";

/// 401 for a tokenless upgrade in `required` mode: the status the Flutter IDE has always got
/// for a refused credential, with a description naming the setting that lets it in.
fn token_required() -> Response {
    let body = json!({ "error": "unauthorized", "error_description": TOKEN_REQUIRED });
    let mut response = (StatusCode::UNAUTHORIZED, Json(body)).into_response();
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        axum::http::HeaderValue::from_static("Bearer"),
    );
    response
}

/// The token of `Sec-WebSocket-Protocol: bearer, <token>`, if that is what was offered.
fn subprotocol_token(headers: &HeaderMap) -> Option<String> {
    let offered: Vec<String> = headers
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .map(|item| item.trim().to_owned())
        .filter(|item| !item.is_empty())
        .collect();
    let position = offered
        .iter()
        .position(|item| item.eq_ignore_ascii_case(BEARER_SUBPROTOCOL))?;
    offered.get(position + 1).cloned()
}

/// 1 to 128 of `A-Z a-z 0-9 _ . -`, not only dots (a dot segment would change the runtime
/// path).
fn usable_session_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_SESSION_ID_LEN
        && !id.bytes().all(|b| b == b'.')
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
}

/// Whether the runtime would create a session with this client-chosen id.
fn creatable_session_id(id: &str) -> bool {
    usable_session_id(id) && id.len() <= MAX_CHOSEN_ID_LEN
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn a_bearer_subprotocol_carries_the_token() {
        let mut headers = HeaderMap::new();
        assert_eq!(subprotocol_token(&headers), None);
        headers.insert(
            header::SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_static("bearer, eyJ.abc.def"),
        );
        assert_eq!(subprotocol_token(&headers).as_deref(), Some("eyJ.abc.def"));
        headers.insert(
            header::SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_static("graphql-ws"),
        );
        assert_eq!(subprotocol_token(&headers), None);
        headers.insert(
            header::SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_static("Bearer"),
        );
        assert_eq!(subprotocol_token(&headers), None);
    }

    #[test]
    fn session_ids_are_safe_path_segments() {
        assert!(usable_session_id("0f8fad5b-d9cb-469f-a165-70867728950e"));
        assert!(usable_session_id("new_1739180000000"));
        for bad in ["", ".", "..", "a/b", "a b", "a%2Fb", &"x".repeat(129)] {
            assert!(!usable_session_id(bad), "{bad:?}");
        }
        assert!(usable_session_id(&"x".repeat(100)));
        assert!(!creatable_session_id(&"x".repeat(100)));
    }
}
