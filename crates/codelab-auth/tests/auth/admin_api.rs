//! The admin API (`/admin/users`, `/admin/clients`) the website's admin pages use: only a
//! Bearer access token with `api:admin` whose user is an active administrator gets in, and
//! the changes are those of `codelab admin` (disable revokes logins, policy-checked passwords).

use crate::support::{ADMIN_PASSWORD, Auth, Backend, WEB, json_parts};
use codelab_auth::tokens::TokenType;
use reqwest::StatusCode;
use reqwest::header::HeaderMap;
use serde_json::{Value, json};

const ADMIN_SCOPES: &str = "api:read api:write api:admin";

/// An access token as the website's login gives it (client `codelab-web`).
fn web_token(auth: &Auth, user_id: &str, scope: &str) -> String {
    auth.issue(TokenType::Access, user_id, WEB, scope)
}

async fn admin_token(auth: &Auth) -> String {
    let admin = auth.user("admin").await;
    web_token(auth, &admin.id, ADMIN_SCOPES)
}

async fn get_as(auth: &Auth, path: &str, token: Option<&str>) -> (StatusCode, HeaderMap, Value) {
    call(auth, reqwest::Method::GET, path, token, None).await
}

async fn post_as(
    auth: &Auth,
    path: &str,
    token: &str,
    body: Option<Value>,
) -> (StatusCode, HeaderMap, Value) {
    call(auth, reqwest::Method::POST, path, Some(token), body).await
}

async fn call(
    auth: &Auth,
    method: reqwest::Method,
    path: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> (StatusCode, HeaderMap, Value) {
    let mut request = auth.http.request(method, auth.url(path));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    if let Some(body) = body {
        request = request
            .header("content-type", "application/json")
            .body(body.to_string());
    }
    json_parts(request).await
}

#[tokio::test]
async fn only_active_administrators_with_the_admin_scope_get_in() {
    let auth = Auth::start(Backend::Sqlite).await;

    let (status, headers, _) = get_as(&auth, "/admin/users", None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(
        headers["www-authenticate"]
            .to_str()
            .unwrap()
            .starts_with("Bearer")
    );

    let (status, _, body) = get_as(&auth, "/admin/users", Some("not-a-jwt")).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(body["error"], "invalid_token");

    // The Flutter client's token: a real admin, but no api:admin scope.
    let flutter = auth.login("admin", ADMIN_PASSWORD).await;
    let (status, headers, body) = get_as(&auth, "/admin/users", Some(&flutter.access)).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(body["error"], "insufficient_scope");
    assert!(
        headers["www-authenticate"]
            .to_str()
            .unwrap()
            .contains("scope=\"api:admin\"")
    );

    // A user who is not an administrator, even with a token claiming the scope.
    let bob = auth.add_user("bob", "bob-password-123").await;
    let forged_scope = web_token(&auth, &bob.id, ADMIN_SCOPES);
    let (status, _, _) = get_as(&auth, "/admin/clients", Some(&forged_scope)).await;
    assert_eq!(status, StatusCode::FORBIDDEN);

    // A refresh token is not an access token.
    let admin = auth.user("admin").await;
    let refresh = auth.issue(TokenType::Refresh, &admin.id, WEB, ADMIN_SCOPES);
    let (status, _, _) = get_as(&auth, "/admin/users", Some(&refresh)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    let token = admin_token(&auth).await;
    let (status, headers, body) = get_as(&auth, "/admin/users", Some(&token)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(headers["cache-control"], "no-store");
    let names: Vec<&str> = body["users"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["username"].as_str().unwrap())
        .collect();
    assert_eq!(names, vec!["admin", "bob"]);
    assert!(
        !body.to_string().contains("password"),
        "no hash leaks: {body}"
    );

    let (status, _, body) = get_as(&auth, "/admin/clients", Some(&token)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let web = body["clients"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["client_id"] == "codelab-web")
        .unwrap();
    assert_eq!(web["is_confidential"], false);
    assert!(!body.to_string().contains("secret_hash"), "{body}");
}

#[tokio::test]
async fn users_are_created_disabled_enabled_and_given_new_passwords() {
    let auth = Auth::start(Backend::Sqlite).await;
    let token = admin_token(&auth).await;

    let carol =
        json!({"username": "carol", "password": "carol-password-1", "email": "Carol@Example.com"});
    let (status, _, user) = post_as(&auth, "/admin/users", &token, Some(carol)).await;
    assert_eq!(status, StatusCode::CREATED, "{user}");
    assert_eq!(user["username"], "carol");
    assert_eq!(user["email"], "carol@example.com");
    assert_eq!(user["is_admin"], false);
    let carol = auth.login("carol", "carol-password-1").await;

    // The same name again, a short password, an unknown field: refused with a reason.
    let taken = json!({"username": "carol", "password": "another-password"});
    let (status, _, body) = post_as(&auth, "/admin/users", &token, Some(taken)).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    let short = json!({"username": "dave", "password": "short"});
    let (status, _, body) = post_as(&auth, "/admin/users", &token, Some(short)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["error"], "invalid_request");
    let unknown_field = json!({"username": "dave", "password": "long-enough-1", "role": "root"});
    let (status, _, _) = post_as(&auth, "/admin/users", &token, Some(unknown_field)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    // Disabling ends the user's logins.
    let (status, _, body) = post_as(&auth, "/admin/users/carol/disable", &token, None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["user"]["is_active"], false);
    assert_eq!(body["revoked_refresh_tokens"], 1);
    let (status, _) = auth.refresh(carol.refresh.as_deref().unwrap()).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    let (status, _, body) = post_as(&auth, "/admin/users/carol/enable", &token, None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["user"]["is_active"], true);

    let password = json!({"password": "a-brand-new-password"});
    let (status, _, body) =
        post_as(&auth, "/admin/users/carol/password", &token, Some(password)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    auth.login("carol", "a-brand-new-password").await;

    let (status, _, _) = post_as(&auth, "/admin/users/nobody/disable", &token, None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _, _) = post_as(&auth, "/admin/users/carol/explode", &token, None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    // An administrator cannot lock themselves out.
    let (status, _, _) = post_as(&auth, "/admin/users/admin/disable", &token, None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    // Every change left its audit row, and no row holds a password.
    let rows = auth.audit_rows().await;
    let events: Vec<&str> = rows.iter().map(|r| r.event.event_type.as_str()).collect();
    for expected in [
        "admin_user_add",
        "admin_user_disable",
        "admin_user_enable",
        "admin_password_change",
    ] {
        assert!(events.contains(&expected), "{events:?}");
    }
    let text = format!("{rows:?}");
    assert!(!text.contains("a-brand-new-password") && !text.contains("carol-password-1"));
}
