//! `/console/chat`: a live chat with the `ask` and `architect` agents in the browser, over
//! the gateway's WebSocket (protocol 2, token streaming). The page's script opens the socket
//! with a token from `POST /console/token`; tools that need a workspace are answered as
//! unavailable in the browser.

use std::collections::HashMap;
use std::sync::Arc;

use askama::Template;
use axum::extract::{Form, OriginalUri, Path, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Redirect, Response};

use super::sessions::{EntryView, SessionRow, conversation, return_path, with_session};
use super::{access_token, check_csrf, console_clients, upstream_failed};
use crate::AppState;
use crate::upstream::path_segment;
use crate::web::{ForwardedFor, Layout, render};

/// Recent sessions listed on the chat page.
const RECENT: u32 = 10;

#[derive(Template)]
#[template(path = "chat_index.html")]
struct ChatIndexPage {
    layout: Layout,
    sessions: Vec<SessionRow>,
}

#[derive(Template)]
#[template(path = "chat.html")]
struct ChatPage {
    layout: Layout,
    session_id: String,
    title: String,
    ws_base: String,
    entries: Vec<EntryView>,
}

/// `GET /console/chat`: start a chat, or reopen a recent one.
pub async fn show_chat_index(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    ForwardedFor(forwarded): ForwardedFor,
) -> Response {
    let return_to = "/console/chat".to_owned();
    with_session(
        state,
        &headers,
        &return_to.clone(),
        |state, session| async move {
            let (_, gateway) = console_clients(&state)?;
            let token = access_token(&state, &session, forwarded.as_deref(), &return_to).await?;
            let recent = gateway
                .list_sessions(&token, RECENT, 0, "")
                .await
                .map_err(|e| upstream_failed(&state, &session, e, &return_to))?;
            Ok(render(&ChatIndexPage {
                layout: Layout::new(&state, "Chat", "chat", Some(&session)),
                sessions: recent.sessions.iter().map(SessionRow::from).collect(),
            }))
        },
    )
    .await
}

/// `POST /console/chat`: creates a session and opens its chat.
pub async fn start_chat(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    ForwardedFor(forwarded): ForwardedFor,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    let return_to = "/console/chat".to_owned();
    with_session(
        state,
        &headers,
        &return_to.clone(),
        |state, session| async move {
            check_csrf(&session, form.get("csrf_token").map(String::as_str))?;
            let (_, gateway) = console_clients(&state)?;
            let token = access_token(&state, &session, forwarded.as_deref(), &return_to).await?;
            let created = gateway
                .create_session(&token)
                .await
                .map_err(|e| upstream_failed(&state, &session, e, &return_to))?;
            Ok(
                Redirect::to(&format!("/console/chat/{}", path_segment(&created.id)))
                    .into_response(),
            )
        },
    )
    .await
}

/// `GET /console/chat/{id}`: the conversation so far and the live chat.
pub async fn show_chat(
    State(state): State<Arc<AppState>>,
    Path(session_id): Path<String>,
    headers: HeaderMap,
    uri: OriginalUri,
    ForwardedFor(forwarded): ForwardedFor,
) -> Response {
    let return_to = return_path(&uri);
    with_session(
        state,
        &headers,
        &return_to.clone(),
        |state, session| async move {
            let (_, gateway) = console_clients(&state)?;
            let token = access_token(&state, &session, forwarded.as_deref(), &return_to).await?;
            let failed = |e| upstream_failed(&state, &session, e, &return_to);
            let (summary, history) = tokio::join!(
                gateway.get_session(&token, &session_id),
                gateway.history(&token, &session_id),
            );
            let summary = summary.map_err(failed)?;
            let history = history.map_err(failed)?;
            let row = SessionRow::from(&summary);
            Ok(render(&ChatPage {
                layout: Layout::new(&state, row.title.clone(), "chat", Some(&session))
                    .with_script("chat.js"),
                session_id: summary.id,
                title: row.title,
                ws_base: state.config.gateway_ws_base(),
                entries: conversation(&history)
                    .into_iter()
                    .filter(|e| e.role == "user" || e.role == "assistant")
                    .collect(),
            }))
        },
    )
    .await
}
