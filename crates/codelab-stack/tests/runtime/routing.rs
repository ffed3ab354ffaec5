//! Routing over the real LLM proxy's mock model (the runtime's classifier reads its
//! `::reply` answers), and its fallback when the proxy or an upstream fails. The pure parts
//! of routing are tested in `crates/codelab-agent-runtime/src/routing.rs`.

use std::time::Duration;

use codelab_agent_runtime::agents::AgentKind;
use codelab_agent_runtime::llm::LlmClient;
use codelab_agent_runtime::routing::{RoutingDecision, RoutingMethod, classify};
use codelab_testkit::{FakeFlavor, FakeLlm, FakeReply};

use crate::llm_client::{client, mock_model};

const TIMEOUT: Duration = Duration::from_secs(5);

/// The decision for `message` of a multi-agent classifier asking `llm`'s mock model.
async fn mock_decision(llm: &LlmClient, message: &str) -> RoutingDecision {
    classify(llm, "mock-llm", message, true, TIMEOUT).await
}

/// The decision for `message` of a classifier asking `fake`'s model `model`.
async fn fake_decision(fake: &FakeLlm, model: &str, message: &str, multi: bool) -> RoutingDecision {
    classify(&client(&fake.base_url()), model, message, multi, TIMEOUT).await
}

#[tokio::test]
async fn the_models_json_answer_decides() {
    let (_proxy, llm) = mock_model().await;
    let message = "Let us sketch the system\n::reply {\"agent\":\"architect\",\"confidence\":\"high\",\"reasoning\":\"design\"}";
    let decision = mock_decision(&llm, message).await;
    assert_eq!(
        decision,
        RoutingDecision {
            agent: AgentKind::Architect,
            confidence: "high".into(),
            reason: "design".into(),
            method: RoutingMethod::Llm,
            // No verdict in the answer: the keyword table's (no complex keyword).
            complex: false,
            error: None,
        }
    );
}

#[tokio::test]
async fn a_fenced_answer_and_universal_are_understood() {
    let (_proxy, llm) = mock_model().await;
    let message = "::reply ```json {\"agent\":\"debug\",\"reasoning\":\"trace\"} ```";
    let decision = mock_decision(&llm, message).await;
    assert_eq!(
        (decision.agent, decision.method),
        (AgentKind::Debug, RoutingMethod::Llm)
    );
    assert_eq!(decision.confidence, "medium");

    let message = "::reply {\"agent\":\"universal\",\"confidence\":\"low\"}";
    let decision = mock_decision(&llm, message).await;
    assert_eq!(
        (decision.agent, decision.method),
        (AgentKind::Coder, RoutingMethod::Llm)
    );
}

#[tokio::test]
async fn garbage_falls_back_to_keywords() {
    let (_proxy, llm) = mock_model().await;
    let message = "::reply I would pick the coder\nplease investigate this crash";
    let decision = mock_decision(&llm, message).await;
    assert_eq!(decision.agent, AgentKind::Debug);
    assert_eq!(decision.method, RoutingMethod::Fallback);
    assert_eq!(decision.confidence, "low");
    assert!(
        decision.reason.contains("\"investigate\""),
        "{}",
        decision.reason
    );
    assert!(decision.error.is_some());

    let message = "::reply {\"agent\":\"wizard\"}\nexplain closures";
    let decision = mock_decision(&llm, message).await;
    assert_eq!(
        (decision.agent, decision.method),
        (AgentKind::Ask, RoutingMethod::Fallback)
    );
}

#[tokio::test]
async fn a_message_of_directives_only_goes_to_the_coder() {
    let (_proxy, llm) = mock_model().await;
    // The mock answers the classifier with a tool call: no JSON, so the fallback decides.
    let message = "::tool read_file {\"path\": \"explain.md\"}\n::step 2 ::reply debug this";
    let decision = mock_decision(&llm, message).await;
    assert_eq!(
        (decision.agent, decision.method),
        (AgentKind::Coder, RoutingMethod::Fallback)
    );
}

#[tokio::test]
async fn proxy_errors_fall_back_after_one_retry() {
    let (_proxy, llm) = mock_model().await;
    let decision = mock_decision(&llm, "::error 500\nwhat is rust").await;
    assert_eq!(
        (decision.agent, decision.method),
        (AgentKind::Ask, RoutingMethod::Fallback)
    );
    assert!(
        decision.error.as_deref().unwrap().contains("500"),
        "{decision:?}"
    );

    let fake = FakeLlm::start(FakeFlavor::OpenAi).await;
    fake.set_default_reply(FakeReply::status(503));
    let decision = fake_decision(&fake, "m", "design it", true).await;
    assert_eq!(
        (decision.agent, decision.method),
        (AgentKind::Architect, RoutingMethod::Fallback)
    );
    assert_eq!(fake.request_count(), 2);

    let fake = FakeLlm::start(FakeFlavor::OpenAi).await;
    fake.set_default_reply(FakeReply::status(400));
    fake_decision(&fake, "m", "design it", true).await;
    assert_eq!(fake.request_count(), 1, "a client error is not retried");
}

#[tokio::test]
async fn a_slow_classifier_times_out_into_the_fallback() {
    let fake = FakeLlm::start(FakeFlavor::OpenAi).await;
    fake.set_default_reply(
        FakeReply::text(&[r#"{"agent":"ask"}"#]).with_first_byte_delay(Duration::from_secs(5)),
    );
    let llm = client(&fake.base_url());
    let decision = classify(&llm, "m", "refactor this", true, Duration::from_millis(100)).await;
    assert_eq!(
        (decision.agent, decision.method),
        (AgentKind::Coder, RoutingMethod::Fallback)
    );
    assert!(
        decision.error.as_deref().unwrap().contains("in time"),
        "{decision:?}"
    );
    assert!(fake.wait_for_requests(2, TIMEOUT).await);
}

#[tokio::test]
async fn the_request_is_a_classifier_prompt_and_the_message_last() {
    let fake = FakeLlm::start(FakeFlavor::OpenAi).await;
    fake.set_default_reply(FakeReply::text(&[
        r#"{"agent":"ask","confidence":"high","reasoning":"q"}"#,
    ]));
    let decision = fake_decision(&fake, "router-model", "hi there", true).await;
    assert_eq!(decision.agent, AgentKind::Ask);
    let body = fake.last_request().unwrap().body;
    assert_eq!(body["model"], "router-model");
    assert_eq!(body["temperature"], 0.3);
    assert!(body.get("tools").is_none());
    let messages = body["messages"].as_array().unwrap();
    assert_eq!(messages.len(), 2);
    assert_eq!(messages[0]["role"], "system");
    assert_eq!(
        messages[1],
        serde_json::json!({"role": "user", "content": "hi there"})
    );
}

#[tokio::test]
async fn single_agent_mode_never_asks_the_model() {
    let fake = FakeLlm::start(FakeFlavor::OpenAi).await;
    let decision = fake_decision(&fake, "m", "design a system", false).await;
    assert_eq!(decision.agent, AgentKind::Universal);
    assert_eq!(decision.method, RoutingMethod::SingleAgent);
    assert_eq!(decision.confidence, "high");
    assert_eq!(fake.request_count(), 0);
}
