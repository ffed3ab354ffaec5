//! Shared setup of the gateway's integration tests: the whole stack of `codelab_stack` (the
//! real auth service and agent runtime on SQLite temp files, the LLM proxy's mock model), with
//! fixed internal keys so tests can call the runtime and the proxy directly.
//!
//! [`start_stack`] returns a [`Stack`] with the base URLs, the seeded admin and its password,
//! helpers to create users and get tokens (the auth service's password grant, as the Flutter
//! IDE logs in), and a manual clock shared by the auth service and the gateway, so token
//! expiry is tested without sleeping.

use codelab_core::service::Service as _;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use codelab_auth::tokens::{TokenService, TokenType};
use codelab_core::clock::ManualClock;
use codelab_core::config::{Environment, Secret};
use codelab_core::service::SharedDeps;
use codelab_gateway::fanout::FanoutSubscription;
use codelab_protocol::runtime::SequencedEvent;
use codelab_protocol::sse::SseParser;
use codelab_stack::{InternalCalls, InternalKeys, ServiceId};
use reqwest::Method;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::{HeaderName, HeaderValue};

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
/// A key strong enough for the gateway outside development.
pub const STRONG_KEY: &str = "0123456789abcdef0123456789abcdef";
/// An origin the gateway's CORS allowlist contains in the default stack.
pub const ALLOWED_ORIGIN: &str = "http://ide.example.test";

/// How to start the stack.
pub struct StackOptions {
    /// The gateway's deployment profile.
    pub environment: Environment,
    /// Changes to the gateway's settings (after the stack's own wiring).
    pub gateway: Box<dyn FnOnce(&mut codelab_gateway::Config) + Send>,
    /// How the services call each other (in process unless a test asks for HTTP).
    pub internal_calls: InternalCalls,
}

impl Default for StackOptions {
    fn default() -> Self {
        Self {
            environment: Environment::Development,
            gateway: Box::new(|_| {}),
            internal_calls: InternalCalls::default(),
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
}

/// Every service of a test, running until the stack drops.
pub struct Stack {
    /// The gateway, e.g. `http://127.0.0.1:40000` (REST under `/api/v1`).
    pub gateway_url: String,
    /// The auth service (`/oauth/token`, `/.well-known/jwks.json`).
    pub auth_url: String,
    /// The agent runtime (internal; needs [`RUNTIME_KEY`]).
    pub runtime_url: String,
    /// The issuer of the auth service's tokens (what the gateway expects).
    pub issuer: String,
    pub gateway: Arc<codelab_gateway::AppState>,
    pub auth: Arc<codelab_auth::AppState>,
    /// Time of the auth service and the gateway (not the runtime's).
    pub clock: ManualClock,
    /// Follows no redirects.
    pub http: reqwest::Client,
    pub admin_username: &'static str,
    pub admin_password: &'static str,
    stack: codelab_stack::Stack,
}

/// The whole stack with the default gateway settings (development, JWTs required,
/// CORS allowing [`ALLOWED_ORIGIN`]).
pub async fn start_stack() -> Stack {
    start_stack_with(StackOptions::default()).await
}

/// The whole stack with `tweak` applied to the gateway's settings.
pub async fn start_stack_tweaked(
    tweak: impl FnOnce(&mut codelab_gateway::Config) + Send + 'static,
) -> Stack {
    start_stack_with(StackOptions::gateway(tweak)).await
}

/// The whole stack with `options`.
pub async fn start_stack_with(options: StackOptions) -> Stack {
    let clock = ManualClock::starting_now();
    let stack = codelab_stack::Stack::builder()
        .keys(InternalKeys::new(PROXY_KEY, RUNTIME_KEY))
        .service_clock(ServiceId::Auth, Arc::new(clock.clone()))
        .service_clock(ServiceId::Gateway, Arc::new(clock.clone()))
        .service_environment(ServiceId::Gateway, options.environment)
        .auth_config(|config| {
            config.master_key = Secret::new(ADMIN_PASSWORD);
            config.internal_client_secret = Secret::new("internal-secret-0123456789");
            config.enable_rate_limiting = Some(false);
        })
        .short_llm_timeouts()
        .gateway_config(|config| {
            config.service_api_key = Secret::new(SERVICE_KEY);
            config.cors_origins = vec![ALLOWED_ORIGIN.to_owned()];
            config.request_timeout = 10.0;
            config.agent_stream_timeout = 20.0;
        })
        .gateway_config(options.gateway)
        .internal_calls(options.internal_calls)
        .start()
        .await
        .unwrap();
    let (gateway, auth, runtime) = (
        stack.gateway.as_ref().unwrap(),
        stack.auth.as_ref().unwrap(),
        stack.runtime.as_ref().unwrap(),
    );
    Stack {
        gateway_url: gateway.url.clone(),
        auth_url: auth.url.clone(),
        runtime_url: runtime.url.clone(),
        issuer: stack.issuer.clone(),
        gateway: Arc::clone(&gateway.state),
        auth: Arc::clone(&auth.state),
        clock,
        http: reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap(),
        admin_username: ADMIN_USERNAME,
        admin_password: ADMIN_PASSWORD,
        stack,
    }
}

/// Another gateway process in front of the same runtime and auth service.
pub struct Replica {
    /// Its base URL.
    pub url: String,
}

impl Replica {
    /// The IDE's WebSocket URL of `session_id` on this replica.
    pub fn ws_url(&self, session_id: &str) -> String {
        ws_url(&self.url, session_id)
    }
}

/// The IDE's WebSocket URL of `session_id` on the gateway at `base_url`.
pub fn ws_url(base_url: &str, session_id: &str) -> String {
    format!(
        "{}/api/v1/ws/{session_id}",
        base_url.replacen("http://", "ws://", 1)
    )
}

impl Stack {
    /// Starts another gateway with the first one's settings changed by `tweak` (e.g. both
    /// pointed at one Redis to test the fan-out across replicas); it stops with the stack.
    pub async fn start_replica(&self, tweak: impl FnOnce(&mut codelab_gateway::Config)) -> Replica {
        let replica = self.stack.start_gateway_replica(tweak).await.unwrap();
        Replica { url: replica.url }
    }

    /// A gateway URL for `path` (e.g. `/api/v1/sessions`).
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.gateway_url)
    }

    /// The IDE's WebSocket URL of `session_id` on the gateway.
    pub fn ws_url(&self, session_id: &str) -> String {
        ws_url(&self.gateway_url, session_id)
    }

    /// The password grant of the Flutter client, with `extra` form fields (e.g. a `scope`).
    pub async fn password_grant(
        &self,
        username: &str,
        password: &str,
        extra: &[(&str, &str)],
    ) -> reqwest::Response {
        let mut form = form_urlencoded::Serializer::new(String::new());
        form.append_pair("grant_type", "password")
            .append_pair("client_id", FLUTTER_CLIENT)
            .append_pair("username", username)
            .append_pair("password", password)
            .extend_pairs(extra);
        self.http
            .post(format!("{}/oauth/token", self.auth_url))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(form.finish())
            .send()
            .await
            .unwrap()
    }

    /// The auth service's public keys (`/.well-known/jwks.json`).
    pub async fn jwks(&self) -> Value {
        self.http
            .get(format!("{}/.well-known/jwks.json", self.auth_url))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// A token service signing with the auth service's own key, for `issuer` and `audience`.
    pub fn signer(&self, issuer: &str, audience: &str) -> TokenService {
        TokenService::new(
            Arc::clone(&self.auth.keys),
            issuer,
            audience,
            30,
            Arc::new(self.clock.clone()),
        )
    }

    /// The password grant of the Flutter client; `None` when the auth service refuses.
    pub async fn try_login(&self, username: &str, password: &str) -> Option<Tokens> {
        let response = self.password_grant(username, password, &[]).await;
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

    /// An access token of the seeded admin holding `api:admin`, as the console's client
    /// (`codelab-web`, authorization code with PKCE) grants it.
    pub async fn admin_scope_token(&self) -> String {
        let sub = jwt_claims(&self.admin_token().await)["sub"]
            .as_str()
            .unwrap()
            .to_owned();
        access_token(
            &self.signer(&self.issuer, "codelab-api"),
            &sub,
            "api:read api:write api:admin",
        )
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

    /// Creates a user, logs in and makes a session: its id, access token and session id.
    pub async fn user_with_session(&self, username: &str) -> (String, String, String) {
        let (id, token) = self.user(username).await;
        let session = self.new_session(&token).await;
        (id, token, session)
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

    /// A request to the gateway as a service caller: `key` as `X-Internal-Auth`, and `user`
    /// (when given) as `X-Codelab-User-Id`.
    pub fn as_service(
        &self,
        method: Method,
        path: &str,
        key: &str,
        user: Option<&str>,
    ) -> reqwest::RequestBuilder {
        let request = self
            .request(method, path, None)
            .header("X-Internal-Auth", key);
        match user {
            Some(user) => request.header("X-Codelab-User-Id", user),
            None => request,
        }
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

    /// `GET path` on the gateway with `token`: status and JSON body.
    pub async fn get(&self, path: &str, token: Option<&str>) -> (u16, Value) {
        self.call(Method::GET, path, token, None).await
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
        let mut parser = SseParser::new();
        let mut events = parser.push(text.as_bytes());
        events.extend(parser.finish());
        events
            .iter()
            .map(|event| serde_json::from_str(&event.data).unwrap())
            .collect()
    }

    /// A user message to the coder agent of `session_id`, straight to the runtime as `user_id`:
    /// the events of the answer.
    pub async fn coder_turn(&self, user_id: &str, session_id: &str, content: &str) -> Vec<Value> {
        let frame = json!({"type": "user_message", "content": content, "agent_type": "coder"});
        self.runtime_frame(user_id, session_id, frame).await
    }

    /// Makes the coder agent of `session_id` call `write_file` (which waits for approval)
    /// through the mock model's `::tool` directive; returns the call id.
    pub async fn pending_write(&self, user_id: &str, session_id: &str, path: &str) -> String {
        let text = format!("::tool write_file {{\"path\":\"{path}\",\"content\":\"x\"}}");
        let frame = json!({"type": "user_message", "content": text, "role": "user",
                           "agent_type": "coder"});
        let events = self.runtime_frame(user_id, session_id, frame).await;
        let call = events
            .iter()
            .find(|e| e["type"] == "tool_call")
            .unwrap_or_else(|| panic!("no tool_call in {events:?}"));
        assert_eq!(call["requires_approval"], true, "{call}");
        call["call_id"].as_str().unwrap().to_owned()
    }

    /// A new session of `user` whose coder waits for approval of a write of `a.txt`, and a
    /// live subscription to its fan-out: the session and the call id.
    pub async fn session_with_a_waiting_write(
        &self,
        user_id: &str,
        token: &str,
    ) -> (String, String, FanoutSubscription) {
        let session = self.new_session(token).await;
        let call_id = self.pending_write(user_id, &session, "a.txt").await;
        let mut subscription = self.gateway.fanout.subscribe(&session);
        assert!(subscription.ready(PROMPTLY).await);
        (session, call_id, subscription)
    }

    /// Every event the runtime stored for `session` of `user_id`.
    pub async fn stored_events(&self, session: &str, user_id: &str) -> Vec<SequencedEvent> {
        self.gateway
            .runtime
            .events_after(session, user_id, 0)
            .await
            .unwrap()
    }

    /// The gateway's Prometheus text.
    pub async fn metrics(&self) -> String {
        codelab_testkit::metrics::scrape(&self.http, &self.gateway_url).await
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

/// The gateway's counter of refusals for `reason`, as `/metrics` shows it.
pub fn auth_failure_metric(reason: &str) -> String {
    format!("codelab_gateway_auth_failures_total{{reason=\"{reason}\"}}")
}

/// An access token of `sub` for the Flutter client with `scope`, issued by `signer`.
pub fn access_token(signer: &TokenService, sub: &str, scope: &str) -> String {
    signer
        .issue(TokenType::Access, sub, FLUTTER_CLIENT, scope, 900)
        .unwrap()
        .token
}

/// The URL of a port nothing listens on.
pub fn closed_url() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    format!("http://{}", listener.local_addr().unwrap())
}

/// The decoded JOSE header of a compact JWS.
pub fn jwt_header(token: &str) -> Value {
    jwt_part(token, 0)
}

/// The decoded claims of a compact JWS (not verified).
pub fn jwt_claims(token: &str) -> Value {
    jwt_part(token, 1)
}

fn jwt_part(token: &str, index: usize) -> Value {
    let part = token.split('.').nth(index).unwrap();
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

/// Gateway settings with a strong internal key, changed by `tweak`.
pub fn strong_config(tweak: impl FnOnce(&mut codelab_gateway::Config)) -> codelab_gateway::Config {
    let mut config = codelab_gateway::Config {
        internal_api_key: Secret::new(STRONG_KEY),
        ..codelab_gateway::Config::default()
    };
    tweak(&mut config);
    config
}

/// Why the gateway refuses to build with `config` in `environment`.
pub async fn build_error(config: codelab_gateway::Config, environment: Environment) -> String {
    match codelab_gateway::GatewayService::build(config, SharedDeps::isolated(environment)).await {
        Ok(_) => panic!("the gateway built in {environment:?}"),
        Err(error) => error.to_string(),
    }
}

/// Opens the IDE's WebSocket at `url` with extra request `headers`.
pub async fn open(url: &str, headers: &[(&str, &str)]) -> Result<Socket, tungstenite::Error> {
    let mut request = url.into_client_request().unwrap();
    for (name, value) in headers {
        request.headers_mut().insert(
            HeaderName::from_bytes(name.as_bytes()).unwrap(),
            HeaderValue::from_str(value).unwrap(),
        );
    }
    let (socket, _) = tokio_tungstenite::connect_async(request).await?;
    Ok(socket)
}

/// The HTTP status and JSON body of a refused upgrade.
pub async fn refusal(url: &str, headers: &[(&str, &str)]) -> (u16, Value) {
    match open(url, headers).await {
        Err(tungstenite::Error::Http(response)) => {
            let body = response
                .body()
                .as_deref()
                .and_then(|b| serde_json::from_slice(b).ok())
                .unwrap_or(Value::Null);
            (response.status().as_u16(), body)
        }
        Err(other) => panic!("expected an HTTP refusal, got {other}"),
        Ok(_) => panic!("the upgrade of {url} was accepted"),
    }
}

/// The close frame the server sends, after any frames before it: (code, reason).
pub async fn close_frame(socket: &mut Socket) -> (u16, String) {
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::Message;
    loop {
        match tokio::time::timeout(PROMPTLY, socket.next())
            .await
            .expect("no close in time")
        {
            Some(Ok(Message::Close(Some(frame)))) => {
                return (u16::from(frame.code), frame.reason.to_string());
            }
            Some(Ok(Message::Close(None))) => return (1005, String::new()),
            Some(Ok(_)) => {}
            Some(Err(error)) => panic!("the socket failed before a close frame: {error}"),
            None => panic!("the socket ended without a close frame"),
        }
    }
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
