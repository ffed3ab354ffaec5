//! Shared test setup: empty databases on both backends (a temp SQLite file; a fresh database
//! on the PostgreSQL server at `CODELAB_TEST_DATABASE_URL`, dropped afterwards), and the
//! runtime served in-process against the real LLM proxy (its mock model), with a small SSE
//! reader for the streaming endpoint.
// Each test binary uses a different part of this module.
#![allow(dead_code)]

use std::sync::Arc;
use std::time::Duration;

use codelab_agent_runtime::store::{RuntimeStore, open_store};
use codelab_agent_runtime::{AppState, Config, Deps};
use codelab_core::config::Secret;
use codelab_core::db::{DbOptions, connect_database, redact_database_url};
use codelab_protocol::runtime::{RuntimeEvent, SequencedEvent};
use codelab_testkit::ServerGuard;
use codelab_testkit::TempPostgres;
use serde_json::{Value, json};

// ---------------------------------------------------------------------------------------------
// Databases
// ---------------------------------------------------------------------------------------------

/// Which database a test runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// What must be cleaned up after a test database.
pub enum Cleanup {
    /// The temp dir holding the SQLite file; deleted on drop.
    Sqlite(#[allow(dead_code)] tempfile::TempDir),
    Postgres(#[allow(dead_code)] TempPostgres),
}

/// A URL of an empty database (created on first connect) and its cleanup.
pub fn database_url(backend: Backend) -> (String, Cleanup) {
    match backend {
        Backend::Sqlite => {
            let dir = tempfile::tempdir().unwrap();
            let url = format!(
                "sqlite:///{}",
                dir.path().join("agent_runtime.db").display()
            );
            (url, Cleanup::Sqlite(dir))
        }
        Backend::Postgres => {
            // The guard exists before the database does, so a failure anywhere after CREATE
            // drops it.
            let database = TempPostgres::new("runtime_test");
            (database.url.clone(), Cleanup::Postgres(database))
        }
    }
}

/// A store on an empty database, and what must be cleaned up after it.
pub struct TestDb {
    pub store: Arc<dyn RuntimeStore>,
    /// How to open another pool on the same database.
    pub url: String,
    pub _cleanup: Cleanup,
}

pub async fn sqlite_db() -> TestDb {
    test_db(Backend::Sqlite).await
}

pub async fn postgres_db() -> TestDb {
    test_db(Backend::Postgres).await
}

async fn test_db(backend: Backend) -> TestDb {
    let (url, cleanup) = database_url(backend);
    let pool = match connect_database(&url, &DbOptions::default()).await {
        Ok(pool) => pool,
        Err(error) => panic!("{}", no_database(&url, &error.to_string())),
    };
    let store = open_store(pool).await.unwrap();
    TestDb {
        store,
        url,
        _cleanup: cleanup,
    }
}

fn no_database(url: &str, error: &str) -> String {
    format!(
        "the test needs its database: cannot create and open {} ({error}); for PostgreSQL \
         start a server (the test script does) or set CODELAB_TEST_DATABASE_URL to one where \
         this user may CREATE DATABASE",
        redact_database_url(url)
    )
}

// ---------------------------------------------------------------------------------------------
// The runtime and the proxy
// ---------------------------------------------------------------------------------------------

pub const PROXY_KEY: &str = "test-proxy-key-0123456789abcdef";
pub const RUNTIME_KEY: &str = "test-runtime-key-0123456789abcdef";

/// The real LLM proxy on 127.0.0.1:0 (`mock-llm` is its deterministic mock model).
pub async fn start_proxy() -> ServerGuard {
    let config = codelab_llm_proxy::Config {
        internal_api_key: Secret::new(PROXY_KEY),
        retry_backoff_ms: 1,
        request_timeout: 10.0,
        ..codelab_llm_proxy::Config::default()
    };
    let state = codelab_llm_proxy::build(config, codelab_llm_proxy::Deps::default())
        .await
        .unwrap();
    ServerGuard::start(codelab_llm_proxy::router(state)).await
}

/// The real LLM proxy with a model table: the model `fake` is `fake` (an OpenAI-style
/// [`codelab_testkit::FakeLlm`]), so a test scripts every reply and sees every request.
pub async fn start_proxy_to(
    fake: &codelab_testkit::FakeLlm,
) -> (ServerGuard, tempfile::NamedTempFile) {
    let table = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(
        table.path(),
        format!(
            "model_list:\n  - model_name: fake\n    litellm_params:\n      model: openai/gpt-4o\n      \
             api_base: {}\n      api_key: sk-fake-key\n",
            fake.openai_base()
        ),
    )
    .unwrap();
    let config = codelab_llm_proxy::Config {
        internal_api_key: Secret::new(PROXY_KEY),
        config_file: Some(table.path().to_owned()),
        retry_backoff_ms: 1,
        max_retries: 0,
        request_timeout: 10.0,
        ..codelab_llm_proxy::Config::default()
    };
    let state = codelab_llm_proxy::build(config, codelab_llm_proxy::Deps::default())
        .await
        .unwrap();
    (
        ServerGuard::start(codelab_llm_proxy::router(state)).await,
        table,
    )
}

/// The runtime on its own port, in front of the proxy, on an empty database.
pub struct Runtime {
    pub base: String,
    pub http: reqwest::Client,
    pub state: Arc<AppState>,
    /// Where its database is (another runtime may open it too).
    pub db_url: String,
    server: ServerGuard,
    proxy: ServerGuard,
    _table: Option<tempfile::NamedTempFile>,
    _db: Option<Cleanup>,
}

impl Runtime {
    /// The runtime with the test defaults.
    pub async fn start(backend: Backend) -> Runtime {
        Runtime::start_with(backend, |_| {}).await
    }

    /// The runtime with settings changed by `configure`.
    pub async fn start_with(backend: Backend, configure: impl FnOnce(&mut Config)) -> Runtime {
        let (db_url, cleanup) = database_url(backend);
        Runtime::start_on(db_url, Some(cleanup), start_proxy().await, None, configure).await
    }

    /// The runtime in front of a proxy to `fake` (model `fake`, see [`start_proxy_to`]).
    pub async fn start_with_fake(
        backend: Backend,
        fake: &codelab_testkit::FakeLlm,
        configure: impl FnOnce(&mut Config),
    ) -> Runtime {
        let (db_url, cleanup) = database_url(backend);
        let (proxy, table) = start_proxy_to(fake).await;
        Runtime::start_on(db_url, Some(cleanup), proxy, Some(table), |config| {
            config.llm_model = "fake".to_owned();
            configure(config);
        })
        .await
    }

    /// A second replica: another runtime (own pool, own proxy, own process state) on this
    /// runtime's database.
    pub async fn replica(&self, configure: impl FnOnce(&mut Config)) -> Runtime {
        Runtime::start_on(
            self.db_url.clone(),
            None,
            start_proxy().await,
            None,
            configure,
        )
        .await
    }

    /// The runtime on `db_url`, in front of `proxy`.
    pub async fn start_on(
        db_url: String,
        cleanup: Option<Cleanup>,
        proxy: ServerGuard,
        table: Option<tempfile::NamedTempFile>,
        configure: impl FnOnce(&mut Config),
    ) -> Runtime {
        let mut config = Config {
            internal_api_key: Secret::new(RUNTIME_KEY),
            llm_proxy_url: proxy.base_url(),
            llm_proxy_api_key: Secret::new(PROXY_KEY),
            llm_model: "mock-llm".to_owned(),
            db_url: db_url.clone(),
            llm_timeout: 10.0,
            routing_timeout: 5.0,
            // Tests resume stalled turns themselves (a frame, or a direct sweep), never racing
            // a background sweep.
            recovery_interval: 0.0,
            ..Config::default()
        };
        configure(&mut config);
        let state = match codelab_agent_runtime::build(config, Deps::default()).await {
            Ok(state) => state,
            Err(error) => panic!("{}", no_database(&db_url, &error.to_string())),
        };
        let server = ServerGuard::start(codelab_agent_runtime::router(Arc::clone(&state))).await;
        Runtime {
            base: server.base_url(),
            http: reqwest::Client::new(),
            state,
            db_url,
            server,
            proxy,
            _table: table,
            _db: cleanup,
        }
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

    /// `GET path` as `user`: status and JSON body (`null` when the body is not JSON).
    pub async fn get(&self, path: &str, user: &str) -> (u16, Value) {
        let response = self
            .request(reqwest::Method::GET, path, user)
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// `GET path` as `user`, which must answer 200.
    pub async fn get_ok(&self, path: &str, user: &str) -> Value {
        let (status, body) = self.get(path, user).await;
        assert_eq!(status, 200, "GET {path}: {body}");
        body
    }

    /// A new session of `user` (through `POST /sessions`).
    pub async fn new_session(&self, user: &str) -> String {
        let response = self
            .request(reqwest::Method::POST, "/sessions", user)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 201);
        let body: Value = response.json().await.unwrap();
        body["id"].as_str().unwrap().to_owned()
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

    /// A user message, optionally aimed at an agent.
    pub async fn say(&self, session: &str, text: &str, agent: Option<&str>) -> Vec<SequencedEvent> {
        let mut frame = json!({"type": "user_message", "content": text, "role": "user"});
        if let Some(agent) = agent {
            frame["agent_type"] = json!(agent);
        }
        self.send(session, frame).await
    }

    /// A `tool_result` with a result.
    pub async fn result(&self, session: &str, call_id: &str, result: Value) -> Vec<SequencedEvent> {
        self.send(
            session,
            json!({"type": "tool_result", "call_id": call_id, "result": result}),
        )
        .await
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

    /// The session's history page.
    pub async fn history(&self, session: &str) -> Value {
        self.get_ok(&format!("/sessions/{session}/history"), "dev")
            .await
    }

    /// The Prometheus text of `/metrics`.
    pub async fn metrics_text(&self) -> String {
        self.http
            .get(format!("{}/metrics", self.base))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// The proxy's base URL.
    pub fn proxy_url(&self) -> String {
        self.proxy.base_url()
    }

    /// Stops serving (the state stays alive while the test holds it).
    pub fn stop(&self) {
        self.server.abort();
    }
}

/// Reads an SSE body: one `data: <json>` line per event, blank lines between.
pub fn parse_sse(text: &str) -> Vec<SequencedEvent> {
    text.split("\n\n")
        .filter(|record| !record.trim().is_empty())
        .map(|record| {
            let data = record
                .lines()
                .find_map(|line| line.strip_prefix("data: "))
                .unwrap_or_else(|| panic!("an SSE record without data: {record:?}"));
            serde_json::from_str(data).unwrap_or_else(|e| panic!("bad event {data}: {e}"))
        })
        .collect()
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

/// The concatenated text of the `assistant_message` events.
pub fn assistant_text(events: &[SequencedEvent]) -> String {
    all(events, "assistant_message")
        .iter()
        .map(|e| e["content"].as_str().unwrap().to_owned())
        .collect::<Vec<_>>()
        .join("\n")
}

/// A bound for things that happen promptly.
pub const PROMPTLY: Duration = Duration::from_secs(20);

/// A streaming answer read event by event, as it arrives.
pub struct EventReader {
    response: reqwest::Response,
    buffer: String,
    ready: std::collections::VecDeque<SequencedEvent>,
}

impl EventReader {
    /// The next event; `None` when the stream ended.
    pub async fn next(&mut self) -> Option<SequencedEvent> {
        loop {
            if let Some(event) = self.ready.pop_front() {
                return Some(event);
            }
            let chunk = self.response.chunk().await.unwrap()?;
            self.buffer.push_str(std::str::from_utf8(&chunk).unwrap());
            while let Some(end) = self.buffer.find("\n\n") {
                let record: String = self.buffer.drain(..end + 2).collect();
                self.ready.extend(parse_sse(&record));
            }
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
            buffer: String::new(),
            ready: Default::default(),
        }
    }
}
