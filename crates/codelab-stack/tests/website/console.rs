//! The website end to end without a browser engine: the docs and their headers, signing in
//! through the auth service's real login form (authorization code + PKCE), the session list
//! and page of a session the Flutter IDE replica made, an approval in the console reaching
//! the IDE's socket, CSRF refusals, the status page, the admin pages and signing out.
use std::sync::Arc;
use std::time::Duration;

use crate::common::{
    self, ADMIN_PASSWORD, Browser, Layout, USER_PASSWORD, json, start_site, start_site_with,
};
use codelab_testkit::ide_clients::steps::{is_tool_call, report_ran, tool_call_of};
use reqwest::{Method, StatusCode};

const WAIT: Duration = Duration::from_secs(30);

/// No `<script>` without `src`: the CSP allows no inline script, and pages carry none.
fn assert_no_inline_script(html: &str) {
    for (at, _) in html.match_indices("<script") {
        let tag = &html[at..at + html[at..].find('>').unwrap()];
        assert!(tag.contains(" src=\"/assets/"), "inline script: {tag}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn docs_pages_search_assets_and_error_pages_carry_the_security_headers() {
    let site = start_site(Layout::SingleOrigin).await;
    let mut browser = Browser::new();

    for path in [
        "/",
        "/docs",
        "/docs/auth",
        "/docs/websocket-protocol",
        "/console",
    ] {
        let page = browser.get(&site.at(path)).await;
        assert_eq!(page.status, StatusCode::OK, "{path}");
        assert!(
            page.header("content-type").starts_with("text/html"),
            "{path}"
        );
        let csp = page.header("content-security-policy");
        assert!(csp.contains("script-src 'self'"), "{path}: {csp}");
        assert!(csp.contains("frame-ancestors 'none'"), "{path}: {csp}");
        assert!(!csp.contains("unsafe-inline"), "{path}: {csp}");
        assert_eq!(page.header("x-frame-options"), "DENY");
        assert_eq!(page.header("x-content-type-options"), "nosniff");
        assert_eq!(page.header("referrer-policy"), "same-origin");
        assert_no_inline_script(&page.body);
    }
    let page = browser.get(&site.at("/docs/gateway")).await;
    assert!(page.body.contains("<h2 id=\"rest-endpoints\">"), "anchors");
    assert!(
        page.body.contains("href=\"/docs/auth\""),
        "doc links are rewritten"
    );
    assert!(
        page.body.contains("<span class=\"hl-"),
        "code is highlighted"
    );
    assert!(page.body.contains("On this page"));
    // The repository's file names work too.
    let moved = browser.peek(&site.at("/docs/gateway.md")).await;
    assert_eq!(moved.status, StatusCode::PERMANENT_REDIRECT);
    assert_eq!(moved.header("location"), "/docs/gateway");

    let hits = browser.get(&site.at("/docs/search?q=reconnect")).await;
    assert!(
        hits.body
            .contains("href=\"/docs/websocket-protocol#reconnecting\""),
        "{}",
        hits.body
    );
    let none = browser
        .get(&site.at("/docs/search?q=%3Cscript%3Ezzz"))
        .await;
    assert!(none.body.contains("No title or heading contains"));
    assert!(!none.body.contains("<script>zzz"), "the query is escaped");

    let missing = browser.get(&site.at("/docs/nope")).await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    assert!(missing.body.contains("Page not found"));
    assert!(
        missing
            .header("content-security-policy")
            .contains("default-src 'none'")
    );
    let missing = browser.get(&site.at("/no/such/page")).await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    assert!(missing.body.contains("<!DOCTYPE html>"));

    let css = browser.get(&site.at("/assets/style.css")).await;
    assert_eq!(css.status, StatusCode::OK);
    assert!(css.header("content-type").starts_with("text/css"));
    let etag = css.header("etag").to_owned();
    let cached = browser
        .send(
            Method::GET,
            &site.at("/assets/style.css"),
            None,
            &[("if-none-match", &etag)],
        )
        .await;
    assert_eq!(cached.status, StatusCode::NOT_MODIFIED);

    // Console pages ask for a login (and never show data to a stranger).
    let anonymous = browser.peek(&site.at("/console/sessions")).await;
    assert_eq!(anonymous.status, StatusCode::SEE_OTHER);
    assert_eq!(
        anonymous.header("location"),
        "/console/login?next=%2Fconsole%2Fsessions"
    );
    let status = browser.peek(&site.at("/console/status.json")).await;
    assert_eq!(status.status, StatusCode::UNAUTHORIZED);
}

/// Posts `decision` to the console's approval form at `url` with the `csrf` token.
async fn decide(browser: &mut Browser, url: &str, decision: &str, csrf: &str) -> common::Page {
    let form = [("decision", decision), ("csrf_token", csrf)];
    browser.post(url, &form).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_approval_in_the_console_reaches_the_ide_and_the_session_page_shows_the_call() {
    let site = start_site(Layout::SeparateOrigins).await;

    // The Flutter IDE: a session with a write that waits for approval.
    let (session, mut ide, call) =
        common::ide_with_a_waiting_write(&site.gateway_url, &site.auth_url, WAIT).await;
    assert!(call.requires_approval);

    // The console: signed in through the auth service's form, lands where it was going.
    let mut browser = Browser::new();
    let landed = browser.sign_in(&site, "admin", ADMIN_PASSWORD).await;
    assert_eq!(landed.status, StatusCode::OK);
    assert!(landed.url.ends_with("/console/status"), "{}", landed.url);
    let cookie = landed.header("set-cookie");
    assert!(
        cookie.is_empty() || !cookie.contains("eyJ"),
        "no token in cookies"
    );
    assert!(!landed.body.contains("eyJ"), "no token in pages");
    assert!(browser.cookie("codelab_console").is_some());

    let list = browser.get(&site.at("/console/sessions")).await;
    assert!(list.body.contains(&session), "{}", list.body);
    let searched = browser
        .get(&site.at("/console/sessions?q=zzz-no-such-title"))
        .await;
    assert!(!searched.body.contains(&session));

    let page_url = format!("{}/console/sessions/{session}", site.url);
    let page = browser.get(&page_url).await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    assert!(page.body.contains("Waiting for approval"), "{}", page.body);
    assert!(page.body.contains("write_file"));
    assert!(page.body.contains("&#34;path&#34;: &#34;a.md&#34;") || page.body.contains("a.md"));
    assert!(!page.body.contains("eyJ"), "no token in pages");
    let csrf = page.hidden("csrf_token").unwrap();
    let approve_url = format!("{page_url}/approvals/{}", call.call_id);

    // Without the CSRF token, or with another, the decision is refused.
    let refused = browser.post(&approve_url, &[("decision", "approve")]).await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN);
    assert!(refused.body.contains("CSRF"));
    let refused = decide(&mut browser, &approve_url, "approve", "forged").await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN);

    // Approved in the console: the IDE gets the call again, without approval, and runs it.
    let answer = decide(&mut browser, &approve_url, "approve", &csrf).await;
    assert_eq!(answer.status, StatusCode::OK);
    assert!(answer.body.contains("Approved"), "{}", answer.body);
    let again = tool_call_of(
        &ide.wait_for("the re-sent call", is_tool_call)
            .await
            .unwrap(),
    );
    assert_eq!(again.call_id, call.call_id);
    assert!(!again.requires_approval);
    let turn = report_ran(&mut ide, &call.call_id, "write_file", "wrote a.md").await;
    assert!(turn.assistant_texts()[0].contains("write_file"));

    // The session page now shows the decision and the result; nothing waits.
    let page = browser.get(&page_url).await;
    assert!(!page.body.contains("Waiting for approval"));
    assert!(page.body.contains("approve"));
    assert!(page.body.contains("wrote a.md"), "{}", page.body);

    // Deciding it again is refused by the gateway and shown, not a crash.
    let again = decide(&mut browser, &approve_url, "reject", &csrf).await;
    assert_eq!(again.status, StatusCode::OK);
    assert!(again.body.contains("flash-error"), "{}", again.body);
    // Messages come from the server's session, never from the address.
    let spoofed = browser
        .get(&format!("{page_url}?error=Call+0800+now&notice=Hello"))
        .await;
    assert!(!spoofed.body.contains("0800") && !spoofed.body.contains("Hello"));

    // Somebody else's (or no) session is a 404 page.
    let missing = browser
        .get(&site.at("/console/sessions/no-such-session"))
        .await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);

    // The socket token: only with the CSRF header.
    let token_url = site.at("/console/token");
    let refused = browser.send(Method::POST, &token_url, None, &[]).await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN);
    let token = browser.chat_token(&site, &csrf).await;
    assert_eq!(token.status, StatusCode::OK, "{}", token.body);
    assert_eq!(token.header("cache-control"), "no-store");
    let token = json(&token);
    assert!(token["access_token"].as_str().unwrap().starts_with("eyJ"));
    assert!(
        token["ws_base"]
            .as_str()
            .unwrap()
            .starts_with("ws://127.0.0.1:")
    );

    // Signing out: CSRF-checked, the cookie goes, the console asks for a login again.
    let mut replay = Browser::new();
    replay.cookies_from(&browser);
    let refused = browser.post(&site.at("/console/logout"), &[]).await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN);
    let out = browser
        .post(&site.at("/console/logout"), &[("csrf_token", &csrf)])
        .await;
    assert_eq!(out.status, StatusCode::OK);
    assert!(out.url.ends_with(&format!("{}/", site.url)) || out.url == format!("{}/", site.url));
    assert!(browser.cookie("codelab_console").is_none());
    // The session is gone, not just its cookie: a copy of the cookie is signed out too.
    let replayed = replay.peek(&page_url).await;
    assert_eq!(replayed.status, StatusCode::SEE_OTHER);
    let after = browser.peek(&page_url).await;
    assert_eq!(after.status, StatusCode::SEE_OTHER);
    ide.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_status_page_shows_every_service_and_its_figures() {
    let site = start_site(Layout::SingleOrigin).await;
    let mut browser = Browser::new();
    browser.sign_in(&site, "bob", USER_PASSWORD).await;
    let page = browser.get(&site.at("/console/status")).await;
    assert_eq!(page.status, StatusCode::OK);
    for service in ["auth", "gateway", "agent-runtime", "llm-proxy"] {
        assert!(
            page.body.contains(&format!("data-service=\"{service}\"")),
            "{service}"
        );
    }
    assert!(page.body.contains("<script src=\"/assets/status.js\""));
    for figure in [
        "active_sockets",
        "turns_per_minute",
        "tokens_per_minute",
        "error_rate",
        "p95_ttft",
    ] {
        assert!(
            page.body.contains(&format!("data-figure=\"{figure}\"")),
            "{figure}"
        );
    }
    let data = json(&browser.get(&site.at("/console/status.json")).await);
    let services = data["services"].as_array().unwrap();
    assert_eq!(services.len(), 4);
    for service in services {
        assert_eq!(service["healthy"], true, "{service}");
        assert_eq!(service["ready"], true, "{service}");
        assert_eq!(service["version"], env!("CARGO_PKG_VERSION"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn only_administrators_reach_the_admin_pages_and_their_actions_work() {
    let site = start_site(Layout::SingleOrigin).await;

    let mut bob = Browser::new();
    let landed = bob.sign_in(&site, "bob", USER_PASSWORD).await;
    assert!(
        !landed.body.contains("href=\"/console/admin\""),
        "no Admin link"
    );
    let refused = bob.get(&site.at("/console/admin")).await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN);
    let csrf = landed.hidden("csrf_token").unwrap();
    let refused = bob
        .post(
            &site.at("/console/admin/users"),
            &[
                ("csrf_token", &csrf),
                ("username", "mallory"),
                ("password", "mallory-password-1"),
                ("admin", "true"),
            ],
        )
        .await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN);

    let mut admin = Browser::new();
    let landed = admin.sign_in(&site, "admin", ADMIN_PASSWORD).await;
    assert!(landed.body.contains("href=\"/console/admin\""));
    let page = admin.get(&site.at("/console/admin")).await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    assert!(page.body.contains("data-username=\"bob\""));
    assert!(page.body.contains("codelab-web"), "clients are listed");
    let csrf = page.hidden("csrf_token").unwrap();

    let created = admin
        .post(
            &site.at("/console/admin/users"),
            &[
                ("csrf_token", &csrf),
                ("username", "carol"),
                ("email", "carol@example.com"),
                ("password", "carol-password-1"),
            ],
        )
        .await;
    assert!(
        created.body.contains("The user was created"),
        "{}",
        created.body
    );
    assert!(created.body.contains("data-username=\"carol\""));
    let short = admin
        .post(
            &site.at("/console/admin/users"),
            &[
                ("csrf_token", &csrf),
                ("username", "dave"),
                ("password", "short"),
            ],
        )
        .await;
    assert!(short.body.contains("flash-error"), "{}", short.body);

    // Disabling bob ends his console session at its next use of a refresh, and his login.
    let disabled = admin
        .post(
            &site.at("/console/admin/users/bob/disable"),
            &[("csrf_token", &csrf)],
        )
        .await;
    assert!(disabled.body.contains("disabled"), "{}", disabled.body);
    let mut again = Browser::new();
    let form = again.get(&site.at("/console/login")).await;
    let refused = again.log_in(&form, "bob", USER_PASSWORD).await;
    assert_eq!(refused.status, StatusCode::OK, "the form again");
    assert!(refused.body.contains("Invalid username or password"));

    let reset = admin
        .post(
            &site.at("/console/admin/users/carol/password"),
            &[("csrf_token", &csrf), ("password", "carol-new-password")],
        )
        .await;
    assert!(
        reset.body.contains("password was changed"),
        "{}",
        reset.body
    );
    let mut carol = Browser::new();
    let landed = carol.sign_in(&site, "carol", "carol-new-password").await;
    assert_eq!(landed.status, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_expiring_access_token_is_refreshed_once_and_a_revoked_login_signs_out() {
    let clock = codelab_core::clock::ManualClock::starting_now();
    let site = start_site_with(Layout::SingleOrigin, Arc::new(clock.clone()), None).await;
    let (mut browser, csrf) = common::signed_in(&site, "bob", USER_PASSWORD).await;
    let token_of = |page: &common::Page| json(page)["access_token"].as_str().unwrap().to_owned();
    let first = token_of(&browser.chat_token(&site, &csrf).await);

    // Past the access token's 15 minutes (by the website's clock): several pages at once
    // share one refresh (the auth service would revoke the login on a reused refresh token).
    clock.advance(Duration::from_secs(16 * 60));
    let sessions_url = site.at("/console/sessions");
    let mut pages = Vec::new();
    for _ in 0..3 {
        let mut other = Browser::new();
        other.cookies_from(&browser);
        let url = sessions_url.clone();
        pages.push(async move { other.get(&url).await });
    }
    for page in futures_util::future::join_all(pages).await {
        assert_eq!(page.status, StatusCode::OK, "{}", page.body);
        assert!(page.url.ends_with("/console/sessions"), "still signed in");
    }
    let second = token_of(&browser.chat_token(&site, &csrf).await);
    assert_ne!(first, second, "a fresh access token");

    // The user is disabled: the next refresh is refused and the console asks for a login.
    codelab_auth::admin::set_user_enabled(site.auth.store.as_ref(), "bob", false)
        .await
        .unwrap();
    clock.advance(Duration::from_secs(16 * 60));
    let page = browser.peek(&site.at("/console/sessions")).await;
    assert_eq!(page.status, StatusCode::SEE_OTHER);
    assert!(page.header("location").starts_with("/console/login"));
    // The session is gone from the store, not only refused.
    let cookie = format!(
        "codelab_console={}",
        browser.cookie("codelab_console").unwrap()
    );
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(reqwest::header::COOKIE, cookie.parse().unwrap());
    assert!(
        site.website.sessions.lookup(&headers).await.is_none(),
        "the session is gone"
    );
}
