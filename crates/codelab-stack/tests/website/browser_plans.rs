//! Plans in a real browser: `tests/website/browser/plans.mjs` drives headless Chromium (as
//! `browser.rs` does) through the browser chat, where the architect proposes a plan that is
//! approved and followed live, and the session page, where a second plan is approved and seen
//! completed after reloads. The gateway then confirms both plans ran. Screenshots go to
//! `target/artifacts/website/` (`20-…` to `23-…`).
use std::time::Duration;

use crate::browser::{assert_screenshots, browser_tools, finish_walk, passed, start_walk};
use crate::common::{ADMIN_PASSWORD, Layout, start_site};
use codelab_testkit::ide_clients::FlutterReplicaClient;
use serde_json::Value;

/// The whole walk must fit in this (two cores shared with other builds).
const BROWSER_TIMEOUT: Duration = Duration::from_secs(240);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn plans_are_approved_in_the_browser_chat_and_on_the_session_page() {
    let tools = browser_tools();
    let site = start_site(Layout::SingleOrigin).await;

    let child = start_walk(
        &tools,
        "plans.mjs",
        &[("SITE_URL", &site.url), ("ADMIN_PASSWORD", ADMIN_PASSWORD)],
    );
    let (status, steps, errors) = tokio::time::timeout(BROWSER_TIMEOUT, finish_walk(child))
        .await
        .expect("the browser walk took too long");
    assert!(
        status.success(),
        "the browser walk failed: {steps:?}\n{errors}"
    );
    let done = passed(&steps);
    for step in [
        "signed_in",
        "chat_plan_shown",
        "chat_plan_live",
        "session_plan_shown",
        "session_plan_approved",
        "session_plan_completed",
        "done",
    ] {
        assert!(done.contains(&step), "step {step} missing: {steps:?}");
    }
    assert_screenshots(
        &tools,
        &[
            "20-chat-plan",
            "21-chat-plan-done",
            "22-session-plan",
            "23-session-plan-done",
        ],
    );

    // What the pages showed is what the runtime stored: both plans ran to completion.
    let last = steps.iter().find(|s| s["step"] == "done").unwrap();
    let session = last["session"].as_str().unwrap();
    let mut client = FlutterReplicaClient::new(&site.url);
    client
        .login(&site.url, "admin", ADMIN_PASSWORD)
        .await
        .unwrap();
    let plans: Value = reqwest::Client::new()
        .get(site.at(&format!("/api/v1/sessions/{session}/plans")))
        .bearer_auth(client.access_token().unwrap())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let plans = plans["plans"].as_array().unwrap();
    let ids: Vec<&str> = plans.iter().map(|p| p["id"].as_str().unwrap()).collect();
    assert_eq!(
        ids,
        [&last["first"], &last["second"]].map(|id| id.as_str().unwrap())
    );
    for plan in plans {
        assert_eq!(plan["status"], "completed", "{plan}");
        assert_eq!(plan["subtasks"][0]["status"], "completed", "{plan}");
        assert_eq!(plan["subtasks"][0]["result"], "did a", "{plan}");
    }
}
