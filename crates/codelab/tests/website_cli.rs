//! The website in the `codelab` binary: `codelab up` serves it at `/` of the public listener
//! (docs, console) and registers its own `/console/callback` with the auth service whatever
//! port it got; `codelab serve website` runs it alone from `WEBSITE__*` settings.
#![allow(clippy::unwrap_used)] // a test that cannot unwrap has failed: the panic is the report

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_codelab");

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

/// Starts `codelab up` on an ephemeral public port; returns it and its public URL.
fn up(dir: &std::path::Path) -> (Running, String) {
    let mut child = codelab(
        &[
            "up",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            dir.to_str().unwrap(),
            "--ephemeral-ports",
            "--admin-password",
            "website-cli-admin-pw",
        ],
        &[],
    )
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
    let mut public = None;
    loop {
        let line = rx
            .recv_timeout(Duration::from_secs(60))
            .expect("`codelab up` printed no summary");
        if let Some(start) = line
            .find("http://")
            .filter(|_| line.contains("public address"))
        {
            public = Some(line[start..].split_whitespace().next().unwrap().to_owned());
        }
        if line.contains("Press Ctrl-C") {
            break;
        }
    }
    (running, public.unwrap())
}

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

#[tokio::test]
async fn codelab_up_serves_the_website_and_its_login_on_any_port() {
    let dir = tempfile::tempdir().unwrap();
    let (_up, public) = up(dir.path());
    let http = http();
    for path in ["/", "/docs", "/docs/auth", "/console"] {
        let response = http.get(format!("{public}{path}")).send().await.unwrap();
        assert_eq!(response.status(), 200, "{path}");
        let csp = response.headers()["content-security-policy"]
            .to_str()
            .unwrap()
            .to_owned();
        assert!(csp.contains("frame-ancestors 'none'"), "{path}: {csp}");
    }
    let missing = http.get(format!("{public}/nope")).send().await.unwrap();
    assert_eq!(missing.status(), 404);
    assert!(missing.text().await.unwrap().contains("Page not found"));
    // The routes of the other services still win over the website's fallback.
    let health = http
        .get(format!("{public}/auth-health"))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);

    // The console's login goes to the auth service on this listener, which accepts the
    // redirect URI `up` registered for its own (ephemeral) port.
    let login = http
        .get(format!("{public}/console/login"))
        .send()
        .await
        .unwrap();
    assert_eq!(login.status(), 303);
    let location = login.headers()["location"].to_str().unwrap().to_owned();
    assert!(
        location.starts_with(&format!("{public}/oauth/authorize?")),
        "{location}"
    );
    let redirect = format!("{public}/console/callback");
    let encoded = redirect.replace(':', "%3A").replace('/', "%2F");
    assert!(
        location.contains(&format!("redirect_uri={encoded}")),
        "{location}"
    );
    let form = http.get(&location).send().await.unwrap();
    assert_eq!(form.status(), 200);
    assert!(form.text().await.unwrap().contains("Sign in to CodeLab"));
}

#[tokio::test]
async fn codelab_serve_website_runs_the_docs_alone() {
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let port_text = port.to_string();
    let mut child = codelab(
        &["serve", "website", "--host", "127.0.0.1"],
        &[
            ("WEBSITE__PORT", &port_text),
            ("WEBSITE__PUBLIC_URL", "https://codelab.example.com"),
            ("RUST_LOG", "info"),
            ("NO_COLOR", "1"),
        ],
    )
    .stdout(Stdio::null())
    // Logs go to stderr.
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    let logs = child.stderr.take().unwrap();
    let _running = Running(child);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(logs).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    loop {
        let line = rx
            .recv_timeout(Duration::from_secs(60))
            .expect("`codelab serve website` never said it listens");
        if line.contains("website listening") {
            break;
        }
    }
    let http = http();
    let base = format!("http://127.0.0.1:{port}");
    let health: serde_json::Value = http
        .get(format!("{base}/health"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(health["service"], "website");
    let docs = http
        .get(format!("{base}/docs/gateway"))
        .send()
        .await
        .unwrap();
    assert_eq!(docs.status(), 200);
    // Without WEBSITE__AUTH_URL and WEBSITE__GATEWAY_URL there is no console.
    let console = http.get(format!("{base}/console")).send().await.unwrap();
    assert!(console.text().await.unwrap().contains("not configured"));
    let login = http
        .get(format!("{base}/console/login"))
        .send()
        .await
        .unwrap();
    assert_eq!(login.status(), 404);
}
