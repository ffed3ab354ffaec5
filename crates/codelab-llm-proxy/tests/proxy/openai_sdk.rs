//! The official OpenAI Python SDK, pointed at the proxy, works unchanged.
//!
//! `scripts/test` prepares a Python with the `openai` package and names it in
//! `CODELAB_TEST_PYTHON`; run through `cargo test` alone, the test says what it needs.

use super::*;

#[tokio::test]
async fn the_openai_python_sdk_works_unchanged() {
    let python = std::env::var("CODELAB_TEST_PYTHON").expect(
        "CODELAB_TEST_PYTHON must name a python with the `openai` package (scripts/test sets it up)",
    );
    let proxy = Proxy::start(None, |_| {}).await;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/sdk/openai_client.py");
    let output = tokio::process::Command::new(python)
        .args([script, &proxy.url("/v1"), KEY])
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
