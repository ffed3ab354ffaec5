//! Usage accounting (docs/usage.md): every LLM call of a turn is one `llm_usage` row, stored
//! with its step, carrying the usage the proxy reported, the deployment that answered, and how
//! the call ended.

use codelab_agent_runtime::model::{LlmUsage, UsageOutcome, UsagePurpose};
use codelab_testkit::{FakeFlavor, FakeLlm, FakeReply};
use serde_json::json;

use crate::common::{Backend, Runtime, assistant_text, outcome, slow_reply};

async fn usage_of(rt: &Runtime, session: &str) -> Vec<LlmUsage> {
    rt.state.store.session_usage(session).await.unwrap()
}

async fn a_step_records_the_usage_the_provider_reported(backend: Backend) {
    let fake = FakeLlm::start(FakeFlavor::OpenAi).await;
    fake.push_reply(
        FakeReply::text(&["Hel", "lo"])
            .with_usage(1234, 56)
            .with_cached_tokens(1000),
    );
    let rt = Runtime::start_with_fake(backend, &fake, |_| {}).await;
    let (session, events) = rt.new_turn("coder", "hello").await;
    assert_eq!(assistant_text(&events), "Hello");
    let rows = usage_of(&rt, &session).await;
    assert_eq!(rows.len(), 1, "{rows:?}");
    let row = &rows[0];
    assert_eq!(row.user_id, "dev");
    assert_eq!(
        (row.purpose, row.agent.as_str()),
        (UsagePurpose::Step, "coder")
    );
    assert_eq!(row.step, 1);
    assert_eq!(row.requested_model, "fake");
    assert_eq!(row.provider.as_deref(), Some("openai"));
    // The stack's table sends model `fake` to the upstream as `gpt-4o`.
    assert_eq!(row.model.as_deref(), Some("gpt-4o"));
    assert_eq!(
        (
            row.prompt_tokens,
            row.completion_tokens,
            row.total_tokens,
            row.cached_tokens
        ),
        (1234, 56, 1290, 1000)
    );
    assert_eq!(row.cost, None, "the model has no price");
    assert_eq!(row.outcome, UsageOutcome::Ok);
    assert!(row.ttft_ms.is_some_and(|ttft| ttft <= row.latency_ms));
    let turn = rt.state.store.active_turn(&session).await.unwrap();
    assert!(turn.is_none(), "the turn ended");
    assert!(row.turn_id.is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_step_records_the_usage_the_provider_reported_on_sqlite() {
    a_step_records_the_usage_the_provider_reported(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_step_records_the_usage_the_provider_reported_on_postgres() {
    a_step_records_the_usage_the_provider_reported(Backend::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn routing_and_each_step_are_counted_with_the_mock_models_word_counts() {
    let rt = Runtime::start(Backend::Sqlite).await;
    let session = rt.new_session("dev").await;
    // A new session is routed first (the orchestrator's classification), then answered.
    let events = rt.say(&session, "explain this code").await;
    assert_eq!(outcome(&events), "completed");
    let rows = usage_of(&rt, &session).await;
    let purposes: Vec<(UsagePurpose, &str)> = rows
        .iter()
        .map(|row| (row.purpose, row.agent.as_str()))
        .collect();
    assert_eq!(purposes.len(), 2, "{rows:?}");
    assert_eq!(purposes[0], (UsagePurpose::Routing, "orchestrator"));
    assert_eq!(purposes[1].0, UsagePurpose::Step);
    for row in &rows {
        assert_eq!(row.provider.as_deref(), Some("mock"));
        assert!(
            row.prompt_tokens > 0 && row.completion_tokens > 0,
            "{row:?}"
        );
        assert_eq!(row.total_tokens, row.prompt_tokens + row.completion_tokens);
        assert_eq!(row.outcome, UsageOutcome::Ok);
    }
    // The static reply is four words.
    assert_eq!(rows[1].completion_tokens, 4);
    // A second turn adds one step, not another routing call.
    rt.say(&session, "and this").await;
    assert_eq!(usage_of(&rt, &session).await.len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failed_call_is_counted_with_the_failed_turn() {
    let fake = FakeLlm::start(FakeFlavor::OpenAi).await;
    fake.set_default_reply(FakeReply::status(400));
    let rt = Runtime::start_with_fake(Backend::Sqlite, &fake, |_| {}).await;
    let (session, events) = rt.new_turn("coder", "hello").await;
    assert_eq!(outcome(&events), "failed");
    let rows = usage_of(&rt, &session).await;
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0].outcome, UsageOutcome::Error);
    assert_eq!(rows[0].error_kind.as_deref(), Some("status_400"));
    assert_eq!((rows[0].prompt_tokens, rows[0].ttft_ms), (0, None));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_call_cancelled_mid_answer_is_counted_as_cancelled() {
    let fake = FakeLlm::start(FakeFlavor::OpenAi).await;
    fake.push_reply(slow_reply());
    let rt = Runtime::start_with_fake(Backend::Sqlite, &fake, |_| {}).await;
    let session = rt.new_session("dev").await;
    let story = json!({"type": "user_message", "content": "a long story", "agent_type": "coder"});
    let mut running = rt.open(&session, story).await;
    running.until("assistant_delta").await;
    let cancel = rt.send(&session, json!({"type": "cancel_turn"})).await;
    assert_eq!(outcome(&cancel), "cancelled");
    running.rest().await;
    let rows = usage_of(&rt, &session).await;
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0].outcome, UsageOutcome::Cancelled);
    assert!(rows[0].ttft_ms.is_some(), "a token had arrived");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_usage_route_groups_calls_by_turn_and_step_for_the_owner() {
    let rt = Runtime::start(Backend::Sqlite).await;
    let session = rt.new_session("alice").await;
    let frame = json!({"type": "user_message", "content": "hello there"});
    rt.send_as("alice", &session, frame).await;
    let usage = rt
        .get_ok(&format!("/sessions/{session}/usage"), "alice")
        .await;
    assert_eq!(
        usage["totals"]["requests"], 2,
        "routing and one step: {usage}"
    );
    let steps = &usage["turns"][0]["steps"];
    assert_eq!(steps.as_array().map(Vec::len), Some(1), "{usage}");
    let purposes: Vec<&str> = steps[0]["calls"]
        .as_array()
        .unwrap()
        .iter()
        .map(|call| call["purpose"].as_str().unwrap())
        .collect();
    assert_eq!(purposes, ["routing", "step"]);
    let (status, _) = rt.get(&format!("/sessions/{session}/usage"), "bob").await;
    assert_eq!(status, 404);
}
