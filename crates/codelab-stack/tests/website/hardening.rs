//! Attacks on what the website hands out: the chat page's token (read by the page's script, so
//! it must be narrow and short-lived). `/ready`, which needs the website alone, is attacked in
//! `crates/codelab-website/tests/hardening.rs`.
use std::sync::Arc;

use crate::common::{self, ADMIN_PASSWORD, Layout, json, start_site, start_site_with};
use base64::Engine;
use codelab_core::clock::SystemClock;
use reqwest::StatusCode;
use serde_json::Value;

/// The claims of a JWT (its signature is the gateway's business here).
fn claims(token: &str) -> Value {
    let payload = token.split('.').nth(1).unwrap();
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .unwrap();
    serde_json::from_slice(&bytes).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_chat_token_of_an_administrator_cannot_administer_and_lives_at_most_five_minutes() {
    let site = start_site(Layout::SingleOrigin).await;
    let (mut browser, csrf) = common::signed_in(&site, "admin", ADMIN_PASSWORD).await;
    let answer = browser.chat_token(&site, &csrf).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    let body = json(&answer);
    let token = body["access_token"].as_str().unwrap();
    let claims = claims(token);
    assert_eq!(claims["scope"], "api:read api:write", "{claims}");
    let lifetime = claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap();
    assert!(lifetime > 0 && lifetime <= 300, "valid for {lifetime} s");
    assert!(body["expires_in"].as_u64().unwrap() <= 300, "{body}");

    // The token is refused by the admin API it would have reached before...
    let admin_api = reqwest::Client::new()
        .get(format!("{}/admin/users", site.auth_url))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(admin_api.status(), StatusCode::FORBIDDEN);
    // ...while the administrator's console keeps its own rights.
    let admin_page = browser.get(&site.at("/console/admin")).await;
    assert_eq!(admin_page.status, StatusCode::OK, "{}", admin_page.body);
    assert!(admin_page.url.ends_with("/console/admin"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_administrators_console_keeps_its_rights_after_handing_out_chat_tokens() {
    // The website's clock runs ahead so its own token needs a refresh; that refresh must give
    // back the whole grant (RFC 6749 §6: a rotated refresh token keeps its scope), not the
    // chat token's narrow one.
    let clock = codelab_core::clock::ManualClock::starting_now();
    let site = start_site_with(Layout::SingleOrigin, Arc::new(clock.clone()), None).await;
    let (mut browser, csrf) = common::signed_in(&site, "admin", ADMIN_PASSWORD).await;
    for _ in 0..2 {
        let answer = browser.chat_token(&site, &csrf).await;
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    }
    clock.advance(std::time::Duration::from_secs(6 * 60));
    let admin_page = browser.get(&site.at("/console/admin")).await;
    assert_eq!(admin_page.status, StatusCode::OK, "{}", admin_page.body);
    assert!(
        admin_page.body.contains("bob"),
        "the user list needs api:admin: {}",
        admin_page.body
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_long_lived_token_is_never_handed_to_the_page() {
    // An auth service issuing 15-minute tokens to the website's client.
    let site = start_site_with(Layout::SingleOrigin, Arc::new(SystemClock), Some(900)).await;
    let (mut browser, csrf) = common::signed_in(&site, "admin", ADMIN_PASSWORD).await;
    let answer = browser.chat_token(&site, &csrf).await;
    assert_eq!(answer.status, StatusCode::BAD_GATEWAY, "{}", answer.body);
    let body = json(&answer);
    assert_eq!(body["error"], "token_refused", "{body}");
    assert!(body.get("access_token").is_none(), "{body}");
    assert!(!answer.body.contains("eyJ"), "no token in {}", answer.body);
}
