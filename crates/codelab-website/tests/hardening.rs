//! Attacks on what the website hands out by itself: `/ready` (reachable by anyone who finds it,
//! so it must not tell internal addresses or errors). The chat page's token, which needs the
//! auth service, is attacked with the whole system in
//! `crates/codelab-stack/tests/website/hardening.rs`.
use codelab_core::config::{Environment, Secret};
use codelab_core::service::Service as _;
use codelab_core::service::SharedDeps;
use reqwest::StatusCode;
use serde_json::Value;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ready_tells_the_public_no_internal_address_or_error() {
    // The console points at services that are down (a port nothing listens on).
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap()
    };
    let config = codelab_website::Config {
        auth_url: Some(format!("http://{closed}")),
        gateway_url: Some(format!("http://{closed}")),
        session_key: Secret::new("a-session-key-for-tests-0123456789"),
        request_timeout: 2.0,
        ..codelab_website::Config::default()
    };
    let state = codelab_website::WebsiteService::build(
        config,
        SharedDeps::isolated(Environment::Development),
    )
    .await
    .unwrap();
    let server =
        codelab_testkit::ServerGuard::start(codelab_website::WebsiteService::router(state)).await;
    let response = reqwest::get(format!("{}/ready", server.base_url()))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    let text = response.text().await.unwrap();
    let body: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(body["status"], "not_ready", "{text}");
    assert_eq!(body["checks"]["auth"], "unavailable", "{text}");
    assert_eq!(body["checks"]["gateway"], "unavailable", "{text}");
    for leak in ["127.0.0.1", &closed.port().to_string(), "error", "http://"] {
        assert!(!text.contains(leak), "{leak:?} in {text}");
    }
}
