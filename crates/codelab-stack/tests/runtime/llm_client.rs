//! The runtime's LLM client over the real LLM proxy in process (its deterministic mock model).
//! The client's pure decoding and its behaviour against scripted failures are tested in the
//! runtime crate (`crates/codelab-agent-runtime/src/llm/tests.rs`).

use codelab_core::service::Service as _;
use std::time::Duration;

use codelab_agent_runtime::llm::{DEFAULT_MAX_RETRIES, LlmClient, LlmDelta, LlmError, LlmStream};
use codelab_core::config::Secret;
use codelab_core::service::SharedDeps;
use codelab_protocol::openai::{ChatCompletionRequest, ChatMessage};
use codelab_testkit::ServerGuard;
use futures_util::StreamExt;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

const PROXY_KEY: &str = "test-internal-key-0123456789";

/// The LLM proxy on 127.0.0.1:0 with its built-in table (`mock-llm` is the mock model).
pub(crate) async fn start_proxy() -> ServerGuard {
    let config = codelab_llm_proxy::Config {
        internal_api_key: Secret::new(PROXY_KEY),
        retry_backoff_ms: 1,
        request_timeout: 5.0,
        ..codelab_llm_proxy::Config::default()
    };
    let state = codelab_llm_proxy::ProxyService::build(config, SharedDeps::default())
        .await
        .unwrap();
    ServerGuard::start(codelab_llm_proxy::ProxyService::router(state)).await
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
