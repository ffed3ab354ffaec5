//! The LLM proxy's cost, measured side by side in one run (docs/benchmarks.md).
//!
//! A fake OpenAI upstream answers with no delay: non-streamed requests with one JSON body,
//! streamed ones with a 20-chunk answer. The same load is sent directly to it, through
//! `codelab serve llm-proxy` (a separate process routing through a model table, so its CPU and
//! RSS are its own) and, when `BENCH_COMPARE_URL` is set, through another OpenAI-compatible
//! proxy pointed at the same fake (a LiteLLM the user started, say). Each side gets the same
//! alternating rounds at concurrency 1 and 64, so machine noise hits all of them.
//!
//! Printed per scenario: p50/p99 latency of the whole answer, what each proxy adds to the
//! direct p50/p99, requests/s, errors, and the proxy process's user + system CPU per request
//! (`/proc/<pid>/stat` over its rounds) and RSS.
//!
//! Run: `cargo bench -p codelab --bench llm_proxy`. Settings (environment):
//! - `BENCH_SECONDS` (3): seconds of load per side and scenario, split into 3 rounds;
//! - `BENCH_UPSTREAM_PORT`: serve the fake upstream on this fixed port of 127.0.0.1 (through a
//!   TCP relay, for every side alike), so another proxy can be configured before the run;
//! - `BENCH_COMPARE_URL` (`http://127.0.0.1:4000/v1`), `BENCH_COMPARE_MODEL` (`bench`),
//!   `BENCH_COMPARE_KEY` (sent as a bearer token), `BENCH_COMPARE_PID` (its CPU and RSS),
//!   `BENCH_COMPARE_NAME` (`compare`), `BENCH_COMPARE_WAIT` (60 s to wait for its first answer);
//! - `BENCH_ONLY` (`json` or `stream`) and `BENCH_CONCURRENCY` (`1` or `64`, with `BENCH_ONLY`):
//!   measure one scenario only (to profile it);
//! - `BENCH_PROXY_WORKERS`: the proxy's tokio worker threads (`TOKIO_WORKER_THREADS`);
//! - `BENCH_PROXY_BIN`: run this `codelab` binary as the proxy instead of the one just built
//!   (a copy of an earlier build, to compare before and after in one run).
#![allow(
    clippy::disallowed_methods,
    reason = "tests own their clock, ids and tasks"
)]

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use codelab_testkit::bench::{
    CpuMeter, Latencies, Table, added_ms, cpu_per_unit, env_f64, env_u64, machine_summary, mib, ms,
    per_second, status_kib,
};
use codelab_testkit::{FakeFlavor, FakeLlm, FakeReply};
use futures_util::StreamExt;
use serde_json::json;

const KEY: &str = "bench-internal-key-0123456789";
const CHUNKS: usize = 20;
const ROUNDS: u32 = 3;
const CONCURRENCY: [usize; 2] = [1, 64];

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    NonStreamed,
    Streamed,
}

impl Mode {
    /// The name `BENCH_ONLY` selects the mode by.
    fn key(self) -> &'static str {
        match self {
            Mode::NonStreamed => "json",
            Mode::Streamed => "stream",
        }
    }

    fn describe(self) -> String {
        match self {
            Mode::NonStreamed => "non-streamed requests".to_owned(),
            Mode::Streamed => format!("{CHUNKS}-chunk streams"),
        }
    }
}

/// One side of the comparison: where requests go and how they are authenticated.
struct Target {
    name: String,
    url: String,
    model: String,
    header: Option<(&'static str, String)>,
    /// The process serving it, for its CPU and RSS.
    pid: Option<u32>,
}

/// What one side did over its rounds of a scenario.
#[derive(Default)]
struct Run {
    latencies: Latencies,
    requests: usize,
    errors: usize,
    elapsed: Duration,
    cpu: Option<Duration>,
}

impl Run {
    fn merge(&mut self, other: Run) {
        self.latencies.extend(other.latencies);
        self.requests += other.requests;
        self.errors += other.errors;
        self.elapsed += other.elapsed;
        self.cpu = match (self.cpu, other.cpu) {
            (Some(a), Some(b)) => Some(a + b),
            (a, b) => a.or(b),
        };
    }
}

struct ProxyProcess {
    child: Child,
    _dir: tempfile::TempDir,
}

impl Drop for ProxyProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn start_proxy(upstream: &str, port: u16) -> ProxyProcess {
    let dir = tempfile::tempdir().expect("temp dir");
    let table = dir.path().join("models.yaml");
    std::fs::write(
        &table,
        format!("model_list:\n  - model_name: bench\n    litellm_params:\n      model: openai/gpt-4o\n      api_base: {upstream}\n      api_key: sk-bench\n"),
    )
    .expect("write table");
    // Another build of the binary (a baseline kept aside) may be measured instead.
    let binary = std::env::var("BENCH_PROXY_BIN")
        .ok()
        .filter(|path| !path.is_empty())
        .unwrap_or_else(|| env!("CARGO_BIN_EXE_codelab").to_owned());
    let mut command = Command::new(binary);
    // Tokio reads its worker count from `TOKIO_WORKER_THREADS`; given to the proxy only.
    if let Ok(workers) = std::env::var("BENCH_PROXY_WORKERS") {
        command.env("TOKIO_WORKER_THREADS", workers);
    }
    let child = command
        .args([
            "serve",
            "llm-proxy",
            "--host",
            "127.0.0.1",
            "--port",
            &port.to_string(),
        ])
        .env("LLM_PROXY__INTERNAL_API_KEY", KEY)
        .env("LLM_PROXY__CONFIG_FILE", &table)
        .env("LLM_PROXY__MAX_CONCURRENT_REQUESTS", "1000")
        .env("LLM_PROXY__LOG_LEVEL", "warn")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .expect("start codelab serve llm-proxy");
    let process = ProxyProcess { child, _dir: dir };
    let health = format!("http://127.0.0.1:{port}/health");
    for _ in 0..200 {
        if reqwest::get(&health)
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            return process;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the proxy did not become healthy");
}

/// Serves `port` on 127.0.0.1 by relaying every connection to `to` (the fake upstream).
async fn relay(port: u16, to: SocketAddr) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    tokio::spawn(async move {
        loop {
            let Ok((mut inbound, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let _ = inbound.set_nodelay(true);
                if let Ok(mut outbound) = tokio::net::TcpStream::connect(to).await {
                    let _ = outbound.set_nodelay(true);
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                }
            });
        }
    });
    Ok(())
}

/// One request; its whole-answer latency, `None` when it failed.
async fn one_request(client: &reqwest::Client, target: &Target, mode: Mode) -> Option<Duration> {
    let started = Instant::now();
    let mut request = client.post(&target.url).json(&json!({
        "model": target.model,
        "stream": mode == Mode::Streamed,
        "messages": [{"role": "user", "content": "benchmark"}]
    }));
    if let Some((name, value)) = &target.header {
        request = request.header(*name, value);
    }
    let response = request.send().await.ok()?;
    if !response.status().is_success() {
        return None;
    }
    match mode {
        Mode::NonStreamed => {
            let body = response.bytes().await.ok()?;
            let answer: serde_json::Value = serde_json::from_slice(&body).ok()?;
            answer["choices"][0]["message"]["content"].as_str()?;
        }
        Mode::Streamed => {
            let mut body = response.bytes_stream();
            let mut tail = Vec::new();
            while let Some(chunk) = body.next().await {
                // Only the end matters: keep the last bytes, not the whole stream.
                tail.extend_from_slice(&chunk.ok()?);
                let keep = tail.len().saturating_sub(64);
                tail.drain(..keep);
            }
            if !tail.ends_with(b"data: [DONE]\n\n") {
                return None;
            }
        }
    }
    Some(started.elapsed())
}

async fn run_round(
    client: &reqwest::Client,
    target: &Arc<Target>,
    mode: Mode,
    concurrency: usize,
    length: Duration,
) -> Run {
    let cpu = target.pid.map(CpuMeter::start);
    let started = Instant::now();
    let deadline = started + length;
    let workers: Vec<_> = (0..concurrency)
        .map(|_| {
            let client = client.clone();
            let target = Arc::clone(target);
            tokio::spawn(async move {
                let mut run = Run::default();
                while Instant::now() < deadline {
                    match one_request(&client, &target, mode).await {
                        Some(latency) => {
                            run.latencies.push(latency);
                            run.requests += 1;
                        }
                        None => run.errors += 1,
                    }
                }
                run
            })
        })
        .collect();
    let mut all = Run::default();
    for worker in workers {
        all.merge(worker.await.expect("a worker"));
    }
    all.elapsed = started.elapsed();
    all.cpu = cpu.and_then(|meter| meter.stop());
    all
}

/// The compare target from the environment, once it answers; `None` when unset or silent.
async fn compare_target(client: &reqwest::Client, upstream: &str) -> Option<Target> {
    let base = std::env::var("BENCH_COMPARE_URL").ok()?;
    let target = Target {
        name: std::env::var("BENCH_COMPARE_NAME").unwrap_or_else(|_| "compare".to_owned()),
        url: format!("{}/chat/completions", base.trim_end_matches('/')),
        model: std::env::var("BENCH_COMPARE_MODEL").unwrap_or_else(|_| "bench".to_owned()),
        header: std::env::var("BENCH_COMPARE_KEY")
            .ok()
            .map(|key| ("Authorization", format!("Bearer {key}"))),
        pid: std::env::var("BENCH_COMPARE_PID")
            .ok()
            .and_then(|p| p.trim().parse().ok()),
    };
    let wait = Duration::from_secs_f64(env_f64("BENCH_COMPARE_WAIT", 60.0));
    println!(
        "compare: {} at {} (model {}); its upstream must be {upstream} (openai/gpt-4o)",
        target.name, target.url, target.model
    );
    let deadline = Instant::now() + wait;
    loop {
        let ok = one_request(client, &target, Mode::NonStreamed)
            .await
            .is_some()
            && one_request(client, &target, Mode::Streamed).await.is_some();
        if ok {
            return Some(target);
        }
        if Instant::now() >= deadline {
            println!(
                "compare: {} did not answer both a non-streamed and a streamed request within \
                 {:.0} s; measuring without it",
                target.url,
                wait.as_secs_f64()
            );
            return None;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

#[tokio::main]
async fn main() {
    if std::env::args().any(|a| a == "--list") {
        println!("llm_proxy: benchmark");
        return;
    }
    let seconds = env_f64("BENCH_SECONDS", 3.0);
    let round = Duration::from_secs_f64(seconds / f64::from(ROUNDS));
    let fake = FakeLlm::start(FakeFlavor::OpenAi).await;
    let chunks: Vec<String> = (0..CHUNKS).map(|i| format!("tok{i} ")).collect();
    let refs: Vec<&str> = chunks.iter().map(String::as_str).collect();
    fake.set_default_reply(FakeReply::text(&refs).with_usage(20, CHUNKS as u64));

    let upstream = match u16::try_from(env_u64("BENCH_UPSTREAM_PORT", 0)) {
        Ok(port) if port != 0 => {
            relay(port, fake.addr())
                .await
                .expect("BENCH_UPSTREAM_PORT is free on 127.0.0.1");
            format!("http://127.0.0.1:{port}/v1")
        }
        _ => fake.openai_base(),
    };
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port")
        .port();
    let proxy = start_proxy(&upstream, port).await;
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(256)
        .tcp_nodelay(true)
        .build()
        .expect("client");

    println!();
    println!("LLM proxy benchmark on {}", machine_summary());
    println!("fake OpenAI upstream: {upstream}");
    let mut targets = vec![
        Arc::new(Target {
            name: "direct".to_owned(),
            url: format!("{upstream}/chat/completions"),
            model: "gpt-4o".to_owned(),
            header: None,
            pid: None,
        }),
        Arc::new(Target {
            name: "codelab".to_owned(),
            url: format!("http://127.0.0.1:{port}/v1/chat/completions"),
            model: "bench".to_owned(),
            header: Some(("X-Internal-Auth", KEY.to_owned())),
            pid: Some(proxy.child.id()),
        }),
    ];
    if let Some(compare) = compare_target(&client, &upstream).await {
        targets.push(Arc::new(compare));
    }
    // Warm every path (connection pools, allocators) in both modes.
    for target in &targets {
        for mode in [Mode::NonStreamed, Mode::Streamed] {
            run_round(&client, target, mode, 4, Duration::from_millis(300)).await;
        }
    }
    let idle: Vec<String> = targets
        .iter()
        .map(|t| match t.pid {
            Some(pid) => mib(status_kib(pid, "VmRSS:")),
            None => "—".to_owned(),
        })
        .collect();
    println!(
        "{seconds} s of load per side and scenario in {ROUNDS} alternating rounds; \
         RSS after warm-up: {}",
        targets
            .iter()
            .zip(&idle)
            .skip(1)
            .map(|(t, rss)| format!("{} {rss}", t.name))
            .collect::<Vec<_>>()
            .join(", ")
    );

    let only = std::env::var("BENCH_ONLY").unwrap_or_default();
    let modes = [Mode::NonStreamed, Mode::Streamed]
        .into_iter()
        .filter(|mode| only.is_empty() || only == mode.key());
    let concurrencies = CONCURRENCY.into_iter().filter(|c| {
        only.is_empty() || std::env::var("BENCH_CONCURRENCY").map_or(true, |v| v == c.to_string())
    });
    for mode in modes {
        for concurrency in concurrencies.clone() {
            let mut runs: Vec<Run> = targets.iter().map(|_| Run::default()).collect();
            for _ in 0..ROUNDS {
                for (target, run) in targets.iter().zip(&mut runs) {
                    run.merge(run_round(&client, target, mode, concurrency, round).await);
                }
            }
            println!();
            println!("{}, concurrency {concurrency}", mode.describe());
            report(&targets, &mut runs);
        }
    }
    drop(proxy);
}

fn report(targets: &[Arc<Target>], runs: &mut [Run]) {
    let p50: Vec<Duration> = runs
        .iter_mut()
        .map(|r| r.latencies.percentile(50.0))
        .collect();
    let p99: Vec<Duration> = runs
        .iter_mut()
        .map(|r| r.latencies.percentile(99.0))
        .collect();
    let mut table =
        Table::new(std::iter::once(String::new()).chain(targets.iter().map(|t| t.name.clone())));
    let side = |i: usize, f: &dyn Fn(usize) -> String| if i == 0 { "—".to_owned() } else { f(i) };
    let columns = 0..targets.len();
    table.row("p50", p50.iter().map(|d| ms(*d)));
    table.row("p99", p99.iter().map(|d| ms(*d)));
    table.row(
        "added p50 (vs direct)",
        columns
            .clone()
            .map(|i| side(i, &|i| added_ms(p50[i], p50[0]))),
    );
    table.row(
        "added p99 (vs direct)",
        columns
            .clone()
            .map(|i| side(i, &|i| added_ms(p99[i], p99[0]))),
    );
    table.row(
        "requests/s",
        runs.iter().map(|r| per_second(r.requests, r.elapsed)),
    );
    table.row(
        "errors / requests",
        runs.iter()
            .map(|r| format!("{} / {}", r.errors, r.requests)),
    );
    table.row(
        "proxy CPU per request (user+sys)",
        columns
            .clone()
            .map(|i| side(i, &|i| cpu_per_unit(runs[i].cpu, runs[i].requests))),
    );
    table.row(
        "proxy CPU, % of one core",
        columns.clone().map(|i| {
            side(i, &|i| match runs[i].cpu {
                Some(cpu) if !runs[i].elapsed.is_zero() => {
                    format!(
                        "{:.0}%",
                        100.0 * cpu.as_secs_f64() / runs[i].elapsed.as_secs_f64()
                    )
                }
                _ => "n/a".to_owned(),
            })
        }),
    );
    table.row(
        "proxy RSS now (peak)",
        targets.iter().map(|t| match t.pid {
            Some(pid) => format!(
                "{} ({})",
                mib(status_kib(pid, "VmRSS:")),
                mib(status_kib(pid, "VmHWM:"))
            ),
            None => "—".to_owned(),
        }),
    );
    table.print();
}
