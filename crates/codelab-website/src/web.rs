//! What every page shares: the layout data, the error pages (404, 403, 500, ...), HTML
//! rendering, the security headers and the client's address.

use std::net::SocketAddr;
use std::sync::Arc;

use askama::Template;
use axum::extract::{ConnectInfo, FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{Html, IntoResponse, Redirect, Response};
use codelab_core::http::log_error;

use crate::AppState;
use crate::session::{ConsoleSession, Flash};
use crate::upstream::UpstreamError;

/// The signed-in user as pages show them.
#[derive(Debug, Clone)]
pub struct UserView {
    /// The username.
    pub username: String,
    /// Whether the admin pages are open to them.
    pub is_admin: bool,
}

/// What the base template needs.
#[derive(Debug, Clone)]
pub struct Layout {
    /// The page title (before `· CodeLab`).
    pub title: String,
    /// Which navigation entry is current (`docs`, `status`, `sessions`, `chat`, `admin`, ...).
    pub section: &'static str,
    /// Who is signed in.
    pub user: Option<UserView>,
    /// The session's CSRF token (empty when signed out); forms carry it.
    pub csrf: String,
    /// Whether the console is configured (the Sign in link).
    pub console_enabled: bool,
    /// Scripts to load from `/assets/` (never inline).
    pub scripts: Vec<&'static str>,
    /// A success message.
    pub notice: Option<String>,
    /// An error message.
    pub error: Option<String>,
    /// The site's version.
    pub version: String,
}

impl Layout {
    /// A layout for a page seen by `session` (or nobody).
    pub fn new(
        state: &AppState,
        title: impl Into<String>,
        section: &'static str,
        session: Option<&ConsoleSession>,
    ) -> Self {
        let (notice, error) = match session.and_then(ConsoleSession::take_flash) {
            Some(Flash::Notice(text)) => (Some(text), None),
            Some(Flash::Error(text)) => (None, Some(text)),
            None => (None, None),
        };
        Self {
            title: title.into(),
            section,
            user: session.map(|s| UserView {
                username: s.user.username.clone(),
                is_admin: s.user.is_admin(),
            }),
            csrf: session.map(|s| s.csrf.clone()).unwrap_or_default(),
            console_enabled: state.config.console_enabled(),
            scripts: Vec::new(),
            notice,
            error,
            version: state.info.version.clone(),
        }
    }

    /// Adds a script from `/assets/`.
    #[must_use]
    pub fn with_script(mut self, script: &'static str) -> Self {
        self.scripts.push(script);
        self
    }
}

/// Renders a template as a `200 text/html` page, or the 500 page when it cannot be rendered.
pub fn render(template: &impl Template) -> Response {
    match template.render() {
        Ok(html) => Html(html).into_response(),
        Err(error) => {
            tracing::error!(%error, "cannot render a page");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                Html(FALLBACK_500.to_owned()),
            )
                .into_response()
        }
    }
}

/// Shown only when the error template itself cannot be rendered.
const FALLBACK_500: &str = "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">\
<title>Error · CodeLab</title></head><body><h1>Something went wrong</h1>\
<p>The page could not be shown. Try again in a moment.</p></body></html>";

#[derive(Template)]
#[template(path = "error.html")]
struct ErrorPage {
    layout: Layout,
    status: u16,
    heading: String,
    message: String,
}

/// Why a page could not be shown.
#[derive(Debug, thiserror::Error)]
pub enum PageError {
    /// No such page or resource.
    #[error("not found")]
    NotFound,
    /// The user may not see this.
    #[error("forbidden: {0}")]
    Forbidden(String),
    /// The request is malformed; the text says why.
    #[error("bad request: {0}")]
    BadRequest(String),
    /// A console page without a live login: sign in, then come back to the path.
    #[error("login required")]
    LoginRequired(String),
    /// The console is not configured.
    #[error("the console is not configured")]
    ConsoleDisabled,
    /// Another service failed.
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
    /// A bug or an outage of our own; the text is logged, never shown.
    #[error("internal error: {0}")]
    Internal(String),
    /// Busy for a moment (another request holds what this one needs); the text is logged.
    #[error("unavailable: {0}")]
    Unavailable(String),
}

impl PageError {
    fn parts(&self) -> (StatusCode, &'static str, String) {
        match self {
            Self::NotFound => (
                StatusCode::NOT_FOUND,
                "Page not found",
                "There is nothing at this address. The documentation's index lists every page."
                    .to_owned(),
            ),
            Self::Forbidden(why) => (StatusCode::FORBIDDEN, "Not allowed", why.clone()),
            Self::BadRequest(why) => (StatusCode::BAD_REQUEST, "Bad request", why.clone()),
            Self::ConsoleDisabled => (
                StatusCode::NOT_FOUND,
                "Console not configured",
                "This site serves the documentation only: the console needs WEBSITE__AUTH_URL \
                 and WEBSITE__GATEWAY_URL."
                    .to_owned(),
            ),
            Self::LoginRequired(_) => (
                StatusCode::UNAUTHORIZED,
                "Sign in",
                "Sign in to use the console.".to_owned(),
            ),
            Self::Upstream(error) => match error {
                UpstreamError::Status {
                    status: 404,
                    message,
                    ..
                } => (StatusCode::NOT_FOUND, "Not found", message.clone()),
                UpstreamError::Status {
                    status: 403,
                    message,
                    ..
                } => (StatusCode::FORBIDDEN, "Not allowed", message.clone()),
                UpstreamError::Status {
                    status: 400 | 409 | 422,
                    message,
                    ..
                } => (StatusCode::BAD_REQUEST, "Refused", message.clone()),
                other => (
                    StatusCode::BAD_GATEWAY,
                    "A service is unavailable",
                    format!("{other}. Try again in a moment."),
                ),
            },
            Self::Internal(_) => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "Something went wrong",
                "The page could not be shown. Try again in a moment.".to_owned(),
            ),
            Self::Unavailable(_) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "Busy",
                "The page could not be shown just now. Try again in a moment.".to_owned(),
            ),
        }
    }

    /// The error as a page (the login redirect for [`PageError::LoginRequired`]).
    pub fn into_page(self, state: &AppState, session: Option<&ConsoleSession>) -> Response {
        if let Self::LoginRequired(return_to) = &self {
            let target = format!(
                "/console/login?next={}",
                form_urlencoded::byte_serialize(return_to.as_bytes()).collect::<String>()
            );
            return Redirect::to(&target).into_response();
        }
        let (status, heading, message) = self.parts();
        let detail = match &self {
            Self::Internal(detail) | Self::Unavailable(detail) => Some(detail.clone()),
            Self::Upstream(error) => Some(error.to_string()),
            _ => None,
        };
        log_error(status, "page_error", heading, detail.as_deref());
        let page = ErrorPage {
            layout: Layout::new(state, heading, "error", session),
            status: status.as_u16(),
            heading: heading.to_owned(),
            message,
        };
        let mut response = render(&page);
        *response.status_mut() = status;
        response
    }
}

/// A page handler's result: the page, or an error page rendered with the state.
pub type PageResult = Result<Response, PageError>;

/// `GET` of an unknown path: the 404 page.
pub async fn not_found(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    let session = state.sessions.lookup(&headers).await;
    PageError::NotFound.into_page(&state, session.as_deref())
}

/// The client's address as the auth service should count it: the incoming
/// `X-Forwarded-For` chain plus the peer (as any proxy appends it).
#[derive(Debug, Clone, Default)]
pub struct ForwardedFor(pub Option<String>);

impl<S: Send + Sync> FromRequestParts<S> for ForwardedFor {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        let peer = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|ConnectInfo(addr)| addr.ip().to_string());
        let incoming: Vec<&str> = parts
            .headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect();
        let mut chain: Vec<String> = incoming
            .iter()
            .flat_map(|v| v.split(','))
            .map(|hop| hop.trim().to_owned())
            .filter(|hop| !hop.is_empty())
            .collect();
        chain.extend(peer);
        Ok(Self((!chain.is_empty()).then(|| chain.join(", "))))
    }
}

/// Adds the security headers to every answer: the CSP (no inline script, no framing), no
/// sniffing, the referrer policy, and `no-store` for console pages (they show private data).
pub async fn security_headers(
    State(state): State<Arc<AppState>>,
    request: Request,
    next: Next,
) -> Response {
    let private = request.uri().path().starts_with("/console");
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_SECURITY_POLICY, state.csp.clone());
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    headers.insert(
        HeaderName::from_static("cross-origin-opener-policy"),
        HeaderValue::from_static("same-origin"),
    );
    headers.insert(
        HeaderName::from_static("permissions-policy"),
        HeaderValue::from_static("camera=(), microphone=(), geolocation=(), payment=()"),
    );
    if private {
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    response
}

/// The Content-Security-Policy: our own scripts, styles and images only; the socket to the
/// gateway; forms only to ourselves; never framed.
pub fn content_security_policy(ws_base: &str) -> String {
    let mut connect = String::from("'self'");
    // A separate gateway address (no nginx in front) must be allowed explicitly.
    if !ws_base.is_empty() {
        connect.push(' ');
        connect.push_str(ws_base);
    }
    format!(
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
         connect-src {connect}; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_csp_has_no_inline_scripts_and_forbids_framing() {
        let csp = content_security_policy("ws://127.0.0.1:8080");
        assert!(csp.contains("script-src 'self';"));
        assert!(!csp.contains("unsafe-inline"));
        assert!(csp.contains("frame-ancestors 'none'"));
        assert!(csp.contains("connect-src 'self' ws://127.0.0.1:8080;"));
    }
}
