//! `/console/admin`: users (create, disable, enable, reset password) and OAuth clients, for
//! signed-in administrators only (a token with `api:admin`). Every action goes to the auth
//! service's admin API with the administrator's own token, which the auth service checks
//! again.

use std::collections::HashMap;
use std::sync::Arc;

use askama::Template;
use axum::extract::{Form, Path, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Redirect, Response};
use serde_json::json;

use super::sessions::with_session;
use super::{access_token, check_csrf, console_clients, short_time, upstream_failed};
use crate::AppState;
use crate::session::{ConsoleSession, Flash};
use crate::upstream::{AdminClient, path_segment};
use crate::web::{ForwardedFor, Layout, PageError, render};

/// A user row.
#[derive(Debug, Clone)]
pub struct UserRow {
    username: String,
    /// The username as a path segment.
    path: String,
    email: String,
    is_admin: bool,
    is_active: bool,
    /// The signed-in administrator (who cannot disable themselves).
    is_self: bool,
    created_at: String,
    last_login_at: String,
}

#[derive(Template)]
#[template(path = "admin.html")]
struct AdminPage {
    layout: Layout,
    users: Vec<UserRow>,
    clients: Vec<AdminClient>,
}

fn require_admin(session: &ConsoleSession) -> Result<(), PageError> {
    if session.user.is_admin() {
        Ok(())
    } else {
        Err(PageError::Forbidden(
            "The admin pages are for administrators (users created with --admin).".to_owned(),
        ))
    }
}

/// The admin page's address.
const ADMIN_PAGE: &str = "/console/admin";

/// `GET /console/admin`.
pub async fn show_admin(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    ForwardedFor(forwarded): ForwardedFor,
) -> Response {
    let return_to = "/console/admin".to_owned();
    with_session(
        state,
        &headers,
        &return_to.clone(),
        |state, session| async move {
            require_admin(&session)?;
            let (auth, _) = console_clients(&state)?;
            let token = access_token(&state, &session, forwarded.as_deref(), &return_to).await?;
            let failed = |e| upstream_failed(&state, &session, e, &return_to);
            let (users, clients) = tokio::join!(auth.list_users(&token), auth.list_clients(&token));
            let users = users.map_err(failed)?;
            let clients = clients.map_err(failed)?;
            let layout = Layout::new(&state, "Administration", "admin", Some(&session));
            Ok(render(&AdminPage {
                layout,
                users: users
                    .into_iter()
                    .map(|u| UserRow {
                        is_self: u.id == session.user.user_id,
                        path: path_segment(&u.username),
                        email: u.email.unwrap_or_default(),
                        created_at: short_time(u.created_at.as_deref()),
                        last_login_at: short_time(u.last_login_at.as_deref()),
                        username: u.username,
                        is_admin: u.is_admin,
                        is_active: u.is_active,
                    })
                    .collect(),
                clients,
            }))
        },
    )
    .await
}

/// `POST /console/admin/users`: creates a user.
pub async fn create_user(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    ForwardedFor(forwarded): ForwardedFor,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    let return_to = "/console/admin".to_owned();
    with_session(
        state,
        &headers,
        &return_to.clone(),
        |state, session| async move {
            check_csrf(&session, form.get("csrf_token").map(String::as_str))?;
            require_admin(&session)?;
            let (auth, _) = console_clients(&state)?;
            let token = access_token(&state, &session, forwarded.as_deref(), &return_to).await?;
            let field = |name: &str| {
                form.get(name)
                    .map(|v| v.trim().to_owned())
                    .filter(|v| !v.is_empty())
            };
            let body = json!({
                "username": field("username").unwrap_or_default(),
                "email": field("email"),
                // Passwords are taken as typed: spaces may be part of them.
                "password": form.get("password").cloned().unwrap_or_default(),
                "admin": form.get("admin").is_some_and(|v| v == "true" || v == "on"),
            });
            match auth.create_user(&token, &body).await {
                Ok(_) => session.set_flash(Flash::Notice("The user was created.".to_owned())),
                Err(error) if matches!(error.status(), Some(400 | 409 | 422)) => {
                    session.set_flash(Flash::Error(error.message()));
                }
                Err(error) => return Err(upstream_failed(&state, &session, error, &return_to)),
            }
            Ok(Redirect::to(ADMIN_PAGE).into_response())
        },
    )
    .await
}

/// `POST /console/admin/users/{username}/{disable|enable|password}`.
pub async fn change_user(
    State(state): State<Arc<AppState>>,
    Path((username, action)): Path<(String, String)>,
    headers: HeaderMap,
    ForwardedFor(forwarded): ForwardedFor,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    let return_to = "/console/admin".to_owned();
    with_session(
        state,
        &headers,
        &return_to.clone(),
        |state, session| async move {
            check_csrf(&session, form.get("csrf_token").map(String::as_str))?;
            require_admin(&session)?;
            let (auth, _) = console_clients(&state)?;
            let token = access_token(&state, &session, forwarded.as_deref(), &return_to).await?;
            let (result, notice) = match action.as_str() {
                "disable" => (
                    auth.set_user_enabled(&token, &username, false).await,
                    "The user was disabled and signed out everywhere.",
                ),
                "enable" => (
                    auth.set_user_enabled(&token, &username, true).await,
                    "The user was enabled.",
                ),
                "password" => {
                    let password = form.get("password").map(String::as_str).unwrap_or_default();
                    (
                        auth.set_password(&token, &username, password).await,
                        "The password was changed; the user's other logins were ended.",
                    )
                }
                _ => return Err(PageError::NotFound),
            };
            match result {
                Ok(_) => session.set_flash(Flash::Notice(notice.to_owned())),
                Err(error) if matches!(error.status(), Some(400 | 404 | 409 | 422)) => {
                    session.set_flash(Flash::Error(error.message()));
                }
                Err(error) => return Err(upstream_failed(&state, &session, error, &return_to)),
            }
            Ok(Redirect::to(ADMIN_PAGE).into_response())
        },
    )
    .await
}
