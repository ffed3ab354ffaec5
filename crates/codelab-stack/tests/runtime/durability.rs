//! Part 2 of the turn loop, in-process: human decisions and their idempotency, limits, LLM
//! failures, cancelling a running turn (here and from another replica), the context budget,
//! turns resumed after their runner died, and two runtimes sharing one PostgreSQL database.
//! Killing the real binary is in `crates/codelab/tests/cli/runtime_durability.rs`.
//!
//! Replies come from the real proxy's mock model (its `::` directives script them) or, where a
//! test must see what the model was sent or count cancelled upstream streams, from an
//! OpenAI-style `FakeLlm` behind the real proxy.
#![allow(
    clippy::disallowed_methods,
    reason = "tests own their clock, ids and tasks"
)]
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use crate::common::{
    Backend, PROMPTLY, Runtime, Text, all, assistant_text, call_ids, decision, first, kinds,
    outcome, slow_reply,
};
use chrono::Utc;
use codelab_agent_runtime::agents::AgentKind;
use codelab_agent_runtime::context::estimate_tokens;
use codelab_agent_runtime::model::{
    AgentSwitch, NewMessage, Role, StepCommit, ToolCallStatus, ToolCallUpdate, Turn, TurnStatus,
};
use codelab_agent_runtime::prompts::{PromptContext, Prompts};
use codelab_protocol::openai::ChatMessage;
use codelab_protocol::runtime::SequencedEvent;
use codelab_testkit::runtime_history::messages;
use codelab_testkit::{FakeFlavor, FakeLlm, FakeReply, FakeToolCall};
use reqwest::Method;
use serde_json::{Value, json};

/// Runs `async fn check(Backend)` as a `sqlite::check` and a `postgres::check` test.
macro_rules! on_both_backends {
    ($($check:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $check() {
                    super::$check(super::Backend::Sqlite).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $check() {
                    super::$check(super::Backend::Postgres).await;
                }
            )*
        }
    };
}

on_both_backends!(
    approve_edit_and_reject_through_hitl_decision,
    an_llm_failure_mid_turn_fails_the_turn_and_keeps_the_session,
    a_step_that_never_committed_runs_again_when_the_turn_is_resumed,
    a_turn_resumed_by_the_next_frame_keeps_every_message_once,
    a_settled_step_whose_next_step_never_ran_goes_on,
    a_cancel_asked_before_a_crash_is_honoured_on_resume,
);

// ---- Helpers ----

/// How many tool messages answer `call_id`.
fn results_for(history: &Value, call_id: &str) -> usize {
    history["messages"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["role"] == "tool" && m["tool_call_id"] == call_id)
        .count()
}

/// The stored call `call_id` on the history page.
fn call_record(history: &Value, call_id: &str) -> Value {
    history["tool_calls"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["call_id"] == call_id)
        .cloned()
        .unwrap_or_else(|| panic!("no call {call_id}"))
}

/// The state a crash leaves mid-step: the user message and its turn are committed, the turn
/// is `running` at step 1 and nothing of the step's answer is stored.
async fn crash_mid_step(rt: &Runtime, session: &str, text: &str) -> String {
    let store = &rt.state.store;
    let now = Utc::now();
    let turn = Turn {
        id: codelab_core::new_id().to_string(),
        session_id: session.to_owned(),
        status: TurnStatus::Running,
        steps: 0,
        agent: "coder".into(),
        created_at: now,
        updated_at: now,
        cancel_requested_at: None,
        plan_id: None,
        plan_required: false,
    };
    store
        .commit_step(StepCommit {
            session_id: session.to_owned(),
            new_turn: Some(turn.clone()),
            messages: vec![NewMessage::text(session, Role::User, text)],
            switches: vec![AgentSwitch {
                session_id: session.to_owned(),
                from_agent: Some("orchestrator".into()),
                to_agent: "coder".into(),
                reason: "User requested".into(),
                confidence: Some("high".into()),
                method: "explicit".into(),
                created_at: now,
                complexity: None,
            }],
            ..StepCommit::default()
        })
        .await
        .unwrap();
    store
        .update_turn(&turn.id, TurnStatus::Running, 1, "coder")
        .await
        .unwrap();
    turn.id
}

// ---- Human decisions ----

async fn approve_edit_and_reject_through_hitl_decision(backend: Backend) {
    let script = "::tool write_file {\"path\":\"a.txt\",\"content\":\"a\"}\n\
        ::tool write_file {\"path\":\"b.txt\",\"content\":\"b\"}\n\
        ::tool execute_command {\"command\":\"make deploy\"}";
    let (rt, s, start) = Runtime::with_turn(backend, "coder", script).await;
    let ids = call_ids(&start);
    let [a, b, c] = [ids[0].clone(), ids[1].clone(), ids[2].clone()];
    assert_eq!(all(&start, "approval_required").len(), 3);
    assert_eq!(outcome(&start), "awaiting_tools");
    let pending = rt.pending_approvals(&s).await;
    assert_eq!(pending["count"], 3);

    // Approve: the call goes to the IDE again, without the approval flag.
    let approved = rt.send(&s, decision(&a, "approve")).await;
    assert_eq!(kinds(&approved), ["tool_call", "step_finished"]);
    let call = first(&approved, "tool_call");
    assert_eq!(call["call_id"], a.as_str());
    assert_eq!(call["requires_approval"], false);
    assert_eq!(first(&approved, "step_finished")["pending_calls"], 3);
    let repeat = rt.send(&s, decision(&a, "approve")).await;
    assert_eq!(
        kinds(&repeat),
        ["notice"],
        "a repeated decision changes nothing"
    );

    // Edit: the IDE gets the edited arguments; the same edit again is a notice, another
    // edit or decision a conflict.
    let edited = json!({"path": "b2.txt", "content": "edited"});
    let edit = json!({"type": "hitl_decision", "call_id": b, "decision": "edit",
        "modified_arguments": edited});
    let edit_events = rt.send(&s, edit.clone()).await;
    assert_eq!(first(&edit_events, "tool_call")["arguments"], edited);
    assert_eq!(kinds(&rt.send(&s, edit).await), ["notice"]);
    let other_edit = json!({"type": "hitl_decision", "call_id": b, "decision": "edit",
        "modified_arguments": {"path": "c.txt", "content": "x"}});
    let other_edit = rt.send(&s, other_edit).await;
    assert_eq!(first(&other_edit, "error")["code"], "conflict");
    assert_eq!(
        first(&rt.send(&s, decision(&b, "reject")).await, "error")["code"],
        "conflict"
    );

    // Reject with feedback: settled at once; the model will get the refusal.
    let reject = json!({"type": "hitl_decision", "call_id": c, "decision": "reject",
        "feedback": "not in production"});
    let rejected = rt.send(&s, reject.clone()).await;
    assert_eq!(kinds(&rejected), ["tool_settled", "step_finished"]);
    let settled = first(&rejected, "tool_settled");
    assert_eq!(settled["outcome"], "rejected");
    assert_eq!(settled["summary"], "not in production");
    assert_eq!(first(&rejected, "step_finished")["pending_calls"], 2);
    assert_eq!(kinds(&rt.send(&s, reject).await), ["notice"]);
    let conflicting = rt.send(&s, decision(&c, "approve")).await;
    let error = first(&conflicting, "error");
    assert_eq!(error["code"], "conflict");
    assert!(
        error["message"].text().contains("already decided (reject"),
        "{error}"
    );
    let unknown = rt.send(&s, decision("call_missing", "approve")).await;
    assert_eq!(kinds(&unknown), ["error"]);
    assert_eq!(first(&unknown, "error")["code"], "unknown_call");
    let pending = rt.pending_approvals(&s).await;
    assert_eq!(pending["count"], 0, "nothing waits for a person any more");

    // The IDE's results; a repeated one is a notice; the last one continues the turn.
    let first_result = rt.result(&s, &a, json!("wrote a.txt")).await;
    assert_eq!(kinds(&first_result), ["tool_settled", "step_finished"]);
    assert_eq!(first(&first_result, "step_finished")["pending_calls"], 1);
    assert_eq!(
        kinds(&rt.result(&s, &a, json!("wrote a.txt")).await),
        ["notice"]
    );
    let done = rt.result(&s, &b, json!("wrote b2.txt")).await;
    assert_eq!(outcome(&done), "completed");
    let text = assistant_text(&done);
    for line in [
        "Tool execute_command returned: The user rejected this call. Feedback: not in production",
        "Tool write_file returned: wrote a.txt",
        "Tool write_file returned: (The user edited the arguments before it ran: ",
    ] {
        assert!(text.contains(line), "{line:?} missing from {text:?}");
    }

    let history = rt.history(&s).await;
    for id in [&a, &b, &c] {
        assert_eq!(results_for(&history, id), 1, "one result for {id}");
    }
    let record = |id: &str| call_record(&history, id);
    assert_eq!(
        (record(&a)["status"].clone(), record(&a)["decision"].clone()),
        (json!("succeeded"), json!("approve"))
    );
    assert_eq!(
        (record(&b)["status"].clone(), record(&b)["decision"].clone()),
        (json!("succeeded"), json!("edit"))
    );
    assert_eq!(
        (record(&c)["status"].clone(), record(&c)["decision"].clone()),
        (json!("rejected"), json!("reject"))
    );
    assert_eq!(history["active_turn"], Value::Null);

    // After settlement: the same decision is still a notice, another one a conflict.
    assert_eq!(
        kinds(&rt.send(&s, decision(&a, "approve")).await),
        ["notice"]
    );
    assert_eq!(
        first(&rt.send(&s, decision(&a, "reject")).await, "error")["code"],
        "conflict"
    );
}

// ---- Limits ----

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_step_cap_stops_a_turn_that_keeps_calling_tools() {
    let rt = Runtime::start_with(Backend::Sqlite, |c| c.max_steps_per_turn = 3).await;
    let script = "::step * ::tool list_files {\"path\":\".\"}";
    let (s, mut events) = rt.new_turn("coder", script).await;
    for step in 1..=3 {
        let ids = call_ids(&events);
        assert_eq!(ids.len(), 1, "step {step}: {:?}", kinds(&events));
        assert_eq!(first(&events, "tool_call")["tool_name"], "list_files");
        assert_eq!(outcome(&events), "awaiting_tools");
        events = rt.result(&s, &ids[0], json!(["a.py", "b.py"])).await;
    }
    // The third result would start a fourth step.
    let error = first(&events, "error");
    assert_eq!(error["code"], "step_limit");
    assert_eq!(error["message"], "step limit reached (3 steps)");
    assert_eq!(outcome(&events), "step_limit");
    let history = rt.history(&s).await;
    assert_eq!(history["tool_calls"].as_array().unwrap().len(), 3);
    assert_eq!(history["active_turn"], Value::Null);

    let next = rt.say(&s, "::reply still here").await;
    assert_eq!(assistant_text(&next), "still here");
    assert_eq!(outcome(&next), "completed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn calls_beyond_the_per_step_cap_go_back_to_the_model_as_errors() {
    let rt = Runtime::start_with(Backend::Sqlite, |c| c.max_tool_calls_per_step = 2).await;
    let script = "::tool read_file {\"path\":\"a\"}\n::tool read_file {\"path\":\"b\"}\n\
        ::tool read_file {\"path\":\"c\"}";
    let (s, start) = rt.new_turn("coder", script).await;
    assert_eq!(call_ids(&start).len(), 2, "only two reach the IDE");
    let refused = first(&start, "tool_settled");
    assert_eq!(refused["outcome"], "invalid");
    assert!(
        refused["summary"]
            .text()
            .starts_with("too many tool calls in one reply (limit 2)"),
        "{refused}"
    );
    assert_eq!(first(&start, "step_finished")["pending_calls"], 2);
    let ids = call_ids(&start);
    rt.result(&s, &ids[0], json!("A")).await;
    let done = rt.result(&s, &ids[1], json!("B")).await;
    assert!(
        assistant_text(&done).contains("Error: too many tool calls in one reply (limit 2)"),
        "{}",
        assistant_text(&done)
    );
    assert_eq!(outcome(&done), "completed");
}

// ---- Failures ----

async fn an_llm_failure_mid_turn_fails_the_turn_and_keeps_the_session(backend: Backend) {
    let script = "::tool read_file {\"path\":\"a.py\"}\n::step 2 ::error 500";
    let (rt, s, _, call_id) = Runtime::with_call(backend, script).await;
    let failed = rt.result(&s, &call_id, json!("print(1)")).await;
    assert_eq!(
        kinds(&failed),
        ["tool_settled", "step_finished", "error", "turn_finished"]
    );
    let error = first(&failed, "error");
    assert_eq!(error["code"], "llm_error");
    assert!(error["message"].text().contains("500"), "{error}");
    assert_eq!(outcome(&failed), "failed");
    let history = rt.history(&s).await;
    let roles: Vec<String> = messages(&history).into_iter().map(|(r, _)| r).collect();
    assert_eq!(
        roles,
        ["user", "assistant", "tool"],
        "the result is kept; nothing of the failed step is"
    );
    assert_eq!(history["active_turn"], Value::Null);

    let next = rt.say(&s, "::reply recovered fine").await;
    assert_eq!(assistant_text(&next), "recovered fine");
    assert_eq!(outcome(&next), "completed");
}

/// A TCP front that drops its first connection unanswered (a connect error before the first
/// byte) and passes the others to the address set in the returned cell (the proxy's, known
/// once the stack has started behind the front). Counts the connections it accepted.
async fn flaky_front() -> (String, Arc<AtomicUsize>, Arc<OnceLock<SocketAddr>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let target = Arc::new(OnceLock::new());
    let counter = Arc::clone(&accepted);
    let target_of_front = Arc::clone(&target);
    tokio::spawn(async move {
        while let Ok((mut inbound, _)) = listener.accept().await {
            if counter.fetch_add(1, Ordering::SeqCst) == 0 {
                drop(inbound);
                continue;
            }
            let target = *target_of_front.get().unwrap();
            tokio::spawn(async move {
                if let Ok(mut outbound) = tokio::net::TcpStream::connect(target).await {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                }
            });
        }
    });
    (format!("http://{address}"), accepted, target)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_connect_error_before_the_first_token_is_retried() {
    let (front, accepted, target) = flaky_front().await;
    let rt = Runtime::start_with(Backend::Sqlite, |c| c.llm_proxy_url = front).await;
    target.set(rt.proxy_address()).unwrap();
    let (_, events) = rt.new_turn("coder", "hello").await;
    assert_eq!(assistant_text(&events), "Mock LLM response (static)");
    assert_eq!(outcome(&events), "completed");
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        2,
        "one refused, one retried"
    );
}

// ---- Cancellation ----

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cancel_turn_stops_a_streaming_turn_and_its_upstream_request() {
    let fake = FakeLlm::start(FakeFlavor::OpenAi).await;
    fake.push_reply(slow_reply());
    let rt = Runtime::start_with_fake(Backend::Sqlite, &fake, |_| {}).await;
    let s = rt.new_session("dev").await;
    let started = Instant::now();
    let story = json!({"type": "user_message", "content": "a long story", "agent_type": "coder"});
    let mut running = rt.open(&s, story).await;
    running.until("assistant_delta").await;

    // The cancel does not wait behind the running turn's lock.
    let enough = json!({"type": "cancel_turn", "reason": "enough"});
    let cancel = rt.send(&s, enough).await;
    assert_eq!(outcome(&cancel), "cancelled");
    let tail = running.rest().await;
    assert_eq!(outcome(&tail), "cancelled");
    assert!(
        all(&tail, "assistant_message").is_empty(),
        "the cut answer is not completed"
    );
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "stopped early: {:?}",
        started.elapsed()
    );
    assert!(
        fake.wait_for_cancelled(1, PROMPTLY).await,
        "the upstream stream was cancelled"
    );
    assert_eq!(fake.completed_streams(), 0);

    let history = rt.history(&s).await;
    assert_eq!(
        messages(&history),
        [("user".to_owned(), "a long story".to_owned())],
        "nothing of the cut answer is stored"
    );
    assert_eq!(history["active_turn"], Value::Null);

    // The session is usable at once.
    fake.push_reply(FakeReply::text(&["short ", "answer"]));
    let next = rt.say(&s, "in short?").await;
    assert_eq!(assistant_text(&next), "short answer");
    assert_eq!(outcome(&next), "completed");
    // Nothing to cancel now.
    assert_eq!(
        kinds(&rt.send(&s, json!({"type": "cancel_turn"})).await),
        ["notice"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cancel_sent_to_another_replica_stops_the_running_turn() {
    let a = Runtime::start(Backend::Postgres).await;
    let b = a.replica(|_| {}).await;
    let s = a.new_session("dev").await;
    let words: Vec<String> = (0..40).map(|i| format!("w{i}")).collect();
    let story = json!({"type": "user_message", "agent_type": "coder",
        "content": format!("::slow 100\n::reply {}", words.join(" "))});
    let mut running = a.open(&s, story).await;
    running.until("assistant_delta").await;
    let asked = Instant::now();
    // B has no local token for A's turn: the request travels through the database.
    let cancel = b.send(&s, json!({"type": "cancel_turn"})).await;
    assert_eq!(outcome(&cancel), "cancelled");
    let tail = running.rest().await;
    assert_eq!(outcome(&tail), "cancelled");
    assert!(
        asked.elapsed() < Duration::from_secs(3),
        "{:?}",
        asked.elapsed()
    );
    let history = b.history(&s).await;
    assert_eq!(messages(&history).len(), 1);
    assert_eq!(history["active_turn"], Value::Null);
    let next = b.say(&s, "::reply on b").await;
    assert_eq!(assistant_text(&next), "on b");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_rest_form_of_cancel_stops_the_turn() {
    let (rt, s, _, call_id) =
        Runtime::with_call(Backend::Sqlite, "::tool read_file {\"path\":\"a\"}").await;
    let path = &format!("/sessions/{s}/cancel");
    let cancel = |user: &'static str, body| rt.call(Method::POST, path, user, body);
    let (status, body) = cancel("dev", Some(json!({"reason": "wrong file"}))).await;
    assert_eq!(status, 200);
    assert_eq!(body["cancelled"], true);
    let events: Vec<SequencedEvent> = serde_json::from_value(body["events"].clone()).unwrap();
    assert_eq!(kinds(&events), ["tool_settled", "turn_finished"]);
    let history = rt.history(&s).await;
    assert_eq!(call_record(&history, &call_id)["status"], "cancelled");
    assert!(messages(&history).contains(&("tool".to_owned(), "Cancelled: wrong file".to_owned())));
    let (_, again) = cancel("dev", Some(json!({}))).await;
    assert_eq!(again["cancelled"], false);
    // Another user's session, or none: 404.
    let (status, _) = cancel("mallory", None).await;
    assert_eq!(status, 404);
}

// ---- Context budget ----

/// Whether every tool message of a request follows an assistant message calling it, and
/// every call is answered.
fn pairs_are_intact(messages: &[Value]) -> bool {
    let mut open: Vec<String> = Vec::new();
    for message in messages {
        match message["role"].as_str() {
            Some("assistant") => {
                if !open.is_empty() {
                    return false;
                }
                for call in message["tool_calls"].as_array().into_iter().flatten() {
                    open.push(call["id"].text().to_owned());
                }
            }
            Some("tool") => {
                let id = message["tool_call_id"].text();
                let Some(at) = open.iter().position(|o| o == id) else {
                    return false;
                };
                open.remove(at);
            }
            _ => {}
        }
    }
    open.is_empty()
}

fn starts_with(messages: &[Value], role: &str, prefix: &str) -> bool {
    messages
        .iter()
        .any(|m| m["role"] == role && m["content"].as_str().is_some_and(|c| c.starts_with(prefix)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_context_budget_drops_the_oldest_exchanges_whole() {
    // The budget: the coder's system prompt plus room for about two of the exchanges below.
    let prompts = Prompts::load(None).unwrap();
    let system = prompts
        .render(
            AgentKind::Coder,
            &PromptContext::for_agent(AgentKind::Coder, true),
        )
        .unwrap();
    let budget = estimate_tokens(&ChatMessage::text("system", system)) + 2200;

    let fake = FakeLlm::start(FakeFlavor::OpenAi).await;
    let read = FakeToolCall::new("call_read", "read_file", r#"{"path":"big.txt"}"#);
    let list = FakeToolCall::new("call_list", "list_files", r#"{"path":"."}"#);
    fake.push_reply(FakeReply::tool_calls(vec![read]));
    fake.push_reply(FakeReply::text(&["done one"]));
    fake.push_reply(FakeReply::tool_calls(vec![list]));
    fake.push_reply(FakeReply::text(&["ok two"]));
    fake.push_reply(FakeReply::text(&["ok three"]));
    fake.push_reply(FakeReply::text(&["fine"]));
    let rt =
        Runtime::start_with_fake(Backend::Sqlite, &fake, move |c| c.context_tokens = budget).await;

    // Exchange 1 (~1500 tokens): a message, a call and a large result.
    let (s, one) = rt
        .new_turn("coder", &format!("first {}", "a".repeat(2000)))
        .await;
    let done = rt
        .result(&s, &call_ids(&one)[0], json!("x".repeat(4000)))
        .await;
    assert_eq!(outcome(&done), "completed");
    // Exchange 2 (~530 tokens), with a call of its own.
    let two = rt.say(&s, &format!("second {}", "b".repeat(2000))).await;
    let done = rt.result(&s, &call_ids(&two)[0], json!("a.py")).await;
    assert_eq!(assistant_text(&done), "ok two");
    // Exchange 3: all three no longer fit.
    let three = rt.say(&s, &format!("third {}", "c".repeat(2000))).await;
    assert_eq!(assistant_text(&three), "ok three");

    let sent: Vec<Vec<Value>> = fake
        .requests()
        .iter()
        .filter(|r| r.path.ends_with("/chat/completions"))
        .map(|r| r.body["messages"].as_array().unwrap().clone())
        .collect();
    assert_eq!(sent.len(), 5);
    for request in &sent {
        assert!(
            pairs_are_intact(request),
            "a call lost its result: {request:?}"
        );
    }
    assert!(
        starts_with(&sent[3], "user", "first "),
        "exchange 1 still fits while exchange 2 runs"
    );
    let last = &sent[4];
    assert_eq!(last[0]["role"], "system");
    assert!(
        !starts_with(last, "user", "first ") && !starts_with(last, "assistant", "done one"),
        "the oldest exchange went, whole"
    );
    assert!(
        !last
            .iter()
            .any(|m| m["tool_call_id"].as_str().is_some_and(|id| {
                // The read_file call of exchange 1 and its result went together.
                sent[1].iter().any(|old| old["tool_calls"][0]["id"] == id)
            })),
        "no orphan result of exchange 1"
    );
    assert!(starts_with(last, "user", "second "));
    assert!(starts_with(last, "assistant", "ok two"));
    assert!(
        last.iter().any(|m| m["role"] == "tool"),
        "exchange 2 keeps its call and result"
    );
    assert!(starts_with(last, "user", "third "));

    // One message alone larger than the budget: a clear error, nothing sent to the model.
    let huge = rt.say(&s, &"z".repeat(4 * 4000)).await;
    let error = first(&huge, "error");
    assert_eq!(error["code"], "context_too_large");
    assert!(
        error["message"]
            .text()
            .contains(&format!("context budget of {budget} tokens")),
        "{error}"
    );
    assert_eq!(outcome(&huge), "failed");
    assert_eq!(fake.request_count(), 5);
    // The session goes on: the huge message is the oldest exchange now and is dropped.
    let after = rt.say(&s, "after").await;
    assert_eq!(assistant_text(&after), "fine");
    assert_eq!(outcome(&after), "completed");
}

// ---- Resuming turns whose runner died (the crash states, written directly) ----

async fn a_step_that_never_committed_runs_again_when_the_turn_is_resumed(backend: Backend) {
    let (rt, s) = Runtime::with_session(backend).await;
    crash_mid_step(&rt, &s, "::reply recovered").await;
    // After the crash the session says what it waits for: a step that is running.
    let history = rt.history(&s).await;
    assert_eq!(history["active_turn"]["status"], "running");
    assert_eq!(history["active_turn"]["step"], 1);

    // The sweep every replica runs (at start and every minute) resumes it.
    assert_eq!(rt.state.engine.recover_stalled_turns().await.unwrap(), 1);
    assert_eq!(rt.state.engine.recover_stalled_turns().await.unwrap(), 0);
    let history = rt.history(&s).await;
    assert_eq!(
        messages(&history),
        [
            ("user".to_owned(), "::reply recovered".to_owned()),
            ("assistant".to_owned(), "recovered".to_owned())
        ]
    );
    assert_eq!(history["active_turn"], Value::Null);
    let replay = rt.stored_events(&s).await;
    assert_eq!(
        kinds(&replay),
        [
            "notice",
            "assistant_message",
            "step_finished",
            "turn_finished"
        ]
    );
    assert_eq!(first(&replay, "step_finished")["step"], 1, "the same step");
    assert_eq!(outcome(&replay), "completed");
}

async fn a_turn_resumed_by_the_next_frame_keeps_every_message_once(backend: Backend) {
    let (rt, s) = Runtime::with_session(backend).await;
    crash_mid_step(&rt, &s, "::reply recovered").await;
    let events = rt.say(&s, "::reply next").await;
    let kinds = kinds(&events);
    assert_eq!(kinds[0], "notice", "{kinds:?}");
    let session_info = kinds.iter().position(|k| k == "session_info").unwrap();
    assert!(
        kinds[..session_info].contains(&"turn_finished".to_owned()),
        "the interrupted turn ends before the new one starts: {kinds:?}"
    );
    assert_eq!(assistant_text(&events), "recovered\nnext");
    assert_eq!(outcome(&events), "completed");
    let history = rt.history(&s).await;
    assert_eq!(
        messages(&history),
        [
            ("user".to_owned(), "::reply recovered".to_owned()),
            ("assistant".to_owned(), "recovered".to_owned()),
            ("user".to_owned(), "::reply next".to_owned()),
            ("assistant".to_owned(), "next".to_owned()),
        ]
    );
}

async fn a_settled_step_whose_next_step_never_ran_goes_on(backend: Backend) {
    let (rt, s, _, call_id) =
        Runtime::with_call(backend, "::tool read_file {\"path\":\"a.py\"}").await;
    // A crash right after the result was committed: the next step never ran.
    rt.state
        .store
        .update_tool_call(
            &s,
            &call_id,
            &[ToolCallStatus::AwaitingResult],
            ToolCallUpdate {
                result: Some(json!("print(1)")),
                settle: true,
                tool_message: Some("print(1)".into()),
                ..ToolCallUpdate::to(ToolCallStatus::Succeeded)
            },
        )
        .await
        .unwrap();
    let history = rt.history(&s).await;
    assert_eq!(history["active_turn"]["status"], "awaiting_tools");
    assert_eq!(history["active_turn"]["open_calls"], json!([]));

    // The IDE, reconnecting, sends its result again: the turn goes on, the result is a notice.
    let late = rt.result(&s, &call_id, json!("print(1)")).await;
    let kinds = kinds(&late);
    assert_eq!(kinds.first().map(String::as_str), Some("notice"));
    assert_eq!(kinds.last().map(String::as_str), Some("notice"));
    assert!(kinds.contains(&"turn_finished".to_owned()));
    assert_eq!(assistant_text(&late), "Tool read_file returned: print(1)");
    let history = rt.history(&s).await;
    assert_eq!(results_for(&history, &call_id), 1);
    assert_eq!(
        messages(&history)
            .iter()
            .filter(|(role, _)| role == "assistant")
            .count(),
        2
    );
    assert_eq!(history["active_turn"], Value::Null);
}

async fn a_cancel_asked_before_a_crash_is_honoured_on_resume(backend: Backend) {
    let (rt, s) = Runtime::with_session(backend).await;
    let turn_id = crash_mid_step(&rt, &s, "::reply never").await;
    rt.state.store.request_cancel(&s).await.unwrap();
    assert_eq!(rt.state.engine.recover_stalled_turns().await.unwrap(), 1);
    let turn = rt.state.store.get_turn(&turn_id).await.unwrap().unwrap();
    assert_eq!(turn.status, TurnStatus::Cancelled);
    let history = rt.history(&s).await;
    assert_eq!(
        messages(&history).len(),
        1,
        "no LLM call for a cancelled turn"
    );
    assert_eq!(outcome(&rt.stored_events(&s).await), "cancelled");
}

// ---- Replicas ----

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_runtimes_on_one_postgres_database_share_a_turn() {
    let a = Runtime::start(Backend::Postgres).await;
    let b = a.replica(|_| {}).await;
    let s = a.new_session("dev").await;
    let start = a.to_coder(&s, "::tool read_file {\"path\":\"a.py\"}\n::tool write_file {\"path\":\"b.py\",\"content\":\"x\"}").await;
    let ids = call_ids(&start);
    // B sees what A left waiting, decides and answers; the turn completes on B.
    let pending = b.pending_approvals(&s).await;
    assert_eq!(pending["count"], 1);
    let approved = b.send(&s, decision(&ids[1], "approve")).await;
    assert_eq!(kinds(&approved), ["tool_call", "step_finished"]);
    let partial = b.result(&s, &ids[0], json!("print(1)")).await;
    assert_eq!(first(&partial, "step_finished")["pending_calls"], 1);
    let done = b.result(&s, &ids[1], json!("written")).await;
    assert_eq!(
        assistant_text(&done),
        "Tool read_file returned: print(1)\nTool write_file returned: written"
    );
    assert_eq!(outcome(&done), "completed");
    // A sees the same session, and its event log numbers both replicas' events in one row.
    let history = a.history(&s).await;
    assert_eq!(messages(&history).len(), 5);
    let replay = a.stored_events(&s).await;
    let seqs: Vec<u64> = replay.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>());
}
