//! The main flows on PostgreSQL (a fresh database on `CODELAB_TEST_DATABASE_URL`, dropped
//! afterwards): a routed turn, and a tool round trip with a Flutter-style approval.
use crate::common::{self, Backend, Runtime, Text, assistant_text, first, kinds, stored};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_routed_turn_completes_and_is_stored() {
    let rt = Runtime::start(Backend::Postgres).await;
    let s = rt.new_session("alice").await;
    let question = "Explain the cache\n::reply It is an LRU.";
    let frame = json!({"type": "user_message", "content": question});
    let events = rt.send_as("alice", &s, frame).await;
    assert_eq!(first(&events, "agent_switched")["to_agent"], "ask");
    assert_eq!(assistant_text(&events), "It is an LRU.");
    assert_eq!(kinds(&events).last().unwrap(), "turn_finished");
    assert_eq!(rt.stored_events_of("alice", &s).await, stored(&events));
    let history = rt.get_ok(&format!("/sessions/{s}/history"), "alice").await;
    assert_eq!(history["current_agent"], "ask");
    assert_eq!(history["agent_history"][0]["method"], "fallback");
    assert_eq!(history["message_count"], 2);
    let (status, _) = rt.get(&format!("/sessions/{s}"), "bob").await;
    assert_eq!(status, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_tool_round_trip_with_an_approval() {
    let rt = Runtime::start(Backend::Postgres).await;
    let s = rt.new_session("dev").await;
    let start = rt.to_coder(&s, "::tool read_file {\"path\":\"a.txt\"}\n::tool write_file {\"path\":\"b.txt\",\"content\":\"x\"}").await;
    let calls = common::all(&start, "tool_call");
    assert_eq!(calls.len(), 2);
    assert_eq!(calls[1]["requires_approval"], true);
    let (read, write) = (
        calls[0]["call_id"].text().to_owned(),
        calls[1]["call_id"].text().to_owned(),
    );
    let pending = rt.pending_approvals(&s).await;
    assert_eq!(pending["count"], 1);
    assert_eq!(pending["pending_approvals"][0]["call_id"], write.as_str());

    let approved = rt.result(&s, &write, json!({"success": true})).await;
    assert_eq!(first(&approved, "step_finished")["pending_calls"], 1);
    let done = rt.result(&s, &read, json!("hello")).await;
    assert_eq!(
        assistant_text(&done),
        "Tool write_file returned: {\"success\":true}\nTool read_file returned: hello"
    );
    assert_eq!(first(&done, "turn_finished")["outcome"], "completed");
    let history = rt.get_ok(&format!("/sessions/{s}/history"), "dev").await;
    let statuses: Vec<_> = history["tool_calls"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c["status"].clone(), c["decision"].clone()))
        .collect();
    assert_eq!(
        statuses,
        [
            (json!("succeeded"), json!(null)),
            (json!("succeeded"), json!("approve"))
        ]
    );
    let duplicate = rt.result(&s, &read, json!("again")).await;
    assert_eq!(kinds(&duplicate), ["notice"]);
}
