//! The proxy's HTTP API: the original's acceptance checklist, tool-call translation, routing,
//! failures and bad input.

use std::time::Duration;

use codelab_llm_proxy::config::LlmMode;
use codelab_testkit::{FakeReply, FakeToolCall};
use futures_util::StreamExt;

use super::*;

// ---- acceptance checklist of the original ----

#[tokio::test]
async fn health_answers_in_the_original_shape() {
    let proxy = Proxy::start(None, |_| {}).await;
    let body: Value = proxy.get_json("/health", None).await;
    assert_eq!(body["status"], "healthy");
    assert_eq!(body["service"], "llm-proxy");
    assert!(body["version"].is_string());
}

#[tokio::test]
async fn models_list_needs_the_key_except_on_the_original_open_path() {
    let proxy = Proxy::start(None, |_| {}).await;
    let denied = proxy.get("/v1/llm/models", None).await;
    assert_eq!(denied.status(), 401);
    let models: Value = proxy.get_json("/v1/llm/models", Some(KEY)).await;
    let mock = models
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["id"] == "mock-llm")
        .unwrap();
    assert_eq!(
        mock,
        &json!({"id":"mock-llm","name":"FakeLLM Echo","provider":"Fake","context_length":4096,"is_available":true})
    );
    let open = proxy.get("/llm/models", None).await;
    assert_eq!(open.status(), 200);
    let openai: Value = proxy.get_json("/v1/models", Some(KEY)).await;
    assert_eq!(openai["object"], "list");
}

#[tokio::test]
async fn missing_or_wrong_key_is_401_before_the_body_is_looked_at() {
    let proxy = Proxy::start(None, |_| {}).await;
    for key in [None, Some("wrong"), Some("")] {
        let mut request = proxy
            .http
            .post(proxy.url("/v1/chat/completions"))
            .body("{not json");
        if let Some(key) = key {
            request = request.header("X-Internal-Auth", key);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), 401);
        assert_eq!(
            response.text().await.unwrap(),
            r#"{"detail":"unauthorized"}"#
        );
    }
}

#[tokio::test]
async fn a_body_without_model_or_messages_is_422() {
    let proxy = Proxy::start(None, |_| {}).await;
    let no_model = proxy.chat(json!({"messages": user("hi")})).await;
    assert_eq!(no_model.status(), 422);
    let body: Value = no_model.json().await.unwrap();
    assert!(body["error"]["message"].as_str().unwrap().contains("model"));
    let no_messages = proxy.chat(json!({"model": "mock-llm"})).await;
    assert_eq!(no_messages.status(), 422);
}

#[tokio::test]
async fn mock_non_stream_answers_the_static_text_with_usage() {
    let proxy = Proxy::start(None, |_| {}).await;
    let body: Value = proxy
        .chat_json(json!({"model": "fake-llm", "messages": user("hello"), "stream": false}))
        .await;
    assert_eq!(body["object"], "chat.completion");
    assert_eq!(body["model"], "fake-llm");
    assert_eq!(
        body["choices"][0]["message"]["content"],
        "Mock LLM response (static)"
    );
    assert_eq!(body["choices"][0]["finish_reason"], "stop");
    assert_eq!(
        body["usage"],
        json!({"prompt_tokens": 1, "completion_tokens": 4, "total_tokens": 5})
    );
}

#[tokio::test]
async fn mock_stream_has_role_tokens_finish_and_done() {
    let proxy = Proxy::start(None, |_| {}).await;
    let payloads = proxy
        .chat_stream(json!({"model": "mock-llm", "messages": user("hello"), "stream": true, "stream_options": {"include_usage": true}}))
        .await;
    assert_eq!(payloads.last().unwrap(), "[DONE]");
    let chunks = json_chunks(&payloads);
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let tokens: Vec<&str> = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .filter(|t| !t.is_empty())
        .collect();
    assert_eq!(tokens, ["Mock ", "LLM ", "response ", "(static)"]);
    let (_, _, finish) = collect_stream(&chunks);
    assert_eq!(finish.as_deref(), Some("stop"));
    let usage = chunks.last().unwrap();
    assert_eq!(usage["choices"], json!([]));
    assert_eq!(usage["usage"]["total_tokens"], 5);
}

#[tokio::test]
async fn mock_tool_directives_become_tool_calls_with_unique_ids() {
    let proxy = Proxy::start(None, |_| {}).await;
    let text = "list then read\n::tool list_files {\"path\": \".\"}\n::tool read_file {\"path\": \"a.py\"}";
    let body: Value = proxy.chat_json(ask("mock-llm", text)).await;
    let calls = body["choices"][0]["message"]["tool_calls"]
        .as_array()
        .unwrap();
    assert_eq!(calls.len(), 2);
    assert_eq!(calls[0]["function"]["name"], "list_files");
    assert_eq!(calls[1]["function"]["arguments"], r#"{"path":"a.py"}"#);
    let ids: Vec<&str> = calls.iter().map(|c| c["id"].as_str().unwrap()).collect();
    assert_ne!(ids[0], ids[1]);
    for id in ids {
        assert!(
            id.len() == 29
                && id.starts_with("call_")
                && id[5..].chars().all(|c| c.is_ascii_hexdigit()),
            "{id}"
        );
    }
    assert_eq!(body["choices"][0]["finish_reason"], "tool_calls");
}

#[tokio::test]
async fn mock_error_directive_is_final_and_mapped() {
    let proxy = Proxy::start(None, |c| c.max_retries = 3).await;
    let response = proxy.chat(ask("mock-llm", "::error 429")).await;
    assert_eq!(response.status(), 429);
    assert!(response.headers().get("retry-after").is_some());
    let response = proxy.chat(ask("mock-llm", "::error 500")).await;
    assert_eq!(response.status(), 502);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "500");
}

#[tokio::test]
async fn mock_mode_serves_every_model_name() {
    let proxy = Proxy::start(None, |c| c.llm_mode = LlmMode::Mock).await;
    let body: Value = proxy.chat_json(ask("Qwen/Qwen3-0.6B", "hi")).await;
    assert_eq!(
        body["choices"][0]["message"]["content"],
        "Mock LLM response (static)"
    );
}

// ---- tool-call translation for every provider, both modes ----

fn two_tool_calls() -> FakeReply {
    FakeReply::tool_calls(vec![
        FakeToolCall::new("call_A", "read_file", r#"{"path":"a.py"}"#),
        FakeToolCall::new(
            "call_B",
            "search_in_code",
            r#"{"query":"fn main","case_sensitive":true}"#,
        )
        .with_split(5),
    ])
    .with_text(&["Let me ", "look."])
    .with_usage(82, 31)
}

#[tokio::test]
async fn tool_calls_translate_for_every_provider_stream_and_not() {
    for flavor in [
        FakeFlavor::OpenAi,
        FakeFlavor::Anthropic,
        FakeFlavor::Ollama,
    ] {
        let (fake, proxy) = provider_proxy(flavor, |_| {}).await;
        fake.push_reply(two_tool_calls());
        fake.push_reply(two_tool_calls());
        let request = json!({"model": "m", "messages": user("read"), "tools": [{"type":"function","function":{"name":"read_file","parameters":{"type":"object"}}}]});

        let body: Value = proxy.chat_json(request.clone()).await;
        let message = &body["choices"][0]["message"];
        assert_eq!(message["content"], "Let me look.", "{flavor:?}");
        let calls = message["tool_calls"].as_array().unwrap();
        assert_eq!(calls.len(), 2, "{flavor:?}");
        assert_eq!(calls[0]["function"]["name"], "read_file");
        let args: Value =
            serde_json::from_str(calls[1]["function"]["arguments"].as_str().unwrap()).unwrap();
        assert_eq!(
            args,
            json!({"query":"fn main","case_sensitive":true}),
            "{flavor:?}"
        );
        assert!(
            calls
                .iter()
                .all(|c| c["id"].as_str().is_some_and(|id| !id.is_empty()))
        );
        assert_eq!(body["choices"][0]["finish_reason"], "tool_calls");
        assert_eq!(
            body["usage"],
            json!({"prompt_tokens":82,"completion_tokens":31,"total_tokens":113}),
            "{flavor:?}"
        );

        let mut streamed = request.clone();
        streamed["stream"] = json!(true);
        streamed["stream_options"] = json!({"include_usage": true});
        let payloads = proxy.chat_stream(streamed).await;
        let chunks = json_chunks(&payloads);
        let (text, calls, finish) = collect_stream(&chunks);
        assert_eq!(text, "Let me look.", "{flavor:?}");
        assert_eq!(calls.len(), 2);
        assert_eq!(calls[0].1, "read_file");
        let args: Value = serde_json::from_str(&calls[0].2).unwrap();
        assert_eq!(args, json!({"path":"a.py"}), "{flavor:?}");
        assert!(calls.iter().all(|(id, _, _)| !id.is_empty()));
        assert_eq!(finish.as_deref(), Some("tool_calls"));
        assert_eq!(
            chunks.last().unwrap()["usage"]["total_tokens"],
            113,
            "{flavor:?}"
        );
        assert_eq!(payloads.last().unwrap(), "[DONE]");
    }
}

#[tokio::test]
async fn agent_runtime_request_shapes_round_trip() {
    // The runtime's main path: history with an agent-named assistant tool call,
    // a tool result, tools, stream false; and the routing classifier with temperature.
    let (fake, proxy) = provider_proxy(FakeFlavor::OpenAi, |_| {}).await;
    fake.push_reply(FakeReply::text(&["done"]));
    let history = json!([
        {"role": "system", "content": "You are coder."},
        {"role": "user", "content": "read a.py"},
        {"role": "assistant", "name": "coder", "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "read_file", "arguments": "{\"path\":\"a.py\"}"}}]},
        {"role": "tool", "content": "print(1)", "tool_call_id": "call_1"}
    ]);
    let body: Value = proxy
        .chat_json(json!({"model": "m", "messages": history, "stream": false, "tools": [{"type":"function","function":{"name":"read_file","description":"Read","parameters":{"type":"object","properties":{"path":{"type":"string"}}}}}]})).await;
    assert_eq!(body["choices"][0]["message"]["content"], "done");
    let sent = fake.last_request().unwrap();
    assert_eq!(sent.body["model"], "gpt-4o");
    assert_eq!(sent.body["messages"][2]["tool_calls"][0]["id"], "call_1");
    assert_eq!(sent.body["messages"][3]["tool_call_id"], "call_1");
    assert_eq!(sent.header("authorization"), Some("Bearer sk-fake-key"));

    fake.push_reply(FakeReply::text(&["{\"agent\":\"architect\"}"]));
    let classifier = json!({"model": "m", "messages": [{"role":"system","content":"You are a task classifier. Respond only with JSON."},{"role":"user","content":"design"}], "stream": false, "temperature": 0.3});
    let body: Value = proxy.chat_json(classifier).await;
    assert_eq!(
        body["choices"][0]["message"]["content"],
        "{\"agent\":\"architect\"}"
    );
    assert_eq!(fake.last_request().unwrap().body["temperature"], 0.3);
}

#[tokio::test]
async fn unknown_request_fields_pass_through_to_openai_upstreams() {
    let (fake, proxy) = provider_proxy(FakeFlavor::OpenAi, |_| {}).await;
    fake.push_reply(FakeReply::text(&["ok"]));
    proxy
        .chat(json!({"model": "m", "messages": user("x"), "seed": 7, "response_format": {"type": "json_object"}, "parallel_tool_calls": false, "logit_bias": {"50256": -100}}))
        .await;
    let sent = fake.last_request().unwrap().body;
    assert_eq!(sent["seed"], 7);
    assert_eq!(sent["response_format"], json!({"type": "json_object"}));
    assert_eq!(sent["parallel_tool_calls"], false);
    assert_eq!(sent["logit_bias"]["50256"], -100);
}

#[tokio::test]
async fn reasoning_is_passed_on_as_reasoning_content() {
    let (fake, proxy) = provider_proxy(FakeFlavor::Anthropic, |_| {}).await;
    fake.push_reply(FakeReply::text(&["42"]).with_reasoning(&["thinking ", "hard"]));
    let body: Value = proxy.chat_json(ask("m", "q")).await;
    assert_eq!(
        body["choices"][0]["message"]["reasoning_content"],
        "thinking hard"
    );
    assert_eq!(body["choices"][0]["message"]["content"], "42");
}

// ---- routing ----

#[tokio::test]
async fn unknown_model_is_400_model_not_found() {
    let proxy = Proxy::start(None, |_| {}).await;
    let response = proxy.chat(ask("no-such-model", "x")).await;
    assert_eq!(response.status(), 400);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["type"], "invalid_request_error");
    assert_eq!(body["error"]["code"], "model_not_found");
}

#[tokio::test]
async fn provider_prefixes_route_names_missing_from_the_table() {
    let fake = FakeLlm::start(FakeFlavor::Ollama).await;
    fake.push_reply(FakeReply::text(&["from ollama"]));
    let env = EnvVars::from_pairs([("OLLAMA_API_BASE", fake.base_url())]);
    let proxy = Proxy::start_with_env(None, env, |_| {}).await;
    let body: Value = proxy.chat_json(ask("ollama/llama3.2:1b", "x")).await;
    assert_eq!(body["choices"][0]["message"]["content"], "from ollama");
    assert_eq!(fake.last_request().unwrap().body["model"], "llama3.2:1b");
}

#[tokio::test]
async fn external_litellm_receives_names_nothing_else_matched() {
    let fake = FakeLlm::start(FakeFlavor::OpenAi).await;
    fake.push_reply(FakeReply::text(&["via litellm"]));
    let base = fake.base_url();
    let proxy = Proxy::start(None, move |c| c.litellm_proxy_url = Some(base)).await;
    let body: Value = proxy.chat_json(ask("qwen3", "x")).await;
    assert_eq!(body["choices"][0]["message"]["content"], "via litellm");
    let sent = fake.last_request().unwrap();
    assert_eq!(sent.body["model"], "qwen3");
    assert_eq!(sent.header("authorization"), Some("Bearer dummy-key"));
}

#[tokio::test]
async fn repeated_names_are_load_balanced() {
    let a = FakeLlm::start(FakeFlavor::OpenAi).await;
    let b = FakeLlm::start(FakeFlavor::OpenAi).await;
    let proxy = Proxy::start(
        Some(table(&[
            ("m", "openai/x", &a.openai_base()),
            ("m", "openai/x", &b.openai_base()),
        ])),
        |_| {},
    )
    .await;
    for _ in 0..4 {
        assert_eq!(proxy.chat(ask("m", "x")).await.status(), 200);
    }
    assert_eq!((a.request_count(), b.request_count()), (2, 2));
}

// ---- failures: retries, fallbacks, statuses ----

#[tokio::test]
async fn fallback_happens_before_the_first_byte() {
    let primary = FakeLlm::start(FakeFlavor::OpenAi).await;
    let secondary = FakeLlm::start(FakeFlavor::Anthropic).await;
    primary.set_default_reply(FakeReply::status(503));
    secondary.push_reply(FakeReply::text(&["rescued"]));
    let mut yaml = table(&[
        ("main", "openai/x", &primary.openai_base()),
        ("backup", "anthropic/y", &secondary.base_url()),
    ]);
    yaml.push_str("router_settings:\n  num_retries: 1\n  fallbacks: [{\"main\": [\"backup\"]}]\n");
    let proxy = Proxy::start(Some(yaml), |_| {}).await;
    let payloads = proxy.chat_stream(ask_streamed("main", "x")).await;
    let (text, _, _) = collect_stream(&json_chunks(&payloads));
    assert_eq!(text, "rescued");
    assert_eq!(
        primary.request_count(),
        2,
        "one try and one retry before falling back"
    );
    assert_eq!(secondary.request_count(), 1);
}

#[tokio::test]
async fn no_fallback_after_the_first_byte_but_an_error_event_and_done() {
    let primary = FakeLlm::start(FakeFlavor::OpenAi).await;
    let secondary = FakeLlm::start(FakeFlavor::OpenAi).await;
    primary.push_reply(
        FakeReply::text(&["partial ", "answer ", "never ", "ends"]).disconnect_after(3),
    );
    let mut yaml = table(&[
        ("main", "openai/x", &primary.openai_base()),
        ("backup", "openai/y", &secondary.openai_base()),
    ]);
    yaml.push_str("router_settings:\n  fallbacks: [{\"main\": [\"backup\"]}]\n");
    let proxy = Proxy::start(Some(yaml), |_| {}).await;
    let payloads = proxy.chat_stream(ask_streamed("main", "x")).await;
    assert_eq!(payloads.last().unwrap(), "[DONE]");
    let chunks = json_chunks(&payloads);
    let error = chunks
        .iter()
        .find(|c| c.get("error").is_some())
        .expect("an error event");
    assert_eq!(error["error"]["type"], "upstream_error");
    assert!(
        chunks
            .iter()
            .any(|c| c["choices"][0]["delta"]["content"] == "partial ")
    );
    assert_eq!(secondary.request_count(), 0);
}

#[tokio::test]
async fn mid_stream_provider_error_events_are_relayed_as_errors() {
    let (fake, proxy) = provider_proxy(FakeFlavor::Anthropic, |_| {}).await;
    fake.push_reply(FakeReply::text(&["a", "b"]).with_stream_error("Overloaded"));
    let payloads = proxy.chat_stream(ask_streamed("m", "x")).await;
    assert_eq!(payloads.last().unwrap(), "[DONE]");
    let chunks = json_chunks(&payloads);
    let error = chunks.iter().find(|c| c.get("error").is_some()).unwrap();
    assert!(
        error["error"]["message"]
            .as_str()
            .unwrap()
            .contains("Overloaded")
    );
}

#[tokio::test]
async fn exhausted_429_stays_429_with_retry_after() {
    let (fake, proxy) = provider_proxy(FakeFlavor::OpenAi, |_| {}).await;
    fake.set_default_reply(FakeReply::status(429).with_retry_after(1));
    let response = proxy.chat(ask("m", "x")).await;
    assert_eq!(response.status(), 429);
    assert_eq!(response.headers()["retry-after"], "1");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["type"], "rate_limit_exceeded");
    assert_eq!(fake.request_count(), 3, "the first try and two retries");
}

#[tokio::test]
async fn server_errors_and_refused_connections_are_502_and_timeouts_504() {
    let (fake, proxy) = provider_proxy(FakeFlavor::Ollama, |_| {}).await;
    fake.set_default_reply(FakeReply::status(500));
    assert_eq!(proxy.chat(ask("m", "x")).await.status(), 502);

    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead = format!("http://{}/v1", closed.local_addr().unwrap());
    drop(closed);
    let proxy = Proxy::start(Some(table(&[("m", "openai/x", &dead)])), |_| {}).await;
    let response = proxy.chat(ask("m", "x")).await;
    assert_eq!(response.status(), 502);

    let slow = FakeLlm::start(FakeFlavor::OpenAi).await;
    slow.set_default_reply(
        FakeReply::text(&["late"]).with_first_byte_delay(Duration::from_secs(3)),
    );
    let proxy = Proxy::start(
        Some(table(&[("m", "openai/x", &slow.openai_base())])),
        |c| {
            c.request_timeout = 0.3;
            c.max_retries = 0;
        },
    )
    .await;
    let response = proxy.chat(ask("m", "x")).await;
    assert_eq!(response.status(), 504);
}

#[tokio::test]
async fn client_disconnect_cancels_the_upstream_request() {
    let (fake, proxy) = provider_proxy(FakeFlavor::OpenAi, |_| {}).await;
    let chunks: Vec<String> = (0..200).map(|i| format!("t{i} ")).collect();
    let chunk_refs: Vec<&str> = chunks.iter().map(String::as_str).collect();
    fake.push_reply(FakeReply::text(&chunk_refs).with_chunk_delay(Duration::from_millis(20)));
    let response = proxy.chat(ask_streamed("m", "x")).await;
    let mut body = response.bytes_stream();
    let first = body.next().await.unwrap().unwrap();
    assert!(!first.is_empty());
    drop(body);
    assert!(
        fake.wait_for_cancelled(1, Duration::from_secs(5)).await,
        "the upstream stream was not cancelled"
    );
    assert_eq!(fake.completed_streams(), 0);
}

#[tokio::test]
async fn the_concurrency_limit_answers_429_with_retry_after() {
    let proxy = Proxy::start(None, |c| c.max_concurrent_requests = 1).await;
    let slow = proxy.chat(ask_streamed("mock-llm", "::slow 200")).await;
    assert_eq!(slow.status(), 200);
    let refused = proxy.chat(ask("mock-llm", "x")).await;
    assert_eq!(refused.status(), 429);
    assert_eq!(refused.headers()["retry-after"], "1");
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["error"]["code"], "concurrency_limit");
    drop(slow.text().await);
    assert_eq!(proxy.chat(ask("mock-llm", "x")).await.status(), 200);
}

// ---- bad input ----

#[tokio::test]
async fn bad_json_wrong_types_and_oversized_bodies_get_clear_4xx() {
    let proxy = Proxy::start(None, |c| c.max_body_bytes = 1024).await;
    let bad = proxy.post_raw("{\"model\": ").await;
    assert_eq!(bad.status(), 400);
    let body: Value = bad.json().await.unwrap();
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("not valid JSON")
    );

    let wrong = proxy
        .chat(json!({"model": "mock-llm", "messages": "hello"}))
        .await;
    assert_eq!(wrong.status(), 422);
    let body: Value = wrong.json().await.unwrap();
    assert_eq!(
        body["error"]["message"],
        "field `messages` must be an array, got a string"
    );

    let wrong_temperature = proxy
        .chat(json!({"model": "mock-llm", "messages": user("x"), "temperature": "hot"}))
        .await;
    assert_eq!(wrong_temperature.status(), 422);

    let huge = proxy.chat(ask("mock-llm", &"x".repeat(4096))).await;
    assert_eq!(huge.status(), 413);
    let body: Value = huge.json().await.unwrap();
    assert!(body["error"]["message"].is_string());
}

#[tokio::test]
async fn a_body_over_the_listener_limit_is_refused_in_the_openai_shape() {
    let proxy = Proxy::start(None, |config| config.max_body_bytes = 1024).await;
    let response = proxy.post_raw("x".repeat(4096)).await;
    assert_eq!(response.status(), 413);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["type"], "invalid_request_error", "{body}");
    assert_eq!(body["error"]["code"], "payload_too_large", "{body}");
    assert!(body["error"]["message"].is_string(), "{body}");
}
