//! Shared setup of the gateway's integration tests: the real auth service (SQLite temp file),
//! the real LLM proxy (its mock model) and agent runtime (SQLite temp file), and the gateway
//! router, each served in process on `127.0.0.1:0` through core's `serve`.
//!
//! [`start_stack`] returns a [`Stack`] with the base URLs, the seeded admin and its password,
//! helpers to create users and get tokens (the auth service's password grant, as the Flutter
//! IDE logs in), and a manual clock shared by the auth service and the gateway, so token
//! expiry is tested without sleeping.
// Each test binary uses a different part of this module.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use codelab_core::clock::ManualClock;
use codelab_core::config::{Environment, Secret};
use reqwest::Method;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Password of the seeded `admin` user.
pub const ADMIN_USERNAME: &str = "admin";
/// Password of the seeded `admin` user.
pub const ADMIN_PASSWORD: &str = "admin-password-123";
/// Password given to users made by [`Stack::add_user`].
pub const USER_PASSWORD: &str = "user-password-123";
/// The Flutter IDE's OAuth client.
pub const FLUTTER_CLIENT: &str = "codelab-flutter-app";
/// Key of the gateway→runtime link (never accepted by the gateway itself).
pub const RUNTIME_KEY: &str = "test-runtime-key-0123456789abcdef";
/// The gateway's own key for service callers (`GATEWAY__SERVICE_API_KEY`).
pub const SERVICE_KEY: &str = "test-gateway-service-key-0123456789";
/// Key of the runtime→proxy link.
pub const PROXY_KEY: &str = "test-proxy-key-0123456789abcdef";
/// An origin the gateway's CORS allowlist contains in the default stack.
pub const ALLOWED_ORIGIN: &str = "http://ide.example.test";

/// How to start the stack.
pub struct StackOptions {
    /// The gateway's deployment profile.
    pub environment: Environment,
    /// Changes to the gateway's settings (after the stack's own wiring).
    pub gateway: Box<dyn FnOnce(&mut codelab_gateway::Config) + Send>,
}

impl Default for StackOptions {
    fn default() -> Self {
        Self {
            environment: Environment::Development,
            gateway: Box::new(|_| {}),
        }
    }
}

impl StackOptions {
    /// Options with `tweak` applied to the gateway's settings.
    pub fn gateway(tweak: impl FnOnce(&mut codelab_gateway::Config) + Send + 'static) -> Self {
        Self {
            gateway: Box::new(tweak),
            ..Self::default()
        }
    }
}

/// A token answer of the auth service.
#[derive(Debug, Clone)]
pub struct Tokens {
    pub access: String,
    pub refresh: String,
    pub body: Value,
}

/// Every service of a test, running until the stack drops.
pub struct Stack {
    /// The gateway, e.g. `http://127.0.0.1:40000` (REST under `/api/v1`).
    pub gateway_url: String,
    /// The auth service (`/oauth/token`, `/.well-known/jwks.json`).
    pub auth_url: String,
    /// The agent runtime (internal; needs [`RUNTIME_KEY`]).
    pub runtime_url: String,
    /// The LLM proxy (internal; needs [`PROXY_KEY`]).
    pub proxy_url: String,
    /// The issuer of the auth service's tokens (what the gateway expects).
    pub issuer: String,
    pub gateway: Arc<codelab_gateway::AppState>,
    pub auth: Arc<codelab_auth::AppState>,
    pub runtime: Arc<codelab_agent_runtime::AppState>,
    /// Time of the auth service and the gateway (not the runtime's).
    pub clock: ManualClock,
    /// Follows no redirects.
    pub http: reqwest::Client,
    pub admin_username: &'static str,
    pub admin_password: &'static str,
    /// The first gateway's effective settings (the base of [`Stack::start_replica`]).
    pub gateway_config: codelab_gateway::Config,
    environment: Environment,
    shutdown: CancellationToken,
    _dirs: Vec<tempfile::TempDir>,
}

impl Drop for Stack {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

async fn listener() -> (TcpListener, SocketAddr) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    (listener, addr)
}

fn serve(listener: TcpListener, router: axum::Router, shutdown: &CancellationToken) {
    tokio::spawn(codelab_core::http::serve(
        listener,
        router,
        shutdown.clone(),
        Duration::from_secs(1),
    ));
}

/// The whole stack with the default gateway settings (development, JWTs required,
/// CORS allowing [`ALLOWED_ORIGIN`]).
pub async fn start_stack() -> Stack {
    start_stack_with(StackOptions::default()).await
}

/// The whole stack with `options`.
pub async fn start_stack_with(options: StackOptions) -> Stack {
    let shutdown = CancellationToken::new();
    let clock = ManualClock::starting_now();
    let mut dirs = Vec::new();

    // The auth service, on its own port (its public URL is the issuer).
    let auth_dir = tempfile::tempdir().unwrap();
    let (auth_listener, auth_addr) = listener().await;
    let auth_config = codelab_auth::Config {
        db_url: format!("sqlite:///{}", auth_dir.path().join("auth.db").display()),
        public_url: format!("http://{auth_addr}"),
        master_key: Secret::new(ADMIN_PASSWORD),
        internal_client_secret: Secret::new("internal-secret-0123456789"),
        trusted_proxies: Vec::new(),
        enable_rate_limiting: Some(false),
        ..codelab_auth::Config::default()
    };
    let issuer = auth_config.issuer();
    let auth = codelab_auth::build(
        auth_config,
        codelab_auth::Deps {
            environment: Environment::Development,
            clock: Arc::new(clock.clone()),
            cache: None,
        },
    )
    .await
    .unwrap();
    serve(
        auth_listener,
        codelab_auth::router(Arc::clone(&auth)),
        &shutdown,
    );
    dirs.push(auth_dir);

    // The LLM proxy with its mock model, and the runtime in front of it.
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

    // The gateway, wired like `codelab up` wires it.
    let mut gateway_config = codelab_gateway::Config {
        agent_url: format!("http://{runtime_addr}"),
        internal_api_key: Secret::new(RUNTIME_KEY),
        service_api_key: Secret::new(SERVICE_KEY),
        auth_service_url: format!("http://{auth_addr}"),
        jwt_issuer: issuer.clone(),
        cors_origins: vec![ALLOWED_ORIGIN.to_owned()],
        request_timeout: 10.0,
        agent_stream_timeout: 20.0,
        ..codelab_gateway::Config::default()
    };
    (options.gateway)(&mut gateway_config);
    let gateway = codelab_gateway::build(
        gateway_config.clone(),
        codelab_gateway::Deps {
            environment: options.environment,
            shutdown: shutdown.clone(),
            clock: Arc::new(clock.clone()),
        },
    )
    .await
    .unwrap();
    let (gateway_listener, gateway_addr) = listener().await;
    serve(
        gateway_listener,
        codelab_gateway::router(Arc::clone(&gateway)),
        &shutdown,
    );

    Stack {
        gateway_url: format!("http://{gateway_addr}"),
        auth_url: format!("http://{auth_addr}"),
        runtime_url: format!("http://{runtime_addr}"),
        proxy_url: format!("http://{proxy_addr}"),
        issuer,
        gateway,
        auth,
        runtime,
        clock,
        http: reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap(),
        admin_username: ADMIN_USERNAME,
        admin_password: ADMIN_PASSWORD,
        gateway_config,
        environment: options.environment,
        shutdown,
        _dirs: dirs,
    }
}

/// Another gateway process in front of the same runtime and auth service.
pub struct Replica {
    /// Its base URL.
    pub url: String,
    pub state: Arc<codelab_gateway::AppState>,
}

impl Stack {
    /// Starts another gateway with the first one's settings changed by `tweak` (e.g. both
    /// pointed at one Redis to test the fan-out across replicas); it stops with the stack.
    pub async fn start_replica(&self, tweak: impl FnOnce(&mut codelab_gateway::Config)) -> Replica {
        let mut config = self.gateway_config.clone();
        tweak(&mut config);
        let state = codelab_gateway::build(
            config,
            codelab_gateway::Deps {
                environment: self.environment,
                shutdown: self.shutdown.clone(),
                clock: Arc::new(self.clock.clone()),
            },
        )
        .await
        .unwrap();
        let (listener, addr) = listener().await;
        serve(
            listener,
            codelab_gateway::router(Arc::clone(&state)),
            &self.shutdown,
        );
        Replica {
            url: format!("http://{addr}"),
            state,
        }
    }

    /// A gateway URL for `path` (e.g. `/api/v1/sessions`).
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.gateway_url)
    }

    /// The IDE's WebSocket URL of `session_id` on the gateway.
    pub fn ws_url(&self, session_id: &str) -> String {
        format!(
            "{}/api/v1/ws/{session_id}",
            self.gateway_url.replacen("http://", "ws://", 1)
        )
    }

    /// The password grant of the Flutter client; `None` when the auth service refuses.
    pub async fn try_login(&self, username: &str, password: &str) -> Option<Tokens> {
        let response = self
            .http
            .post(format!("{}/oauth/token", self.auth_url))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(
                form_urlencoded::Serializer::new(String::new())
                    .append_pair("grant_type", "password")
                    .append_pair("client_id", FLUTTER_CLIENT)
                    .append_pair("username", username)
                    .append_pair("password", password)
                    .finish(),
            )
            .send()
            .await
            .unwrap();
        if !response.status().is_success() {
            return None;
        }
        let body: Value = response.json().await.unwrap();
        Some(Tokens {
            access: body["access_token"].as_str().unwrap().to_owned(),
            refresh: body["refresh_token"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
            body,
        })
    }

    /// The password grant, which must succeed.
    pub async fn login(&self, username: &str, password: &str) -> Tokens {
        self.try_login(username, password)
            .await
            .unwrap_or_else(|| panic!("login of {username} failed"))
    }

    /// An access token of the seeded admin.
    pub async fn admin_token(&self) -> String {
        self.login(ADMIN_USERNAME, ADMIN_PASSWORD).await.access
    }

    /// Creates a user with [`USER_PASSWORD`]; returns its id (the tokens' `sub`).
    pub async fn add_user(&self, username: &str) -> String {
        codelab_auth::admin::add_user(&*self.auth.store, username, USER_PASSWORD, None, false)
            .await
            .unwrap()
            .id
    }

    /// Creates a user and logs in: its id and access token.
    pub async fn user(&self, username: &str) -> (String, String) {
        let id = self.add_user(username).await;
        let token = self.login(username, USER_PASSWORD).await.access;
        (id, token)
    }

    /// A request to the gateway with `token` as Bearer (none when `None`).
    pub fn request(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
    ) -> reqwest::RequestBuilder {
        let request = self.http.request(method, self.url(path));
        match token {
            Some(token) => request.bearer_auth(token),
            None => request,
        }
    }

    /// Sends `request`: the status, headers and JSON body (`Null` when empty or not JSON).
    pub async fn send(
        &self,
        request: reqwest::RequestBuilder,
    ) -> (u16, reqwest::header::HeaderMap, Value) {
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let text = response.text().await.unwrap();
        (
            status,
            headers,
            serde_json::from_str(&text).unwrap_or(Value::Null),
        )
    }

    /// `method path` on the gateway with `token`: status and JSON body.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut request = self.request(method, path, token);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let (status, _, body) = self.send(request).await;
        (status, body)
    }

    /// A new session through `POST /api/v1/sessions`; returns its id.
    pub async fn new_session(&self, token: &str) -> String {
        let (status, body) = self
            .call(Method::POST, "/api/v1/sessions", Some(token), None)
            .await;
        assert_eq!(status, 200, "{body}");
        body["id"].as_str().unwrap().to_owned()
    }

    /// Sends one client frame straight to the runtime as `user_id` (what the gateway's
    /// WebSocket does) and returns the events of the answer as JSON.
    pub async fn runtime_frame(&self, user_id: &str, session_id: &str, frame: Value) -> Vec<Value> {
        let response = self
            .http
            .post(format!("{}/agent/message/stream", self.runtime_url))
            .header("X-Internal-Auth", RUNTIME_KEY)
            .header("X-Codelab-User-Id", user_id)
            .json(&json!({ "session_id": session_id, "message": frame }))
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        let text = response.text().await.unwrap();
        assert_eq!(status, 200, "runtime refused the frame: {text}");
        text.split("\n\n")
            .filter_map(|record| record.lines().find_map(|l| l.strip_prefix("data: ")))
            .map(|data| serde_json::from_str(data).unwrap())
            .collect()
    }

    /// Makes the coder agent of `session_id` call `write_file` (which waits for approval)
    /// through the mock model's `::tool` directive; returns the call id.
    pub async fn pending_write(&self, user_id: &str, session_id: &str, path: &str) -> String {
        let text = format!("::tool write_file {{\"path\":\"{path}\",\"content\":\"x\"}}");
        let events = self
            .runtime_frame(
                user_id,
                session_id,
                json!({"type": "user_message", "content": text, "role": "user", "agent_type": "coder"}),
            )
            .await;
        let call = events
            .iter()
            .find(|e| e["type"] == "tool_call")
            .unwrap_or_else(|| panic!("no tool_call in {events:?}"));
        assert_eq!(call["requires_approval"], true, "{call}");
        call["call_id"].as_str().unwrap().to_owned()
    }

    /// The gateway's Prometheus text.
    pub async fn metrics(&self) -> String {
        self.http
            .get(self.url("/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// Rotates the auth service's signing key and makes it sign with the new one at once
    /// (as `codelab keys rotate` plus the reloader would); returns the new `kid`.
    pub async fn rotate_signing_key(&self) -> String {
        let kid = codelab_auth::keys::KeyManager::rotate(
            &*self.auth.store,
            &self.clock,
            Duration::from_secs(3600),
        )
        .await
        .unwrap();
        self.auth.keys.reload().await.unwrap();
        kid
    }
}

/// The decoded JOSE header of a compact JWS.
pub fn jwt_header(token: &str) -> Value {
    let part = token.split('.').next().unwrap();
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).unwrap()).unwrap()
}

/// The decoded claims of a compact JWS (not verified).
pub fn jwt_claims(token: &str) -> Value {
    let part = token.split('.').nth(1).unwrap();
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).unwrap()).unwrap()
}

/// A compact JWS with `header` and `claims` and the given raw signature bytes.
pub fn forge(header: &Value, claims: &Value, signature: &[u8]) -> String {
    format!(
        "{}.{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string()),
        URL_SAFE_NO_PAD.encode(signature)
    )
}

/// A client WebSocket of the tests.
pub type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// How long a test waits for a frame that should come.
pub const PROMPTLY: std::time::Duration = std::time::Duration::from_secs(20);

/// Sends `frame` as a text frame.
pub async fn send(socket: &mut Socket, frame: &Value) {
    use futures_util::SinkExt;
    socket
        .send(tokio_tungstenite::tungstenite::Message::text(
            frame.to_string(),
        ))
        .await
        .unwrap();
}

/// The next text frame as JSON (pings and pongs skipped); panics on close or after [`PROMPTLY`].
pub async fn next_frame(socket: &mut Socket) -> Value {
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::Message;
    loop {
        let message = tokio::time::timeout(PROMPTLY, socket.next())
            .await
            .expect("no frame in time")
            .expect("the socket ended")
            .expect("the socket failed");
        match message {
            Message::Text(text) => return serde_json::from_str(text.as_str()).unwrap(),
            Message::Close(frame) => panic!("closed: {frame:?}"),
            _ => {}
        }
    }
}
