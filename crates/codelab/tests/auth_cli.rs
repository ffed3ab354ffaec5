//! The auth service as the binary runs it: `codelab up` (public listener routes, seeded admin
//! printed once, `--admin-password`) and `codelab serve auth`.
#![allow(clippy::unwrap_used)] // a test that cannot unwrap has failed: the panic is the report

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_codelab");

/// A child process that is killed if the test ends early.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Running {
    fn terminate(mut self) -> std::process::ExitStatus {
        let pid = self.0.id().to_string();
        assert!(
            Command::new("kill")
                .args(["-TERM", &pid])
                .status()
                .unwrap()
                .success()
        );
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(status) = self.0.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "the process did not stop after SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

fn codelab(args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut command = Command::new(BIN);
    command
        .args(args)
        .env_remove("PORT")
        .env_remove("ENVIRONMENT")
        .env_remove("CODELAB_CONFIG");
    for (name, _) in std::env::vars() {
        if name.starts_with("AUTH_SERVICE__") {
            command.env_remove(name);
        }
    }
    for (k, v) in env {
        command.env(k, v);
    }
    command
}

/// Starts the command and returns it with a channel of its stdout lines.
fn spawn_with_lines(mut command: Command) -> (Running, Receiver<String>) {
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    (Running(child), rx)
}

/// Lines printed until `last` appears.
fn lines_until(rx: &Receiver<String>, last: &str) -> Vec<String> {
    let mut lines = Vec::new();
    loop {
        let line = rx
            .recv_timeout(Duration::from_secs(60))
            .unwrap_or_else(|_| panic!("no line containing {last:?}; got {lines:?}"));
        let done = line.contains(last);
        lines.push(line);
        if done {
            return lines;
        }
    }
}

fn public_url(lines: &[String]) -> String {
    let line = lines.iter().find(|l| l.contains("public address")).unwrap();
    let start = line.find("http://").unwrap();
    line[start..].split_whitespace().next().unwrap().to_owned()
}

async fn login(base: &str, password: &str) -> reqwest::StatusCode {
    let body = format!(
        "grant_type=password&client_id=codelab-flutter-app&username=admin&password={password}"
    );
    reqwest::Client::new()
        .post(format!("{base}/oauth/token"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body)
        .send()
        .await
        .unwrap()
        .status()
}

fn up(dir: &std::path::Path, extra: &[&str]) -> (Running, Vec<String>) {
    let mut args = vec![
        "up",
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
        dir.to_str().unwrap(),
        "--ephemeral-ports",
    ];
    args.extend_from_slice(extra);
    let (running, rx) = spawn_with_lines(codelab(&args, &[]));
    let lines = lines_until(&rx, "Press Ctrl-C");
    // Lines printed after the summary (credentials) arrive right behind it.
    let mut lines = lines;
    while let Ok(line) = rx.recv_timeout(Duration::from_millis(300)) {
        lines.push(line);
    }
    (running, lines)
}

#[tokio::test]
async fn up_serves_auth_on_the_public_listener_and_prints_the_admin_password_once() {
    let dir = tempfile::tempdir().unwrap();

    // First start: a generated password, printed once.
    let (running, lines) = up(dir.path(), &[]);
    let base = public_url(&lines);
    let created = lines
        .iter()
        .find(|l| l.contains("Created the admin user"))
        .unwrap_or_else(|| panic!("{lines:?}"));
    let password = created
        .split("password ")
        .nth(1)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned();
    assert_eq!(password.len(), 20);
    assert_eq!(login(&base, &password).await, reqwest::StatusCode::OK);
    let metadata: Value = reqwest::get(format!("{base}/.well-known/oauth-authorization-server"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        metadata["issuer"],
        base.as_str(),
        "issuer is the public listener"
    );
    assert_eq!(metadata["token_endpoint"], format!("{base}/oauth/token"));
    let jwks = reqwest::get(format!("{base}/.well-known/jwks.json"))
        .await
        .unwrap();
    assert_eq!(jwks.status(), 200);
    let health: Value = reqwest::get(format!("{base}/auth-health"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(health["status"], "healthy");
    assert_eq!(health["environment"], "development");
    assert!(running.terminate().success());

    // Second start on the same data dir: keys and admin persist, nothing is printed.
    let (running, lines) = up(dir.path(), &[]);
    assert!(
        !lines.iter().any(|l| l.contains("password")),
        "credentials are printed only once: {lines:?}"
    );
    let base = public_url(&lines);
    assert_eq!(login(&base, &password).await, reqwest::StatusCode::OK);
    assert!(running.terminate().success());

    // --admin-password replaces it and is shown.
    let (running, lines) = up(dir.path(), &["--admin-password", "dev-admin-pass-1"]);
    assert!(
        lines
            .iter()
            .any(|l| l.contains("username admin, password dev-admin-pass-1")),
        "{lines:?}"
    );
    let base = public_url(&lines);
    assert_eq!(
        login(&base, "dev-admin-pass-1").await,
        reqwest::StatusCode::OK
    );
    assert_eq!(
        login(&base, &password).await,
        reqwest::StatusCode::UNAUTHORIZED
    );
    assert!(running.terminate().success());
}

#[test]
fn up_refuses_admin_password_in_production() {
    let dir = tempfile::tempdir().unwrap();
    let output = codelab(
        &[
            "up",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            dir.path().to_str().unwrap(),
            "--admin-password",
            "dev-admin-pass-1",
        ],
        &[("ENVIRONMENT", "production")],
    )
    .stdin(Stdio::null())
    .output()
    .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("development only"), "{stderr}");
}

#[tokio::test]
async fn serve_auth_runs_the_service_and_prints_generated_credentials() {
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
        .to_string();
    let base = format!("http://127.0.0.1:{port}");
    let db = format!("sqlite:///{}", dir.path().join("auth.db").display());
    let (running, rx) = spawn_with_lines(codelab(
        &["serve", "auth", "--port", &port, "--host", "127.0.0.1"],
        &[
            ("AUTH_SERVICE__DB_URL", db.as_str()),
            ("AUTH_SERVICE__PUBLIC_URL", base.as_str()),
        ],
    ));
    let admin = lines_until(&rx, "Created the admin user");
    let password = admin
        .last()
        .unwrap()
        .split("password ")
        .nth(1)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned();
    let secret_line = lines_until(&rx, "codelab-internal");
    assert!(secret_line.last().unwrap().contains("secret "));

    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(response) = reqwest::get(format!("{base}/health")).await {
            let health: Value = response.json().await.unwrap();
            assert_eq!(health["status"], "healthy");
            break;
        }
        assert!(Instant::now() < deadline, "auth did not come up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(login(&base, &password).await, reqwest::StatusCode::OK);
    let ready = reqwest::get(format!("{base}/ready")).await.unwrap();
    assert_eq!(ready.status(), 200);
    assert!(running.terminate().success());
}
