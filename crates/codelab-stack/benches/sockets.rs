//! WebSocket benchmark of the gateway: memory per idle authenticated socket, heartbeats kept,
//! and frames relayed per second.
//!
//! ```sh
//! cargo bench -p codelab-stack --bench sockets
//! ```
//!
//! The binary plays two roles. Run by cargo it is the client: it raises its open-file limit
//! (the child inherits it) and starts itself again as a child process with
//! `GATEWAY_BENCH_ROLE=server`, which serves the whole stack in process (auth service, LLM
//! proxy with the mock model, agent runtime on SQLite, gateway with `GATEWAY__WS_AUTH=session`,
//! `codelab up`'s mode, behind the front door as `codelab up` serves it), creates the users'
//! sessions in the runtime and hands the client the sessions and the users' access tokens
//! (issued by its auth service). The client then measures the child:
//!
//! 1. RSS (`VmRSS` of `/proc/<pid>/status`) before and after opening `BENCH_SOCKETS` (100,000)
//!    idle sockets, each on its own session as IDEs are, authenticated as the IDEs
//!    authenticate: every other one as a protocol-2 client (`?protocol=2&access_token=`), the
//!    others as the Flutter IDE (no token: the unguessable session id, `session` mode). The
//!    sockets belong to `sockets / BENCH_SOCKETS_PER_USER` (200) users, within the default
//!    per-user cap (256), and come from several loopback source addresses (127.0.0.2, ...):
//!    one address has about 28,000 ephemeral ports. They are opened in two halves: the second
//!    half's growth per socket, without what the first sockets brought once (the runtime's
//!    SQLite page cache), projects the RSS of 100,000 sockets;
//! 2. heartbeats: with `GATEWAY__WS_HEARTBEAT_INTERVAL` set to `BENCH_HEARTBEAT_SECS` (5), the
//!    client waits until every socket has received two pings (the gateway closes a socket
//!    whose peer answered no ping for two intervals, so a second ping proves the first pong
//!    counted), then counts the sockets still open, and the child's CPU per ping;
//! 3. frames per second relayed to `BENCH_RATE_SOCKETS` (32) protocol-2 sockets, each running
//!    `BENCH_ROUNDS` (3) turns whose mock reply streams `BENCH_WORDS` (500) tokens without
//!    delay, and the child's user + system CPU per relayed frame over those rounds
//!    (`/proc/<pid>/stat`; the whole turn's work: runtime, mock model and gateway).
//!
//! Every socket costs a file descriptor in each process: the client raises the soft limit to
//! what it needs, up to the hard limit (root with `CAP_SYS_RESOURCE` may raise that too, up to
//! `fs.nr_open`); with fewer descriptors it says so and measures as many sockets as fit.
#![expect(
    clippy::unwrap_used,
    reason = "a benchmark that cannot unwrap has failed: the panic is the report"
)]

use std::io::{BufRead, BufReader, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use codelab_agent_runtime::agents::AgentKind;
use codelab_agent_runtime::model::NewSession;
use codelab_auth::seed::FLUTTER_CLIENT_ID;
use codelab_auth::tokens::TokenType;
use codelab_core::http::ListenerLimits;
use codelab_gateway::config::WsAuthMode;
use codelab_testkit::bench::{CpuMeter, cpu_per_unit, env_u64, machine_summary, status_kib};
use codelab_testkit::ide_clients::{P2Frame, Protocol2Client, Protocol2Options, TokenPlacement};
use futures_util::StreamExt;
use serde_json::json;
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinSet;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

/// Selects the child role.
const ROLE_ENV: &str = "GATEWAY_BENCH_ROLE";
/// What the child prints before the front door's URL (where the sockets connect).
const URL_LINE: &str = "FRONT_DOOR_URL=";
/// What the child prints before the gateway's own URL (its `/metrics`).
const GATEWAY_LINE: &str = "GATEWAY_URL=";
/// What the child prints before a user's access token.
const USER_LINE: &str = "USER_TOKEN=";
/// What the child prints before `<user index> <session id>`.
const SESSION_LINE: &str = "SESSION=";
/// What the child prints once everything is ready.
const READY_LINE: &str = "READY";
/// Descriptors each process needs besides the sockets (listeners, databases, pools, stdio).
const FD_HEADROOM: u64 = 256;
/// Connections opened at once.
const CONNECT_CONCURRENCY: usize = 64;
/// Client sockets per loopback source address: well under the ~28,000 ephemeral ports of
/// the default `net.ipv4.ip_local_port_range` (32768-60999), leaving room for sockets in
/// TIME_WAIT from an earlier run.
const SOCKETS_PER_SOURCE_ADDRESS: u64 = 16_000;
/// Bound of every wait of the benchmark.
const PATIENCE: Duration = Duration::from_secs(300);
/// The scopes the Flutter client's tokens carry.
const SCOPES: &str = "api:read api:write";
/// Lifetime of the benchmark's access tokens: longer than any run.
const TOKEN_LIFETIME_SECS: i64 = 24 * 3600;
/// Read buffer of a client socket: the client side of 100,000 sockets must stay cheap.
const CLIENT_READ_BUFFER: usize = 256;

fn main() {
    if std::env::var(ROLE_ENV).as_deref() == Ok("server") {
        server();
    } else {
        client();
    }
}

/// Sessions the child creates: the idle sockets', the relay sockets' and the warm-up's.
fn session_count(sockets: u64, rate_sockets: u64) -> u64 {
    sockets + rate_sockets + 1
}

// ---------------------------------------------------------------------------------------------
// Child: the stack
// ---------------------------------------------------------------------------------------------

fn server() {
    let sockets = env_u64("BENCH_SOCKETS", 100_000);
    let rate_sockets = env_u64("BENCH_RATE_SOCKETS", 32);
    let heartbeat = env_u64("BENCH_HEARTBEAT_SECS", 5).max(1);
    let per_user = env_u64("BENCH_SOCKETS_PER_USER", 200).max(1);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let front_door = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let front_door_url = format!("http://{}", front_door.local_addr().unwrap());
        let sessions = session_count(sockets, rate_sockets);
        let stack = codelab_stack::Stack::builder()
            .short_llm_timeouts()
            .front_door(front_door)
            // Room for every socket: the default cap (10,000) would leave the rest waiting in
            // the backlog.
            .front_door_limits(ListenerLimits {
                max_connections: usize::try_from(sessions).unwrap() + FD_HEADROOM as usize,
                ..ListenerLimits::default()
            })
            .gateway_config(move |config| {
                config.request_timeout = 10.0;
                // `codelab up`'s mode: a token when the client has one (protocol 2), else the
                // unguessable session id (the Flutter IDE).
                config.ws_auth = Some(WsAuthMode::Session);
                // No per-socket message limit in the way of the relay measurement.
                config.ws_max_messages_per_second = 0;
                config.ws_heartbeat_interval = heartbeat;
                config.agent_stream_timeout = 120.0;
            })
            .start()
            .await
            .unwrap();
        let auth = &stack.auth.as_ref().unwrap().state;
        let store = &stack.runtime.as_ref().unwrap().state.store;
        let users = sessions.div_ceil(per_user);
        let mut out = std::io::BufWriter::new(std::io::stdout().lock());
        writeln!(out, "{URL_LINE}{front_door_url}").unwrap();
        writeln!(out, "{GATEWAY_LINE}{}", stack.gateway.as_ref().unwrap().url).unwrap();
        let mut owners = Vec::new();
        for _ in 0..users {
            let user_id = codelab_core::ids::new_random_id().to_string();
            let token = auth
                .tokens
                .issue(
                    TokenType::Access,
                    &user_id,
                    FLUTTER_CLIENT_ID,
                    SCOPES,
                    TOKEN_LIFETIME_SECS,
                )
                .unwrap()
                .token;
            writeln!(out, "{USER_LINE}{token}").unwrap();
            owners.push(user_id);
        }
        // As `POST /api/v1/sessions` creates them (random ids), straight into the runtime's
        // store: the REST round trips are not what is measured.
        for i in 0..sessions {
            let user = i / per_user;
            let id = codelab_core::ids::new_random_id().to_string();
            store
                .create_session(NewSession {
                    id: id.clone(),
                    owner: owners[usize::try_from(user).unwrap()].clone(),
                    current_agent: AgentKind::Orchestrator.as_str().to_owned(),
                })
                .await
                .unwrap();
            writeln!(out, "{SESSION_LINE}{user} {id}").unwrap();
        }
        writeln!(out, "{READY_LINE}").unwrap();
        out.flush().unwrap();
        drop(out);
        // Serve until the parent closes our stdin (it ended, or died).
        let _ = tokio::task::spawn_blocking(|| {
            let mut line = String::new();
            let _ = std::io::stdin().read_line(&mut line);
        })
        .await;
        drop(stack);
    });
}

// ---------------------------------------------------------------------------------------------
// Parent: the clients and the measurements
// ---------------------------------------------------------------------------------------------

/// A kernel setting from `/proc/sys` (`net/core/somaxconn`), as text.
fn sysctl(path: &str) -> String {
    std::fs::read_to_string(format!("/proc/sys/{path}"))
        .map(|v| v.split_whitespace().collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "n/a".to_owned())
}

/// Raises the soft limit on open files to `wanted` (and the hard limit when allowed: root
/// with `CAP_SYS_RESOURCE`, up to `fs.nr_open`), else to the hard limit; the child inherits
/// it. Returns the soft limit in force.
fn raise_open_files_limit(wanted: u64) -> u64 {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    let current = limit.current.unwrap_or(u64::MAX);
    if current >= wanted {
        return current;
    }
    let hard = limit.maximum.unwrap_or(u64::MAX);
    if hard < wanted {
        let raised = Rlimit {
            current: Some(wanted),
            maximum: Some(wanted),
        };
        if setrlimit(Resource::Nofile, raised).is_ok() {
            return wanted;
        }
    }
    let soft = wanted.min(hard);
    let raised = Rlimit {
        current: Some(soft),
        maximum: limit.maximum,
    };
    match setrlimit(Resource::Nofile, raised) {
        Ok(()) => soft,
        Err(_) => current,
    }
}

/// `VmRSS` and `VmHWM` of a process, in KiB.
fn memory_kib(pid: u32) -> (u64, u64) {
    (
        status_kib(pid, "VmRSS:").unwrap(),
        status_kib(pid, "VmHWM:").unwrap(),
    )
}

/// What the child set up: where to connect, who the users are, which sessions they own.
struct Setup {
    front_door: String,
    gateway: String,
    tokens: Vec<String>,
    /// `(user index, session id)`.
    sessions: Vec<(usize, String)>,
}

impl Setup {
    fn read(lines: impl Iterator<Item = String>) -> Setup {
        let mut setup = Setup {
            front_door: String::new(),
            gateway: String::new(),
            tokens: Vec::new(),
            sessions: Vec::new(),
        };
        for line in lines {
            if let Some(url) = line.strip_prefix(URL_LINE) {
                setup.front_door = url.to_owned();
            } else if let Some(url) = line.strip_prefix(GATEWAY_LINE) {
                setup.gateway = url.to_owned();
            } else if let Some(token) = line.strip_prefix(USER_LINE) {
                setup.tokens.push(token.to_owned());
            } else if let Some(session) = line.strip_prefix(SESSION_LINE) {
                let (user, id) = session.split_once(' ').unwrap();
                setup.sessions.push((user.parse().unwrap(), id.to_owned()));
            } else if line == READY_LINE {
                return setup;
            }
        }
        panic!("the server child ended before it was ready");
    }

    /// The token of the owner of session `index`, and the session.
    fn session(&self, index: usize) -> (&str, &str) {
        let (user, id) = &self.sessions[index];
        (&self.tokens[*user], id)
    }
}

/// The benchmark's sizes, from the environment.
struct Sizes {
    sockets: u64,
    rate_sockets: u64,
    words: u64,
    rounds: u64,
    heartbeat: Duration,
}

fn client() {
    let mut sizes = Sizes {
        sockets: env_u64("BENCH_SOCKETS", 100_000),
        rate_sockets: env_u64("BENCH_RATE_SOCKETS", 32),
        words: env_u64("BENCH_WORDS", 500),
        rounds: env_u64("BENCH_ROUNDS", 3),
        heartbeat: Duration::from_secs(env_u64("BENCH_HEARTBEAT_SECS", 5).max(1)),
    };
    let wanted = sizes.sockets + sizes.rate_sockets + FD_HEADROOM;
    let limit = raise_open_files_limit(wanted);
    if limit < wanted {
        let fit = limit.saturating_sub(sizes.rate_sockets + FD_HEADROOM);
        eprintln!(
            "the open-file limit is {limit} (hard limit reached; raising it needs root with \
             CAP_SYS_RESOURCE): too low for {} sockets, each costs a descriptor in the client \
             and in the server. Measuring {fit} sockets instead.",
            sizes.sockets
        );
        sizes.sockets = fit;
    }
    let kernel = format!(
        "fs.nr_open {}, net.ipv4.ip_local_port_range {}, net.core.somaxconn {}",
        sysctl("fs/nr_open"),
        sysctl("net/ipv4/ip_local_port_range"),
        sysctl("net/core/somaxconn"),
    );

    let exe = std::env::current_exe().unwrap();
    let mut child = Command::new(exe)
        .env(ROLE_ENV, "server")
        .env("BENCH_SOCKETS", sizes.sockets.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let pid = child.id();
    let stdout = child.stdout.take().unwrap();
    let setup = Setup::read(BufReader::new(stdout).lines().map_while(Result::ok));

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let report = runtime.block_on(measure(&setup, pid, &sizes, limit, &kernel));
    // Closing its stdin stops the child.
    drop(child.stdin.take());
    let _ = child.wait();
    print!("{report}");
}

/// The number of open sockets the gateway reports (`codelab_gateway_ws_active_sockets`).
async fn active_sockets(http: &reqwest::Client, url: &str) -> u64 {
    let text = codelab_testkit::metrics::scrape(http, url).await;
    codelab_testkit::metrics::metric_sum(&text, "codelab_gateway_ws_active_sockets") as u64
}

/// Waits until the gateway reports `expected` open sockets: the upgrade's 101 is sent before
/// the server has set the socket up, so the client side alone cannot tell.
async fn settle(http: &reqwest::Client, url: &str, expected: u64) {
    let deadline = Instant::now() + PATIENCE;
    let mut poll = tokio::time::interval(Duration::from_millis(100));
    loop {
        poll.tick().await;
        let active = active_sockets(http, url).await;
        if active == expected {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the gateway reports {active} open sockets, expected {expected}"
        );
    }
}

fn p2_options(token: &str) -> Protocol2Options {
    Protocol2Options {
        timeout: PATIENCE,
        ..Protocol2Options::default()
    }
    .with_token(token, TokenPlacement::Query)
}

/// What the client sockets report while they are open.
struct Tally {
    /// Pings received, per socket.
    pings: Vec<AtomicU32>,
    /// Sockets whose stream has not ended.
    open: AtomicU64,
}

impl Tally {
    fn new(count: usize) -> Self {
        Tally {
            pings: (0..count).map(|_| AtomicU32::new(0)).collect(),
            open: AtomicU64::new(0),
        }
    }

    /// The fewest pings any socket received, and the sum.
    fn pings(&self) -> (u32, u64) {
        self.pings.iter().fold((u32::MAX, 0), |(min, sum), p| {
            let p = p.load(Ordering::Relaxed);
            (min.min(p), sum + u64::from(p))
        })
    }
}

/// The source address of client socket `index`: 127.0.0.2, 127.0.0.3, ... (Linux routes all of
/// 127/8 to the loopback interface).
fn source_address(index: u64) -> Ipv4Addr {
    let n = u32::try_from(2 + index / SOCKETS_PER_SOURCE_ADDRESS).unwrap();
    Ipv4Addr::from(u32::from(Ipv4Addr::new(127, 0, 0, 0)) + n)
}

/// Opens an idle socket from `source` to `url`: a raw tokio-tungstenite client with a small
/// read buffer, answering pings (tungstenite replies while the stream is read).
async fn open_socket(
    server: SocketAddr,
    source: Ipv4Addr,
    url: &str,
) -> Result<tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>, String> {
    let socket = tokio::net::TcpSocket::new_v4().map_err(|e| e.to_string())?;
    socket.set_reuseaddr(true).map_err(|e| e.to_string())?;
    socket
        .bind(SocketAddr::V4(SocketAddrV4::new(source, 0)))
        .map_err(|e| format!("bind {source}: {e}"))?;
    let stream = socket.connect(server).await.map_err(|e| e.to_string())?;
    let config = WebSocketConfig::default()
        .read_buffer_size(CLIENT_READ_BUFFER)
        .write_buffer_size(0);
    let (socket, _) = tokio_tungstenite::client_async_with_config(url, stream, Some(config))
        .await
        .map_err(|e| e.to_string())?;
    Ok(socket)
}

/// Opens `count` idle sockets on the first sessions; each is read (so pings are answered and
/// counted) until its task is aborted. Even ones are protocol-2 clients with a token, odd ones
/// Flutter IDEs without one.
async fn open_idle(
    setup: &Setup,
    sockets: std::ops::Range<u64>,
    tally: &Arc<Tally>,
    tasks: &mut JoinSet<()>,
) -> Duration {
    let started = Instant::now();
    let server: SocketAddr = setup
        .front_door
        .trim_start_matches("http://")
        .parse()
        .unwrap();
    let ws_base = setup.front_door.replacen("http://", "ws://", 1);
    let gate = Arc::new(Semaphore::new(CONNECT_CONCURRENCY));
    let (opened, mut opened_rx) = mpsc::unbounded_channel::<Result<(), String>>();
    let count = sockets.end - sockets.start;
    for i in sockets {
        let permit = Arc::clone(&gate).acquire_owned().await.unwrap();
        let index = usize::try_from(i).unwrap();
        let (token, session) = setup.session(index);
        let url = if i % 2 == 0 {
            format!("{ws_base}/api/v1/ws/{session}?protocol=2&access_token={token}")
        } else {
            format!("{ws_base}/api/v1/ws/{session}")
        };
        let source = source_address(i);
        let opened = opened.clone();
        let tally = Arc::clone(tally);
        tasks.spawn(async move {
            match tokio::time::timeout(PATIENCE, open_socket(server, source, &url)).await {
                Ok(Ok(mut socket)) => {
                    drop(permit);
                    tally.open.fetch_add(1, Ordering::Relaxed);
                    let _ = opened.send(Ok(()));
                    while let Some(Ok(message)) = socket.next().await {
                        if matches!(message, Message::Ping(_)) {
                            tally.pings[index].fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    tally.open.fetch_sub(1, Ordering::Relaxed);
                }
                Ok(Err(error)) => {
                    let _ = opened.send(Err(error));
                }
                Err(_) => {
                    let _ = opened.send(Err("connect timed out".to_owned()));
                }
            }
        });
    }
    for _ in 0..count {
        let result = tokio::time::timeout(PATIENCE, opened_rx.recv()).await;
        match result {
            Ok(Some(Ok(()))) => {}
            other => panic!("an idle socket did not open: {other:?}"),
        }
    }
    started.elapsed()
}

/// Waits until every socket received at least `pings` pings (or the patience ends): the
/// fewest any socket received, the sum, and the wait.
async fn await_pings(tally: &Tally, pings: u32, heartbeat: Duration) -> (u32, u64, Duration) {
    let started = Instant::now();
    let deadline = started + heartbeat * (pings + 2) + Duration::from_secs(10);
    loop {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let (min, sum) = tally.pings();
        if min >= pings || Instant::now() >= deadline {
            return (min, sum, started.elapsed());
        }
    }
}

/// One turn on `client`: the number of frames until `turn_finished`.
async fn turn(mut client: Protocol2Client, text: String) -> (Protocol2Client, usize) {
    client
        .send_json(
            &json!({"type": "user_message", "content": text, "role": "user",
                           "agent_type": "coder"}),
        )
        .await
        .unwrap();
    let frames = client
        .collect_until("turn_finished", |f| f.kind() == "turn_finished")
        .await
        .unwrap();
    assert!(
        frames.iter().any(P2Frame::is_final_text),
        "the turn answered: {:?}",
        frames.last()
    );
    (client, frames.len())
}

async fn measure(setup: &Setup, pid: u32, sizes: &Sizes, limit: u64, kernel: &str) -> String {
    let http = reqwest::Client::new();
    let gateway = setup.gateway.as_str();
    let sockets = sizes.sockets;
    let rate_sockets = sizes.rate_sockets;
    let warm_index = usize::try_from(sockets + rate_sockets).unwrap();

    // Warm-up: every lazy part of the stack (pools, prepared statements, the JWKS) is touched
    // once before memory is measured.
    let (token, session) = setup.session(warm_index);
    let mut warm = Protocol2Client::connect(&setup.front_door, session, p2_options(token))
        .await
        .unwrap();
    warm.wait_for_type("session_info").await.unwrap();
    let (warm, _) = turn(warm, "::reply warm up".to_owned()).await;
    drop(warm);
    settle(&http, gateway, 0).await;

    let (rss_before, _) = memory_kib(pid);
    let tally = Arc::new(Tally::new(usize::try_from(sockets).unwrap()));
    // In two halves: the second half's RSS growth is the cost of one more socket, without
    // what the first sockets brought once (the runtime's SQLite page cache, allocator pools).
    let half = sockets / 2;
    let mut idle = JoinSet::new();
    let mut connect_time = open_idle(setup, 0..half, &tally, &mut idle).await;
    settle(&http, gateway, half).await;
    let (rss_half, _) = memory_kib(pid);
    connect_time += open_idle(setup, half..sockets, &tally, &mut idle).await;
    settle(&http, gateway, sockets).await;
    let (rss_with, hwm_with) = memory_kib(pid);

    // Heartbeats: two pings each (see the module docs), the child's CPU meanwhile.
    let (_, pings_before) = tally.pings();
    let heartbeat_cpu = CpuMeter::start(pid);
    let (min_pings, pings_sum, heartbeat_wait) = await_pings(&tally, 2, sizes.heartbeat).await;
    let heartbeat_cpu = heartbeat_cpu.stop();
    let open_after_heartbeats = tally.open.load(Ordering::Relaxed);
    let active_after_heartbeats = active_sockets(&http, gateway).await;
    let (rss_heartbeats, _) = memory_kib(pid);
    let pings_during = usize::try_from(pings_sum.saturating_sub(pings_before)).unwrap();

    drop(idle);
    settle(&http, gateway, 0).await;
    let (rss_after, _) = memory_kib(pid);

    // Relay throughput.
    let mut clients = Vec::new();
    for i in 0..rate_sockets {
        let (token, session) = setup.session(usize::try_from(sockets + i).unwrap());
        let mut client = Protocol2Client::connect(&setup.front_door, session, p2_options(token))
            .await
            .unwrap();
        client.wait_for_type("session_info").await.unwrap();
        clients.push(client);
    }
    let text = format!(
        "::reply {}",
        (1..=sizes.words)
            .map(|i| format!("w{i}"))
            .collect::<Vec<_>>()
            .join(" ")
    );
    let mut frames = 0usize;
    let mut elapsed = Duration::ZERO;
    let mut round_rates = Vec::new();
    let cpu = CpuMeter::start(pid);
    for _ in 0..sizes.rounds {
        let started = Instant::now();
        let mut turns = JoinSet::new();
        for client in clients.drain(..) {
            turns.spawn(turn(client, text.clone()));
        }
        let mut round_frames = 0;
        while let Some(done) = turns.join_next().await {
            let (client, count) = done.unwrap();
            round_frames += count;
            clients.push(client);
        }
        let took = started.elapsed();
        round_rates.push(round_frames as f64 / took.as_secs_f64());
        frames += round_frames;
        elapsed += took;
    }
    let relay_cpu = cpu.stop();
    let (_, hwm_end) = memory_kib(pid);

    let mib = |kib: u64| kib as f64 / 1024.0;
    let per_socket = if sockets == 0 {
        0.0
    } else {
        rss_with.saturating_sub(rss_before) as f64 / sockets as f64
    };
    let marginal = if sockets > half {
        rss_with.saturating_sub(rss_half) as f64 / (sockets - half) as f64
    } else {
        0.0
    };
    // What 100,000 sockets would take at the second half's cost per socket.
    let projected = rss_with as f64 + 100_000u64.saturating_sub(sockets) as f64 * marginal;
    let rates = round_rates
        .iter()
        .map(|r| format!("{r:.0}"))
        .collect::<Vec<_>>()
        .join(", ");
    let users = setup.sessions[..usize::try_from(sockets).unwrap()]
        .last()
        .map_or(0, |(user, _)| user + 1);
    let sources = if sockets == 0 {
        0
    } else {
        (sockets - 1) / SOCKETS_PER_SOURCE_ADDRESS + 1
    };
    let mut out = String::new();
    out.push_str(&format!(
        "\nGateway WebSocket benchmark on {} (server child: auth + llm-proxy mock + \
         agent-runtime SQLite + gateway behind the front door, ws_auth=session)\n  kernel: \
         {kernel}; open-file limit {limit}\n",
        machine_summary()
    ));
    let rows = [
        (
            "idle sockets",
            format!(
                "{sockets} ({} protocol-2 with a token, {} Flutter by session id; {users} \
                 users; {sources} source addresses)",
                sockets.div_ceil(2),
                sockets / 2
            ),
        ),
        (
            "connect time",
            format!(
                "{:.2} s ({:.0} sockets/s)",
                connect_time.as_secs_f64(),
                sockets as f64 / connect_time.as_secs_f64().max(1e-9)
            ),
        ),
        ("server RSS before", format!("{:.1} MiB", mib(rss_before))),
        (
            "server RSS with sockets",
            format!("{:.1} MiB", mib(rss_with)),
        ),
        ("RSS per idle socket", format!("{per_socket:.2} KiB")),
        (
            "RSS per socket, 2nd half",
            format!(
                "{marginal:.2} KiB ({:.1} MiB at {half} sockets; 100,000 sockets would take \
                 {:.0} MiB)",
                mib(rss_half),
                mib(projected as u64)
            ),
        ),
        (
            "heartbeats",
            format!(
                "every {} s; after {:.1} s every socket had >= {min_pings} pings ({pings_sum} \
                 in all); {open_after_heartbeats} client sockets open, gateway reports \
                 {active_after_heartbeats}",
                sizes.heartbeat.as_secs(),
                heartbeat_wait.as_secs_f64()
            ),
        ),
        (
            "server RSS after heartbeats",
            format!("{:.1} MiB", mib(rss_heartbeats)),
        ),
        (
            "server CPU per ping",
            format!(
                "{} (whole process while idle, over {pings_during} pings)",
                cpu_per_unit(heartbeat_cpu, pings_during)
            ),
        ),
        (
            "server RSS after close",
            format!("{:.1} MiB", mib(rss_after)),
        ),
        (
            "server peak RSS (VmHWM)",
            format!("{:.1} MiB", mib(hwm_with.max(hwm_end))),
        ),
        (
            "relay sockets x rounds",
            format!(
                "{rate_sockets} x {} turns of {} tokens",
                sizes.rounds, sizes.words
            ),
        ),
        ("frames relayed", format!("{frames}")),
        ("relay time", format!("{:.2} s", elapsed.as_secs_f64())),
        (
            "frames/s",
            format!(
                "{:.0} (per round: {rates})",
                frames as f64 / elapsed.as_secs_f64().max(1e-9)
            ),
        ),
        (
            "server CPU per frame",
            format!(
                "{} (whole turns: runtime, mock model and gateway)",
                cpu_per_unit(relay_cpu, frames)
            ),
        ),
    ];
    for (name, value) in rows {
        out.push_str(&format!("  {name:<28} {value}\n"));
    }
    assert_eq!(
        (
            min_pings >= 2,
            open_after_heartbeats,
            active_after_heartbeats
        ),
        (true, sockets, sockets),
        "heartbeats were not kept on every socket:\n{out}"
    );
    out
}
