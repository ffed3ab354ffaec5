//! Staging is not development (issue 14, finding 3): every service started with
//! `codelab serve <service>` and `ENVIRONMENT=staging` refuses the weak or default secrets and
//! the insecure modes production refuses, naming the setting to change; with strong secrets it
//! starts. Each refusal is a real process of the binary that must exit with status 1; one that
//! starts serving instead fails the test.

use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use crate::common::processes::{Process, codelab, free_port, wait_for_status};

/// A key no check can call weak.
const STRONG: &str = "a-strong-secret-0123456789abcdef";
/// Another one, for settings that must differ from [`STRONG`].
const OTHER_STRONG: &str = "another-strong-secret-9876543210";
/// A 32-byte key-encryption key (64 hex characters).
const KEY_ENCRYPTION_KEY: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";
/// A published placeholder of the original deployments, long enough for the password policy.
const PLACEHOLDER: &str = "change-me-in-production";
/// How long a refusing process may take to exit (it refuses before serving; one that listens
/// on its port has started and fails the test at once).
const REFUSAL_WITHIN: Duration = Duration::from_secs(30);

/// `codelab serve <service>` in staging with `env` on a free port.
fn serve(service: &str, port: u16, env: &[(&str, &str)]) -> std::process::Command {
    let mut command = codelab(&["serve", service, "--port", &port.to_string()]);
    command.env("ENVIRONMENT", "staging");
    for (name, value) in env {
        command.env(name, value);
    }
    command
}

/// Runs `codelab serve <service>` in staging with `env`; it must exit with status 1 and name
/// `setting` in its error output. Returns that output.
fn assert_refused(service: &str, env: &[(&str, &str)], setting: &str) -> String {
    let port = free_port();
    let mut child: Child = serve(service, port, env)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + REFUSAL_WITHIN;
    let address = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    while child.try_wait().unwrap().is_none() {
        // Listening on its port means it started rather than refused.
        let listening =
            std::net::TcpStream::connect_timeout(&address, Duration::from_millis(50)).is_ok();
        if listening || Instant::now() > deadline {
            let _ = child.kill();
            let output = child.wait_with_output().unwrap();
            panic!(
                "{service} started in staging with {env:?} instead of refusing {setting}:\n{}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert_eq!(
        output.status.code(),
        Some(1),
        "{service} with {env:?}: {stderr}"
    );
    assert!(
        stderr.contains(setting),
        "{service} with {env:?} must name {setting}: {stderr}"
    );
    for (_, value) in env {
        if value.len() >= 16 && *value != PLACEHOLDER && !value.starts_with("sqlite:") {
            assert!(!stderr.contains(value), "a secret in the error: {stderr}");
        }
    }
    stderr
}

/// A service that started; its log lives as long as it does.
struct Started {
    process: Process,
    _log_dir: tempfile::TempDir,
}

/// Starts `codelab serve <service>` in staging with `env` and waits for `/health`.
async fn assert_starts(service: &str, env: &[(&str, &str)]) -> Started {
    let port = free_port();
    let log_dir = tempfile::tempdir().unwrap();
    let log = log_dir.path().join(format!("{service}.log"));
    let mut process = Process::spawn(service, serve(service, port, env), &log);
    wait_for_status(
        &format!("http://127.0.0.1:{port}/health"),
        200,
        &mut process,
        Duration::from_secs(60),
    )
    .await;
    Started {
        process,
        _log_dir: log_dir,
    }
}

/// The auth settings of a staging deployment with strong secrets, on `db_url`.
fn auth_env(db_url: &str) -> Vec<(&'static str, String)> {
    vec![
        ("AUTH_SERVICE__DB_URL", db_url.to_owned()),
        (
            "AUTH_SERVICE__PUBLIC_URL",
            "https://codelab.example.com".to_owned(),
        ),
        (
            "AUTH_SERVICE__WEB_REDIRECT_URIS",
            "https://codelab.example.com/console/callback".to_owned(),
        ),
        (
            "AUTH_SERVICE__KEY_ENCRYPTION_KEY",
            KEY_ENCRYPTION_KEY.to_owned(),
        ),
        ("AUTH_SERVICE__MASTER_KEY", STRONG.to_owned()),
        (
            "AUTH_SERVICE__INTERNAL_CLIENT_SECRET",
            OTHER_STRONG.to_owned(),
        ),
    ]
}

/// `base` as it is.
fn all<'a>(base: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    base.iter().map(|(n, v)| (*n, v.as_str())).collect()
}

/// `base` with `name` set to `value`, or left out when `value` is `None`.
fn with<'a>(
    base: &'a [(&'static str, String)],
    name: &str,
    value: Option<&'a str>,
) -> Vec<(&'static str, &'a str)> {
    let known = base
        .iter()
        .map(|(n, _)| *n)
        .find(|n| *n == name)
        .unwrap_or_else(|| panic!("{name} is not among the base settings"));
    let mut env: Vec<(&'static str, &str)> =
        all(base).into_iter().filter(|(n, _)| *n != name).collect();
    if let Some(value) = value {
        env.push((known, value));
    }
    env
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_in_staging_refuses_placeholder_and_missing_secrets_and_starts_with_strong_ones() {
    let dir = tempfile::tempdir().unwrap();
    let fresh_db = |name: &str| format!("sqlite:///{}", dir.path().join(name).display());

    let base = auth_env(&fresh_db("placeholder.db"));
    assert_refused(
        "auth",
        &with(&base, "AUTH_SERVICE__MASTER_KEY", Some(PLACEHOLDER)),
        "AUTH_SERVICE__MASTER_KEY",
    );
    let base = auth_env(&fresh_db("no-kek.db"));
    assert_refused(
        "auth",
        &with(&base, "AUTH_SERVICE__KEY_ENCRYPTION_KEY", None),
        "AUTH_SERVICE__KEY_ENCRYPTION_KEY",
    );
    let base = auth_env(&fresh_db("no-internal-secret.db"));
    assert_refused(
        "auth",
        &with(&base, "AUTH_SERVICE__INTERNAL_CLIENT_SECRET", None),
        "AUTH_SERVICE__INTERNAL_CLIENT_SECRET",
    );

    let base = auth_env(&fresh_db("strong.db"));
    let mut auth = assert_starts("auth", &all(&base)).await;
    let output = auth.process.output();
    for secret in [STRONG, OTHER_STRONG, KEY_ENCRYPTION_KEY] {
        assert!(!output.contains(secret), "a secret in the log: {output}");
    }
    auth.process.terminate(Duration::from_secs(30));
}

#[test]
fn auth_in_staging_refuses_a_weak_internal_client_secret() {
    let dir = tempfile::tempdir().unwrap();
    for (name, weak) in [
        ("placeholder.db", PLACEHOLDER),
        ("short.db", "short-secret"),
    ] {
        let base = auth_env(&format!("sqlite:///{}", dir.path().join(name).display()));
        assert_refused(
            "auth",
            &with(&base, "AUTH_SERVICE__INTERNAL_CLIENT_SECRET", Some(weak)),
            "AUTH_SERVICE__INTERNAL_CLIENT_SECRET",
        );
    }
}

#[test]
fn the_gateway_in_staging_refuses_weak_keys_and_development_modes() {
    assert_refused("gateway", &[], "GATEWAY__INTERNAL_API_KEY");
    assert_refused(
        "gateway",
        &[("GATEWAY__INTERNAL_API_KEY", "change-me-internal-key")],
        "GATEWAY__INTERNAL_API_KEY",
    );
    let strong = ("GATEWAY__INTERNAL_API_KEY", STRONG);
    assert_refused(
        "gateway",
        &[strong, ("GATEWAY__USE_JWT_AUTH", "false")],
        "GATEWAY__USE_JWT_AUTH",
    );
    assert_refused(
        "gateway",
        &[strong, ("GATEWAY__WS_AUTH", "off")],
        "GATEWAY__WS_AUTH",
    );
    assert_refused(
        "gateway",
        &[strong, ("GATEWAY__SERVICE_API_KEY", "short-key")],
        "GATEWAY__SERVICE_API_KEY",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_runtime_in_staging_refuses_weak_keys_and_starts_with_strong_ones() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!(
        "sqlite:///{}",
        dir.path().join("agent_runtime.db").display()
    );
    let db_url = ("AGENT_RUNTIME__DB_URL", db.as_str());
    assert_refused(
        "agent-runtime",
        &[db_url],
        "AGENT_RUNTIME__INTERNAL_API_KEY",
    );
    assert_refused(
        "agent-runtime",
        &[db_url, ("AGENT_RUNTIME__INTERNAL_API_KEY", PLACEHOLDER)],
        "AGENT_RUNTIME__INTERNAL_API_KEY",
    );
    let strong = ("AGENT_RUNTIME__INTERNAL_API_KEY", STRONG);
    assert_refused(
        "agent-runtime",
        &[
            db_url,
            strong,
            ("AGENT_RUNTIME__LLM_PROXY_API_KEY", "change-me-internal-key"),
        ],
        "AGENT_RUNTIME__LLM_PROXY_API_KEY",
    );
    let mut runtime = assert_starts(
        "agent-runtime",
        &[
            db_url,
            strong,
            ("AGENT_RUNTIME__LLM_PROXY_API_KEY", OTHER_STRONG),
            ("AGENT_RUNTIME__RECOVERY_INTERVAL", "0"),
        ],
    )
    .await;
    runtime.process.terminate(Duration::from_secs(30));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_llm_proxy_in_staging_refuses_the_default_key_and_starts_with_a_strong_one() {
    assert_refused("llm-proxy", &[], "LLM_PROXY__INTERNAL_API_KEY");
    assert_refused(
        "llm-proxy",
        &[("LLM_PROXY__INTERNAL_API_KEY", "dev-master-key")],
        "LLM_PROXY__INTERNAL_API_KEY",
    );
    let mut proxy = assert_starts("llm-proxy", &[("LLM_PROXY__INTERNAL_API_KEY", STRONG)]).await;
    proxy.process.terminate(Duration::from_secs(30));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_website_in_staging_refuses_a_console_without_a_strong_session_key() {
    let console = [
        ("WEBSITE__AUTH_URL", "http://127.0.0.1:9"),
        ("WEBSITE__GATEWAY_URL", "http://127.0.0.1:9"),
        ("WEBSITE__PUBLIC_URL", "https://codelab.example.com"),
    ];
    assert_refused("website", &console, "WEBSITE__SESSION_KEY");
    let mut weak = console.to_vec();
    weak.push(("WEBSITE__SESSION_KEY", "change-me-in-production"));
    assert_refused("website", &weak, "WEBSITE__SESSION_KEY");
    let mut strong = console.to_vec();
    strong.push(("WEBSITE__SESSION_KEY", STRONG));
    let mut website = assert_starts("website", &strong).await;
    website.process.terminate(Duration::from_secs(30));
}
