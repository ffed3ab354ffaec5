//! The `codelab` binary as users run it: `serve`, `up`, `config show`, `healthcheck`.

use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::common::cli::{Running, Up, codelab_with, run, wait_healthy};
use crate::common::processes::free_port;

const KEY: &str = "cli-test-internal-key-0123456789";

fn serve_proxy(env: &[(&str, &str)]) -> Running {
    let mut all = vec![
        ("LLM_PROXY__INTERNAL_API_KEY", KEY),
        ("LLM_PROXY__HOST", "127.0.0.1"),
    ];
    all.extend_from_slice(env);
    Running::spawn(codelab_with(&["serve", "llm-proxy"], &all).stdout(Stdio::null()))
}

/// `codelab <args>` with `env`, which must succeed: its stdout.
fn run_ok(args: &[&str], env: &[(&str, &str)]) -> String {
    let out = run(args, env);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `codelab serve llm-proxy` with `env`, which must refuse to start (exit 1): its stderr.
fn proxy_refuses(env: &[(&str, &str)]) -> String {
    let out = run(&["serve", "llm-proxy"], env);
    assert_eq!(out.status.code(), Some(1));
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[tokio::test]
async fn the_service_port_wins_over_plain_port_and_healthcheck_sees_it() {
    let (own, plain) = (free_port(), free_port());
    let proxy = serve_proxy(&[
        ("LLM_PROXY__PORT", &own.to_string()),
        ("PORT", &plain.to_string()),
    ]);
    let url = format!("http://127.0.0.1:{own}/health");
    wait_healthy(&url).await;
    assert!(
        reqwest::get(format!("http://127.0.0.1:{plain}/health"))
            .await
            .is_err()
    );
    let check = run(&["healthcheck", "--url", &url], &[]);
    assert!(check.status.success());
    assert!(String::from_utf8_lossy(&check.stdout).contains("\"service\":\"llm-proxy\""));
    assert!(proxy.terminate().success());
}

#[tokio::test]
async fn plain_port_is_honoured_when_the_service_port_is_unset() {
    let plain = free_port();
    let proxy = serve_proxy(&[("PORT", &plain.to_string())]);
    wait_healthy(&format!("http://127.0.0.1:{plain}/health")).await;
    drop(proxy);
}

#[test]
fn healthcheck_fails_on_a_dead_url() {
    let url = format!("http://127.0.0.1:{}/health", free_port());
    let check = run(&["healthcheck", "--url", &url, "--timeout", "2"], &[]);
    assert_eq!(check.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&check.stderr).contains("unreachable"));
}

#[test]
fn a_bad_setting_is_named_with_its_source() {
    let stderr = proxy_refuses(&[("LLM_PROXY__MAX_CONCURRENT_REQUESTS", "lots")]);
    assert!(
        stderr.contains("LLM_PROXY__MAX_CONCURRENT_REQUESTS"),
        "{stderr}"
    );
    assert!(stderr.contains("environment"), "{stderr}");

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("codelab.toml");
    std::fs::write(&file, "[llm_proxy]\nrequest_timeout = \"soon\"\n").unwrap();
    let out = run(&["--config", file.to_str().unwrap(), "config", "show"], &[]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("request_timeout") && stderr.contains("codelab.toml"),
        "{stderr}"
    );
}

/// Regression (issue 17's fuzzing): a huge timeout made `Duration::from_secs_f64` panic when a
/// request used it; now it is refused at start with the setting's name.
#[test]
fn a_timeout_beyond_a_day_is_refused_at_start_not_a_panic_later() {
    for value in ["1e300", "86401", "0"] {
        let stderr = proxy_refuses(&[("LLM_PROXY__REQUEST_TIMEOUT", value)]);
        assert!(
            stderr.contains("LLM_PROXY__REQUEST_TIMEOUT") && !stderr.contains("panicked"),
            "{value}: {stderr}"
        );
    }
}

#[test]
fn config_show_layers_sources_and_redacts_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("codelab.toml");
    std::fs::write(
        &file,
        "[llm_proxy]\nmax_retries = 7\nmax_concurrent_requests = 5\n",
    )
    .unwrap();
    let stdout = run_ok(
        &["--config", file.to_str().unwrap(), "config", "show"],
        &[
            (
                "LLM_PROXY__INTERNAL_API_KEY",
                "do-not-print-this-secret-value",
            ),
            ("LLM_PROXY__MAX_RETRIES", "3"),
        ],
    );
    assert!(!stdout.contains("do-not-print-this-secret-value"));
    assert!(
        stdout.contains("internal_api_key = \"[redacted]\""),
        "{stdout}"
    );
    assert!(
        stdout.contains("max_retries = 3"),
        "environment beats the file: {stdout}"
    );
    assert!(
        stdout.contains("max_concurrent_requests = 5"),
        "the file beats defaults: {stdout}"
    );
    assert!(stdout.contains("environment = \"development\""));
}

#[tokio::test]
async fn development_logs_into_a_pipe_carry_no_colour_codes() {
    let port = free_port();
    let mut child = codelab_with(
        &["serve", "llm-proxy"],
        &[
            ("LLM_PROXY__INTERNAL_API_KEY", KEY),
            ("LLM_PROXY__HOST", "127.0.0.1"),
            ("LLM_PROXY__PORT", &port.to_string()),
        ],
    )
    .stdout(Stdio::null())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let proxy = Running(child);
    wait_healthy(&format!("http://127.0.0.1:{port}/health")).await;
    assert!(proxy.terminate().success());
    let mut log = String::new();
    std::io::Read::read_to_string(&mut stderr, &mut log).unwrap();
    // Human-readable lines in development, coloured only on a terminal: a pipe, a file or a
    // log collector gets plain text.
    assert!(log.contains("llm proxy ready"), "{log}");
    assert!(
        !log.contains('\x1b'),
        "colour codes in a piped log: {log:?}"
    );
}

#[tokio::test]
async fn serve_cuts_a_slow_header_client_after_the_configured_timeout() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let port = free_port();
    let proxy = serve_proxy(&[
        ("LLM_PROXY__PORT", &port.to_string()),
        ("HTTP__HEADER_READ_TIMEOUT", "1"),
    ]);
    wait_healthy(&format!("http://127.0.0.1:{port}/health")).await;
    let mut slow = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let started = Instant::now();
    let mut closed = false;
    // One header byte every 250 ms, never finishing the headers.
    for byte in b"GET /health HTTP/1.1\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa" {
        if slow.write_all(&[*byte]).await.is_err() {
            closed = true;
            break;
        }
        let mut buf = [0u8; 256];
        if let Ok(Ok(0) | Err(_)) =
            tokio::time::timeout(Duration::from_millis(250), slow.read(&mut buf)).await
        {
            closed = true;
            break;
        }
    }
    assert!(closed, "the slow client was never disconnected");
    assert!(
        started.elapsed() < Duration::from_secs(6),
        "disconnected after {:?}",
        started.elapsed()
    );
    assert!(proxy.terminate().success());
}

#[test]
fn a_bad_listener_limit_is_named() {
    let stderr = proxy_refuses(&[
        ("HTTP__MAX_CONNECTIONS", "0"),
        ("LLM_PROXY__PORT", &free_port().to_string()),
    ]);
    assert!(stderr.contains("HTTP__MAX_CONNECTIONS"), "{stderr}");
}

#[test]
fn config_show_redacts_passwords_inside_database_and_redis_urls() {
    let stdout = run_ok(
        &["config", "show"],
        &[
            (
                "AUTH_SERVICE__DB_URL",
                "postgres://auth:db-pass-auth-1@db.internal:5432/auth_db",
            ),
            (
                "AUTH_SERVICE__REDIS_URL",
                "redis://:redis-pass-2@cache:6379/0",
            ),
            (
                "AGENT_RUNTIME__DB_URL",
                "postgresql://runtime:db-pass-runtime-3@db/agent_runtime?sslmode=require&password=db-pass-query-4",
            ),
            (
                "GATEWAY__REDIS_URL",
                "rediss://default:redis-pass-5@cache:6380",
            ),
        ],
    );
    for password in [
        "db-pass-auth-1",
        "redis-pass-2",
        "db-pass-runtime-3",
        "db-pass-query-4",
        "redis-pass-5",
    ] {
        assert!(!stdout.contains(password), "{password} printed:\n{stdout}");
    }
    for redacted in [
        "postgres://auth:[redacted]@db.internal:5432/auth_db",
        "redis://:[redacted]@cache:6379/0",
        "postgresql://runtime:[redacted]@db/agent_runtime?sslmode=require&password=[redacted]",
        "rediss://default:[redacted]@cache:6380",
    ] {
        assert!(stdout.contains(redacted), "{redacted} missing:\n{stdout}");
    }
    // The listener limits common to every service are shown too.
    assert!(stdout.contains("[http]"), "{stdout}");
    assert!(stdout.contains("header_read_timeout = 10.0"), "{stdout}");
}

#[test]
fn production_refuses_the_default_internal_key() {
    let stderr = proxy_refuses(&[
        ("ENVIRONMENT", "production"),
        ("LLM_PROXY__PORT", &free_port().to_string()),
    ]);
    assert!(stderr.contains("LLM_PROXY__INTERNAL_API_KEY"));
}

#[tokio::test]
async fn sigterm_lets_an_in_flight_stream_finish() {
    let port = free_port();
    let proxy = serve_proxy(&[("LLM_PROXY__PORT", &port.to_string())]);
    wait_healthy(&format!("http://127.0.0.1:{port}/health")).await;
    let response = reqwest::Client::new()
        .post(format!("http://127.0.0.1:{port}/v1/chat/completions"))
        .header("X-Internal-Auth", KEY)
        .json(&serde_json::json!({"model": "mock-llm", "stream": true, "messages": [{"role": "user", "content": "::slow 150"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let pid = proxy.0.id();
    let killer = std::thread::spawn(move || proxy.terminate());
    let body = response.text().await.unwrap();
    assert!(
        body.trim_end().ends_with("data: [DONE]"),
        "the stream was cut: {body}"
    );
    assert!(body.contains("(static)"));
    assert!(
        killer.join().unwrap().success(),
        "pid {pid} did not exit cleanly"
    );
}

#[tokio::test]
async fn up_serves_the_public_listener_and_stops_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let Up {
        process: up,
        url: public,
        lines: rx,
        ..
    } = Up::start(dir.path(), "127.0.0.1:0", &[], &[]);
    let health = reqwest::get(format!("{public}/nginx-health"))
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    assert!(dir.path().exists());
    assert!(up.terminate().success());
    let rest: Vec<String> = rx.try_iter().collect();
    assert!(
        rest.iter().any(|l| l.contains("CodeLab stopped")),
        "{rest:?}"
    );
}
