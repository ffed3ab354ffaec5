//! The site's pages: the docs (public), the console (signed in), its admin pages (admins).

pub mod admin;
pub mod chat;
pub mod console;
pub mod docs;
pub mod sessions;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use codelab_core::config::Secret;

use crate::AppState;
use crate::session::ConsoleSession;
use crate::upstream::{AuthClient, GatewayClient, UpstreamError, is_unauthorized};
use crate::web::PageError;

/// An access token this close to expiry is refreshed before use.
const REFRESH_MARGIN: Duration = Duration::from_secs(30);

/// The auth service and gateway clients, when the console is configured.
pub(crate) fn console_clients(
    state: &AppState,
) -> Result<(&AuthClient, &GatewayClient), PageError> {
    match (&state.auth, &state.gateway) {
        (Some(auth), Some(gateway)) => Ok((auth, gateway)),
        _ => Err(PageError::ConsoleDisabled),
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
/// refresh ends the session (sign in again).
pub(crate) async fn access_token(
    state: &AppState,
    session: &ConsoleSession,
    forwarded_for: Option<&str>,
    return_to: &str,
) -> Result<String, PageError> {
    let (auth, _) = console_clients(state)?;
    let mut tokens = session.tokens.lock().await;
    let now = state.clock.now();
    if now + REFRESH_MARGIN < tokens.access_expires_at {
        return Ok(tokens.access.expose().to_owned());
    }
    let Some(refresh) = tokens.refresh.clone() else {
        state.sessions.remove(&session.id);
        return Err(PageError::LoginRequired(return_to.to_owned()));
    };
    match auth.refresh(refresh.expose(), forwarded_for).await {
        Ok(answer) => {
            tokens.access = Secret::new(answer.access_token);
            if let Some(refresh) = answer.refresh_token {
                tokens.refresh = Some(Secret::new(refresh));
            }
            tokens.access_expires_at =
                state.clock.now() + Duration::from_secs(answer.expires_in.unwrap_or(300));
            Ok(tokens.access.expose().to_owned())
        }
        Err(UpstreamError::Status { status, .. }) if (400..500).contains(&status) => {
            state.sessions.remove(&session.id);
            Err(PageError::LoginRequired(return_to.to_owned()))
        }
        Err(other) => Err(other.into()),
    }
}

/// A failed call for the user: a refused token ends the session (sign in again); anything
/// else is shown.
pub(crate) fn upstream_failed(
    state: &AppState,
    session: &ConsoleSession,
    error: UpstreamError,
    return_to: &str,
) -> PageError {
    if is_unauthorized(&error) {
        state.sessions.remove(&session.id);
        PageError::LoginRequired(return_to.to_owned())
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

/// Seconds since the Unix epoch as `YYYY-MM-DD HH:MM:SS UTC`.
pub(crate) fn format_epoch(time: SystemTime) -> String {
    let secs = time
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let days = i64::try_from(secs / 86_400).unwrap_or(0);
    let rem = secs % 86_400;
    // Howard Hinnant's days-to-civil algorithm.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// A path on this site to come back to after signing in: `/…`, never `//host` or a URL.
pub(crate) fn safe_return_path(next: Option<&str>) -> String {
    match next {
        Some(path)
            if path.starts_with('/')
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
    }
}
