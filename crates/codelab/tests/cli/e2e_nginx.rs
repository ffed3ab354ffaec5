//! The end-to-end suite: real processes of every service (`codelab serve llm-proxy`, `auth`,
//! two `agent-runtime`, two `gateway`, `website`) behind a real nginx running this repository's
//! deploy/nginx/nginx.conf with a generated upstreams.conf, on PostgreSQL (one database per
//! service; both runtimes share theirs) and a private `redis-server` the test starts and stops.
//!
//! 1. Clients through nginx: the Flutter replica's whole flow (login, sessions, chat, tool
//!    calls, approval, refusal, history, pending approvals), a protocol-2 client (token
//!    deltas, `hitl_decision`), and `codelab chat -m ... --yes --json`; nginx balances the
//!    gateway upstream over both gateways (its access log names both).
//! 2. Scale-out, made deterministic with one more nginx per gateway (the same nginx.conf, an
//!    upstreams.conf naming only that gateway): an approval through REST on gateway 2 settles
//!    a tool call whose socket is on gateway 1; the IDE loses its socket on gateway 1 in the
//!    middle of a turn and finishes it on gateway 2 (Flutter: pending approval restored over
//!    REST; protocol 2: resumed by `last_seq` while gateway 1 still streams).
//! 3. Redis stopped: the `/ready` of auth (`cache`) and of both gateways (`redis`) answer 503
//!    while the runtimes and the proxy stay ready; the system degrades as documented instead of
//!    failing: logins still work and a sixth wrong password is still locked out (auth counts
//!    in memory, `codelab_auth_cache_degraded` is 1), a turn still completes (the gateway delivers events
//!    locally). Redis started again on the same port: every `/ready` is 200 again and events
//!    cross gateways again. Likewise the proxy (the runtimes' `llm_proxy` check), a runtime
//!    (its gateway's `agent_runtime` check) and auth (the gateways stay ready on their cached
//!    keys and keep serving tokens already issued) are killed and restarted.
//! 4. `codelab up` on its own listener: the Flutter flow, SIGTERM, a restart on the same data
//!    dir without `--admin-password` keeps the password, the session and its history, and the
//!    signing key (same `kid`; a token from before the restart still works). `codelab up
//!    --postgres-url --redis-url --model` serves the same flow from one database per service
//!    on PostgreSQL, with its counters and fan-out in Redis.
//!
//! Needs nginx and redis-server (scripts/test installs both from Debian packages when missing)
//! and the test PostgreSQL (`CODELAB_TEST_DATABASE_URL`). Every wait is bounded and polls or
//! waits for a signal; nothing sleeps for a fixed time. Every child process is killed when the
//! test ends, temp dirs and databases are removed. When a test fails, the end of every
//! process's log is printed.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::common::cli::get_text;
use crate::common::nginx::Prefix;
use crate::common::processes::{Process, RedisServer, codelab, free_port, wait_for_status};
use crate::common::topology::{ADMIN, Front, TempDatabases, Topology};
use codelab_testkit::TempPostgres;
use codelab_testkit::ide_clients::steps::{
    self, assert_no_null_keys, assert_the_ide_understood_everything, is_tool_call, p2_ask_write,
    report_ran, tool_call_of,
};
use codelab_testkit::ide_clients::{
    Bubble, FlutterReplicaClient, P2Frame, Protocol2Client, Protocol2Options, Role, TokenPlacement,
};
use codelab_testkit::scenarios::{self, FirstTurn};
use futures_util::future::join_all;
use serde_json::Value;

const ADMIN_PASSWORD: &str = "e2e-nginx-admin-password";
/// Bound of every wait of a client (two cores are shared with other builds).
const WAIT: Duration = Duration::from_secs(30);
/// Bound of a process's start (migrations on a cold database included).
const START: Duration = Duration::from_secs(60);

// ---------------------------------------------------------------------------------------------
// The stack: every service as its own process behind nginx
// ---------------------------------------------------------------------------------------------

/// Everything of items 1–3: the loopback topology and one more nginx per gateway. Fields drop
/// in order: the pinned nginxes first.
struct Stack {
    /// One nginx per gateway (`pinned[i]` reaches `topology.gateways[i]` only).
    pinned: Vec<Front>,
    topology: Topology<TempDatabases>,
}

impl Stack {
    /// Starts every process, waits until each `/ready` is 200, then starts the pinned nginxes.
    async fn start() -> Stack {
        let databases = TempDatabases::new("e2e");
        let plan = databases.plan(ADMIN_PASSWORD.to_owned());
        let topology = Topology::start_on(databases, plan).await;
        let pinned = join_all(topology.gateways.iter().map(|gateway| {
            let upstreams = topology.upstreams_with(&[gateway.address()]);
            Front::start(Prefix::new(&upstreams, false))
        }))
        .await;
        Stack { pinned, topology }
    }
}

// ---------------------------------------------------------------------------------------------
// Client flows
// ---------------------------------------------------------------------------------------------

fn flutter(base: &str) -> FlutterReplicaClient {
    FlutterReplicaClient::new(base).with_timeout(WAIT)
}

/// A Flutter replica logged in as the admin through `base`'s `/oauth/token`.
async fn logged_in(base: &str) -> FlutterReplicaClient {
    let mut client = flutter(base);
    client.login(base, ADMIN, ADMIN_PASSWORD).await.unwrap();
    client
}

/// The admin logged in through `base` with a new session: the client, its access token and
/// the session's id.
async fn new_session(base: &str) -> (FlutterReplicaClient, String, String) {
    let client = logged_in(base).await;
    let token = client.access_token().unwrap().to_owned();
    let session = client.create_session().await.unwrap().id;
    (client, token, session)
}

/// A Flutter replica on `base` that already holds `token` (an IDE restarted with it).
fn flutter_with(base: &str, token: &str) -> FlutterReplicaClient {
    let mut client = flutter(base);
    client.set_access_token(token);
    client
}

/// A protocol-2 socket (token in the query string, which nginx must pass on) whose
/// `session_info` arrived: its resumption ran and its fan-out subscription is live.
async fn p2_ready(base: &str, session: &str, token: &str) -> Protocol2Client {
    let options = Protocol2Options {
        timeout: WAIT,
        ..Protocol2Options::default()
    }
    .with_token(token, TokenPlacement::Query);
    steps::p2_ready(base, session, options).await
}

/// What a Flutter flow left behind.
struct FlutterOutcome {
    client: FlutterReplicaClient,
    session: String,
    message_count: i64,
}

/// The Flutter IDE from login to history against `base` (nginx or `codelab up`'s listener).
async fn flutter_flow(base: &str) -> FlutterOutcome {
    let FirstTurn {
        client,
        session,
        mut socket,
        ..
    } = scenarios::flutter_first_turn(
        || flutter(base),
        base,
        ADMIN,
        ADMIN_PASSWORD,
        "Hello through the front door",
    )
    .await;
    scenarios::flutter_read_file_turn(&mut socket, |_| {}).await;

    // A call that needs approval: pending over REST until the IDE reports the result.
    let call = scenarios::flutter_ask_write(&mut socket).await;
    assert!(call.requires_approval, "{call:?}");
    let pending = client.pending_approvals(&session.id).await.unwrap();
    assert_eq!(pending.count, 1, "{pending:?}");
    assert_eq!(pending.pending_approvals[0].call_id, call.call_id);
    scenarios::flutter_report_write(&client, &mut socket, &session.id, &call.call_id).await;

    // The user refuses the next one.
    let turn = scenarios::flutter_refuse_write(&mut socket).await;
    assert!(
        turn.assistant_texts()[0].contains("Операция отклонена: write_file"),
        "{turn:?}"
    );

    let (history, bubbles) = scenarios::flutter_history(&client, &session.id).await;
    assert!(
        bubbles.contains(&Bubble::Text {
            role: Role::Assistant,
            text: "Hello through the front door".into(),
            is_final: true,
        }),
        "{bubbles:?}"
    );
    scenarios::flutter_rename_and_close(&client, socket, &session.id, "Through nginx").await;
    FlutterOutcome {
        client,
        session: session.id,
        message_count: history.message_count,
    }
}

/// Protocol 2 through `base`: token deltas then the whole text, an approval on the socket.
async fn protocol2_flow(base: &str) {
    let (_client, token, session) = new_session(base).await;
    let mut v2 = p2_ready(base, &session, &token).await;

    let frames = scenarios::p2_streamed_reply(&mut v2).await;
    let deltas = frames.iter().filter(|f| f.is_delta()).count();
    assert!(deltas >= 3, "tokens streamed through nginx: {frames:?}");
    assert_eq!(
        frames.last().unwrap().content(),
        Some("alpha beta gamma delta epsilon")
    );
    let done = v2.wait_for_type("turn_finished").await.unwrap();
    assert_eq!(done.outcome(), Some("completed"));

    let call = p2_ask_write(&mut v2, "p2.md").await;
    assert!(call.requires_approval(), "{call:?}");
    let call_id = call.call_id().unwrap().to_owned();
    scenarios::p2_approve_and_finish(&mut v2, &call_id).await;
    assert_no_null_keys(v2.frames());
}

/// `codelab chat -m "::tool list_files ..." --yes --json --server <base>`, logging in with
/// `CODELAB_USERNAME`/`CODELAB_PASSWORD`, its token store in its own `XDG_CONFIG_HOME`.
async fn chat_cli_flow(base: &str) {
    let dir = tempfile::tempdir().unwrap();
    let workspace = dir.path().join("workspace");
    std::fs::create_dir_all(&workspace).unwrap();
    std::fs::write(workspace.join("notes.txt"), "hello\n").unwrap();
    let mut command = tokio::process::Command::from(codelab(&[
        "chat",
        "--server",
        base,
        "--workspace",
        workspace.to_str().unwrap(),
        "-m",
        r#"::tool list_files {"path":"."}"#,
        "--yes",
        "--json",
    ]));
    command
        .env("XDG_CONFIG_HOME", dir.path().join("config"))
        .env("CODELAB_USERNAME", ADMIN)
        .env("CODELAB_PASSWORD", ADMIN_PASSWORD)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    let output = tokio::time::timeout(WAIT * 2, command.output())
        .await
        .expect("codelab chat did not finish")
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stdout}\n{stderr}");
    let lines: Vec<Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let frames: Vec<&Value> = lines
        .iter()
        .filter(|l| l["direction"] == "in")
        .map(|l| &l["frame"])
        .collect();
    assert!(
        frames
            .iter()
            .any(|f| f["type"] == "tool_call" && f["tool_name"] == "list_files"),
        "{stdout}"
    );
    let result = lines
        .iter()
        .filter(|l| l["direction"] == "out")
        .find_map(|l| l.get("tool_result"))
        .unwrap_or_else(|| panic!("no tool result sent: {stdout}"));
    assert_eq!(result["tool_name"], "list_files");
    assert_eq!(
        result["result"]["items"][0]["name"], "notes.txt",
        "{result}"
    );
    let text: String = frames
        .iter()
        .filter(|f| f["type"] == "assistant_message" && f["is_final"] == true)
        .filter_map(|f| f["content"].as_str())
        .collect();
    assert!(text.contains("Tool list_files returned"), "{stdout}");
    assert_eq!(frames.last().unwrap()["type"], "turn_finished", "{stdout}");
}

/// The `kid`s `base` publishes.
async fn jwks_kids(base: &str) -> Vec<String> {
    let jwks: Value = reqwest::get(format!("{base}/.well-known/jwks.json"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let mut kids: Vec<String> = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["kid"].as_str().unwrap().to_owned())
        .collect();
    kids.sort();
    assert!(!kids.is_empty(), "{jwks}");
    kids
}

/// A password grant for `username` through `base`: the status and any `Retry-After`.
async fn password_grant(base: &str, username: &str, password: &str) -> (u16, Option<String>) {
    let response = crate::common::cli::password_grant(base, username, password).await;
    let retry_after = response
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    (response.status().as_u16(), retry_after)
}

/// GET `base` + `path`: the status and body.
async fn get(base: &str, path: &str) -> (u16, String) {
    get_text(&format!("{base}{path}"), &[]).await
}

// ---------------------------------------------------------------------------------------------
// Scale-out flows (a = the nginx pinned to gateway 1, b = the one pinned to gateway 2)
// ---------------------------------------------------------------------------------------------

/// An approval through REST on gateway 2 settles a tool call whose socket is on gateway 1.
async fn approval_on_the_other_gateway(a: &str, b: &str) {
    let (client, token, session) = new_session(a).await;
    let mut ide = client.connect(&session).await.unwrap();
    // Its session_info means gateway 1's Redis subscription to the session is live.
    let mut observer = p2_ready(a, &session, &token).await;

    let (call, resent) =
        scenarios::approve_on_another_gateway(&mut ide, "x.md", b, &session, &token).await;
    assert!(!resent.requires_approval, "the IDE runs it without asking");
    let turn = report_ran(&mut ide, &call.call_id, "write_file", "wrote x.md").await;
    assert!(turn.assistant_texts()[0].contains("write_file"), "{turn:?}");
    observer
        .wait_for("the turn's end", |f| f.is_turn_finished("completed"))
        .await
        .unwrap();
    assert_the_ide_understood_everything(&ide);
    let on_b = flutter_with(b, &token);
    assert_eq!(on_b.pending_approvals(&session).await.unwrap().count, 0);
    ide.close().await;
}

/// The Flutter IDE loses its socket on gateway 1 with an approval open, comes back through
/// gateway 2, restores the approval over REST and finishes the turn there.
async fn flutter_finishes_the_turn_on_the_other_gateway(a: &str, b: &str) {
    let (client, token, session) = new_session(a).await;
    let mut observer = p2_ready(b, &session, &token).await;
    let mut socket = client.connect(&session).await.unwrap();
    socket
        .send_user_message(r#"::tool write_file {"path":"c.md","content":"z"}"#)
        .await
        .unwrap();
    let call = tool_call_of(
        &socket
            .wait_for("the tool call", is_tool_call)
            .await
            .unwrap(),
    );
    assert!(call.requires_approval);
    socket.abort();

    let restarted = flutter_with(b, &token);
    let pending = restarted.pending_approvals(&session).await.unwrap();
    assert_eq!(pending.count, 1, "{pending:?}");
    assert_eq!(pending.pending_approvals[0].call_id, call.call_id);
    let mut socket = restarted.connect(&session).await.unwrap();
    let turn = report_ran(&mut socket, &call.call_id, "write_file", "wrote c.md").await;
    assert!(turn.assistant_texts()[0].contains("write_file"), "{turn:?}");
    observer
        .wait_for("the turn's end", |f| f.is_turn_finished("completed"))
        .await
        .unwrap();
    assert_eq!(
        restarted.pending_approvals(&session).await.unwrap().count,
        0
    );
    assert_the_ide_understood_everything(&socket);
    socket.close().await;
}

/// A protocol-2 client drops off gateway 1 while its reply streams and resumes on gateway 2
/// by `last_seq`: gateway 1 keeps relaying the turn, its events reach gateway 2 through Redis,
/// nothing is lost or repeated.
async fn protocol2_resumes_on_the_other_gateway(a: &str, b: &str) {
    let (_client, token, session) = new_session(a).await;
    let first = p2_ready(a, &session, &token).await;
    scenarios::p2_drop_and_resume(first, 60, Some(b)).await;
}

// ---------------------------------------------------------------------------------------------
// Items 1–3
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_service_behind_nginx_on_postgres_and_redis() {
    let started = Instant::now();
    let mut stack = Stack::start().await;
    eprintln!("stack ready in {:?}", started.elapsed());
    let public = stack.topology.front.url();

    // nginx's routes reach the real services.
    for (path, needle) in [
        ("/nginx-health", "healthy"),
        ("/auth-health", "\"service\":\"auth\""),
        ("/gateway-health", "\"service\":\"gateway\""),
        ("/api/v1/health", "\"service\":\"gateway\""),
        ("/.well-known/oauth-authorization-server", &public),
        ("/", "<html"),
    ] {
        let (status, body) = get(&public, path).await;
        assert_eq!(status, 200, "{path}: {body}");
        assert!(body.contains(needle), "{path}: {body}");
    }

    // 1. Three clients at once through the balanced front door.
    let phase = Instant::now();
    tokio::join!(
        flutter_flow(&public),
        protocol2_flow(&public),
        chat_cli_flow(&public)
    );
    eprintln!("clients done in {:?}", phase.elapsed());
    let log = stack.topology.front.prefix.access_log();
    for gateway in &stack.topology.gateways {
        let upstream = format!("upstream={}", gateway.address());
        assert!(
            log.contains(&upstream),
            "nginx never chose {upstream}:\n{log}"
        );
    }

    // 2. Scale-out, each gateway reached through its own nginx.
    let phase = Instant::now();
    let (a, b) = (stack.pinned[0].url(), stack.pinned[1].url());
    tokio::join!(
        approval_on_the_other_gateway(&a, &b),
        flutter_finishes_the_turn_on_the_other_gateway(&a, &b),
        protocol2_resumes_on_the_other_gateway(&a, &b)
    );
    eprintln!("scale-out done in {:?}", phase.elapsed());

    // 3. Redis goes away.
    let phase = Instant::now();
    stack.topology.redis.stop();
    let auth_checks = stack.topology.auth.ready_is(503).await;
    assert_eq!(auth_checks["database"], "ok", "{auth_checks:?}");
    let cache = auth_checks["cache"].as_str().unwrap();
    assert!(cache.contains("redis"), "{auth_checks:?}");
    for gateway in &mut stack.topology.gateways {
        let checks = gateway.ready_is(503).await;
        assert!(
            checks["redis"].as_str().unwrap().contains("Redis"),
            "{checks:?}"
        );
        assert_eq!(checks["agent_runtime"], "ok", "{checks:?}");
        assert_eq!(checks["jwks"], "ok", "{checks:?}");
    }
    // Services that do not use Redis stay ready.
    for service in stack
        .topology
        .runtimes
        .iter_mut()
        .chain([&mut stack.topology.proxy])
    {
        service.ready_is(200).await;
    }
    eprintln!(
        "readiness followed redis down in {:?}; auth: {auth_checks:?}",
        phase.elapsed()
    );
    // Logins still work, and the brute-force limit still holds: counted in auth's memory.
    let mut client = logged_in(&public).await;
    let intruder = format!("intruder-{}", codelab_core::random_hex(4));
    let mut refusals = Vec::new();
    for _ in 0..6 {
        refusals.push(password_grant(&public, &intruder, "wrong-password").await);
    }
    assert!(
        refusals[..5].iter().all(|(status, _)| *status == 401),
        "{refusals:?}"
    );
    let (status, retry_after) = &refusals[5];
    assert_eq!(*status, 429, "locked out while Redis is down: {refusals:?}");
    assert!(
        retry_after
            .as_deref()
            .is_some_and(|s| s.parse::<u64>().is_ok())
    );
    let (_, metrics) = get(&stack.topology.auth.url, "/metrics").await;
    assert!(
        metrics
            .lines()
            .any(|l| l == "codelab_auth_cache_degraded 1"),
        "{metrics}"
    );
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("codelab_auth_cache_fallbacks_total{operation=\"incr_ex\"}")),
        "{metrics}"
    );
    let session = client.create_session().await.unwrap().id;
    let mut socket = client.connect(&session).await.unwrap();
    let turn = socket
        .run_turn("::reply still answering without redis", |c| panic!("{c:?}"))
        .await
        .unwrap();
    assert_eq!(
        turn.assistant_texts(),
        vec!["still answering without redis"]
    );
    socket.close().await;
    eprintln!("degraded flows done in {:?}", phase.elapsed());

    // Redis is back on the same port: everything is ready again, and events cross gateways.
    let phase = Instant::now();
    stack.topology.redis.resume().await;
    stack.topology.auth.ready_is(200).await;
    let (_, metrics) = get(&stack.topology.auth.url, "/metrics").await;
    assert!(
        metrics
            .lines()
            .any(|l| l == "codelab_auth_cache_degraded 0"),
        "{metrics}"
    );
    for gateway in &mut stack.topology.gateways {
        gateway.ready_is(200).await;
    }
    eprintln!("ready again in {:?}", phase.elapsed());
    let token;
    let session;
    (client, token, session) = new_session(&a).await;
    let mut observer = p2_ready(&a, &session, &token).await;
    let on_b = flutter_with(&b, &token);
    let mut socket = on_b.connect(&session).await.unwrap();
    socket
        .run_turn("::reply across gateways again", |c| panic!("{c:?}"))
        .await
        .unwrap();
    let answer = observer
        .wait_for("the answer from gateway 2", P2Frame::is_final_text)
        .await
        .unwrap();
    assert_eq!(answer.content(), Some("across gateways again"));
    socket.close().await;

    // The other dependencies: each /ready names the one that is down, and comes back with it.
    let phase = Instant::now();
    stack.topology.proxy.stop();
    for runtime in &mut stack.topology.runtimes {
        let checks = runtime.ready_is(503).await;
        assert_ne!(checks["llm_proxy"], "ok", "{checks:?}");
        assert_eq!(checks["database"], "ok", "{checks:?}");
    }
    stack.topology.proxy.restart();
    for runtime in &mut stack.topology.runtimes {
        runtime.ready_is(200).await;
    }
    stack.topology.runtimes[1].stop();
    let checks = stack.topology.gateways[1].ready_is(503).await;
    assert_ne!(checks["agent_runtime"], "ok", "{checks:?}");
    stack.topology.gateways[0].ready_is(200).await;
    stack.topology.runtimes[1].restart();
    stack.topology.runtimes[1].ready_is(200).await;
    stack.topology.gateways[1].ready_is(200).await;
    // Auth down: the gateways keep verifying tokens with the keys they cached, so they stay
    // ready and serve; only logins and /auth-health fail.
    stack.topology.auth.stop();
    for gateway in &mut stack.topology.gateways {
        gateway.ready_is(200).await;
    }
    let sessions = client.list_sessions().await.unwrap();
    assert!(sessions.iter().any(|s| s.id == session), "{sessions:?}");
    let (status, _) = get(&public, "/auth-health").await;
    assert_eq!(status, 502);
    stack.topology.auth.restart();
    stack.topology.auth.ready_is(200).await;
    logged_in(&public).await;
    eprintln!("dependency checks done in {:?}", phase.elapsed());
    eprintln!("whole test in {:?}", started.elapsed());
}

// ---------------------------------------------------------------------------------------------
// Item 4: `codelab up`
// ---------------------------------------------------------------------------------------------

/// `codelab up --listen <listen> --ephemeral-ports <extra>`, its output in `log`, serving.
async fn start_up(listen: &str, extra: &[&str], log: &Path) -> Process {
    let mut args = vec!["up", "--listen", listen, "--ephemeral-ports"];
    args.extend_from_slice(extra);
    let mut process = Process::spawn("codelab up", codelab(&args), log);
    let url = format!("http://{listen}");
    for path in ["/auth-health", "/gateway-health"] {
        wait_for_status(&format!("{url}{path}"), 200, &mut process, START).await;
    }
    process.wait_for_summary(START).await;
    process
}

/// Prints the log of `up` when the test fails.
struct ShowLogOnPanic(PathBuf);

impl Drop for ShowLogOnPanic {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let log = std::fs::read_to_string(&self.0).unwrap_or_default();
            eprintln!("--- log of codelab up ---\n{log}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn up_keeps_users_sessions_and_keys_across_a_restart() {
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let data = data.to_str().unwrap();
    let log = dir.path().join("up.log");
    let _show = ShowLogOnPanic(log.clone());
    let listen = format!("127.0.0.1:{}", free_port());
    let url = format!("http://{listen}");

    let mut up = start_up(
        &listen,
        &["--data-dir", data, "--admin-password", ADMIN_PASSWORD],
        &log,
    )
    .await;
    let first = flutter_flow(&url).await;
    let kids = jwks_kids(&url).await;
    let old_token = first.client.access_token().unwrap().to_owned();
    let status = up.terminate(Duration::from_secs(30));
    assert!(status.success(), "{status}: {}", up.tail());
    assert!(up.output().contains("CodeLab stopped."), "{}", up.tail());

    // Without --admin-password: the password in force is the stored one.
    let mut up = start_up(&listen, &["--data-dir", data], &log).await;
    let output = up.output();
    let second_start = &output[output.rfind("CodeLab is up.").unwrap()..];
    assert!(
        !second_start.contains("Created the admin user"),
        "{second_start}"
    );
    let client = logged_in(&url).await;
    let sessions = client.list_sessions().await.unwrap();
    let session = sessions
        .iter()
        .find(|s| s.id == first.session)
        .unwrap_or_else(|| panic!("the session is gone: {sessions:?}"));
    assert_eq!(session.title.as_deref(), Some("Through nginx"));
    let history = client.history(&first.session).await.unwrap();
    assert_eq!(history.message_count, first.message_count);
    assert!(
        history
            .messages
            .iter()
            .any(|m| m.content.as_deref() == Some("Hello through the front door")),
        "{history:?}"
    );
    assert_eq!(jwks_kids(&url).await, kids, "the signing key changed");
    // A token issued before the restart is still valid.
    let before = flutter_with(&url, &old_token);
    before.list_sessions().await.unwrap();
    assert!(up.terminate(Duration::from_secs(30)).success());
    eprintln!("up restart test in {:?}", started.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn up_runs_on_postgres_and_redis() {
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("up.log");
    let _show = ShowLogOnPanic(log.clone());
    // `--postgres-url` names a database: `up` makes `<name>_auth` and `<name>_agent_runtime`.
    let base = TempPostgres::new("e2e_up");
    let auth_db = base.derived("auth");
    let runtime_db = base.derived("agent_runtime");
    let redis = RedisServer::start().await;
    let listen = format!("127.0.0.1:{}", free_port());
    let url = format!("http://{listen}");

    let mut up = start_up(
        &listen,
        &[
            "--data-dir",
            dir.path().join("data").to_str().unwrap(),
            "--admin-password",
            ADMIN_PASSWORD,
            "--postgres-url",
            &base.url,
            "--redis-url",
            &redis.url(),
            "--model",
            "mock-llm",
        ],
        &log,
    )
    .await;
    let output = up.output();
    for expected in [
        format!(
            "PostgreSQL {}",
            codelab_core::db::redact_database_url(&auth_db.url)
        ),
        format!("redis            {}", redis.url()),
        "mock-llm (--model)".to_owned(),
    ] {
        assert!(output.contains(&expected), "{expected:?} in\n{output}");
    }
    flutter_flow(&url).await;

    // Each service's database exists on the server; nothing went to SQLite files.
    let server = codelab_testkit::databases::postgres_server_url();
    let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(&server)
        .await
        .unwrap();
    let names: Vec<String> = sqlx::query_scalar(
        "SELECT datname::text FROM pg_database WHERE datname IN ($1, $2) ORDER BY datname",
    )
    .bind(auth_db.name())
    .bind(runtime_db.name())
    .fetch_all(&mut conn)
    .await
    .unwrap();
    assert_eq!(names.len(), 2, "{names:?}");
    let _ = sqlx::Connection::close(conn).await;
    assert!(
        !dir.path().join("data/auth.db").exists()
            && !dir.path().join("data/agent_runtime.db").exists()
    );
    // The gateway's fan-out is on Redis: its /ready checks it (the internal address is in the
    // summary).
    let gateway = output
        .lines()
        .find(|l| l.trim_start().starts_with("gateway") && l.contains("(internal)"))
        .and_then(|l| l.split_whitespace().nth(1))
        .unwrap_or_else(|| panic!("no gateway line in\n{output}"))
        .to_owned();
    let (status, body) = get(&gateway, "/ready").await;
    assert_eq!(status, 200, "{body}");
    let checks: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(checks["checks"]["redis"], "ok", "{body}");
    assert!(up.terminate(Duration::from_secs(30)).success());
    drop(redis);
    eprintln!("up on postgres and redis in {:?}", started.elapsed());
}
