//! Plans on the console's session page without a browser engine: the plan the Flutter IDE's
//! architect proposed is listed with its decision forms; a decision needs the form's CSRF
//! token, another user's decision is refused (404) and changes nothing, `modify` needs
//! feedback, and an approval runs the plan to completion, which the page then shows. Modify
//! brings version 2, cancel ends a plan, and a failed plan offers retry, skip and cancel.
use std::time::Duration;

use crate::common::{self, ADMIN_PASSWORD, Browser, Layout, Page, USER_PASSWORD, start_site};
use codelab_testkit::ide_clients::steps::user_message_to;
use codelab_testkit::ide_clients::{FlutterReplicaClient, FlutterSocket};
use reqwest::StatusCode;
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(30);

/// What the session page shows while a turn runs.
const RUNNING_TURN: &str = "Cancel the running turn";

/// The mock model's script for the architect: a one-subtask plan whose coder replies "did a".
const PLAN_MESSAGE: &str = r#"::tool create_plan {"title":"T","description":"D","subtasks":[{"title":"a","description":"::reply did a","agent":"coder","estimated_time_minutes":1}]}"#;

/// A `create_plan` line for the mock model: `subtasks` are (title, agent, the subtask's own
/// mock script).
fn create_plan(title: &str, subtasks: &[(&str, &str, &str)]) -> String {
    let subtasks: Vec<Value> = subtasks
        .iter()
        .map(|(title, agent, script)| {
            json!({"title": title, "description": script, "agent": agent,
                   "estimated_time_minutes": 2})
        })
        .collect();
    let arguments = json!({"title": title, "description": "the goal", "subtasks": subtasks});
    format!("::tool create_plan {arguments}")
}

/// A session of the admin's Flutter IDE whose architect was sent `script` and proposed a plan
/// (one assistant message for an IDE that renders no plan frames), and its socket.
async fn proposed(site: &common::Site, script: &str) -> (String, FlutterSocket) {
    let mut client = FlutterReplicaClient::new(&site.gateway_url).with_timeout(WAIT);
    client
        .login(&site.auth_url, "admin", ADMIN_PASSWORD)
        .await
        .unwrap();
    let session = client.create_session().await.unwrap().id;
    let mut ide = client.connect(&session).await.unwrap();
    ide.send_raw_text(&user_message_to("architect", script).to_string())
        .await
        .unwrap();
    ide.wait_for("the plan", |frame| {
        frame.raw.contains("waits for your decision")
    })
    .await
    .unwrap();
    (session, ide)
}

/// The session page at `page_url` once it shows the plan `plan_id` as `status` (reloaded
/// until then, at most [`WAIT`]).
async fn page_once(browser: &mut Browser, page_url: &str, plan_id: &str, status: &str) -> Page {
    page_showing(browser, page_url, &[&shown_as(plan_id, status)], &[]).await
}

/// The session page at `page_url` once it shows every one of `texts` and none of `absent`
/// (reloaded until then, at most [`WAIT`]).
async fn page_showing(
    browser: &mut Browser,
    page_url: &str,
    texts: &[&str],
    absent: &[&str],
) -> Page {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let page = browser.get(page_url).await;
        if texts.iter().all(|text| page.body.contains(text))
            && !absent.iter().any(|text| page.body.contains(text))
        {
            return page;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the page never showed {texts:?} without {absent:?}: {}",
            page.body
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The value of the first `name="..."` attribute in `html`.
fn attribute(html: &str, name: &str) -> Option<String> {
    let marker = format!("{name}=\"");
    let start = html.find(&marker)? + marker.len();
    let end = html[start..].find('"')? + start;
    Some(html[start..end].to_owned())
}

/// The marker of the plan's state on the session page.
fn shown_as(plan_id: &str, status: &str) -> String {
    format!("data-plan-id=\"{plan_id}\" data-status=\"{status}\"")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn plan_decisions_in_the_console_need_the_csrf_token_and_the_plans_owner() {
    let site = start_site(Layout::SeparateOrigins).await;

    // The admin's Flutter IDE asks the architect, which proposes a plan.
    let (session, ide) = proposed(&site, PLAN_MESSAGE).await;

    let (mut admin, admin_csrf) = common::signed_in(&site, "admin", ADMIN_PASSWORD).await;
    let page_url = site.at(&format!("/console/sessions/{session}"));
    let page = admin.get(&page_url).await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    let plan_id = attribute(&page.body, "data-plan-id").expect("the page lists the plan");
    assert!(
        page.body.contains(&shown_as(&plan_id, "awaiting_approval")),
        "{}",
        page.body
    );
    for shown in [
        "version 1",
        "1. a",
        "coder",
        "~1 min",
        "pending",
        "value=\"approve\"",
    ] {
        assert!(page.body.contains(shown), "{shown} missing: {}", page.body);
    }
    // The plan's create_plan call is decided with the plan, not offered as a call to edit.
    assert!(!page.body.contains("Waiting for approval"), "{}", page.body);
    let decision_url = format!("{page_url}/plans/{plan_id}");

    // Without the CSRF token, or with another, the decision is refused.
    let refused = admin.post(&decision_url, &[("decision", "approve")]).await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN);
    assert!(refused.body.contains("CSRF"), "{}", refused.body);
    let forged = [("decision", "approve"), ("csrf_token", "forged")];
    let refused = admin.post(&decision_url, &forged).await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN);

    // Bob, signed in with his own valid form token, cannot decide the admin's plan: from the
    // admin's session address the gateway's 404 leads to a page Bob cannot see either…
    let (mut bob, bob_csrf) = common::signed_in(&site, "bob", USER_PASSWORD).await;
    let approve = [("decision", "approve"), ("csrf_token", bob_csrf.as_str())];
    let refused = bob.post(&decision_url, &approve).await;
    assert_eq!(refused.status, StatusCode::NOT_FOUND, "{}", refused.body);
    // …and from his own session's page the gateway's 404 is shown there.
    let chat = bob
        .post(&site.at("/console/chat"), &[("csrf_token", &bob_csrf)])
        .await;
    let bobs_session = chat.url.rsplit('/').next().unwrap().to_owned();
    let bobs_url = site.at(&format!("/console/sessions/{bobs_session}/plans/{plan_id}"));
    let refused = bob.post(&bobs_url, &approve).await;
    assert_eq!(refused.status, StatusCode::OK, "{}", refused.body);
    assert!(refused.url.ends_with(&bobs_session), "{}", refused.url);
    assert!(
        refused.body.contains("flash-error") && refused.body.contains("not found"),
        "{}",
        refused.body
    );

    // Modify without feedback is sent nowhere.
    let modify = [
        ("decision", "modify"),
        ("feedback", "  "),
        ("csrf_token", admin_csrf.as_str()),
    ];
    let answer = admin.post(&decision_url, &modify).await;
    assert!(
        answer.body.contains("Modify needs feedback"),
        "{}",
        answer.body
    );
    // None of that reached the plan.
    let page = admin.get(&page_url).await;
    assert!(
        page.body.contains(&shown_as(&plan_id, "awaiting_approval")),
        "{}",
        page.body
    );

    // Approved in the console: the plan runs to completion.
    let approve = [("decision", "approve"), ("csrf_token", admin_csrf.as_str())];
    let answer = admin.post(&decision_url, &approve).await;
    assert_eq!(answer.status, StatusCode::OK);
    assert!(answer.body.contains("Plan approved"), "{}", answer.body);
    let page = page_once(&mut admin, &page_url, &plan_id, "completed").await;
    assert!(
        page.body
            .contains("data-subtask=\"0\" data-status=\"completed\""),
        "{}",
        page.body
    );
    assert!(page.body.contains("did a"), "{}", page.body);
    assert!(
        !page.body.contains("value=\"approve\""),
        "a completed plan keeps its buttons"
    );

    // Rejecting it now is refused by the gateway (409: it no longer waits) and shown, not a
    // crash. (Approving again is a repeated decision, which the runtime accepts as a notice.)
    let reject = [("decision", "reject"), ("csrf_token", admin_csrf.as_str())];
    let late = admin.post(&decision_url, &reject).await;
    assert_eq!(late.status, StatusCode::OK);
    assert!(late.body.contains("flash-error"), "{}", late.body);
    let page = admin.get(&page_url).await;
    assert!(
        page.body.contains(&shown_as(&plan_id, "completed")),
        "{}",
        page.body
    );
    ide.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn modify_brings_a_new_version_cancel_ends_it_and_a_failure_is_retried_or_skipped() {
    let site = start_site(Layout::SeparateOrigins).await;
    let (mut admin, csrf) = common::signed_in(&site, "admin", ADMIN_PASSWORD).await;
    let decide = |decision: &'static str, feedback: &'static str| {
        [
            ("decision", decision),
            ("feedback", feedback),
            ("csrf_token", csrf.as_str()),
        ]
    };

    // Modify: the architect's second step writes version 2 (the mock's `::step 2`).
    let first = create_plan("V1", &[("only", "coder", "::reply one")]);
    let second = create_plan(
        "V2",
        &[("a", "coder", "::reply a"), ("b", "coder", "::reply b")],
    );
    let (session, ide) = proposed(&site, &format!("{first}\n::step 2 {second}")).await;
    let page_url = site.at(&format!("/console/sessions/{session}"));
    let page = admin.get(&page_url).await;
    let plan_id = attribute(&page.body, "data-plan-id").unwrap();
    let decision_url = format!("{page_url}/plans/{plan_id}");
    let answer = admin
        .post(&decision_url, &decide("modify", "split it in two"))
        .await;
    assert!(answer.body.contains("Changes asked for"), "{}", answer.body);
    let waiting = shown_as(&plan_id, "awaiting_approval");
    let page = page_showing(&mut admin, &page_url, &[&waiting, "version 2"], &[]).await;
    for shown in ["V2", "2. b"] {
        assert!(page.body.contains(shown), "{shown} missing: {}", page.body);
    }
    // Cancel ends it: every subtask cancelled, no decision left to take.
    let answer = admin.post(&decision_url, &decide("cancel", "")).await;
    assert!(answer.body.contains("Plan cancelled"), "{}", answer.body);
    let page = page_once(&mut admin, &page_url, &plan_id, "cancelled").await;
    assert!(
        page.body
            .contains("data-subtask=\"1\" data-status=\"cancelled\""),
        "{}",
        page.body
    );
    assert!(!page.body.contains("name=\"decision\""), "{}", page.body);
    ide.close().await;

    // A subtask the model fails stops the plan: Retry, Skip and Cancel are offered.
    let fragile = create_plan(
        "Fragile",
        &[
            ("breaks", "coder", "::error 500"),
            ("after", "coder", "::reply after ran"),
        ],
    );
    let (session, ide) = proposed(&site, &fragile).await;
    let page_url = site.at(&format!("/console/sessions/{session}"));
    let page = admin.get(&page_url).await;
    let plan_id = attribute(&page.body, "data-plan-id").unwrap();
    let decision_url = format!("{page_url}/plans/{plan_id}");
    admin.post(&decision_url, &decide("approve", "")).await;
    // Failed, and its turn over (a decision while the turn runs would be a conflict).
    let failed = shown_as(&plan_id, "failed");
    let ended = [failed.as_str()];
    let page = page_showing(&mut admin, &page_url, &ended, &[RUNNING_TURN]).await;
    assert!(
        page.body
            .contains("data-subtask=\"0\" data-status=\"failed\""),
        "{}",
        page.body
    );
    for button in ["retry", "skip", "cancel"] {
        let shown = format!("value=\"{button}\"");
        assert!(page.body.contains(&shown), "{shown} missing: {}", page.body);
    }
    assert!(!page.body.contains("value=\"approve\""), "{}", page.body);
    // Retried, it fails again (the mock answers 500 again); skipped, the rest runs.
    let answer = admin.post(&decision_url, &decide("retry", "")).await;
    assert!(answer.body.contains("Retrying"), "{}", answer.body);
    // (The retry's turn is running when the answer comes: the gateway waits for the runtime's
    // first event on the decision.)
    page_showing(&mut admin, &page_url, &ended, &[RUNNING_TURN]).await;
    let answer = admin.post(&decision_url, &decide("skip", "")).await;
    assert!(answer.body.contains("skipped"), "{}", answer.body);
    let page = page_once(&mut admin, &page_url, &plan_id, "completed").await;
    for step in [
        "data-subtask=\"0\" data-status=\"skipped\"",
        "data-subtask=\"1\" data-status=\"completed\"",
        "after ran",
    ] {
        assert!(page.body.contains(step), "{step} missing: {}", page.body);
    }
    ide.close().await;
}
