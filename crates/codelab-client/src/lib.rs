//! The IDE side of CodeLab, as used by `codelab chat`: logging in (password grant as the
//! `codelab-cli` client) and keeping tokens in a private store, the gateway's REST API and
//! its protocol-2 WebSocket (token streaming, approvals, resumption by `seq`), the IDE tools
//! (`read_file`, `write_file`, `list_files`, `create_directory`, `execute_command`,
//! `search_in_code`) run in a workspace folder, and the terminal rendering.
//!
//! It must never touch a file outside the workspace: every file operation goes through an
//! opened handle of the workspace directory, which no `..`, absolute path or symlink can leave.
//! It never prints text from the model or the workspace with its control characters live
//! (escape sequences, `\r`, bidi overrides are shown escaped), never logs or prints a token or
//! password, never stores tokens readable by other users, and never runs a call that requires
//! approval, or approves a plan, without a person's (or `--yes`'s) decision. It shares nothing
//! with the test clients of `codelab-testkit` except the wire types of `codelab-protocol`.

pub mod api;
pub mod auth;
pub mod chat;
pub mod credentials;
pub mod diff;
pub mod input;
pub mod login;
pub mod render;
pub mod sanitize;
pub mod session;
pub mod tools;
pub mod ws;

/// The current time. The client has no injected clock, so this is the one place it reads the
/// wall clock (`chrono::Utc::now` is a disallowed method elsewhere, see `clippy.toml`).
#[expect(
    clippy::disallowed_methods,
    reason = "the client's one reading of the wall clock"
)]
pub(crate) fn now() -> chrono::DateTime<chrono::Utc> {
    chrono::Utc::now()
}

/// Starts a tokio task: the client's one place for `tokio::spawn` (a disallowed method
/// elsewhere, see `clippy.toml`); the client does not depend on `codelab-core`'s task helper.
#[expect(
    clippy::disallowed_methods,
    reason = "the client's one place to start a task"
)]
pub(crate) fn spawn<F>(future: F) -> tokio::task::JoinHandle<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    tokio::spawn(future)
}

/// The default server: `codelab up`'s public listener.
pub const DEFAULT_SERVER: &str = "http://127.0.0.1:8080";

/// A transport error in words a user can act on.
pub fn describe_reqwest(error: &reqwest::Error) -> String {
    if error.is_timeout() {
        return "the request timed out".to_owned();
    }
    if error.is_connect() {
        let mut source: Option<&dyn std::error::Error> = std::error::Error::source(error);
        let mut detail = String::new();
        while let Some(cause) = source {
            detail = cause.to_string();
            source = cause.source();
        }
        return format!(
            "cannot connect ({}); is the server running? `codelab up` starts one",
            if detail.is_empty() {
                "connection failed".to_owned()
            } else {
                detail
            }
        );
    }
    error.to_string()
}
