//! WebSocket benchmark of the gateway: memory per idle socket and frames relayed per second.
//!
//! ```sh
//! ulimit -n 20000 && cargo bench -p codelab-stack --bench sockets
//! ```
//!
//! The binary plays two roles. Run by cargo it is the client: it starts itself again as a child
//! process with `GATEWAY_BENCH_ROLE=server`, which serves the whole stack in process (auth
//! service, LLM proxy with the mock model, agent runtime on SQLite, gateway with
//! `GATEWAY__WS_AUTH=off`) and prints the gateway's URL. The client then measures the child:
//!
//! 1. RSS (`VmRSS` of `/proc/<pid>/status`) before and after opening `BENCH_SOCKETS` (10,000)
//!    idle sockets, each on its own session as IDEs are: RSS per socket;
//! 2. frames per second relayed to `BENCH_RATE_SOCKETS` (32) protocol-2 sockets, each running
//!    `BENCH_ROUNDS` (3) turns whose mock reply streams `BENCH_WORDS` (2,000) tokens without
//!    delay, and the child's user + system CPU per relayed frame over those rounds
//!    (`/proc/<pid>/stat`; the whole turn's work: runtime, mock model and gateway).
//!
//! Every socket costs a file descriptor in each process, so the soft limit must exceed the
//! socket count (the command above raises it for both, the child inherits it).
#![expect(
    clippy::unwrap_used,
    reason = "a benchmark that cannot unwrap has failed: the panic is the report"
)]

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use codelab_gateway::config::WsAuthMode;
use codelab_testkit::bench::{CpuMeter, cpu_per_unit, env_u64, machine_summary, status_kib};
use codelab_testkit::ide_clients::{P2Frame, Protocol2Client, Protocol2Options};
use futures_util::StreamExt;
use serde_json::json;
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinSet;

/// Selects the child role.
const ROLE_ENV: &str = "GATEWAY_BENCH_ROLE";
/// What the child prints before the URL.
const URL_LINE: &str = "GATEWAY_URL=";
/// Descriptors each process needs besides the sockets (listeners, databases, pools, stdio).
const FD_HEADROOM: u64 = 256;
/// Connections opened at once.
const CONNECT_CONCURRENCY: usize = 64;
/// Bound of every wait of the benchmark.
const PATIENCE: Duration = Duration::from_secs(120);

fn main() {
    if std::env::var(ROLE_ENV).as_deref() == Ok("server") {
        server();
    } else {
        client();
    }
}

// ---------------------------------------------------------------------------------------------
// Child: the stack
// ---------------------------------------------------------------------------------------------

fn server() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let stack = codelab_stack::Stack::builder()
            .short_llm_timeouts()
            .gateway_config(|config| {
                config.request_timeout = 10.0;
                // IDEs on their own machines: no token, sessions created on first use, no
                // per-socket message limit in the way of the measurement.
                config.ws_auth = Some(WsAuthMode::Off);
                config.ws_max_messages_per_second = 0;
                // Every socket is the development user's: room for all of them.
                config.ws_max_sockets_per_user = usize::MAX;
                config.agent_stream_timeout = 120.0;
            })
            .start()
            .await
            .unwrap();
        println!("{URL_LINE}{}", stack.gateway.as_ref().unwrap().url);
        std::io::stdout().flush().unwrap();
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

/// The soft limit on open files (`Max open files` of `/proc/self/limits`).
fn open_files_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

/// `VmRSS` and `VmHWM` of a process, in KiB.
fn memory_kib(pid: u32) -> (u64, u64) {
    (
        status_kib(pid, "VmRSS:").unwrap(),
        status_kib(pid, "VmHWM:").unwrap(),
    )
}

fn client() {
    let mut sockets = env_u64("BENCH_SOCKETS", 10_000);
    let rate_sockets = env_u64("BENCH_RATE_SOCKETS", 32);
    let words = env_u64("BENCH_WORDS", 2_000);
    let rounds = env_u64("BENCH_ROUNDS", 3);

    match open_files_limit() {
        Some(limit) if limit < sockets + rate_sockets + FD_HEADROOM => {
            let fit = limit.saturating_sub(rate_sockets + FD_HEADROOM);
            eprintln!(
                "the soft limit on open files is {limit}: too low for {sockets} sockets (each \
                 costs a descriptor in the client and in the server). Raise it first, e.g. \
                 `ulimit -n 20000 && cargo bench -p codelab-stack --bench sockets`. Measuring \
                 {fit} sockets instead."
            );
            sockets = fit;
        }
        Some(_) => {}
        None => eprintln!("cannot read /proc/self/limits; assuming enough descriptors"),
    }

    let exe = std::env::current_exe().unwrap();
    let mut child = Command::new(exe)
        .env(ROLE_ENV, "server")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let pid = child.id();
    let stdout = child.stdout.take().unwrap();
    let url = BufReader::new(stdout)
        .lines()
        .map_while(Result::ok)
        .find_map(|line| line.strip_prefix(URL_LINE).map(str::to_owned))
        .expect("the server child printed its URL");

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let report = runtime.block_on(measure(&url, pid, sockets, rate_sockets, words, rounds));
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

fn ws_url(url: &str, session: &str) -> String {
    format!(
        "{}/api/v1/ws/{session}",
        url.replacen("http://", "ws://", 1)
    )
}

fn p2_options() -> Protocol2Options {
    Protocol2Options {
        timeout: PATIENCE,
        ..Protocol2Options::default()
    }
}

/// Opens `count` idle sockets on sessions `bench-idle-<i>`; each is read (so pings are
/// answered) until its task is aborted.
async fn open_idle(url: &str, count: u64) -> (JoinSet<()>, Duration) {
    let started = Instant::now();
    let gate = Arc::new(Semaphore::new(CONNECT_CONCURRENCY));
    let (opened, mut opened_rx) = mpsc::unbounded_channel::<Result<(), String>>();
    let mut tasks = JoinSet::new();
    for i in 0..count {
        let permit = Arc::clone(&gate).acquire_owned().await.unwrap();
        let target = ws_url(url, &format!("bench-idle-{i}"));
        let opened = opened.clone();
        tasks.spawn(async move {
            let connect = tokio_tungstenite::connect_async(target);
            match tokio::time::timeout(PATIENCE, connect).await {
                Ok(Ok((mut socket, _))) => {
                    drop(permit);
                    let _ = opened.send(Ok(()));
                    while let Some(Ok(_)) = socket.next().await {}
                }
                Ok(Err(error)) => {
                    let _ = opened.send(Err(error.to_string()));
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
    (tasks, started.elapsed())
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

async fn measure(
    url: &str,
    pid: u32,
    sockets: u64,
    rate_sockets: u64,
    words: u64,
    rounds: u64,
) -> String {
    let http = reqwest::Client::new();

    // Warm-up: every lazy part of the stack (pools, prepared statements, the JWKS is not
    // needed in off mode) is touched once before memory is measured.
    let mut warm = Protocol2Client::connect(url, "bench-warm-up", p2_options())
        .await
        .unwrap();
    warm.wait_for_type("session_info").await.unwrap();
    let (warm, _) = turn(warm, "::reply warm up".to_owned()).await;
    drop(warm);
    settle(&http, url, 0).await;

    let (rss_before, _) = memory_kib(pid);
    let (idle, connect_time) = open_idle(url, sockets).await;
    settle(&http, url, sockets).await;
    let (rss_with, hwm_with) = memory_kib(pid);
    drop(idle);
    settle(&http, url, 0).await;
    let (rss_after, _) = memory_kib(pid);

    // Relay throughput.
    let mut clients = Vec::new();
    for i in 0..rate_sockets {
        let mut client = Protocol2Client::connect(url, &format!("bench-rate-{i}"), p2_options())
            .await
            .unwrap();
        client.wait_for_type("session_info").await.unwrap();
        clients.push(client);
    }
    let text = format!(
        "::reply {}",
        (1..=words)
            .map(|i| format!("w{i}"))
            .collect::<Vec<_>>()
            .join(" ")
    );
    let mut frames = 0usize;
    let mut elapsed = Duration::ZERO;
    let mut round_rates = Vec::new();
    let cpu = CpuMeter::start(pid);
    for _ in 0..rounds {
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
    let rates = round_rates
        .iter()
        .map(|r| format!("{r:.0}"))
        .collect::<Vec<_>>()
        .join(", ");
    let mut out = String::new();
    out.push_str(&format!(
        "\nGateway WebSocket benchmark on {} (server child: auth + llm-proxy mock + \
         agent-runtime SQLite + gateway, ws_auth=off)\n",
        machine_summary()
    ));
    let rows = [
        ("idle sockets", format!("{sockets}")),
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
        ("RSS per idle socket", format!("{per_socket:.1} KiB")),
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
            format!("{rate_sockets} x {rounds} turns of {words} tokens"),
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
        out.push_str(&format!("  {name:<26} {value}\n"));
    }
    out
}
