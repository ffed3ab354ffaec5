//! The gateway in the `codelab` binary: `codelab up` routes `/api/v1/` and `/gateway-health`
//! to it behind the public listener, `--no-auth` and production refusals.
#![allow(clippy::unwrap_used)] // a test that cannot unwrap has failed: the panic is the report

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::Receiver;
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_codelab");
const ADMIN_PASSWORD: &str = "gateway-cli-admin-pw";

/// A child process that is killed when the test ends.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn codelab(args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut command = Command::new(BIN);
    command
        .args(args)
        .env_remove("PORT")
        .env_remove("ENVIRONMENT")
        .env_remove("CODELAB_CONFIG");
    for (k, v) in env {
        command.env(k, v);
    }
    command
}

/// Starts `codelab up` with `extra` flags; returns the process, its public URL and the rest of
/// its output lines.
fn up(dir: &std::path::Path, extra: &[&str]) -> (Running, String, Receiver<String>) {
    let mut args = vec![
        "up",
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
        dir.to_str().unwrap(),
        "--ephemeral-ports",
        "--admin-password",
        ADMIN_PASSWORD,
    ];
    args.extend_from_slice(extra);
    let mut child = codelab(&args, &[])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let running = Running(child);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let public = loop {
        let line = rx
            .recv_timeout(Duration::from_secs(60))
            .expect("`codelab up` printed no public address");
        if let Some(start) = line.find("http://").filter(|_| line.contains("public")) {
            break line[start..].split_whitespace().next().unwrap().to_owned();
        }
    };
    (running, public, rx)
}

/// The summary lines printed up to "Press Ctrl-C".
fn summary(rx: &Receiver<String>) -> Vec<String> {
    let mut lines = Vec::new();
    while let Ok(line) = rx.recv_timeout(Duration::from_secs(30)) {
        let end = line.contains("Press Ctrl-C");
        lines.push(line);
        if end {
            break;
        }
    }
    lines
}

#[tokio::test]
async fn up_routes_the_api_and_the_websocket_to_the_gateway() {
    let dir = tempfile::tempdir().unwrap();
    let (_up, public, rx) = up(dir.path(), &[]);
    let lines = summary(&rx);
    assert!(
        lines
            .iter()
            .any(|l| l.contains("Flutter IDE") && l.contains(&public)),
        "{lines:?}"
    );
    let http = reqwest::Client::new();

    let health: serde_json::Value = http
        .get(format!("{public}/gateway-health"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(health["service"], "gateway");

    // Without a token the gateway refuses; with the password grant's token it serves.
    let refused = http
        .get(format!("{public}/api/v1/sessions"))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 401);
    let form = format!(
        "grant_type=password&client_id=codelab-flutter-app&username=admin&password={ADMIN_PASSWORD}"
    );
    let tokens: serde_json::Value = http
        .post(format!("{public}/oauth/token"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = tokens["access_token"].as_str().unwrap();
    let created: serde_json::Value = http
        .post(format!("{public}/api/v1/sessions"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = created["id"].as_str().unwrap();
    // Path parameters and the query string reach the gateway's routes intact.
    let one = http
        .get(format!("{public}/api/v1/sessions/{id}"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(one.status(), 200);
    let page: serde_json::Value = http
        .get(format!("{public}/api/v1/sessions?limit=1&offset=1"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(page["offset"], 1);

    // The WebSocket upgrade passes the public listener.
    let upgrade = http
        .get(format!("{public}/api/v1/ws/{id}"))
        .header("Connection", "Upgrade")
        .header("Upgrade", "websocket")
        .header("Sec-WebSocket-Version", "13")
        .header("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ==")
        .send()
        .await
        .unwrap();
    assert_eq!(upgrade.status(), 101);
}

#[tokio::test]
async fn up_without_auth_says_so_and_serves_the_development_user() {
    let dir = tempfile::tempdir().unwrap();
    let (_up, public, rx) = up(dir.path(), &["--no-auth"]);
    let lines = summary(&rx);
    assert!(
        lines
            .iter()
            .any(|l| l.contains("authentication") && l.contains("OFF")),
        "{lines:?}"
    );
    let created = reqwest::Client::new()
        .post(format!("{public}/api/v1/sessions"))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 200);
}

#[test]
fn production_refuses_the_gateways_development_settings() {
    let out = codelab(
        &["serve", "gateway", "--port", "0"],
        &[
            ("ENVIRONMENT", "production"),
            ("GATEWAY__USE_JWT_AUTH", "false"),
            (
                "GATEWAY__INTERNAL_API_KEY",
                "a-strong-internal-key-0123456789",
            ),
        ],
    )
    .stdin(Stdio::null())
    .output()
    .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("GATEWAY__USE_JWT_AUTH"), "{stderr}");

    let dir = tempfile::tempdir().unwrap();
    let out = codelab(
        &[
            "up",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            dir.path().to_str().unwrap(),
            "--no-auth",
        ],
        &[("ENVIRONMENT", "production")],
    )
    .stdin(Stdio::null())
    .output()
    .unwrap();
    // `up` is the development profile: in production it refuses to start at all, whatever the
    // flags, and says why.
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("ENVIRONMENT=production"), "{stderr}");
}
