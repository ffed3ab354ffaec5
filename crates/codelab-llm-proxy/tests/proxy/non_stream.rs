//! A non-streamed client request is sent upstream non-streamed (OpenAI-compatible and Azure
//! deployments), so the client gets the upstream's real `usage` even from servers that ignore
//! `stream_options.include_usage` (vLLM, LM Studio, older Azure api-versions); see
//! docs/llm-proxy.md.

use codelab_testkit::{FakeReply, FakeToolCall};

use super::*;

/// A proxy of an OpenAI-compatible fake that, like vLLM, streams no usage chunk.
async fn no_usage_chunk_proxy() -> (FakeLlm, Proxy) {
    let (fake, proxy) = provider_proxy(FakeFlavor::OpenAi, |_| {}).await;
    fake.set_omit_stream_usage(true);
    (fake, proxy)
}

#[tokio::test]
async fn a_non_streamed_request_goes_upstream_non_streamed_and_gets_the_real_usage() {
    let (fake, proxy) = provider_proxy(FakeFlavor::OpenAi, |_| {}).await;
    fake.push_reply(
        FakeReply::text(&["Let me ", "look."])
            .with_reasoning(&["think"])
            .with_tool_calls(vec![FakeToolCall::new(
                "call_A",
                "read_file",
                r#"{"path":"a.py"}"#,
            )])
            .with_usage(21, 8)
            .with_cached_tokens(16),
    );
    let mut request = ask("m", "read a.py");
    request["stream_options"] = json!({"include_usage": true});
    let response = proxy.chat(request).await;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();

    let seen = fake.last_request().unwrap();
    assert_eq!(seen.asked_stream(), Some(false));
    assert!(seen.body.get("stream_options").is_none(), "{}", seen.body);
    assert_eq!(seen.header("accept"), Some("application/json"));
    assert_eq!(seen.body["model"], "gpt-4o");

    assert_eq!(body["object"], "chat.completion");
    assert_eq!(body["model"], "m");
    let message = &body["choices"][0]["message"];
    assert_eq!(message["content"], "Let me look.");
    assert_eq!(message["reasoning_content"], "think");
    assert_eq!(message["tool_calls"][0]["id"], "call_A");
    assert_eq!(
        message["tool_calls"][0]["function"],
        json!({"name": "read_file", "arguments": "{\"path\":\"a.py\"}"})
    );
    assert_eq!(body["choices"][0]["finish_reason"], "tool_calls");
    assert_eq!(
        body["usage"],
        json!({"prompt_tokens": 21, "completion_tokens": 8, "total_tokens": 29,
               "prompt_tokens_details": {"cached_tokens": 16}})
    );
}

#[tokio::test]
async fn without_a_stream_usage_chunk_a_non_streamed_request_still_reports_the_usage() {
    let (fake, proxy) = no_usage_chunk_proxy().await;
    fake.set_default_reply(FakeReply::text(&["Hel", "lo"]).with_usage(13, 4));
    // The bug this fixes: streamed upstream, this answer reported 0/0/0.
    let body = proxy.chat_json(ask("m", "hi")).await;
    assert_eq!(body["choices"][0]["message"]["content"], "Hello");
    assert_eq!(
        body["usage"],
        json!({"prompt_tokens": 13, "completion_tokens": 4, "total_tokens": 17})
    );
    assert_eq!(fake.last_request().unwrap().asked_stream(), Some(false));

    // A streamed request is still streamed upstream and still works; the upstream reports no
    // usage, so the closing usage chunk the client asked for carries zeros.
    let mut streamed = ask_streamed("m", "hi");
    streamed["stream_options"] = json!({"include_usage": true});
    let payloads = proxy.chat_stream(streamed).await;
    assert_eq!(payloads.last().map(String::as_str), Some("[DONE]"));
    let chunks = json_chunks(&payloads);
    let (text, _, finish) = collect_stream(&chunks);
    assert_eq!(text, "Hello");
    assert_eq!(finish.as_deref(), Some("stop"));
    let usage = chunks.last().unwrap();
    assert_eq!(usage["choices"], json!([]));
    assert_eq!(usage["usage"]["total_tokens"], 0);
    let seen = fake.last_request().unwrap();
    assert_eq!(seen.asked_stream(), Some(true));
    assert_eq!(seen.body["stream_options"], json!({"include_usage": true}));
}

#[tokio::test]
async fn an_oversized_non_streamed_answer_is_a_clean_502() {
    let (fake, proxy) = provider_proxy(FakeFlavor::OpenAi, |config| {
        config.max_response_bytes = 64 * 1024;
    })
    .await;
    fake.set_default_reply(FakeReply::text(&[&"x".repeat(1024 * 1024)]));
    let response = proxy.chat(ask("m", "x")).await;
    assert_eq!(response.status(), 502);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["type"], "upstream_error");
    assert_eq!(body["error"]["code"], "502");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("65536 byte limit") && message.contains("LLM_PROXY__MAX_RESPONSE_BYTES"),
        "{message}"
    );
    assert_eq!(fake.request_count(), 1, "a too-large answer is not retried");

    // The same answer within the cap passes.
    let (fake, proxy) = provider_proxy(FakeFlavor::OpenAi, |config| {
        config.max_response_bytes = 4 * 1024 * 1024;
    })
    .await;
    fake.set_default_reply(FakeReply::text(&[&"x".repeat(1024 * 1024)]));
    let body = proxy.chat_json(ask("m", "x")).await;
    assert_eq!(
        body["choices"][0]["message"]["content"]
            .as_str()
            .unwrap()
            .len(),
        1024 * 1024
    );
}

#[test]
fn a_tiny_answer_cap_is_refused() {
    use codelab_core::service::ServiceConfig;
    let config = Config {
        max_response_bytes: 10,
        ..Config::default()
    };
    let error = config
        .validate(codelab_core::config::Environment::Development)
        .unwrap_err();
    assert!(
        error.to_string().contains("LLM_PROXY__MAX_RESPONSE_BYTES"),
        "{error}"
    );
}

#[tokio::test]
async fn upstream_statuses_map_as_before_on_the_non_streamed_path() {
    let (fake, proxy) = provider_proxy(FakeFlavor::OpenAi, |config| config.max_retries = 0).await;
    for (upstream, client, kind) in [
        (400, 400, "invalid_request_error"),
        (404, 404, "invalid_request_error"),
        (401, 502, "upstream_error"),
        (500, 502, "upstream_error"),
        (503, 502, "upstream_error"),
    ] {
        fake.push_reply(FakeReply::status(upstream).with_error_message(format!("boom {upstream}")));
        let response = proxy.chat(ask("m", "x")).await;
        assert_eq!(response.status(), client, "upstream {upstream}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"]["type"], kind, "upstream {upstream}");
        assert_eq!(body["error"]["message"], format!("boom {upstream}"));
        assert_eq!(body["error"]["code"], upstream.to_string());
    }
    // A body cut off mid-answer is a 502 too.
    fake.push_reply(FakeReply::text(&["a", "b", "c"]).disconnect_after(2));
    let response = proxy.chat(ask("m", "x")).await;
    assert_eq!(response.status(), 502);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["type"], "upstream_error");
    assert!(
        fake.requests()
            .iter()
            .all(|r| r.asked_stream() == Some(false)),
        "every attempt went upstream non-streamed"
    );
}

#[tokio::test]
async fn retries_and_fallbacks_work_on_the_non_streamed_path() {
    let primary = FakeLlm::start(FakeFlavor::OpenAi).await;
    let secondary = FakeLlm::start(FakeFlavor::OpenAi).await;
    primary.set_default_reply(FakeReply::status(503));
    secondary.set_omit_stream_usage(true);
    secondary.push_reply(FakeReply::text(&["rescued"]).with_usage(9, 1));
    let mut yaml = table(&[
        ("main", "openai/x", &primary.openai_base()),
        ("backup", "openai/y", &secondary.openai_base()),
    ]);
    yaml.push_str("router_settings:\n  num_retries: 1\n  fallbacks: [{\"main\": [\"backup\"]}]\n");
    let proxy = Proxy::start(Some(yaml), |_| {}).await;
    let body = proxy.chat_json(ask("main", "x")).await;
    assert_eq!(body["choices"][0]["message"]["content"], "rescued");
    assert_eq!(body["usage"]["total_tokens"], 10);
    assert_eq!(
        primary.request_count(),
        2,
        "one try and one retry before falling back"
    );
    assert_eq!(secondary.request_count(), 1);
    assert_eq!(
        secondary.last_request().unwrap().asked_stream(),
        Some(false)
    );

    // A retried 429 that then succeeds answers normally.
    let (fake, proxy) = provider_proxy(FakeFlavor::OpenAi, |_| {}).await;
    fake.push_reply(FakeReply::status(429));
    fake.push_reply(FakeReply::text(&["ok"]).with_usage(2, 1));
    let body = proxy.chat_json(ask("m", "x")).await;
    assert_eq!(body["choices"][0]["message"]["content"], "ok");
    assert_eq!(body["usage"]["total_tokens"], 3);
    assert_eq!(fake.request_count(), 2);
}

#[tokio::test]
async fn anthropic_and_ollama_stay_streamed_upstream_with_their_usage() {
    for flavor in [FakeFlavor::Anthropic, FakeFlavor::Ollama] {
        let (fake, proxy) = provider_proxy(flavor, |_| {}).await;
        fake.set_default_reply(FakeReply::text(&["Hel", "lo"]).with_usage(6, 2));
        let body = proxy.chat_json(ask("m", "hi")).await;
        assert_eq!(
            body["choices"][0]["message"]["content"], "Hello",
            "{flavor:?}"
        );
        assert_eq!(body["usage"]["total_tokens"], 8, "{flavor:?}");
        let seen = fake.last_request().unwrap();
        assert_eq!(seen.asked_stream(), Some(true), "{flavor:?}");
    }
}
