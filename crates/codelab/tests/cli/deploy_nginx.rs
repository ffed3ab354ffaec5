//! deploy/nginx/nginx.conf, for real: `nginx -t` accepts it with and without tls.conf, and an
//! nginx started from it (unprivileged prefix in a temp dir, loopback, free ports, upstreams.conf
//! generated here) routes like the original's table, corrected: `/oauth/` and `/.well-known/` to
//! auth with the query string, `/auth-health` and `/gateway-health` to each `/health`,
//! `/api/v1/` to the gateway with the WebSocket upgrade and the query string kept (the original
//! dropped it), streams unbuffered, `/` to the website (an endpoint list while it is down),
//! `/nginx-health` answered by nginx, forwarding headers set; with tls.conf, HTTPS with HSTS and
//! a redirect from HTTP to the configured address (never the client's Host).
//!
//! The attack tests (docs/security.md): `/oauth/introspect` and the website's `/metrics` and
//! `/ready` are 404 from outside and never reach an upstream; `X-Internal-Auth` and
//! `X-Codelab-User-Id` sent by a client never reach one either; the access log holds neither
//! session ids nor query-string tokens.
//!
//! Needs nginx (`CODELAB_TEST_NGINX`, else /usr/sbin/nginx; scripts/test installs it from Debian
//! packages) and the openssl command for the TLS case.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{OriginalUri, Request, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::common::cli::{fetch_json, send};
use crate::common::nginx::{Nginx, Prefix, public_https_url, upstreams_conf};
use codelab_testkit::ServerGuard;

/// Answers any request with what it received.
async fn echo(
    State(name): State<&'static str>,
    OriginalUri(uri): OriginalUri,
    req: Request,
) -> Response {
    let (parts, body) = req.into_parts();
    let header = |h: &str| {
        parts
            .headers
            .get(h)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let body = axum::body::to_bytes(body, usize::MAX).await.unwrap();
    axum::Json(json!({
        "upstream": name,
        "uri": uri.to_string(),
        "body_len": body.len(),
        "host": header("host"),
        "x_forwarded_for": header("x-forwarded-for"),
        "x_forwarded_proto": header("x-forwarded-proto"),
        "x_forwarded_host": header("x-forwarded-host"),
        "x_real_ip": header("x-real-ip"),
        "x_request_id": header("x-request-id"),
        "x_internal_auth": header("x-internal-auth"),
        "x_codelab_user_id": header("x-codelab-user-id"),
    }))
    .into_response()
}

/// The gateway's socket: first sends the URI it was opened with, then echoes.
async fn websocket(OriginalUri(uri): OriginalUri, upgrade: WebSocketUpgrade) -> Response {
    upgrade.on_upgrade(move |mut socket: WebSocket| async move {
        let _ = socket.send(Message::Text(uri.to_string().into())).await;
        while let Some(Ok(message)) = socket.recv().await {
            if let Message::Text(text) = message {
                let _ = socket
                    .send(Message::Text(format!("echo {text}").into()))
                    .await;
            }
        }
    })
}

/// A stream with a pause: the first piece must reach the client before the second is written.
async fn slow_stream() -> Response {
    let pieces = futures_util::stream::iter(["data: first\n\n", "data: second\n\n"]).then(
        |piece| async move {
            if piece.contains("second") {
                tokio::time::sleep(Duration::from_millis(1500)).await;
            }
            Ok::<_, std::io::Error>(piece)
        },
    );
    (
        [("content-type", "text/event-stream")],
        axum::body::Body::from_stream(pieces),
    )
        .into_response()
}

async fn upstream(name: &'static str) -> (SocketAddr, ServerGuard) {
    let mut router = Router::new();
    if name == "gateway" {
        router = router
            .route("/api/v1/ws/{session_id}", get(websocket))
            .route("/api/v1/stream", get(slow_stream));
    }
    let router = router.fallback(any(echo)).with_state(name);
    let server = ServerGuard::start(router).await;
    (server.addr(), server)
}

/// Echo upstreams for auth, gateway and website behind an nginx from deploy/nginx/nginx.conf
/// (with tls.conf when `tls`). Fields drop in order: nginx stops before its upstreams.
struct EchoFront {
    _nginx: Nginx,
    prefix: Prefix,
    website: ServerGuard,
    _auth_and_gateway: [ServerGuard; 2],
}

async fn echo_front(tls: bool) -> EchoFront {
    let (auth_addr, auth) = upstream("auth").await;
    let (gateway_addr, gateway) = upstream("gateway").await;
    let (website_addr, website) = upstream("website").await;
    let prefix = Prefix::new(
        &upstreams_conf(&[auth_addr], &[gateway_addr], &[website_addr]),
        tls,
    );
    EchoFront {
        _nginx: prefix.start().await,
        prefix,
        website,
        _auth_and_gateway: [auth, gateway],
    }
}

async fn get_json(client: &reqwest::Client, url: &str) -> Value {
    let response = client.get(url).send().await.unwrap();
    assert_eq!(response.status(), 200, "{url}");
    response.json().await.unwrap()
}

#[test]
fn nginx_accepts_the_config_with_and_without_tls() {
    let upstreams = "upstream codelab_auth { server 127.0.0.1:9; }\n\
                     upstream codelab_gateway { server 127.0.0.1:9; }\n\
                     upstream codelab_website { server 127.0.0.1:9; }\n";
    let plain = Prefix::new(upstreams, false);
    assert!(plain.test_config().contains("test is successful"));
    let tls = Prefix::new(upstreams, true);
    assert!(tls.test_config().contains("test is successful"));
    // A missing upstream is an error: the config depends on upstreams.conf for every address.
    let partial = Prefix::new("upstream codelab_auth { server 127.0.0.1:9; }\n", false);
    let output = partial.command().arg("-t").output().unwrap();
    assert!(!output.status.success());
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("no live upstreams")
            || String::from_utf8_lossy(&output.stderr).contains("host not found in upstream"),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn the_config_keeps_the_originals_limits_and_timeouts() {
    let conf = std::fs::read_to_string(crate::common::repo_root().join("deploy/nginx/nginx.conf"))
        .unwrap();
    for directive in [
        "client_max_body_size 50M;",
        "client_body_buffer_size 128k;",
        "proxy_connect_timeout 60s;",
        "proxy_send_timeout 3600s;",
        "proxy_read_timeout 3600s;",
        "proxy_http_version 1.1;",
        "proxy_buffering off;",
        // Raised from the original's 1024: 1,000 IDE sockets need 2,000 (the soak).
        "worker_connections 4096;",
        "keepalive_timeout 65;",
        "proxy_set_header Upgrade $http_upgrade;",
        "proxy_set_header Connection $connection_upgrade;",
    ] {
        assert!(conf.contains(directive), "nginx.conf lacks {directive}");
    }
}

#[tokio::test]
async fn nginx_routes_like_the_original_table_corrected() {
    let front = echo_front(false).await;
    let prefix = &front.prefix;
    let base = format!("http://127.0.0.1:{}", prefix.port);
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();

    // path -> (upstream, URI it receives): the same URI, query string included, except the
    // health checks.
    let same_uri = [
        ("/oauth/token?grant_type=password", "auth"),
        ("/oauth/authorize?client_id=x&state=y", "auth"),
        ("/.well-known/jwks.json", "auth"),
        ("/.well-known/oauth-authorization-server", "auth"),
        ("/api/v1/health", "gateway"),
        ("/api/v1/sessions?limit=5&offset=10", "gateway"),
        ("/api/v1/events/metrics/session/abc", "gateway"),
        ("/", "website"),
        ("/docs/deployment?lang=ru", "website"),
    ];
    let table = same_uri
        .into_iter()
        .map(|(path, upstream)| (path, upstream, path))
        .chain([
            ("/auth-health", "auth", "/health"),
            ("/gateway-health", "gateway", "/health"),
        ]);
    for (path, expected_upstream, expected_uri) in table {
        let seen = get_json(&client, &format!("{base}{path}")).await;
        assert_eq!(seen["upstream"], expected_upstream, "{path}: {seen}");
        assert_eq!(seen["uri"], expected_uri, "{path}: {seen}");
    }

    let health = send(client.get(format!("{base}/nginx-health"))).await;
    assert_eq!(health.status(), 200);
    assert_eq!(health.text().await.unwrap(), "healthy\n");

    // Forwarding headers: the client's address appended to its own X-Forwarded-For, the
    // scheme, the host without the port, a request id (the client's when it sent one).
    let seen = fetch_json(
        client
            .get(format!("{base}/api/v1/sessions"))
            .header("x-forwarded-for", "203.0.113.9")
            .header("x-request-id", "req-abc-123"),
    )
    .await;
    assert_eq!(seen["x_forwarded_for"], "203.0.113.9, 127.0.0.1", "{seen}");
    assert_eq!(seen["x_real_ip"], "127.0.0.1");
    assert_eq!(seen["x_forwarded_proto"], "http");
    assert_eq!(seen["host"], "127.0.0.1");
    assert_eq!(seen["x_forwarded_host"], "127.0.0.1");
    assert_eq!(seen["x_request_id"], "req-abc-123");
    let seen = get_json(&client, &format!("{base}/oauth/token")).await;
    let generated = seen["x_request_id"].as_str().unwrap();
    assert_eq!(generated.len(), 32, "nginx's $request_id: {seen}");
    assert_eq!(seen["x_forwarded_for"], "127.0.0.1");

    // Bodies up to 50 MB pass (nginx's default is 1 MB); larger ones are refused by nginx.
    let body = vec![b'x'; 2 * 1024 * 1024];
    let seen = fetch_json(client.post(format!("{base}/api/v1/files")).body(body)).await;
    assert_eq!(seen["body_len"], 2 * 1024 * 1024);
    let mut raw = tokio::net::TcpStream::connect(("127.0.0.1", prefix.port))
        .await
        .unwrap();
    raw.write_all(
        b"POST /api/v1/files HTTP/1.1\r\nHost: localhost\r\nContent-Length: 62914560\r\n\r\n",
    )
    .await
    .unwrap();
    let mut head = vec![0; 64];
    let n = raw.read(&mut head).await.unwrap();
    assert!(
        String::from_utf8_lossy(&head[..n]).starts_with("HTTP/1.1 413"),
        "{}",
        String::from_utf8_lossy(&head[..n])
    );

    // The WebSocket upgrade passes, with the query string (token, protocol) intact.
    let ws_url = format!(
        "ws://127.0.0.1:{}/api/v1/ws/session-42?access_token=tok.en-1&protocol=2",
        prefix.port
    );
    let (mut socket, response) = tokio_tungstenite::connect_async(ws_url.as_str())
        .await
        .unwrap();
    assert_eq!(response.status(), 101);
    let first = tokio::time::timeout(Duration::from_secs(5), socket.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(
        first.into_text().unwrap().as_str(),
        "/api/v1/ws/session-42?access_token=tok.en-1&protocol=2"
    );
    socket
        .send(tokio_tungstenite::tungstenite::Message::Text("ping".into()))
        .await
        .unwrap();
    let echoed = tokio::time::timeout(Duration::from_secs(5), socket.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(echoed.into_text().unwrap().as_str(), "echo ping");
    socket.close(None).await.unwrap();

    // Streams are not buffered: the first event arrives while the upstream still writes.
    let started = Instant::now();
    let mut stream = client
        .get(format!("{base}/api/v1/stream"))
        .send()
        .await
        .unwrap()
        .bytes_stream();
    let first = stream.next().await.unwrap().unwrap();
    assert!(String::from_utf8_lossy(&first).contains("first"));
    assert!(
        started.elapsed() < Duration::from_millis(1200),
        "the first event waited for the whole stream ({:?})",
        started.elapsed()
    );
    let mut rest = Vec::new();
    while let Some(chunk) = stream.next().await {
        rest.extend_from_slice(&chunk.unwrap());
    }
    assert!(String::from_utf8_lossy(&rest).contains("second"));

    // The website down: `/` answers 503 with the endpoint list; the API is unaffected.
    front.website.abort();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let down = client.get(format!("{base}/")).send().await.unwrap();
    assert_eq!(down.status(), 503);
    let text = down.text().await.unwrap();
    assert!(
        text.contains("/api/v1/") && text.contains("/oauth/token"),
        "{text}"
    );
    let seen = get_json(&client, &format!("{base}/api/v1/health")).await;
    assert_eq!(seen["upstream"], "gateway");
}

#[tokio::test]
async fn with_tls_conf_nginx_serves_https_with_hsts_and_redirects_http() {
    let front = echo_front(true).await;
    let prefix = &front.prefix;
    let tls_port = prefix.tls_port.unwrap();
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .danger_accept_invalid_certs(true)
        .build()
        .unwrap();

    // Plain HTTP is redirected with the path and query kept, to the configured public address
    // whatever Host the client sends (a forged Host must not turn the redirect into an open
    // redirect to the attacker's site)...
    let public = public_https_url(tls_port);
    for host in [None, Some("evil.example"), Some("evil.example:8443")] {
        let mut request = client.get(format!(
            "http://127.0.0.1:{}/api/v1/sessions?limit=1",
            prefix.port
        ));
        if let Some(host) = host {
            request = request.header("host", host);
        }
        let redirect = request.send().await.unwrap();
        assert_eq!(redirect.status(), 301, "Host {host:?}");
        assert_eq!(
            redirect.headers()["location"],
            format!("{public}/api/v1/sessions?limit=1").as_str(),
            "Host {host:?}"
        );
    }
    // ...except the container health check.
    let health = send(client.get(format!("http://127.0.0.1:{}/nginx-health", prefix.port))).await;
    assert_eq!(health.status(), 200);

    // HTTPS routes the same table, says so upstream, and sends HSTS.
    let response = send(client.get(format!("https://127.0.0.1:{tls_port}/oauth/token?x=1"))).await;
    assert_eq!(response.status(), 200);
    let hsts = response.headers()["strict-transport-security"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(hsts.starts_with("max-age=63072000"), "{hsts}");
    let seen: Value = response.json().await.unwrap();
    assert_eq!(seen["upstream"], "auth");
    assert_eq!(seen["uri"], "/oauth/token?x=1");
    assert_eq!(seen["x_forwarded_proto"], "https");
}

#[test]
fn the_config_logs_no_request_line_query_or_referer() {
    let conf = std::fs::read_to_string(crate::common::repo_root().join("deploy/nginx/nginx.conf"))
        .unwrap();
    let code: String = conf
        .lines()
        .map(|line| line.split('#').next().unwrap())
        .collect::<Vec<_>>()
        .join("\n");
    let format = &code[code.find("log_format codelab").unwrap()..];
    let format = &format[..format.find(';').unwrap()];
    for variable in [
        "$request ",
        "$request\"",
        "$request_uri",
        "$args",
        "$query_string",
        "$arg_",
        "$http_referer",
        "$uri",
    ] {
        assert!(
            !format.contains(variable),
            "the access log format uses {variable}: {format}"
        );
    }
    assert!(format.contains("$codelab_log_path"), "{format}");
}

/// A WebSocket through nginx, opened and closed (so nginx writes its access log line).
async fn open_and_close_socket(port: u16, path: &str) {
    let url = format!("ws://127.0.0.1:{port}{path}");
    let (mut socket, response) = tokio_tungstenite::connect_async(url.as_str())
        .await
        .unwrap();
    assert_eq!(response.status(), 101);
    let _ = tokio::time::timeout(Duration::from_secs(5), socket.next()).await;
    socket.close(None).await.unwrap();
    while let Ok(Some(_)) = tokio::time::timeout(Duration::from_secs(5), socket.next()).await {}
}

#[tokio::test]
async fn nginx_keeps_internal_routes_headers_and_credentials_from_the_internet() {
    let front = echo_front(false).await;
    let prefix = &front.prefix;
    let base = prefix.url();
    let client = reqwest::Client::new();

    // Introspection (and every spelling nginx normalises to it) is answered by nginx: 404,
    // without reaching auth. The rest of /oauth/ still passes.
    for path in [
        "/oauth/introspect",
        "/oauth/introspect/",
        "/oauth//introspect",
        "/oauth/%69ntrospect",
        "/oauth/./introspect",
        "/oauth/x/../introspect",
    ] {
        let response = send(
            client
                .post(format!("{base}{path}"))
                .header("content-type", "application/x-www-form-urlencoded")
                .body("token=x&client_id=codelab-internal&client_secret=wrong"),
        )
        .await;
        assert_eq!(response.status(), 404, "{path}");
        let body = response.text().await.unwrap();
        assert!(
            !body.contains("upstream"),
            "{path} reached an upstream: {body}"
        );
    }
    let seen = get_json(&client, &format!("{base}/oauth/revoke")).await;
    assert_eq!(seen["upstream"], "auth");

    // The website's metrics and readiness are not public; its pages are.
    for path in ["/metrics", "/ready", "/metrics?x=1"] {
        let response = client.get(format!("{base}{path}")).send().await.unwrap();
        assert_eq!(response.status(), 404, "{path}");
    }
    assert_eq!(
        get_json(&client, &format!("{base}/docs")).await["upstream"],
        "website"
    );

    // A client's internal headers never reach a service, in any letter case, on any route.
    for path in [
        "/api/v1/sessions",
        "/oauth/token",
        "/.well-known/jwks.json",
        "/docs",
    ] {
        for (auth_name, user_name) in [
            ("X-Internal-Auth", "X-Codelab-User-Id"),
            ("x-internal-auth", "x-codelab-user-id"),
            ("X-INTERNAL-AUTH", "X-CODELAB-USER-ID"),
        ] {
            let seen = fetch_json(
                client
                    .get(format!("{base}{path}"))
                    .header(auth_name, "the-runtime-key-the-attacker-guessed")
                    .header(user_name, "victim"),
            )
            .await;
            assert!(seen["upstream"].is_string(), "{path}: {seen}");
            assert_eq!(seen["x_internal_auth"], Value::Null, "{path}: {seen}");
            assert_eq!(seen["x_codelab_user_id"], Value::Null, "{path}: {seen}");
        }
    }
    // Underscore spellings are dropped by nginx as invalid header names.
    let mut raw = tokio::net::TcpStream::connect(("127.0.0.1", prefix.port))
        .await
        .unwrap();
    raw.write_all(
        b"GET /api/v1/sessions HTTP/1.1\r\nHost: localhost\r\nX_Internal_Auth: k\r\n\
          X_Codelab_User_Id: victim\r\nConnection: close\r\n\r\n",
    )
    .await
    .unwrap();
    let mut answer = String::new();
    raw.read_to_string(&mut answer).await.unwrap();
    assert!(answer.contains("\"x_internal_auth\":null"), "{answer}");
    assert!(answer.contains("\"x_codelab_user_id\":null"), "{answer}");

    // Session ids and tokens reach the gateway but not the access log.
    let session = "0b9f6a52-5d0e-4c55-8f0d-3f1d2c4b5a69";
    let token = "eyJhbGciOiJSUzI1NiJ9.SECRET-ACCESS-TOKEN.sig";
    let code = "SECRET-AUTHORIZATION-CODE";
    open_and_close_socket(
        prefix.port,
        &format!("/api/v1/ws/{session}?access_token={token}&protocol=2"),
    )
    .await;
    for path in [
        format!("/api/v1/sessions/{session}/history?access_token={token}"),
        format!("/api/v1/sessions/{session}"),
        format!("/console/chat/{session}"),
        format!("/console/sessions/{session}/approvals/call-1"),
        format!("/console/callback?code={code}&state=s"),
        format!("/oauth/authorize?client_id=x&code_challenge={code}"),
    ] {
        let response = send(client.get(format!("{base}{path}")).header(
            "referer",
            format!("{base}/console/chat/{session}?t={token}"),
        ))
        .await;
        assert_eq!(response.status(), 200, "{path}");
    }
    // nginx writes a WebSocket's line when the connection ends: wait (bounded) for all of them.
    let deadline = Instant::now() + Duration::from_secs(10);
    let log = loop {
        let log = prefix.access_log();
        if log.contains("/api/v1/ws/:id") && log.contains("/oauth/authorize") {
            break log;
        }
        assert!(Instant::now() < deadline, "access log incomplete:\n{log}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    for secret in [session, token, "SECRET", code, "access_token"] {
        assert!(
            !log.contains(secret),
            "the access log holds {secret:?}:\n{log}"
        );
    }
    for route in [
        "\"GET /api/v1/ws/:id HTTP/1.1\" 101",
        "\"GET /api/v1/sessions/:id/history HTTP/1.1\" 200",
        "\"GET /api/v1/sessions/:id HTTP/1.1\" 200",
        "\"GET /console/chat/:id HTTP/1.1\" 200",
        "\"GET /console/sessions/:id/approvals/call-1 HTTP/1.1\" 200",
        "\"GET /console/callback HTTP/1.1\" 200",
    ] {
        assert!(log.contains(route), "the access log lacks {route}:\n{log}");
    }
}
