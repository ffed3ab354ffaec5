//! The whole system in process for the website's tests, started by the stack builder: the
//! auth service and the agent runtime on SQLite, the LLM proxy's mock model, the gateway and
//! the website, each on `127.0.0.1:0`. With [`Layout::SingleOrigin`] the stack's front door
//! routes like nginx and `codelab up` (`/oauth/`, `/.well-known/`, `/api/v1/`, the rest to the
//! website); with [`Layout::SeparateOrigins`] the browser talks to each service's own address.
//!
//! [`Browser`] is a small cookie-keeping HTTP client that follows redirects by hand, so tests
//! can sign in through the auth service's real login form.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use codelab_core::config::Secret;
use codelab_stack::{ServiceId, Stack};
use codelab_testkit::ToolCallRequest;
use codelab_testkit::ide_clients::steps::{is_tool_call, tool_call_of};
use codelab_testkit::ide_clients::{FlutterReplicaClient, FlutterSocket};
use reqwest::StatusCode;
use reqwest::header::HeaderMap;
use serde_json::Value;
use tokio::net::TcpListener;

pub const ADMIN_PASSWORD: &str = "admin-password-123";
pub const USER_PASSWORD: &str = "user-password-123";

/// How the browser reaches the services.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// One origin in front of everything (nginx, `codelab up`).
    SingleOrigin,
    /// Each service at its own address.
    SeparateOrigins,
}

/// Everything running, until dropped.
pub struct Site {
    /// The website as the browser reaches it.
    pub url: String,
    /// The auth service's own address.
    pub auth_url: String,
    /// The gateway's own address (REST and WebSocket).
    pub gateway_url: String,
    pub auth: Arc<codelab_auth::AppState>,
    pub website: Arc<codelab_website::AppState>,
    _stack: Stack,
}

/// Starts every service; the seeded `admin` has [`ADMIN_PASSWORD`] and `bob` (not an admin)
/// [`USER_PASSWORD`].
pub async fn start_site(layout: Layout) -> Site {
    start_site_with(layout, Arc::new(codelab_core::clock::SystemClock), None).await
}

/// Seconds the auth service's access tokens live in these tests: the website hands the chat
/// page only tokens of at most 5 minutes (`docs/website.md`, "Chat").
pub const ACCESS_TOKEN_LIFETIME: i64 = 300;

/// The website's OAuth client when a test gives it its own access-token lifetime.
pub const CUSTOM_WEB_CLIENT_ID: &str = "codelab-web-custom";

/// As [`start_site`], the website running on `clock` (the other services on real time); with
/// `web_token_lifetime`, the website signs in through its own client (a copy of the seeded
/// `codelab-web`) whose access tokens live that many seconds.
pub async fn start_site_with(
    layout: Layout,
    clock: codelab_core::clock::SharedClock,
    web_token_lifetime: Option<i64>,
) -> Site {
    let web_client_id = match web_token_lifetime {
        None => codelab_auth::seed::WEB_CLIENT_ID,
        Some(_) => CUSTOM_WEB_CLIENT_ID,
    };
    let mut builder = Stack::builder()
        .service_clock(ServiceId::Website, clock)
        .short_llm_timeouts()
        .runtime_config(|config| config.llm_model = "mock-llm".to_owned())
        .auth_config(|config| {
            config.master_key = Secret::new(ADMIN_PASSWORD);
            config.internal_client_secret = Secret::new("internal-secret-0123456789");
            config.enable_rate_limiting = Some(false);
            // Only the console's callback, which the stack adds for its public address.
            config.web_redirect_uris = Vec::new();
            config.access_token_lifetime = ACCESS_TOKEN_LIFETIME;
        })
        .gateway_config(|config| {
            config.request_timeout = 10.0;
            config.agent_stream_timeout = 20.0;
        })
        .website_config(move |config| {
            config.session_key = Secret::new("a-session-key-for-tests-0123456789");
            config.client_id = web_client_id.to_owned();
            config.status_refresh_interval = 1;
        });
    if layout == Layout::SingleOrigin {
        builder = builder.front_door(TcpListener::bind("127.0.0.1:0").await.unwrap());
    }
    let stack = builder.start().await.unwrap();
    let auth = Arc::clone(&stack.auth.as_ref().unwrap().state);
    codelab_auth::admin::add_user(auth.store.as_ref(), "bob", USER_PASSWORD, None, false)
        .await
        .unwrap();
    if let Some(lifetime) = web_token_lifetime {
        let seeded = auth
            .store
            .get_client(codelab_auth::seed::WEB_CLIENT_ID)
            .await
            .unwrap()
            .unwrap();
        auth.store
            .create_client(codelab_auth::model::NewClient {
                client_id: CUSTOM_WEB_CLIENT_ID.to_owned(),
                secret_hash: None,
                name: "Website with its own token lifetime".to_owned(),
                description: None,
                is_confidential: false,
                allowed_scopes: seeded.allowed_scopes,
                allowed_grant_types: seeded.allowed_grant_types,
                redirect_uris: seeded.redirect_uris,
                access_token_lifetime: lifetime,
                refresh_token_lifetime: seeded.refresh_token_lifetime,
            })
            .await
            .unwrap();
    }
    Site {
        url: stack.public_url.clone(),
        auth_url: stack.auth.as_ref().unwrap().url.clone(),
        gateway_url: stack.gateway.as_ref().unwrap().url.clone(),
        auth,
        website: Arc::clone(&stack.website.as_ref().unwrap().state),
        _stack: stack,
    }
}

impl Site {
    /// The URL of `path` on the website.
    pub fn at(&self, path: &str) -> String {
        format!("{}{path}", self.url)
    }

    /// Sets a budget in the runtime's database, as `codelab admin budget set` does.
    pub async fn set_budget(&self, budget: &codelab_agent_runtime::model::Budget) {
        let runtime = self._stack.runtime.as_ref().unwrap();
        runtime.state.store.set_budget(budget).await.unwrap();
    }
}

/// An answer as the browser saw it.
#[derive(Debug, Clone)]
pub struct Page {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: String,
    /// The URL that answered (after redirects).
    pub url: String,
}

impl Page {
    /// The `value` of `<input type="hidden" name="NAME" value="...">` (the first one).
    pub fn hidden(&self, name: &str) -> Option<String> {
        let marker = format!("name=\"{name}\" value=\"");
        let start = self.body.find(&marker)? + marker.len();
        let end = self.body[start..].find('"')? + start;
        Some(unescape(&self.body[start..end]))
    }

    /// Every hidden field of the page's first form.
    pub fn hidden_fields(&self) -> Vec<(String, String)> {
        let mut fields = Vec::new();
        let mut rest = self.body.as_str();
        while let Some(at) = rest.find("<input type=\"hidden\" name=\"") {
            rest = &rest[at + "<input type=\"hidden\" name=\"".len()..];
            let name_end = rest.find('"').unwrap();
            let name = rest[..name_end].to_owned();
            let value_at = rest.find("value=\"").unwrap() + "value=\"".len();
            let value_end = rest[value_at..].find('"').unwrap() + value_at;
            fields.push((name, unescape(&rest[value_at..value_end])));
        }
        fields
    }

    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
    }
}

fn unescape(text: &str) -> String {
    text.replace("&#34;", "\"")
        .replace("&quot;", "\"")
        .replace("&#39;", "'")
        .replace("&#x27;", "'")
        .replace("&#60;", "<")
        .replace("&lt;", "<")
        .replace("&#62;", ">")
        .replace("&gt;", ">")
        .replace("&#38;", "&")
        .replace("&amp;", "&")
}

/// A browser without JavaScript: keeps cookies (by name; every service here is on 127.0.0.1)
/// and follows redirects itself.
pub struct Browser {
    http: reqwest::Client,
    cookies: HashMap<String, String>,
}

impl Default for Browser {
    fn default() -> Self {
        Self::new()
    }
}

impl Browser {
    pub fn new() -> Self {
        Self {
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap(),
            cookies: HashMap::new(),
        }
    }

    /// The cookie `name`, as the browser holds it.
    pub fn cookie(&self, name: &str) -> Option<&str> {
        self.cookies.get(name).map(String::as_str)
    }

    /// Takes `other`'s cookies (a second tab of the same browser).
    pub fn cookies_from(&mut self, other: &Browser) {
        self.cookies.clone_from(&other.cookies);
    }

    fn cookie_header(&self) -> String {
        self.cookies
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("; ")
    }

    fn keep_cookies(&mut self, headers: &HeaderMap) {
        for value in headers.get_all("set-cookie") {
            let text = value.to_str().unwrap();
            let pair = text.split(';').next().unwrap();
            let (name, value) = pair.split_once('=').unwrap();
            if value.is_empty() || text.contains("Max-Age=0") {
                self.cookies.remove(name);
            } else {
                self.cookies.insert(name.to_owned(), value.to_owned());
            }
        }
    }

    /// One request, no redirect followed.
    pub async fn send(
        &mut self,
        method: reqwest::Method,
        url: &str,
        form: Option<&[(String, String)]>,
        headers: &[(&str, &str)],
    ) -> Page {
        let mut request = self.http.request(method, url);
        if !self.cookies.is_empty() {
            request = request.header("cookie", self.cookie_header());
        }
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        if let Some(form) = form {
            let mut body = form_urlencoded::Serializer::new(String::new());
            for (name, value) in form {
                body.append_pair(name, value);
            }
            request = request
                .header("content-type", "application/x-www-form-urlencoded")
                .body(body.finish());
        }
        let response = request.send().await.unwrap();
        let status = response.status();
        let headers = response.headers().clone();
        self.keep_cookies(&headers);
        let body = response.text().await.unwrap();
        Page {
            status,
            headers,
            body,
            url: url.to_owned(),
        }
    }

    /// Follows `Location` (GET) from `page` until a non-redirect answer.
    pub async fn follow(&mut self, mut page: Page) -> Page {
        for _ in 0..10 {
            if !page.status.is_redirection() {
                return page;
            }
            let location = page.header("location").to_owned();
            let next = resolve(&page.url, &location);
            page = self.send(reqwest::Method::GET, &next, None, &[]).await;
        }
        panic!("too many redirects, last at {}", page.url);
    }

    /// A GET without following a redirect.
    pub async fn peek(&mut self, url: &str) -> Page {
        self.send(reqwest::Method::GET, url, None, &[]).await
    }

    /// The console's chat token (`POST /console/token` with the page's CSRF token).
    pub async fn chat_token(&mut self, site: &Site, csrf: &str) -> Page {
        let url = site.at("/console/token");
        self.send(reqwest::Method::POST, &url, None, &[("x-csrf-token", csrf)])
            .await
    }

    pub async fn get(&mut self, url: &str) -> Page {
        let page = self.send(reqwest::Method::GET, url, None, &[]).await;
        self.follow(page).await
    }

    /// Posts a form and follows the redirect that answers it.
    pub async fn post(&mut self, url: &str, form: &[(&str, &str)]) -> Page {
        let form: Vec<(String, String)> = form
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        let page = self
            .send(reqwest::Method::POST, url, Some(&form), &[])
            .await;
        self.follow(page).await
    }

    /// Signs in through the console: the login redirect, the auth service's form, the
    /// callback. Returns the page the console lands on.
    pub async fn sign_in(&mut self, site: &Site, username: &str, password: &str) -> Page {
        let form = self.get(&site.at("/console/login")).await;
        assert_eq!(form.status, StatusCode::OK, "{}", form.body);
        assert!(form.body.contains("Sign in to CodeLab"), "{}", form.body);
        let answer = self.log_in(&form, username, password).await;
        assert_eq!(answer.status, StatusCode::SEE_OTHER, "{}", answer.body);
        self.follow(answer).await
    }

    /// Submits the auth service's login `form` as `username`: the answer, not followed.
    pub async fn log_in(&mut self, form: &Page, username: &str, password: &str) -> Page {
        let mut fields = form.hidden_fields();
        fields.push(("username".into(), username.into()));
        fields.push(("password".into(), password.into()));
        fields.push(("action".into(), "login".into()));
        let action = resolve(&form.url, "authorize");
        self.send(reqwest::Method::POST, &action, Some(&fields), &[])
            .await
    }
}

/// The Flutter IDE replica (through `gateway_url`, signed in as the admin at `auth_url`) with
/// a session whose coder writes `a.md`, a call waiting for approval: the session, the socket
/// and the call.
pub async fn ide_with_a_waiting_write(
    gateway_url: &str,
    auth_url: &str,
    timeout: Duration,
) -> (String, FlutterSocket, ToolCallRequest) {
    let mut client = FlutterReplicaClient::new(gateway_url).with_timeout(timeout);
    client
        .login(auth_url, "admin", ADMIN_PASSWORD)
        .await
        .unwrap();
    let session = client.create_session().await.unwrap().id;
    let mut ide = client.connect(&session).await.unwrap();
    ide.send_user_message(r#"::tool write_file {"path":"a.md","content":"x"}"#)
        .await
        .unwrap();
    let call = tool_call_of(&ide.wait_for("the tool call", is_tool_call).await.unwrap());
    (session, ide, call)
}

/// A browser signed in to the console as `username`, and the CSRF token of its pages.
pub async fn signed_in(site: &Site, username: &str, password: &str) -> (Browser, String) {
    let mut browser = Browser::new();
    let landed = browser.sign_in(site, username, password).await;
    let csrf = landed.hidden("csrf_token").unwrap();
    (browser, csrf)
}

/// `location` relative to `base` (absolute URLs, absolute paths and siblings).
pub fn resolve(base: &str, location: &str) -> String {
    if location.starts_with("http://") || location.starts_with("https://") {
        return location.to_owned();
    }
    let origin_end = base[8..].find('/').map_or(base.len(), |i| i + 8);
    let origin = &base[..origin_end];
    if location.starts_with('/') {
        return format!("{origin}{location}");
    }
    let path = base[origin_end..].split('?').next().unwrap_or("/");
    let dir = &path[..path.rfind('/').map_or(0, |i| i + 1)];
    format!("{origin}{dir}{location}")
}

/// The JSON body of a page.
pub fn json(page: &Page) -> Value {
    serde_json::from_str(&page.body).unwrap()
}
