//! The REST API against the real auth service, runtime and proxy: the shapes the Flutter IDE
//! parses, users kept apart, approvals and cancellation through REST, health, readiness,
//! OpenAPI, CORS and runtime failures.

use crate::common::{
    ALLOWED_ORIGIN, PROMPTLY, Stack, closed_url, start_stack, start_stack_tweaked,
};
use codelab_gateway::fanout::Delivery;
use codelab_protocol::runtime::RuntimeEvent;
use reqwest::Method;
use serde_json::{Value, json};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_password_grant_token_drives_every_session_route_in_the_flutter_shapes() {
    let stack = start_stack().await;
    let token = stack.admin_token().await;
    let t = Some(token.as_str());

    // POST with an empty body: 200 (not the runtime's 201) with id and message_count.
    let (status, _, created) = stack
        .send(stack.request(Method::POST, "/api/v1/sessions", t))
        .await;
    assert_eq!(status, 200, "{created}");
    let id = created["id"].as_str().unwrap().to_owned();
    assert_eq!(created["message_count"], 0);
    assert_eq!(created["current_agent"], "orchestrator");
    // A body is ignored, as the original did.
    let body = Some(json!({"system_prompt": "x"}));
    let (status, _) = stack.call(Method::POST, "/api/v1/sessions", t, body).await;
    assert_eq!(status, 200);

    let (status, list) = stack.get("/api/v1/sessions", t).await;
    assert_eq!(status, 200);
    assert_eq!(list["total"], 2);
    assert_eq!(list["limit"], 100);
    assert_eq!(list["offset"], 0);
    for session in list["sessions"].as_array().unwrap() {
        assert!(session["id"].is_string());
        assert!(session["message_count"].is_i64());
    }
    // Paging reaches the runtime; unknown parameters do not.
    let (status, page) = stack
        .get("/api/v1/sessions?limit=1&offset=1&bogus=1", t)
        .await;
    assert_eq!(status, 200);
    assert_eq!(page["limit"], 1);
    assert_eq!(page["sessions"].as_array().unwrap().len(), 1);
    let (status, bad) = stack.get("/api/v1/sessions?limit=0", t).await;
    assert_eq!(status, 400);
    assert_eq!(bad["error"], "Agent Runtime error: 400");

    // GET one: flat, with id and message_count.
    let path = format!("/api/v1/sessions/{id}");
    let (status, flat) = stack.get(&path, t).await;
    assert_eq!(status, 200);
    assert_eq!(flat["id"], id.as_str());
    assert_eq!(flat["message_count"], 0);
    assert!(flat.get("session").is_none(), "flat, not wrapped: {flat}");

    let title = Some(json!({"title": "Refactor parser"}));
    let (status, renamed) = stack.call(Method::PATCH, &path, t, title).await;
    assert_eq!(status, 200, "{renamed}");
    assert_eq!(renamed["title"], "Refactor parser");
    let (status, bad) = stack
        .call(Method::PATCH, &path, t, Some(json!({"title": ""})))
        .await;
    assert_eq!(status, 400);
    assert_eq!(bad["error"], "Agent Runtime error: 400");
    assert!(bad["detail"].as_str().unwrap().contains("title"));
    let (status, _, bad) = stack
        .send(stack.request(Method::PATCH, &path, t).body("not json"))
        .await;
    assert_eq!(status, 400);
    assert_eq!(bad["error"], "invalid_request");

    let (status, history) = stack.get(&format!("{path}/history"), t).await;
    assert_eq!(status, 200);
    assert_eq!(history["session_id"], id.as_str());
    assert!(history["messages"].as_array().unwrap().is_empty());
    assert_eq!(history["message_count"], 0);

    let (status, pending) = stack.get(&format!("{path}/pending-approvals"), t).await;
    assert_eq!(status, 200);
    assert_eq!(pending["session_id"], id.as_str());
    assert_eq!(pending["count"], 0);
    assert!(pending["pending_approvals"].as_array().unwrap().is_empty());

    let (status, context) = stack.get(&format!("/api/v1/agents/{id}/current"), t).await;
    assert_eq!(status, 200);
    assert_eq!(context["context"]["session_id"], id.as_str());
    assert_eq!(context["context"]["current_agent"], "orchestrator");

    let (status, _, body) = stack.send(stack.request(Method::DELETE, &path, t)).await;
    assert_eq!(status, 204);
    assert_eq!(body, Value::Null);
    let (status, gone) = stack.get(&path, t).await;
    assert_eq!(status, 404);
    assert_eq!(gone["error"], "Agent Runtime error: 404");
    assert_eq!(gone["detail"], format!("session {id} not found"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn agents_are_listed_and_found_by_type() {
    let stack = start_stack().await;
    let token = stack.admin_token().await;
    let t = Some(token.as_str());
    let (status, list) = stack.get("/api/v1/agents", t).await;
    assert_eq!(status, 200);
    let agents = list["agents"].as_array().unwrap();
    assert_eq!(list["total"], agents.len());
    for agent in agents {
        for field in ["type", "name", "description"] {
            assert!(agent[field].is_string(), "{field} in {agent}");
        }
        assert!(agent["allowed_tools"].is_array());
        assert!(agent["has_file_restrictions"].is_boolean());
    }
    let (status, coder) = stack.get("/api/v1/agents/coder", t).await;
    assert_eq!(status, 200);
    assert_eq!(coder["type"], "coder");
    let (status, missing) = stack.get("/api/v1/agents/wizard", t).await;
    assert_eq!(status, 404);
    assert_eq!(missing["error"], "not_found");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn another_users_session_is_404_on_every_route() {
    let stack = start_stack().await;
    let (alice_id, alice) = stack.user("alice").await;
    let (_, bob) = stack.user("bob").await;
    let session = stack.new_session(&alice).await;
    let call_id = stack.pending_write(&alice_id, &session, "a.txt").await;

    let at = |tail: &str| format!("/api/v1/sessions/{session}{tail}");
    let approval = at(&format!("/approvals/{call_id}"));
    let current = format!("/api/v1/agents/{session}/current");
    let routes: Vec<(Method, String, Option<Value>)> = vec![
        (Method::GET, at(""), None),
        (Method::PATCH, at(""), Some(json!({"title": "mine now"}))),
        (Method::DELETE, at(""), None),
        (Method::GET, at("/history"), None),
        (Method::GET, at("/pending-approvals"), None),
        (Method::POST, approval, Some(json!({"decision": "approve"}))),
        (Method::POST, at("/cancel"), None),
        (Method::GET, current, None),
    ];
    for (method, path, body) in routes {
        let (status, answer) = stack.call(method.clone(), &path, Some(&bob), body).await;
        assert_eq!(status, 404, "{method} {path}: {answer}");
    }
    let (_, list) = stack.get("/api/v1/sessions", Some(&bob)).await;
    assert_eq!(list["total"], 0);

    // Nothing of Bob's attempts reached Alice's session.
    let (status, pending) = stack.get(&at("/pending-approvals"), Some(&alice)).await;
    assert_eq!(status, 200);
    assert_eq!(pending["count"], 1);
    assert_eq!(pending["pending_approvals"][0]["call_id"], call_id.as_str());
    assert_eq!(pending["pending_approvals"][0]["tool_name"], "write_file");
    assert!(pending["pending_approvals"][0]["arguments"].is_object());
    assert!(pending["pending_approvals"][0]["created_at"].is_string());
}

/// The next event the fan-out delivers for a session.
async fn next_event(
    subscription: &mut codelab_gateway::fanout::FanoutSubscription,
) -> RuntimeEvent {
    loop {
        let delivery = tokio::time::timeout(PROMPTLY, subscription.recv())
            .await
            .expect("an event is published promptly")
            .expect("the subscription stays open");
        if let Delivery::Event(event) = delivery {
            return event.event.clone();
        }
    }
}

/// The approvals of one session through REST: the stack, the owner's token and the session.
struct Approvals<'a>(&'a Stack, &'a str, &'a str);

impl Approvals<'_> {
    /// Decides `call_id`: status and body.
    async fn decide(&self, call_id: &str, body: Value) -> (u16, Value) {
        let Self(stack, token, session) = self;
        let path = format!("/api/v1/sessions/{session}/approvals/{call_id}");
        stack
            .call(Method::POST, &path, Some(token), Some(body))
            .await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_approval_through_rest_resends_the_call_to_the_sockets_and_settles_once() {
    let stack = start_stack().await;
    let (alice_id, alice) = stack.user("alice").await;
    let (session, call_id, mut subscription) =
        stack.session_with_a_waiting_write(&alice_id, &alice).await;
    let rest = Approvals(&stack, &alice, &session);

    let (status, body) = rest.decide(&call_id, json!({"decision": "approve"})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body,
        json!({"call_id": call_id, "decision": "approve", "status": "accepted"})
    );
    // The IDE socket gets the call again, now without the approval flag, so it runs it.
    match next_event(&mut subscription).await {
        RuntimeEvent::ToolCall {
            call_id: id,
            requires_approval,
            tool_name,
            ..
        } => {
            assert_eq!(id, call_id);
            assert_eq!(tool_name, "write_file");
            assert!(!requires_approval);
        }
        other => panic!("expected the tool_call again, got {other:?}"),
    }

    // Deciding again is a conflict; a call that never existed is 404.
    let (status, body) = rest.decide(&call_id, json!({"decision": "reject"})).await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["error"], "conflict");
    assert_eq!(
        body["detail"],
        format!("call {call_id} was already decided")
    );
    let (status, body) = rest
        .decide("call_nope", json!({"decision": "approve"}))
        .await;
    assert_eq!(status, 404, "{body}");

    // Bad bodies are refused before anything is sent.
    for bad in [
        json!({"decision": "APPROVE"}),
        json!({"decision": "edit"}),
        json!({"decision": "edit", "modified_arguments": "x"}),
        json!({}),
    ] {
        let (status, body) = rest.decide(&call_id, bad.clone()).await;
        assert_eq!(status, 400, "{bad}: {body}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn edit_and_reject_decisions_reach_the_runtime() {
    let stack = start_stack().await;
    let (alice_id, alice) = stack.user("alice").await;

    // Edit: the call goes to the IDE with the edited arguments.
    let (session, call_id, mut subscription) =
        stack.session_with_a_waiting_write(&alice_id, &alice).await;
    let rest = Approvals(&stack, &alice, &session);
    let edited = json!({"path": "b.txt", "content": "edited"});
    let edit = json!({"decision": "edit", "modified_arguments": edited});
    let (status, body) = rest.decide(&call_id, edit).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["decision"], "edit");
    match next_event(&mut subscription).await {
        RuntimeEvent::ToolCall { arguments, .. } => assert_eq!(arguments, edited),
        other => panic!("expected the edited tool_call, got {other:?}"),
    }

    // Reject with feedback: the call is settled and the turn goes on.
    let session = stack.new_session(&alice).await;
    let call_id = stack.pending_write(&alice_id, &session, "c.txt").await;
    let rest = Approvals(&stack, &alice, &session);
    let reject = json!({"decision": "reject", "feedback": "not that file"});
    let (status, body) = rest.decide(&call_id, reject).await;
    assert_eq!(status, 200, "{body}");
    let (_, history) = stack
        .get(&format!("/api/v1/sessions/{session}/history"), Some(&alice))
        .await;
    let call = history["tool_calls"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["call_id"] == call_id.as_str())
        .unwrap();
    assert_eq!(call["status"], "rejected");
    assert_eq!(call["decision"], "reject");
    let (status, body) = rest.decide(&call_id, json!({"decision": "reject"})).await;
    assert_eq!(status, 409, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cancel_settles_the_open_calls_and_tells_the_sockets() {
    let stack = start_stack().await;
    let (alice_id, alice) = stack.user("alice").await;
    let (session, call_id, mut subscription) =
        stack.session_with_a_waiting_write(&alice_id, &alice).await;
    let rest = Approvals(&stack, &alice, &session);

    let path = format!("/api/v1/sessions/{session}/cancel");
    let (status, body) = stack.call(Method::POST, &path, Some(&alice), None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body, json!({"status": "cancelled", "cancelled_calls": 1}));
    match next_event(&mut subscription).await {
        RuntimeEvent::ToolSettled {
            call_id: id,
            outcome,
            ..
        } => {
            assert_eq!(id, call_id);
            assert_eq!(outcome, "cancelled");
        }
        other => panic!("expected tool_settled, got {other:?}"),
    }
    // Nothing left to cancel is still 200, and a cancelled call cannot be approved.
    let (status, body) = stack.call(Method::POST, &path, Some(&alice), None).await;
    assert_eq!(status, 200);
    assert_eq!(body["cancelled_calls"], 0);
    let (status, _) = rest.decide(&call_id, json!({"decision": "approve"})).await;
    assert_eq!(status, 409);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn health_readiness_openapi_and_unknown_paths() {
    let stack = start_stack().await;
    for path in ["/health", "/api/v1/health"] {
        let (status, body) = stack.get(path, None).await;
        assert_eq!(status, 200);
        assert_eq!(body["status"], "healthy");
        assert_eq!(body["service"], "gateway");
        assert!(body["version"].is_string());
    }
    let (status, ready) = stack.get("/ready", None).await;
    assert_eq!(status, 200, "{ready}");
    assert_eq!(ready["checks"]["agent_runtime"], "ok");
    assert_eq!(ready["checks"]["jwks"], "ok");

    for path in ["/api/v1/openapi.json", "/openapi.json"] {
        let (status, doc) = stack.get(path, None).await;
        assert_eq!(status, 200);
        assert_eq!(doc["openapi"], "3.1.0");
        let paths = doc["paths"].as_object().unwrap();
        for route in [
            "/api/v1/sessions",
            "/api/v1/sessions/{session_id}",
            "/api/v1/sessions/{session_id}/history",
            "/api/v1/sessions/{session_id}/pending-approvals",
            "/api/v1/sessions/{session_id}/approvals/{call_id}",
            "/api/v1/sessions/{session_id}/cancel",
            "/api/v1/agents",
            "/api/v1/agents/{agent_id}",
            "/api/v1/agents/{session_id}/current",
        ] {
            assert!(paths.contains_key(route), "{route} is described");
        }
    }
    let token = stack.admin_token().await;
    let (status, body) = stack.get("/api/v1/events/metrics", Some(&token)).await;
    assert_eq!(status, 404);
    assert_eq!(body, json!({"detail": "Not Found"}));

    // REST latency by route template, never by id.
    stack.new_session(&token).await;
    let metrics = stack.metrics().await;
    assert!(
        metrics.contains("codelab_gateway_http_requests_total{method=\"POST\",route=\"/api/v1/sessions\",status=\"200\"}"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cors_allows_only_the_listed_origins() {
    let stack = start_stack().await;
    let preflight = |origin: &'static str| {
        stack
            .http
            .request(Method::OPTIONS, stack.url("/api/v1/sessions"))
            .header("Origin", origin)
            .header("Access-Control-Request-Method", "POST")
            .header("Access-Control-Request-Headers", "authorization")
    };
    let (_, headers, _) = stack.send(preflight(ALLOWED_ORIGIN)).await;
    assert_eq!(
        headers["access-control-allow-origin"], ALLOWED_ORIGIN,
        "{headers:?}"
    );
    let (_, headers, _) = stack.send(preflight("http://evil.example")).await;
    assert!(headers.get("access-control-allow-origin").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_unreachable_runtime_is_a_gateway_error() {
    // A port nothing listens on.
    let closed = closed_url();
    let stack = start_stack_tweaked(move |config| config.agent_url = closed).await;
    let token = stack.admin_token().await;
    let (status, body) = stack.get("/api/v1/sessions", Some(&token)).await;
    assert_eq!(status, 502, "{body}");
    assert_eq!(body["error"], "Gateway error");
    assert!(body["detail"].is_string());
    let (status, ready) = stack.get("/ready", None).await;
    assert_eq!(status, 503);
    assert_ne!(ready["checks"]["agent_runtime"], "ok");
}

/// docs/usage.md: a session's LLM calls per turn and step, for its owner only.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_sessions_usage_is_read_per_turn_and_step_by_its_owner_only() {
    let stack = start_stack().await;
    let (alice_id, alice, session) = stack.user_with_session("alice").await;
    let (_, bob) = stack.user("bob").await;
    let path = format!("/api/v1/sessions/{session}/usage");
    let (status, empty) = stack.get(&path, Some(&alice)).await;
    assert_eq!(status, 200, "{empty}");
    assert_eq!(empty["totals"]["requests"], 0);
    assert_eq!(empty["totals"]["cost"], Value::Null);
    assert_eq!(empty["turns"], json!([]));

    stack.coder_turn(&alice_id, &session, "hello there").await;
    stack.coder_turn(&alice_id, &session, "and again").await;
    let (status, usage) = stack.get(&path, Some(&alice)).await;
    assert_eq!(status, 200, "{usage}");
    assert_eq!(usage["session_id"], session.as_str());
    assert_eq!(usage["totals"]["requests"], 2);
    assert_eq!(
        usage["totals"]["unpriced_requests"], 2,
        "the mock has no price"
    );
    let turns = usage["turns"].as_array().unwrap();
    assert_eq!(turns.len(), 2);
    let call = &turns[0]["steps"][0]["calls"][0];
    assert_eq!(turns[0]["steps"][0]["step"], 1);
    assert_eq!(call["agent"], "coder");
    assert_eq!(call["purpose"], "step");
    assert_eq!(call["provider"], "mock");
    assert_eq!(call["outcome"], "ok");
    assert_eq!(
        call["completion_tokens"], 4,
        "the mock's static reply is four words"
    );
    let total: u64 = turns
        .iter()
        .map(|turn| turn["totals"]["total_tokens"].as_u64().unwrap())
        .sum();
    assert_eq!(usage["totals"]["total_tokens"].as_u64(), Some(total));

    // Another user's session and a missing one answer alike.
    let (status, _) = stack.get(&path, Some(&bob)).await;
    assert_eq!(status, 404);
    let (status, _) = stack.get("/api/v1/sessions/nope/usage", Some(&alice)).await;
    assert_eq!(status, 404);
    let (status, _) = stack.get(&path, None).await;
    assert_eq!(status, 401);
}

/// docs/usage.md: a user's own usage per day, model and agent; everyone's, grouped and as CSV,
/// for admins only.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn usage_reports_show_a_user_their_own_and_an_admin_everyones() {
    let stack = start_stack().await;
    let (alice_id, alice, session) = stack.user_with_session("alice").await;
    let (bob_id, _, bobs) = stack.user_with_session("bob").await;
    stack.coder_turn(&alice_id, &session, "hello there").await;
    stack.coder_turn(&alice_id, &session, "and again").await;
    stack.coder_turn(&bob_id, &bobs, "hi").await;

    let (status, mine) = stack.get("/api/v1/usage", Some(&alice)).await;
    assert_eq!(status, 200, "{mine}");
    assert_eq!(mine["totals"]["requests"], 2, "hers only: {mine}");
    let today = codelab_core::db::now_from(&stack.clock)
        .format("%Y-%m-%d")
        .to_string();
    assert_eq!(mine["by_day"][0]["day"], today.as_str());
    assert_eq!(mine["by_model"][0]["model"], "mock-llm");
    assert_eq!(mine["by_agent"][0]["agent"], "coder");
    assert_eq!(mine["by_day_and_model"][0]["model"], "mock-llm");
    assert_eq!(mine["top_sessions"][0]["session_id"], session.as_str());
    assert_eq!(
        mine["by_day"][0]["total_tokens"], mine["totals"]["total_tokens"],
        "one day holds it all"
    );
    let (status, refused) = stack
        .get("/api/v1/usage?from=2026-13-01", Some(&alice))
        .await;
    assert_eq!(status, 400, "{refused}");
    assert!(refused.to_string().contains("YYYY-MM-DD"), "{refused}");
    let (status, _) = stack
        .get("/api/v1/usage?from=2026-12-02&to=2026-12-01", Some(&alice))
        .await;
    assert_eq!(status, 400);
    let long = format!("/api/v1/usage?from={}", "1".repeat(2000));
    assert_eq!(stack.get(&long, Some(&alice)).await.0, 400);

    // Everyone's needs api:admin.
    let (status, _) = stack.get("/api/v1/admin/usage", Some(&alice)).await;
    assert_eq!(status, 403);
    let admin = stack.admin_scope_token().await;
    let (status, report) = stack
        .get("/api/v1/admin/usage?group_by=user,model", Some(&admin))
        .await;
    assert_eq!(status, 200, "{report}");
    assert_eq!(report["group_by"], json!(["user", "model"]));
    assert_eq!(report["totals"]["requests"], 3);
    assert_eq!(report["truncated"], false);
    let users: Vec<&str> = report["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|row| row["user"].as_str().unwrap())
        .collect();
    assert_eq!(
        users,
        [alice_id.as_str(), bob_id.as_str()],
        "the largest first"
    );
    let (status, _) = stack
        .get("/api/v1/admin/usage?group_by=password", Some(&admin))
        .await;
    assert_eq!(status, 400);
    let (status, _) = stack
        .get("/api/v1/admin/usage?format=xml", Some(&admin))
        .await;
    assert_eq!(status, 400);

    let response = stack
        .request(
            Method::GET,
            &format!("/api/v1/admin/usage?group_by=day&user={bob_id}&format=csv"),
            Some(&admin),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["content-type"],
        "text/csv; charset=utf-8"
    );
    let csv = response.text().await.unwrap();
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(
        lines[0],
        "day,requests,prompt_tokens,completion_tokens,total_tokens,cached_tokens,cost,unpriced_requests"
    );
    assert_eq!(lines.len(), 2, "{csv}");
    assert!(lines[1].starts_with(&format!("{today},1,")), "{csv}");
    assert!(lines[1].ends_with(",,1"), "no price: an empty cost: {csv}");
}

/// docs/usage.md: budgets set, listed and cleared through the admin API, applied from the next
/// step; users without `api:admin` are refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn admins_set_list_and_clear_budgets_that_apply_from_the_next_step() {
    let stack = start_stack().await;
    let (alice_id, alice, session) = stack.user_with_session("alice").await;
    let admin = stack.admin_scope_token().await;
    let path = format!("/api/v1/admin/budgets/{alice_id}");
    // A whole number written with a fraction is that number, as JSON Schema reads it.
    let limits = json!({"daily_tokens": 1.0});
    let (status, _) = stack
        .call(Method::PUT, &path, Some(&alice), Some(limits.clone()))
        .await;
    assert_eq!(status, 403, "not an admin");
    for bad in [
        json!({}),
        json!({"daily_tokens": 0}),
        json!({"daily_cost": -1}),
        json!({"daily_tokens": 5, "weekly_tokens": 5}),
        json!({"daily_tokens": 1.5}),
        json!({"daily_tokens": 9_223_372_036_854_775_808_u64}),
        json!([1]),
    ] {
        let (status, body) = stack
            .call(Method::PUT, &path, Some(&admin), Some(bad.clone()))
            .await;
        assert_eq!(status, 400, "{bad}: {body}");
    }
    let (status, set) = stack
        .call(Method::PUT, &path, Some(&admin), Some(limits))
        .await;
    assert_eq!(status, 200, "{set}");
    assert_eq!(set["subject"], alice_id.as_str());
    assert_eq!(set["daily_tokens"], 1);
    assert_eq!(set["monthly_cost"], Value::Null);
    let default = json!({"monthly_cost": 25.5, "requests_per_minute": 60});
    let (status, _) = stack
        .call(
            Method::PUT,
            "/api/v1/admin/budgets/default",
            Some(&admin),
            Some(default),
        )
        .await;
    assert_eq!(status, 200);
    let (status, list) = stack.get("/api/v1/admin/budgets", Some(&admin)).await;
    assert_eq!(status, 200, "{list}");
    let subjects: Vec<&str> = list["budgets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["subject"].as_str().unwrap())
        .collect();
    assert_eq!(subjects, ["*", alice_id.as_str()]);

    // The first turn has no spend to count; the next is refused.
    stack.coder_turn(&alice_id, &session, "hello").await;
    let refused = stack.coder_turn(&alice_id, &session, "again").await;
    let error = refused.iter().find(|e| e["type"] == "error").unwrap();
    assert_eq!(error["code"], "budget_exceeded", "{refused:?}");

    let (status, _) = stack.call(Method::DELETE, &path, Some(&admin), None).await;
    assert_eq!(status, 204);
    let (status, _) = stack.call(Method::DELETE, &path, Some(&admin), None).await;
    assert_eq!(status, 404, "already gone");
    // Her own budget gone, the default (60 calls a minute) lets her go on.
    let events = stack.coder_turn(&alice_id, &session, "once more").await;
    assert_eq!(events.last().unwrap()["outcome"], "completed", "{events:?}");
}

/// The original's `GET /api/v1/events/metrics/session/{id}`, answered from the usage records in
/// its shape (docs/usage.md).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_originals_session_metrics_are_answered_from_the_usage_records() {
    let stack = start_stack().await;
    let (alice_id, alice, session) = stack.user_with_session("alice").await;
    let (_, bob) = stack.user("bob").await;
    let path = format!("/api/v1/events/metrics/session/{session}");
    let none = json!({"error": format!("No metrics found for session {session}")});
    assert_eq!(stack.get(&path, Some(&alice)).await, (404, none.clone()));

    stack.coder_turn(&alice_id, &session, "hello there").await;
    stack
        .coder_turn(&alice_id, &session, "::tool read_file {\"path\":\"a.py\"}")
        .await;
    let (status, metrics) = stack.get(&path, Some(&alice)).await;
    assert_eq!(status, 200, "{metrics}");
    assert_eq!(metrics["session_id"], session.as_str());
    assert_eq!(metrics["total_requests"], 2);
    assert_eq!(metrics["successful_requests"], 2);
    assert_eq!(metrics["failed_requests"], 0);
    assert_eq!(metrics["requests_with_tools"], 1);
    let requests = metrics["requests"].as_array().unwrap();
    assert_eq!(requests.len(), 2);
    assert_eq!(requests[0]["model"], "mock-llm");
    assert_eq!(requests[0]["has_tool_calls"], false);
    assert_eq!(requests[1]["has_tool_calls"], true);
    assert_eq!(requests[0]["success"], true);
    assert_eq!(requests[0]["error"], Value::Null);
    let tokens: u64 = requests
        .iter()
        .map(|r| r["total_tokens"].as_u64().unwrap())
        .sum();
    assert_eq!(metrics["total_tokens"].as_u64(), Some(tokens));
    assert_eq!(
        metrics["average_tokens_per_request"].as_f64(),
        Some(tokens as f64 / 2.0)
    );

    // Another user's session is one without metrics.
    let mine_only = json!({"error": format!("No metrics found for session {session}")});
    assert_eq!(stack.get(&path, Some(&bob)).await, (404, mine_only));
}
