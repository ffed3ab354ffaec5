//! The whole chain through `codelab up` as the Flutter IDE drives it, SQLite and PostgreSQL side
//! by side in one run (docs/benchmarks.md, "Whole chain through `codelab up`").
//!
//! `codelab up` runs as its own process (this bench's binary starts it), on a temp data dir and,
//! for PostgreSQL, on temporary databases of the server at `CODELAB_TEST_DATABASE_URL` (default
//! `postgres://postgres@127.0.0.1:5432/postgres`, dropped afterwards), with `--model mock-llm`
//! (no token delay). The load generator is this process: Flutter-profile clients
//! (`FlutterReplicaClient`) that log in as the admin through `/oauth/token` on the public
//! listener, create sessions over REST and open their WebSockets without credentials, as the IDE
//! does. Measured per backend:
//! - ready: spawn to the first 200 of the public listener's `/nginx-health`, over
//!   `BENCH_STARTS` first starts (empty data dir, fresh databases) and as many restarts on the
//!   same data;
//! - a plain turn (`user_message` → the final `assistant_message`, one LLM step) and a tool turn
//!   (`::tool read_file` → `tool_call` → the client's `tool_result` → the answer, two steps), with
//!   1 and 50 sessions sending turns back to back for `BENCH_SECONDS` each, and plain turns with
//!   `BENCH_MANY_SESSIONS` (1,000) sessions: turns/s, p50/p99/max per turn, turns per session,
//!   the `codelab up` process's user + system CPU per turn (`/proc/<pid>/stat`), this process's
//!   (the load generator's) and, on PostgreSQL, the database server's;
//! - opening a session (REST create, socket, first turn with the orchestrator's routing call):
//!   latency and server CPU, over the openings before the many-session run;
//! - `VmRSS` of `codelab up` idle one second after ready and one second after the load.
//!
//! Each session's socket is opened, and its first (routed) turn sent, before a run's clock starts.
//! During the run a client replaces its session every `BENCH_TURNS_PER_SESSION` (10) turns, as
//! `runtime_turns` does, so the history a step loads stays short: that opening is not a turn and
//! not in the per-turn latency, but its time is in turns/s and its CPU in the CPU per turn.
//!
//! The limits that would otherwise be measured are raised through their settings, unless the
//! environment sets them: `GATEWAY__WS_MAX_MESSAGES_PER_SECOND` (20 per socket by default,
//! below one socket's back-to-back turns), `GATEWAY__WS_MAX_SOCKETS_PER_USER` (256 by default;
//! every session here is the admin's) and `LLM_PROXY__MAX_CONCURRENT_REQUESTS` (100 by default,
//! below 1,000 sessions' steps in flight). Every other setting is `codelab up`'s default, and
//! the environment's `<PREFIX>__*` variables reach it, so a setting can be tried with this bench.
//!
//! Run: `cargo bench -p codelab --bench chain`. Settings (environment): `BENCH_SECONDS` (3) per
//! run, `BENCH_STARTS` (5), `BENCH_MANY_SESSIONS` (1000), `BENCH_TURNS_PER_SESSION` (10),
//! `BENCH_BACKENDS` (`sqlite,postgres`), `BENCH_CODELAB_BIN` (another `codelab` binary to
//! measure, e.g. an earlier commit's release build, for a before/after on the same machine).
#![allow(
    clippy::disallowed_methods,
    reason = "a benchmark owns its clock and its tasks"
)]

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use codelab_testkit::TempPostgres;
use codelab_testkit::bench::{
    CpuMeter, Latencies, Table, cpu_per_unit, env_f64, env_u64, machine_summary, mib, ms,
    per_second, processes_cpu_named, status_kib,
};
use codelab_testkit::ide_clients::steps::ran;
use codelab_testkit::ide_clients::{
    Bubble, FlutterReplicaClient, FlutterSocket, Role, ToolCallRequest, ToolDecision,
};
use tokio::sync::Semaphore;

/// The `codelab` binary to run: `BENCH_CODELAB_BIN`, else the one built with this bench.
fn codelab_binary() -> PathBuf {
    std::env::var_os("BENCH_CODELAB_BIN").map_or_else(
        || PathBuf::from(env!("CARGO_BIN_EXE_codelab")),
        PathBuf::from,
    )
}
use tokio::task::JoinSet;

const ADMIN: &str = "admin";
const ADMIN_PASSWORD: &str = "chain-bench-admin-password";
/// A plain turn: the mock answers `Mock LLM response (static)` in one step.
const PLAIN: &str = "Say hello";
/// A tool turn: a `read_file` call, then an answer quoting its result.
const TOOL: &str = r#"::tool read_file {"path":"a.py"}"#;
/// What the client's `read_file` returns.
const TOOL_OUTPUT: &str = "print('hello')\n";
/// Sessions of the 1- and 50-session runs.
const SESSIONS: [usize; 2] = [1, 50];
/// Sessions opened at once before a run (the IDEs of a team do not all start in one instant).
const OPEN_AT_ONCE: usize = 32;
/// Bound of every wait of a client (a turn, an opening).
const PATIENCE: Duration = Duration::from_secs(120);
/// Bound of a start.
const READY_PATIENCE: Duration = Duration::from_secs(60);
/// Pause between two readiness probes.
const PROBE_INTERVAL: Duration = Duration::from_millis(2);
/// Bound of a graceful stop (above `codelab up`'s 30 s drain).
const STOP_PATIENCE: Duration = Duration::from_secs(40);
/// Idle time before a memory reading.
const SETTLE: Duration = Duration::from_secs(1);
/// Failed turns after which a client gives up.
const MAX_ERRORS_PER_CLIENT: usize = 20;
/// Limits raised so they are not what is measured (see the module's documentation).
const RAISED_LIMITS: [(&str, &str); 3] = [
    ("GATEWAY__WS_MAX_MESSAGES_PER_SECOND", "1000000"),
    ("GATEWAY__WS_MAX_SOCKETS_PER_USER", "1000000"),
    ("LLM_PROXY__MAX_CONCURRENT_REQUESTS", "1000000"),
];

// ---------------------------------------------------------------------------------------------
// `codelab up`
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Copy, PartialEq, Eq)]
enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    fn name(self) -> &'static str {
        match self {
            Backend::Sqlite => "sqlite",
            Backend::Postgres => "postgres",
        }
    }
}

/// Where one `codelab up` keeps its data: a temp dir (data dir and log) and, on PostgreSQL, the
/// databases it derives from a fresh name (`<name>_auth`, `<name>_agent_runtime`), dropped with
/// this.
struct Place {
    dir: tempfile::TempDir,
    postgres_url: Option<String>,
    _databases: Vec<TempPostgres>,
}

impl Place {
    fn fresh(backend: Backend) -> Result<Place, String> {
        let dir = tempfile::tempdir().map_err(|e| format!("a temp dir: {e}"))?;
        let (postgres_url, databases) = match backend {
            Backend::Sqlite => (None, Vec::new()),
            Backend::Postgres => {
                let named = TempPostgres::new("chain_bench");
                let guards = vec![named.derived("auth"), named.derived("agent_runtime")];
                (Some(named.url.clone()), guards)
            }
        };
        Ok(Place {
            dir,
            postgres_url,
            _databases: databases,
        })
    }
}

/// A running `codelab up`, stopped (SIGTERM, then SIGKILL) when dropped.
struct Up {
    child: Child,
    url: String,
    log: PathBuf,
    /// Spawn to the first 200 of the health route.
    ready: Duration,
}

impl Up {
    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn rss_kib(&self) -> Option<u64> {
        status_kib(self.pid(), "VmRSS:")
    }

    fn hwm_kib(&self) -> Option<u64> {
        status_kib(self.pid(), "VmHWM:")
    }
}

impl Drop for Up {
    fn drop(&mut self) {
        stop(&mut self.child);
    }
}

fn stop(child: &mut Child) {
    if matches!(child.try_wait(), Ok(Some(_))) {
        return;
    }
    // SIGTERM, `codelab up`'s graceful stop (the `kill` utility: no signal crate for a bench).
    let signalled = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .is_ok_and(|status| status.success());
    if signalled {
        let deadline = Instant::now() + STOP_PATIENCE;
        while Instant::now() < deadline {
            if matches!(child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        eprintln!("codelab up did not stop within {STOP_PATIENCE:?} of SIGTERM: killing it");
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// The last lines of a log, for an error message.
fn log_tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

/// A port of 127.0.0.1 free right now (the public listener's address is known before the spawn,
/// so readiness is probed from the first instant).
fn free_port() -> Result<u16, String> {
    std::net::TcpListener::bind(("127.0.0.1", 0))
        .and_then(|listener| listener.local_addr())
        .map(|address| address.port())
        .map_err(|e| format!("no free port: {e}"))
}

enum StartFailure {
    Exited(ExitStatus),
    Other(String),
}

/// Starts `codelab up` on `place` and waits until its public listener answers its health route.
async fn start_up(place: &Place, with_admin_password: bool) -> Result<Up, String> {
    let probe = reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(5))
        .build()
        .map_err(|e| e.to_string())?;
    // Another program may take the port between `free_port` and the bind: try another.
    for _ in 0..3 {
        let port = free_port()?;
        let listen = format!("127.0.0.1:{port}");
        let log = place.dir.path().join(format!("up-{port}.log"));
        let out = File::create(&log).map_err(|e| format!("{}: {e}", log.display()))?;
        let err = out.try_clone().map_err(|e| e.to_string())?;
        let mut command = Command::new(codelab_binary());
        command
            .arg("up")
            .args([
                "--listen",
                &listen,
                "--ephemeral-ports",
                "--model",
                "mock-llm",
            ])
            .arg("--data-dir")
            .arg(place.dir.path().join("data"))
            .current_dir(place.dir.path())
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        if with_admin_password {
            command.args(["--admin-password", ADMIN_PASSWORD]);
        }
        if let Some(url) = &place.postgres_url {
            command.args(["--postgres-url", url]);
        }
        for (name, value) in RAISED_LIMITS {
            if std::env::var_os(name).is_none() {
                command.env(name, value);
            }
        }
        let spawned = Instant::now();
        let child = command
            .spawn()
            .map_err(|e| format!("cannot start codelab up: {e}"))?;
        let mut up = Up {
            child,
            url: format!("http://{listen}"),
            log,
            ready: Duration::ZERO,
        };
        match wait_ready(&mut up.child, &probe, &up.url, spawned).await {
            Ok(ready) => {
                up.ready = ready;
                return Ok(up);
            }
            Err(StartFailure::Exited(_)) if log_tail(&up.log).contains("cannot listen on") => {}
            Err(StartFailure::Exited(status)) => {
                return Err(format!(
                    "codelab up exited ({status}):\n{}",
                    log_tail(&up.log)
                ));
            }
            Err(StartFailure::Other(error)) => {
                return Err(format!("{error}:\n{}", log_tail(&up.log)));
            }
        }
    }
    Err("no free port for codelab up's public listener after 3 tries".to_owned())
}

async fn wait_ready(
    child: &mut Child,
    probe: &reqwest::Client,
    url: &str,
    spawned: Instant,
) -> Result<Duration, StartFailure> {
    let health = format!("{url}/nginx-health");
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(StartFailure::Exited(status));
        }
        if probe
            .get(&health)
            .send()
            .await
            .is_ok_and(|response| response.status() == reqwest::StatusCode::OK)
        {
            return Ok(spawned.elapsed());
        }
        if spawned.elapsed() > READY_PATIENCE {
            return Err(StartFailure::Other(format!(
                "{health} did not answer 200 within {READY_PATIENCE:?}"
            )));
        }
        tokio::time::sleep(PROBE_INTERVAL).await;
    }
}

// ---------------------------------------------------------------------------------------------
// Turns as the Flutter IDE sends them
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Plain,
    Tool,
}

/// The IDE's executor: it runs `read_file` and refuses to guess anything else.
fn execute(call: &ToolCallRequest) -> ToolDecision {
    if call.tool_name == "read_file" {
        ToolDecision::Result(ran(TOOL_OUTPUT))
    } else {
        ToolDecision::Error(format!("unexpected tool {}", call.tool_name))
    }
}

/// One turn of `kind` on `socket`, until the IDE shows its final answer.
async fn turn(socket: &mut FlutterSocket, kind: Kind) -> Result<(), String> {
    let text = match kind {
        Kind::Plain => PLAIN,
        Kind::Tool => TOOL,
    };
    let transcript = socket
        .run_turn(text, execute)
        .await
        .map_err(|e| e.to_string())?;
    let calls = transcript.tool_calls.len();
    let expected_calls = match kind {
        Kind::Plain => 0,
        Kind::Tool => 1,
    };
    match &transcript.last {
        Bubble::Text {
            role: Role::Assistant,
            ..
        } if calls == expected_calls => Ok(()),
        last => Err(format!(
            "the turn ended with {last:?} after {calls} tool calls"
        )),
    }
}

/// A new session as the IDE opens one: `POST /api/v1/sessions`, its socket, and its first turn
/// (the one the orchestrator routes); the socket and how long all that took.
async fn open_session(client: &FlutterReplicaClient) -> Result<(FlutterSocket, Duration), String> {
    let started = Instant::now();
    let session = client
        .create_session()
        .await
        .map_err(|e| format!("POST /api/v1/sessions: {e}"))?;
    let mut socket = client
        .connect(&session.id)
        .await
        .map_err(|e| format!("the session's socket: {e}"))?;
    turn(&mut socket, Kind::Plain)
        .await
        .map_err(|e| format!("the session's first turn: {e}"))?;
    Ok((socket, started.elapsed()))
}

/// What opening a run's sessions cost.
#[derive(Default)]
struct Opening {
    sessions: usize,
    latencies: Latencies,
    server_cpu: Option<Duration>,
}

/// Opens `count` sessions, `OPEN_AT_ONCE` at a time.
async fn open_sessions(
    up: &Up,
    client: &FlutterReplicaClient,
    count: usize,
) -> Result<(Vec<FlutterSocket>, Opening), String> {
    let server = CpuMeter::start(up.pid());
    let gate = Arc::new(Semaphore::new(OPEN_AT_ONCE));
    let mut opening = JoinSet::new();
    for _ in 0..count {
        let client = client.clone();
        let gate = Arc::clone(&gate);
        opening.spawn(async move {
            let _permit = gate.acquire_owned().await.map_err(|e| e.to_string())?;
            open_session(&client).await
        });
    }
    let mut sockets = Vec::with_capacity(count);
    let mut stats = Opening::default();
    let mut failure = None;
    while let Some(opened) = opening.join_next().await {
        match opened.map_err(|e| e.to_string()).and_then(|r| r) {
            Ok((socket, took)) => {
                sockets.push(socket);
                stats.latencies.push(took);
                stats.sessions += 1;
            }
            Err(error) => failure = failure.or(Some(error)),
        }
    }
    stats.server_cpu = server.stop();
    match failure {
        None => Ok((sockets, stats)),
        Some(error) => {
            close_all(sockets).await;
            Err(format!("opening {count} sessions: {error}"))
        }
    }
}

async fn close_all(sockets: Vec<FlutterSocket>) {
    let mut closing = JoinSet::new();
    for socket in sockets {
        closing.spawn(socket.close());
    }
    while closing.join_next().await.is_some() {}
}

/// What one client did during a run.
struct ClientRun {
    socket: Option<FlutterSocket>,
    turns: usize,
    latencies: Latencies,
    openings: usize,
    /// Time spent closing a session and opening the next (not in `latencies`).
    replacing: Duration,
    errors: usize,
    first_error: Option<String>,
}

fn fail(run: &mut ClientRun, error: String) {
    run.errors += 1;
    run.first_error.get_or_insert(error);
}

/// Turns of `kind` back to back on `socket` until `deadline`, a new session every
/// `turns_per_session` turns.
async fn client_run(
    client: FlutterReplicaClient,
    mut socket: FlutterSocket,
    kind: Kind,
    turns_per_session: usize,
    deadline: Instant,
) -> ClientRun {
    let mut run = ClientRun {
        socket: None,
        turns: 0,
        latencies: Latencies::default(),
        openings: 0,
        replacing: Duration::ZERO,
        errors: 0,
        first_error: None,
    };
    let mut on_this_session = 0;
    while Instant::now() < deadline && run.errors < MAX_ERRORS_PER_CLIENT {
        if on_this_session >= turns_per_session {
            let started = Instant::now();
            socket.close().await;
            match open_session(&client).await {
                Ok((fresh, _)) => socket = fresh,
                Err(error) => {
                    fail(&mut run, error);
                    return run;
                }
            }
            run.replacing += started.elapsed();
            run.openings += 1;
            on_this_session = 0;
            continue;
        }
        let started = Instant::now();
        match turn(&mut socket, kind).await {
            Ok(()) => {
                run.latencies.push(started.elapsed());
                run.turns += 1;
            }
            // The next turn starts on a new session: this one's state is unknown.
            Err(error) => {
                fail(&mut run, error);
                on_this_session = turns_per_session;
                continue;
            }
        }
        on_this_session += 1;
    }
    run.socket = Some(socket);
    run
}

/// What a run did.
#[derive(Default)]
struct Load {
    sessions: usize,
    turns: usize,
    errors: usize,
    first_error: Option<String>,
    openings: usize,
    /// The clients' time spent replacing sessions, summed.
    replacing: Duration,
    elapsed: Duration,
    latencies: Latencies,
    turns_per_session: (usize, usize),
    server_cpu: Option<Duration>,
    client_cpu: Option<Duration>,
    /// Every `postgres` process's CPU (`None` on SQLite).
    database_cpu: Option<Duration>,
    opening: Opening,
}

async fn run(
    up: &Up,
    client: &FlutterReplicaClient,
    backend: Backend,
    kind: Kind,
    sessions: usize,
    seconds: f64,
    turns_per_session: usize,
) -> Result<Load, String> {
    let (sockets, opening) = open_sessions(up, client, sessions).await?;
    let server = CpuMeter::start(up.pid());
    let generator = CpuMeter::start(std::process::id());
    let database = (backend == Backend::Postgres).then(|| processes_cpu_named("postgres"));
    let started = Instant::now();
    let deadline = started + Duration::from_secs_f64(seconds);
    let mut clients = JoinSet::new();
    for socket in sockets {
        clients.spawn(client_run(
            client.clone(),
            socket,
            kind,
            turns_per_session,
            deadline,
        ));
    }
    let mut runs = Vec::with_capacity(sessions);
    while let Some(done) = clients.join_next().await {
        runs.push(done.map_err(|e| format!("a client: {e}"))?);
    }
    let mut load = Load {
        sessions,
        elapsed: started.elapsed(),
        server_cpu: server.stop(),
        client_cpu: generator.stop(),
        database_cpu: database.map(|then| processes_cpu_named("postgres").saturating_sub(then)),
        opening,
        turns_per_session: (usize::MAX, 0),
        ..Load::default()
    };
    let mut sockets = Vec::with_capacity(runs.len());
    for client_run in runs {
        load.turns += client_run.turns;
        load.errors += client_run.errors;
        load.openings += client_run.openings;
        load.replacing += client_run.replacing;
        load.first_error = load.first_error.or(client_run.first_error);
        load.turns_per_session.0 = load.turns_per_session.0.min(client_run.turns);
        load.turns_per_session.1 = load.turns_per_session.1.max(client_run.turns);
        load.latencies.extend(client_run.latencies);
        sockets.extend(client_run.socket);
    }
    close_all(sockets).await;
    Ok(load)
}

// ---------------------------------------------------------------------------------------------
// One backend
// ---------------------------------------------------------------------------------------------

#[derive(Default)]
struct Column {
    error: Option<String>,
    first_starts: Latencies,
    restarts: Latencies,
    rss_ready: Option<u64>,
    rss_after: Option<u64>,
    hwm_after: Option<u64>,
    /// The plain and tool runs with each of `SESSIONS`, then the many-session run.
    loads: Vec<Load>,
}

struct Settings {
    seconds: f64,
    starts: usize,
    many: usize,
    turns_per_session: usize,
}

/// Ready times: `starts` first starts on fresh places, then as many restarts of the last one.
async fn measure_starts(
    backend: Backend,
    settings: &Settings,
    column: &mut Column,
) -> Result<(), String> {
    let mut place = None;
    for _ in 0..settings.starts {
        let fresh = Place::fresh(backend)?;
        let up = start_up(&fresh, false).await?;
        column.first_starts.push(up.ready);
        drop(up);
        place = Some(fresh);
    }
    if let Some(place) = &place {
        for _ in 0..settings.starts {
            let up = start_up(place, false).await?;
            column.restarts.push(up.ready);
        }
    }
    Ok(())
}

async fn measure_load(
    backend: Backend,
    settings: &Settings,
    column: &mut Column,
) -> Result<(), String> {
    let place = Place::fresh(backend)?;
    let up = start_up(&place, true).await?;
    tokio::time::sleep(SETTLE).await;
    column.rss_ready = up.rss_kib();
    let mut client = FlutterReplicaClient::new(&up.url).with_timeout(PATIENCE);
    client
        .login(&up.url, ADMIN, ADMIN_PASSWORD)
        .await
        .map_err(|e| format!("the admin's login: {e}"))?;
    // Warm-up: connection pools, caches, the databases' first pages.
    for kind in [Kind::Plain, Kind::Tool] {
        run(
            &up,
            &client,
            backend,
            kind,
            4,
            0.5,
            settings.turns_per_session,
        )
        .await?;
    }
    for kind in [Kind::Plain, Kind::Tool] {
        for sessions in SESSIONS {
            eprintln!("  {} turns, {sessions} sessions", kind_name(kind));
            let load = run(
                &up,
                &client,
                backend,
                kind,
                sessions,
                settings.seconds,
                settings.turns_per_session,
            )
            .await?;
            column.loads.push(load);
        }
    }
    eprintln!("  plain turns, {} sessions", settings.many);
    let many = run(
        &up,
        &client,
        backend,
        Kind::Plain,
        settings.many,
        settings.seconds,
        settings.turns_per_session,
    )
    .await?;
    column.loads.push(many);
    tokio::time::sleep(SETTLE).await;
    column.rss_after = up.rss_kib();
    column.hwm_after = up.hwm_kib();
    Ok(())
}

fn kind_name(kind: Kind) -> &'static str {
    match kind {
        Kind::Plain => "plain",
        Kind::Tool => "tool",
    }
}

async fn measure(backend: Backend, settings: &Settings) -> Column {
    let mut column = Column::default();
    eprintln!("measuring {} ...", backend.name());
    let measured = async {
        measure_starts(backend, settings, &mut column).await?;
        measure_load(backend, settings, &mut column).await
    }
    .await;
    if let Err(error) = measured {
        column.error = Some(error);
    }
    column
}

fn main() {
    let settings = Settings {
        seconds: env_f64("BENCH_SECONDS", 3.0),
        starts: usize::try_from(env_u64("BENCH_STARTS", 5))
            .unwrap_or(5)
            .max(1),
        many: usize::try_from(env_u64("BENCH_MANY_SESSIONS", 1000))
            .unwrap_or(1000)
            .max(1),
        turns_per_session: usize::try_from(env_u64("BENCH_TURNS_PER_SESSION", 10))
            .unwrap_or(10)
            .max(1),
    };
    let backends: Vec<Backend> = std::env::var("BENCH_BACKENDS")
        .unwrap_or_else(|_| "sqlite,postgres".to_owned())
        .split(',')
        .filter_map(|name| match name.trim() {
            "sqlite" => Some(Backend::Sqlite),
            "postgres" => Some(Backend::Postgres),
            _ => None,
        })
        .collect();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a multi-thread runtime builds");
    let columns: Vec<(Backend, Column)> = backends
        .into_iter()
        .map(|backend| (backend, runtime.block_on(measure(backend, &settings))))
        .collect();
    report(columns, &settings);
}

// ---------------------------------------------------------------------------------------------
// Report
// ---------------------------------------------------------------------------------------------

/// One cell of a [`Load`] in the report.
type LoadCell = dyn Fn(&mut Load) -> String;

/// `n%` of one core.
fn core_share(cpu: Option<Duration>, elapsed: Duration) -> String {
    match cpu {
        Some(cpu) if !elapsed.is_zero() => {
            format!("{:.0}%", cpu.as_secs_f64() * 100.0 / elapsed.as_secs_f64())
        }
        _ => "n/a".to_owned(),
    }
}

fn report(mut columns: Vec<(Backend, Column)>, settings: &Settings) {
    println!();
    println!(
        "whole chain through `codelab up` on {} — mock model (no token delay), Flutter-profile \
         clients in this process, `codelab up` in its own; {} s per run, a new session every {} \
         turns",
        machine_summary(),
        settings.seconds,
        settings.turns_per_session
    );
    let mut table = Table::new(
        std::iter::once(String::new()).chain(columns.iter().map(|(b, _)| b.name().to_owned())),
    );
    let text_row = |table: &mut Table,
                    columns: &mut [(Backend, Column)],
                    label: &str,
                    value: &dyn Fn(&mut Column) -> String| {
        let cells: Vec<String> = columns.iter_mut().map(|(_, c)| value(c)).collect();
        table.row(label, cells);
    };
    let p50_max = |l: &mut Latencies| {
        if l.is_empty() {
            "n/a".to_owned()
        } else {
            format!("{} / {}", ms(l.percentile(50.0)), ms(l.percentile(100.0)))
        }
    };
    text_row(
        &mut table,
        &mut columns,
        &format!("ready, first start ({}×): p50 / max", settings.starts),
        &|c| p50_max(&mut c.first_starts),
    );
    text_row(
        &mut table,
        &mut columns,
        &format!("ready, restart ({}×): p50 / max", settings.starts),
        &|c| p50_max(&mut c.restarts),
    );
    text_row(
        &mut table,
        &mut columns,
        "VmRSS idle 1 s after ready",
        &|c| mib(c.rss_ready),
    );

    let mut runs: Vec<(String, bool)> = Vec::new();
    for kind in ["plain turn", "tool turn (2 steps)"] {
        for sessions in SESSIONS {
            runs.push((
                format!(
                    "{kind}, {sessions} session{}",
                    if sessions == 1 { "" } else { "s" }
                ),
                false,
            ));
        }
    }
    runs.push((format!("plain turn, {} sessions", settings.many), true));
    for (at, (label, many)) in runs.iter().enumerate() {
        let mut rows: Vec<(&str, Box<LoadCell>)> = vec![
            (
                "turns/s",
                Box::new(|l: &mut Load| per_second(l.turns, l.elapsed)),
            ),
            (
                "  p50 / p99 per turn",
                Box::new(|l: &mut Load| {
                    format!(
                        "{} / {}",
                        ms(l.latencies.percentile(50.0)),
                        ms(l.latencies.percentile(99.0))
                    )
                }),
            ),
            (
                "  max per turn",
                Box::new(|l: &mut Load| ms(l.latencies.percentile(100.0))),
            ),
            (
                "  server CPU per turn (codelab up)",
                Box::new(|l: &mut Load| cpu_per_unit(l.server_cpu, l.turns)),
            ),
            (
                "  server CPU, % of one core",
                Box::new(|l: &mut Load| core_share(l.server_cpu, l.elapsed)),
            ),
            (
                "  load generator CPU per turn (% of one core)",
                Box::new(|l: &mut Load| {
                    format!(
                        "{} ({})",
                        cpu_per_unit(l.client_cpu, l.turns),
                        core_share(l.client_cpu, l.elapsed)
                    )
                }),
            ),
            (
                "  PostgreSQL server CPU per turn",
                Box::new(|l: &mut Load| match l.database_cpu {
                    Some(cpu) => cpu_per_unit(Some(cpu), l.turns),
                    None => "—".to_owned(),
                }),
            ),
            (
                "  turns / errors",
                Box::new(|l: &mut Load| format!("{} / {}", l.turns, l.errors)),
            ),
            (
                "  sessions replaced (share of the clients' time)",
                Box::new(|l: &mut Load| {
                    let clients_time = l.elapsed.as_secs_f64() * l.sessions as f64;
                    let share = if clients_time > 0.0 {
                        l.replacing.as_secs_f64() * 100.0 / clients_time
                    } else {
                        0.0
                    };
                    format!("{} ({share:.0}%)", l.openings)
                }),
            ),
        ];
        if *many {
            rows.insert(
                3,
                (
                    "  turns per session, min / max",
                    Box::new(|l: &mut Load| {
                        format!("{} / {}", l.turns_per_session.0, l.turns_per_session.1)
                    }),
                ),
            );
            rows.push((
                "  opening a session (REST, socket, routed 1st turn): p50 / p99",
                Box::new(|l: &mut Load| {
                    format!(
                        "{} / {}",
                        ms(l.opening.latencies.percentile(50.0)),
                        ms(l.opening.latencies.percentile(99.0))
                    )
                }),
            ));
            rows.push((
                "  server CPU per opening",
                Box::new(|l: &mut Load| cpu_per_unit(l.opening.server_cpu, l.opening.sessions)),
            ));
        }
        for (n, (name, value)) in rows.iter().enumerate() {
            let name = if n == 0 {
                format!("{label}: {name}")
            } else {
                (*name).to_owned()
            };
            let cells: Vec<String> = columns
                .iter_mut()
                .map(|(_, c)| c.loads.get_mut(at).map_or_else(|| "n/a".to_owned(), value))
                .collect();
            table.row(&name, cells);
        }
    }
    text_row(
        &mut table,
        &mut columns,
        "VmRSS idle 1 s after the load (VmHWM)",
        &|c| format!("{} ({})", mib(c.rss_after), mib(c.hwm_after)),
    );
    table.print();
    for (backend, column) in &columns {
        if let Some(error) = &column.error {
            println!("{}: not measured: {error}", backend.name());
        }
        for load in &column.loads {
            if let Some(error) = &load.first_error {
                println!(
                    "{}, {} sessions: {} failed turns, the first: {error}",
                    backend.name(),
                    load.sessions,
                    load.errors
                );
            }
        }
    }
}
