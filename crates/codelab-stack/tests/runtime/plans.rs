//! Plans through the runtime's internal API (`docs/agent-runtime.md`, "Planning"), scripted
//! with the mock model: the architect's `::tool create_plan {...}` proposes a plan, and each
//! subtask's description carries the directives its agent's steps follow (a subtask's context
//! starts with its own description, so the mock reads them there).
use crate::common::{Backend, Runtime, Text, all, call_ids, first, kinds, outcome, stored};
use codelab_protocol::runtime::SequencedEvent;
use codelab_testkit::{FakeFlavor, FakeLlm, FakeReply, FakeToolCall};
use serde_json::{Value, json};

/// A `create_plan` line for the architect with these subtasks (title, agent, description,
/// dependencies).
fn create_plan(title: &str, subtasks: &[(&str, &str, &str, &[u32])]) -> String {
    let subtasks: Vec<Value> = subtasks
        .iter()
        .map(|(title, agent, description, dependencies)| {
            json!({
                "title": title,
                "description": description,
                "agent": agent,
                "estimated_time_minutes": 2,
                "dependencies": dependencies,
            })
        })
        .collect();
    let arguments = json!({"title": title, "description": "the goal", "subtasks": subtasks});
    format!("::tool create_plan {arguments}")
}

/// Three subtasks: the coder writes, debug answers with the coder's result in view, ask
/// reads a file through the IDE.
fn three_subtasks() -> String {
    create_plan(
        "Ship it",
        &[
            ("write", "coder", "::reply wrote the code", &[]),
            ("check", "debug", "::reply checked it", &[0]),
            (
                "explain",
                "ask",
                r#"::tool read_file {"path": "notes.md"}"#,
                &[1],
            ),
        ],
    )
}

fn plan_decision(plan_id: &str, decision: &str) -> Value {
    json!({"type": "plan_decision", "plan_id": plan_id, "decision": decision})
}

/// The architect proposes `script`'s plan in a new session: the session, the plan id and the
/// events of that turn.
async fn proposed(rt: &Runtime, script: &str) -> (String, String, Vec<SequencedEvent>) {
    let (session, events) = rt.new_turn("architect", script).await;
    let required = first(&events, "plan_approval_required");
    let plan_id = required["plan_id"].text().to_owned();
    (session, plan_id, events)
}

fn statuses(plan: &Value) -> Vec<String> {
    plan["subtasks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["status"].text().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_approved_plan_runs_its_subtasks_in_order_each_with_its_agent_and_own_context() {
    let rt = Runtime::start(Backend::Sqlite).await;
    let (session, plan_id, events) = proposed(&rt, &three_subtasks()).await;
    // The proposal waits: no tool call reaches a client, the turn waits for the decision.
    assert!(call_ids(&events).is_empty(), "{:?}", kinds(&events));
    assert_eq!(outcome(&events), "awaiting_tools");
    let required = first(&events, "plan_approval_required");
    assert_eq!(required["plan_summary"]["subtasks_count"], 3);
    assert_eq!(required["plan_summary"]["total_estimated_time_minutes"], 6);
    assert_eq!(required["plan"]["status"], "awaiting_approval");
    assert_eq!(required["plan"]["version"], 1);
    let pending = rt.pending_approvals(&session).await;
    assert_eq!(pending["count"], 1);
    assert_eq!(pending["pending_approvals"][0]["request_type"], "plan");

    // Approved by its approval request id (what the original's backend branch sends).
    let approval_request_id = required["approval_request_id"].text();
    let frame = json!({"type": "plan_decision", "approval_request_id": approval_request_id,
        "decision": "approved"});
    let events = rt.send(&session, frame).await;
    // Subtasks 1 and 2 ran; 3 waits for the IDE's read_file.
    let progress: Vec<(u64, String)> = all(&events, "plan_progress")
        .iter()
        .map(|p| {
            (
                p["subtask_id"].as_u64().unwrap(),
                p["status"].text().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        progress,
        [
            (0, "in_progress".to_owned()),
            (0, "completed".to_owned()),
            (1, "in_progress".to_owned()),
            (1, "completed".to_owned()),
            (2, "in_progress".to_owned()),
        ]
    );
    let texts: Vec<(String, String)> = all(&events, "assistant_message")
        .iter()
        .map(|m| (m["agent"].text().to_owned(), m["content"].text().to_owned()))
        .collect();
    assert_eq!(
        texts[..2],
        [
            ("coder".to_owned(), "wrote the code".to_owned()),
            ("debug".to_owned(), "checked it".to_owned())
        ]
    );
    let calls = call_ids(&events);
    assert_eq!(calls.len(), 1);
    assert_eq!(first(&events, "tool_call")["agent"], "ask");
    assert_eq!(outcome(&events), "awaiting_tools");

    // The IDE answers; the ask agent's next step summarises it and the plan completes.
    let events = rt
        .result(&session, &calls[0], json!("the notes say hello"))
        .await;
    let done = first(&events, "execution_completed");
    assert_eq!(done["status"], "completed");
    let summary = done["summary"].text();
    assert!(
        summary.starts_with("Plan \"Ship it\" completed."),
        "{summary}"
    );
    assert!(
        summary.contains("1. write (coder) done: wrote the code"),
        "{summary}"
    );
    assert_eq!(outcome(&events), "completed");

    let plan = rt.get_ok(&format!("/plans/{plan_id}"), "dev").await;
    assert_eq!(plan["status"], "completed");
    assert_eq!(statuses(&plan), ["completed", "completed", "completed"]);
    assert_eq!(plan["subtasks"][1]["result"], "checked it");
    let listed = rt
        .get_ok(&format!("/sessions/{session}/plans"), "dev")
        .await;
    assert_eq!(listed["plans"].as_array().unwrap().len(), 1);
    assert_eq!(listed["plans"][0]["id"], plan_id.as_str());
    // The summary closes the history as one assistant message.
    let history = rt.history(&session).await;
    let last = history["messages"]
        .as_array()
        .unwrap()
        .last()
        .unwrap()
        .clone();
    assert_eq!(last["content"], summary);
    // Everything sent was stored first (the replay equals what the client saw).
    assert!(stored(&events).iter().all(|e| e.seq > 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_subtask_sees_its_dependencies_results_and_not_the_conversation() {
    // The fake provider behind the proxy records what each step was sent.
    let fake = FakeLlm::start(FakeFlavor::OpenAi).await;
    let plan = create_plan(
        "Two",
        &[
            ("first", "coder", "write the first part", &[]),
            ("second", "debug", "check the first part", &[0]),
        ],
    );
    let arguments = plan.trim_start_matches("::tool create_plan ").to_owned();
    fake.push_reply(FakeReply::tool_calls(vec![FakeToolCall::new(
        "call_plan",
        "create_plan",
        &arguments,
    )]));
    fake.push_reply(FakeReply::text(&["first part written"]));
    fake.push_reply(FakeReply::text(&["second part checked"]));
    let rt = Runtime::start_with_fake(Backend::Sqlite, &fake, |_| {}).await;
    let session = rt.new_session("dev").await;
    let events = rt
        .to_agent(
            "architect",
            &session,
            "a secret only the conversation knows",
        )
        .await;
    let plan_id = first(&events, "plan_approval_required")["plan_id"]
        .text()
        .to_owned();
    let events = rt.send(&session, plan_decision(&plan_id, "approve")).await;
    assert_eq!(outcome(&events), "completed", "{:?}", kinds(&events));

    let requests: Vec<Value> = fake
        .requests()
        .into_iter()
        .filter(|r| r.path.ends_with("/chat/completions"))
        .map(|r| r.body)
        .collect();
    assert_eq!(
        requests.len(),
        3,
        "the architect, then one step per subtask"
    );
    let first_subtask = requests[1]["messages"].to_string();
    assert!(
        first_subtask.contains("write the first part"),
        "{first_subtask}"
    );
    assert!(!first_subtask.contains("a secret only"), "{first_subtask}");
    let second = requests[2]["messages"].to_string();
    assert!(second.contains("check the first part"), "{second}");
    assert!(second.contains("first part written"), "{second}");
    assert!(
        !second.contains("a secret only the conversation knows"),
        "the conversation leaked into the subtask: {second}"
    );
    let tools: Vec<&str> = requests.last().unwrap()["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["function"]["name"].as_str().unwrap())
        .collect();
    assert!(!tools.contains(&"switch_mode"), "{tools:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rejected_plan_ends_the_turn_and_is_kept() {
    let rt = Runtime::start(Backend::Sqlite).await;
    let (session, plan_id, _) = proposed(&rt, &three_subtasks()).await;
    let events = rt.send(&session, plan_decision(&plan_id, "reject")).await;
    assert_eq!(outcome(&events), "completed");
    assert!(all(&events, "plan_progress").is_empty());
    let plan = rt.get_ok(&format!("/plans/{plan_id}"), "dev").await;
    assert_eq!(plan["status"], "rejected");
    assert_eq!(statuses(&plan), ["pending", "pending", "pending"]);
    // Decisions are idempotent; another decision on a rejected plan is a clear error.
    let again = rt.send(&session, plan_decision(&plan_id, "reject")).await;
    assert!(
        first(&again, "notice")["message"]
            .text()
            .contains("already decided")
    );
    let late = rt.send(&session, plan_decision(&plan_id, "approve")).await;
    let error = first(&late, "error");
    assert_eq!(error["code"], "conflict");
    assert!(error["message"].text().contains("is rejected"), "{error}");
    assert_eq!(rt.pending_approvals(&session).await["count"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn modify_makes_the_architect_write_version_two() {
    let rt = Runtime::start(Backend::Sqlite).await;
    let first_version = create_plan("V1", &[("only", "coder", "::reply one", &[])]);
    let second = create_plan(
        "V2",
        &[
            ("a", "coder", "::reply a", &[]),
            ("b", "coder", "::reply b", &[0]),
        ],
    );
    let script = format!("{first_version}\n::step 2 {second}");
    let (session, plan_id, _) = proposed(&rt, &script).await;

    let missing = rt.send(&session, plan_decision(&plan_id, "modify")).await;
    assert_eq!(first(&missing, "error")["code"], "invalid_request");
    let frame = json!({"type": "plan_decision", "plan_id": plan_id, "decision": "modify",
        "feedback": "split it in two"});
    let events = rt.send(&session, frame).await;
    let revised = first(&events, "plan_approval_required");
    assert_eq!(
        revised["plan_id"],
        plan_id.as_str(),
        "the same plan, revised"
    );
    assert_eq!(revised["plan"]["version"], 2);
    assert_eq!(revised["plan"]["title"], "V2");
    assert_eq!(outcome(&events), "awaiting_tools");
    // The architect was told what to change.
    let history = rt.history(&session).await;
    let told = history["messages"].as_array().unwrap().iter().any(|m| {
        m["content"]
            .as_str()
            .is_some_and(|c| c.contains("split it in two"))
    });
    assert!(told, "{history}");

    let events = rt.send(&session, plan_decision(&plan_id, "approve")).await;
    assert_eq!(first(&events, "execution_completed")["status"], "completed");
    let plan = rt.get_ok(&format!("/plans/{plan_id}"), "dev").await;
    assert_eq!(plan["version"], 2);
    assert_eq!(statuses(&plan), ["completed", "completed"]);
    // Both versions are kept, the first with the feedback that replaced it.
    let versions = plan["versions"].as_array().unwrap();
    assert_eq!(versions.len(), 2, "{plan}");
    assert_eq!(versions[0]["title"], "V1");
    assert_eq!(versions[0]["feedback"], "split it in two");
    assert_eq!(versions[1]["title"], "V2");
    assert!(versions[1].get("feedback").is_none(), "{plan}");
    assert_eq!(versions[1]["subtasks"].as_array().unwrap().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cycles_unknown_dependencies_and_oversized_plans_go_back_to_the_model() {
    let rt = Runtime::start_with(Backend::Sqlite, |config| config.max_plan_subtasks = 2).await;
    for (script, expected) in [
        (
            create_plan(
                "Cycle",
                &[("a", "coder", "x", &[1]), ("b", "coder", "y", &[0])],
            ),
            "cycle",
        ),
        (
            create_plan("Unknown", &[("a", "coder", "x", &[4])]),
            "names no subtask",
        ),
        (
            create_plan(
                "Big",
                &[
                    ("a", "coder", "x", &[]),
                    ("b", "coder", "y", &[]),
                    ("c", "coder", "z", &[]),
                ],
            ),
            "at most 2 subtasks",
        ),
        (create_plan("Empty", &[]), "subtasks"),
    ] {
        let (session, events) = rt.new_turn("architect", &script).await;
        assert!(
            all(&events, "plan_approval_required").is_empty(),
            "{script}"
        );
        let settled = first(&events, "tool_settled");
        assert_eq!(settled["tool_name"], "create_plan");
        assert_eq!(settled["outcome"], "invalid");
        assert!(
            settled["summary"].text().contains(expected),
            "{expected}: {settled}"
        );
        let plans = rt
            .get_ok(&format!("/sessions/{session}/plans"), "dev")
            .await;
        assert_eq!(plans["plans"], json!([]));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failed_subtask_stops_the_plan_until_it_is_retried_skipped_or_cancelled() {
    let rt = Runtime::start(Backend::Sqlite).await;
    let plan = create_plan(
        "Fragile",
        &[
            ("breaks", "coder", "::error 500", &[]),
            ("after", "coder", "::reply after ran", &[0]),
        ],
    );
    let (session, plan_id, _) = proposed(&rt, &plan).await;
    let events = rt.send(&session, plan_decision(&plan_id, "approve")).await;
    assert_eq!(outcome(&events), "failed");
    let done = first(&events, "execution_completed");
    assert_eq!(done["status"], "failed");
    assert!(
        done["summary"]
            .text()
            .contains("Retry it, skip it or cancel")
    );
    let plan = rt.get_ok(&format!("/plans/{plan_id}"), "dev").await;
    assert_eq!(plan["status"], "failed");
    assert_eq!(statuses(&plan), ["failed", "pending"]);

    // Retried: it fails the same way (the mock answers 500 again).
    let events = rt.send(&session, plan_decision(&plan_id, "retry")).await;
    assert_eq!(outcome(&events), "failed");
    // Skipped: the dependent subtask runs, the plan completes.
    let events = rt.send(&session, plan_decision(&plan_id, "skip")).await;
    assert_eq!(first(&events, "execution_completed")["status"], "completed");
    let plan = rt.get_ok(&format!("/plans/{plan_id}"), "dev").await;
    assert_eq!(statuses(&plan), ["skipped", "completed"]);
    // A completed plan takes no retry.
    let late = rt.send(&session, plan_decision(&plan_id, "retry")).await;
    assert_eq!(first(&late, "error")["code"], "conflict");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cancel_ends_a_plan_waiting_for_approval_or_stopped_at_a_failure() {
    let rt = Runtime::start(Backend::Sqlite).await;
    let (session, plan_id, _) = proposed(&rt, &three_subtasks()).await;
    let events = rt.send(&session, plan_decision(&plan_id, "cancel")).await;
    assert_eq!(first(&events, "execution_completed")["status"], "cancelled");
    assert_eq!(outcome(&events), "cancelled");
    let plan = rt.get_ok(&format!("/plans/{plan_id}"), "dev").await;
    assert_eq!(plan["status"], "cancelled");
    assert_eq!(statuses(&plan), ["cancelled", "cancelled", "cancelled"]);
    assert_eq!(rt.pending_approvals(&session).await["count"], 0);

    // A new message while a plan waits for approval ends it too.
    let (session, plan_id, _) = proposed(&rt, &three_subtasks()).await;
    rt.say(&session, "never mind").await;
    let plan = rt.get_ok(&format!("/plans/{plan_id}"), "dev").await;
    assert_eq!(plan["status"], "cancelled");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn another_users_plan_is_unknown_and_cannot_be_decided() {
    let rt = Runtime::start(Backend::Sqlite).await;
    let (session, plan_id, _) = proposed(&rt, &three_subtasks()).await;
    let (status, _) = rt.get(&format!("/plans/{plan_id}"), "mallory").await;
    assert_eq!(status, 404);
    let (status, _) = rt
        .get(&format!("/sessions/{session}/plans"), "mallory")
        .await;
    assert_eq!(status, 404);
    // Mallory's own session cannot name it either.
    let theirs = rt.new_session("mallory").await;
    let events = rt
        .send_as("mallory", &theirs, plan_decision(&plan_id, "approve"))
        .await;
    assert_eq!(first(&events, "error")["code"], "unknown_plan");
    let plan = rt.get_ok(&format!("/plans/{plan_id}"), "dev").await;
    assert_eq!(plan["status"], "awaiting_approval");
    // A frame that names no plan is refused before any processing.
    let body =
        json!({"session_id": session, "message": {"type": "plan_decision", "decision": "approve"}});
    let (status, _) = rt.post_stream("dev", &body).await;
    assert_eq!(status, 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_plan_runs_without_approval_when_the_deployment_trusts_its_architect() {
    let rt = Runtime::start_with(Backend::Sqlite, |config| config.plan_auto_approve = true).await;
    let (_, events) = rt.new_turn("architect", &three_subtasks()).await;
    assert!(all(&events, "plan_approval_required").is_empty());
    assert_eq!(first(&events, "plan_update")["plan"]["status"], "approved");
    assert_eq!(all(&events, "plan_progress").len(), 5);
    assert_eq!(
        outcome(&events),
        "awaiting_tools",
        "the third subtask reads a file"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn another_replica_resumes_a_plan_from_the_store_alone() {
    let rt = Runtime::start(Backend::Sqlite).await;
    let (session, plan_id, _) = proposed(&rt, &three_subtasks()).await;
    let events = rt.send(&session, plan_decision(&plan_id, "approve")).await;
    let call = call_ids(&events)[0].clone();
    // The third subtask waits for the IDE; a replica with nothing in memory gets the result.
    let replica = rt.replica(|_| {}).await;
    let events = replica.result(&session, &call, json!("notes")).await;
    assert_eq!(first(&events, "execution_completed")["status"], "completed");
    let plan = rt.get_ok(&format!("/plans/{plan_id}"), "dev").await;
    assert_eq!(statuses(&plan), ["completed", "completed", "completed"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn on_postgres_an_approved_plan_runs_to_completion_and_is_stored() {
    let rt = Runtime::start(Backend::Postgres).await;
    let (session, plan_id, events) = proposed(&rt, &three_subtasks()).await;
    assert_eq!(outcome(&events), "awaiting_tools");
    assert_eq!(rt.pending_approvals(&session).await["count"], 1);

    let events = rt.send(&session, plan_decision(&plan_id, "approve")).await;
    let progress: Vec<(u64, String)> = all(&events, "plan_progress")
        .iter()
        .map(|p| {
            (
                p["subtask_id"].as_u64().unwrap(),
                p["status"].text().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        progress,
        [
            (0, "in_progress".to_owned()),
            (0, "completed".to_owned()),
            (1, "in_progress".to_owned()),
            (1, "completed".to_owned()),
            (2, "in_progress".to_owned()),
        ]
    );
    let calls = call_ids(&events);
    assert_eq!(calls.len(), 1, "{:?}", kinds(&events));
    assert_eq!(outcome(&events), "awaiting_tools");
    let plan = rt.get_ok(&format!("/plans/{plan_id}"), "dev").await;
    assert_eq!(plan["status"], "in_progress");
    assert_eq!(statuses(&plan), ["completed", "completed", "in_progress"]);

    let events = rt.result(&session, &calls[0], json!("the notes")).await;
    let done = first(&events, "execution_completed");
    assert_eq!(done["status"], "completed");
    assert_eq!(outcome(&events), "completed");
    let plan = rt.get_ok(&format!("/plans/{plan_id}"), "dev").await;
    assert_eq!(plan["status"], "completed");
    assert_eq!(statuses(&plan), ["completed", "completed", "completed"]);
    assert_eq!(plan["subtasks"][0]["result"], "wrote the code");
    assert_eq!(plan["subtasks"][1]["result"], "checked it");
    assert_eq!(rt.pending_approvals(&session).await["count"], 0);
    let history = rt.history(&session).await;
    let last = history["messages"].as_array().unwrap().last().unwrap();
    assert_eq!(last["content"], done["summary"]);
    // What the client saw last is the tail of the stored log, in the same order.
    let seen = stored(&events);
    let log = rt.stored_events_of("dev", &session).await;
    assert!(!seen.is_empty());
    assert_eq!(log[log.len() - seen.len()..], seen[..]);
}

// ---- deciding to plan ----

/// The classifier's answer for the mock (the routing call and the chosen agent's first step
/// both read it: the agent's reply is this text, plus any `::tool` line).
fn verdict(agent: &str, complexity: &str) -> String {
    format!(
        "::reply {{\"agent\":\"{agent}\",\"complexity\":\"{complexity}\",\"confidence\":\"high\",\
         \"reasoning\":\"sized\"}}"
    )
}

async fn routed(rt: &Runtime, session: &str) -> Value {
    let history = rt.history(session).await;
    history["agent_history"].as_array().unwrap()[0].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_complex_request_goes_to_the_architect_for_a_plan_in_the_same_classification() {
    let rt = Runtime::start(Backend::Sqlite).await;
    let session = rt.new_session("dev").await;
    let plan = create_plan("Billing", &[("a", "coder", "::reply a", &[])]);
    let text = format!(
        "Add billing to the shop\n{}\n{plan}",
        verdict("coder", "complex")
    );
    let events = rt.say(&session, &text).await;
    let switched = first(&events, "agent_switched");
    assert_eq!(switched["to_agent"], "architect");
    assert!(
        switched["reason"].text().contains("a plan is needed first"),
        "{switched}"
    );
    assert_eq!(
        first(&events, "plan_approval_required")["plan"]["title"],
        "Billing"
    );
    let decision = routed(&rt, &session).await;
    assert_eq!(decision["complexity"], "complex");
    assert_eq!(decision["confidence"], "high");

    // An atomic verdict routes as before and records the verdict.
    let session = rt.new_session("dev").await;
    let text = format!("Fix the typo\n{}", verdict("coder", "atomic"));
    let events = rt.say(&session, &text).await;
    assert_eq!(first(&events, "agent_switched")["to_agent"], "coder");
    assert!(all(&events, "plan_approval_required").is_empty());
    assert_eq!(routed(&rt, &session).await["complexity"], "atomic");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn without_a_usable_verdict_the_keywords_decide_and_directive_lines_are_ignored() {
    let rt = Runtime::start(Backend::Sqlite).await;
    for (text, complexity, agent) in [
        (
            "Create an app for notes from scratch\n::reply not json",
            "complex",
            "architect",
        ),
        (
            "Explain the architecture of the parser\n::reply not json",
            "atomic",
            "architect",
        ),
        // The keyword sits on a directive line only: not read.
        ("Rename a variable\n::reply create app", "atomic", "coder"),
    ] {
        let session = rt.new_session("dev").await;
        let events = rt.say(&session, text).await;
        assert_eq!(
            first(&events, "agent_switched")["to_agent"],
            agent,
            "{text}"
        );
        assert_eq!(
            routed(&rt, &session).await["complexity"],
            complexity,
            "{text}"
        );
    }
}

/// `PATCH /sessions/{id}` with `body`: status and JSON answer.
async fn patch(rt: &Runtime, session: &str, body: Value) -> (u16, Value) {
    let response = rt
        .request(
            reqwest::Method::PATCH,
            &format!("/sessions/{session}"),
            "dev",
        )
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json::<Value>().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_sessions_planning_setting_forces_or_disables_planning() {
    let rt = Runtime::start(Backend::Sqlite).await;
    let never = rt.new_session("dev").await;
    let (status, body) = patch(&rt, &never, json!({"planning": "never"})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["planning"], "never");
    let plan = create_plan("Nope", &[("a", "coder", "::reply a", &[])]);
    let text = format!("Build it all\n{}", verdict("architect", "complex"));
    let events = rt.say(&never, &format!("{text}\n{plan}")).await;
    let settled = first(&events, "tool_settled");
    assert_eq!(settled["outcome"], "invalid");
    assert!(
        settled["summary"].text().contains("planning is off"),
        "{settled}"
    );
    assert!(all(&events, "plan_approval_required").is_empty());

    let always = rt.new_session("dev").await;
    patch(&rt, &always, json!({"planning": "always"})).await;
    let events = rt
        .say(
            &always,
            &format!("Fix the typo\n{}", verdict("coder", "atomic")),
        )
        .await;
    assert_eq!(first(&events, "agent_switched")["to_agent"], "architect");

    for bad in [
        json!({"planning": "sometimes"}),
        json!({"planning": 1}),
        json!({}),
    ] {
        let (status, body) = patch(&rt, &always, bad.clone()).await;
        assert_eq!(status, 400, "{bad}: {body}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_architect_is_told_to_plan_when_the_user_asks_for_a_plan() {
    let fake = FakeLlm::start(FakeFlavor::OpenAi).await;
    fake.set_default_reply(FakeReply::text(&["ok"]));
    let rt = Runtime::start_with_fake(Backend::Sqlite, &fake, |_| {}).await;
    let (_, events) = rt
        .new_turn("architect", "Plan this: move the shop to PostgreSQL")
        .await;
    assert_eq!(outcome(&events), "completed");
    let (_, events) = rt
        .new_turn("architect", "Describe the shop's storage")
        .await;
    assert_eq!(outcome(&events), "completed");
    let systems: Vec<String> = fake
        .requests()
        .iter()
        .filter(|r| r.path.ends_with("/chat/completions"))
        .map(|r| {
            r.body["messages"][0]["content"]
                .as_str()
                .unwrap_or("")
                .to_owned()
        })
        .collect();
    assert_eq!(systems.len(), 2);
    assert!(
        systems[0].contains("This request needs a plan"),
        "{}",
        systems[0]
    );
    assert!(
        !systems[1].contains("This request needs a plan"),
        "{}",
        systems[1]
    );
    assert!(
        systems[1].contains("create_plan"),
        "the tool is described anyway"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_approval_stored_just_before_a_crash_resumes_the_plan_not_the_architect() {
    use codelab_agent_runtime::model::{
        PlanStatus, PlanWrite, ToolCallStatus, ToolCallUpdate, UpdateOutcome,
    };
    let rt = Runtime::start(Backend::Sqlite).await;
    let (session, plan_id, _) = proposed(&rt, &three_subtasks()).await;
    let store = &rt.state.store;
    let plan = store.get_plan(&plan_id).await.unwrap().unwrap();
    // What the approval stores, and nothing after it: the process died right there.
    let update = ToolCallUpdate {
        decision: Some("approve".to_owned()),
        settle: true,
        tool_message: Some("approved".to_owned()),
        plans: vec![PlanWrite::Status {
            plan_id: plan_id.clone(),
            status: PlanStatus::Approved,
            turn_id: Some(plan.turn_id.clone()),
            feedback: None,
            summary: None,
        }],
        ..ToolCallUpdate::to(ToolCallStatus::Executed)
    };
    let outcome = store
        .update_tool_call(
            &session,
            &plan.call_id,
            &[ToolCallStatus::PendingApproval],
            update,
        )
        .await
        .unwrap();
    assert!(matches!(outcome, UpdateOutcome::Updated(_)));

    assert_eq!(rt.state.engine.recover_stalled_turns().await.unwrap(), 1);
    let plan = rt.get_ok(&format!("/plans/{plan_id}"), "dev").await;
    assert_eq!(plan["status"], "in_progress");
    assert_eq!(statuses(&plan), ["completed", "completed", "in_progress"]);
    let replayed = rt.stored_events(&session).await;
    assert_eq!(all(&replayed, "plan_progress").len(), 5);
    assert_eq!(first(&replayed, "tool_call")["agent"], "ask");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cancel_stops_a_running_plan_without_waiting_for_its_turn() {
    let rt = Runtime::start(Backend::Sqlite).await;
    let words = "w ".repeat(40);
    let slow = format!("::slow 100\n::reply {words}");
    let plan = create_plan(
        "Slow",
        &[
            ("long", "coder", &slow, &[]),
            ("after", "coder", "::reply b", &[0]),
        ],
    );
    let (session, plan_id, _) = proposed(&rt, &plan).await;
    // The plan runs; its first subtask streams for seconds.
    let mut running = rt.open(&session, plan_decision(&plan_id, "approve")).await;
    running.until("assistant_delta").await;

    let cancelled = rt.send(&session, plan_decision(&plan_id, "cancel")).await;
    let tail = running.rest().await;
    let all_events: Vec<SequencedEvent> = tail.iter().chain(&cancelled).cloned().collect();
    assert_eq!(
        first(&all_events, "execution_completed")["status"],
        "cancelled"
    );
    assert_eq!(outcome(&tail), "cancelled");
    let plan = rt.get_ok(&format!("/plans/{plan_id}"), "dev").await;
    assert_eq!(plan["status"], "cancelled");
    assert_eq!(statuses(&plan), ["cancelled", "cancelled"]);
    // Nothing of the cut answer completed the subtask.
    assert!(
        all(&all_events, "plan_progress")
            .iter()
            .all(|p| p["status"] != "completed")
    );
}
