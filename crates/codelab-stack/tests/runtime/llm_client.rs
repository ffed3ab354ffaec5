//! The runtime's LLM client over the real LLM proxy in process (its deterministic mock model).
//! The client's pure decoding and its behaviour against scripted failures are tested in the
//! runtime crate (`crates/codelab-agent-runtime/src/llm/tests.rs`).

use codelab_core::service::Service as _;
use std::time::Duration;

use codelab_agent_runtime::llm::{DEFAULT_MAX_RETRIES, LlmClient, LlmDelta, LlmError};
use codelab_core::config::Secret;
use codelab_core::service::SharedDeps;
use codelab_testkit::ServerGuard;
use codelab_testkit::chat::{PROXY_KEY, chat_request as request};
use futures_util::StreamExt;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

/// The LLM proxy on 127.0.0.1:0 with its built-in table (`mock-llm` is the mock model), and a
/// client of it.
pub(crate) async fn mock_model() -> (ServerGuard, LlmClient) {
    let config = codelab_llm_proxy::Config {
        internal_api_key: Secret::new(PROXY_KEY),
        retry_backoff_ms: 1,
        request_timeout: 5.0,
        ..codelab_llm_proxy::Config::default()
    };
    let state = codelab_llm_proxy::ProxyService::build(config, SharedDeps::default())
        .await
        .unwrap();
    let proxy = ServerGuard::start(codelab_llm_proxy::ProxyService::router(state)).await;
    let llm = client(&proxy.base_url());
    (proxy, llm)
}

/// A client of `base` with fast retries.
pub(crate) fn client(base: &str) -> LlmClient {
    LlmClient::new(base, &Secret::new(PROXY_KEY), Duration::from_secs(5))
        .unwrap()
        .with_retries(DEFAULT_MAX_RETRIES, Duration::from_millis(1))
}

#[tokio::test]
async fn text_streams_piece_by_piece_with_finish_and_usage() {
    let (_proxy, llm) = mock_model().await;
    let stream = llm.stream(request("hello"), CancellationToken::new());
    let items: Vec<LlmDelta> = stream.await.unwrap().map(Result::unwrap).collect().await;
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
            .any(|d| matches!(d, LlmDelta::Usage(usage) if usage.completion_tokens == 4 && usage.prompt_tokens > 0))
    );
}

#[tokio::test]
async fn tool_calls_are_relayed_with_their_exact_arguments() {
    let (_proxy, llm) = mock_model().await;
    let script = "::tool read_file {\"path\": \"src/a.py\", \"start_line\": 2}\n::tool list_files {\"path\": \".\"}";
    let completion = llm.complete(request(script)).await.unwrap();
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
    let (_proxy, llm) = mock_model().await;
    let reply = request("::reply {\"agent\":\"debug\"}");
    let completion = llm.complete(reply).await.unwrap();
    assert_eq!(completion.content, "{\"agent\":\"debug\"}");
    assert_eq!(completion.finish_reason.as_deref(), Some("stop"));
}

#[tokio::test]
async fn error_statuses_carry_the_proxys_message() {
    let (proxy, llm) = mock_model().await;
    let err = llm.complete(request("::error 400")).await.unwrap_err();
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
    let (_proxy, llm) = mock_model().await;
    let cancel = CancellationToken::new();
    let slow = request("::slow 200\n::reply one two three four five");
    let mut stream = llm.stream(slow, cancel.clone()).await.unwrap();
    cancel.cancel();
    assert_eq!(stream.next().await, Some(Err(LlmError::Cancelled)));
    assert_eq!(stream.next().await, None);
}
