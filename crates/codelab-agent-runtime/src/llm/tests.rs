//! The LLM client against the real proxy in-process (its deterministic mock model), and
//! against a fake OpenAI-style upstream standing in for the proxy where a test needs to
//! script failures (statuses, broken streams, delays).

use std::time::Duration;

use codelab_core::config::Secret;
use codelab_protocol::openai::{ChatCompletionRequest, ChatMessage};
use codelab_testkit::{FakeFlavor, FakeLlm, FakeReply, FakeToolCall, ServerGuard};
use futures_util::StreamExt;
use tokio_util::sync::CancellationToken;

use super::*;

pub(crate) const PROXY_KEY: &str = "test-internal-key-0123456789";

/// The LLM proxy on 127.0.0.1:0 with its built-in table (`mock-llm` is the mock model).
pub(crate) async fn start_proxy() -> ServerGuard {
    let config = codelab_llm_proxy::Config {
        internal_api_key: Secret::new(PROXY_KEY),
        retry_backoff_ms: 1,
        request_timeout: 5.0,
        ..codelab_llm_proxy::Config::default()
    };
    let state = codelab_llm_proxy::build(config, codelab_llm_proxy::Deps::default())
        .await
        .unwrap();
    ServerGuard::start(codelab_llm_proxy::router(state)).await
}

/// A client of `base` with fast retries.
pub(crate) fn client(base: &str) -> LlmClient {
    LlmClient::new(base, &Secret::new(PROXY_KEY), Duration::from_secs(5))
        .unwrap()
        .with_retries(DEFAULT_MAX_RETRIES, Duration::from_millis(1))
}

fn request(user: &str) -> ChatCompletionRequest {
    ChatCompletionRequest {
        model: "mock-llm".into(),
        messages: vec![
            ChatMessage::text("system", "You are a test."),
            ChatMessage::text("user", user),
        ],
        ..ChatCompletionRequest::default()
    }
}

async fn collect(stream: LlmStream) -> Vec<Result<LlmDelta, LlmError>> {
    stream.collect().await
}

// ---- SSE parsing and decoding (pure) ----

#[test]
fn sse_events_survive_any_chunking() {
    let body = "data: {\"a\":1}\r\n\r\n: keep-alive\n\ndata: caf\u{e9}\ndata: two\n\nid: 3\ndata: [DONE]\n\n";
    let bytes = body.as_bytes();
    for cut in 0..bytes.len() {
        let mut parser = SseParser::default();
        let mut events = parser.push(&bytes[..cut]);
        events.extend(parser.push(&bytes[cut..]));
        events.extend(parser.finish());
        assert_eq!(
            events,
            ["{\"a\":1}", "caf\u{e9}\ntwo", "[DONE]"],
            "cut at {cut}"
        );
    }
}

#[test]
fn an_event_without_its_blank_line_is_kept_at_the_end() {
    let mut parser = SseParser::default();
    assert!(parser.push(b"data: [DONE]").is_empty());
    assert_eq!(parser.finish().as_deref(), Some("[DONE]"));
    assert_eq!(parser.finish(), None);
}

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
    assert_eq!(
        deltas,
        [LlmDelta::Usage {
            prompt: 7,
            completion: 3
        }]
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

// ---- over the real proxy ----

#[tokio::test]
async fn text_streams_piece_by_piece_with_finish_and_usage() {
    let proxy = start_proxy().await;
    let llm = client(&proxy.base_url());
    let stream = llm
        .stream(request("hello"), CancellationToken::new())
        .await
        .unwrap();
    let items: Vec<LlmDelta> = collect(stream)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    let texts: Vec<&str> = items
        .iter()
        .filter_map(|d| match d {
            LlmDelta::Text(t) => Some(t.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(texts, ["Mock ", "LLM ", "response ", "(static)"]);
    assert!(items.contains(&LlmDelta::Finish {
        reason: "stop".into()
    }));
    assert!(
        items
            .iter()
            .any(|d| matches!(d, LlmDelta::Usage { prompt, completion: 4 } if *prompt > 0))
    );
}

#[tokio::test]
async fn tool_calls_are_relayed_with_their_exact_arguments() {
    let proxy = start_proxy().await;
    let llm = client(&proxy.base_url());
    let completion = llm
        .complete(request(
            "::tool read_file {\"path\": \"src/a.py\", \"start_line\": 2}\n::tool list_files {\"path\": \".\"}",
        ))
        .await
        .unwrap();
    assert_eq!(completion.finish_reason.as_deref(), Some("tool_calls"));
    assert_eq!(completion.tool_calls.len(), 2);
    let first = &completion.tool_calls[0];
    assert_eq!(first.name, "read_file");
    assert!(!first.id.is_empty());
    let args: Value = serde_json::from_str(&first.arguments).unwrap();
    assert_eq!(
        args,
        serde_json::json!({"path": "src/a.py", "start_line": 2})
    );
    assert_eq!(completion.tool_calls[1].name, "list_files");
}

#[tokio::test]
async fn reply_directives_come_back_verbatim() {
    let proxy = start_proxy().await;
    let completion = client(&proxy.base_url())
        .complete(request("::reply {\"agent\":\"debug\"}"))
        .await
        .unwrap();
    assert_eq!(completion.content, "{\"agent\":\"debug\"}");
    assert_eq!(completion.finish_reason.as_deref(), Some("stop"));
}

#[tokio::test]
async fn error_statuses_carry_the_proxys_message() {
    let proxy = start_proxy().await;
    let err = client(&proxy.base_url())
        .complete(request("::error 400"))
        .await
        .unwrap_err();
    let LlmError::Status {
        status, message, ..
    } = err
    else {
        panic!("{err:?}");
    };
    assert_eq!(status, 400);
    assert!(!message.is_empty());

    let wrong_key = LlmClient::new(
        &proxy.base_url(),
        &Secret::new("wrong"),
        Duration::from_secs(5),
    )
    .unwrap();
    let err = wrong_key.complete(request("hi")).await.unwrap_err();
    assert_eq!(
        err,
        LlmError::Status {
            status: 401,
            message: "unauthorized".into(),
            retry_after: None
        }
    );
}

#[tokio::test]
async fn cancelling_stops_the_stream() {
    let proxy = start_proxy().await;
    let llm = client(&proxy.base_url());
    let cancel = CancellationToken::new();
    let mut stream = llm
        .stream(
            request("::slow 200\n::reply one two three four five"),
            cancel.clone(),
        )
        .await
        .unwrap();
    cancel.cancel();
    assert_eq!(stream.next().await, Some(Err(LlmError::Cancelled)));
    assert_eq!(stream.next().await, None);
}

// ---- scripted failures (a fake OpenAI-style upstream in the proxy's place) ----

#[tokio::test]
async fn busy_answers_are_retried_before_the_first_byte() {
    let fake = FakeLlm::start(FakeFlavor::OpenAi).await;
    fake.push_reply(FakeReply::status(503));
    fake.push_reply(FakeReply::status(429));
    fake.push_reply(FakeReply::text(&["ok"]));
    let completion = client(&fake.base_url())
        .complete(request("hi"))
        .await
        .unwrap();
    assert_eq!(completion.content, "ok");
    assert_eq!(fake.request_count(), 3);
    let sent = fake.last_request().unwrap();
    assert_eq!(sent.header("x-internal-auth"), Some(PROXY_KEY));
    assert_eq!(sent.body["stream"], true);
    assert_eq!(sent.body["stream_options"]["include_usage"], true);
}

#[tokio::test]
async fn retries_stop_after_two() {
    let fake = FakeLlm::start(FakeFlavor::OpenAi).await;
    fake.set_default_reply(FakeReply::status(502).with_error_message("upstream down"));
    let err = client(&fake.base_url())
        .complete(request("hi"))
        .await
        .unwrap_err();
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
    let err = client(&fake.base_url())
        .complete(request("hi"))
        .await
        .unwrap_err();
    assert!(matches!(err, LlmError::Status { status: 400, .. }));
    assert_eq!(fake.request_count(), 1);

    fake.push_reply(FakeReply::status(429).with_retry_after(60));
    let err = client(&fake.base_url())
        .complete(request("hi"))
        .await
        .unwrap_err();
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
    let items = collect(
        client(&fake.base_url())
            .stream(request("hi"), CancellationToken::new())
            .await
            .unwrap(),
    )
    .await;
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
    let items = collect(
        client(&fake.base_url())
            .stream(request("hi"), CancellationToken::new())
            .await
            .unwrap(),
    )
    .await;
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
    let completion = client(&fake.base_url())
        .complete(request("hi"))
        .await
        .unwrap();
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
    let items = collect(
        llm.stream(request("hi"), CancellationToken::new())
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(items.last(), Some(&Err(LlmError::Timeout)));

    fake.push_reply(FakeReply::text(&["a"]).with_first_byte_delay(Duration::from_secs(5)));
    let err = llm
        .stream(request("hi"), CancellationToken::new())
        .await
        .unwrap_err();
    assert_eq!(err, LlmError::Timeout);
}

#[tokio::test]
async fn dropping_the_stream_cancels_the_upstream_request() {
    let fake = FakeLlm::start(FakeFlavor::OpenAi).await;
    fake.push_reply(FakeReply::text(&["a", "b", "c"]).with_chunk_delay(Duration::from_secs(2)));
    let mut stream = client(&fake.base_url())
        .stream(request("hi"), CancellationToken::new())
        .await
        .unwrap();
    assert_eq!(stream.next().await, Some(Ok(LlmDelta::Text("a".into()))));
    drop(stream);
    assert!(fake.wait_for_cancelled(1, Duration::from_secs(5)).await);
}

// ---- the stream line cap ----

/// Two MiB: twice the default cap.
const HUGE: usize = 2 * 1024 * 1024;

#[test]
fn a_line_past_the_cap_stops_the_parser_without_buffering_it() {
    let mut parser = SseParser::with_max_line_bytes(1024 * 1024);
    assert_eq!(parser.push(b"data: {\"a\":1}\n\n"), ["{\"a\":1}"]);
    // A line that never ends, fed 64 KiB at a time: the parser gives up once it passes the
    // cap instead of holding all of it.
    let piece = vec![b'x'; 64 * 1024];
    let mut fed = 0;
    while parser.line_too_long().is_none() {
        assert!(parser.push(&piece).is_empty());
        fed += piece.len();
        assert!(fed <= HUGE, "the parser kept buffering past the cap");
    }
    assert_eq!(parser.line_too_long(), Some(1024 * 1024));
    assert!(fed <= 1024 * 1024 + piece.len());
    assert!(
        parser.buf.is_empty(),
        "the parser still holds the long line"
    );
    assert!(parser.push(b"\n\ndata: late\n\n").is_empty());
    assert_eq!(parser.finish(), None);
}

#[test]
fn many_short_data_lines_cannot_add_up_past_the_cap() {
    let mut parser = SseParser::with_max_line_bytes(MIN_STREAM_LINE_BYTES);
    let line = format!("data: {}\n", "y".repeat(100));
    for _ in 0..20 {
        assert!(parser.push(line.as_bytes()).is_empty());
    }
    assert_eq!(parser.line_too_long(), Some(MIN_STREAM_LINE_BYTES));
    assert!(parser.push(b"\n").is_empty());
}

#[tokio::test]
async fn a_stream_line_past_the_cap_fails_the_answer_with_a_clear_error() {
    let fake = FakeLlm::start(FakeFlavor::OpenAi).await;
    let huge = "x".repeat(HUGE);
    fake.push_reply(FakeReply::text(&["hello ", &huge]));
    let stream = client(&fake.base_url())
        .stream(request("hi"), CancellationToken::new())
        .await
        .unwrap();
    let items = tokio::time::timeout(Duration::from_secs(10), collect(stream))
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
