//! The site's pages: the docs (public), the console (signed in), its admin pages (admins).

pub mod admin;
pub mod chat;
pub mod console;
pub mod docs;
pub mod plans;
pub mod sessions;
pub mod usage;

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::extract::{FromRequestParts, OriginalUri};
use axum::http::HeaderMap;
use axum::http::request::Parts;
use axum::response::{IntoResponse, Redirect, Response};
use codelab_core::config::Secret;

use crate::AppState;
use crate::session::{ConsoleSession, Flash, MAX_RETURN_TO_CHARS, SessionError, TokenLock, Tokens};
use crate::upstream::{AuthClient, GatewayClient, UpstreamError, is_unauthorized};
use crate::web::{ForwardedFor, Layout, PageError, PageResult};

/// An access token this close to expiry is refreshed before use.
const REFRESH_MARGIN: Duration = Duration::from_secs(30);

/// What the chat page's socket token may do: read and act on the user's sessions, never
/// administer (the admin pages use the server-side token).
pub(crate) const SOCKET_TOKEN_SCOPE: &str = "api:read api:write";
/// Longest a token handed to the browser's script may be valid: one that leaks from the page
/// (an extension, a crash report) is soon useless.
pub(crate) const MAX_SOCKET_TOKEN_LIFETIME: Duration = Duration::from_secs(300);

/// The auth service and gateway clients, when the console is configured.
pub(crate) fn console_clients(
    state: &AppState,
) -> Result<(&AuthClient, &GatewayClient), PageError> {
    match (&state.auth, &state.gateway) {
        (Some(auth), Some(gateway)) => Ok((auth, gateway)),
        _ => Err(PageError::ConsoleDisabled),
    }
}

/// A console request of a signed-in user: what its page needs to call the auth service and the
/// gateway as that user, and where to send them back after signing in again.
pub struct Console {
    pub state: Arc<AppState>,
    pub session: Arc<ConsoleSession>,
    return_to: String,
    forwarded_for: Option<String>,
}

impl Console {
    /// Refuses a form whose CSRF token is missing or not the session's.
    pub fn check_csrf(&self, form: &HashMap<String, String>) -> Result<(), PageError> {
        check_csrf(&self.session, form.get("csrf_token").map(String::as_str))
    }

    /// The auth service and gateway clients, and the user's access token (refreshed first
    /// when it is about to expire).
    pub async fn clients_and_token(
        &self,
    ) -> Result<(&AuthClient, &GatewayClient, String), PageError> {
        let (auth, gateway) = console_clients(&self.state)?;
        let forwarded_for = self.forwarded_for.as_deref();
        let token = access_token(&self.state, &self.session, forwarded_for, &self.return_to);
        Ok((auth, gateway, token.await?))
    }

    /// Leaves `flash` for the next page this session sees.
    pub async fn flash(&self, flash: Flash) {
        self.state.sessions.set_flash(&self.session, &flash).await;
    }

    /// A failed call for the user (see [`upstream_failed`]).
    pub fn failed(&self, error: UpstreamError) -> PageError {
        upstream_failed(error, &self.return_to)
    }

    /// The page frame, with the user signed in.
    pub fn layout(&self, title: impl Into<String>, section: &'static str) -> Layout {
        Layout::new(&self.state, title, section, Some(&self.session))
    }

    /// Redirects to `page` after an action: a flash says `notice` when it succeeded, the
    /// upstream's message when it refused with one of `shown` statuses; other failures are
    /// an error page.
    pub async fn after_action<T>(
        &self,
        outcome: Result<T, UpstreamError>,
        notice: &str,
        shown: &[u16],
        page: &str,
    ) -> PageResult {
        match outcome {
            Ok(_) => self.flash(Flash::Notice(notice.to_owned())).await,
            Err(error) if error.status().is_some_and(|status| shown.contains(&status)) => {
                self.flash(Flash::Error(error.message())).await;
            }
            Err(error) => return Err(self.failed(error)),
        }
        Ok(Redirect::to(page).into_response())
    }
}

/// What a console handler takes from its request: the state, the headers (the session
/// cookie), the client's address and the page's own path.
pub struct ConsoleRequest {
    state: Arc<AppState>,
    headers: HeaderMap,
    forwarded_for: Option<String>,
    path_and_query: String,
}

impl FromRequestParts<Arc<AppState>> for ConsoleRequest {
    type Rejection = Infallible;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<AppState>,
    ) -> Result<Self, Self::Rejection> {
        let ForwardedFor(forwarded_for) = ForwardedFor::from_request_parts(parts, state).await?;
        let uri = match parts.extensions.get::<OriginalUri>() {
            Some(OriginalUri(uri)) => uri,
            None => &parts.uri,
        };
        let path_and_query = uri
            .path_and_query()
            .map_or_else(|| uri.path().to_owned(), |pq| pq.as_str().to_owned());
        Ok(Self {
            state: Arc::clone(state),
            headers: parts.headers.clone(),
            forwarded_for,
            path_and_query,
        })
    }
}

impl ConsoleRequest {
    /// Runs a form's `action` for the signed-in user once the form's CSRF token checks out;
    /// the user comes back to `return_to` after signing in.
    pub async fn action<F, Fut>(
        self,
        return_to: String,
        form: HashMap<String, String>,
        action: F,
    ) -> Response
    where
        F: FnOnce(Console, HashMap<String, String>) -> Fut,
        Fut: Future<Output = PageResult>,
    {
        self.page_returning_to(return_to, |console| async move {
            console.check_csrf(&form)?;
            action(console, form).await
        })
        .await
    }

    /// Runs `page` for the signed-in user, who comes back to this page after signing in.
    pub async fn page<F, Fut>(self, page: F) -> Response
    where
        F: FnOnce(Console) -> Fut,
        Fut: Future<Output = PageResult>,
    {
        let return_to = self.path_and_query.clone();
        self.page_returning_to(return_to, page).await
    }

    /// Runs `page` for the signed-in user, who comes back to `return_to` after signing in;
    /// errors become error pages.
    pub async fn page_returning_to<F, Fut>(self, return_to: String, page: F) -> Response
    where
        F: FnOnce(Console) -> Fut,
        Fut: Future<Output = PageResult>,
    {
        let state = self.state;
        let found = state.sessions.lookup(&self.headers).await;
        let session = match require_session(&state, found.as_ref(), &return_to) {
            Ok(session) => session,
            Err(error) => return error.into_page(&state, None),
        };
        let console = Console {
            state: Arc::clone(&state),
            session: Arc::clone(&session),
            return_to,
            forwarded_for: self.forwarded_for,
        };
        match page(console).await {
            Ok(response) => response,
            Err(error @ PageError::LoginRequired(_)) => {
                // The login's tokens were refused: the session is over on every replica.
                state.sessions.remove(&session).await;
                error.into_page(&state, None)
            }
            Err(error) => error.into_page(&state, Some(&session)),
        }
    }
}

/// The signed-in session, or a redirect to the login that comes back to `return_to`.
pub(crate) fn require_session(
    state: &AppState,
    session: Option<&Arc<ConsoleSession>>,
    return_to: &str,
) -> Result<Arc<ConsoleSession>, PageError> {
    console_clients(state)?;
    session
        .cloned()
        .ok_or_else(|| PageError::LoginRequired(return_to.to_owned()))
}

/// Refuses a form whose CSRF token is missing or not the session's.
pub(crate) fn check_csrf(
    session: &ConsoleSession,
    presented: Option<&str>,
) -> Result<(), PageError> {
    match presented {
        Some(token) if session.csrf_matches(token) => Ok(()),
        _ => Err(PageError::Forbidden(
            "The form's CSRF token is missing or out of date. Reload the page and try again."
                .to_owned(),
        )),
    }
}

/// The session's access token, refreshed first when it is about to expire. A refused
/// refresh ends the session (sign in again). The refresh runs under the session's refresh
/// lock, shared by the replicas; a request that waited for another's refresh uses its token.
pub(crate) async fn access_token(
    state: &AppState,
    session: &ConsoleSession,
    forwarded_for: Option<&str>,
    return_to: &str,
) -> Result<String, PageError> {
    let (auth, _) = console_clients(state)?;
    let current = session.tokens();
    if state.clock.now() + REFRESH_MARGIN < current.access_expires_at {
        return Ok(current.access.expose().to_owned());
    }
    let lock = state
        .sessions
        .lock_tokens(session)
        .await
        .map_err(|e| session_failed(e, return_to))?;
    let refreshed = async {
        let latest = &lock.latest;
        if latest.access.expose() != current.access.expose()
            && state.clock.now() < latest.access_expires_at
        {
            return Ok(latest.access.expose().to_owned());
        }
        let Some(refresh) = latest.refresh.clone() else {
            return Err(sign_in_again(return_to));
        };
        match auth.refresh(refresh.expose(), None, forwarded_for).await {
            Ok(answer) => {
                let tokens = Tokens {
                    access_expires_at: state.clock.now()
                        + Duration::from_secs(answer.expires_in.unwrap_or(300)),
                    access: Secret::new(answer.access_token),
                    refresh: answer.refresh_token.map(Secret::new).or(Some(refresh)),
                };
                let access = tokens.access.expose().to_owned();
                save_rotated(state, &lock, session, tokens, return_to).await?;
                Ok(access)
            }
            Err(UpstreamError::Status { status, .. }) if (400..500).contains(&status) => {
                Err(sign_in_again(return_to))
            }
            Err(other) => Err(other.into()),
        }
    }
    .await;
    state.sessions.unlock(lock).await;
    refreshed
}

/// Stores tokens the auth service just rotated. Should that fail, the stored refresh token
/// is the spent one, and using it again would make the auth service revoke the login: the
/// request fails and the log says so.
async fn save_rotated(
    state: &AppState,
    lock: &TokenLock,
    session: &ConsoleSession,
    tokens: Tokens,
    return_to: &str,
) -> Result<(), PageError> {
    state
        .sessions
        .save_tokens(lock, session, tokens)
        .await
        .map_err(|error| {
            tracing::error!(%error, "cannot store a console login's rotated tokens");
            session_failed(error, return_to)
        })
}

/// A failure of the session store as a page.
fn session_failed(error: SessionError, return_to: &str) -> PageError {
    match error {
        SessionError::Ended => sign_in_again(return_to),
        SessionError::RefreshBusy => PageError::Unavailable(error.to_string()),
        other => PageError::Internal(other.to_string()),
    }
}

/// A token for the chat page's WebSocket and the seconds it stays valid.
#[derive(Debug)]
pub(crate) struct SocketToken {
    pub token: Secret,
    pub expires_in: u64,
}

/// The claims of an access token the website checks before handing it to a page.
#[derive(Debug, serde::Deserialize)]
struct SocketTokenClaims {
    exp: u64,
    iat: u64,
    #[serde(default)]
    scope: String,
}

/// A fresh access token for the chat page, narrowed to [`SOCKET_TOKEN_SCOPE`] by a refresh
/// grant (the login's refresh token rotates; the session's own access token is kept). The
/// token is refused unless its scope is within that set and it lives at most
/// [`MAX_SOCKET_TOKEN_LIFETIME`], whatever the auth service is configured to issue.
pub(crate) async fn socket_token(
    state: &AppState,
    session: &ConsoleSession,
    forwarded_for: Option<&str>,
    return_to: &str,
) -> Result<SocketToken, PageError> {
    let (auth, _) = console_clients(state)?;
    let lock = state
        .sessions
        .lock_tokens(session)
        .await
        .map_err(|e| session_failed(e, return_to))?;
    let answer = async {
        let Some(refresh) = lock.latest.refresh.clone() else {
            return Err(sign_in_again(return_to));
        };
        let answer = match auth
            .refresh(refresh.expose(), Some(SOCKET_TOKEN_SCOPE), forwarded_for)
            .await
        {
            Ok(answer) => answer,
            Err(UpstreamError::Status { status, .. }) if (400..500).contains(&status) => {
                return Err(sign_in_again(return_to));
            }
            Err(other) => return Err(other.into()),
        };
        if let Some(rotated) = &answer.refresh_token {
            let tokens = Tokens {
                refresh: Some(Secret::new(rotated.clone())),
                ..lock.latest.clone()
            };
            save_rotated(state, &lock, session, tokens, return_to).await?;
        }
        Ok(answer)
    }
    .await;
    state.sessions.unlock(lock).await;
    let answer = answer?;
    let lifetime = check_socket_token(&answer.access_token)?;
    Ok(SocketToken {
        token: Secret::new(answer.access_token),
        expires_in: answer.expires_in.map_or(lifetime, |e| e.min(lifetime)),
    })
}

/// The token's lifetime in seconds (`exp - iat`), if it is short-lived and read/write only.
/// The token comes straight from the auth service; its signature is the gateway's to check.
fn check_socket_token(token: &str) -> Result<u64, PageError> {
    use base64::Engine;
    let claims: SocketTokenClaims = token
        .split('.')
        .nth(1)
        .and_then(|payload| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(payload)
                .ok()
        })
        .and_then(|json| serde_json::from_slice(&json).ok())
        .ok_or_else(|| {
            PageError::Internal("the auth service answered a token that is not a JWT".to_owned())
        })?;
    let allowed: Vec<&str> = SOCKET_TOKEN_SCOPE.split_whitespace().collect();
    if let Some(extra) = claims
        .scope
        .split_whitespace()
        .find(|scope| !allowed.contains(scope))
    {
        return Err(PageError::Internal(format!(
            "the chat token carries the scope {extra}; only \"{SOCKET_TOKEN_SCOPE}\" may reach \
             the browser (does the auth service narrow scopes on refresh?)"
        )));
    }
    let lifetime = claims.exp.saturating_sub(claims.iat);
    let max = MAX_SOCKET_TOKEN_LIFETIME.as_secs();
    if claims.exp <= claims.iat || lifetime > max {
        return Err(PageError::Internal(format!(
            "the chat token is valid for {lifetime} s, more than the {max} s the browser may \
             hold; the codelab-web client's access tokens must last at most {max} s"
        )));
    }
    Ok(lifetime)
}

/// The user signs in again and comes back to `return_to` (whoever handles the error forgets
/// the session: [`ConsoleRequest::page_returning_to`], `POST /console/token`).
fn sign_in_again(return_to: &str) -> PageError {
    PageError::LoginRequired(return_to.to_owned())
}

/// A failed call for the user: a refused token ends the session (sign in again); anything
/// else is shown.
pub(crate) fn upstream_failed(error: UpstreamError, return_to: &str) -> PageError {
    if is_unauthorized(&error) {
        sign_in_again(return_to)
    } else {
        PageError::Upstream(error)
    }
}

/// `2026-01-29T10:00:00.123Z` → `2026-01-29 10:00:00 UTC`; other text unchanged.
pub(crate) fn short_time(text: Option<&str>) -> String {
    let Some(text) = text.filter(|t| !t.is_empty()) else {
        return "—".to_owned();
    };
    if text.len() >= 19 && text.is_char_boundary(19) && text.as_bytes().get(10) == Some(&b'T') {
        format!("{} UTC", text[..19].replacen('T', " ", 1))
    } else {
        text.to_owned()
    }
}

/// A moment as `YYYY-MM-DD HH:MM:SS UTC`.
pub(crate) fn format_epoch(time: SystemTime) -> String {
    let time = chrono::DateTime::<chrono::Utc>::from(time);
    time.format("%Y-%m-%d %H:%M:%S UTC").to_string()
}

/// A path on this site to come back to after signing in: `/…`, never `//host` or a URL, and
/// short enough for the login cookie that carries it.
pub(crate) fn safe_return_path(next: Option<&str>) -> String {
    match next {
        Some(path)
            if path.len() <= MAX_RETURN_TO_CHARS
                && path.starts_with('/')
                && !path.starts_with("//")
                && !path.contains('\\')
                && !path.chars().any(char::is_control) =>
        {
            path.to_owned()
        }
        _ => "/console/status".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A JWT-shaped token with these claims (the signature is not looked at).
    fn token(claims: &serde_json::Value) -> String {
        use base64::Engine;
        let encode = |bytes: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
        format!(
            "{}.{}.sig",
            encode(br#"{"alg":"RS256"}"#),
            encode(claims.to_string().as_bytes())
        )
    }

    #[test]
    fn only_short_read_write_tokens_may_reach_the_chat_page() {
        let ok =
            token(&serde_json::json!({"iat": 1000, "exp": 1300, "scope": "api:read api:write"}));
        assert_eq!(check_socket_token(&ok).unwrap(), 300);
        let narrower = token(&serde_json::json!({"iat": 1000, "exp": 1060, "scope": "api:read"}));
        assert_eq!(check_socket_token(&narrower).unwrap(), 60);
        for refused in [
            serde_json::json!({"iat": 1000, "exp": 1301, "scope": "api:read"}),
            serde_json::json!({"iat": 1000, "exp": 1000, "scope": "api:read"}),
            serde_json::json!({"iat": 1000, "exp": 1100, "scope": "api:read api:admin"}),
            serde_json::json!({"iat": 1000, "scope": "api:read"}),
        ] {
            assert!(
                matches!(
                    check_socket_token(&token(&refused)),
                    Err(PageError::Internal(_))
                ),
                "{refused}"
            );
        }
        assert!(check_socket_token("not-a-jwt").is_err());
    }

    #[test]
    fn times_are_shown_in_utc_without_fractions() {
        assert_eq!(
            short_time(Some("2026-01-29T10:00:00.000000Z")),
            "2026-01-29 10:00:00 UTC"
        );
        assert_eq!(short_time(None), "—");
        assert_eq!(short_time(Some("yesterday")), "yesterday");
        assert_eq!(
            format_epoch(SystemTime::UNIX_EPOCH + Duration::from_secs(1_769_680_800)),
            "2026-01-29 10:00:00 UTC"
        );
    }

    #[test]
    fn only_local_paths_are_returned_to() {
        assert_eq!(
            safe_return_path(Some("/console/sessions?q=a")),
            "/console/sessions?q=a"
        );
        for bad in [
            "//evil.example",
            "https://evil.example",
            "/\\evil",
            "console",
        ] {
            assert_eq!(safe_return_path(Some(bad)), "/console/status", "{bad}");
        }
        assert_eq!(safe_return_path(None), "/console/status");
        // Too long for the login cookie: the default instead.
        let longest = format!("/{}", "a".repeat(MAX_RETURN_TO_CHARS - 1));
        assert_eq!(safe_return_path(Some(&longest)), longest);
        let longer = format!("{longest}a");
        assert_eq!(safe_return_path(Some(&longer)), "/console/status");
    }
}
