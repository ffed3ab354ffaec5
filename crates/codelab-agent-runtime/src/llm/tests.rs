//! The LLM client against a fake OpenAI-style upstream standing in for the proxy, so a test
//! can script failures (statuses, broken streams, delays). The client over the real proxy is
//! tested with the whole stack (`crates/codelab-stack/tests/runtime/llm_client.rs`).

use std::time::Duration;

use codelab_core::config::Secret;
use codelab_testkit::chat::{PROXY_KEY, chat_request as request};
use codelab_testkit::{FakeFlavor, FakeLlm, FakeReply, FakeToolCall};
use futures_util::StreamExt;
use tokio_util::sync::CancellationToken;

use super::*;

/// A client of `base` with fast retries.
fn client(base: &str) -> LlmClient {
    LlmClient::new(base, &Secret::new(PROXY_KEY), Duration::from_secs(5))
        .unwrap()
        .with_retries(DEFAULT_MAX_RETRIES, Duration::from_millis(1))
}

/// `llm`'s stream for `request("hi")`.
async fn open(llm: &LlmClient) -> Result<LlmStream, LlmError> {
    llm.stream(request("hi"), CancellationToken::new()).await
}

/// Everything `llm` streams for `request("hi")`.
async fn stream_all(llm: &LlmClient) -> Vec<Result<LlmDelta, LlmError>> {
    open(llm).await.unwrap().collect().await
}

/// `request("hi")` answered through a client of `fake`.
async fn complete(fake: &FakeLlm) -> Result<Completion, LlmError> {
    client(&fake.base_url()).complete(request("hi")).await
}

// ---- chunk decoding (pure; the SSE framing is tested in codelab_protocol::sse) ----

#[test]
fn chunks_decode_into_deltas() {
    let mut decoder = DeltaDecoder::default();
    let deltas = decoder
        .decode(r#"{"choices":[{"index":0,"delta":{"role":"assistant","content":"Hi"},"finish_reason":null}]}"#)
        .unwrap();
    assert_eq!(deltas, [LlmDelta::Text("Hi".into())]);
    let deltas = decoder
        .decode(r#"{"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"id":"call_1","type":"function","function":{"name":"read_file","arguments":""}}]}}]}"#)
        .unwrap();
    assert_eq!(
        deltas,
        [LlmDelta::ToolCallStart {
            index: 0,
            id: "call_1".into(),
            name: "read_file".into()
        }]
    );
    let deltas = decoder
        .decode(r#"{"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"{\"pa"}}]}}]}"#)
        .unwrap();
    assert_eq!(
        deltas,
        [LlmDelta::ToolCallArgs {
            index: 0,
            fragment: "{\"pa".into()
        }]
    );
    let deltas = decoder
        .decode(r#"{"choices":[{"index":0,"delta":{},"finish_reason":"tool_calls"}]}"#)
        .unwrap();
    assert_eq!(
        deltas,
        [LlmDelta::Finish {
            reason: "tool_calls".into()
        }]
    );
    let deltas = decoder
        .decode(
            r#"{"choices":[],"usage":{"prompt_tokens":7,"completion_tokens":3,"total_tokens":10}}"#,
        )
        .unwrap();
    assert_eq!(deltas, [LlmDelta::Usage(Usage::new(7, 3))]);
    // CodeLab's proxy adds cached tokens and the cost; a cost that is no price is dropped,
    // and cached tokens never exceed the prompt.
    let deltas = decoder
        .decode(
            r#"{"choices":[],"usage":{"prompt_tokens":7,"completion_tokens":3,"total_tokens":10,"prompt_tokens_details":{"cached_tokens":4},"cost":0.0021}}"#,
        )
        .unwrap();
    let mut expected = Usage::new(7, 3).with_cached_tokens(4);
    expected.cost = Some(0.0021);
    assert_eq!(deltas, [LlmDelta::Usage(expected)]);
    let deltas = decoder
        .decode(
            r#"{"choices":[],"usage":{"prompt_tokens":7,"completion_tokens":3,"prompt_tokens_details":{"cached_tokens":70},"cost":-1}}"#,
        )
        .unwrap();
    assert_eq!(
        deltas,
        [LlmDelta::Usage(Usage::new(7, 3).with_cached_tokens(7))]
    );
    let err = decoder
        .decode(r#"{"error":{"message":"overloaded","type":"server_error"}}"#)
        .unwrap_err();
    assert_eq!(
        err,
        LlmError::Upstream {
            message: "overloaded".into()
        }
    );
    assert!(matches!(
        decoder.decode("not json"),
        Err(LlmError::Stream(_))
    ));
}

#[test]
fn error_bodies_give_their_message() {
    assert_eq!(
        error_message(br#"{"error":{"message":"model not found","type":"x"}}"#).as_deref(),
        Some("model not found")
    );
    assert_eq!(
        error_message(br#"{"detail":"unauthorized"}"#).as_deref(),
        Some("unauthorized")
    );
    assert_eq!(
        error_message(b"  bad gateway \n").as_deref(),
        Some("bad gateway")
    );
    assert_eq!(error_message(b""), None);
}

#[test]
fn the_key_falls_back_to_the_internal_key() {
    let config = Config {
        llm_proxy_url: "http://127.0.0.1:1/".into(),
        ..Config::default()
    };
    let client = LlmClient::from_config(&config).unwrap();
    assert_eq!(client.url, "http://127.0.0.1:1/v1/chat/completions");
    assert_eq!(client.auth.to_str().unwrap(), "change-me-internal-key");
    let config = Config {
        llm_proxy_api_key: Secret::new("proxy-key"),
        ..config
    };
    assert_eq!(
        LlmClient::from_config(&config)
            .unwrap()
            .auth
            .to_str()
            .unwrap(),
        "proxy-key"
    );
    let bad = Config {
        llm_proxy_url: "localhost:8002".into(),
        ..Config::default()
    };
    assert!(matches!(
        LlmClient::from_config(&bad),
        Err(LlmError::Config(_))
    ));
    let bad = Config {
        llm_timeout: 0.0,
        ..Config::default()
    };
    assert!(
        LlmClient::from_config(&bad)
            .unwrap_err()
            .to_string()
            .contains("LLM_TIMEOUT")
    );
}

// ---- scripted failures (a fake OpenAI-style upstream in the proxy's place) ----

#[tokio::test]
async fn busy_answers_are_retried_before_the_first_byte() {
    let fake = FakeLlm::start(FakeFlavor::OpenAi).await;
    fake.push_reply(FakeReply::status(503));
    fake.push_reply(FakeReply::status(502));
    fake.push_reply(FakeReply::text(&["ok"]));
    let completion = complete(&fake).await.unwrap();
    assert_eq!(completion.content, "ok");
    assert_eq!(fake.request_count(), 3);
    let sent = fake.last_request().unwrap();
    assert_eq!(sent.header("x-internal-auth"), Some(PROXY_KEY));
    assert_eq!(sent.body["stream"], true);
    assert_eq!(sent.body["stream_options"]["include_usage"], true);
}

/// The proxy retried the provider before answering 429: one more round here would multiply
/// what a rate-limited provider gets.
#[tokio::test]
async fn a_rate_limit_from_the_proxy_is_reported_not_retried() {
    let fake = FakeLlm::start(FakeFlavor::OpenAi).await;
    fake.push_reply(FakeReply::status(429).with_retry_after(1));
    fake.push_reply(FakeReply::text(&["never asked for"]));
    let err = complete(&fake).await.unwrap_err();
    assert!(
        matches!(err, LlmError::Status { status: 429, .. }),
        "{err:?}"
    );
    assert_eq!(fake.request_count(), 1);
}

#[tokio::test]
async fn retries_stop_after_two() {
    let fake = FakeLlm::start(FakeFlavor::OpenAi).await;
    fake.set_default_reply(FakeReply::status(502).with_error_message("upstream down"));
    let err = complete(&fake).await.unwrap_err();
    assert!(
        matches!(&err, LlmError::Status { status: 502, message, .. } if message == "upstream down"),
        "{err:?}"
    );
    assert_eq!(fake.request_count(), 3);
}

#[tokio::test]
async fn client_errors_and_long_retry_after_are_not_retried() {
    let fake = FakeLlm::start(FakeFlavor::OpenAi).await;
    fake.push_reply(FakeReply::status(400));
    let err = complete(&fake).await.unwrap_err();
    assert!(matches!(err, LlmError::Status { status: 400, .. }));
    assert_eq!(fake.request_count(), 1);

    fake.push_reply(FakeReply::status(429).with_retry_after(60));
    let err = complete(&fake).await.unwrap_err();
    assert!(
        matches!(err, LlmError::Status { status: 429, retry_after: Some(d), .. } if d == Duration::from_secs(60))
    );
    assert_eq!(fake.request_count(), 2);
}

#[tokio::test]
async fn an_unreachable_proxy_is_a_connect_error() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let err = client(&format!("http://{addr}"))
        .complete(request("hi"))
        .await
        .unwrap_err();
    assert!(matches!(err, LlmError::Connect(_)), "{err:?}");
    assert!(err.is_transient());
}

#[tokio::test]
async fn a_mid_stream_error_ends_the_stream_after_the_text() {
    let fake = FakeLlm::start(FakeFlavor::OpenAi).await;
    fake.push_reply(FakeReply::text(&["par", "tial"]).with_stream_error("model overloaded"));
    let items = stream_all(&client(&fake.base_url())).await;
    assert_eq!(
        items,
        [
            Ok(LlmDelta::Text("par".into())),
            Ok(LlmDelta::Text("tial".into())),
            Err(LlmError::Upstream {
                message: "model overloaded".into()
            }),
        ]
    );
}

#[tokio::test]
async fn a_dropped_connection_is_a_broken_stream() {
    let fake = FakeLlm::start(FakeFlavor::OpenAi).await;
    fake.push_reply(FakeReply::text(&["a", "b", "c", "d"]).disconnect_after(2));
    let items = stream_all(&client(&fake.base_url())).await;
    assert!(
        matches!(items.last(), Some(Err(LlmError::Stream(_)))),
        "{items:?}"
    );
}

#[tokio::test]
async fn streamed_tool_call_fragments_are_reassembled() {
    let fake = FakeLlm::start(FakeFlavor::OpenAi).await;
    fake.push_reply(FakeReply::tool_calls(vec![
        FakeToolCall::new(
            "call_A",
            "write_file",
            r##"{"path":"a.md","content":"# Title\n"}"##,
        )
        .with_split(5),
    ]));
    let completion = complete(&fake).await.unwrap();
    assert_eq!(completion.tool_calls.len(), 1);
    assert_eq!(completion.tool_calls[0].id, "call_A");
    assert_eq!(
        completion.tool_calls[0].arguments,
        r##"{"path":"a.md","content":"# Title\n"}"##
    );
    assert_eq!(completion.usage, Usage::new(10, 5));
}

#[tokio::test]
async fn silence_between_pieces_times_out() {
    let fake = FakeLlm::start(FakeFlavor::OpenAi).await;
    fake.push_reply(FakeReply::text(&["a", "b"]).with_chunk_delay(Duration::from_secs(5)));
    let llm = client(&fake.base_url()).with_idle_timeout(Duration::from_millis(200));
    let items = stream_all(&llm).await;
    assert_eq!(items.last(), Some(&Err(LlmError::Timeout)));

    fake.push_reply(FakeReply::text(&["a"]).with_first_byte_delay(Duration::from_secs(5)));
    let err = open(&llm).await.unwrap_err();
    assert_eq!(err, LlmError::Timeout);
}

#[tokio::test]
async fn dropping_the_stream_cancels_the_upstream_request() {
    let fake = FakeLlm::start(FakeFlavor::OpenAi).await;
    fake.push_reply(FakeReply::text(&["a", "b", "c"]).with_chunk_delay(Duration::from_secs(2)));
    let mut stream = open(&client(&fake.base_url())).await.unwrap();
    assert_eq!(stream.next().await, Some(Ok(LlmDelta::Text("a".into()))));
    drop(stream);
    assert!(fake.wait_for_cancelled(1, Duration::from_secs(5)).await);
}

// ---- the stream line cap ----

/// Two MiB: twice the default cap.
const HUGE: usize = 2 * 1024 * 1024;

#[tokio::test]
async fn a_stream_line_past_the_cap_fails_the_answer_with_a_clear_error() {
    let fake = FakeLlm::start(FakeFlavor::OpenAi).await;
    let huge = "x".repeat(HUGE);
    fake.push_reply(FakeReply::text(&["hello ", &huge]));
    let stream = open(&client(&fake.base_url())).await.unwrap();
    let items: Vec<_> = tokio::time::timeout(Duration::from_secs(10), stream.collect())
        .await
        .expect("the stream did not end");
    assert_eq!(items.first(), Some(&Ok(LlmDelta::Text("hello ".into()))));
    let last = items.last().unwrap().clone().unwrap_err();
    assert_eq!(
        last,
        LlmError::LineTooLong {
            limit: DEFAULT_MAX_STREAM_LINE_BYTES
        }
    );
    assert!(
        last.to_string()
            .contains("AGENT_RUNTIME__MAX_STREAM_LINE_BYTES"),
        "{last}"
    );
    assert!(
        !items
            .iter()
            .any(|item| matches!(item, Ok(LlmDelta::Text(text)) if text.len() > 1024)),
        "the long line was passed on"
    );

    // The setting raises the cap.
    fake.push_reply(FakeReply::text(&["hello ", &huge]));
    let config = Config {
        llm_proxy_url: fake.base_url(),
        internal_api_key: Secret::new(PROXY_KEY),
        max_stream_line_bytes: 4 * HUGE,
        llm_timeout: 5.0,
        ..Config::default()
    };
    let completion = LlmClient::from_config(&config)
        .unwrap()
        .complete(request("hi"))
        .await
        .unwrap();
    assert_eq!(completion.content.len(), "hello ".len() + HUGE);
}
