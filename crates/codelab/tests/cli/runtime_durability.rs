//! The agent runtime's durability with the real binary: `codelab serve agent-runtime` is
//! killed with SIGKILL between a `tool_call` and its `tool_result`, and in the middle of a
//! step, then started again on the same database (SQLite file, PostgreSQL database), and the
//! turn completes with every message stored exactly once; the same for an approved plan, killed
//! while a subtask waits for the IDE and while a subtask's step streams (issue 18, "restart
//! mid-plan"). Two runtime processes share one
//! PostgreSQL database, and a cancel stops a streaming turn and the proxy's upstream stream.
//! The LLM proxy runs as its own process (`codelab serve llm-proxy`, the mock model).

use std::collections::VecDeque;
use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::common::cli::{Running, codelab_with};
use crate::common::processes::free_port;
use codelab_testkit::metrics::{metric_sum, scrape};
use codelab_testkit::runtime_history::messages;
use serde_json::{Value, json};

const PROXY_KEY: &str = "durability-proxy-key-0123456789abcdef";
const RUNTIME_KEY: &str = "durability-runtime-key-0123456789abcdef";
/// A bound for things that happen promptly.
const PROMPTLY: Duration = Duration::from_secs(20);

// ---------------------------------------------------------------------------------------------
// Processes
// ---------------------------------------------------------------------------------------------

/// `codelab serve <service>` with `env`; its logs only when asked for (they would interleave
/// with the test output).
fn spawn(args: &[&str], env: &[(&str, String)]) -> Running {
    let mut command = codelab_with(args, &[]);
    command
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::null());
    if std::env::var_os("CODELAB_TEST_LOGS").is_none() {
        command.stderr(Stdio::null());
    }
    Running::spawn(&mut command)
}

async fn wait_healthy(base: &str) {
    crate::common::cli::wait_healthy(&format!("{base}/health")).await;
}

/// `codelab serve llm-proxy` on a free port (the mock model serves `mock-llm`).
async fn start_proxy() -> (Running, String) {
    let port = free_port();
    let process = spawn(
        &["serve", "llm-proxy"],
        &[
            ("LLM_PROXY__PORT", port.to_string()),
            ("LLM_PROXY__HOST", "127.0.0.1".into()),
            ("LLM_PROXY__INTERNAL_API_KEY", PROXY_KEY.into()),
        ],
    );
    let base = format!("http://127.0.0.1:{port}");
    wait_healthy(&base).await;
    (process, base)
}

/// `codelab serve agent-runtime` on `db_url`, in front of the proxy at `proxy`.
async fn start_runtime(db_url: &str, proxy: &str, extra: &[(&str, &str)]) -> (Running, Client) {
    let port = free_port();
    let mut env = vec![
        ("AGENT_RUNTIME__PORT", port.to_string()),
        ("AGENT_RUNTIME__HOST", "127.0.0.1".into()),
        ("AGENT_RUNTIME__DB_URL", db_url.to_owned()),
        ("AGENT_RUNTIME__LLM_PROXY_URL", proxy.to_owned()),
        ("AGENT_RUNTIME__INTERNAL_API_KEY", RUNTIME_KEY.into()),
        ("AGENT_RUNTIME__LLM_PROXY_API_KEY", PROXY_KEY.into()),
    ];
    env.extend(extra.iter().map(|(k, v)| (*k, (*v).to_owned())));
    let process = spawn(&["serve", "agent-runtime"], &env);
    let base = format!("http://127.0.0.1:{port}");
    wait_healthy(&base).await;
    (
        process,
        Client {
            base,
            http: reqwest::Client::new(),
        },
    )
}

// ---------------------------------------------------------------------------------------------
// Databases
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy)]
enum Backend {
    Sqlite,
    Postgres,
}

/// A database URL (created by the runtime on first connect) and what removes it afterwards.
enum Database {
    /// The folder of the file, removed on drop.
    Sqlite { _dir: tempfile::TempDir },
    /// Dropped (with FORCE: a killed process may have left connections) when the guard goes.
    Postgres {
        _database: codelab_testkit::TempPostgres,
    },
}

impl Database {
    fn new(backend: Backend) -> (Database, String) {
        match backend {
            Backend::Sqlite => {
                let dir = tempfile::tempdir().unwrap();
                let url = format!(
                    "sqlite:///{}",
                    dir.path().join("agent_runtime.db").display()
                );
                (Database::Sqlite { _dir: dir }, url)
            }
            Backend::Postgres => {
                let database = codelab_testkit::TempPostgres::new("runtime_durability");
                let url = database.url.clone();
                (
                    Database::Postgres {
                        _database: database,
                    },
                    url,
                )
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The runtime's API
// ---------------------------------------------------------------------------------------------

struct Client {
    base: String,
    http: reqwest::Client,
}

impl Client {
    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.http
            .request(method, format!("{}{path}", self.base))
            .header("X-Internal-Auth", RUNTIME_KEY)
    }

    async fn get(&self, path: &str) -> Value {
        let response = self
            .request(reqwest::Method::GET, path)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "GET {path}");
        response.json().await.unwrap()
    }

    async fn new_session(&self) -> String {
        let response = self
            .request(reqwest::Method::POST, "/sessions")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 201);
        response.json::<Value>().await.unwrap()["id"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    /// A turn whose reply is `count` words, one every `pause_ms`, once its first delta arrived.
    async fn streaming_words(&self, session: &str, count: usize, pause_ms: u32) -> Events {
        let words: Vec<String> = (0..count).map(|i| format!("w{i}")).collect();
        let reply = format!("::slow {pause_ms}\n::reply {}", words.join(" "));
        let mut streaming = self
            .open(
                session,
                json!({"type": "user_message", "agent_type": "coder", "content": reply}),
            )
            .await;
        streaming.until("assistant_delta").await;
        streaming
    }

    async fn open(&self, session: &str, frame: Value) -> Events {
        let response = self
            .request(reqwest::Method::POST, "/agent/message/stream")
            .json(&json!({"session_id": session, "message": frame}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        Events {
            response,
            buffer: String::new(),
            ready: VecDeque::new(),
        }
    }

    async fn send(&self, session: &str, frame: Value) -> Vec<Value> {
        self.open(session, frame).await.rest().await
    }

    async fn say(&self, session: &str, text: &str) -> Vec<Value> {
        self.send(
            session,
            json!({"type": "user_message", "content": text, "agent_type": "coder"}),
        )
        .await
    }

    async fn result(&self, session: &str, call_id: &str, result: Value) -> Vec<Value> {
        self.send(
            session,
            json!({"type": "tool_result", "call_id": call_id, "result": result}),
        )
        .await
    }

    async fn history(&self, session: &str) -> Value {
        self.get(&format!("/sessions/{session}/history")).await
    }

    /// Polls the history until `done` holds.
    async fn history_until(&self, session: &str, done: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + PROMPTLY;
        loop {
            let history = self.history(session).await;
            if done(&history) {
                return history;
            }
            assert!(Instant::now() < deadline, "never reached: {history}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// An event stream read as it arrives.
struct Events {
    response: reqwest::Response,
    buffer: String,
    ready: VecDeque<Value>,
}

impl Events {
    async fn next(&mut self) -> Option<Value> {
        loop {
            if let Some(event) = self.ready.pop_front() {
                return Some(event);
            }
            let chunk = self.response.chunk().await.ok()??;
            self.buffer.push_str(std::str::from_utf8(&chunk).unwrap());
            while let Some(end) = self.buffer.find("\n\n") {
                let record: String = self.buffer.drain(..end + 2).collect();
                for line in record.lines() {
                    if let Some(data) = line.strip_prefix("data: ") {
                        self.ready.push_back(serde_json::from_str(data).unwrap());
                    }
                }
            }
        }
    }

    async fn until(&mut self, kind: &str) -> Vec<Value> {
        let mut out = Vec::new();
        while let Some(event) = self.next().await {
            let done = event["type"] == kind;
            out.push(event);
            if done {
                return out;
            }
        }
        panic!("the stream ended without {kind}: {out:?}");
    }

    async fn rest(mut self) -> Vec<Value> {
        let mut out = Vec::new();
        while let Some(event) = self.next().await {
            out.push(event);
        }
        out
    }
}

fn kinds(events: &[Value]) -> Vec<String> {
    events
        .iter()
        .map(|e| e["type"].as_str().unwrap().to_owned())
        .collect()
}

fn of_kind<'a>(events: &'a [Value], kind: &str) -> Vec<&'a Value> {
    events.iter().filter(|e| e["type"] == kind).collect()
}

fn outcome(events: &[Value]) -> String {
    let last = events.last().unwrap();
    assert_eq!(last["type"], "turn_finished", "{:?}", kinds(events));
    last["outcome"].as_str().unwrap().to_owned()
}

fn text(events: &[Value]) -> String {
    of_kind(events, "assistant_message")
        .iter()
        .map(|e| e["content"].as_str().unwrap())
        .collect::<Vec<_>>()
        .join("\n")
}

/// Sends `cancel` through `client` while `streaming` runs: both end `cancelled`.
async fn cancel_while_streaming(client: &Client, session: &str, cancel: Value, streaming: Events) {
    let cancelled = client.send(session, cancel).await;
    assert_eq!(outcome(&cancelled), "cancelled");
    assert_eq!(outcome(&streaming.rest().await), "cancelled");
}

/// The stored events of a session have the seqs 1..=n, each once.
async fn assert_event_log_is_whole(client: &Client, session: &str) {
    let events = client
        .get(&format!("/sessions/{session}/events?after=0&limit=1000"))
        .await;
    let seqs: Vec<u64> = events["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>());
}

/// One test per backend (and variant) of a scenario; the names say which.
macro_rules! durability_tests {
    ($($name:ident => $scenario:expr;)*) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() {
            $scenario.await;
        }
    )*};
}

// ---------------------------------------------------------------------------------------------
// SIGKILL between a tool call and its result
// ---------------------------------------------------------------------------------------------

async fn killed_between_tool_call_and_result(backend: Backend) {
    let (_proxy, proxy_url) = start_proxy().await;
    let (_db, db_url) = Database::new(backend);
    let (mut runtime, client) = start_runtime(&db_url, &proxy_url, &[]).await;
    let s = client.new_session().await;
    let start = client
        .say(
            &s,
            "::tool read_file {\"path\":\"a.py\"}\n\
             ::tool write_file {\"path\":\"b.py\",\"content\":\"x = 1\"}",
        )
        .await;
    assert_eq!(outcome(&start), "awaiting_tools");
    let calls = of_kind(&start, "tool_call");
    let read = calls[0]["call_id"].as_str().unwrap().to_owned();
    let write = calls[1]["call_id"].as_str().unwrap().to_owned();
    assert_eq!(calls[1]["requires_approval"], true);

    // SIGKILL: no shutdown, no drain, no unlock — a crash.
    runtime.kill();
    let (_runtime, client) = start_runtime(&db_url, &proxy_url, &[]).await;

    // The restarted process shows exactly what is awaited.
    let pending = client
        .get(&format!("/sessions/{s}/pending-approvals"))
        .await;
    assert_eq!(pending["count"], 1);
    assert_eq!(pending["pending_approvals"][0]["call_id"], write.as_str());
    let history = client.history(&s).await;
    assert_eq!(history["active_turn"]["status"], "awaiting_tools");
    let open: Vec<&str> = history["active_turn"]["open_calls"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["call_id"].as_str().unwrap())
        .collect();
    assert_eq!(open, [read.as_str(), write.as_str()]);

    // The late answers resume the turn on the new process.
    let first = client.result(&s, &read, json!("print(1)")).await;
    assert_eq!(of_kind(&first, "step_finished")[0]["pending_calls"], 1);
    let approved = client
        .send(
            &s,
            json!({"type": "hitl_decision", "call_id": write, "decision": "approve"}),
        )
        .await;
    assert_eq!(
        of_kind(&approved, "tool_call")[0]["requires_approval"],
        false
    );
    let done = client.result(&s, &write, json!("written")).await;
    assert_eq!(outcome(&done), "completed");
    assert_eq!(
        text(&done),
        "Tool read_file returned: print(1)\nTool write_file returned: written"
    );

    let history = client.history(&s).await;
    let roles: Vec<String> = messages(&history).into_iter().map(|(r, _)| r).collect();
    assert_eq!(roles, ["user", "assistant", "tool", "tool", "assistant"]);
    assert_eq!(history["active_turn"], Value::Null);
    assert_event_log_is_whole(&client, &s).await;
}

durability_tests! {
    sqlite_a_turn_survives_sigkill_between_tool_call_and_result =>
        killed_between_tool_call_and_result(Backend::Sqlite);
    postgres_a_turn_survives_sigkill_between_tool_call_and_result =>
        killed_between_tool_call_and_result(Backend::Postgres);
}

// ---------------------------------------------------------------------------------------------
// SIGKILL during a step
// ---------------------------------------------------------------------------------------------

/// Kills the runtime while a step streams; the restarted process resumes it: on the next
/// frame (`sweep` off), or by itself at start (`sweep` on).
async fn killed_during_a_step(backend: Backend, sweep: bool) {
    let (_proxy, proxy_url) = start_proxy().await;
    let (_db, db_url) = Database::new(backend);
    let recovery = if sweep { "60" } else { "0" };
    let extra = [("AGENT_RUNTIME__RECOVERY_INTERVAL", recovery)];
    let (mut runtime, client) = start_runtime(&db_url, &proxy_url, &extra).await;
    let s = client.new_session().await;
    let mut streaming = client
        .open(
            &s,
            json!({"type": "user_message", "agent_type": "coder",
                "content": "::slow 200\n::reply one two three four five six"}),
        )
        .await;
    streaming.until("assistant_delta").await;
    // SIGKILL: no shutdown, no drain, no unlock — a crash.
    runtime.kill();
    drop(streaming);

    let (_runtime, client) = start_runtime(&db_url, &proxy_url, &extra).await;
    let answered = |h: &Value| {
        messages(h).contains(&(
            "assistant".to_owned(),
            "one two three four five six".to_owned(),
        ))
    };
    if sweep {
        // Nobody sends anything: the restarted process finds the turn and finishes it.
        let history = client
            .history_until(&s, |h| h["active_turn"].is_null() && answered(h))
            .await;
        assert_eq!(messages(&history).len(), 2);
    } else {
        let history = client.history(&s).await;
        assert_eq!(history["active_turn"]["status"], "running");
        assert_eq!(history["active_turn"]["step"], 1);
        assert_eq!(
            messages(&history).len(),
            1,
            "nothing of the cut step is stored"
        );
    }
    // The next frame: the interrupted turn (if still open) completes first, then the new one.
    let next = client.say(&s, "::reply next").await;
    assert_eq!(outcome(&next), "completed");
    let history = client.history(&s).await;
    assert_eq!(
        messages(&history),
        [
            (
                "user".to_owned(),
                "::slow 200\n::reply one two three four five six".to_owned()
            ),
            (
                "assistant".to_owned(),
                "one two three four five six".to_owned()
            ),
            ("user".to_owned(), "::reply next".to_owned()),
            ("assistant".to_owned(), "next".to_owned()),
        ]
    );
    let events = client
        .get(&format!("/sessions/{s}/events?after=0&limit=1000"))
        .await;
    let finished: Vec<&Value> = events["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["type"] == "turn_finished")
        .collect();
    assert_eq!(finished.len(), 2, "both turns completed: {finished:?}");
    assert_event_log_is_whole(&client, &s).await;
}

durability_tests! {
    sqlite_a_step_cut_by_sigkill_is_resumed_by_the_next_frame =>
        killed_during_a_step(Backend::Sqlite, false);
    sqlite_a_step_cut_by_sigkill_is_resumed_at_start =>
        killed_during_a_step(Backend::Sqlite, true);
    postgres_a_step_cut_by_sigkill_is_resumed_by_the_next_frame =>
        killed_during_a_step(Backend::Postgres, false);
    postgres_a_step_cut_by_sigkill_is_resumed_at_start =>
        killed_during_a_step(Backend::Postgres, true);
}

// ---------------------------------------------------------------------------------------------
// SIGKILL in the middle of a plan (issue 18, "restart mid-plan")
// ---------------------------------------------------------------------------------------------

/// The architect's `create_plan` line for subtasks run in order (title, agent, description;
/// each depends on the one before): a subtask's description carries its mock directives
/// (docs/agent-runtime.md, "Planning").
fn create_plan_line(title: &str, subtasks: &[(&str, &str, &str)]) -> String {
    let subtasks: Vec<Value> = subtasks
        .iter()
        .enumerate()
        .map(|(index, (title, agent, description))| {
            let dependencies: Vec<usize> = index.checked_sub(1).into_iter().collect();
            json!({"title": title, "description": description, "agent": agent,
                "estimated_time_minutes": 1, "dependencies": dependencies})
        })
        .collect();
    let arguments = json!({"title": title, "description": "the goal", "subtasks": subtasks});
    format!("::tool create_plan {arguments}")
}

/// The architect proposes `script`'s plan in `session`: the plan's id.
async fn propose_plan(client: &Client, session: &str, script: &str) -> String {
    let events = client
        .send(
            session,
            json!({"type": "user_message", "agent_type": "architect", "content": script}),
        )
        .await;
    assert_eq!(outcome(&events), "awaiting_tools", "{:?}", kinds(&events));
    of_kind(&events, "plan_approval_required")[0]["plan_id"]
        .as_str()
        .unwrap()
        .to_owned()
}

fn approve(plan_id: &str) -> Value {
    json!({"type": "plan_decision", "plan_id": plan_id, "decision": "approve"})
}

fn subtask_statuses(plan: &Value) -> Vec<&str> {
    plan["subtasks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["status"].as_str().unwrap())
        .collect()
}

/// Each message with text is stored once (a step that ran again after the crash would repeat
/// its messages; messages that only call tools have no text).
fn assert_no_message_twice(history: &Value) {
    let mut seen: Vec<(String, String)> = Vec::new();
    for message in messages(history) {
        if message.1.is_empty() {
            continue;
        }
        assert!(!seen.contains(&message), "stored twice: {message:?}");
        seen.push(message);
    }
}

/// The `execution_completed` event of `plan_id` in the session's stored events, once it is
/// there (polled: a recovered run has no client to tell).
async fn execution_completed(client: &Client, session: &str, plan_id: &str) -> Vec<Value> {
    let deadline = Instant::now() + PROMPTLY;
    loop {
        let events = client
            .get(&format!("/sessions/{session}/events?after=0&limit=1000"))
            .await;
        let done: Vec<Value> = events["events"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["type"] == "execution_completed" && e["plan_id"] == plan_id)
            .cloned()
            .collect();
        if !done.is_empty() {
            return done;
        }
        assert!(Instant::now() < deadline, "the plan never ended: {events}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Kills the runtime once subtask 1's IDE tool call arrived; the restarted process takes the
/// result and runs the plan to its end.
async fn plan_killed_while_a_subtask_waits_for_a_tool(backend: Backend) {
    let (_proxy, proxy_url) = start_proxy().await;
    let (_db, db_url) = Database::new(backend);
    let (mut runtime, client) = start_runtime(&db_url, &proxy_url, &[]).await;
    let s = client.new_session().await;
    let script = create_plan_line(
        "Read then reply",
        &[
            ("read", "coder", r#"::tool read_file {"path": "a.txt"}"#),
            ("reply", "ask", "::reply second done"),
        ],
    );
    let plan_id = propose_plan(&client, &s, &script).await;
    let mut approved = client.open(&s, approve(&plan_id)).await;
    let seen = approved.until("tool_call").await;
    let call = seen.last().unwrap();
    assert_eq!(call["tool_name"], "read_file");
    let call_id = call["call_id"].as_str().unwrap().to_owned();
    // SIGKILL: no shutdown, no drain, no unlock — a crash.
    runtime.kill();
    drop(approved);

    let (_runtime, client) = start_runtime(&db_url, &proxy_url, &[]).await;
    let history = client.history(&s).await;
    assert_eq!(history["active_turn"]["status"], "awaiting_tools");
    assert_eq!(
        history["active_turn"]["open_calls"][0]["call_id"],
        call_id.as_str()
    );
    let plan = client.get(&format!("/plans/{plan_id}")).await;
    assert_eq!(plan["status"], "in_progress");
    assert_eq!(subtask_statuses(&plan), ["in_progress", "pending"]);

    let done = client.result(&s, &call_id, json!("hello from a.txt")).await;
    let completed = of_kind(&done, "execution_completed");
    assert_eq!(completed.len(), 1, "{:?}", kinds(&done));
    assert_eq!(completed[0]["status"], "completed");
    assert_eq!(outcome(&done), "completed");

    let plan = client.get(&format!("/plans/{plan_id}")).await;
    assert_eq!(plan["status"], "completed");
    assert_eq!(subtask_statuses(&plan), ["completed", "completed"]);
    assert_eq!(plan["subtasks"][1]["result"], "second done");
    let history = client.history(&s).await;
    assert_eq!(history["active_turn"], Value::Null);
    let stored = messages(&history);
    let tool_results = stored
        .iter()
        .filter(|(role, content)| role == "tool" && content.contains("hello from a.txt"))
        .count();
    assert_eq!(tool_results, 1, "{stored:?}");
    assert_eq!(
        stored.last().unwrap(),
        &(
            "assistant".to_owned(),
            completed[0]["summary"].as_str().unwrap().to_owned()
        )
    );
    // The proposal, its approval, subtask 1's call, result and answer, subtask 2's answer, the
    // summary: each once.
    let roles: Vec<&str> = stored.iter().map(|(role, _)| role.as_str()).collect();
    assert_eq!(
        roles,
        [
            "user",
            "assistant",
            "tool",
            "assistant",
            "tool",
            "assistant",
            "assistant",
            "assistant"
        ]
    );
    assert_no_message_twice(&history);
    assert_event_log_is_whole(&client, &s).await;
}

/// Kills the runtime while subtask 1's step streams; the restarted process finishes the plan:
/// by itself at start (`sweep` on), or on the session's next frame (`sweep` off).
async fn plan_killed_during_a_subtask_step(backend: Backend, sweep: bool) {
    let (_proxy, proxy_url) = start_proxy().await;
    let (_db, db_url) = Database::new(backend);
    let recovery = if sweep { "60" } else { "0" };
    let extra = [("AGENT_RUNTIME__RECOVERY_INTERVAL", recovery)];
    let (mut runtime, client) = start_runtime(&db_url, &proxy_url, &extra).await;
    let s = client.new_session().await;
    let script = create_plan_line(
        "Slow then quick",
        &[
            (
                "slow",
                "coder",
                "::slow 200\n::reply one two three four five six",
            ),
            ("quick", "ask", "::reply second done"),
        ],
    );
    let plan_id = propose_plan(&client, &s, &script).await;
    let mut approved = client.open(&s, approve(&plan_id)).await;
    approved.until("assistant_delta").await;
    // SIGKILL: no shutdown, no drain, no unlock — a crash.
    runtime.kill();
    drop(approved);

    let (_runtime, client) = start_runtime(&db_url, &proxy_url, &extra).await;
    if !sweep {
        let history = client.history(&s).await;
        assert_eq!(history["active_turn"]["status"], "running");
        let plan = client.get(&format!("/plans/{plan_id}")).await;
        assert_eq!(subtask_statuses(&plan), ["in_progress", "pending"]);
        // The next frame: the interrupted turn (and with it the plan) completes first.
        let next = client.say(&s, "::reply next").await;
        assert_eq!(outcome(&next), "completed");
    }
    let completed = execution_completed(&client, &s, &plan_id).await;
    assert_eq!(completed.len(), 1, "{completed:?}");
    assert_eq!(completed[0]["status"], "completed");
    let history = client
        .history_until(&s, |h| h["active_turn"].is_null())
        .await;
    let plan = client.get(&format!("/plans/{plan_id}")).await;
    assert_eq!(plan["status"], "completed");
    assert_eq!(subtask_statuses(&plan), ["completed", "completed"]);
    assert_eq!(plan["subtasks"][0]["result"], "one two three four five six");
    assert_eq!(plan["subtasks"][1]["result"], "second done");
    let stored = messages(&history);
    let answers = stored
        .iter()
        .filter(|m| {
            **m == (
                "assistant".to_owned(),
                "one two three four five six".to_owned(),
            )
        })
        .count();
    assert_eq!(answers, 1, "the cut step is stored once: {stored:?}");
    assert!(
        stored.contains(&(
            "assistant".to_owned(),
            completed[0]["summary"].as_str().unwrap().to_owned()
        )),
        "{stored:?}"
    );
    // The proposal, its approval, the two subtasks' answers, the summary (then the next
    // frame's exchange): each once.
    let roles: Vec<&str> = stored.iter().map(|(role, _)| role.as_str()).collect();
    let plan_roles = [
        "user",
        "assistant",
        "tool",
        "assistant",
        "assistant",
        "assistant",
    ];
    if sweep {
        assert_eq!(roles, plan_roles);
    } else {
        assert_eq!(roles[..plan_roles.len()], plan_roles);
        assert_eq!(roles[plan_roles.len()..], ["user", "assistant"]);
    }
    assert_no_message_twice(&history);
    assert_event_log_is_whole(&client, &s).await;
}

durability_tests! {
    sqlite_a_plan_survives_sigkill_while_a_subtask_waits_for_a_tool =>
        plan_killed_while_a_subtask_waits_for_a_tool(Backend::Sqlite);
    postgres_a_plan_survives_sigkill_while_a_subtask_waits_for_a_tool =>
        plan_killed_while_a_subtask_waits_for_a_tool(Backend::Postgres);
    sqlite_a_plan_cut_by_sigkill_mid_step_is_finished_at_start =>
        plan_killed_during_a_subtask_step(Backend::Sqlite, true);
    sqlite_a_plan_cut_by_sigkill_mid_step_is_finished_by_the_next_frame =>
        plan_killed_during_a_subtask_step(Backend::Sqlite, false);
    postgres_a_plan_cut_by_sigkill_mid_step_is_finished_at_start =>
        plan_killed_during_a_subtask_step(Backend::Postgres, true);
}

// ---------------------------------------------------------------------------------------------
// Two runtime processes, one PostgreSQL database
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_runtime_processes_on_one_postgres_database() {
    let (_proxy, proxy_url) = start_proxy().await;
    let (_db, db_url) = Database::new(Backend::Postgres);
    let (_a, a) = start_runtime(&db_url, &proxy_url, &[]).await;
    let (_b, b) = start_runtime(&db_url, &proxy_url, &[]).await;

    // The tool call comes from A, its result goes to B, and the turn completes on B.
    let s = a.new_session().await;
    let start = a.say(&s, "::tool read_file {\"path\":\"a.py\"}").await;
    let call_id = of_kind(&start, "tool_call")[0]["call_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let done = b.result(&s, &call_id, json!("print(1)")).await;
    assert_eq!(text(&done), "Tool read_file returned: print(1)");
    assert_eq!(outcome(&done), "completed");
    assert_eq!(messages(&a.history(&s).await).len(), 4);

    // A streams a turn; a cancel sent to B stops it through the database.
    let streaming = a.streaming_words(&s, 30, 100).await;
    let asked = Instant::now();
    cancel_while_streaming(&b, &s, json!({"type": "cancel_turn"}), streaming).await;
    assert!(
        asked.elapsed() < Duration::from_secs(3),
        "{:?}",
        asked.elapsed()
    );
    let next = b.say(&s, "::reply still usable").await;
    assert_eq!(text(&next), "still usable");
    assert_event_log_is_whole(&a, &s).await;
}

// ---------------------------------------------------------------------------------------------
// Cancellation reaches the proxy
// ---------------------------------------------------------------------------------------------

/// The proxy's `codelab_llm_proxy_inflight_streams` gauge.
async fn inflight_streams(proxy: &str) -> f64 {
    let text = scrape(&reqwest::Client::new(), proxy).await;
    metric_sum(&text, "codelab_llm_proxy_inflight_streams")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_mid_stream_cancels_the_proxys_stream() {
    let (_proxy, proxy_url) = start_proxy().await;
    let (_db, db_url) = Database::new(Backend::Sqlite);
    let (_runtime, client) = start_runtime(&db_url, &proxy_url, &[]).await;
    let s = client.new_session().await;
    let started = Instant::now();
    let streaming = client.streaming_words(&s, 40, 200).await;
    assert_eq!(inflight_streams(&proxy_url).await, 1.0);

    let cancel = json!({"type": "cancel_turn", "reason": "stop"});
    cancel_while_streaming(&client, &s, cancel, streaming).await;
    // The whole answer takes 8 s.
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
    let deadline = Instant::now() + PROMPTLY;
    while inflight_streams(&proxy_url).await != 0.0 {
        assert!(Instant::now() < deadline, "the proxy still streams");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let history = client.history(&s).await;
    assert_eq!(messages(&history).len(), 1);
    assert_eq!(history["active_turn"], Value::Null);

    let next = client.say(&s, "::reply after").await;
    assert_eq!(text(&next), "after");
    assert_eq!(outcome(&next), "completed");
}
