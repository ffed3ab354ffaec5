//! Shared test harness: the auth service built with `Service::build` + `router` and served
//! over real HTTP on `127.0.0.1:0` through core's `serve` (so handlers see the peer address),
//! on a SQLite temp file or a fresh PostgreSQL database, with a manual clock; and the HTTP
//! steps the tests share (forms, the login page, password grants).

use std::sync::Arc;
use std::time::Duration;

use codelab_auth::tokens::TokenType;
use codelab_auth::{AppState, AuthService, Config};
use codelab_core::cache::Cache;
use codelab_core::clock::ManualClock;
use codelab_core::config::{Environment, Secret};
use codelab_core::service::{Service, SharedDeps};
use codelab_testkit::TempPostgres;
pub use codelab_testkit::isolation::alone_in_process;
use reqwest::StatusCode;
use reqwest::header::HeaderMap;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

pub const ADMIN_PASSWORD: &str = "admin-password-123";
pub const INTERNAL_SECRET: &str = "internal-secret-0123456789";
pub const WEB_REDIRECT: &str = "http://localhost:3000/cb";
pub const FLUTTER: &str = "codelab-flutter-app";
pub const WEB: &str = "codelab-web";
pub const INTERNAL: &str = "codelab-internal";
/// The login form's fields for the seeded administrator.
pub const ADMIN_LOGIN: [(&str, &str); 2] = [("username", "admin"), ("password", ADMIN_PASSWORD)];

/// Which database the service runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// How to start the service.
pub struct Options {
    pub backend: Backend,
    pub environment: Environment,
    pub cache: Option<Cache>,
    pub tweak: Box<dyn FnOnce(&mut Config) + Send>,
}

impl Options {
    pub fn new(backend: Backend) -> Self {
        Self {
            backend,
            environment: Environment::Development,
            cache: None,
            tweak: Box::new(|_| {}),
        }
    }

    /// The service's counters in `cache` instead of a memory cache of its own.
    pub fn cache(mut self, cache: Cache) -> Self {
        self.cache = Some(cache);
        self
    }

    pub fn tweak(mut self, tweak: impl FnOnce(&mut Config) + Send + 'static) -> Self {
        self.tweak = Box::new(tweak);
        self
    }
}

/// A running auth service and what it needs to be cleaned up.
pub struct Auth {
    pub base: String,
    pub state: Arc<AppState>,
    pub clock: ManualClock,
    /// Follows no redirects, so tests can read `Location`.
    pub http: reqwest::Client,
    shutdown: CancellationToken,
    _db: DbGuard,
}

/// The temporary database the service owns (none when it is the caller's), removed on drop.
type DbGuard = Option<Box<dyn std::any::Any + Send + Sync>>;

/// A successful token answer.
pub struct Tokens {
    pub access: String,
    pub refresh: Option<String>,
    pub body: Value,
}

impl Auth {
    pub async fn start(backend: Backend) -> Self {
        Self::start_with(Options::new(backend)).await
    }

    pub async fn start_with(options: Options) -> Self {
        let (db_url, guard): (String, DbGuard) = match options.backend {
            Backend::Sqlite => {
                let (dir, _, url) = sqlite_file();
                (url, Some(Box::new(dir)))
            }
            Backend::Postgres => {
                let database = TempPostgres::new("auth_http");
                (database.url.clone(), Some(Box::new(database)))
            }
        };
        Self::start_on(options, db_url, guard).await
    }

    /// The service on `config` exactly (its database is the caller's to delete), with only
    /// `public_url` set to where it listens.
    pub async fn start_configured(config: Config, environment: Environment) -> Self {
        let db_url = config.db_url.clone();
        let options = Options {
            environment,
            ..Options::new(Backend::Sqlite)
        }
        .tweak(move |current| {
            let public_url = std::mem::take(&mut current.public_url);
            *current = config;
            current.public_url = public_url;
        });
        Self::start_on(options, db_url, None).await
    }

    async fn start_on(options: Options, db_url: String, guard: DbGuard) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut config = Config {
            db_url,
            public_url: format!("http://{addr}"),
            master_key: Secret::new(ADMIN_PASSWORD),
            internal_client_secret: Secret::new(INTERNAL_SECRET),
            web_redirect_uris: vec![WEB_REDIRECT.to_owned()],
            // The test client connects from 127.0.0.1: no proxy unless a test says so.
            trusted_proxies: Vec::new(),
            enable_rate_limiting: Some(false),
            ..Config::default()
        };
        (options.tweak)(&mut config);
        let clock = ManualClock::starting_now();
        let mut deps =
            SharedDeps::isolated(options.environment).with_clock(Arc::new(clock.clone()));
        deps.cache = options.cache;
        let state = AuthService::build(config, deps).await.unwrap();
        let shutdown = CancellationToken::new();
        tokio::spawn(codelab_core::http::serve(
            listener,
            AuthService::router(Arc::clone(&state)),
            shutdown.clone(),
            Duration::from_secs(1),
        ));
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap();
        Self {
            base: format!("http://{addr}"),
            state,
            clock,
            http,
            shutdown,
            _db: guard,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Posts a form to `path`; returns status, headers and the JSON body (Null when empty).
    pub async fn post_form(
        &self,
        path: &str,
        form: &[(&str, &str)],
        headers: &[(&str, &str)],
    ) -> (StatusCode, HeaderMap, Value) {
        let mut request = self.form_request(path, form);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        json_parts(request).await
    }

    /// GETs `path`; returns status, headers and the JSON body (Null when empty).
    pub async fn get_json(&self, path: &str) -> (StatusCode, HeaderMap, Value) {
        json_parts(self.http.get(self.url(path))).await
    }

    /// A form POST to `path`, ready to send.
    pub fn form_request<K: AsRef<str>, V: AsRef<str>>(
        &self,
        path: &str,
        form: &[(K, V)],
    ) -> reqwest::RequestBuilder {
        self.http
            .post(self.url(path))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(encode_form(form))
    }

    /// Posts `form` to `path` on a task of its own (for floods of concurrent requests).
    pub fn spawn_form(
        &self,
        path: &str,
        form: &[(&str, &str)],
    ) -> tokio::task::JoinHandle<reqwest::Response> {
        let request = self.form_request(path, form);
        tokio::spawn(async move { request.send().await.unwrap() })
    }

    /// GETs `path` (with its query); returns status, headers and the body text.
    pub async fn get_text(&self, path: &str) -> (StatusCode, HeaderMap, String) {
        parts(self.http.get(self.url(path)).send().await.unwrap()).await
    }

    /// GETs `/oauth/userinfo` with `authorization` as the `Authorization` header, if any.
    pub async fn userinfo(&self, authorization: Option<&str>) -> reqwest::Response {
        let mut request = self.http.get(self.url("/oauth/userinfo"));
        if let Some(value) = authorization {
            request = request.header("authorization", value);
        }
        request.send().await.unwrap()
    }

    /// The login page of the website's authorization request with PKCE `challenge`, `extra`
    /// replacing its parameters of the same name (an empty value removes one).
    pub async fn authorize_page(
        &self,
        challenge: &str,
        extra: &[(&str, &str)],
    ) -> (StatusCode, HeaderMap, String) {
        let mut query = vec![
            ("response_type", "code"),
            ("client_id", WEB),
            ("redirect_uri", WEB_REDIRECT),
            ("state", "xyz state/1"),
            ("code_challenge", challenge),
            ("code_challenge_method", "S256"),
        ];
        for (name, value) in extra {
            query.retain(|(n, _)| n != name);
            if !value.is_empty() {
                query.push((*name, *value));
            }
        }
        self.get_text(&format!("/oauth/authorize?{}", encode_form(&query)))
            .await
    }

    /// Posts the login form rendered in `html` to `/oauth/authorize` with `cookies` as the
    /// `Cookie` header: its hidden fields and `action=login`, then `overrides` (each replacing
    /// a field of its name).
    pub async fn post_login(
        &self,
        cookies: &str,
        html: &str,
        overrides: &[(&str, &str)],
    ) -> (StatusCode, HeaderMap, String) {
        let hidden = "csrf_token response_type client_id redirect_uri state scope code_challenge \
                      code_challenge_method";
        let mut form: Vec<(&str, String)> = (hidden.split_whitespace())
            .filter_map(|name| Some((name, hidden_field(html, name)?)))
            .collect();
        form.push(("action", "login".into()));
        for (name, value) in overrides {
            form.retain(|(n, _)| n != name);
            form.push((*name, (*value).to_owned()));
        }
        let request = self
            .form_request("/oauth/authorize", &form)
            .header("cookie", cookies);
        parts(request.send().await.unwrap()).await
    }

    /// Posts the login form rendered in `html` with the CSRF cookie set by its page (`page`).
    pub async fn submit_login(
        &self,
        page: &HeaderMap,
        html: &str,
        overrides: &[(&str, &str)],
    ) -> (StatusCode, HeaderMap, String) {
        let cookie = set_cookie(page, "codelab_auth_csrf").unwrap();
        self.post_login(&format!("codelab_auth_csrf={cookie}"), html, overrides)
            .await
    }

    /// Signs in through the login page for PKCE `challenge`; the redirect's headers.
    pub async fn sign_in(&self, challenge: &str, login: &[(&str, &str)]) -> HeaderMap {
        let (status, headers, html) = self.authorize_page(challenge, &[]).await;
        assert_eq!(status, StatusCode::OK, "{html}");
        let (status, headers, body) = self.submit_login(&headers, &html, login).await;
        assert_eq!(status, StatusCode::SEE_OTHER, "{body}");
        headers
    }

    /// Redeems the website's authorization `code` with the PKCE `verifier`.
    pub async fn redeem(&self, code: &str, verifier: &str) -> (StatusCode, Value) {
        let (status, _, body) = self
            .token(&[
                ("grant_type", "authorization_code"),
                ("client_id", WEB),
                ("code", code),
                ("redirect_uri", WEB_REDIRECT),
                ("code_verifier", verifier),
            ])
            .await;
        (status, body)
    }

    pub async fn token(&self, form: &[(&str, &str)]) -> (StatusCode, HeaderMap, Value) {
        self.post_form("/oauth/token", form, &[]).await
    }

    pub async fn revoke(&self, form: &[(&str, &str)]) -> (StatusCode, HeaderMap, Value) {
        self.post_form("/oauth/revoke", form, &[]).await
    }

    /// A password grant for the Flutter client, optionally as a client behind a trusted proxy.
    pub async fn password_grant(
        &self,
        username: &str,
        password: &str,
        forwarded_for: Option<&str>,
    ) -> (StatusCode, HeaderMap, Value) {
        let headers: Vec<(&str, &str)> = forwarded_for
            .map(|ip| ("x-forwarded-for", ip))
            .into_iter()
            .collect();
        let form = password_form(FLUTTER, username, password);
        self.post_form("/oauth/token", &form, &headers).await
    }

    /// A password grant for the Flutter client that must succeed.
    pub async fn login(&self, username: &str, password: &str) -> Tokens {
        let (status, _, body) = self.password_grant(username, password, None).await;
        assert_eq!(status, StatusCode::OK, "login failed: {body}");
        tokens_of(body)
    }

    /// A refresh grant for the Flutter client.
    pub async fn refresh(&self, refresh: &str) -> (StatusCode, Value) {
        let (status, _, body) = self.refresh_grant(FLUTTER, refresh, &[]).await;
        (status, body)
    }

    /// A refresh grant for `client_id`, with `extra` parameters.
    pub async fn refresh_grant(
        &self,
        client_id: &str,
        refresh: &str,
        extra: &[(&str, &str)],
    ) -> (StatusCode, HeaderMap, Value) {
        let grant = ("grant_type", "refresh_token");
        let form = [grant, ("client_id", client_id), ("refresh_token", refresh)];
        self.token(&[&form[..], extra].concat()).await
    }

    /// A `client_credentials` grant for the internal client with `secret` (in the form), with
    /// `extra` parameters.
    pub async fn internal_grant(
        &self,
        secret: &str,
        extra: &[(&str, &str)],
    ) -> (StatusCode, HeaderMap, Value) {
        let grant = ("grant_type", "client_credentials");
        let form = [grant, ("client_id", INTERNAL), ("client_secret", secret)];
        self.token(&[&form[..], extra].concat()).await
    }

    /// Introspects `token` as the internal client, with `secret`.
    pub async fn introspect_with(
        &self,
        token: &str,
        secret: &str,
    ) -> (StatusCode, HeaderMap, Value) {
        let form = [
            ("token", token),
            ("client_id", INTERNAL),
            ("client_secret", secret),
        ];
        self.post_form("/oauth/introspect", &form, &[]).await
    }

    /// Introspects `token` as the internal (confidential) client.
    pub async fn introspect(&self, token: &str) -> Value {
        let (status, _, body) = self.introspect_with(token, INTERNAL_SECRET).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        body
    }

    /// Creates a non-admin user with an argon2id password.
    pub async fn add_user(&self, username: &str, password: &str) -> codelab_auth::model::User {
        let hash = codelab_auth::passwords::hash_password(password)
            .await
            .unwrap();
        self.add_user_with_hash(username, &hash).await
    }

    pub async fn add_user_with_hash(
        &self,
        username: &str,
        hash: &str,
    ) -> codelab_auth::model::User {
        self.state
            .store
            .create_user(codelab_auth::model::NewUser {
                username: username.to_owned(),
                email: Some(format!("{username}@Example.COM")),
                password_hash: hash.to_owned(),
                is_admin: false,
            })
            .await
            .unwrap()
    }

    /// The stored user `login` (username or email), which must exist.
    pub async fn user(&self, login: &str) -> codelab_auth::model::User {
        self.state
            .store
            .find_user_by_login(login)
            .await
            .unwrap()
            .unwrap()
    }

    /// The stored client `client_id`, which must exist.
    pub async fn client(&self, client_id: &str) -> codelab_auth::model::Client {
        self.state
            .store
            .get_client(client_id)
            .await
            .unwrap()
            .unwrap()
    }

    /// A token of `kind` signed by the service, valid for 15 minutes.
    pub fn issue(&self, kind: TokenType, user_id: &str, client_id: &str, scope: &str) -> String {
        self.state
            .tokens
            .issue(kind, user_id, client_id, scope, 900)
            .unwrap()
            .token
    }

    /// Audit rows, newest first, as JSON text (to look for leaked secrets).
    pub async fn audit_rows(&self) -> Vec<codelab_auth::model::AuditRecord> {
        self.state.store.list_audit(100).await.unwrap()
    }
}

impl Drop for Auth {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// Sends `request`; its status, headers and JSON body (Null when empty).
pub async fn json_parts(request: reqwest::RequestBuilder) -> (StatusCode, HeaderMap, Value) {
    let (status, headers, text) = parts(request.send().await.unwrap()).await;
    let body = serde_json::from_str(&text).unwrap_or(Value::Null);
    (status, headers, body)
}

/// A response's status, headers and body text.
pub async fn parts(response: reqwest::Response) -> (StatusCode, HeaderMap, String) {
    let status = response.status();
    let headers = response.headers().clone();
    (status, headers, response.text().await.unwrap())
}

/// A new temp dir for a SQLite database: the dir, the file's path and its URL.
pub fn sqlite_file() -> (tempfile::TempDir, std::path::PathBuf, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("auth.db");
    let url = format!("sqlite:///{}", path.display());
    (dir, path, url)
}

/// A password grant's form for `client_id`.
pub fn password_form<'a>(
    client: &'a str,
    username: &'a str,
    password: &'a str,
) -> [(&'a str, &'a str); 4] {
    [
        ("grant_type", "password"),
        ("client_id", client),
        ("username", username),
        ("password", password),
    ]
}

/// `a=1&b=2` (reqwest's `form` feature is not enabled in the workspace).
pub fn encode_form<K: AsRef<str>, V: AsRef<str>>(form: &[(K, V)]) -> String {
    let mut serializer = form_urlencoded::Serializer::new(String::new());
    for (name, value) in form {
        serializer.append_pair(name.as_ref(), value.as_ref());
    }
    serializer.finish()
}

pub fn tokens_of(body: Value) -> Tokens {
    Tokens {
        access: body["access_token"].as_str().unwrap().to_owned(),
        refresh: body["refresh_token"].as_str().map(str::to_owned),
        body,
    }
}

/// A PKCE verifier and its S256 challenge.
pub fn pkce_pair() -> (String, String) {
    let verifier = codelab_auth::tokens::random_token(48);
    let challenge = codelab_auth::tokens::pkce_s256(&verifier);
    (verifier, challenge)
}

/// The value of cookie `name` in a response's `Set-Cookie` headers.
pub fn set_cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(reqwest::header::SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .filter_map(|v| v.split(';').next())
        .filter_map(|pair| pair.split_once('='))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| value.to_owned())
}

/// The value of hidden input `name` in an HTML page.
pub fn hidden_field(html: &str, name: &str) -> Option<String> {
    let marker = format!("name=\"{name}\" value=\"");
    let start = html.find(&marker)? + marker.len();
    let end = html[start..].find('"')? + start;
    Some(
        html[start..end]
            .replace("&amp;", "&")
            .replace("&quot;", "\""),
    )
}

/// The base and the query parameters of a redirect's `Location`.
pub fn location_params(headers: &HeaderMap) -> (String, Vec<(String, String)>) {
    let location = headers["location"].to_str().unwrap().to_owned();
    let (base, query) = location.split_once('?').unwrap();
    let params = form_urlencoded::parse(query.as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    (base.to_owned(), params)
}

pub fn param<'a>(params: &'a [(String, String)], name: &str) -> Option<&'a str> {
    params
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}
