//! An upstream that streams a line longer than `LLM_PROXY__MAX_STREAM_LINE_BYTES` (default
//! 1 MiB) fails the reply the way other mid-stream failures do (an error event, then
//! `[DONE]`), for every streaming wire format (OpenAI SSE, Anthropic SSE, Ollama NDJSON).
#![allow(
    clippy::unwrap_used,
    reason = "a test that cannot unwrap has failed: the panic is the report"
)]

use std::time::Duration;

use codelab_core::config::Secret;
use codelab_core::service::{Service, ServiceConfig, SharedDeps};
use codelab_llm_proxy::ProxyService;
use codelab_llm_proxy::config::Config;
use codelab_testkit::{FakeFlavor, FakeLlm, FakeReply, ServerGuard};
use serde_json::{Value, json};

const KEY: &str = "test-internal-key-0123456789";
/// Two MiB: twice the default cap.
const HUGE: usize = 2 * 1024 * 1024;

async fn proxy_of(fake: &FakeLlm, flavor: FakeFlavor, max_line: Option<usize>) -> ServerGuard {
    let (model, base) = match flavor {
        FakeFlavor::OpenAi => ("openai/gpt-4o", fake.openai_base()),
        FakeFlavor::Anthropic => ("anthropic/claude-sonnet-4-20250514", fake.base_url()),
        FakeFlavor::Ollama => ("ollama/qwen3:0.6b", fake.base_url()),
    };
    let table = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(
        table.path(),
        format!(
            "model_list:\n  - model_name: m\n    litellm_params:\n      model: {model}\n      api_base: {base}\n      api_key: sk-fake-key\n"
        ),
    )
    .unwrap();
    let mut config = Config {
        internal_api_key: Secret::new(KEY),
        config_file: Some(table.path().to_owned()),
        retry_backoff_ms: 1,
        request_timeout: 10.0,
        ..Config::default()
    };
    if let Some(max_line) = max_line {
        config.max_stream_line_bytes = max_line;
    }
    // The table is read by `build`; the file may go afterwards.
    let state = ProxyService::build(config, SharedDeps::default())
        .await
        .unwrap();
    ServerGuard::start(ProxyService::router(state)).await
}

/// Streams a chat request and returns the raw SSE body.
async fn stream_body(proxy: &ServerGuard) -> String {
    let response = reqwest::Client::new()
        .post(format!("{}/v1/chat/completions", proxy.base_url()))
        .header("X-Internal-Auth", KEY)
        .json(
            &json!({"model": "m", "stream": true, "messages": [{"role": "user", "content": "x"}]}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    tokio::time::timeout(Duration::from_secs(20), response.text())
        .await
        .expect("the reply never ended")
        .unwrap()
}

fn payloads(body: &str) -> Vec<String> {
    body.lines()
        .filter_map(|line| {
            line.strip_prefix("data: ")
                .or_else(|| line.strip_prefix("data:"))
        })
        .map(|s| s.trim().to_owned())
        .collect()
}

#[tokio::test]
async fn a_stream_line_past_the_cap_ends_the_reply_with_an_error_event_and_done() {
    for flavor in [
        FakeFlavor::OpenAi,
        FakeFlavor::Anthropic,
        FakeFlavor::Ollama,
    ] {
        let fake = FakeLlm::start(flavor).await;
        fake.push_reply(FakeReply::text(&["hello ", &"x".repeat(HUGE)]));
        let proxy = proxy_of(&fake, flavor, None).await;
        let body = stream_body(&proxy).await;
        assert!(
            body.len() < HUGE / 2,
            "{flavor:?}: the long line was relayed ({} bytes)",
            body.len()
        );
        let payloads = payloads(&body);
        assert_eq!(
            payloads.last().map(String::as_str),
            Some("[DONE]"),
            "{flavor:?}: {body}"
        );
        let chunks: Vec<Value> = payloads
            .iter()
            .filter(|p| *p != "[DONE]")
            .map(|p| serde_json::from_str(p).unwrap())
            .collect();
        assert!(
            chunks
                .iter()
                .any(|c| c["choices"][0]["delta"]["content"] == "hello "),
            "{flavor:?}: what came before the long line is relayed: {body}"
        );
        let error = chunks
            .iter()
            .find_map(|c| c.get("error"))
            .unwrap_or_else(|| panic!("{flavor:?}: no error event: {body}"));
        let message = error["message"].as_str().unwrap();
        assert!(
            message.contains("1048576 byte limit"),
            "{flavor:?}: {message}"
        );
    }
}

#[tokio::test]
async fn the_setting_raises_the_cap() {
    let fake = FakeLlm::start(FakeFlavor::OpenAi).await;
    fake.push_reply(FakeReply::text(&["hello ", &"x".repeat(HUGE)]));
    let proxy = proxy_of(&fake, FakeFlavor::OpenAi, Some(4 * HUGE)).await;
    let body = stream_body(&proxy).await;
    assert!(
        !body.contains("\"error\""),
        "{}",
        &body[..body.len().min(500)]
    );
    assert!(body.len() > HUGE);
    assert_eq!(payloads(&body).last().map(String::as_str), Some("[DONE]"));
}

#[test]
fn a_tiny_cap_is_refused() {
    let config = Config {
        max_stream_line_bytes: 10,
        ..Config::default()
    };
    let error = config
        .validate(codelab_core::config::Environment::Development)
        .unwrap_err();
    assert!(
        error
            .to_string()
            .contains("LLM_PROXY__MAX_STREAM_LINE_BYTES")
    );
}
