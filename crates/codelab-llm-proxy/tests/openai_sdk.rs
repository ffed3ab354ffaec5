//! The official OpenAI Python SDK, pointed at the proxy, works unchanged.
//!
//! `scripts/test` prepares a Python with the `openai` package and names it in
//! `CODELAB_TEST_PYTHON`; run through `cargo test` alone, the test says what it needs.
#![allow(
    clippy::unwrap_used,
    reason = "a test that cannot unwrap has failed: the panic is the report"
)]

use codelab_core::config::Secret;
use codelab_core::service::{Service, SharedDeps};
use codelab_llm_proxy::ProxyService;
use codelab_llm_proxy::config::Config;
use codelab_testkit::ServerGuard;

const KEY: &str = "sdk-test-internal-key-0123456789";

#[tokio::test]
async fn the_openai_python_sdk_works_unchanged() {
    let python = std::env::var("CODELAB_TEST_PYTHON").expect(
        "CODELAB_TEST_PYTHON must name a python with the `openai` package (scripts/test sets it up)",
    );
    let config = Config {
        internal_api_key: Secret::new(KEY),
        ..Config::default()
    };
    let state = ProxyService::build(config, SharedDeps::default())
        .await
        .unwrap();
    let server = ServerGuard::start(ProxyService::router(state)).await;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/sdk/openai_client.py");
    let base = format!("{}/v1", server.base_url());
    let output = tokio::process::Command::new(python)
        .args([script, &base, KEY])
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "the SDK script failed:\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains("openai sdk ok"), "{stdout}");
}
