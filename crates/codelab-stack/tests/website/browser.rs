//! The console in a real browser: headless Chromium (Debian's `chromium`) driven by
//! `tests/website/browser/console.mjs` with playwright-core, against the whole system in process
//! behind one origin (as nginx and `codelab up` serve it). The Flutter IDE replica makes a
//! session with a call waiting for approval; the browser signs in, sees the status, finds the
//! session and its tool call, approves it — and the IDE's socket receives the call again —
//! chats with the ask agent, reads the docs, signs out; a non-admin meets 403 on the admin
//! pages and a form without its CSRF token is refused. Screenshots go to
//! `target/artifacts/website/`.
//!
//! Needs Chromium (`CODELAB_TEST_CHROMIUM`, else /usr/bin/chromium) and Node with
//! playwright-core (`CODELAB_TEST_NODE_PROJECT`, else target/test-node): scripts/test installs
//! both.
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use crate::common::{self, ADMIN_PASSWORD, Layout, USER_PASSWORD, start_site};
use codelab_testkit::ide_clients::steps::{is_tool_call, ran};
use codelab_testkit::ide_clients::{Bubble, ReceivedFrame};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};

/// The browser's whole walk must fit in this (two cores shared with other builds).
const BROWSER_TIMEOUT: Duration = Duration::from_secs(240);

fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_person_uses_the_console_in_chromium() {
    let chromium = std::env::var_os("CODELAB_TEST_CHROMIUM")
        .map_or_else(|| PathBuf::from("/usr/bin/chromium"), PathBuf::from);
    assert!(
        chromium.exists(),
        "{} is missing: run scripts/test, which installs Debian's chromium (as root), or set \
         CODELAB_TEST_CHROMIUM",
        chromium.display()
    );
    let node_project = std::env::var_os("CODELAB_TEST_NODE_PROJECT")
        .map_or_else(|| workspace_root().join("target/test-node"), PathBuf::from);
    assert!(
        node_project.join("node_modules/playwright-core").exists(),
        "playwright-core is missing in {}: run scripts/test, which installs it there with npm, \
         or set CODELAB_TEST_NODE_PROJECT",
        node_project.display()
    );
    let artifacts = workspace_root().join("target/artifacts/website");
    std::fs::create_dir_all(&artifacts).unwrap();

    let site = start_site(Layout::SingleOrigin).await;

    // The Flutter IDE, through the same front door: a write waiting for approval.
    let (session, mut ide, call) =
        common::ide_with_a_waiting_write(&site.url, &site.url, BROWSER_TIMEOUT).await;
    assert!(call.requires_approval);

    let mut child = tokio::process::Command::new("node")
        .arg(workspace_root().join("crates/codelab-stack/tests/website/browser/console.mjs"))
        .env("SITE_URL", &site.url)
        .env("SESSION_ID", &session)
        .env("CALL_ID", &call.call_id)
        .env("ADMIN_PASSWORD", ADMIN_PASSWORD)
        .env("USER_PASSWORD", USER_PASSWORD)
        .env("CHROMIUM", &chromium)
        .env("ARTIFACTS", &artifacts)
        .env("NODE_PROJECT", &node_project)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("node must be installed (Debian: apt-get install -y nodejs)");
    let stdout = child.stdout.take().unwrap();
    let stderr = child.stderr.take().unwrap();
    let browser = async {
        let mut steps = Vec::new();
        let mut lines = BufReader::new(stdout).lines();
        while let Some(line) = lines.next_line().await.unwrap() {
            eprintln!("browser: {line}");
            if let Ok(step) = serde_json::from_str::<Value>(&line) {
                steps.push(step);
            }
        }
        let mut errors = String::new();
        let mut err_lines = BufReader::new(stderr).lines();
        while let Some(line) = err_lines.next_line().await.unwrap() {
            errors.push_str(&line);
            errors.push('\n');
        }
        let status = child.wait().await.unwrap();
        (status, steps, errors)
    };
    // Meanwhile the IDE waits for the approval the browser gives.
    let watch_ide = async {
        let frame = ide.wait_for("the re-sent call", is_tool_call).await;
        let Ok(ReceivedFrame {
            bubble: Some(Bubble::ToolCall(again)),
            ..
        }) = frame
        else {
            return Err(format!(
                "the IDE did not receive the approved call: {frame:?}"
            ));
        };
        ide.send_tool_result(&again.call_id, "write_file", ran("wrote a.md"))
            .await
            .unwrap();
        Ok(again)
    };
    let ((status, steps, errors), again) =
        tokio::time::timeout(BROWSER_TIMEOUT, async { tokio::join!(browser, watch_ide) })
            .await
            .expect("the browser walk took too long");
    assert!(
        status.success(),
        "the browser walk failed: {steps:?}\n{errors}"
    );
    let again = again.unwrap();
    assert_eq!(again.call_id, call.call_id);
    assert!(
        !again.requires_approval,
        "the IDE runs the approved call without asking"
    );

    let done: Vec<&str> = steps
        .iter()
        .filter(|s| s["ok"] == true)
        .filter_map(|s| s["step"].as_str())
        .collect();
    for step in [
        "signed_in",
        "status",
        "sessions",
        "session",
        "approved",
        "chat_reply",
        "chat_tool_unavailable",
        "docs",
        "admin",
        "logged_out",
        "non_admin_forbidden",
        "csrf_refused",
        "done",
    ] {
        assert!(done.contains(&step), "step {step} missing: {steps:?}");
    }
    for shot in [
        "01-login",
        "02-status",
        "04-session-pending",
        "07-chat",
        "10-forbidden",
    ] {
        let path = artifacts.join(format!("{shot}.png"));
        assert!(
            std::fs::metadata(&path).is_ok_and(|m| m.len() > 1000),
            "{} was not saved",
            path.display()
        );
    }
}
