//! The gateway in the `codelab` binary: `codelab up` routes `/api/v1/` and `/gateway-health`
//! to it behind the public listener, `--no-auth` and production refusals.

use crate::common::cli::{Up, admin_login, fetch_json, json_of, run, send, up_in_production};

const ADMIN_PASSWORD: &str = "gateway-cli-admin-pw";

#[tokio::test]
async fn up_routes_the_api_and_the_websocket_to_the_gateway() {
    let dir = tempfile::tempdir().unwrap();
    let up = Up::with_admin(dir.path(), ADMIN_PASSWORD, &[]);
    let (public, lines) = (&up.url, &up.summary);
    assert!(
        lines
            .iter()
            .any(|l| l.contains("Flutter IDE") && l.contains(public)),
        "{lines:?}"
    );
    let http = reqwest::Client::new();

    let health = fetch_json(http.get(format!("{public}/gateway-health"))).await;
    assert_eq!(health["service"], "gateway");

    // Without a token the gateway refuses; with the password grant's token it serves.
    let refused = send(http.get(format!("{public}/api/v1/sessions"))).await;
    assert_eq!(refused.status(), 401);
    let tokens = json_of(admin_login(public, ADMIN_PASSWORD).await).await;
    let token = tokens["access_token"].as_str().unwrap();
    let created = fetch_json(
        http.post(format!("{public}/api/v1/sessions"))
            .bearer_auth(token),
    )
    .await;
    let id = created["id"].as_str().unwrap();
    // Path parameters and the query string reach the gateway's routes intact.
    let one = send(
        http.get(format!("{public}/api/v1/sessions/{id}"))
            .bearer_auth(token),
    )
    .await;
    assert_eq!(one.status(), 200);
    let page = fetch_json(
        http.get(format!("{public}/api/v1/sessions?limit=1&offset=1"))
            .bearer_auth(token),
    )
    .await;
    assert_eq!(page["offset"], 1);

    // The WebSocket upgrade passes the public listener.
    let upgrade = send(
        http.get(format!("{public}/api/v1/ws/{id}"))
            .header("Connection", "Upgrade")
            .header("Upgrade", "websocket")
            .header("Sec-WebSocket-Version", "13")
            .header("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
    )
    .await;
    assert_eq!(upgrade.status(), 101);
}

#[tokio::test]
async fn up_without_auth_says_so_and_serves_the_development_user() {
    let dir = tempfile::tempdir().unwrap();
    let up = Up::with_admin(dir.path(), ADMIN_PASSWORD, &["--no-auth"]);
    let (public, lines) = (&up.url, &up.summary);
    assert!(
        lines
            .iter()
            .any(|l| l.contains("authentication") && l.contains("OFF")),
        "{lines:?}"
    );
    let created = send(reqwest::Client::new().post(format!("{public}/api/v1/sessions"))).await;
    assert_eq!(created.status(), 200);
}

#[test]
fn production_refuses_the_gateways_development_settings() {
    let out = run(
        &["serve", "gateway", "--port", "0"],
        &[
            ("ENVIRONMENT", "production"),
            ("GATEWAY__USE_JWT_AUTH", "false"),
            (
                "GATEWAY__INTERNAL_API_KEY",
                "a-strong-internal-key-0123456789",
            ),
        ],
    );
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("GATEWAY__USE_JWT_AUTH"), "{stderr}");

    let dir = tempfile::tempdir().unwrap();
    let out = up_in_production(dir.path(), &["--no-auth"]);
    // `up` is the development profile: in production it refuses to start at all, whatever the
    // flags, and says why.
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("ENVIRONMENT=production"), "{stderr}");
}
