//! The internal API's surface on SQLite: sessions, users kept apart, refused frames, the
//! internal key, health, readiness and metrics, the idle-session purge.
#![allow(
    clippy::disallowed_methods,
    reason = "tests own their clock, ids and tasks"
)]
use crate::common::{self, Backend, RUNTIME_KEY, Runtime, Text, first, kinds, strings};
use codelab_agent_runtime::model::NewSession;
use reqwest::Method;
use serde_json::{Value, json};

async fn runtime() -> Runtime {
    Runtime::start(Backend::Sqlite).await
}

const STREAM: &str = "/agent/message/stream";

/// `POST path` as `user` in the development mode, where a client may choose session ids.
async fn dev_mode_post(rt: &Runtime, path: &str, user: &str, body: Value) -> reqwest::Response {
    rt.request(Method::POST, path, user)
        .header("X-Codelab-Dev-Sessions", "true")
        .json(&body)
        .send()
        .await
        .unwrap()
}

/// Posts a stream body and expects a refusal: status and `detail`.
async fn refused(rt: &Runtime, user: &str, body: Value) -> (u16, String) {
    let (status, response) = rt.post_stream(user, &body).await;
    let body: Value = response.json().await.unwrap();
    (
        status,
        body["detail"].as_str().unwrap_or_default().to_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sessions_are_created_listed_read_renamed_and_deleted() {
    let rt = runtime().await;
    let (status, created) = rt.call(Method::POST, "/sessions", "alice", None).await;
    assert_eq!(status, 201);
    let id = created["id"].text().to_owned();
    let uuid = uuid::Uuid::parse_str(&id).unwrap();
    assert_eq!(
        uuid.get_version_num(),
        4,
        "session ids are random capabilities"
    );
    assert_eq!(created["message_count"], 0);
    assert_eq!(created["is_active"], true);
    assert_eq!(created["current_agent"], "orchestrator");
    assert_eq!(created["title"], Value::Null);
    assert!(created["created_at"].text().ends_with('Z'));

    // An empty JSON body works as well.
    let (status, _) = rt
        .call(Method::POST, "/sessions", "alice", Some(json!({})))
        .await;
    assert_eq!(status, 201);

    let list = rt.get_ok("/sessions?limit=1&offset=0", "alice").await;
    assert_eq!(list["total"], 2, "the real total, not the page length");
    assert_eq!(list["limit"], 1);
    assert_eq!(list["sessions"].as_array().unwrap().len(), 1);

    let path = format!("/sessions/{id}");
    let title = json!({"title": "  Storage work  "});
    let (status, renamed) = rt.call(Method::PATCH, &path, "alice", Some(title)).await;
    assert_eq!(status, 200);
    assert_eq!(renamed["title"], "Storage work");
    assert_eq!(renamed["id"], id.as_str());

    let flat = rt.get_ok(&format!("/sessions/{id}"), "alice").await;
    assert_eq!(flat["id"], id.as_str());
    assert_eq!(flat["title"], "Storage work");
    assert_eq!(flat["current_agent"], "orchestrator");
    assert!(flat.get("session").is_none(), "flat, not wrapped");

    let found = rt.get_ok("/sessions?search=STORAGE", "alice").await;
    assert_eq!(found["total"], 1);
    assert_eq!(found["sessions"][0]["id"], id.as_str());

    let (status, _) = rt.call(Method::DELETE, &path, "alice", None).await;
    assert_eq!(status, 204);
    let (status, body) = rt.get(&format!("/sessions/{id}"), "alice").await;
    assert_eq!(status, 404);
    assert_eq!(body["detail"], format!("session {id} not found"));
    let (status, _) = rt.get(&format!("/sessions/{id}/history"), "alice").await;
    assert_eq!(status, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_paging_and_bodies_are_refused_with_a_reason() {
    let rt = runtime().await;
    for query in ["limit=0", "limit=1001", "limit=x", "offset=-1"] {
        let (status, body) = rt.get(&format!("/sessions?{query}"), "dev").await;
        assert_eq!(status, 400, "{query}");
        let detail = body["detail"].text();
        assert!(
            detail.contains("must be an integer from"),
            "{query}: {detail}"
        );
    }
    let path = format!("/sessions/{}", rt.new_session("dev").await);
    for (body, expected) in [
        (json!({"title": ""}), "title must not be empty"),
        (json!({"title": 5}), "title must be a string"),
        (json!({}), "\"title\" or \"planning\" is required"),
        (json!({"title": "x".repeat(501)}), "at most 500 characters"),
    ] {
        let (status, body) = rt.call(Method::PATCH, &path, "dev", Some(body)).await;
        assert_eq!(status, 400);
        assert!(body["detail"].text().contains(expected), "{body}");
    }
    // An unknown path is FastAPI's 404.
    let (status, body) = rt.get("/nope", "dev").await;
    assert_eq!(status, 404);
    assert_eq!(body["detail"], "Not Found");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn client_chosen_session_ids_need_the_development_mode() {
    let rt = runtime().await;
    let mine = json!({"session_id": "mine"});
    let (status, body) = rt.call(Method::POST, "/sessions", "dev", Some(mine)).await;
    assert_eq!(status, 400);
    assert!(body["detail"].text().contains("X-Codelab-Dev-Sessions"));

    let dev_post = |body: Value| dev_mode_post(&rt, "/sessions", "dev", body);
    let created = dev_post(json!({"session_id": "mine"})).await;
    assert_eq!(created.status().as_u16(), 201);
    assert_eq!(created.json::<Value>().await.unwrap()["id"], "mine");
    let again = dev_post(json!({"session_id": "mine"})).await;
    assert_eq!(again.status().as_u16(), 409);
    let bad = dev_post(json!({"session_id": "a/b"})).await;
    assert_eq!(bad.status().as_u16(), 400);

    // The stream endpoint creates a missing session on first use in that mode only.
    let frame = json!({"type": "user_message", "content": "hi", "agent_type": "coder"});
    let (status, detail) =
        refused(&rt, "dev", json!({"session_id": "ws-1", "message": frame})).await;
    assert_eq!(status, 404);
    assert_eq!(detail, "session ws-1 not found");
    let body = json!({"session_id": "ws-1", "message": frame});
    let response = dev_mode_post(&rt, STREAM, "dev", body).await;
    assert_eq!(response.status().as_u16(), 200);
    let events = common::parse_sse(&response.text().await.unwrap());
    assert_eq!(first(&events, "session_info")["session_id"], "ws-1");
    let flat = rt.get_ok("/sessions/ws-1", "dev").await;
    assert_eq!(flat["message_count"], 2);
    // Unsafe characters are never created.
    let body = json!({"session_id": "bad id!", "message": frame});
    let response = dev_mode_post(&rt, STREAM, "dev", body).await;
    assert_eq!(response.status().as_u16(), 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_first_message_without_a_session_id_starts_a_new_session() {
    let rt = runtime().await;
    let hi = json!({"message": {"type": "user_message", "content": "hi", "agent_type": "ask"}});
    let (status, response) = rt.post_stream("alice", &hi).await;
    assert_eq!(status, 200);
    let events = common::parse_sse(&response.text().await.unwrap());
    let id = first(&events, "session_info")["session_id"]
        .text()
        .to_owned();
    assert_eq!(uuid::Uuid::parse_str(&id).unwrap().get_version_num(), 4);
    assert_eq!(
        rt.get_ok(&format!("/sessions/{id}"), "alice").await["current_agent"],
        "ask"
    );
    let (status, detail) = refused(&rt, "alice", json!({"message": {"type": "cancel_turn"}})).await;
    assert_eq!(status, 400);
    assert!(detail.contains("session_id is required"), "{detail}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_user_never_sees_another_users_sessions() {
    let rt = runtime().await;
    let id = rt.new_session("alice").await;
    let plan = json!({"type": "user_message", "content": "secret plan", "agent_type": "coder"});
    let events = rt.send_as("alice", &id, plan).await;
    assert_eq!(kinds(&events).last().unwrap(), "turn_finished");

    for path in [
        format!("/sessions/{id}"),
        format!("/sessions/{id}/history"),
        format!("/sessions/{id}/pending-approvals"),
        format!("/sessions/{id}/events"),
        format!("/agents/{id}/current"),
    ] {
        let (status, body) = rt.get(&path, "bob").await;
        assert_eq!(status, 404, "{path}");
        assert_eq!(body["detail"], format!("session {id} not found"), "{path}");
        let (status, _) = rt.get(&path, "alice").await;
        assert_eq!(status, 200, "{path}");
    }
    let hi = json!({"session_id": id, "message": {"type": "user_message", "content": "hi"}});
    let (status, _) = refused(&rt, "bob", hi.clone()).await;
    assert_eq!(status, 404);
    // Not even in the development mode, where a missing id would be created.
    let response = dev_mode_post(&rt, STREAM, "bob", hi).await;
    assert_eq!(response.status().as_u16(), 404);
    for method in [Method::DELETE, Method::PATCH] {
        let path = format!("/sessions/{id}");
        let title = json!({"title": "mine now"});
        let (status, _) = rt.call(method.clone(), &path, "bob", Some(title)).await;
        assert_eq!(status, 404, "{method}");
    }
    assert_eq!(rt.get_ok("/sessions", "bob").await["total"], 0);
    assert_eq!(rt.get_ok("/sessions", "alice").await["total"], 1);
    // Without a user header the request is the development user's, who owns nothing here.
    let response = rt
        .http
        .get(format!("{}/sessions/{id}", rt.base))
        .header("X-Internal-Auth", RUNTIME_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 404);
    let (status, body) = rt.get("/sessions", "bad user").await;
    assert_eq!(status, 400);
    assert!(body["detail"].text().starts_with("X-Codelab-User-Id"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn malformed_frames_are_refused_before_any_stream() {
    let (rt, s) = Runtime::with_session(Backend::Sqlite).await;
    let frame = |message: Value| json!({"session_id": s, "message": message});
    let cases = [
        (json!({"session_id": s}), "\"message\" is required"),
        (
            frame(json!([1])),
            "Invalid JSON message: expected a JSON object, got an array",
        ),
        (frame(json!({"content": "x"})), "Unknown message type: None"),
        (frame(json!({"type": "ping"})), "Unknown message type: ping"),
        (frame(json!({"type": "tool_result"})), "call_id"),
        (
            frame(json!({"type": "tool_result", "call_id": ""})),
            "call_id must not be empty",
        ),
        (
            frame(json!({"type": "hitl_decision", "call_id": "c", "decision": "APPROVE"})),
            "APPROVE",
        ),
        (
            frame(json!({"type": "switch_agent", "agent_type": "wizard"})),
            "unknown agent_type \"wizard\"",
        ),
        (
            frame(json!({"type": "switch_agent", "agent_type": "universal"})),
            "not available in multi-agent mode",
        ),
        (
            frame(json!({"type": "user_message", "content": "x", "agent_type": "boss"})),
            "unknown agent_type \"boss\"",
        ),
        (
            frame(json!({"type": "user_message", "content": "  "})),
            "content must not be empty",
        ),
        (frame(json!({"type": "hello", "protocol": 2})), "gateway"),
        (
            json!({"session_id": 5, "message": {"type": "cancel_turn"}}),
            "session_id must be a non-empty string",
        ),
    ];
    for (body, expected) in cases {
        let (status, detail) = refused(&rt, "dev", body.clone()).await;
        assert_eq!(status, 400, "{body}");
        assert!(detail.contains(expected), "{body}: {detail}");
    }
    let response = rt
        .request(Method::POST, STREAM, "dev")
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 400);
    let body: Value = response.json().await.unwrap();
    assert!(
        body["detail"]
            .text()
            .starts_with("invalid JSON in request body")
    );
    // Nothing was stored for the refused frames.
    assert!(rt.stored_events(&s).await.is_empty());
    assert_eq!(
        rt.get_ok(&format!("/sessions/{s}"), "dev").await["message_count"],
        0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_route_but_the_probes_needs_the_internal_key() {
    let rt = runtime().await;
    for (key, path) in [
        (None, "/sessions"),
        (Some("wrong"), "/agents"),
        (None, "/nope"),
        (None, "/openapi.json"),
    ] {
        let mut request = rt.http.get(format!("{}{path}", rt.base));
        if let Some(key) = key {
            request = request.header("X-Internal-Auth", key);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status().as_u16(), 401, "{path}");
        assert_eq!(
            response.text().await.unwrap(),
            r#"{"detail":"unauthorized"}"#
        );
    }
    let response = rt
        .http
        .post(format!("{}/agent/message/stream", rt.base))
        .json(&json!({"session_id": "x", "message": {"type": "cancel_turn"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 401);
    // The description is served behind the key like the routes it describes.
    let description = rt.get_ok("/openapi.json", "dev").await;
    assert_eq!(description["openapi"], "3.1.0");
    assert!(description["paths"].get("/agent/message/stream").is_some());

    let health: Value = rt.get_public("/health").await.json().await.unwrap();
    assert_eq!(health["status"], "healthy");
    assert_eq!(health["service"], "agent-runtime");

    let ready = rt.get_public("/ready").await;
    assert_eq!(ready.status().as_u16(), 200);
    let ready: Value = ready.json().await.unwrap();
    assert_eq!(ready["checks"]["database"], "ok");
    assert_eq!(ready["checks"]["llm_proxy"], "ok");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn readiness_fails_without_the_proxy() {
    let rt = Runtime::start_with(Backend::Sqlite, |c| {
        // Nothing listens on port 1.
        c.llm_proxy_url = "http://127.0.0.1:1".to_owned();
    })
    .await;
    let ready = rt.get_public("/ready").await;
    assert_eq!(ready.status().as_u16(), 503);
    let ready: Value = ready.json().await.unwrap();
    assert_eq!(ready["checks"]["database"], "ok");
    assert!(
        ready["checks"]["llm_proxy"]
            .text()
            .starts_with("cannot reach the LLM proxy")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn metrics_count_turns_steps_calls_approvals_routing_and_tokens() {
    let (rt, s) = Runtime::with_session(Backend::Sqlite).await;
    let script = "Please fix it\n::tool write_file {\"path\":\"a\",\"content\":\"b\"}";
    let events = rt.say(&s, script).await;
    let call_id = first(&events, "tool_call")["call_id"].text().to_owned();
    rt.send(&s, json!({"type": "tool_result", "call_id": call_id, "error": "Операция отклонена: write_file"}))
        .await;
    let text = rt.metrics_text().await;
    for needle in [
        "codelab_agent_runtime_turns_total{outcome=\"completed\"}",
        "codelab_agent_runtime_turns_total{outcome=\"awaiting_tools\"}",
        "codelab_agent_runtime_steps_total",
        "codelab_agent_runtime_tool_calls_total{tool=\"write_file\",outcome=\"rejected\"}",
        "codelab_agent_runtime_approvals_total{decision=\"reject\"}",
        "codelab_agent_runtime_routing_decisions_total{agent=\"coder\",method=\"fallback\"}",
        "codelab_agent_runtime_llm_request_duration_seconds",
        "codelab_agent_runtime_llm_ttft_seconds",
        "codelab_agent_runtime_llm_tokens_total{direction=\"in\",model=\"mock-llm\",agent=\"coder\"}",
        "codelab_agent_runtime_llm_tokens_total{direction=\"out\",model=\"mock-llm\",agent=\"orchestrator\"}",
        "codelab_agent_runtime_active_turns",
        "codelab_agent_runtime_http_requests_total",
    ] {
        assert!(text.contains(needle), "missing {needle}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn agents_are_listed_and_a_sessions_context_is_shown() {
    let rt = runtime().await;
    let agents = rt.get_ok("/agents", "dev").await;
    assert_eq!(agents["total"], 5);
    let names = strings(&agents["agents"], "type");
    assert_eq!(
        names,
        ["orchestrator", "coder", "architect", "debug", "ask"]
    );
    assert_eq!(agents["agents"][2]["has_file_restrictions"], true);

    let s = rt.new_session("dev").await;
    let context = rt.get_ok(&format!("/agents/{s}/current"), "dev").await;
    assert_eq!(context["context"]["current_agent"], "orchestrator");
    assert_eq!(context["context"]["switch_count"], 0);
    assert_eq!(context["context"]["switch_history"], json!([]));
    assert_eq!(context["context"]["last_switch_at"], Value::Null);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_purge_removes_idle_sessions_in_batches() {
    let rt = runtime().await;
    for i in 0..150 {
        rt.state
            .store
            .create_session(NewSession {
                id: format!("old-{i}"),
                owner: "dev".into(),
                current_agent: "orchestrator".into(),
            })
            .await
            .unwrap();
    }
    let past = chrono::Utc::now() - chrono::Duration::days(1);
    assert_eq!(
        codelab_agent_runtime::purge_idle_sessions(rt.state.store.as_ref(), past)
            .await
            .unwrap(),
        0
    );
    let future = chrono::Utc::now() + chrono::Duration::days(1);
    assert_eq!(
        codelab_agent_runtime::purge_idle_sessions(rt.state.store.as_ref(), future)
            .await
            .unwrap(),
        150
    );
    assert_eq!(rt.get_ok("/sessions", "dev").await["total"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_gateway_can_look_up_a_sessions_owner_with_the_internal_key() {
    let rt = runtime().await;
    let id = rt.new_session("alice").await;
    let owner = format!("/internal/sessions/{id}/owner");
    // Any acting user gets the same answer: the gateway asks before it knows who the socket is.
    for user in ["bob", "dev"] {
        let (status, body) = rt.get(&owner, user).await;
        assert_eq!(status, 200);
        assert_eq!(body, json!({"owner": "alice"}));
    }
    let (status, body) = rt.get("/internal/sessions/nope/owner", "alice").await;
    assert_eq!(status, 404);
    assert_eq!(body["detail"], "session nope not found");
    let (status, _) = rt
        .call(Method::DELETE, &format!("/sessions/{id}"), "alice", None)
        .await;
    assert_eq!(status, 204);
    let (status, _) = rt.get(&owner, "alice").await;
    assert_eq!(status, 404, "a deleted session has no owner");
    let response = rt
        .http
        .get(format!("{}{owner}", rt.base))
        .send()
        .await
        .unwrap();
    assert_eq!(
        response.status().as_u16(),
        401,
        "the internal key guards it"
    );
}
