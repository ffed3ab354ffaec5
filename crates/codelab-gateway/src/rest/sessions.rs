//! Sessions: list, create, read (flat), rename, delete, history and pending approvals.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::response::Response;
use reqwest::Method;

use super::{
    ReadCaller, WriteCaller, json_object, proxy, proxy_session, session_not_found, usable_id,
};
use crate::AppState;

/// Query parameters of `GET /sessions` passed on to the runtime; others are dropped (the
/// original dropped them all, the runtime pages and searches).
const LIST_PARAMS: [&str; 3] = ["limit", "offset", "search"];

/// `GET /api/v1/sessions?limit=&offset=&search=`: the caller's sessions,
/// `{"sessions": [{"id", "message_count", ...}], "total", "limit", "offset"}`.
pub async fn list_sessions(
    State(state): State<Arc<AppState>>,
    ReadCaller(caller): ReadCaller,
    RawQuery(query): RawQuery,
) -> Response {
    let path = list_path(query.as_deref().unwrap_or_default());
    proxy(&state, &caller, Method::GET, &path, None).await
}

/// The runtime path of a list request, with the parameters it understands.
fn list_path(query: &str) -> String {
    // Built in a sync function: the serializer is not `Send`, so it must not live in the
    // handler's future.
    let mut kept = form_urlencoded::Serializer::new(String::new());
    let mut any = false;
    for (name, value) in form_urlencoded::parse(query.as_bytes()) {
        if LIST_PARAMS.contains(&name.as_ref()) {
            kept.append_pair(&name, &value);
            any = true;
        }
    }
    if any {
        format!("/sessions?{}", kept.finish())
    } else {
        "/sessions".to_owned()
    }
}

/// `POST /api/v1/sessions`: a new session. The request body is ignored (the Flutter IDE posts
/// none; the original never forwarded one); the runtime's 201 is answered as 200 with `id` and
/// `message_count`, as the original gateway did.
pub async fn create_session(
    State(state): State<Arc<AppState>>,
    WriteCaller(caller): WriteCaller,
) -> Response {
    proxy(&state, &caller, Method::POST, "/sessions", None).await
}

/// `GET /api/v1/sessions/{id}`: the session as a flat object with `id` and `message_count`
/// (the Flutter IDE reads it unwrapped).
pub async fn get_session(
    State(state): State<Arc<AppState>>,
    ReadCaller(caller): ReadCaller,
    Path(id): Path<String>,
) -> Response {
    let path = ("/sessions", id.as_str(), "");
    proxy_session(&state, &caller, Method::GET, path, None).await
}

/// `PATCH /api/v1/sessions/{id}` `{"title": "..."}`: renames the session.
pub async fn update_session(
    State(state): State<Arc<AppState>>,
    WriteCaller(caller): WriteCaller,
    Path(id): Path<String>,
    body: Bytes,
) -> Response {
    if !usable_id(&id) {
        return session_not_found(&id);
    }
    let body = match json_object(&body, "{\"title\": \"...\"}") {
        Ok(body) => body,
        Err(refused) => return *refused,
    };
    let path = ("/sessions", id.as_str(), "");
    proxy_session(&state, &caller, Method::PATCH, path, Some(body)).await
}

/// `DELETE /api/v1/sessions/{id}`: 204.
pub async fn delete_session(
    State(state): State<Arc<AppState>>,
    WriteCaller(caller): WriteCaller,
    Path(id): Path<String>,
) -> Response {
    let path = ("/sessions", id.as_str(), "");
    proxy_session(&state, &caller, Method::DELETE, path, None).await
}

/// `GET /api/v1/sessions/{id}/history`: passthrough (`session_id`, `messages`,
/// `message_count`, `agent_history`, `tool_calls`, ...).
pub async fn session_history(
    State(state): State<Arc<AppState>>,
    ReadCaller(caller): ReadCaller,
    Path(id): Path<String>,
) -> Response {
    let path = ("/sessions", id.as_str(), "/history");
    proxy_session(&state, &caller, Method::GET, path, None).await
}

/// `GET /api/v1/sessions/{id}/pending-approvals`: passthrough (`session_id`, `count`,
/// `pending_approvals[]` with `call_id`, `tool_name`, `arguments`, `created_at`, ...).
pub async fn pending_approvals(
    State(state): State<Arc<AppState>>,
    ReadCaller(caller): ReadCaller,
    Path(id): Path<String>,
) -> Response {
    let path = ("/sessions", id.as_str(), "/pending-approvals");
    proxy_session(&state, &caller, Method::GET, path, None).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_paging_and_search_reach_the_runtime() {
        assert_eq!(list_path(""), "/sessions");
        assert_eq!(list_path("active_only=true"), "/sessions");
        assert_eq!(
            list_path("limit=5&x=1&search=a%20b&offset=2"),
            "/sessions?limit=5&search=a+b&offset=2"
        );
    }
}
