//! The console's entry: sign in (authorization code + PKCE with `codelab-web`), the callback,
//! sign out, the short-lived token for the chat's socket, and the status page.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use askama::Template;
use axum::Json;
use axum::extract::{Form, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use codelab_core::config::Secret;
use serde::Serialize;
use serde_json::json;

use super::{
    SocketToken, check_csrf, console_clients, format_epoch, safe_return_path, socket_token,
};
use crate::AppState;
use crate::session::{LOGIN_COOKIE, SESSION_COOKIE, Tokens, UserInfo};
use crate::status::{Figures, Snapshot};
use crate::web::{ForwardedFor, Layout, PageError, render};

#[derive(Template)]
#[template(path = "console_signin.html")]
struct SignInPage {
    layout: Layout,
}

/// `GET /console`: the status page when signed in, else a page with the Sign in button.
pub async fn show_console(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    if state.sessions.lookup(&headers).await.is_some() {
        return Redirect::to("/console/status").into_response();
    }
    render(&SignInPage {
        layout: Layout::new(&state, "Console", "console", None),
    })
}

/// `GET /console/login?next=/path`: starts the authorization-code flow (RFC 6749 §4.1 with
/// PKCE S256) and sends the browser to the auth service's login page.
pub async fn start_login(
    State(state): State<Arc<AppState>>,
    Query(params): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    if console_clients(&state).is_err() {
        return PageError::ConsoleDisabled.into_page(&state, None);
    }
    let next = safe_return_path(params.get("next").map(String::as_str));
    if state.sessions.lookup(&headers).await.is_some() {
        return Redirect::to(&next).into_response();
    }
    let (oauth_state, challenge, cookie) = match state.sessions.start_login(&next) {
        Ok(started) => started,
        Err(error) => return PageError::Internal(error.to_string()).into_page(&state, None),
    };
    let mut query = form_urlencoded::Serializer::new(String::new());
    query
        .append_pair("response_type", "code")
        .append_pair("client_id", &state.config.client_id)
        .append_pair("redirect_uri", &state.config.redirect_uri())
        .append_pair("state", &oauth_state)
        .append_pair("code_challenge", &challenge)
        .append_pair("code_challenge_method", "S256");
    let location = format!(
        "{}/oauth/authorize?{}",
        state.config.auth_public_base(),
        query.finish()
    );
    let mut response = Redirect::to(&location).into_response();
    response.headers_mut().append(header::SET_COOKIE, cookie);
    response
}

/// `GET /console/callback?code&state` (or `?error&error_description&state`): exchanges the
/// code, learns who signed in, and creates the session.
pub async fn finish_login(
    State(state): State<Arc<AppState>>,
    Query(params): Query<HashMap<String, String>>,
    headers: HeaderMap,
    ForwardedFor(forwarded): ForwardedFor,
) -> Response {
    match callback(&state, &params, &headers, forwarded.as_deref()).await {
        Ok(response) => response,
        Err(error) => {
            let mut response = error.into_page(&state, None);
            response.headers_mut().append(
                header::SET_COOKIE,
                state.sessions.clear_cookie(LOGIN_COOKIE, "/console"),
            );
            response
        }
    }
}

async fn callback(
    state: &AppState,
    params: &HashMap<String, String>,
    headers: &HeaderMap,
    forwarded: Option<&str>,
) -> Result<Response, PageError> {
    let (auth, _) = console_clients(state)?;
    if let Some(error) = params.get("error") {
        let description = params
            .get("error_description")
            .map_or(error.as_str(), String::as_str);
        return Err(PageError::BadRequest(format!(
            "The sign-in did not complete: {description}."
        )));
    }
    let (Some(code), Some(oauth_state)) = (params.get("code"), params.get("state")) else {
        return Err(PageError::BadRequest(
            "The sign-in answer lacks its code or state.".to_owned(),
        ));
    };
    let login = state
        .sessions
        .finish_login(headers, oauth_state)
        .ok_or_else(|| {
            PageError::BadRequest(
            "This sign-in was not started in this browser or has expired. Start again from the \
             console."
                .to_owned(),
        )
        })?;
    let answer = auth
        .exchange_code(code, &login.verifier, forwarded)
        .await
        .map_err(|e| match e.status() {
            Some(400..=499) => PageError::BadRequest(format!(
                "The auth service refused the sign-in: {}.",
                e.message()
            )),
            _ => PageError::Upstream(e),
        })?;
    let info = auth.userinfo(&answer.access_token).await?;
    let scope = answer.scope.clone().or(info.scope).unwrap_or_default();
    let user = UserInfo {
        user_id: info.sub,
        username: info.username,
        scope,
    };
    let tokens = Tokens {
        access_expires_at: state.clock.now()
            + Duration::from_secs(answer.expires_in.unwrap_or(300)),
        access: Secret::new(answer.access_token),
        refresh: answer.refresh_token.map(Secret::new),
    };
    tracing::info!(user = %user.user_id, admin = user.is_admin(), "console sign-in");
    let (_, cookie) = state
        .sessions
        .create(user, tokens)
        .await
        .map_err(|e| PageError::Internal(e.to_string()))?;
    let mut response = Redirect::to(&login.return_to).into_response();
    let headers = response.headers_mut();
    headers.append(header::SET_COOKIE, cookie);
    headers.append(
        header::SET_COOKIE,
        state.sessions.clear_cookie(LOGIN_COOKIE, "/console"),
    );
    Ok(response)
}

/// `POST /console/logout`: revokes the login's refresh token, forgets the session and its
/// cookie.
pub async fn logout(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    let Some(session) = state.sessions.lookup(&headers).await else {
        return Redirect::to("/").into_response();
    };
    if let Err(error) = check_csrf(&session, form.get("csrf_token").map(String::as_str)) {
        return error.into_page(&state, Some(&session));
    }
    let refresh = session.tokens().refresh;
    if let (Some(refresh), Some(auth)) = (refresh, &state.auth)
        && let Err(error) = auth.revoke(refresh.expose()).await
    {
        // The session ends here anyway; the refresh token runs out on its own.
        tracing::warn!(%error, "cannot revoke the console's refresh token");
    }
    state.sessions.remove(&session).await;
    let mut response = Redirect::to("/").into_response();
    response.headers_mut().append(
        header::SET_COOKIE,
        state.sessions.clear_cookie(SESSION_COOKIE, "/"),
    );
    response
}

fn json_error(status: StatusCode, error: &str, description: &str) -> Response {
    (
        status,
        Json(json!({ "error": error, "error_description": description })),
    )
        .into_response()
}

/// `POST /console/token` (header `X-CSRF-Token`): the signed-in user's access token for the
/// chat's WebSocket. Same-origin JSON only, never part of a page.
pub async fn issue_socket_token(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    ForwardedFor(forwarded): ForwardedFor,
) -> Response {
    let Some(session) = state.sessions.lookup(&headers).await else {
        return json_error(StatusCode::UNAUTHORIZED, "unauthorized", "sign in first");
    };
    let presented = headers.get("x-csrf-token").and_then(|v| v.to_str().ok());
    if check_csrf(&session, presented).is_err() {
        return json_error(
            StatusCode::FORBIDDEN,
            "csrf",
            "the X-CSRF-Token header is missing or wrong",
        );
    }
    match socket_token(&state, &session, forwarded.as_deref(), "/console/chat").await {
        Ok(SocketToken { token, expires_in }) => {
            let mut response = Json(json!({
                "access_token": token.expose(),
                "expires_in": expires_in,
                "ws_base": state.config.gateway_ws_base(),
            }))
            .into_response();
            response
                .headers_mut()
                .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            response
        }
        Err(PageError::LoginRequired(_)) => {
            state.sessions.remove(&session).await;
            json_error(StatusCode::UNAUTHORIZED, "unauthorized", "sign in again")
        }
        Err(PageError::Unavailable(_)) => json_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "busy",
            "another request is refreshing this login; try again",
        ),
        Err(PageError::Internal(reason)) => {
            // The operator's problem, told in the log; the page only learns the chat is off.
            tracing::error!(%reason, "refused to hand a chat token to the browser");
            json_error(
                StatusCode::BAD_GATEWAY,
                "token_refused",
                "the auth service issued a chat token the console may not hand out; see the \
                 website's log",
            )
        }
        Err(error) => json_error(StatusCode::BAD_GATEWAY, "upstream", &error.to_string()),
    }
}

/// One service's row on the status page.
#[derive(Debug, Clone, Serialize)]
pub struct ServiceRow {
    name: String,
    healthy: bool,
    ready: bool,
    health_text: &'static str,
    ready_text: &'static str,
    version: String,
    uptime: String,
    problems: String,
}

/// One key figure.
#[derive(Debug, Clone, Serialize)]
pub struct FigureRow {
    key: &'static str,
    label: &'static str,
    value: String,
}

#[derive(Template)]
#[template(path = "status.html")]
struct StatusPage {
    layout: Layout,
    services: Vec<ServiceRow>,
    figures: Vec<FigureRow>,
    updated: String,
    refresh_seconds: u64,
}

fn uptime_text(seconds: Option<f64>) -> String {
    let Some(seconds) = seconds.filter(|s| s.is_finite() && *s >= 0.0) else {
        return "—".to_owned();
    };
    // Whole seconds are all a person reads here.
    let total = seconds as u64;
    let (days, hours, minutes, secs) = (
        total / 86_400,
        total % 86_400 / 3600,
        total % 3600 / 60,
        total % 60,
    );
    if days > 0 {
        format!("{days}d {hours}h")
    } else if hours > 0 {
        format!("{hours}h {minutes}m")
    } else if minutes > 0 {
        format!("{minutes}m {secs}s")
    } else {
        format!("{secs}s")
    }
}

fn number_text(value: Option<f64>) -> String {
    match value {
        Some(v) if v.is_finite() && v.abs() >= 100.0 => format!("{v:.0}"),
        Some(v) if v.is_finite() => {
            let text = format!("{v:.1}");
            text.strip_suffix(".0").map_or(text.clone(), str::to_owned)
        }
        _ => "—".to_owned(),
    }
}

fn figure_rows(figures: &Figures) -> Vec<FigureRow> {
    let percent = figures.error_rate.map_or_else(
        || "—".to_owned(),
        |rate| format!("{} %", number_text(Some(rate * 100.0))),
    );
    let ttft = figures.p95_ttft_seconds.map_or_else(
        || "—".to_owned(),
        |s| {
            if s < 1.0 {
                format!("{:.0} ms", s * 1000.0)
            } else {
                format!("{s:.2} s")
            }
        },
    );
    let [sockets, turns, tokens] = [
        figures.active_sockets,
        figures.turns_per_minute,
        figures.tokens_per_minute,
    ]
    .map(number_text);
    [
        ("active_sockets", "Active sockets", sockets),
        ("turns_per_minute", "Turns / min", turns),
        ("tokens_per_minute", "Tokens / min", tokens),
        ("error_rate", "Error rate (5xx)", percent),
        ("p95_ttft", "p95 time to first token", ttft),
    ]
    .into_iter()
    .map(|(key, label, value)| FigureRow { key, label, value })
    .collect()
}

fn service_rows(snapshot: &Snapshot) -> Vec<ServiceRow> {
    snapshot
        .services
        .iter()
        .map(|s| ServiceRow {
            name: s.name.clone(),
            healthy: s.healthy,
            ready: s.ready,
            health_text: if s.healthy { "healthy" } else { "down" },
            ready_text: if s.ready { "ready" } else { "not ready" },
            version: s.version.clone().unwrap_or_else(|| "—".to_owned()),
            uptime: uptime_text(s.uptime_seconds),
            problems: if s.problems.is_empty() {
                "—".to_owned()
            } else {
                s.problems.join("; ")
            },
        })
        .collect()
}

fn updated_text(snapshot: &Snapshot) -> String {
    format_epoch(std::time::SystemTime::UNIX_EPOCH + Duration::from_secs(snapshot.fetched_at))
}

/// `GET /console/status`: the services and key figures as of now (the page's script keeps
/// them fresh).
pub async fn show_status(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    let session = state.sessions.lookup(&headers).await;
    let session = match super::require_session(&state, session.as_ref(), "/console/status") {
        Ok(session) => session,
        Err(error) => return error.into_page(&state, None),
    };
    let snapshot = state.status.snapshot().await;
    render(&StatusPage {
        layout: Layout::new(&state, "Status", "status", Some(&session)).with_script("status.js"),
        services: service_rows(&snapshot),
        figures: figure_rows(&snapshot.figures),
        updated: updated_text(&snapshot),
        refresh_seconds: state.config.status_refresh_interval.max(1),
    })
}

/// `GET /console/status.json`: the same data for the page's script.
pub async fn status_json(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    if state.sessions.lookup(&headers).await.is_none() {
        return json_error(StatusCode::UNAUTHORIZED, "unauthorized", "sign in first");
    }
    let snapshot = state.status.snapshot().await;
    Json(json!({
        "services": service_rows(&snapshot),
        "figures": figure_rows(&snapshot.figures),
        "updated": updated_text(&snapshot),
    }))
    .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn figures_read_like_a_person_writes_them() {
        assert_eq!(uptime_text(Some(59.9)), "59s");
        assert_eq!(uptime_text(Some(3_725.0)), "1h 2m");
        assert_eq!(uptime_text(Some(90_000.0)), "1d 1h");
        assert_eq!(uptime_text(None), "—");
        assert_eq!(number_text(Some(2.0)), "2");
        assert_eq!(number_text(Some(1.25)), "1.2");
        assert_eq!(number_text(Some(1234.5)), "1234");
        let rows = figure_rows(&Figures {
            error_rate: Some(0.005),
            p95_ttft_seconds: Some(0.25),
            ..Figures::default()
        });
        assert_eq!(rows[3].value, "0.5 %");
        assert_eq!(rows[4].value, "250 ms");
        assert_eq!(rows[1].value, "—");
    }
}
