//! Wire-format tests for the fake upstream LLM providers, over real HTTP with reqwest.

use std::time::{Duration, Instant};

use codelab_testkit::fake_llm::{FakeFlavor, FakeLlm, FakeReply, FakeToolCall};
use futures_util::StreamExt;
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(10);

fn client() -> reqwest::Client {
    reqwest::Client::new()
}

/// Splits an SSE body into events of `(event name, data)`; `data` is raw text.
fn sse_events(body: &str) -> Vec<(Option<String>, String)> {
    assert!(
        body.ends_with("\n\n"),
        "SSE body must end with a blank line: {body:?}"
    );
    body.split("\n\n")
        .filter(|block| !block.is_empty())
        .map(|block| {
            let mut event = None;
            let mut data = Vec::new();
            for line in block.lines() {
                if let Some(name) = line.strip_prefix("event: ") {
                    event = Some(name.to_owned());
                } else if let Some(d) = line.strip_prefix("data: ") {
                    data.push(d);
                } else {
                    panic!("unexpected SSE line {line:?}");
                }
            }
            (event, data.join("\n"))
        })
        .collect()
}

/// OpenAI chunks: every `data:` payload but the final `[DONE]`, parsed.
fn openai_chunks(body: &str) -> Vec<Value> {
    let events = sse_events(body);
    let (last, rest) = events.split_last().expect("at least one event");
    assert_eq!(
        last,
        &(None, "[DONE]".to_owned()),
        "stream must end with [DONE]"
    );
    rest.iter()
        .map(|(event, data)| {
            assert!(event.is_none(), "OpenAI sends no event: lines");
            serde_json::from_str(data).expect("chunk is JSON")
        })
        .collect()
}

/// A streamed OpenAI request for model `m`.
fn openai_stream() -> Value {
    json!({"model": "m", "messages": [], "stream": true})
}

/// A streamed Anthropic request for model `c`.
fn anthropic_stream() -> Value {
    json!({"model": "c", "max_tokens": 1, "messages": [], "stream": true})
}

fn ndjson(body: &str) -> Vec<Value> {
    assert!(body.ends_with('\n'));
    body.lines()
        .map(|l| serde_json::from_str(l).expect("NDJSON line is JSON"))
        .collect()
}

async fn post(url: String, body: Value) -> reqwest::Response {
    client()
        .post(url)
        .header("Authorization", "Bearer sk-test")
        .json(&body)
        .send()
        .await
        .expect("request succeeds")
}

async fn post_json(url: String, body: Value) -> Value {
    post(url, body).await.json().await.expect("body is JSON")
}

async fn post_text(
    url: String,
    body: Value,
) -> (reqwest::StatusCode, reqwest::header::HeaderMap, String) {
    let resp = post(url, body).await;
    let status = resp.status();
    let headers = resp.headers().clone();
    (status, headers, resp.text().await.expect("body"))
}

fn openai_url(fake: &FakeLlm) -> String {
    format!("{}/chat/completions", fake.openai_base())
}

fn ollama_url(fake: &FakeLlm) -> String {
    format!("{}/api/chat", fake.base_url())
}

async fn get_json(url: String) -> Value {
    let response = client().get(url).send().await.expect("request succeeds");
    response.json().await.expect("body is JSON")
}

/// Reads the first chunk of a streamed body, then hangs up.
async fn drop_after_first_chunk(resp: reqwest::Response) {
    let mut stream = resp.bytes_stream();
    let first = stream.next().await.expect("a first chunk");
    first.expect("the first chunk arrives");
}

/// Reads a body until it ends or breaks; returns what arrived and whether it broke.
async fn read_until_break(resp: reqwest::Response) -> (String, bool) {
    let mut stream = resp.bytes_stream();
    let mut got = Vec::new();
    while let Some(item) = stream.next().await {
        match item {
            Ok(bytes) => got.extend_from_slice(&bytes),
            Err(_) => return (String::from_utf8(got).expect("utf8"), true),
        }
    }
    (String::from_utf8(got).expect("utf8"), false)
}

// ---------------------------------------------------------------- OpenAI

#[tokio::test]
async fn openai_non_stream_text() {
    let fake = FakeLlm::start(FakeFlavor::OpenAi).await;
    fake.push_reply(FakeReply::text(&["Hel", "lo"]).with_usage(7, 2));
    let (status, headers, body) = post_text(
        openai_url(&fake),
        json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}),
    )
    .await;
    assert_eq!(status, 200);
    assert!(
        headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/json")
    );
    let v: Value = serde_json::from_str(&body).unwrap();
    assert!(v["id"].as_str().unwrap().starts_with("chatcmpl-"));
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["model"], "gpt-4o-mini");
    assert!(v["created"].as_u64().unwrap() > 1_600_000_000);
    assert_eq!(v["choices"][0]["message"]["role"], "assistant");
    assert_eq!(v["choices"][0]["message"]["content"], "Hello");
    assert!(v["choices"][0]["message"].get("tool_calls").is_none());
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    assert_eq!(v["usage"]["prompt_tokens"], 7);
    assert_eq!(v["usage"]["completion_tokens"], 2);
    assert_eq!(v["usage"]["total_tokens"], 9);
}

#[tokio::test]
async fn openai_stream_text_with_usage() {
    let fake = FakeLlm::start(FakeFlavor::OpenAi).await;
    fake.push_reply(FakeReply::text(&["Hel", "lo"]).with_usage(5, 2));
    let (status, headers, body) = post_text(
        openai_url(&fake),
        json!({"model": "m1", "messages": [], "stream": true,
               "stream_options": {"include_usage": true}}),
    )
    .await;
    assert_eq!(status, 200);
    assert!(
        headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    let chunks = openai_chunks(&body);
    assert_eq!(chunks.len(), 5, "role, 2 text, finish, usage: {body}");
    let id = chunks[0]["id"].as_str().unwrap();
    assert!(id.starts_with("chatcmpl-"));
    for c in &chunks {
        assert_eq!(c["id"], id);
        assert_eq!(c["object"], "chat.completion.chunk");
        assert_eq!(c["model"], "m1");
        assert!(c.get("system_fingerprint").unwrap().is_null());
        assert!(c.get("created").unwrap().is_u64());
    }
    for c in &chunks[..4] {
        assert!(
            c.get("usage").unwrap().is_null(),
            "usage:null on normal chunks"
        );
        assert!(c["choices"][0].get("logprobs").unwrap().is_null());
    }
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    assert_eq!(chunks[1]["choices"][0]["delta"], json!({"content": "Hel"}));
    assert_eq!(chunks[2]["choices"][0]["delta"], json!({"content": "lo"}));
    assert!(chunks[2]["choices"][0]["finish_reason"].is_null());
    assert_eq!(chunks[3]["choices"][0]["delta"], json!({}));
    assert_eq!(chunks[3]["choices"][0]["finish_reason"], "stop");
    assert_eq!(chunks[4]["choices"], json!([]));
    assert_eq!(chunks[4]["usage"]["prompt_tokens"], 5);
    assert_eq!(chunks[4]["usage"]["completion_tokens"], 2);
    assert_eq!(chunks[4]["usage"]["total_tokens"], 7);
    assert!(fake.wait_for_completed(1, WAIT).await);
    assert_eq!(fake.cancelled_streams(), 0);
    assert_eq!(fake.active_streams(), 0);
}

#[tokio::test]
async fn openai_stream_without_include_usage_has_no_usage_chunk() {
    let fake = FakeLlm::start(FakeFlavor::OpenAi).await;
    let (_, _, body) = post_text(openai_url(&fake), openai_stream()).await;
    let chunks = openai_chunks(&body);
    assert!(
        chunks
            .iter()
            .all(|c| !c["choices"].as_array().unwrap().is_empty())
    );
    assert!(chunks.iter().all(|c| c.get("usage").is_none()));
    let text: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(text, "Hello from fake", "initial default reply");
}

/// Like vLLM or LM Studio: `include_usage` is ignored when streaming, while a non-streamed
/// answer still carries its usage; each recorded request says whether it asked for a stream.
#[tokio::test]
async fn openai_can_omit_the_stream_usage_chunk_and_records_the_stream_flag() {
    let fake = FakeLlm::start(FakeFlavor::OpenAi).await;
    assert!(!fake.omits_stream_usage());
    fake.set_omit_stream_usage(true);
    assert!(fake.omits_stream_usage());
    fake.push_reply(FakeReply::text(&["Hel", "lo"]).with_usage(5, 2));
    let (_, _, body) = post_text(
        openai_url(&fake),
        json!({"model": "m", "messages": [], "stream": true,
               "stream_options": {"include_usage": true}}),
    )
    .await;
    let chunks = openai_chunks(&body);
    assert_eq!(chunks.len(), 4, "role, 2 text, finish and no usage: {body}");
    assert!(chunks.iter().all(|c| c.get("usage").is_none()), "{body}");

    fake.push_reply(FakeReply::text(&["Hel", "lo"]).with_usage(5, 2));
    let v = post_json(
        openai_url(&fake),
        json!({"model": "m", "messages": [], "stream": false}),
    )
    .await;
    assert_eq!(v["choices"][0]["message"]["content"], "Hello");
    assert_eq!(v["usage"]["prompt_tokens"], 5);
    assert_eq!(v["usage"]["total_tokens"], 7);

    post_json(openai_url(&fake), json!({"model": "m", "messages": []})).await;
    let asked: Vec<Option<bool>> = fake.requests().iter().map(|r| r.asked_stream()).collect();
    assert_eq!(asked, [Some(true), Some(false), None]);

    // Switched back, the usage chunk returns when asked for.
    fake.set_omit_stream_usage(false);
    let (_, _, body) = post_text(
        openai_url(&fake),
        json!({"model": "m", "messages": [], "stream": true,
               "stream_options": {"include_usage": true}}),
    )
    .await;
    assert!(openai_chunks(&body).last().unwrap()["usage"].is_object());
}

/// The exact example of OpenAI's streaming format (envelope keys trimmed, `logprobs` dropped for comparison).
#[tokio::test]
async fn openai_stream_tool_calls_match_spec_example() {
    const SPEC: &str = r#"data: {"choices":[{"index":0,"delta":{"role":"assistant","content":null,"tool_calls":[{"index":0,"id":"call_A","type":"function","function":{"name":"read_file","arguments":""}}]},"finish_reason":null}]}
data: {"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"{\"path\":"}}]},"finish_reason":null}]}
data: {"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"\"a.py\"}"}}]},"finish_reason":null}]}
data: {"choices":[{"index":0,"delta":{"tool_calls":[{"index":1,"id":"call_B","type":"function","function":{"name":"echo","arguments":""}}]},"finish_reason":null}]}
data: {"choices":[{"index":0,"delta":{"tool_calls":[{"index":1,"function":{"arguments":"{\"text\":\"hi\"}"}}]},"finish_reason":null}]}
data: {"choices":[{"index":0,"delta":{},"finish_reason":"tool_calls"}]}
data: {"choices":[],"usage":{"prompt_tokens":82,"completion_tokens":31,"total_tokens":113}}
data: [DONE]"#;
    let fake = FakeLlm::start(FakeFlavor::OpenAi).await;
    fake.push_reply(
        FakeReply::tool_calls(vec![
            FakeToolCall::new("call_A", "read_file", r#"{"path":"a.py"}"#).with_split(2),
            FakeToolCall::new("call_B", "echo", r#"{"text":"hi"}"#).with_split(1),
        ])
        .with_usage(82, 31),
    );
    let (_, _, body) = post_text(
        openai_url(&fake),
        json!({"model": "gpt-4o", "messages": [], "stream": true,
               "stream_options": {"include_usage": true}}),
    )
    .await;
    let chunks = openai_chunks(&body);
    let expected: Vec<Value> = SPEC
        .lines()
        .map(|l| l.strip_prefix("data: ").unwrap())
        .filter(|d| *d != "[DONE]")
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    assert_eq!(chunks.len(), expected.len(), "{body}");
    for (got, want) in chunks.iter().zip(&expected) {
        let mut choices = got["choices"].clone();
        for choice in choices.as_array_mut().unwrap() {
            assert!(choice.as_object_mut().unwrap().remove("logprobs").is_some());
        }
        assert_eq!(choices, want["choices"], "chunk {got}");
        if let Some(usage) = want.get("usage") {
            for key in ["prompt_tokens", "completion_tokens", "total_tokens"] {
                assert_eq!(got["usage"][key], usage[key]);
            }
        }
    }
}

#[tokio::test]
async fn openai_stream_text_then_tool_call_and_default_split() {
    let fake = FakeLlm::start(FakeFlavor::OpenAi).await;
    fake.push_reply(
        FakeReply::text(&["Let me look."]).with_tool_calls(vec![FakeToolCall::new(
            "call_X",
            "ls",
            r#"{"dir":"src/"}"#,
        )]),
    );
    let (_, _, body) = post_text(openai_url(&fake), openai_stream()).await;
    let deltas: Vec<Value> = openai_chunks(&body)
        .iter()
        .map(|c| c["choices"][0]["delta"].clone())
        .collect();
    assert_eq!(
        deltas[0],
        json!({"role": "assistant", "content": "", "refusal": null})
    );
    assert_eq!(deltas[1], json!({"content": "Let me look."}));
    assert_eq!(
        deltas[2],
        json!({"tool_calls": [{"index": 0, "id": "call_X", "type": "function",
                               "function": {"name": "ls", "arguments": ""}}]})
    );
    let fragments: Vec<&str> = deltas[3..6]
        .iter()
        .map(|d| {
            d["tool_calls"][0]["function"]["arguments"]
                .as_str()
                .unwrap()
        })
        .collect();
    assert_eq!(fragments.len(), 3, "default split_into is 3");
    assert_eq!(fragments.concat(), r#"{"dir":"src/"}"#);
    assert_eq!(deltas[6], json!({}));
    assert_eq!(deltas.len(), 7);
}

#[tokio::test]
async fn openai_non_stream_tool_calls() {
    let fake = FakeLlm::start(FakeFlavor::OpenAi).await;
    fake.push_reply(
        FakeReply::tool_calls(vec![FakeToolCall::new(
            "call_A",
            "read_file",
            r#"{"path":"a.py"}"#,
        )])
        .with_usage(20, 10),
    );
    let resp = post(
        openai_url(&fake),
        json!({"model": "m", "messages": [], "stream": false}),
    )
    .await;
    let v: Value = resp.json().await.unwrap();
    let message = &v["choices"][0]["message"];
    assert!(message["content"].is_null());
    assert_eq!(
        message["tool_calls"],
        json!([{"id": "call_A", "type": "function",
                "function": {"name": "read_file", "arguments": "{\"path\":\"a.py\"}"}}])
    );
    assert_eq!(v["choices"][0]["finish_reason"], "tool_calls");
    assert_eq!(v["usage"]["total_tokens"], 30);
}

#[tokio::test]
async fn openai_status_replies() {
    let fake = FakeLlm::start(FakeFlavor::OpenAi).await;
    fake.push_reply(FakeReply::status(429).with_retry_after(2));
    fake.push_reply(FakeReply::status(500));
    fake.push_reply(FakeReply::status(401).with_error_message("bad key"));
    let url = openai_url(&fake);
    let req = openai_stream();

    let (status, headers, body) = post_text(url.clone(), req.clone()).await;
    assert_eq!(status, 429);
    assert_eq!(headers["retry-after"], "2");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["error"]["type"], "rate_limit_exceeded");
    assert_eq!(v["error"]["code"], "rate_limit_exceeded");
    assert!(v["error"]["param"].is_null());
    assert!(v["error"]["message"].is_string());

    let (status, headers, body) = post_text(url.clone(), req.clone()).await;
    assert_eq!(status, 500);
    assert!(headers.get("retry-after").is_none());
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["error"]["type"], "server_error");
    assert!(v["error"].get("code").unwrap().is_null());

    let (status, _, body) = post_text(url.clone(), req.clone()).await;
    assert_eq!(status, 401);
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["error"]["message"], "bad key");
    assert_eq!(v["error"]["code"], "invalid_api_key");

    // Queue drained: back to the default reply.
    let (status, _, _) = post_text(url, req).await;
    assert_eq!(status, 200);
    assert_eq!(fake.completed_streams(), 1);
}

#[tokio::test]
async fn openai_disconnect_after_truncates_body() {
    let fake = FakeLlm::start(FakeFlavor::OpenAi).await;
    fake.push_reply(FakeReply::text(&["a", "b", "c", "d", "e"]).disconnect_after(3));
    let resp = post(openai_url(&fake), openai_stream()).await;
    assert_eq!(resp.status(), 200);
    let (got, broke) = read_until_break(resp).await;
    assert!(broke, "body must end with an error, got {got:?}");
    let events = sse_events(&got);
    assert_eq!(events.len(), 3, "role + 2 text chunks: {got:?}");
    assert!(!got.contains("[DONE]"));
    assert!(fake.wait_until(WAIT, |f| f.aborted_streams() == 1).await);
    assert_eq!(fake.completed_streams(), 0);
    assert_eq!(fake.cancelled_streams(), 0);
    assert_eq!(fake.active_streams(), 0);
}

#[tokio::test]
async fn openai_non_stream_disconnect_truncates_json() {
    let fake = FakeLlm::start(FakeFlavor::OpenAi).await;
    fake.push_reply(FakeReply::text(&["hello"]).disconnect_after(1));
    let resp = post(openai_url(&fake), json!({"model": "m", "messages": []})).await;
    assert_eq!(resp.status(), 200);
    let (got, broke) = read_until_break(resp).await;
    assert!(broke);
    assert!(
        serde_json::from_str::<Value>(&got).is_err(),
        "truncated JSON: {got}"
    );
}

#[tokio::test]
async fn openai_client_drop_counts_cancelled_stream() {
    let fake = FakeLlm::start(FakeFlavor::OpenAi).await;
    let pieces: Vec<String> = (0..200).map(|i| format!("w{i} ")).collect();
    let pieces: Vec<&str> = pieces.iter().map(String::as_str).collect();
    fake.push_reply(FakeReply::text(&pieces).with_chunk_delay(Duration::from_millis(20)));
    let resp = post(openai_url(&fake), openai_stream()).await;
    let mut stream = resp.bytes_stream();
    let first = stream.next().await.unwrap().unwrap();
    assert!(first.starts_with(b"data: "));
    assert!(fake.wait_until(WAIT, |f| f.active_streams() == 1).await);
    drop(stream);
    assert!(
        fake.wait_for_cancelled(1, WAIT).await,
        "server must notice the client left"
    );
    assert!(fake.wait_for_idle(WAIT).await);
    assert_eq!(fake.completed_streams(), 0);
    assert_eq!(fake.aborted_streams(), 0);
}

#[tokio::test]
async fn stream_client_leaving_during_first_byte_delay_counts_cancelled() {
    let fake = FakeLlm::start(FakeFlavor::OpenAi).await;
    fake.push_reply(FakeReply::text(&["late"]).with_first_byte_delay(Duration::from_secs(30)));
    let req = client()
        .post(openai_url(&fake))
        .json(&openai_stream())
        .timeout(Duration::from_millis(200))
        .send();
    assert!(req.await.is_err(), "client times out first");
    assert!(fake.wait_for_cancelled(1, WAIT).await);
    assert_eq!(fake.active_streams(), 0);
}

#[tokio::test]
async fn chunk_and_first_byte_delays_are_real() {
    let fake = FakeLlm::start(FakeFlavor::OpenAi).await;
    fake.push_reply(
        FakeReply::text(&["a", "b"])
            .with_first_byte_delay(Duration::from_millis(150))
            .with_chunk_delay(Duration::from_millis(50)),
    );
    let start = Instant::now();
    let resp = post(openai_url(&fake), openai_stream()).await;
    assert!(
        start.elapsed() >= Duration::from_millis(150),
        "headers wait for first_byte_delay"
    );
    let body = resp.text().await.unwrap();
    // role, a, b, finish, [DONE] = 5 chunks → 4 gaps of 50 ms.
    assert!(start.elapsed() >= Duration::from_millis(150 + 4 * 50));
    assert_eq!(sse_events(&body).len(), 5);
}

#[tokio::test]
async fn requests_are_recorded_and_replies_are_fifo() {
    let fake = FakeLlm::start(FakeFlavor::OpenAi).await;
    fake.push_reply(FakeReply::text(&["first"]));
    fake.push_reply(FakeReply::text(&["second"]));
    fake.set_default_reply(FakeReply::text(&["default"]));
    assert_eq!(fake.pending_replies(), 2);
    let url = openai_url(&fake);
    let mut contents = Vec::new();
    for i in 0..3 {
        let v = post_json(url.clone(), json!({"model": "m", "messages": [], "n": i})).await;
        contents.push(
            v["choices"][0]["message"]["content"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    assert_eq!(contents, ["first", "second", "default"]);

    let models: Value = get_json(format!("{}/models", fake.openai_base())).await;
    assert_eq!(models["object"], "list");
    assert_eq!(models["data"][0]["id"], "gpt-4o-mini");

    assert_eq!(fake.request_count(), 4);
    let requests = fake.requests();
    assert_eq!(requests[0].method, "POST");
    assert_eq!(requests[0].path, "/v1/chat/completions");
    assert_eq!(requests[0].headers["authorization"], "Bearer sk-test");
    assert_eq!(requests[0].header("Content-Type"), Some("application/json"));
    assert_eq!(requests[2].body["n"], 2);
    assert_eq!(requests[3].method, "GET");
    assert_eq!(requests[3].path, "/v1/models");
    assert!(requests[3].body.is_null());
    assert!(fake.wait_for_requests(4, WAIT).await);
}

#[tokio::test]
async fn unknown_route_is_404_in_provider_shape() {
    let fake = FakeLlm::start(FakeFlavor::OpenAi).await;
    let resp = client()
        .post(format!("{}/v1/embeddings", fake.base_url()))
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["error"]["type"], "invalid_request_error");
    assert_eq!(fake.request_count(), 1);
}

#[tokio::test]
async fn openai_mid_stream_error_event() {
    let fake = FakeLlm::start(FakeFlavor::OpenAi).await;
    fake.push_reply(FakeReply::text(&["par"]).with_stream_error("upstream exploded"));
    let (status, _, body) = post_text(openai_url(&fake), openai_stream()).await;
    assert_eq!(status, 200);
    let events = sse_events(&body);
    let last: Value = serde_json::from_str(&events.last().unwrap().1).unwrap();
    assert_eq!(last["error"]["message"], "upstream exploded");
    assert!(!body.contains("[DONE]"));
}

#[tokio::test]
async fn dropping_the_fake_cuts_in_flight_streams() {
    let fake = FakeLlm::start(FakeFlavor::OpenAi).await;
    fake.push_reply(
        FakeReply::text(&["a", "b", "c", "d"]).with_chunk_delay(Duration::from_secs(30)),
    );
    let resp = post(openai_url(&fake), openai_stream()).await;
    let base = fake.base_url();
    drop(fake);
    let reading = tokio::time::timeout(WAIT, read_until_break(resp)).await;
    let (_, broke) = reading.expect("stream ends promptly after drop");
    assert!(broke);
    let err = client().get(format!("{base}/v1/models")).send().await;
    assert!(err.is_err() || !err.unwrap().status().is_success());
}

// ---------------------------------------------------------------- Anthropic

fn anthropic_events(body: &str) -> Vec<(String, Value)> {
    sse_events(body)
        .into_iter()
        .map(|(event, data)| {
            let event = event.expect("Anthropic events are named");
            let data: Value = serde_json::from_str(&data).expect("data is JSON");
            assert_eq!(
                data["type"],
                event.as_str(),
                "data.type repeats the event name"
            );
            (event, data)
        })
        .collect()
}

async fn anthropic_post(fake: &FakeLlm, body: Value) -> reqwest::Response {
    client()
        .post(format!("{}/v1/messages", fake.base_url()))
        .header("x-api-key", "sk-ant-test")
        .header("anthropic-version", "2023-06-01")
        .json(&body)
        .send()
        .await
        .expect("request succeeds")
}

#[tokio::test]
async fn anthropic_stream_text_with_thinking() {
    let fake = FakeLlm::start(FakeFlavor::Anthropic).await;
    fake.push_reply(
        FakeReply::text(&["Hi", " there"])
            .with_reasoning(&["hmm"])
            .with_usage(25, 4),
    );
    let resp = anthropic_post(
        &fake,
        json!({"model": "claude-x", "max_tokens": 100, "messages": [], "stream": true}),
    )
    .await;
    assert_eq!(resp.status(), 200);
    assert!(
        resp.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    let body = resp.text().await.unwrap();
    assert!(!body.contains("[DONE]"));
    let events = anthropic_events(&body);
    let names: Vec<&str> = events.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "message_start",
            "ping",
            "content_block_start",
            "content_block_delta",
            "content_block_delta",
            "content_block_stop",
            "content_block_start",
            "content_block_delta",
            "content_block_delta",
            "content_block_stop",
            "message_delta",
            "message_stop",
        ]
    );
    let start = &events[0].1["message"];
    assert!(start["id"].as_str().unwrap().starts_with("msg_"));
    assert_eq!(start["model"], "claude-x");
    assert_eq!(start["role"], "assistant");
    assert_eq!(start["content"], json!([]));
    assert_eq!(start["usage"]["input_tokens"], 25);
    assert_eq!(
        events[2].1["content_block"],
        json!({"type": "thinking", "thinking": ""})
    );
    assert_eq!(
        events[3].1["delta"],
        json!({"type": "thinking_delta", "thinking": "hmm"})
    );
    assert_eq!(events[4].1["delta"]["type"], "signature_delta");
    assert_eq!(
        events[5].1,
        json!({"type": "content_block_stop", "index": 0})
    );
    assert_eq!(
        events[6].1,
        json!({"type": "content_block_start", "index": 1,
               "content_block": {"type": "text", "text": ""}})
    );
    assert_eq!(
        events[7].1,
        json!({"type": "content_block_delta", "index": 1,
               "delta": {"type": "text_delta", "text": "Hi"}})
    );
    assert_eq!(events[8].1["delta"]["text"], " there");
    assert_eq!(events[10].1["delta"]["stop_reason"], "end_turn");
    assert_eq!(events[10].1["usage"]["output_tokens"], 4);
    assert_eq!(events[11].1, json!({"type": "message_stop"}));
}

#[tokio::test]
async fn anthropic_stream_tool_use() {
    let fake = FakeLlm::start(FakeFlavor::Anthropic).await;
    fake.push_reply(FakeReply::tool_calls(vec![
        FakeToolCall::new("toolu_A", "read_file", r#"{"path":"a.py"}"#).with_split(2),
        FakeToolCall::new("toolu_B", "echo", r#"{"text":"hi"}"#),
    ]));
    let body = anthropic_post(
        &fake,
        json!({"model": "c", "max_tokens": 10, "messages": [], "stream": true}),
    )
    .await
    .text()
    .await
    .unwrap();
    let events = anthropic_events(&body);
    let payloads: Vec<Value> = events[2..].iter().map(|(_, d)| d.clone()).collect();
    let expected_a = [
        json!({"type": "content_block_start", "index": 0,
               "content_block": {"type": "tool_use", "id": "toolu_A", "name": "read_file", "input": {}}}),
        json!({"type": "content_block_delta", "index": 0,
               "delta": {"type": "input_json_delta", "partial_json": ""}}),
        json!({"type": "content_block_delta", "index": 0,
               "delta": {"type": "input_json_delta", "partial_json": "{\"path\":"}}),
        json!({"type": "content_block_delta", "index": 0,
               "delta": {"type": "input_json_delta", "partial_json": "\"a.py\"}"}}),
        json!({"type": "content_block_stop", "index": 0}),
    ];
    assert_eq!(payloads[..5], expected_a);
    assert_eq!(payloads[5]["content_block"]["id"], "toolu_B");
    assert_eq!(payloads[5]["index"], 1);
    let b_json: String = payloads[6..]
        .iter()
        .take_while(|p| p["type"] == "content_block_delta")
        .map(|p| p["delta"]["partial_json"].as_str().unwrap())
        .collect();
    assert_eq!(b_json, r#"{"text":"hi"}"#);
    assert_eq!(
        payloads[6]["delta"]["partial_json"], "",
        "first fragment empty"
    );
    let n = payloads.len();
    assert_eq!(payloads[n - 2]["delta"]["stop_reason"], "tool_use");
    assert_eq!(payloads[n - 1]["type"], "message_stop");
    // No text block for a tool-only reply.
    assert!(!body.contains("text_delta"));
}

#[tokio::test]
async fn anthropic_non_stream_message() {
    let fake = FakeLlm::start(FakeFlavor::Anthropic).await;
    fake.push_reply(
        FakeReply::text(&["Reading", "."])
            .with_tool_calls(vec![FakeToolCall::new(
                "toolu_1",
                "read_file",
                r#"{"path":"a.py"}"#,
            )])
            .with_usage(11, 22),
    );
    let resp = anthropic_post(
        &fake,
        json!({"model": "c", "max_tokens": 10, "messages": []}),
    )
    .await;
    assert_eq!(resp.status(), 200);
    assert!(resp.headers().contains_key("request-id"));
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["type"], "message");
    assert_eq!(v["role"], "assistant");
    assert_eq!(v["model"], "c");
    assert_eq!(
        v["content"],
        json!([
            {"type": "text", "text": "Reading."},
            {"type": "tool_use", "id": "toolu_1", "name": "read_file", "input": {"path": "a.py"}}
        ])
    );
    assert_eq!(v["stop_reason"], "tool_use");
    assert!(v.get("stop_sequence").unwrap().is_null());
    assert_eq!(v["usage"]["input_tokens"], 11);
    assert_eq!(v["usage"]["output_tokens"], 22);

    let recorded = fake.last_request().unwrap();
    assert_eq!(recorded.path, "/v1/messages");
    assert_eq!(recorded.headers["x-api-key"], "sk-ant-test");
    assert_eq!(recorded.headers["anthropic-version"], "2023-06-01");
    assert_eq!(recorded.body["max_tokens"], 10);
}

#[tokio::test]
async fn anthropic_error_statuses() {
    let fake = FakeLlm::start(FakeFlavor::Anthropic).await;
    fake.push_reply(FakeReply::status(529).with_retry_after(3));
    fake.push_reply(FakeReply::status(429).with_retry_after(1));
    fake.push_reply(FakeReply::status(500));
    let req = anthropic_stream();
    for (code, kind, retry) in [
        (529, "overloaded_error", Some("3")),
        (429, "rate_limit_error", Some("1")),
        (500, "api_error", None),
    ] {
        let resp = anthropic_post(&fake, req.clone()).await;
        assert_eq!(resp.status().as_u16(), code);
        assert_eq!(
            resp.headers()
                .get("retry-after")
                .map(|h| h.to_str().unwrap()),
            retry
        );
        let v: Value = resp.json().await.unwrap();
        assert_eq!(v["type"], "error");
        assert_eq!(v["error"]["type"], kind);
        assert!(v["error"]["message"].is_string());
    }
}

#[tokio::test]
async fn anthropic_mid_stream_error_and_disconnect() {
    let fake = FakeLlm::start(FakeFlavor::Anthropic).await;
    fake.push_reply(FakeReply::text(&["x"]).with_stream_error("Overloaded"));
    fake.push_reply(FakeReply::text(&["a", "b", "c"]).disconnect_after(4));
    let req = anthropic_stream();

    let body = anthropic_post(&fake, req.clone())
        .await
        .text()
        .await
        .unwrap();
    let events = anthropic_events(&body);
    let (name, data) = events.last().unwrap();
    assert_eq!(name, "error");
    assert_eq!(
        data["error"],
        json!({"type": "overloaded_error", "message": "Overloaded"})
    );
    assert!(!body.contains("message_stop"));

    let (got, broke) = read_until_break(anthropic_post(&fake, req).await).await;
    assert!(broke);
    let names: Vec<String> = anthropic_events(&got).into_iter().map(|(n, _)| n).collect();
    assert_eq!(
        names,
        [
            "message_start",
            "ping",
            "content_block_start",
            "content_block_delta"
        ]
    );
    assert!(fake.wait_until(WAIT, |f| f.aborted_streams() == 1).await);
}

#[tokio::test]
async fn anthropic_client_drop_counts_cancelled_stream() {
    let fake = FakeLlm::start(FakeFlavor::Anthropic).await;
    let pieces = vec!["tok"; 300];
    fake.set_default_reply(FakeReply::text(&pieces).with_chunk_delay(Duration::from_millis(10)));
    let resp = anthropic_post(&fake, anthropic_stream()).await;
    drop_after_first_chunk(resp).await;
    assert!(fake.wait_for_cancelled(1, WAIT).await);
    assert_eq!(fake.completed_streams(), 0);
}

// ---------------------------------------------------------------- Ollama

#[tokio::test]
async fn ollama_streams_ndjson_by_default() {
    let fake = FakeLlm::start(FakeFlavor::Ollama).await;
    fake.push_reply(
        FakeReply::text(&["Hel", "lo"])
            .with_reasoning(&["think"])
            .with_usage(26, 2),
    );
    let resp = post(
        ollama_url(&fake),
        json!({"model": "qwen3:0.6b", "messages": [{"role": "user", "content": "hi"}]}),
    )
    .await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "application/x-ndjson");
    let lines = ndjson(&resp.text().await.unwrap());
    assert_eq!(lines.len(), 4, "thinking, 2 text, final");
    for line in &lines {
        assert_eq!(line["model"], "qwen3:0.6b");
        assert!(line["created_at"].as_str().unwrap().ends_with('Z'));
        assert_eq!(line["message"]["role"], "assistant");
    }
    assert_eq!(lines[0]["message"]["thinking"], "think");
    assert_eq!(lines[0]["message"]["content"], "");
    assert_eq!(
        lines[1]["message"],
        json!({"role": "assistant", "content": "Hel"})
    );
    assert_eq!(lines[1]["done"], false);
    assert_eq!(lines[2]["message"]["content"], "lo");
    let last = &lines[3];
    assert_eq!(last["done"], true);
    assert_eq!(last["done_reason"], "stop");
    assert_eq!(last["prompt_eval_count"], 26);
    assert_eq!(last["eval_count"], 2);
    for key in [
        "total_duration",
        "load_duration",
        "prompt_eval_duration",
        "eval_duration",
    ] {
        assert!(last[key].is_u64(), "{key}");
    }
}

#[tokio::test]
async fn ollama_non_stream_and_tool_calls() {
    let fake = FakeLlm::start(FakeFlavor::Ollama).await;
    let calls = vec![
        FakeToolCall::new("ignored", "read_file", r#"{"path":"a.py"}"#),
        FakeToolCall::new("ignored2", "echo", r#"{"text":"hi"}"#),
    ];
    fake.push_reply(FakeReply::text(&["plain"]).with_usage(3, 1));
    fake.push_reply(FakeReply::tool_calls(calls.clone()));
    fake.push_reply(FakeReply::tool_calls(calls));
    let url = ollama_url(&fake);

    let v = post_json(
        url.clone(),
        json!({"model": "q", "messages": [], "stream": false}),
    )
    .await;
    assert_eq!(
        v["message"],
        json!({"role": "assistant", "content": "plain"})
    );
    assert_eq!(v["done"], true);
    assert_eq!(v["done_reason"], "stop");
    assert_eq!(v["prompt_eval_count"], 3);
    assert_eq!(v["eval_count"], 1);

    let expected_calls = json!([
        {"function": {"name": "read_file", "arguments": {"path": "a.py"}}},
        {"function": {"name": "echo", "arguments": {"text": "hi"}}}
    ]);
    let body = post(
        url.clone(),
        json!({"model": "q", "messages": [], "stream": true}),
    )
    .await
    .text()
    .await
    .unwrap();
    let lines = ndjson(&body);
    assert_eq!(
        lines.len(),
        2,
        "one tool-call line with all calls, then final: {body}"
    );
    assert_eq!(lines[0]["message"]["tool_calls"], expected_calls);
    assert_eq!(lines[0]["done"], false);
    assert_eq!(lines[1]["done"], true);
    assert_eq!(lines[1]["done_reason"], "stop");

    let v = post_json(url, json!({"model": "q", "messages": [], "stream": false})).await;
    assert_eq!(v["message"]["tool_calls"], expected_calls);
}

#[tokio::test]
async fn ollama_errors_tags_and_disconnect() {
    let fake = FakeLlm::start(FakeFlavor::Ollama).await;
    fake.push_reply(FakeReply::status(404));
    fake.push_reply(
        FakeReply::status(503)
            .with_retry_after(5)
            .with_error_message("busy"),
    );
    fake.push_reply(FakeReply::text(&["a", "b", "c"]).disconnect_after(1));
    fake.push_reply(FakeReply::text(&["a"]).with_stream_error("boom"));
    let url = ollama_url(&fake);
    let req = json!({"model": "nope:1b", "messages": []});

    let (status, _, body) = post_text(url.clone(), req.clone()).await;
    assert_eq!(status, 404);
    let v: Value = serde_json::from_str(&body).unwrap();
    assert!(v["error"].as_str().unwrap().contains("nope:1b"));

    let (status, headers, body) = post_text(url.clone(), req.clone()).await;
    assert_eq!(status, 503);
    assert_eq!(headers["retry-after"], "5");
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap(),
        json!({"error": "busy"})
    );

    let (got, broke) = read_until_break(post(url.clone(), req.clone()).await).await;
    assert!(broke);
    assert_eq!(ndjson(&got).len(), 1);

    let lines = ndjson(&post(url, req).await.text().await.unwrap());
    assert_eq!(lines.last().unwrap(), &json!({"error": "boom"}));

    let tags: Value = get_json(format!("{}/api/tags", fake.base_url())).await;
    assert_eq!(tags["models"][0]["name"], "qwen3:0.6b");
    fake.set_models(&["llama3.2:1b"]);
    let tags: Value = get_json(format!("{}/api/tags", fake.base_url())).await;
    assert_eq!(tags["models"][0]["model"], "llama3.2:1b");
}

#[tokio::test]
async fn ollama_client_drop_counts_cancelled_stream() {
    let fake = FakeLlm::start(FakeFlavor::Ollama).await;
    let pieces = vec!["tok"; 300];
    fake.push_reply(FakeReply::text(&pieces).with_chunk_delay(Duration::from_millis(10)));
    let resp = post(ollama_url(&fake), json!({"model": "q", "messages": []})).await;
    drop_after_first_chunk(resp).await;
    assert!(fake.wait_for_cancelled(1, WAIT).await);
    assert!(fake.wait_for_idle(WAIT).await);
}

#[tokio::test]
async fn openai_malformed_chunk_is_sent_verbatim_where_asked() {
    let fake = FakeLlm::start(FakeFlavor::OpenAi).await;
    let broken = "data: {\"choices\":[{\"delta\":{\"content\":\n\n";
    fake.push_reply(FakeReply::text(&["a", "b"]).with_malformed_chunk(2, broken));
    let (status, _, body) = post_text(openai_url(&fake), openai_stream()).await;
    assert_eq!(status, 200);
    let events = sse_events(&body);
    // role, "a", the broken event, "b", finish, [DONE]
    assert_eq!(
        events[2].1, "{\"choices\":[{\"delta\":{\"content\":",
        "{body}"
    );
    assert!(serde_json::from_str::<Value>(&events[2].1).is_err());
    assert!(body.ends_with("data: [DONE]\n\n"), "{body}");
}
