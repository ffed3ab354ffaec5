//! Full turns per second and the runtime's added latency per step, on SQLite and PostgreSQL
//! side by side in one run, and the peak memory of 1,000 open sessions.
//!
//! The stack builder serves only the real LLM proxy (its mock model, no token delay) and the
//! runtime in-process on 127.0.0.1, the runtime on a temp SQLite file
//! and on a temp PostgreSQL database (on `CODELAB_TEST_DATABASE_URL`, default
//! `postgres://postgres@127.0.0.1:5432/postgres`, dropped afterwards). Measured:
//! - turns/s of a plain turn (`user_message` → `assistant_message`, one step) and of a tool
//!   turn (`user_message` with `::tool` → `tool_call` → `tool_result` → answer, two steps), at
//!   concurrency 1 and 8 (each worker on its own sessions, a new one every 10 turns);
//! - added latency per step: a turn's time through the runtime minus the proxy's own time for
//!   the same LLM requests, sent directly with the runtime's LLM client (p50/p99 of the
//!   per-sample differences);
//! - VmHWM of the process (peak reset first) while 1,000 sessions each await a tool result.
//!
//! Client, services and (for SQLite) the database share this process and its cores.
//!
//! Run: `cargo bench -p codelab-stack --bench runtime_turns` (`BENCH_SECONDS` sets each
//! throughput run, default 3; `BENCH_SAMPLES` the latency samples, default 200).
#![allow(
    clippy::disallowed_methods,
    reason = "tests own their clock, ids and tasks"
)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use codelab_agent_runtime::agents::AgentKind;
use codelab_agent_runtime::llm::LlmClient;
use codelab_agent_runtime::prompts::{PromptContext, Prompts};
use codelab_core::config::Secret;
use codelab_protocol::openai::{ChatCompletionRequest, ChatMessage, ToolCall};
use codelab_protocol::sse::SseParser;
use codelab_stack::{Database, InternalKeys, ServiceId, Stack};
use codelab_testkit::TempPostgres;
use serde_json::{Value, json};

const PROXY_KEY: &str = "bench-proxy-key-0123456789abcdef";
const RUNTIME_KEY: &str = "bench-runtime-key-0123456789abcdef";
const TURNS_PER_SESSION: usize = 10;
const OPEN_SESSIONS: usize = 1000;
const PLAIN: &str = "Say hello";
const TOOL: &str = "::tool read_file {\"path\":\"a.py\"}";
const TOOL_RESULT: &str = "print('hello')";

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn percentile(values: &mut [Duration], p: f64) -> Duration {
    if values.is_empty() {
        return Duration::ZERO;
    }
    values.sort_unstable();
    let rank = ((p / 100.0) * (values.len() - 1) as f64).round() as usize;
    values[rank.min(values.len() - 1)]
}

/// A field of `/proc/self/status` in KiB (`VmHWM`, `VmRSS`).
fn status_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}

/// Resets VmHWM to the current RSS (Linux ≥ 4.0), so the next reading is this phase's peak.
fn reset_peak() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

// ---------------------------------------------------------------------------------------------
// Setup
// ---------------------------------------------------------------------------------------------

/// The runtime served in-process in a stack on `backend`, in front of the proxy; the
/// PostgreSQL databases are dropped after it.
struct Runtime {
    base: String,
    http: reqwest::Client,
    /// The proxy's URL, for the LLM requests sent directly.
    proxy: String,
    _stack: Stack,
    _databases: Vec<TempPostgres>,
}

async fn start_runtime(backend: &str) -> Result<Runtime, String> {
    let (database, databases) = if backend == "sqlite" {
        (Database::Sqlite, Vec::new())
    } else {
        // The stack derives one database per service from this one's name.
        let named = TempPostgres::new("runtime_bench");
        let guards = vec![named.derived("agent_runtime")];
        (Database::Postgres(named.url.clone()), guards)
    };
    let stack = Stack::builder()
        .only([ServiceId::AgentRuntime])
        .database(database)
        .keys(InternalKeys::new(PROXY_KEY, RUNTIME_KEY))
        .proxy_config(|config| config.max_concurrent_requests = 1000)
        .runtime_config(|config| {
            config.db_max_connections = 16;
            config.session_retention_days = 0;
            config.recovery_interval = 0.0;
        })
        .start()
        .await
        .map_err(|e| e.to_string())?;
    let (Some(runtime), Some(proxy)) = (&stack.runtime, &stack.proxy) else {
        return Err("the stack started without the runtime".to_owned());
    };
    Ok(Runtime {
        base: runtime.url.clone(),
        http: reqwest::Client::builder()
            .pool_max_idle_per_host(64)
            .build()
            .expect("an HTTP client"),
        proxy: proxy.url.clone(),
        _stack: stack,
        _databases: databases,
    })
}

// ---------------------------------------------------------------------------------------------
// Turns
// ---------------------------------------------------------------------------------------------

impl Runtime {
    async fn new_session(&self) -> String {
        let body: Value = self
            .http
            .post(format!("{}/sessions", self.base))
            .header("X-Internal-Auth", RUNTIME_KEY)
            .send()
            .await
            .expect("POST /sessions")
            .json()
            .await
            .expect("a session");
        body["id"].as_str().expect("an id").to_owned()
    }

    /// Sends a frame and reads its whole stream; the events as JSON.
    async fn send(&self, session: &str, frame: Value) -> Vec<Value> {
        let text = self
            .http
            .post(format!("{}/agent/message/stream", self.base))
            .header("X-Internal-Auth", RUNTIME_KEY)
            .json(&json!({"session_id": session, "message": frame}))
            .send()
            .await
            .expect("a stream")
            .text()
            .await
            .expect("the whole stream");
        let mut parser = SseParser::new();
        let mut events = parser.push(text.as_bytes());
        events.extend(parser.finish());
        events
            .iter()
            .map(|event| serde_json::from_str(&event.data).expect("an event"))
            .collect()
    }

    fn last_is(events: &[Value], outcome: &str) -> bool {
        events
            .last()
            .is_some_and(|e| e["type"] == "turn_finished" && e["outcome"] == outcome)
    }

    /// Starts a tool turn; the call id it waits on.
    async fn start_tool_turn(&self, session: &str) -> String {
        let events = self
            .send(
                session,
                json!({"type": "user_message", "content": TOOL, "agent_type": "coder"}),
            )
            .await;
        assert!(Self::last_is(&events, "awaiting_tools"), "{events:?}");
        events
            .iter()
            .find(|e| e["type"] == "tool_call")
            .and_then(|e| e["call_id"].as_str())
            .expect("a tool call")
            .to_owned()
    }

    async fn plain_turn(&self, session: &str) {
        let events = self
            .send(
                session,
                json!({"type": "user_message", "content": PLAIN, "agent_type": "coder"}),
            )
            .await;
        assert!(Self::last_is(&events, "completed"), "{events:?}");
    }

    async fn tool_turn(&self, session: &str) {
        let call_id = self.start_tool_turn(session).await;
        let events = self
            .send(
                session,
                json!({"type": "tool_result", "call_id": call_id, "result": TOOL_RESULT}),
            )
            .await;
        assert!(Self::last_is(&events, "completed"), "{events:?}");
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Plain,
    Tool,
}

/// Turns per second of `kind` with `concurrency` workers for `seconds`.
async fn throughput(rt: &Arc<Runtime>, kind: Kind, concurrency: usize, seconds: u64) -> f64 {
    let started = Instant::now();
    let deadline = started + Duration::from_secs(seconds);
    let workers: Vec<_> = (0..concurrency)
        .map(|_| {
            let rt = Arc::clone(rt);
            tokio::spawn(async move {
                let mut turns = 0usize;
                let mut session = String::new();
                while Instant::now() < deadline {
                    if turns.is_multiple_of(TURNS_PER_SESSION) {
                        session = rt.new_session().await;
                    }
                    match kind {
                        Kind::Plain => rt.plain_turn(&session).await,
                        Kind::Tool => rt.tool_turn(&session).await,
                    }
                    turns += 1;
                }
                turns
            })
        })
        .collect();
    let mut turns = 0;
    for worker in workers {
        turns += worker.await.expect("a worker");
    }
    turns as f64 / started.elapsed().as_secs_f64()
}

/// The LLM requests of the turns, as the runtime sends them for the coder agent.
struct Requests {
    plain: ChatCompletionRequest,
    tool_step1: ChatCompletionRequest,
    tool_step2: ChatCompletionRequest,
}

impl Requests {
    fn new() -> Requests {
        let prompts = Prompts::load(None).expect("the built-in prompts");
        let system = prompts
            .render(
                AgentKind::Coder,
                &PromptContext::for_agent(AgentKind::Coder, true),
            )
            .expect("the coder prompt");
        let tools = codelab_agent_runtime::tools::definitions_for(AgentKind::Coder);
        let request = |messages: Vec<ChatMessage>| ChatCompletionRequest {
            model: "mock-llm".into(),
            messages,
            tools: Some(tools.clone()),
            ..ChatCompletionRequest::default()
        };
        let system = ChatMessage::text("system", system);
        let call = ChatMessage {
            role: "assistant".into(),
            tool_calls: Some(vec![ToolCall::function(
                "call_0123456789abcdef01234567",
                "read_file",
                r#"{"path":"a.py"}"#,
            )]),
            ..ChatMessage::default()
        };
        let result = ChatMessage {
            tool_call_id: Some("call_0123456789abcdef01234567".into()),
            ..ChatMessage::text("tool", TOOL_RESULT)
        };
        Requests {
            plain: request(vec![system.clone(), ChatMessage::text("user", PLAIN)]),
            tool_step1: request(vec![system.clone(), ChatMessage::text("user", TOOL)]),
            tool_step2: request(vec![system, ChatMessage::text("user", TOOL), call, result]),
        }
    }
}

async fn timed_complete(llm: &LlmClient, request: &ChatCompletionRequest) -> Duration {
    let started = Instant::now();
    llm.complete(request.clone())
        .await
        .expect("the proxy answers");
    started.elapsed()
}

/// Added latency per step of `kind`: (turn through the runtime − the proxy's time for the
/// same requests) / steps, one sample per fresh session, alternating with the direct calls.
async fn added_per_step(
    rt: &Runtime,
    llm: &LlmClient,
    requests: &Requests,
    kind: Kind,
    samples: usize,
) -> (Vec<Duration>, Vec<Duration>) {
    let mut added = Vec::with_capacity(samples);
    let mut direct = Vec::with_capacity(samples);
    for _ in 0..samples {
        let session = rt.new_session().await;
        let (proxy_time, steps) = match kind {
            Kind::Plain => (timed_complete(llm, &requests.plain).await, 1),
            Kind::Tool => (
                timed_complete(llm, &requests.tool_step1).await
                    + timed_complete(llm, &requests.tool_step2).await,
                2,
            ),
        };
        let started = Instant::now();
        match kind {
            Kind::Plain => rt.plain_turn(&session).await,
            Kind::Tool => rt.tool_turn(&session).await,
        }
        let runtime_time = started.elapsed();
        added.push(runtime_time.saturating_sub(proxy_time) / steps);
        direct.push(proxy_time / steps);
    }
    (added, direct)
}

/// Opens `OPEN_SESSIONS` sessions, each awaiting a tool result; (peak KiB, RSS before, after).
async fn open_sessions(rt: &Arc<Runtime>) -> (u64, u64, u64, bool) {
    let reset = reset_peak();
    let before = status_kib("VmRSS:");
    let per_worker = OPEN_SESSIONS / 8;
    let workers: Vec<_> = (0..8)
        .map(|_| {
            let rt = Arc::clone(rt);
            tokio::spawn(async move {
                for _ in 0..per_worker {
                    let session = rt.new_session().await;
                    rt.start_tool_turn(&session).await;
                }
            })
        })
        .collect();
    for worker in workers {
        worker.await.expect("a worker");
    }
    (status_kib("VmHWM:"), before, status_kib("VmRSS:"), reset)
}

// ---------------------------------------------------------------------------------------------
// Report
// ---------------------------------------------------------------------------------------------

#[derive(Default)]
struct Column {
    error: Option<String>,
    rates: Vec<f64>,
    plain_added: Vec<Duration>,
    plain_direct: Vec<Duration>,
    tool_added: Vec<Duration>,
    tool_direct: Vec<Duration>,
    peak_kib: u64,
    rss_before: u64,
    rss_after: u64,
    peak_reset: bool,
}

async fn measure(backend: &str, seconds: u64, samples: usize) -> Column {
    let rt = match start_runtime(backend).await {
        Ok(rt) => Arc::new(rt),
        Err(error) => {
            return Column {
                error: Some(error),
                ..Column::default()
            };
        }
    };
    let llm = LlmClient::new(&rt.proxy, &Secret::new(PROXY_KEY), Duration::from_secs(30))
        .expect("an LLM client");
    let requests = Requests::new();
    // Warm up connections, caches and the database.
    for _ in 0..20 {
        let session = rt.new_session().await;
        rt.tool_turn(&session).await;
        timed_complete(&llm, &requests.plain).await;
    }
    let mut column = Column::default();
    for (kind, concurrency) in [
        (Kind::Plain, 1),
        (Kind::Plain, 8),
        (Kind::Tool, 1),
        (Kind::Tool, 8),
    ] {
        column
            .rates
            .push(throughput(&rt, kind, concurrency, seconds).await);
    }
    (column.plain_added, column.plain_direct) =
        added_per_step(&rt, &llm, &requests, Kind::Plain, samples).await;
    (column.tool_added, column.tool_direct) =
        added_per_step(&rt, &llm, &requests, Kind::Tool, samples).await;
    (
        column.peak_kib,
        column.rss_before,
        column.rss_after,
        column.peak_reset,
    ) = open_sessions(&rt).await;
    column
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

fn main() {
    let seconds = env_number("BENCH_SECONDS", 3);
    let samples = usize::try_from(env_number("BENCH_SAMPLES", 200)).unwrap_or(200);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    runtime.block_on(async move {
        let mut columns = Vec::new();
        for backend in ["sqlite", "postgres"] {
            eprintln!("measuring {backend} ...");
            columns.push((backend, measure(backend, seconds, samples).await));
        }
        report(&columns, seconds, samples);
    });
}

fn report(columns: &[(&str, Column)], seconds: u64, samples: usize) {
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    println!();
    println!(
        "agent-runtime turns — mock model (no token delay), the stack + client in one process, \
         {cores} cores; {seconds} s per throughput run, {samples} latency samples"
    );
    let header: Vec<String> = columns.iter().map(|(b, _)| format!("{b:>16}")).collect();
    println!("{:<44}{}", "", header.join(""));
    let row = |label: &str, cell: &dyn Fn(&Column) -> String| {
        let cells: Vec<String> = columns
            .iter()
            .map(|(_, c)| {
                let text = if c.error.is_some() {
                    "n/a".to_owned()
                } else {
                    cell(c)
                };
                format!("{text:>16}")
            })
            .collect();
        println!("{label:<44}{}", cells.join(""));
    };
    let labels = [
        "plain turns/s, concurrency 1",
        "plain turns/s, concurrency 8",
        "tool turns/s (2 steps), concurrency 1",
        "tool turns/s (2 steps), concurrency 8",
    ];
    for (i, label) in labels.iter().enumerate() {
        row(label, &|c| format!("{:.0}", c.rates[i]));
    }
    let pct = |values: &[Duration], p: f64| {
        let mut values = values.to_vec();
        ms(percentile(&mut values, p))
    };
    type Latencies = fn(&Column) -> &[Duration];
    let latencies: [(&str, Latencies, f64); 6] = [
        (
            "proxy alone per step, p50 (plain)",
            |c| &c.plain_direct,
            50.0,
        ),
        ("added per step, p50 (plain turn)", |c| &c.plain_added, 50.0),
        ("added per step, p99 (plain turn)", |c| &c.plain_added, 99.0),
        ("proxy alone per step, p50 (tool)", |c| &c.tool_direct, 50.0),
        ("added per step, p50 (tool turn)", |c| &c.tool_added, 50.0),
        ("added per step, p99 (tool turn)", |c| &c.tool_added, 99.0),
    ];
    for (label, values, p) in latencies {
        row(label, &|c| pct(values(c), p));
    }
    row(
        &format!("VmHWM with {OPEN_SESSIONS} sessions awaiting a tool"),
        &|c| {
            if c.peak_reset {
                mib(c.peak_kib)
            } else {
                format!("{} (no reset)", mib(c.peak_kib))
            }
        },
    );
    row("VmRSS before opening them", &|c| mib(c.rss_before));
    row("VmRSS after opening them", &|c| mib(c.rss_after));
    for (backend, column) in columns {
        if let Some(error) = &column.error {
            println!("{backend}: not measured: {error}");
        }
    }
}
