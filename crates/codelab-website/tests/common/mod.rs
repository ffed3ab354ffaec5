//! The whole system in process for the website's tests: the auth service (SQLite), the LLM
//! proxy (mock model), the agent runtime (SQLite), the gateway and the website, each on
//! `127.0.0.1:0`. With [`Layout::SingleOrigin`] a front router routes like nginx and
//! `codelab up` (`/oauth/`, `/.well-known/`, `/api/v1/`, the rest to the website); with
//! [`Layout::SeparateOrigins`] the browser talks to each service's own address.
//!
//! [`Browser`] is a small cookie-keeping HTTP client that follows redirects by hand, so tests
//! can sign in through the auth service's real login form.
#![allow(dead_code, clippy::unwrap_used)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{MatchedPath, OriginalUri, Request};
use codelab_core::config::{Environment, Secret};
use reqwest::StatusCode;
use reqwest::header::HeaderMap;
use serde_json::Value;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt as _;

pub const ADMIN_PASSWORD: &str = "admin-password-123";
pub const USER_PASSWORD: &str = "user-password-123";
const RUNTIME_KEY: &str = "test-runtime-key-0123456789abcdef";
const PROXY_KEY: &str = "test-proxy-key-0123456789abcdef";

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
    shutdown: CancellationToken,
    _dirs: Vec<tempfile::TempDir>,
}

impl Drop for Site {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

async fn listener() -> (TcpListener, SocketAddr) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    (listener, addr)
}

fn serve(listener: TcpListener, router: Router, shutdown: &CancellationToken) {
    tokio::spawn(codelab_core::http::serve(
        listener,
        router,
        shutdown.clone(),
        Duration::from_secs(1),
    ));
}

/// Starts every service; the seeded `admin` has [`ADMIN_PASSWORD`] and `bob` (not an admin)
/// [`USER_PASSWORD`].
pub async fn start_site(layout: Layout) -> Site {
    start_site_with_clock(layout, Arc::new(codelab_core::clock::SystemClock)).await
}

/// Seconds the auth service's access tokens live in these tests: the website hands the chat
/// page only tokens of at most 5 minutes (`docs/website.md`, "Chat").
pub const ACCESS_TOKEN_LIFETIME: i64 = 300;

/// As [`start_site`], the website running on `clock` (the other services on real time).
pub async fn start_site_with_clock(
    layout: Layout,
    clock: codelab_core::clock::SharedClock,
) -> Site {
    start_site_with(layout, clock, None).await
}

/// The website's OAuth client when a test gives it its own access-token lifetime.
pub const CUSTOM_WEB_CLIENT_ID: &str = "codelab-web-custom";

/// As [`start_site_with_clock`]; with `web_token_lifetime`, the website signs in through its
/// own client (a copy of the seeded `codelab-web`) whose access tokens live that many seconds.
pub async fn start_site_with(
    layout: Layout,
    clock: codelab_core::clock::SharedClock,
    web_token_lifetime: Option<i64>,
) -> Site {
    let shutdown = CancellationToken::new();
    let mut dirs = Vec::new();
    let (front_listener, front_addr) = listener().await;
    let (auth_listener, auth_addr) = listener().await;
    let (gateway_listener, gateway_addr) = listener().await;
    let (website_listener, website_addr) = listener().await;
    let (public, auth_public, gateway_public) = match layout {
        Layout::SingleOrigin => {
            let front = format!("http://{front_addr}");
            (front.clone(), front.clone(), front)
        }
        Layout::SeparateOrigins => (
            format!("http://{website_addr}"),
            format!("http://{auth_addr}"),
            format!("http://{gateway_addr}"),
        ),
    };

    let auth_dir = tempfile::tempdir().unwrap();
    let auth_config = codelab_auth::Config {
        db_url: format!("sqlite:///{}", auth_dir.path().join("auth.db").display()),
        public_url: auth_public.clone(),
        master_key: Secret::new(ADMIN_PASSWORD),
        internal_client_secret: Secret::new("internal-secret-0123456789"),
        trusted_proxies: Vec::new(),
        enable_rate_limiting: Some(false),
        web_redirect_uris: vec![format!("{public}/console/callback")],
        access_token_lifetime: ACCESS_TOKEN_LIFETIME,
        ..codelab_auth::Config::default()
    };
    let issuer = auth_config.issuer();
    let auth = codelab_auth::build(auth_config, codelab_auth::Deps::default())
        .await
        .unwrap();
    codelab_auth::admin::add_user(auth.store.as_ref(), "bob", USER_PASSWORD, None, false)
        .await
        .unwrap();
    let web_client_id = match web_token_lifetime {
        None => codelab_auth::seed::WEB_CLIENT_ID.to_owned(),
        Some(lifetime) => {
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
            CUSTOM_WEB_CLIENT_ID.to_owned()
        }
    };
    serve(
        auth_listener,
        codelab_auth::router(Arc::clone(&auth)),
        &shutdown,
    );
    dirs.push(auth_dir);

    let proxy_config = codelab_llm_proxy::Config {
        internal_api_key: Secret::new(PROXY_KEY),
        retry_backoff_ms: 1,
        request_timeout: 10.0,
        ..codelab_llm_proxy::Config::default()
    };
    let proxy = codelab_llm_proxy::build(proxy_config, codelab_llm_proxy::Deps::default())
        .await
        .unwrap();
    let (proxy_listener, proxy_addr) = listener().await;
    serve(proxy_listener, codelab_llm_proxy::router(proxy), &shutdown);

    let runtime_dir = tempfile::tempdir().unwrap();
    let runtime_config = codelab_agent_runtime::Config {
        internal_api_key: Secret::new(RUNTIME_KEY),
        llm_proxy_url: format!("http://{proxy_addr}"),
        llm_proxy_api_key: Secret::new(PROXY_KEY),
        llm_model: "mock-llm".to_owned(),
        db_url: format!(
            "sqlite:///{}",
            runtime_dir.path().join("agent_runtime.db").display()
        ),
        llm_timeout: 10.0,
        routing_timeout: 5.0,
        ..codelab_agent_runtime::Config::default()
    };
    let runtime =
        codelab_agent_runtime::build(runtime_config, codelab_agent_runtime::Deps::default())
            .await
            .unwrap();
    let (runtime_listener, runtime_addr) = listener().await;
    serve(
        runtime_listener,
        codelab_agent_runtime::router(Arc::clone(&runtime)),
        &shutdown,
    );
    dirs.push(runtime_dir);

    let gateway_config = codelab_gateway::Config {
        agent_url: format!("http://{runtime_addr}"),
        internal_api_key: Secret::new(RUNTIME_KEY),
        auth_service_url: format!("http://{auth_addr}"),
        jwt_issuer: issuer,
        request_timeout: 10.0,
        agent_stream_timeout: 20.0,
        ..codelab_gateway::Config::default()
    };
    let gateway = codelab_gateway::build(
        gateway_config,
        codelab_gateway::Deps {
            shutdown: shutdown.clone(),
            ..codelab_gateway::Deps::new(Environment::Development)
        },
    )
    .await
    .unwrap();
    serve(
        gateway_listener,
        codelab_gateway::router(Arc::clone(&gateway)),
        &shutdown,
    );

    let website_config = codelab_website::Config {
        public_url: public.clone(),
        auth_url: Some(format!("http://{auth_addr}")),
        auth_public_url: Some(auth_public),
        gateway_url: Some(format!("http://{gateway_addr}")),
        gateway_public_url: Some(gateway_public),
        agent_runtime_url: Some(format!("http://{runtime_addr}")),
        llm_proxy_url: Some(format!("http://{proxy_addr}")),
        session_key: Secret::new("a-session-key-for-tests-0123456789"),
        client_id: web_client_id,
        status_refresh_interval: 1,
        ..codelab_website::Config::default()
    };
    let website = codelab_website::build(
        website_config,
        codelab_website::Deps {
            environment: Environment::Development,
            clock,
        },
    )
    .await
    .unwrap();
    serve(
        website_listener,
        codelab_website::router(Arc::clone(&website)),
        &shutdown,
    );
    serve(
        front_listener,
        front_router(&auth, &gateway, &website),
        &shutdown,
    );

    Site {
        url: public,
        auth_url: format!("http://{auth_addr}"),
        gateway_url: format!("http://{gateway_addr}"),
        auth,
        website,
        shutdown,
        _dirs: dirs,
    }
}

/// Routes like nginx: `/oauth/` and `/.well-known/` to auth, `/api/v1/` to the gateway (with
/// its WebSocket), everything else to the website.
fn front_router(
    auth: &Arc<codelab_auth::AppState>,
    gateway: &Arc<codelab_gateway::AppState>,
    website: &Arc<codelab_website::AppState>,
) -> Router {
    let unmatched = |mut req: Request| {
        req.extensions_mut().remove::<MatchedPath>();
        req
    };
    let auth_router = codelab_auth::router(Arc::clone(auth)).map_request(unmatched);
    let api = codelab_gateway::router(Arc::clone(gateway)).map_request(|mut req: Request| {
        req.extensions_mut().remove::<MatchedPath>();
        if let Some(OriginalUri(uri)) = req.extensions().get::<OriginalUri>().cloned() {
            *req.uri_mut() = uri;
        }
        req
    });
    Router::new()
        .nest_service("/api/v1", api)
        .route_service("/oauth/{*path}", auth_router.clone())
        .route_service("/.well-known/{*path}", auth_router)
        .fallback_service(codelab_website::router(Arc::clone(website)).map_request(unmatched))
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

    pub fn forget_cookies(&mut self) {
        self.cookies.clear();
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
        let form = self.get(&format!("{}/console/login", site.url)).await;
        assert_eq!(form.status, StatusCode::OK, "{}", form.body);
        assert!(form.body.contains("Sign in to CodeLab"), "{}", form.body);
        let mut fields = form.hidden_fields();
        fields.push(("username".into(), username.into()));
        fields.push(("password".into(), password.into()));
        fields.push(("action".into(), "login".into()));
        let action = resolve(&form.url, "authorize");
        let answer = self
            .send(reqwest::Method::POST, &action, Some(&fields), &[])
            .await;
        assert_eq!(answer.status, StatusCode::SEE_OTHER, "{}", answer.body);
        self.follow(answer).await
    }
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
