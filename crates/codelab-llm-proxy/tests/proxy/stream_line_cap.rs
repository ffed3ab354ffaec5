//! An upstream that streams a line longer than `LLM_PROXY__MAX_STREAM_LINE_BYTES` (default
//! 1 MiB) fails the reply the way other mid-stream failures do (an error event, then
//! `[DONE]`), for every streaming wire format (OpenAI SSE, Anthropic SSE, Ollama NDJSON).

use std::time::Duration;

use codelab_core::service::ServiceConfig;
use codelab_testkit::FakeReply;

use super::*;

/// Two MiB: twice the default cap.
const HUGE: usize = 2 * 1024 * 1024;

/// A proxy of a fake `flavor` upstream that will stream `hello ` and then one [`HUGE`] line.
async fn proxy_of(flavor: FakeFlavor, max_line: Option<usize>) -> (FakeLlm, Proxy) {
    let (fake, proxy) = provider_proxy(flavor, |config| {
        config.request_timeout = 10.0;
        config.max_stream_line_bytes = max_line.unwrap_or(config.max_stream_line_bytes);
    })
    .await;
    fake.push_reply(FakeReply::text(&["hello ", &"x".repeat(HUGE)]));
    (fake, proxy)
}

/// Streams a chat request and returns the raw SSE body.
async fn stream_body(proxy: &Proxy) -> String {
    let response = proxy.chat(ask_streamed("m", "x")).await;
    assert_eq!(response.status(), 200);
    tokio::time::timeout(Duration::from_secs(20), response.text())
        .await
        .expect("the reply never ended")
        .unwrap()
}

#[tokio::test]
async fn a_stream_line_past_the_cap_ends_the_reply_with_an_error_event_and_done() {
    for flavor in [
        FakeFlavor::OpenAi,
        FakeFlavor::Anthropic,
        FakeFlavor::Ollama,
    ] {
        let (_fake, proxy) = proxy_of(flavor, None).await;
        let body = stream_body(&proxy).await;
        assert!(
            body.len() < HUGE / 2,
            "{flavor:?}: the long line was relayed ({} bytes)",
            body.len()
        );
        let payloads = sse_payloads(&body);
        assert_eq!(
            payloads.last().map(String::as_str),
            Some("[DONE]"),
            "{flavor:?}: {body}"
        );
        let chunks = json_chunks(&payloads);
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
    let (_fake, proxy) = proxy_of(FakeFlavor::OpenAi, Some(4 * HUGE)).await;
    let body = stream_body(&proxy).await;
    assert!(
        !body.contains("\"error\""),
        "{}",
        &body[..body.len().min(500)]
    );
    assert!(body.len() > HUGE);
    assert_eq!(
        sse_payloads(&body).last().map(String::as_str),
        Some("[DONE]")
    );
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
