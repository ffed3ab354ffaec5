//! Turns through the internal API, on SQLite, against the real LLM proxy's mock model: its
//! `::` directives in the user message script every reply. The mock numbers steps by the
//! assistant messages after the last user message, so the routing classification and the
//! chosen agent's first step are both its step 1 and see the same directives.
use crate::common::{
    self, Backend, Runtime, Text, all, assistant_text, call_ids, decision, first, kinds, last,
    outcome, parse_sse, stored, strings,
};
use codelab_core::service::Service as _;
use codelab_protocol::runtime::SequencedEvent;
use serde_json::{Value, json};

async fn runtime() -> Runtime {
    Runtime::start(Backend::Sqlite).await
}

const WRITE_A: &str = r#"::tool write_file {"path":"a.txt","content":"x"}"#;

/// Asserts the session's stored events are exactly the stored events of `streams`, in order:
/// everything emitted was stored first, nothing stored went unsent.
async fn assert_replay_matches(rt: &Runtime, session: &str, streams: &[&[SequencedEvent]]) {
    let emitted: Vec<SequencedEvent> = streams.iter().flat_map(|s| stored(s)).collect();
    assert_eq!(rt.stored_events(session).await, emitted);
}

// ---- routing ----

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_model_routes_a_new_session_to_the_agent_it_classifies() {
    let (rt, s) = Runtime::with_session(Backend::Sqlite).await;
    let answer = r#"{"agent":"architect","confidence":"high","reasoning":"design"}"#;
    let events = rt
        .say(&s, &format!("  Design the storage layer\n::reply {answer}"))
        .await;

    let kinds = kinds(&events);
    assert_eq!(kinds[0], "session_info");
    assert_eq!(kinds[1], "agent_switched");
    assert_eq!(
        first(&events, "session_info")["current_agent"],
        "orchestrator"
    );
    let switched = first(&events, "agent_switched");
    assert_eq!(switched["from_agent"], "orchestrator");
    assert_eq!(switched["to_agent"], "architect");
    assert_eq!(switched["reason"], "design");
    assert_eq!(switched["confidence"], "high");
    // The architect's first step is the mock's step 1 too: it answers with the same line.
    let message = first(&events, "assistant_message");
    assert_eq!(message["agent"], "architect");
    assert_eq!(message["content"], answer);
    // The text streamed as deltas of the same reply before the whole message.
    let deltas = all(&events, "assistant_delta");
    assert!(!deltas.is_empty());
    assert!(
        deltas
            .iter()
            .all(|d| d["seq"] == 0 && d["message_id"] == message["message_id"])
    );
    let streamed: String = deltas.iter().map(|d| d["delta"].text()).collect();
    assert_eq!(streamed, answer);
    assert_eq!(outcome(&events), "completed");

    let history = rt.history(&s).await;
    assert_eq!(history["current_agent"], "architect");
    assert_eq!(history["agent_history"][0]["method"], "llm");
    assert_eq!(history["agent_history"][0]["confidence"], "high");
    assert_eq!(history["messages"][1]["name"], "architect");
    let session = rt.get_ok(&format!("/sessions/{s}"), "dev").await;
    assert!(
        session["title"]
            .text()
            .starts_with("Design the storage layer\n::reply")
    );
    assert_eq!(session["message_count"], 2);
    assert_replay_matches(&rt, &s, &[&events]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn keywords_route_when_the_classifier_answers_garbage() {
    let (rt, s) = Runtime::with_session(Backend::Sqlite).await;
    let events = rt
        .say(&s, "Why does the build crash?\n::reply this is not JSON")
        .await;
    let switched = first(&events, "agent_switched");
    assert_eq!(switched["to_agent"], "debug");
    assert_eq!(switched["confidence"], "low");
    assert_eq!(assistant_text(&events), "this is not JSON");
    assert_eq!(first(&events, "assistant_message")["agent"], "debug");
    let history = rt.history(&s).await;
    assert_eq!(history["agent_history"][0]["method"], "fallback");

    // Once routed, later messages stay with the specialist: no second classification.
    let later = rt.say(&s, "And now?").await;
    assert!(all(&later, "agent_switched").is_empty());
    assert_eq!(first(&later, "assistant_message")["agent"], "debug");
}

// ---- agent restrictions ----

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_architect_writes_markdown_only() {
    let script = r#"::tool write_file {"path":"a.rs","content":"fn main() {}"}"#;
    let (rt, s, events) = Runtime::with_turn(Backend::Sqlite, "architect", script).await;
    // Refused before reaching the IDE; the error goes back to the model, which answers next.
    assert!(all(&events, "tool_call").is_empty());
    let settled = first(&events, "tool_settled");
    assert_eq!(settled["outcome"], "invalid");
    assert!(
        settled["summary"]
            .text()
            .contains("may only write Markdown files")
    );
    let steps: Vec<Value> = all(&events, "step_finished");
    assert_eq!(steps[0]["step"], 1);
    assert_eq!(steps[0]["pending_calls"], 0);
    assert_eq!(steps[1]["step"], 2);
    let text = assistant_text(&events);
    assert!(
        text.starts_with(
            "Tool write_file returned: Error: the Architect Agent may only write Markdown files"
        ),
        "{text}"
    );
    assert_eq!(outcome(&events), "completed");
    let history = rt.history(&s).await;
    assert_eq!(history["tool_calls"][0]["status"], "invalid");

    // A Markdown file is fine, and waits for approval like any write.
    let plan = r##"::tool write_file {"path":"docs/plan.md","content":"# Plan"}"##;
    let (_, events) = rt.new_turn("architect", plan).await;
    let call = first(&events, "tool_call");
    assert_eq!(call["tool_name"], "write_file");
    assert_eq!(call["requires_approval"], true);
    assert_eq!(call["agent"], "architect");
    assert_eq!(outcome(&events), "awaiting_tools");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn debug_and_ask_cannot_write_and_ask_cannot_run_commands() {
    let rt = runtime().await;
    let agents = rt.get_ok("/agents", "dev").await;
    for agent in agents["agents"].as_array().unwrap() {
        if agent["type"] == "debug" || agent["type"] == "ask" {
            assert!(
                !agent["allowed_tools"]
                    .as_array()
                    .unwrap()
                    .contains(&json!("write_file"))
            );
        }
    }
    for agent in ["debug", "ask"] {
        let write = r#"::tool write_file {"path":"a.md","content":"x"}"#;
        let (_, events) = rt.new_turn(agent, write).await;
        assert!(all(&events, "tool_call").is_empty(), "{agent}");
        let summary = first(&events, "tool_settled")["summary"].text().to_owned();
        assert!(
            summary.contains("never modifies files"),
            "{agent}: {summary}"
        );
        assert!(
            assistant_text(&events).contains("never modifies files"),
            "{agent}"
        );
    }
    let (_, events) = rt
        .new_turn("ask", r#"::tool execute_command {"command":"ls"}"#)
        .await;
    assert!(
        first(&events, "tool_settled")["summary"]
            .text()
            .contains("does not run commands")
    );
    // Debug may run commands (after approval).
    let command = r#"::tool execute_command {"command":"cargo test"}"#;
    let (_, events) = rt.new_turn("debug", command).await;
    assert_eq!(
        first(&events, "approval_required")["reason"],
        "Command execution requires user approval"
    );
}

// ---- tool calls ----

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_calls_of_one_reply_settle_in_any_order_and_the_next_step_waits_for_all() {
    let script = "Look around\n\
        ::tool read_file {\"path\":\"a.txt\"}\n\
        ::tool read_file {\"path\":\"b.txt\"}\n\
        ::tool list_files {\"path\":\".\"}";
    let (rt, s, start) = Runtime::with_turn(Backend::Sqlite, "coder", script).await;
    let ids = call_ids(&start);
    assert_eq!(ids.len(), 3);
    assert!(ids[0] != ids[1] && ids[1] != ids[2] && ids[0] != ids[2]);
    let calls = all(&start, "tool_call");
    assert_eq!(calls[0]["arguments"], json!({"path": "a.txt"}));
    assert_eq!(calls[2]["tool_name"], "list_files");
    assert!(calls.iter().all(|c| c["requires_approval"] == false));
    let step = first(&start, "step_finished");
    assert_eq!(
        (step["step"].clone(), step["pending_calls"].clone()),
        (json!(1), json!(3))
    );
    assert_eq!(outcome(&start), "awaiting_tools");

    let listed = json!({"success": true, "content": "a.txt b.txt"});
    let third = rt.result(&s, &ids[2], listed).await;
    assert_eq!(kinds(&third), ["tool_settled", "step_finished"]);
    assert_eq!(first(&third, "tool_settled")["outcome"], "succeeded");
    assert_eq!(first(&third, "step_finished")["pending_calls"], 2);

    let one = rt.result(&s, &ids[0], json!("AAA")).await;
    assert_eq!(kinds(&one), ["tool_settled", "step_finished"]);
    assert_eq!(first(&one, "step_finished")["pending_calls"], 1);

    let two = rt
        .result(&s, &ids[1], json!({"success": true, "content": "BBB"}))
        .await;
    assert_eq!(first(&two, "step_finished")["pending_calls"], 0);
    // The model's next step sees the results in the order they came (objects as compact
    // JSON, strings verbatim).
    assert_eq!(
        assistant_text(&two),
        "Tool list_files returned: {\"content\":\"a.txt b.txt\",\"success\":true}\n\
         Tool read_file returned: AAA\n\
         Tool read_file returned: {\"content\":\"BBB\",\"success\":true}"
    );
    assert_eq!(outcome(&two), "completed");

    let history = rt.history(&s).await;
    let messages = history["messages"].as_array().unwrap();
    let roles = strings(&history["messages"], "role");
    assert_eq!(
        roles,
        ["user", "assistant", "tool", "tool", "tool", "assistant"]
    );
    // Our call ids in the OpenAI-style tool_calls, arguments as a JSON string.
    let tool_calls = messages[1]["tool_calls"].as_array().unwrap();
    assert_eq!(tool_calls[0]["id"], ids[0].as_str());
    assert_eq!(
        tool_calls[0]["function"]["arguments"],
        "{\"path\":\"a.txt\"}"
    );
    assert_eq!(messages[1]["content"], "");
    assert_eq!(messages[2]["tool_call_id"], ids[2].as_str());
    assert!(messages[2].get("name").is_none());
    let statuses = strings(&history["tool_calls"], "status");
    assert_eq!(statuses, ["succeeded", "succeeded", "succeeded"]);
    assert_replay_matches(&rt, &s, &[&start, &third, &one, &two]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn invalid_arguments_go_back_to_the_model() {
    let script = r#"::tool read_file {"start_line": 0}"#;
    let (rt, s, events) = Runtime::with_turn(Backend::Sqlite, "coder", script).await;
    let summary = first(&events, "tool_settled")["summary"].text().to_owned();
    assert!(
        summary.contains("missing required property \"path\""),
        "{summary}"
    );
    assert!(
        summary.contains("\"start_line\" must be at least 1"),
        "{summary}"
    );
    let text = assistant_text(&events);
    assert!(
        text.starts_with("Tool read_file returned: Error: read_file: "),
        "{text}"
    );
    assert!(
        text.contains("missing required property \"path\""),
        "{text}"
    );
    assert_eq!(outcome(&events), "completed");
    let history = rt.history(&s).await;
    assert_eq!(history["tool_calls"][0]["status"], "invalid");
    assert_eq!(
        history["tool_calls"][0]["arguments"],
        json!({"start_line": 0})
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_flutter_style_refusal_rejects_the_call() {
    let script = r#"::tool write_file {"path":"notes.txt","content":"hi"}"#;
    let (rt, s, start) = Runtime::with_turn(Backend::Sqlite, "coder", script).await;
    let call = first(&start, "tool_call");
    assert_eq!(call["requires_approval"], true);
    assert_eq!(
        call["approval_reason"],
        "File modification requires user approval"
    );
    let approval = first(&start, "approval_required");
    assert_eq!(approval["call_id"], call["call_id"]);
    let call_id = call["call_id"].text().to_owned();

    // What was emitted is what the IDE finds after a restart.
    let pending = rt.pending_approvals(&s).await;
    assert_eq!(pending["count"], 1);
    let entry = &pending["pending_approvals"][0];
    assert_eq!(entry["call_id"], call_id.as_str());
    assert_eq!(entry["request_id"], call_id.as_str());
    assert_eq!(entry["request_type"], "tool");
    assert_eq!(entry["tool_name"], "write_file");
    assert_eq!(entry["subject"], "write_file");
    assert_eq!(
        entry["arguments"],
        json!({"path": "notes.txt", "content": "hi"})
    );
    assert_eq!(entry["details"]["arguments"], entry["arguments"]);
    assert_eq!(entry["reason"], "File modification requires user approval");

    // The Flutter IDE sends all fifteen keys, nulls included.
    let frame = json!({
        "type": "tool_result", "content": null, "role": null, "is_final": null,
        "call_id": call_id, "tool_name": "write_file", "arguments": null,
        "requires_approval": null, "result": null, "error": "Операция отклонена: write_file",
        "agent_type": null, "from_agent": null, "to_agent": null, "reason": null, "metadata": null
    });
    let refusal = rt.send(&s, frame).await;
    assert_eq!(first(&refusal, "tool_settled")["outcome"], "rejected");
    assert_eq!(
        assistant_text(&refusal),
        "Tool write_file returned: Error: Операция отклонена: write_file"
    );
    assert_eq!(outcome(&refusal), "completed");

    let history = rt.history(&s).await;
    let record = &history["tool_calls"][0];
    assert_eq!(record["status"], "rejected");
    assert_eq!(record["decision"], "reject");
    assert_eq!(record["error"], "Операция отклонена: write_file");
    let pending = rt.pending_approvals(&s).await;
    assert_eq!(pending["count"], 0);
    assert_replay_matches(&rt, &s, &[&start, &refusal]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_approved_call_goes_to_the_ide_and_its_result_continues_the_turn() {
    let (rt, s, start, call_id) = Runtime::with_call(Backend::Sqlite, WRITE_A).await;
    let approve = decision(&call_id, "approve");
    let approved = rt.send(&s, approve.clone()).await;
    assert_eq!(kinds(&approved), ["tool_call", "step_finished"]);
    let call = first(&approved, "tool_call");
    assert_eq!(call["call_id"], call_id.as_str());
    assert_eq!(call["requires_approval"], false);
    assert_eq!(call["arguments"], json!({"path": "a.txt", "content": "x"}));
    assert_eq!(first(&approved, "step_finished")["pending_calls"], 1);
    let pending = rt.pending_approvals(&s).await;
    assert_eq!(pending["count"], 0);

    // The same decision again changes nothing; another one conflicts.
    let again = rt.send(&s, approve).await;
    assert_eq!(kinds(&again), ["notice"]);
    let reject = rt.send(&s, decision(&call_id, "reject")).await;
    let error = first(&reject, "error");
    assert_eq!(error["code"], "conflict");
    assert!(error["message"].text().contains("already decided"));

    let done = rt.result(&s, &call_id, json!({"success": true})).await;
    assert_eq!(first(&done, "tool_settled")["outcome"], "succeeded");
    assert_eq!(
        assistant_text(&done),
        "Tool write_file returned: {\"success\":true}"
    );
    assert_eq!(outcome(&done), "completed");
    let history = rt.history(&s).await;
    assert_eq!(history["tool_calls"][0]["decision"], "approve");
    assert_eq!(history["tool_calls"][0]["status"], "succeeded");

    // A result for a settled call is a notice and nothing else.
    let duplicate = rt.result(&s, &call_id, json!({"success": true})).await;
    assert_eq!(kinds(&duplicate), ["notice"]);
    assert!(
        first(&duplicate, "notice")["message"]
            .text()
            .contains("already settled")
    );
    assert_replay_matches(
        &rt,
        &s,
        &[&start, &approved, &again, &reject, &done, &duplicate],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_edit_is_checked_and_the_edited_arguments_run() {
    let (rt, s, _, call_id) = Runtime::with_call(Backend::Sqlite, WRITE_A).await;
    let bad = json!({"type": "hitl_decision", "call_id": call_id, "decision": "edit",
        "modified_arguments": {"path": 5}});
    let bad = rt.send(&s, bad).await;
    let error = first(&bad, "error");
    assert_eq!(error["code"], "invalid_arguments");
    assert!(
        error["message"]
            .text()
            .contains("\"path\" must be of type string")
    );
    let missing = rt.send(&s, decision(&call_id, "edit")).await;
    assert!(
        first(&missing, "error")["message"]
            .text()
            .contains("modified_arguments")
    );
    let pending = rt.pending_approvals(&s).await;
    assert_eq!(
        pending["count"], 1,
        "a refused edit leaves the call waiting"
    );

    let edited = json!({"path": "b.txt", "content": "edited"});
    let edit = json!({"type": "hitl_decision", "call_id": call_id, "decision": "edit",
        "modified_arguments": edited});
    let edit = rt.send(&s, edit).await;
    let call = first(&edit, "tool_call");
    assert_eq!(call["arguments"], edited);
    assert_eq!(call["requires_approval"], false);

    let done = rt.result(&s, &call_id, json!("written")).await;
    let text = assistant_text(&done);
    assert!(
        text.starts_with(
            "Tool write_file returned: (The user edited the arguments before it ran: "
        ),
        "{text}"
    );
    let history = rt.history(&s).await;
    assert_eq!(history["tool_calls"][0]["decision"], "edit");
    assert_eq!(history["tool_calls"][0]["status"], "succeeded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rejection_with_feedback_goes_back_to_the_model() {
    let script = r#"::tool execute_command {"command":"rm -rf build"}"#;
    let (rt, s, _, call_id) = Runtime::with_call(Backend::Sqlite, script).await;
    let reject = json!({"type": "hitl_decision", "call_id": call_id, "decision": "reject",
        "feedback": "use cargo clean"});
    let rejected = rt.send(&s, reject).await;
    let settled = first(&rejected, "tool_settled");
    assert_eq!(settled["outcome"], "rejected");
    assert_eq!(settled["summary"], "use cargo clean");
    assert_eq!(
        assistant_text(&rejected),
        "Tool execute_command returned: The user rejected this call. Feedback: use cargo clean"
    );
    assert_eq!(outcome(&rejected), "completed");
    let history = rt.history(&s).await;
    assert_eq!(history["tool_calls"][0]["status"], "rejected");
    // The same decision again is a notice.
    let again = rt.send(&s, decision(&call_id, "reject")).await;
    assert_eq!(kinds(&again), ["notice"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn unknown_call_ids_get_an_error_event() {
    let (rt, s) = Runtime::with_session(Backend::Sqlite).await;
    let events = rt.result(&s, "call_nope", json!("x")).await;
    assert_eq!(kinds(&events), ["error"]);
    let error = first(&events, "error");
    assert_eq!(error["code"], "unknown_call");
    assert!(error["message"].text().contains("call_nope"));
    let events = rt.send(&s, decision("call_nope", "approve")).await;
    assert_eq!(first(&events, "error")["code"], "unknown_call");

    // A call that never needed approval cannot be approved.
    let start = rt.to_coder(&s, r#"::tool read_file {"path":"a"}"#).await;
    let call_id = call_ids(&start)[0].clone();
    let events = rt.send(&s, decision(&call_id, "approve")).await;
    let error = first(&events, "error");
    assert_eq!(error["code"], "conflict");
    assert!(
        error["message"]
            .text()
            .contains("does not wait for approval")
    );
}

// ---- agents ----

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn switch_agent_changes_the_agent_without_a_model_call() {
    let (rt, s) = Runtime::with_session(Backend::Sqlite).await;
    let switch = json!({"type": "switch_agent", "agent_type": "debug", "content": "Why?"});
    let events = rt.send(&s, switch).await;
    assert_eq!(kinds(&events), ["agent_switched", "turn_finished"]);
    let switched = first(&events, "agent_switched");
    assert_eq!(switched["from_agent"], "orchestrator");
    assert_eq!(switched["to_agent"], "debug");
    assert_eq!(switched["reason"], "User requested agent switch");
    assert_eq!(outcome(&events), "completed");

    let context = rt.get_ok(&format!("/agents/{s}/current"), "dev").await;
    assert_eq!(context["context"]["current_agent"], "debug");
    assert_eq!(context["context"]["switch_count"], 1);
    assert_eq!(
        context["context"]["switch_history"][0]["method"],
        "explicit"
    );
    assert!(context["context"]["last_switch_at"].is_string());

    let again = rt
        .send(&s, json!({"type": "switch_agent", "agent_type": "debug"}))
        .await;
    assert_eq!(kinds(&again), ["notice"]);

    // The next message goes to the chosen agent without routing.
    let next = rt.say(&s, "hello").await;
    assert!(all(&next, "agent_switched").is_empty());
    assert_eq!(first(&next, "assistant_message")["agent"], "debug");
    assert_eq!(assistant_text(&next), "Mock LLM response (static)");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn switch_mode_hands_the_turn_to_another_agent() {
    let script = r#"::tool switch_mode {"mode":"coder","reason":"needs code"}"#;
    let (rt, s, events) = Runtime::with_turn(Backend::Sqlite, "architect", script).await;
    let switches = all(&events, "agent_switched");
    let handover = switches.last().unwrap();
    assert_eq!(handover["from_agent"], "architect");
    assert_eq!(handover["to_agent"], "coder");
    assert_eq!(handover["reason"], "needs code");
    let message = first(&events, "assistant_message");
    assert_eq!(message["agent"], "coder");
    assert_eq!(
        message["content"],
        "Tool switch_mode returned: Switched to coder agent"
    );
    assert_eq!(outcome(&events), "completed");
    let history = rt.history(&s).await;
    assert_eq!(history["current_agent"], "coder");
    let methods = strings(&history["agent_history"], "method");
    assert_eq!(methods, ["explicit", "tool"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn completion_tools_end_the_turn_with_their_text() {
    let script = r#"::tool attempt_completion {"result":"All done: tests pass"}"#;
    let (rt, s, events) = Runtime::with_turn(Backend::Sqlite, "coder", script).await;
    assert_eq!(assistant_text(&events), "All done: tests pass");
    assert_eq!(outcome(&events), "completed");
    let history = rt.history(&s).await;
    let last = last(&history["messages"]);
    assert_eq!(last["role"], "assistant");
    assert_eq!(last["content"], "All done: tests pass");
    assert_eq!(history["tool_calls"][0]["status"], "executed");

    let question = r#"{"question":"Which database?","suggestions":["SQLite","PostgreSQL"]}"#;
    let events = rt
        .say(&s, &format!("::tool ask_followup_question {question}"))
        .await;
    assert_eq!(
        assistant_text(&events),
        "Which database?\n\nSuggested answers:\n- SQLite\n- PostgreSQL"
    );
    assert_eq!(outcome(&events), "completed");
}

// ---- limits, failures, cancellation ----

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_step_limit_stops_a_runaway_turn() {
    let rt = Runtime::start_with(Backend::Sqlite, |c| c.max_steps_per_turn = 3).await;
    let (_, events) = rt.new_turn("coder", "::step * ::tool read_file {}").await;
    assert_eq!(all(&events, "tool_settled").len(), 3);
    let error = first(&events, "error");
    assert_eq!(error["code"], "step_limit");
    assert_eq!(error["message"], "step limit reached (3 steps)");
    assert_eq!(outcome(&events), "step_limit");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_llm_failure_fails_the_turn_but_not_the_session() {
    let (rt, s, events) = Runtime::with_turn(Backend::Sqlite, "coder", "::error 500").await;
    let error = first(&events, "error");
    assert_eq!(error["code"], "llm_error");
    assert!(error["message"].text().contains("500"), "{error}");
    assert_eq!(outcome(&events), "failed");
    let history = rt.history(&s).await;
    let roles = strings(&history["messages"], "role");
    assert_eq!(roles, ["user"], "nothing of the failed answer is stored");

    let next = rt.say(&s, "hello again").await;
    assert_eq!(assistant_text(&next), "Mock LLM response (static)");
    assert_eq!(outcome(&next), "completed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_new_message_cancels_the_calls_still_open() {
    let (rt, s, _, call_id) =
        Runtime::with_call(Backend::Sqlite, r#"::tool read_file {"path":"a"}"#).await;
    let next = rt.say(&s, "never mind").await;
    assert_eq!(kinds(&next)[0], "session_info");
    let cancelled = first(&next, "tool_settled");
    assert_eq!(cancelled["call_id"], call_id.as_str());
    assert_eq!(cancelled["outcome"], "cancelled");
    assert_eq!(outcome(&next), "completed");

    let history = rt.history(&s).await;
    let messages = history["messages"].as_array().unwrap();
    // The result comes right after the call, before the new message: valid for providers.
    assert_eq!(messages[2]["role"], "tool");
    assert_eq!(messages[2]["tool_call_id"], call_id.as_str());
    assert_eq!(
        messages[2]["content"],
        "Cancelled: the user sent a new message"
    );
    assert_eq!(messages[3]["role"], "user");
    assert_eq!(history["tool_calls"][0]["status"], "cancelled");
    // The late result is a notice.
    let late = rt.result(&s, &call_id, json!("x")).await;
    assert_eq!(kinds(&late), ["notice"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cancel_turn_cancels_the_open_calls() {
    let script = r#"::tool write_file {"path":"a","content":"b"}"#;
    let (rt, s, _, call_id) = Runtime::with_call(Backend::Sqlite, script).await;
    let cancel = rt.send(&s, json!({"type": "cancel_turn"})).await;
    assert_eq!(kinds(&cancel), ["tool_settled", "turn_finished"]);
    assert_eq!(first(&cancel, "tool_settled")["call_id"], call_id.as_str());
    assert_eq!(outcome(&cancel), "cancelled");
    let pending = rt.pending_approvals(&s).await;
    assert_eq!(pending["count"], 0);
    let again = rt.send(&s, json!({"type": "cancel_turn"})).await;
    assert_eq!(kinds(&again), ["notice"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_client_that_leaves_does_not_stop_the_turn() {
    let (rt, s) = Runtime::with_session(Backend::Sqlite).await;
    let body = json!({"session_id": s, "message": {"type": "user_message", "agent_type": "coder",
        "content": "::slow 50\n::reply one two three four five six"}});
    let (status, mut response) = rt.post_stream("dev", &body).await;
    assert_eq!(status, 200);
    let first_chunk = response.chunk().await.unwrap().unwrap();
    let events = parse_sse(std::str::from_utf8(&first_chunk).unwrap());
    assert_eq!(events[0].seq, 1);
    drop(response);

    // The work finishes anyway and stores the whole answer.
    assert!(rt.state.drain(common::PROMPTLY).await, "the turn finished");
    rt.state.tasks.reopen();
    let history = rt.history(&s).await;
    let last = last(&history["messages"]);
    assert_eq!(last["content"], "one two three four five six");
    let replay = rt.stored_events(&s).await;
    let last = serde_json::to_value(replay.last().unwrap()).unwrap();
    assert_eq!(last["type"], "turn_finished");
    assert_eq!(last["outcome"], "completed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replay_after_a_seq_returns_only_what_came_later() {
    let (rt, s, first_turn) = Runtime::with_turn(Backend::Sqlite, "coder", "hello").await;
    let last_seen = stored(&first_turn).last().unwrap().seq;
    let second_turn = rt.say(&s, "again").await;
    let body = rt
        .get_ok(&format!("/sessions/{s}/events?after={last_seen}"), "dev")
        .await;
    let replay: Vec<SequencedEvent> = serde_json::from_value(body["events"].clone()).unwrap();
    assert_eq!(replay, stored(&second_turn));
    assert!(replay.iter().all(|e| e.seq > last_seen));
}
