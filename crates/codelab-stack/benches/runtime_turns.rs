//! Full turns through the agent runtime, on SQLite and PostgreSQL side by side in one run:
//! turns/s, p50/p99 per turn and the server's CPU per turn, with 1 and 50 sessions; the
//! runtime's added latency per step; and the peak memory of 1,000 open sessions
//! (docs/benchmarks.md).
//!
//! The stack builder serves only the real LLM proxy (its mock model, no token delay) and the
//! runtime in-process on 127.0.0.1, the runtime on a temp SQLite file
//! and on a temp PostgreSQL database (on `CODELAB_TEST_DATABASE_URL`, default
//! `postgres://postgres@127.0.0.1:5432/postgres`, dropped afterwards). Measured:
//! - a plain turn (`user_message` → `assistant_message`, one step) and a tool turn
//!   (`user_message` with `::tool` → `tool_call` → `tool_result` → answer, two steps), with 1
//!   and 50 sessions sending turns back to back (each worker on its own session, a new one every
//!   10 turns): turns/s, p50/p99 of a whole turn, and the server's CPU per turn;
//! - added latency per step: a turn's time through the runtime minus the proxy's own time for
//!   the same LLM requests, sent directly with the runtime's LLM client (p50/p99 of the
//!   per-sample differences);
//! - VmHWM of the process (peak reset first) while 1,000 sessions each await a tool result.
//!
//! The services run on a multi-thread tokio runtime of their own; the load generator runs on a
//! current-thread runtime on the main thread. The server's CPU is the process's user + system
//! time over a run minus the load generator thread's own (`/proc/thread-self/stat`), divided by
//! the turns; the client's share is printed beside it. It includes the session created every
//! 10 turns. On PostgreSQL the database server's processes are measured separately.
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
use codelab_testkit::bench::{
    CpuShares, Latencies, SplitCpu, Table, cpu_per_unit, env_f64, env_u64, machine_summary, mib,
    ms, per_second, reset_peak_rss, server_and_client_runtimes, status_kib,
};
use serde_json::{Value, json};

const PROXY_KEY: &str = "bench-proxy-key-0123456789abcdef";
const RUNTIME_KEY: &str = "bench-runtime-key-0123456789abcdef";
const TURNS_PER_SESSION: usize = 10;
const OPEN_SESSIONS: usize = 1000;
/// Concurrent sessions of the throughput runs.
const SESSIONS: [usize; 2] = [1, 50];
const PLAIN: &str = "Say hello";
const TOOL: &str = "::tool read_file {\"path\":\"a.py\"}";
const TOOL_RESULT: &str = "print('hello')";

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

/// One cell of a [`Load`] in the report.
type LoadCell = dyn Fn(&mut Load) -> String;

/// What a throughput run did.
#[derive(Default)]
struct Load {
    turns: usize,
    elapsed: Duration,
    latencies: Latencies,
    /// The services', the load generator's and the PostgreSQL server's CPU.
    cpu: CpuShares,
}

/// Turns of `kind` from `concurrency` workers for `seconds`, on this (current-thread) runtime.
async fn throughput(rt: &Arc<Runtime>, kind: Kind, concurrency: usize, seconds: f64) -> Load {
    let cpu = SplitCpu::start();
    let started = Instant::now();
    let deadline = started + Duration::from_secs_f64(seconds);
    let workers: Vec<_> = (0..concurrency)
        .map(|_| {
            let rt = Arc::clone(rt);
            tokio::spawn(async move {
                let mut turns = 0usize;
                let mut latencies = Latencies::default();
                let mut session = String::new();
                while Instant::now() < deadline {
                    if turns.is_multiple_of(TURNS_PER_SESSION) {
                        session = rt.new_session().await;
                    }
                    let turn = Instant::now();
                    match kind {
                        Kind::Plain => rt.plain_turn(&session).await,
                        Kind::Tool => rt.tool_turn(&session).await,
                    }
                    latencies.push(turn.elapsed());
                    turns += 1;
                }
                (turns, latencies)
            })
        })
        .collect();
    let mut load = Load::default();
    for worker in workers {
        let (turns, latencies) = worker.await.expect("a worker");
        load.turns += turns;
        load.latencies.extend(latencies);
    }
    load.elapsed = started.elapsed();
    load.cpu = cpu.stop();
    load
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
    let pid = std::process::id();
    let reset = reset_peak_rss(pid);
    let before = status_kib(pid, "VmRSS:").unwrap_or(0);
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
    (
        status_kib(pid, "VmHWM:").unwrap_or(0),
        before,
        status_kib(pid, "VmRSS:").unwrap_or(0),
        reset,
    )
}

// ---------------------------------------------------------------------------------------------
// Report
// ---------------------------------------------------------------------------------------------

#[derive(Default)]
struct Column {
    error: Option<String>,
    loads: Vec<Load>,
    plain_added: Vec<Duration>,
    plain_direct: Vec<Duration>,
    tool_added: Vec<Duration>,
    tool_direct: Vec<Duration>,
    peak_kib: u64,
    rss_before: u64,
    rss_after: u64,
    peak_reset: bool,
}

async fn measure(rt: Runtime, seconds: f64, samples: usize) -> (Column, Runtime) {
    let rt = Arc::new(rt);
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
    for kind in [Kind::Plain, Kind::Tool] {
        for concurrency in SESSIONS {
            column
                .loads
                .push(throughput(&rt, kind, concurrency, seconds).await);
        }
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
    drop(llm);
    let rt = Arc::into_inner(rt).expect("every worker has ended");
    (column, rt)
}

fn main() {
    let seconds = env_f64("BENCH_SECONDS", 3.0);
    let samples = usize::try_from(env_u64("BENCH_SAMPLES", 200)).unwrap_or(200);
    let (server, client) = server_and_client_runtimes();
    let mut columns = Vec::new();
    for backend in ["sqlite", "postgres"] {
        eprintln!("measuring {backend} ...");
        // The stack's tasks live on the server runtime's workers; the client only sends.
        let column = match server.block_on(start_runtime(backend)) {
            Ok(rt) => {
                let (mut column, rt) = client.block_on(measure(rt, seconds, samples));
                if backend == "sqlite" {
                    // Other programs' PostgreSQL work is no part of a SQLite turn.
                    for load in &mut column.loads {
                        load.cpu.database = Duration::ZERO;
                    }
                }
                let _inside = server.enter();
                drop(rt);
                column
            }
            Err(error) => Column {
                error: Some(error),
                ..Column::default()
            },
        };
        columns.push((backend, column));
    }
    report(&mut columns, seconds, samples);
}

fn report(columns: &mut [(&str, Column)], seconds: f64, samples: usize) {
    println!();
    println!(
        "agent-runtime turns on {} — mock model (no token delay), services and load generator \
         in one process; {seconds} s per throughput run, {samples} latency samples",
        machine_summary()
    );
    let mut table = Table::new(
        std::iter::once(String::new()).chain(columns.iter().map(|(b, _)| (*b).to_owned())),
    );
    let cell = |c: &Column, text: &dyn Fn(&Column) -> String| {
        if c.error.is_some() {
            "n/a".to_owned()
        } else {
            text(c)
        }
    };
    let mut i = 0;
    for kind in ["plain turn", "tool turn (2 steps)"] {
        for sessions in SESSIONS {
            let label = format!(
                "{kind}, {sessions} session{}",
                if sessions == 1 { "" } else { "s" }
            );
            let at = i;
            let rows: [(&str, &LoadCell); 6] = [
                ("turns/s", &|l| per_second(l.turns, l.elapsed)),
                ("  p50 / p99 per turn", &|l| {
                    format!(
                        "{} / {}",
                        ms(l.latencies.percentile(50.0)),
                        ms(l.latencies.percentile(99.0))
                    )
                }),
                ("  server CPU per turn", &|l| {
                    cpu_per_unit(l.cpu.server, l.turns)
                }),
                ("  load generator CPU per turn", &|l| {
                    cpu_per_unit(l.cpu.client, l.turns)
                }),
                ("  PostgreSQL server CPU per turn", &|l| {
                    if l.cpu.database.is_zero() {
                        "—".to_owned()
                    } else {
                        cpu_per_unit(Some(l.cpu.database), l.turns)
                    }
                }),
                ("  turns", &|l| l.turns.to_string()),
            ];
            for (n, (name, value)) in rows.iter().enumerate() {
                let name = if n == 0 {
                    format!("{label}: {name}")
                } else {
                    (*name).to_owned()
                };
                let cells: Vec<String> = columns
                    .iter_mut()
                    .map(|(_, c)| {
                        if c.error.is_some() {
                            "n/a".to_owned()
                        } else {
                            c.loads.get_mut(at).map_or_else(|| "n/a".to_owned(), value)
                        }
                    })
                    .collect();
                table.row(&name, cells);
            }
            i += 1;
        }
    }
    let pct = |values: &[Duration], p: f64| {
        let mut values = values.to_vec();
        ms(codelab_testkit::bench::percentile(&mut values, p))
    };
    type Series = fn(&Column) -> &[Duration];
    let latencies: [(&str, Series, f64); 6] = [
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
        table.row(
            label,
            columns.iter().map(|(_, c)| cell(c, &|c| pct(values(c), p))),
        );
    }
    table.row(
        &format!("VmHWM with {OPEN_SESSIONS} sessions awaiting a tool"),
        columns.iter().map(|(_, c)| {
            cell(c, &|c| {
                if c.peak_reset {
                    mib(Some(c.peak_kib))
                } else {
                    format!("{} (no reset)", mib(Some(c.peak_kib)))
                }
            })
        }),
    );
    table.row(
        "VmRSS before opening them",
        columns
            .iter()
            .map(|(_, c)| cell(c, &|c| mib(Some(c.rss_before)))),
    );
    table.row(
        "VmRSS after opening them",
        columns
            .iter()
            .map(|(_, c)| cell(c, &|c| mib(Some(c.rss_after)))),
    );
    table.print();
    for (backend, column) in columns.iter() {
        if let Some(error) = &column.error {
            println!("{backend}: not measured: {error}");
        }
    }
}
