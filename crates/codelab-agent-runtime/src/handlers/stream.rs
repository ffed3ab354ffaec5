//! `POST /agent/message/stream`: one client frame in, a stream of our events out.
//!
//! Body: a [`StreamRequest`], `{"session_id": "...", "message": {<client frame>}}`, decoded
//! once from the request's bytes. Everything that can be refused without touching the
//! session's state is refused here with a 400 (malformed frame or session id, unknown agent)
//! or 404 (unknown or foreign session), before any stream starts. The work itself
//! runs in a tracked task under the session lock; the response relays what it emits as
//! `data: <SequencedEvent JSON>\n\n` records and ends when the work is done. A client that
//! goes away does not stop the work.

use std::convert::Infallible;
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::Response;
use codelab_protocol::internal::StreamRequest;
use codelab_protocol::runtime::SequencedEvent;
use tokio::sync::mpsc;

use super::{HttpError, Owner, dev_sessions, is_valid_session_id};
use crate::AppState;
use crate::agents::AgentKind;
use crate::engine::Work;
use crate::model::{NewSession, Session};
use crate::store::StoreError;

/// Events buffered between the work and a slow reader.
const EVENT_BUFFER: usize = 64;
/// Size past which no more waiting events are added to a chunk of the response.
const CHUNK_BYTES: usize = 64 * 1024;

/// Processes one client frame and streams the events it produces.
pub async fn stream_message(
    State(state): State<Arc<AppState>>,
    owner: Owner,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, HttpError> {
    let StreamRequest {
        message,
        session_id,
    } = StreamRequest::from_json(&body).map_err(|e| HttpError::bad_request(e.to_string()))?;
    let work = Work::from_frame(message, state.engine.registry())
        .map_err(|e| HttpError::bad_request(e.0))?;
    let session = match session_id {
        Some(id) => resolve_session(&state, &owner, &id, dev_sessions(&headers)).await?,
        // The gateway's auto-session mode sends no id with a first user message: a new
        // session is made, and the stream's `session_info` tells its id.
        None if matches!(work, Work::UserMessage { .. }) => {
            create(
                &state,
                &owner,
                codelab_core::ids::new_random_id().to_string(),
            )
            .await?
        }
        None => {
            return Err(HttpError::bad_request(
                "session_id is required (only a user_message may start a new session)",
            ));
        }
    };

    let (tx, rx) = mpsc::channel::<SequencedEvent>(EVENT_BUFFER);
    let worker = Arc::clone(&state);
    state.tasks.spawn(async move {
        worker.engine.process(session.id, work, tx).await;
    });
    let records = futures_util::stream::unfold(rx, |mut rx| async move {
        let event = rx.recv().await?;
        let mut records = Vec::new();
        push_record(&mut records, &event);
        // The events of one commit are sent together: those already waiting go out in the
        // same chunk (one write, one wake-up of the reader) instead of one each.
        while records.len() < CHUNK_BYTES
            && let Ok(event) = rx.try_recv()
        {
            push_record(&mut records, &event);
        }
        Some((Ok::<_, Infallible>(Bytes::from(records)), rx))
    });
    let mut response = Response::new(Body::from_stream(records));
    *response.status_mut() = StatusCode::OK;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    // nginx must pass events on at once, not buffer the stream.
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    Ok(response)
}

/// Appends the `data: <json>\n\n` record of `event` (nothing when it cannot be encoded).
fn push_record(records: &mut Vec<u8>, event: &SequencedEvent) {
    let start = records.len();
    records.extend_from_slice(b"data: ");
    match serde_json::to_writer(&mut *records, event) {
        Ok(()) => records.extend_from_slice(b"\n\n"),
        Err(error) => {
            tracing::error!(%error, "cannot encode an event");
            records.truncate(start);
        }
    }
}

/// The session the frame is for: the owner's existing session, or — in the gateway's
/// development mode only — a new one with the requested id, as the original created
/// sessions on first use.
async fn resolve_session(
    state: &AppState,
    owner: &Owner,
    session_id: &str,
    dev: bool,
) -> Result<Session, HttpError> {
    match state.store.get_session(session_id).await? {
        Some(session) if session.owner == owner.0 => Ok(session),
        Some(_) => Err(HttpError::session_not_found(session_id)),
        None if dev && is_valid_session_id(session_id) => {
            match create(state, owner, session_id.to_owned()).await {
                Ok(session) => Ok(session),
                // Created by a concurrent request meanwhile (or a deleted id): read again.
                Err(error) if error.status() == StatusCode::CONFLICT => {
                    match state.store.get_session(session_id).await? {
                        Some(session) if session.owner == owner.0 => Ok(session),
                        _ => Err(HttpError::session_not_found(session_id)),
                    }
                }
                Err(error) => Err(error),
            }
        }
        None => Err(HttpError::session_not_found(session_id)),
    }
}

/// Creates a session owned by `owner` on the orchestrator.
pub(crate) async fn create(
    state: &AppState,
    owner: &Owner,
    session_id: String,
) -> Result<Session, HttpError> {
    state
        .store
        .create_session(NewSession {
            id: session_id.clone(),
            owner: owner.0.clone(),
            current_agent: AgentKind::Orchestrator.as_str().to_owned(),
        })
        .await
        .map_err(|error| match error {
            StoreError::Conflict(_) => HttpError::new(
                StatusCode::CONFLICT,
                format!("session {session_id} already exists"),
            ),
            other => HttpError::internal(other),
        })
}
