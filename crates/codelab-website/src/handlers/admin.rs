//! `/console/admin`: users (create, disable, enable, reset password) and OAuth clients, for
//! signed-in administrators only (a token with `api:admin`). Every action goes to the auth
//! service's admin API with the administrator's own token, which the auth service checks
//! again.

use std::collections::HashMap;

use askama::Template;
use axum::extract::{Form, Path};
use axum::response::Response;
use serde_json::json;

use super::{Console, ConsoleRequest, short_time};
use crate::session::ConsoleSession;
use crate::upstream::{AdminClient, AuthClient, path_segment};
use crate::web::{Layout, PageError, render};

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

/// For administrators only: the auth service's client and the user's access token.
async fn admin_auth(console: &Console) -> Result<(&AuthClient, String), PageError> {
    require_admin(&console.session)?;
    let (auth, _, token) = console.clients_and_token().await?;
    Ok((auth, token))
}

/// The admin page's address.
const ADMIN_PAGE: &str = "/console/admin";

/// `GET /console/admin`.
pub async fn show_admin(console: ConsoleRequest) -> Response {
    console
        .page_returning_to(ADMIN_PAGE.to_owned(), |c| async move {
            let (auth, token) = admin_auth(&c).await?;
            let (users, clients) = tokio::join!(auth.list_users(&token), auth.list_clients(&token));
            let users = users.map_err(|e| c.failed(e))?;
            let clients = clients.map_err(|e| c.failed(e))?;
            Ok(render(&AdminPage {
                layout: c.layout("Administration", "admin"),
                users: users
                    .into_iter()
                    .map(|u| UserRow {
                        is_self: u.id == c.session.user.user_id,
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
        })
        .await
}

/// `POST /console/admin/users`: creates a user.
pub async fn create_user(
    console: ConsoleRequest,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    console
        .action(ADMIN_PAGE.to_owned(), form, |c, form| async move {
            let (auth, token) = admin_auth(&c).await?;
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
            let outcome = auth.create_user(&token, &body).await;
            c.after_action(
                outcome,
                "The user was created.",
                &[400, 409, 422],
                ADMIN_PAGE,
            )
            .await
        })
        .await
}

/// `POST /console/admin/users/{username}/{disable|enable|password}`.
pub async fn change_user(
    console: ConsoleRequest,
    Path((username, action)): Path<(String, String)>,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    console
        .action(ADMIN_PAGE.to_owned(), form, |c, form| async move {
            let (auth, token) = admin_auth(&c).await?;
            let (outcome, notice) = match action.as_str() {
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
            c.after_action(outcome, notice, &[400, 404, 409, 422], ADMIN_PAGE)
                .await
        })
        .await
}
