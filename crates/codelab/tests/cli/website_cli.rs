//! The website in the `codelab` binary: `codelab up` serves it at `/` of the public listener
//! (docs, console) and registers its own `/console/callback` with the auth service whatever
//! port it got; `codelab serve website` runs it alone from `WEBSITE__*` settings.

use std::process::Stdio;

use crate::common::cli::{Running, Up, codelab_with, lines_of, lines_until};
use crate::common::processes::free_port;

/// GETs `url` without following redirects.
async fn get(url: &str) -> reqwest::Response {
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    http.get(url).send().await.unwrap()
}

#[tokio::test]
async fn codelab_up_serves_the_website_and_its_login_on_any_port() {
    let dir = tempfile::tempdir().unwrap();
    let up = Up::with_admin(dir.path(), "website-cli-admin-pw", &[]);
    let public = &up.url;
    for path in ["/", "/docs", "/docs/auth", "/console"] {
        let response = get(&format!("{public}{path}")).await;
        assert_eq!(response.status(), 200, "{path}");
        let csp = response.headers()["content-security-policy"]
            .to_str()
            .unwrap()
            .to_owned();
        assert!(csp.contains("frame-ancestors 'none'"), "{path}: {csp}");
    }
    let missing = get(&format!("{public}/nope")).await;
    assert_eq!(missing.status(), 404);
    assert!(missing.text().await.unwrap().contains("Page not found"));
    // The routes of the other services still win over the website's fallback.
    let health = get(&format!("{public}/auth-health")).await;
    assert_eq!(health.status(), 200);

    // The console's login goes to the auth service on this listener, which accepts the
    // redirect URI `up` registered for its own (ephemeral) port.
    let login = get(&format!("{public}/console/login")).await;
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
    let form = get(&location).await;
    assert_eq!(form.status(), 200);
    assert!(form.text().await.unwrap().contains("Sign in to CodeLab"));
}

#[tokio::test]
async fn codelab_serve_website_runs_the_docs_alone() {
    let port = free_port();
    let port_text = port.to_string();
    let mut child = codelab_with(
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
    let logs = lines_of(child.stderr.take().unwrap());
    let _running = Running(child);
    lines_until(&logs, "website listening");
    let base = format!("http://127.0.0.1:{port}");
    let health: serde_json::Value = get(&format!("{base}/health")).await.json().await.unwrap();
    assert_eq!(health["service"], "website");
    let docs = get(&format!("{base}/docs/gateway")).await;
    assert_eq!(docs.status(), 200);
    // Without WEBSITE__AUTH_URL and WEBSITE__GATEWAY_URL there is no console.
    let console = get(&format!("{base}/console")).await;
    assert!(console.text().await.unwrap().contains("not configured"));
    let login = get(&format!("{base}/console/login")).await;
    assert_eq!(login.status(), 404);
}
