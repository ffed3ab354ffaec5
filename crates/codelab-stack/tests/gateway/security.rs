//! Attack tests of the gateway's authentication and authorization (issue 14): a session id is
//! not a bearer credential outside development, a tokenless socket cannot decide approvals,
//! the runtime's key does not let anyone act as another user, tokens act only within their
//! scopes, and WebSocket upgrades check `Origin`. Each runs against the whole stack (real auth
//! service, runtime and mock model) on ephemeral ports; see docs/security.md.

use codelab_core::service::Service as _;

use crate::common::{
    ALLOWED_ORIGIN, PROMPTLY, RUNTIME_KEY, SERVICE_KEY, STRONG_KEY, Socket, Stack, StackOptions,
    USER_PASSWORD, access_token, auth_failure_metric, build_error, jwt_claims, next_frame, open,
    refusal, send, start_stack, start_stack_tweaked, start_stack_with, strong_config,
};
use codelab_core::config::{Environment, Secret};
use codelab_gateway::config::WsAuthMode;
use codelab_testkit::ide_clients::{FlutterReplicaClient, ToolDecision};
use reqwest::Method;
use serde_json::{Value, json};

/// An origin no setting allows.
const EVIL_ORIGIN: &str = "https://evil.example";
/// An IDE origin allowed by `GATEWAY__WS_ALLOWED_ORIGINS` in [`origin_stack`].
const IDE_ORIGIN: &str = "https://ide.example.test";

/// Frames until one satisfies `done` (returned).
async fn frame_where(socket: &mut Socket, done: impl Fn(&Value) -> bool) -> Value {
    loop {
        let frame = next_frame(socket).await;
        if done(&frame) {
            return frame;
        }
    }
}

/// The call ids of the session's pending approvals, read over REST with `token`.
async fn pending_calls(stack: &Stack, token: &str, session: &str) -> Vec<String> {
    let path = format!("/api/v1/sessions/{session}/pending-approvals");
    let (status, body) = stack.get(&path, Some(token)).await;
    assert_eq!(status, 200, "{body}");
    body["pending_approvals"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["call_id"].as_str().unwrap().to_owned())
        .collect()
}

/// The password grant of the Flutter client asking for `scope`: the access token.
async fn token_with_scope(stack: &Stack, username: &str, scope: &str) -> String {
    let body: Value = stack
        .password_grant(username, USER_PASSWORD, &[("scope", scope)])
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(body["scope"], scope, "{body}");
    body["access_token"].as_str().unwrap().to_owned()
}

/// The stack in `environment` with the explicit `session` opt-in for the Flutter IDE's sockets.
async fn session_opt_in(environment: Environment) -> Stack {
    start_stack_with(StackOptions {
        environment,
        gateway: Box::new(|c| c.ws_auth = Some(WsAuthMode::Session)),
        ..StackOptions::default()
    })
    .await
}

// ---------------------------------------------------------------------------------------------
// Finding 2: a session id is not a bearer credential
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn outside_development_a_tokenless_socket_is_refused_with_the_setting_to_change() {
    let stack = start_stack_with(StackOptions {
        environment: Environment::Staging,
        ..StackOptions::default()
    })
    .await;
    assert_eq!(stack.gateway.config.ws_auth, Some(WsAuthMode::Required));
    let (_, token, session) = stack.user_with_session("alice").await;
    let url = stack.ws_url(&session);

    // The status the Flutter IDE gets for a refused credential, and the way to let it in.
    let (status, body) = refusal(&url, &[]).await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["error"], "unauthorized");
    let reason = body["error_description"].as_str().unwrap();
    assert!(reason.contains("GATEWAY__WS_AUTH=session"), "{reason}");
    // With a token the same session opens.
    open(&url, &[("authorization", &format!("Bearer {token}"))])
        .await
        .unwrap();

    // Development keeps the Flutter IDE's mode; production is as strict as staging.
    for (environment, expected) in [
        (Environment::Development, WsAuthMode::Session),
        (Environment::Production, WsAuthMode::Required),
    ] {
        let deps = codelab_core::service::SharedDeps::isolated(environment);
        let state = codelab_gateway::GatewayService::build(strong_config(|_| {}), deps)
            .await
            .unwrap();
        assert_eq!(state.config.ws_auth, Some(expected), "{environment}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_tokenless_socket_cannot_decide_an_approval_while_a_token_socket_can() {
    // `session` is the explicit opt-in for the Flutter IDE in a hardened environment.
    let stack = session_opt_in(Environment::Staging).await;
    let (alice_id, token, session) = stack.user_with_session("alice").await;
    let call_id = stack.pending_write(&alice_id, &session, "notes.txt").await;
    let url = stack.ws_url(&session);

    // Knowing the session id still attaches a socket (the Flutter IDE's way)...
    let mut tokenless = open(&url, &[]).await.unwrap();
    // ...but server-side decisions are refused, and nothing reaches the runtime.
    for frame in [
        json!({"type": "hitl_decision", "call_id": call_id, "decision": "approve"}),
        json!({"type": "cancel_turn"}),
    ] {
        send(&mut tokenless, &frame).await;
        let error = next_frame(&mut tokenless).await;
        assert_eq!(error["type"], "error", "{error}");
        assert_eq!(error["error_code"], "FORBIDDEN", "{error}");
        assert!(
            error["content"]
                .as_str()
                .unwrap()
                .starts_with(frame["type"].as_str().unwrap()),
            "{error}"
        );
    }
    assert_eq!(
        pending_calls(&stack, &token, &session).await,
        vec![call_id.clone()],
        "the call still waits for a person"
    );

    // The same decision from a socket with the owner's token is carried out: the call comes
    // back without requires_approval and no longer waits.
    let mut with_token = open(&url, &[("authorization", &format!("Bearer {token}"))])
        .await
        .unwrap();
    send(
        &mut with_token,
        &json!({"type": "hitl_decision", "call_id": call_id, "decision": "approve"}),
    )
    .await;
    let again = frame_where(&mut with_token, |f| {
        f["type"] == "tool_call" && f["call_id"] == call_id.as_str()
    })
    .await;
    assert_ne!(again["requires_approval"], true, "{again}");
    assert!(pending_calls(&stack, &token, &session).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_flutter_ide_replica_works_in_a_hardened_gateway_with_the_session_opt_in() {
    let stack = session_opt_in(Environment::Production).await;
    let mut client = FlutterReplicaClient::new(&stack.gateway_url).with_timeout(PROMPTLY);
    client
        .login(&stack.auth_url, stack.admin_username, stack.admin_password)
        .await
        .unwrap();
    let session = client.create_session().await.unwrap();
    // As the IDE does: no credentials on the socket, approval asked in its own dialog and
    // answered with the tool's result.
    let mut socket = client.connect(&session.id).await.unwrap();
    let turn = socket
        .run_turn(
            r#"::tool write_file {"path":"a.md","content":"x"}"#,
            |call| {
                assert!(call.requires_approval, "{call:?}");
                ToolDecision::Result(
                    json!({"success": true, "content": "wrote a.md"})
                        .as_object()
                        .unwrap()
                        .clone(),
                )
            },
        )
        .await
        .unwrap();
    assert!(
        turn.assistant_texts()[0].contains("Tool write_file returned"),
        "{turn:?}"
    );
    assert_eq!(socket.parse_errors(), Vec::<(&str, &str)>::new());
    assert_eq!(
        client.pending_approvals(&session.id).await.unwrap().count,
        0
    );
}

// ---------------------------------------------------------------------------------------------
// Finding 6: internal headers from outside
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_runtime_key_does_not_let_a_caller_act_as_another_user() {
    let stack = start_stack().await;
    let (alice_id, alice, session) = stack.user_with_session("alice").await;
    let call_id = stack.pending_write(&alice_id, &session, "a.txt").await;

    // What an attacker who learned the runtime's key (the gateway→runtime link) would send.
    let as_alice = |method: Method, path: &str, key: &str| {
        stack.as_service(method, path, key, Some(&alice_id))
    };
    let attempts = [
        (Method::GET, "/api/v1/sessions".to_owned()),
        (Method::GET, format!("/api/v1/sessions/{session}/history")),
        (Method::DELETE, format!("/api/v1/sessions/{session}")),
    ];
    for (method, path) in attempts {
        let (status, _, body) = stack
            .send(as_alice(method.clone(), &path, RUNTIME_KEY))
            .await;
        assert_eq!(status, 401, "{method} {path}: {body}");
        assert_eq!(body["error"], "unauthorized");
    }
    let approval = format!("/api/v1/sessions/{session}/approvals/{call_id}");
    let approve = as_alice(Method::POST, &approval, RUNTIME_KEY);
    let approve = approve.json(&json!({"decision": "approve"}));
    let (status, _, _) = stack.send(approve).await;
    assert_eq!(status, 401);
    let (status, _) = refusal(
        &stack.ws_url(&session),
        &[
            ("x-internal-auth", RUNTIME_KEY),
            ("x-codelab-user-id", &alice_id),
        ],
    )
    .await;
    assert_eq!(status, 403);
    // Nothing happened to alice's session.
    assert_eq!(pending_calls(&stack, &alice, &session).await, vec![call_id]);

    // The gateway's own service key is what service callers use.
    let as_service = as_alice(Method::GET, "/api/v1/sessions", SERVICE_KEY);
    let (status, _, list) = stack.send(as_service).await;
    assert_eq!(status, 200, "{list}");
    assert_eq!(list["total"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn without_a_service_key_internal_headers_are_refused() {
    let stack = start_stack_tweaked(|c| c.service_api_key = Secret::default()).await;
    let (alice_id, alice) = stack.user("alice").await;
    let (bob_id, bob) = stack.user("bob").await;
    stack.new_session(&alice).await;
    for key in [RUNTIME_KEY, SERVICE_KEY, ""] {
        let request = stack.as_service(Method::GET, "/api/v1/sessions", key, Some(&alice_id));
        let (status, _, body) = stack.send(request).await;
        assert_eq!(status, 401, "{key:?}: {body}");
        assert!(
            body["error_description"]
                .as_str()
                .unwrap()
                .contains("GATEWAY__SERVICE_API_KEY"),
            "{body}"
        );
    }
    // With a token, a user header is not believed: bob stays bob.
    let request = stack.request(Method::GET, "/api/v1/sessions", Some(&bob));
    let (status, _, list) = stack
        .send(request.header("X-Codelab-User-Id", &alice_id))
        .await;
    assert_eq!(status, 200);
    assert_eq!(list["total"], 0, "bob ({bob_id}) saw alice's sessions");
    let metrics = stack.metrics().await;
    assert!(metrics.contains(&auth_failure_metric("service_callers_disabled")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_weak_or_shared_service_key_is_refused_at_startup() {
    let weak = strong_config(|c| c.service_api_key = Secret::new("change-me"));
    let error = build_error(weak, Environment::Staging).await;
    assert!(
        error.to_string().contains("GATEWAY__SERVICE_API_KEY"),
        "{error}"
    );
    let shared = strong_config(|c| c.service_api_key = Secret::new(STRONG_KEY));
    let error = codelab_gateway::GatewayService::build(
        shared,
        codelab_core::service::SharedDeps::default(),
    )
    .await
    .unwrap_err();
    assert!(error.to_string().contains("must differ"), "{error}");
}

// ---------------------------------------------------------------------------------------------
// Scopes
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_read_only_token_reads_but_cannot_act() {
    let stack = start_stack().await;
    let (alice_id, writer) = stack.user("alice").await;
    assert_eq!(jwt_claims(&writer)["scope"], "api:read api:write");
    let session = stack.new_session(&writer).await;
    let call_id = stack.pending_write(&alice_id, &session, "a.txt").await;
    let reader = token_with_scope(&stack, "alice", "api:read").await;

    for path in [
        "/api/v1/sessions".to_owned(),
        format!("/api/v1/sessions/{session}"),
        format!("/api/v1/sessions/{session}/history"),
        format!("/api/v1/sessions/{session}/pending-approvals"),
        "/api/v1/agents".to_owned(),
    ] {
        let (status, body) = stack.call(Method::GET, &path, Some(&reader), None).await;
        assert_eq!(status, 200, "GET {path}: {body}");
    }
    let at = |tail: &str| format!("/api/v1/sessions/{session}{tail}");
    let approval = at(&format!("/approvals/{call_id}"));
    let acts = [
        (Method::POST, "/api/v1/sessions".to_owned(), None),
        (Method::PATCH, at(""), Some(json!({"title": "mine now"}))),
        (Method::POST, approval, Some(json!({"decision": "approve"}))),
        (Method::POST, at("/cancel"), None),
        (Method::DELETE, at(""), None),
    ];
    for (method, path, body) in acts {
        let mut request = stack.request(method.clone(), &path, Some(&reader));
        if let Some(body) = body {
            request = request.json(&body);
        }
        let (status, headers, answer) = stack.send(request).await;
        assert_eq!(status, 403, "{method} {path}: {answer}");
        assert_eq!(answer["error"], "insufficient_scope", "{answer}");
        assert_eq!(
            headers["www-authenticate"],
            "Bearer error=\"insufficient_scope\", scope=\"api:write\""
        );
    }
    assert_eq!(
        pending_calls(&stack, &writer, &session).await,
        vec![call_id.clone()]
    );

    // A read-only socket opens and may say hello, but every acting frame is refused.
    let url = format!("{}?access_token={reader}", stack.ws_url(&session));
    let mut socket = open(&url, &[]).await.unwrap();
    send(&mut socket, &json!({"type": "hello", "protocol": 2})).await;
    frame_where(&mut socket, |f| f["type"] == "session_info").await;
    for frame in [
        json!({"type": "user_message", "content": "hi"}),
        json!({"type": "hitl_decision", "call_id": call_id, "decision": "approve"}),
    ] {
        send(&mut socket, &frame).await;
        let error = frame_where(&mut socket, |f| f["type"] == "error").await;
        assert_eq!(error["error_code"], "INSUFFICIENT_SCOPE", "{error}");
    }
    assert_eq!(
        pending_calls(&stack, &writer, &session).await,
        vec![call_id]
    );

    // The write token does what the read token could not.
    let (status, body) = stack
        .call(Method::POST, "/api/v1/sessions", Some(&writer), None)
        .await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_token_with_neither_scope_is_refused() {
    let stack = start_stack().await;
    let (alice_id, _, session) = stack.user_with_session("alice").await;
    // The auth service grants no token without a scope, so this one is made directly.
    let scopeless = access_token(
        &stack.signer(&stack.issuer, "codelab-api"),
        &alice_id,
        "profile",
    );
    let (status, headers, body) = stack
        .send(stack.request(Method::GET, "/api/v1/sessions", Some(&scopeless)))
        .await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["error"], "insufficient_scope");
    assert_eq!(
        headers["www-authenticate"],
        "Bearer error=\"insufficient_scope\", scope=\"api:read\""
    );
    let (status, _) = stack
        .call(Method::POST, "/api/v1/sessions", Some(&scopeless), None)
        .await;
    assert_eq!(status, 403);
    let (status, body) = refusal(
        &stack.ws_url(&session),
        &[("authorization", &format!("Bearer {scopeless}"))],
    )
    .await;
    assert_eq!(status, 403);
    assert_eq!(body["error"], "insufficient_scope");
}

// ---------------------------------------------------------------------------------------------
// Origin
// ---------------------------------------------------------------------------------------------

/// The default stack with [`IDE_ORIGIN`] allowed for sockets.
async fn origin_stack() -> Stack {
    start_stack_tweaked(|c| c.ws_allowed_origins = vec![IDE_ORIGIN.to_owned()]).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn websocket_upgrades_check_the_origin() {
    let stack = origin_stack().await;
    let (_, token, session) = stack.user_with_session("alice").await;
    let url = stack.ws_url(&session);
    let bearer = format!("Bearer {token}");

    // A page elsewhere is refused before the upgrade, even with a valid token.
    let (status, body) =
        refusal(&url, &[("origin", EVIL_ORIGIN), ("authorization", &bearer)]).await;
    assert_eq!(status, 403, "{body}");
    assert!(
        body["error_description"]
            .as_str()
            .unwrap()
            .contains("GATEWAY__WS_ALLOWED_ORIGINS"),
        "{body}"
    );
    let (status, _) = refusal(&url, &[("origin", "null")]).await;
    assert_eq!(status, 403);

    // The gateway's own origin (Host is the gateway's address), the configured IDE origin, a
    // CORS origin, and no Origin at all (native clients) are accepted.
    let own = stack.gateway_url.clone();
    for origin in [own.as_str(), IDE_ORIGIN, ALLOWED_ORIGIN] {
        open(&url, &[("origin", origin), ("authorization", &bearer)])
            .await
            .unwrap_or_else(|e| panic!("{origin}: {e}"));
    }
    open(&url, &[]).await.unwrap();
    assert!(
        stack
            .metrics()
            .await
            .contains(r#"codelab_gateway_ws_connections_total{outcome="origin_refused"}"#)
    );
}
