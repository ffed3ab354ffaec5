//! Added latency and throughput of the LLM proxy, measured side by side in one run.
//!
//! A fake OpenAI upstream streams a 32-token answer with no delay. The same streaming request is
//! sent directly to it and through `codelab serve llm-proxy` (a separate process, so its RSS is
//! its own), at concurrency 1 and 64, in alternating rounds so machine noise hits both sides.
//! Reports time to first token and whole-stream latency (p50/p99), the proxy's added latency,
//! requests/s and the proxy's RSS.
//!
//! Run: `cargo bench -p codelab --bench llm_proxy` (`BENCH_SECONDS` sets each round's length).
#![allow(
    clippy::disallowed_methods,
    reason = "tests own their clock, ids and tasks"
)]

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use codelab_testkit::{FakeFlavor, FakeLlm, FakeReply};
use futures_util::StreamExt;
use serde_json::json;

const KEY: &str = "bench-internal-key-0123456789";
const TOKENS: usize = 32;
const ROUNDS: usize = 3;

#[derive(Default)]
struct Samples {
    ttft: Vec<Duration>,
    total: Vec<Duration>,
    requests: usize,
    elapsed: Duration,
    errors: usize,
}

impl Samples {
    fn merge(&mut self, other: Samples) {
        self.ttft.extend(other.ttft);
        self.total.extend(other.total);
        self.requests += other.requests;
        self.elapsed += other.elapsed;
        self.errors += other.errors;
    }
}

fn percentile(values: &mut [Duration], p: f64) -> Duration {
    if values.is_empty() {
        return Duration::ZERO;
    }
    values.sort_unstable();
    let rank = ((p / 100.0) * (values.len() - 1) as f64).round() as usize;
    values[rank.min(values.len() - 1)]
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

fn rss_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}

async fn start_proxy(upstream: &str, port: u16) -> ProxyProcess {
    let dir = tempfile::tempdir().expect("temp dir");
    let table = dir.path().join("models.yaml");
    std::fs::write(
        &table,
        format!("model_list:\n  - model_name: bench\n    litellm_params:\n      model: openai/gpt-4o\n      api_base: {upstream}\n      api_key: sk-bench\n"),
    )
    .expect("write table");
    let child = Command::new(env!("CARGO_BIN_EXE_codelab"))
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

async fn one_request(
    client: &reqwest::Client,
    url: &str,
    key: Option<&str>,
    model: &str,
) -> Option<(Duration, Duration)> {
    let started = Instant::now();
    let mut request = client.post(url).json(&json!({
        "model": model,
        "stream": true,
        "messages": [{"role": "user", "content": "benchmark"}]
    }));
    if let Some(key) = key {
        request = request.header("X-Internal-Auth", key);
    }
    let response = request.send().await.ok()?;
    if !response.status().is_success() {
        return None;
    }
    let mut body = response.bytes_stream();
    let mut seen = Vec::new();
    let mut ttft = None;
    while let Some(chunk) = body.next().await {
        let chunk = chunk.ok()?;
        seen.extend_from_slice(&chunk);
        if ttft.is_none() && seen.windows(4).any(|w| w == b"tok0") {
            ttft = Some(started.elapsed());
        }
    }
    if !seen.ends_with(b"data: [DONE]\n\n") {
        return None;
    }
    Some((ttft?, started.elapsed()))
}

async fn run_round(
    client: &reqwest::Client,
    url: &str,
    key: Option<&'static str>,
    model: &'static str,
    concurrency: usize,
    length: Duration,
) -> Samples {
    let url = Arc::new(url.to_owned());
    let started = Instant::now();
    let deadline = started + length;
    let mut workers = Vec::new();
    for _ in 0..concurrency {
        let client = client.clone();
        let url = url.clone();
        workers.push(tokio::spawn(async move {
            let mut samples = Samples::default();
            while Instant::now() < deadline {
                match one_request(&client, &url, key, model).await {
                    Some((ttft, total)) => {
                        samples.ttft.push(ttft);
                        samples.total.push(total);
                        samples.requests += 1;
                    }
                    None => samples.errors += 1,
                }
            }
            samples
        }));
    }
    let mut all = Samples::default();
    for worker in workers {
        all.merge(worker.await.expect("worker"));
    }
    all.elapsed = started.elapsed();
    all
}

/// CPU time (user + system) the process has used, from /proc/PID/stat.
fn cpu_seconds(pid: u32) -> f64 {
    let ticks_per_second = 100.0; // USER_HZ on Linux
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
            let rest = s.rsplit_once(')')?.1;
            let fields: Vec<&str> = rest.split_whitespace().collect();
            let utime: f64 = fields.get(11)?.parse().ok()?;
            let stime: f64 = fields.get(12)?.parse().ok()?;
            Some((utime + stime) / ticks_per_second)
        })
        .unwrap_or(0.0)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

#[tokio::main]
async fn main() {
    if std::env::args().any(|a| a == "--list") {
        println!("llm_proxy: benchmark");
        return;
    }
    let seconds: f64 = std::env::var("BENCH_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3.0);
    let length = Duration::from_secs_f64(seconds);
    let fake = FakeLlm::start(FakeFlavor::OpenAi).await;
    let tokens: Vec<String> = (0..TOKENS).map(|i| format!("tok{i} ")).collect();
    let refs: Vec<&str> = tokens.iter().map(String::as_str).collect();
    fake.set_default_reply(FakeReply::text(&refs).with_usage(20, TOKENS as u64));

    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port")
        .port();
    let proxy = start_proxy(&fake.openai_base(), port).await;
    let pid = proxy.child.id();
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(256)
        .tcp_nodelay(true)
        .build()
        .expect("client");
    let direct_url = format!("{}/chat/completions", fake.openai_base());
    let proxy_url = format!("http://127.0.0.1:{port}/v1/chat/completions");

    // Warm both paths (connection pools, allocator).
    run_round(
        &client,
        &direct_url,
        None,
        "gpt-4o",
        4,
        Duration::from_millis(500),
    )
    .await;
    run_round(
        &client,
        &proxy_url,
        Some(KEY),
        "bench",
        4,
        Duration::from_millis(500),
    )
    .await;
    let idle_rss = rss_kib(pid, "VmRSS:");

    println!(
        "LLM proxy benchmark: {TOKENS}-token streamed answers, {ROUNDS} alternating rounds of {seconds}s per side"
    );
    println!(
        "proxy RSS idle after warm-up: {:.1} MiB",
        idle_rss as f64 / 1024.0
    );
    for concurrency in [1usize, 64] {
        let mut direct = Samples::default();
        let mut proxied = Samples::default();
        let mut proxy_cpu = 0.0;
        for _ in 0..ROUNDS {
            direct
                .merge(run_round(&client, &direct_url, None, "gpt-4o", concurrency, length).await);
            let before = cpu_seconds(pid);
            proxied.merge(
                run_round(&client, &proxy_url, Some(KEY), "bench", concurrency, length).await,
            );
            proxy_cpu += cpu_seconds(pid) - before;
        }
        let rss = rss_kib(pid, "VmRSS:");
        println!();
        println!("concurrency {concurrency}");
        println!(
            "  {:<8} {:>9} {:>9} {:>9} {:>9} {:>10} {:>7}",
            "path", "ttft p50", "ttft p99", "full p50", "full p99", "req/s", "errors"
        );
        let mut rows = Vec::new();
        for (name, samples) in [("direct", &mut direct), ("proxy", &mut proxied)] {
            let row = (
                percentile(&mut samples.ttft, 50.0),
                percentile(&mut samples.ttft, 99.0),
                percentile(&mut samples.total, 50.0),
                percentile(&mut samples.total, 99.0),
                samples.requests as f64 / samples.elapsed.as_secs_f64(),
            );
            println!(
                "  {:<8} {:>7.3}ms {:>7.3}ms {:>7.3}ms {:>7.3}ms {:>10.0} {:>7}",
                name,
                ms(row.0),
                ms(row.1),
                ms(row.2),
                ms(row.3),
                row.4,
                samples.errors
            );
            rows.push(row);
        }
        let (d, p) = (rows[0], rows[1]);
        println!(
            "  added by the proxy: ttft p50 {:+.3}ms p99 {:+.3}ms, full stream p50 {:+.3}ms p99 {:+.3}ms; throughput ratio proxy/direct {:.2}",
            ms(p.0) - ms(d.0),
            ms(p.1) - ms(d.1),
            ms(p.2) - ms(d.2),
            ms(p.3) - ms(d.3),
            p.4 / d.4
        );
        let cpu_per_request = proxy_cpu / proxied.requests.max(1) as f64;
        println!(
            "  proxy CPU {:.0}us per streamed request (one proxy core relays {:.0} req/s); it used {:.0}% of a core here",
            cpu_per_request * 1e6,
            1.0 / cpu_per_request.max(1e-9),
            100.0 * proxy_cpu / proxied.elapsed.as_secs_f64().max(1e-9)
        );
        println!(
            "  proxy RSS {:.1} MiB (peak {:.1} MiB)",
            rss as f64 / 1024.0,
            rss_kib(pid, "VmHWM:") as f64 / 1024.0
        );
    }
}
