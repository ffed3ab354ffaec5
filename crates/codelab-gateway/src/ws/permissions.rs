//! Which client frames a socket may send, decided once at the upgrade from how it
//! authenticated, and checked for every frame before it reaches the runtime.
//!
//! A socket without a token (`session` mode) proves only that it knows a session id, so it
//! gets what the Flutter IDE needs and nothing more: a `tool_result` stays the IDE's answer to
//! a call it ran, or refused, after asking its user, but a server-side decision
//! (`hitl_decision`, `plan_decision`, `cancel_turn`, and any frame type added later) needs a
//! token. A token without `api:write` may watch a session but not act in it. See
//! docs/websocket-protocol.md, "What a socket may send".

use codelab_protocol::ide::ServerFrame;

use super::render::Frame;
use crate::auth::{Principal, WRITE_SCOPE};

/// The frame types the Flutter IDE sends, allowed on a tokenless `session`-mode socket. An
/// allowlist, so a frame type added later is refused there until it is listed here.
const FLUTTER_IDE_FRAMES: [&str; 4] = ["user_message", "tool_result", "switch_agent", "hello"];

/// What a socket's frames may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FramePermissions {
    /// Every frame: a token with `api:write`, a service caller, or `off` mode (development).
    All,
    /// Only the Flutter IDE's frames: a socket without a token in `session` mode.
    FlutterIde,
    /// Only `hello`: a token without `api:write`.
    ReadOnly,
}

/// A refused frame: the `error` frame answered to the socket that sent it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FrameRefusal {
    /// What the client is told, naming the way that works.
    pub message: String,
    /// `error_code` of the frame.
    pub code: &'static str,
}

impl FrameRefusal {
    /// The `error` frame, in the wire format of every other refused frame.
    pub fn frame(&self) -> Frame {
        ServerFrame::error(self.message.as_str(), Some(self.code))
    }
}

impl FramePermissions {
    /// The permissions of a socket that authenticated as `principal` (`None`: no token, in
    /// `session` mode when `dev_sessions` is false, `off` mode when it is true).
    pub fn for_socket(principal: Option<&Principal>, dev_sessions: bool) -> Self {
        match principal {
            Some(principal) if principal.may_write() => Self::All,
            Some(_) => Self::ReadOnly,
            None if dev_sessions => Self::All,
            None => Self::FlutterIde,
        }
    }

    /// Whether a frame of type `kind` may be sent; a refusal says why.
    pub fn check(self, kind: &str) -> Result<(), FrameRefusal> {
        match self {
            Self::All => Ok(()),
            Self::FlutterIde if FLUTTER_IDE_FRAMES.contains(&kind) => Ok(()),
            Self::FlutterIde => Err(FrameRefusal {
                message: format!(
                    "{kind} is not accepted from a socket without a token: connect with a \
                     token, or use the REST API (approvals: POST \
                     /api/v1/sessions/{{id}}/approvals/{{call_id}}, plans: POST \
                     /api/v1/plans/{{id}}/decision, cancel: POST /api/v1/sessions/{{id}}/cancel)"
                ),
                code: "FORBIDDEN",
            }),
            Self::ReadOnly if kind == "hello" => Ok(()),
            Self::ReadOnly => Err(FrameRefusal {
                message: format!("{kind} needs the {WRITE_SCOPE} scope; this token may only read"),
                code: "INSUFFICIENT_SCOPE",
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::CallerKind;

    #[test]
    fn tokenless_sockets_send_only_the_flutter_ides_frames() {
        let tokenless = FramePermissions::for_socket(None, false);
        for kind in FLUTTER_IDE_FRAMES {
            assert!(tokenless.check(kind).is_ok(), "{kind}");
        }
        for kind in ["hitl_decision", "cancel_turn", "plan_decision"] {
            let refusal = tokenless.check(kind).unwrap_err();
            assert_eq!(refusal.code, "FORBIDDEN");
            assert!(refusal.message.starts_with(kind), "{}", refusal.message);
        }
        assert_eq!(
            FramePermissions::for_socket(None, true),
            FramePermissions::All
        );
    }

    #[test]
    fn scopes_decide_for_token_sockets() {
        let principal = |scopes: &[&str]| Principal {
            kind: CallerKind::Token,
            user_id: "u".to_owned(),
            scopes: scopes.iter().map(|s| (*s).to_owned()).collect(),
            client_id: None,
        };
        let writer = FramePermissions::for_socket(Some(&principal(&["api:write"])), false);
        assert!(writer.check("hitl_decision").is_ok());
        let reader = FramePermissions::for_socket(Some(&principal(&["api:read"])), false);
        assert!(reader.check("hello").is_ok());
        assert!(writer.check("plan_decision").is_ok());
        for kind in [
            "user_message",
            "tool_result",
            "hitl_decision",
            "plan_decision",
            "cancel_turn",
        ] {
            assert_eq!(reader.check(kind).unwrap_err().code, "INSUFFICIENT_SCOPE");
        }
        // Scope names a token might carry do not make it a service or development caller.
        let pretender = principal(&["internal", "dev"]);
        assert!(!pretender.may_read() && !pretender.may_write());
        assert_eq!(
            FramePermissions::for_socket(Some(&pretender), false),
            FramePermissions::ReadOnly
        );
    }
}
