//! `codelab up` with `AGENT_RUNTIME__INTERNAL_API_KEY` set: the agent runtime's internal port
//! takes that key (and only it), the gateway reaches the runtime with it, and the summary
//! says where the key comes from without printing it. Unset, the key is generated as before.

use crate::common::cli::{Up, admin_login, get_text, json_of};

const RUNTIME_KEY: &str = "operator-runtime-key-5e0f";
const ADMIN_PASSWORD: &str = "runtime-key-admin-1";

/// The summary line of the internal agent runtime and its URL.
fn runtime_line(up: &Up) -> (String, String) {
    let line = up
        .summary
        .iter()
        .find(|line| line.trim_start().starts_with("agent-runtime "))
        .unwrap_or_else(|| panic!("no agent-runtime line in {:?}", up.summary))
        .clone();
    let url = line
        .split_whitespace()
        .nth(1)
        .expect("the line names the runtime's URL")
        .to_owned();
    (line, url)
}

#[tokio::test]
async fn up_guards_its_runtime_with_the_key_the_operator_sets() {
    let dir = tempfile::tempdir().unwrap();
    let up = Up::start(
        &dir.path().join("data"),
        "127.0.0.1:0",
        &["--admin-password", ADMIN_PASSWORD],
        &[("AGENT_RUNTIME__INTERNAL_API_KEY", RUNTIME_KEY)],
    );
    let (line, runtime) = runtime_line(&up);
    assert!(
        line.contains("(internal; X-Internal-Auth: the key in AGENT_RUNTIME__INTERNAL_API_KEY)"),
        "{line}"
    );
    assert!(!up.summary.join("\n").contains(RUNTIME_KEY));
    for path in ["/openapi.json", "/agents"] {
        let url = format!("{runtime}{path}");
        let (status, body) = get_text(&url, &[]).await;
        assert_eq!(status, 401, "{path} without a key: {body}");
        let (status, body) = get_text(&url, &[("X-Internal-Auth", "not-the-key")]).await;
        assert_eq!(status, 401, "{path} with a wrong key: {body}");
        let (status, body) = get_text(&url, &[("X-Internal-Auth", RUNTIME_KEY)]).await;
        assert_eq!(status, 200, "{path} with the key: {body}");
    }
    // The gateway reaches the runtime with the same key: a session is created through it.
    let token = json_of(admin_login(&up.url, ADMIN_PASSWORD).await).await["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let created = reqwest::Client::new()
        .post(format!("{}/api/v1/sessions", up.url))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    // The gateway proxies the creation to the runtime: a wrong key would be a 5xx here.
    assert!(created.status().is_success(), "{}", created.status());
    assert!(json_of(created).await["id"].is_string());
}

#[tokio::test]
async fn up_generates_the_runtime_key_when_none_is_set() {
    let dir = tempfile::tempdir().unwrap();
    let up = Up::start(&dir.path().join("data"), "127.0.0.1:0", &[], &[]);
    let (line, runtime) = runtime_line(&up);
    assert!(line.ends_with("(internal)"), "{line}");
    // Not even the shipped placeholder opens it.
    let (status, body) = get_text(
        &format!("{runtime}/agents"),
        &[("X-Internal-Auth", "change-me-internal-key")],
    )
    .await;
    assert_eq!(status, 401, "{body}");
}
