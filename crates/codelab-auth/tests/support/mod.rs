//! Shared test harness: the auth service built with `Service::build` + `router` and served
//! over real HTTP on `127.0.0.1:0` through core's `serve` (so handlers see the peer address),
//! on a SQLite temp file or a fresh PostgreSQL database, with a manual clock; and the HTTP
//! steps the tests share (forms, the login page, password grants).
#![allow(
    dead_code,
    clippy::disallowed_methods,
    reason = "each test binary uses a different part of these helpers; tests and test support may read the clock, make ids and start tasks directly"
)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use codelab_auth::tokens::TokenType;
use codelab_auth::{AppState, AuthService, Config};
use codelab_core::cache::Cache;
use codelab_core::clock::ManualClock;
use codelab_core::config::{Environment, Secret};
use codelab_core::service::{Service, SharedDeps};
use codelab_testkit::TempPostgres;
use reqwest::StatusCode;
use reqwest::header::HeaderMap;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

pub const ADMIN_PASSWORD: &str = "admin-password-123";
pub const INTERNAL_SECRET: &str = "internal-secret-0123456789";
pub const WEB_REDIRECT: &str = "http://localhost:3000/cb";
pub const FLUTTER: &str = "codelab-flutter-app";

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
    pub addr: SocketAddr,
    pub state: Arc<AppState>,
    pub clock: ManualClock,
    /// Follows no redirects, so tests can read `Location`.
    pub http: reqwest::Client,
    shutdown: CancellationToken,
    _db: DbGuard,
}

enum DbGuard {
    Sqlite(tempfile::TempDir),
    Postgres(TempPostgres),
    /// The caller's database, left as it is (tests that restart the service on it).
    Caller,
}

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
        let (db_url, guard) = match options.backend {
            Backend::Sqlite => {
                let dir = tempfile::tempdir().unwrap();
                let url = format!("sqlite:///{}", dir.path().join("auth.db").display());
                (url, DbGuard::Sqlite(dir))
            }
            Backend::Postgres => {
                let database = TempPostgres::new("auth_http");
                (database.url.clone(), DbGuard::Postgres(database))
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
        Self::start_on(options, db_url, DbGuard::Caller).await
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
            addr,
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
        let (status, headers, text) = parts(request.send().await.unwrap()).await;
        (
            status,
            headers,
            serde_json::from_str(&text).unwrap_or(Value::Null),
        )
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

    /// The login page of the authorization request `query` (already encoded).
    pub async fn authorize_page(&self, query: &str) -> (StatusCode, HeaderMap, String) {
        self.get_text(&format!("/oauth/authorize?{query}")).await
    }

    /// Posts the login `form` to `/oauth/authorize` with `cookies` as the `Cookie` header.
    pub async fn post_authorize(
        &self,
        cookies: &str,
        form: &[(String, String)],
    ) -> (StatusCode, HeaderMap, String) {
        let request = self
            .form_request("/oauth/authorize", form)
            .header("cookie", cookies);
        parts(request.send().await.unwrap()).await
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
        let form = [
            ("grant_type", "password"),
            ("client_id", FLUTTER),
            ("username", username),
            ("password", password),
        ];
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
        let (status, _, body) = self
            .token(&[
                ("grant_type", "refresh_token"),
                ("client_id", FLUTTER),
                ("refresh_token", refresh),
            ])
            .await;
        (status, body)
    }

    /// Introspects `token` as the internal (confidential) client.
    pub async fn introspect(&self, token: &str) -> Value {
        let (status, _, body) = self
            .post_form(
                "/oauth/introspect",
                &[
                    ("token", token),
                    ("client_id", "codelab-internal"),
                    ("client_secret", INTERNAL_SECRET),
                ],
                &[],
            )
            .await;
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

/// A response's status, headers and body text.
pub async fn parts(response: reqwest::Response) -> (StatusCode, HeaderMap, String) {
    let status = response.status();
    let headers = response.headers().clone();
    (status, headers, response.text().await.unwrap())
}

/// The login form rendered in `html`: its hidden fields and `action=login`, then `overrides`
/// (each replacing a field of its name).
pub fn login_form(html: &str, overrides: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut form: Vec<(String, String)> = [
        "csrf_token",
        "response_type",
        "client_id",
        "redirect_uri",
        "state",
        "scope",
        "code_challenge",
        "code_challenge_method",
    ]
    .iter()
    .filter_map(|name| hidden_field(html, name).map(|v| ((*name).to_owned(), v)))
    .collect();
    form.push(("action".into(), "login".into()));
    for (name, value) in overrides {
        form.retain(|(n, _)| n != name);
        form.push(((*name).to_owned(), (*value).to_owned()));
    }
    form
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
