//! The auth service as the binary runs it: `codelab up` (public listener routes, seeded admin
//! printed once, `--admin-password`) and `codelab serve auth`.

use std::time::{Duration, Instant};

use crate::common::cli::{
    Up, admin_login, get_json, lines_until, serve_auth, spawn_with_lines, up_in_production,
};
use serde_json::Value;

async fn login(base: &str, password: &str) -> reqwest::StatusCode {
    admin_login(base, password).await.status()
}

/// The word after "password " in a line that prints credentials.
fn password_in(line: &str) -> String {
    let after = line.split("password ").nth(1).unwrap();
    after.split_whitespace().next().unwrap().to_owned()
}

/// `codelab up` on an ephemeral port with `extra` flags: the process, its public URL and its
/// summary with the lines printed right behind it (credentials).
fn up(dir: &std::path::Path, extra: &[&str]) -> (crate::common::cli::Running, String, Vec<String>) {
    let Up {
        process,
        url,
        mut summary,
        lines,
    } = Up::start(dir, "127.0.0.1:0", extra, &[]);
    while let Ok(line) = lines.recv_timeout(Duration::from_millis(300)) {
        summary.push(line);
    }
    (process, url, summary)
}

#[tokio::test]
async fn up_serves_auth_on_the_public_listener_and_prints_the_admin_password_once() {
    let dir = tempfile::tempdir().unwrap();

    // First start: a generated password, printed once.
    let (running, base, lines) = up(dir.path(), &[]);
    let created = lines
        .iter()
        .find(|l| l.contains("Created the admin user"))
        .unwrap_or_else(|| panic!("{lines:?}"));
    let password = password_in(created);
    assert_eq!(password.len(), 20);
    assert_eq!(login(&base, &password).await, reqwest::StatusCode::OK);
    let metadata = get_json(&format!("{base}/.well-known/oauth-authorization-server")).await;
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
    let health = get_json(&format!("{base}/auth-health")).await;
    assert_eq!(health["status"], "healthy");
    assert_eq!(health["environment"], "development");
    assert!(running.terminate().success());

    // Second start on the same data dir: keys and admin persist, nothing is printed.
    let (running, base, lines) = up(dir.path(), &[]);
    assert!(
        !lines.iter().any(|l| l.contains("password")),
        "credentials are printed only once: {lines:?}"
    );
    assert_eq!(login(&base, &password).await, reqwest::StatusCode::OK);
    assert!(running.terminate().success());

    // --admin-password replaces it and is shown.
    let (running, base, lines) = up(dir.path(), &["--admin-password", "dev-admin-pass-1"]);
    assert!(
        lines
            .iter()
            .any(|l| l.contains("username admin, password dev-admin-pass-1")),
        "{lines:?}"
    );
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
    let output = up_in_production(dir.path(), &["--admin-password", "dev-admin-pass-1"]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("development only"), "{stderr}");
}

#[tokio::test]
async fn serve_auth_runs_the_service_and_prints_generated_credentials() {
    let dir = tempfile::tempdir().unwrap();
    let (command, base) = serve_auth(dir.path());
    let (running, rx) = spawn_with_lines(command);
    let admin = lines_until(&rx, "Created the admin user");
    let password = password_in(admin.last().unwrap());
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
