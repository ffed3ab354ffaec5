//! The runtime in front of the real LLM proxy (its mock model, or an OpenAI-style fake behind
//! it), started by the stack builder on an empty database (a temp SQLite file, or fresh
//! PostgreSQL databases on `CODELAB_TEST_DATABASE_URL`, dropped afterwards), with helpers for
//! its internal API and a small SSE reader for the streaming endpoint.

use std::sync::Arc;
use std::time::Duration;

use codelab_agent_runtime::{AppState, Config};
use codelab_protocol::runtime::{RuntimeEvent, SequencedEvent};
use codelab_protocol::sse::{SseEvent, SseParser};
use codelab_stack::{Database, InternalKeys, Llm, ServiceId, Stack, StackBuilder};
use codelab_testkit::TempPostgres;
use serde_json::{Value, json};

/// A reply of 40 words streamed 100 ms apart (four seconds): long enough to cancel mid-answer.
pub fn slow_reply() -> codelab_testkit::FakeReply {
    let words: Vec<String> = (0..40).map(|i| format!("word{i} ")).collect();
    let pieces: Vec<&str> = words.iter().map(String::as_str).collect();
    codelab_testkit::FakeReply::text(&pieces).with_chunk_delay(Duration::from_millis(100))
}

/// Which database a test runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

pub const PROXY_KEY: &str = "test-proxy-key-0123456789abcdef";
pub const RUNTIME_KEY: &str = "test-runtime-key-0123456789abcdef";

/// The stack a runtime runs in (the proxy and the runtime), shared by the runtime and its
/// replicas; its PostgreSQL databases are dropped after it stops.
struct Running {
    stack: Stack,
    _databases: Vec<TempPostgres>,
}

/// The runtime on its own port, in front of the proxy, on an empty database.
pub struct Runtime {
    pub base: String,
    pub http: reqwest::Client,
    pub state: Arc<AppState>,
    running: Arc<Running>,
}

impl Runtime {
    /// The runtime with the test defaults.
    pub async fn start(backend: Backend) -> Runtime {
        Runtime::start_with(backend, |_| {}).await
    }

    /// The runtime with the test defaults and a new session of the development user.
    pub async fn with_session(backend: Backend) -> (Runtime, String) {
        let rt = Runtime::start(backend).await;
        let session = rt.new_session("dev").await;
        (rt, session)
    }

    /// The runtime with a new session whose first message, `text`, went to `agent`: the
    /// session and the turn's events.
    pub async fn with_turn(
        backend: Backend,
        agent: &str,
        text: &str,
    ) -> (Runtime, String, Vec<SequencedEvent>) {
        let rt = Runtime::start(backend).await;
        let (session, events) = rt.new_turn(agent, text).await;
        (rt, session, events)
    }

    /// The runtime with a new session whose coder was asked for `script`, which calls tools:
    /// the session, the turn's events and the first call's id.
    pub async fn with_call(
        backend: Backend,
        script: &str,
    ) -> (Runtime, String, Vec<SequencedEvent>, String) {
        let (rt, session, events) = Runtime::with_turn(backend, "coder", script).await;
        let call_id = call_ids(&events)[0].clone();
        (rt, session, events, call_id)
    }

    /// The runtime with settings changed by `configure`.
    pub async fn start_with(
        backend: Backend,
        configure: impl FnOnce(&mut Config) + Send + 'static,
    ) -> Runtime {
        Runtime::start_from(Stack::builder(), backend, configure).await
    }

    /// The runtime with the test defaults on `clock` (every record it makes is stamped by it).
    pub async fn start_with_clock(
        backend: Backend,
        clock: codelab_core::clock::SharedClock,
    ) -> Runtime {
        Runtime::start_from(Stack::builder().clock(clock), backend, |_| {}).await
    }

    /// The runtime in front of a proxy whose one model, `fake`, is `fake` (an OpenAI-style
    /// [`codelab_testkit::FakeLlm`]), so a test scripts every reply and sees every request.
    pub async fn start_with_fake(
        backend: Backend,
        fake: &codelab_testkit::FakeLlm,
        configure: impl FnOnce(&mut Config) + Send + 'static,
    ) -> Runtime {
        let builder = Stack::builder()
            .llm(Llm::Upstream {
                model: "fake".to_owned(),
                api_base: fake.openai_base(),
                api_key: "sk-fake-key".to_owned(),
            })
            .proxy_config(|config| config.max_retries = 0);
        Runtime::start_from(builder, backend, |config| {
            config.llm_model = "fake".to_owned();
            configure(config);
        })
        .await
    }

    async fn start_from(
        builder: StackBuilder,
        backend: Backend,
        configure: impl FnOnce(&mut Config) + Send + 'static,
    ) -> Runtime {
        let (database, databases) = match backend {
            Backend::Sqlite => (Database::Sqlite, Vec::new()),
            Backend::Postgres => {
                // The stack derives one database per service from this one's name; the guards
                // exist before the databases do, so a failure anywhere after CREATE drops them.
                let named = TempPostgres::new("runtime_test");
                let guards = vec![named.derived("agent_runtime")];
                (Database::Postgres(named.url.clone()), guards)
            }
        };
        // The runtime calls only the proxy: auth, the gateway and the website are not started.
        let started = builder
            .only([ServiceId::AgentRuntime])
            .database(database)
            .keys(InternalKeys::new(PROXY_KEY, RUNTIME_KEY))
            .short_llm_timeouts()
            .runtime_config(|config| {
                config.llm_model = "mock-llm".to_owned();
                // Tests resume stalled turns themselves (a frame, or a direct sweep), never
                // racing a background sweep.
                config.recovery_interval = 0.0;
            })
            .runtime_config(configure)
            .start()
            .await;
        let stack = match started {
            Ok(stack) => stack,
            Err(error) => panic!("{}", no_database(&error)),
        };
        let runtime = stack.runtime.as_ref().unwrap();
        Runtime {
            base: runtime.url.clone(),
            http: reqwest::Client::new(),
            state: Arc::clone(&runtime.state),
            running: Arc::new(Running {
                stack,
                _databases: databases,
            }),
        }
    }

    /// A second replica: another runtime (own pool, own process state) on this runtime's
    /// database and proxy.
    pub async fn replica(&self, configure: impl FnOnce(&mut Config)) -> Runtime {
        let replica = match self.running.stack.start_runtime_replica(configure).await {
            Ok(replica) => replica,
            Err(error) => panic!("{}", no_database(&error)),
        };
        Runtime {
            base: replica.url,
            http: reqwest::Client::new(),
            state: replica.state,
            running: Arc::clone(&self.running),
        }
    }

    /// The proxy's address.
    pub fn proxy_address(&self) -> std::net::SocketAddr {
        self.running.stack.proxy.as_ref().unwrap().address
    }

    /// A request with the internal key, acting for `user`.
    pub fn request(
        &self,
        method: reqwest::Method,
        path: &str,
        user: &str,
    ) -> reqwest::RequestBuilder {
        self.http
            .request(method, format!("{}{path}", self.base))
            .header("X-Internal-Auth", RUNTIME_KEY)
            .header("X-Codelab-User-Id", user)
    }

    /// `method path` as `user`, with `body` as JSON when given: status and JSON body (`null`
    /// when the body is not JSON).
    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        user: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut request = self.request(method, path, user);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// `GET path` as `user`: status and JSON body (`null` when the body is not JSON).
    pub async fn get(&self, path: &str, user: &str) -> (u16, Value) {
        self.call(reqwest::Method::GET, path, user, None).await
    }

    /// `GET path` as `user`, which must answer 200.
    pub async fn get_ok(&self, path: &str, user: &str) -> Value {
        let (status, body) = self.get(path, user).await;
        assert_eq!(status, 200, "GET {path}: {body}");
        body
    }

    /// A new session of `user` (through `POST /sessions`).
    pub async fn new_session(&self, user: &str) -> String {
        let (status, body) = self
            .call(reqwest::Method::POST, "/sessions", user, None)
            .await;
        assert_eq!(status, 201);
        body["id"].text().to_owned()
    }

    /// Posts `body` to the streaming endpoint as `user`: status and the raw body text.
    pub async fn post_stream(&self, user: &str, body: &Value) -> (u16, reqwest::Response) {
        let response = self
            .request(reqwest::Method::POST, "/agent/message/stream", user)
            .json(body)
            .send()
            .await
            .unwrap();
        (response.status().as_u16(), response)
    }

    /// Sends one frame on `session` as `user` and reads the whole event stream.
    pub async fn send_as(&self, user: &str, session: &str, frame: Value) -> Vec<SequencedEvent> {
        let body = json!({"session_id": session, "message": frame});
        let (status, response) = self.post_stream(user, &body).await;
        let content_type = response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let text = response.text().await.unwrap();
        assert_eq!(status, 200, "stream refused: {text}");
        assert_eq!(content_type, "text/event-stream");
        parse_sse(&text)
    }

    /// [`Runtime::send_as`] for the development user.
    pub async fn send(&self, session: &str, frame: Value) -> Vec<SequencedEvent> {
        self.send_as("dev", session, frame).await
    }

    /// A user message, to the session's agent (or the router's choice).
    pub async fn say(&self, session: &str, text: &str) -> Vec<SequencedEvent> {
        let frame = json!({"type": "user_message", "content": text, "role": "user"});
        self.send(session, frame).await
    }

    /// A user message to `agent`.
    pub async fn to_agent(&self, agent: &str, session: &str, text: &str) -> Vec<SequencedEvent> {
        let frame =
            json!({"type": "user_message", "content": text, "role": "user", "agent_type": agent});
        self.send(session, frame).await
    }

    /// A new session of the development user whose first message, `text`, went to `agent`:
    /// the session and the turn's events.
    pub async fn new_turn(&self, agent: &str, text: &str) -> (String, Vec<SequencedEvent>) {
        let session = self.new_session("dev").await;
        let events = self.to_agent(agent, &session, text).await;
        (session, events)
    }

    /// A user message to the coder agent (the one that writes and runs tools).
    pub async fn to_coder(&self, session: &str, text: &str) -> Vec<SequencedEvent> {
        self.to_agent("coder", session, text).await
    }

    /// A `tool_result` with a result.
    pub async fn result(&self, session: &str, call_id: &str, result: Value) -> Vec<SequencedEvent> {
        let frame = json!({"type": "tool_result", "call_id": call_id, "result": result});
        self.send(session, frame).await
    }

    /// The session's stored events (the replay a reconnecting gateway gets).
    pub async fn stored_events(&self, session: &str) -> Vec<SequencedEvent> {
        self.stored_events_of("dev", session).await
    }

    /// [`Runtime::stored_events`] of a session of `user`.
    pub async fn stored_events_of(&self, user: &str, session: &str) -> Vec<SequencedEvent> {
        let body = self
            .get_ok(
                &format!("/sessions/{session}/events?after=0&limit=1000"),
                user,
            )
            .await;
        serde_json::from_value(body["events"].clone()).unwrap()
    }

    /// The session's approvals still waiting (`GET /sessions/{id}/pending-approvals`).
    pub async fn pending_approvals(&self, session: &str) -> Value {
        self.get_ok(&format!("/sessions/{session}/pending-approvals"), "dev")
            .await
    }

    /// `GET path` without the internal key (the public routes: health, readiness, metrics).
    pub async fn get_public(&self, path: &str) -> reqwest::Response {
        self.http
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .unwrap()
    }

    /// The session's history page.
    pub async fn history(&self, session: &str) -> Value {
        self.get_ok(&format!("/sessions/{session}/history"), "dev")
            .await
    }

    /// The Prometheus text of `/metrics`.
    pub async fn metrics_text(&self) -> String {
        self.get_public("/metrics").await.text().await.unwrap()
    }
}

fn no_database(error: &codelab_stack::StackError) -> String {
    format!(
        "the test needs its database: {error} ({:?}); for PostgreSQL start a server (the test \
         script does) or set CODELAB_TEST_DATABASE_URL to one where this user may CREATE \
         DATABASE",
        std::error::Error::source(error)
    )
}

/// Reads a whole SSE body: one JSON event per record.
pub fn parse_sse(text: &str) -> Vec<SequencedEvent> {
    let mut parser = sse_parser();
    let mut events: Vec<SequencedEvent> = parser.push(text.as_bytes()).iter().map(decode).collect();
    events.extend(parser.finish().as_ref().map(decode));
    events
}

/// A record without data is kept, so that it fails to decode rather than pass unseen.
fn sse_parser() -> SseParser {
    SseParser::new().keep_events_without_data()
}

fn decode(event: &SseEvent) -> SequencedEvent {
    serde_json::from_str(&event.data).unwrap_or_else(|e| panic!("bad event {event:?}: {e}"))
}

/// The ids of the `tool_call` events.
pub fn call_ids(events: &[SequencedEvent]) -> Vec<String> {
    all(events, "tool_call")
        .iter()
        .map(|e| e["call_id"].text().to_owned())
        .collect()
}

/// The outcome of the `turn_finished` that ends `events`.
pub fn outcome(events: &[SequencedEvent]) -> String {
    let last = serde_json::to_value(events.last().unwrap()).unwrap();
    assert_eq!(last["type"], "turn_finished", "{:?}", kinds(events));
    last["outcome"].text().to_owned()
}

/// A `hitl_decision` frame without edits or feedback.
pub fn decision(call_id: &str, decision: &str) -> Value {
    json!({"type": "hitl_decision", "call_id": call_id, "decision": decision})
}

/// The `type` of each event.
pub fn kinds(events: &[SequencedEvent]) -> Vec<String> {
    events.iter().map(|e| kind(&e.event)).collect()
}

/// The `type` of an event.
pub fn kind(event: &RuntimeEvent) -> String {
    serde_json::to_value(event).unwrap()["type"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// The events of `events` that are stored (all but text deltas, which carry `seq` 0).
pub fn stored(events: &[SequencedEvent]) -> Vec<SequencedEvent> {
    events.iter().filter(|e| e.seq > 0).cloned().collect()
}

/// The first event of type `kind`, as JSON.
pub fn first(events: &[SequencedEvent], kind_name: &str) -> Value {
    events
        .iter()
        .find(|e| kind(&e.event) == kind_name)
        .map(|e| serde_json::to_value(e).unwrap())
        .unwrap_or_else(|| panic!("no {kind_name} in {:?}", kinds(events)))
}

/// Every event of type `kind`, as JSON.
pub fn all(events: &[SequencedEvent], kind_name: &str) -> Vec<Value> {
    events
        .iter()
        .filter(|e| kind(&e.event) == kind_name)
        .map(|e| serde_json::to_value(e).unwrap())
        .collect()
}

/// The text of a JSON string.
pub trait Text {
    fn text(&self) -> &str;
}

impl Text for Value {
    fn text(&self) -> &str {
        self.as_str().unwrap()
    }
}

/// The string at `key` of every element of the JSON array `list`.
pub fn strings<'a>(list: &'a Value, key: &str) -> Vec<&'a str> {
    list.as_array()
        .unwrap()
        .iter()
        .map(|item| item[key].text())
        .collect()
}

/// The last element of the JSON array `list`.
pub fn last(list: &Value) -> &Value {
    list.as_array().unwrap().last().unwrap()
}

/// The concatenated text of the `assistant_message` events.
pub fn assistant_text(events: &[SequencedEvent]) -> String {
    all(events, "assistant_message")
        .iter()
        .map(|e| e["content"].text().to_owned())
        .collect::<Vec<_>>()
        .join("\n")
}

/// A bound for things that happen promptly.
pub const PROMPTLY: Duration = Duration::from_secs(20);

/// A streaming answer read event by event, as it arrives.
pub struct EventReader {
    response: reqwest::Response,
    parser: SseParser,
    ready: std::collections::VecDeque<SequencedEvent>,
}

impl EventReader {
    /// The next event; `None` when the stream ended.
    pub async fn next(&mut self) -> Option<SequencedEvent> {
        loop {
            if let Some(event) = self.ready.pop_front() {
                return Some(event);
            }
            let Some(chunk) = self.response.chunk().await.unwrap() else {
                return self.parser.finish().as_ref().map(decode);
            };
            self.ready
                .extend(self.parser.push(&chunk).iter().map(decode));
        }
    }

    /// Events up to and including the first of type `kind_name`.
    pub async fn until(&mut self, kind_name: &str) -> Vec<SequencedEvent> {
        let mut out = Vec::new();
        while let Some(event) = self.next().await {
            let done = kind(&event.event) == kind_name;
            out.push(event);
            if done {
                return out;
            }
        }
        panic!("the stream ended without {kind_name}: {:?}", kinds(&out));
    }

    /// Every remaining event, until the stream ends.
    pub async fn rest(mut self) -> Vec<SequencedEvent> {
        let mut out = Vec::new();
        while let Some(event) = self.next().await {
            out.push(event);
        }
        out
    }
}

impl Runtime {
    /// Sends one frame and returns the answer to read as it streams.
    pub async fn open(&self, session: &str, frame: Value) -> EventReader {
        let body = json!({"session_id": session, "message": frame});
        let (status, response) = self.post_stream("dev", &body).await;
        assert_eq!(status, 200);
        EventReader {
            response,
            parser: sse_parser(),
            ready: Default::default(),
        }
    }
}
