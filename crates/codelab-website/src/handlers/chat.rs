//! `/console/chat`: a live chat with the `ask` and `architect` agents in the browser, over
//! the gateway's WebSocket (protocol 2, token streaming). The page's script opens the socket
//! with a token from `POST /console/token`; tools that need a workspace are answered as
//! unavailable in the browser.

use std::collections::HashMap;

use askama::Template;
use axum::extract::{Form, Path};
use axum::response::{IntoResponse, Redirect, Response};

use super::ConsoleRequest;
use super::sessions::{EntryView, SessionRow, conversation};
use crate::upstream::{SessionHistory, SessionSummary, path_segment};
use crate::web::{Layout, render};

/// Recent sessions listed on the chat page.
const RECENT: u32 = 10;

/// The chat index's address.
const CHAT_PAGE: &str = "/console/chat";

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
pub async fn show_chat_index(console: ConsoleRequest) -> Response {
    console
        .page_returning_to(CHAT_PAGE.to_owned(), |c| async move {
            let (_, gateway, token) = c.clients_and_token().await?;
            let recent = gateway.list_sessions(&token, RECENT, 0, "").await;
            let recent = recent.map_err(|e| c.failed(e))?;
            Ok(render(&ChatIndexPage {
                layout: c.layout("Chat", "chat"),
                sessions: recent.sessions.iter().map(SessionRow::from).collect(),
            }))
        })
        .await
}

/// `POST /console/chat`: creates a session and opens its chat.
pub async fn start_chat(
    console: ConsoleRequest,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    console
        .action(CHAT_PAGE.to_owned(), form, |c, _| async move {
            let (_, gateway, token) = c.clients_and_token().await?;
            let created = gateway.create_session(&token).await;
            let created = created.map_err(|e| c.failed(e))?;
            let chat = format!("/console/chat/{}", path_segment(&created.id));
            Ok(Redirect::to(&chat).into_response())
        })
        .await
}

/// `GET /console/chat/{id}`: the conversation so far and the live chat.
pub async fn show_chat(console: ConsoleRequest, Path(session_id): Path<String>) -> Response {
    console
        .page(|c| async move {
            let (_, gateway, token) = c.clients_and_token().await?;
            let (summary, history) = tokio::join!(
                gateway.session_part::<SessionSummary>(&token, &session_id),
                gateway.session_part::<SessionHistory>(&token, &session_id),
            );
            let summary = summary.map_err(|e| c.failed(e))?;
            let history = history.map_err(|e| c.failed(e))?;
            let row = SessionRow::from(&summary);
            Ok(render(&ChatPage {
                layout: c.layout(row.title.clone(), "chat").with_script("chat.js"),
                session_id: summary.id,
                title: row.title,
                ws_base: c.state.config.gateway_ws_base(),
                entries: conversation(&history)
                    .into_iter()
                    .filter(|e| e.role == "user" || e.role == "assistant")
                    .collect(),
            }))
        })
        .await
}
