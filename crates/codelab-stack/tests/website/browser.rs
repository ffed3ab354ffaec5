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
//! both. The helpers that start a walk serve `browser_plans.rs` too.
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

/// Chromium and Node with playwright-core, as scripts/test installs them, and the folder the
/// screenshots go to.
pub(crate) struct BrowserTools {
    chromium: PathBuf,
    node_project: PathBuf,
    artifacts: PathBuf,
}

/// The tools a browser walk needs, or a panic that says how to get them.
pub(crate) fn browser_tools() -> BrowserTools {
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
    BrowserTools {
        chromium,
        node_project,
        artifacts,
    }
}

/// Starts the walk `script` (in `tests/website/browser/`) with the tools' variables
/// (`CHROMIUM`, `ARTIFACTS`, `NODE_PROJECT`) and `vars`.
pub(crate) fn start_walk(
    tools: &BrowserTools,
    script: &str,
    vars: &[(&str, &str)],
) -> tokio::process::Child {
    let mut command = tokio::process::Command::new("node");
    command
        .arg(
            workspace_root()
                .join("crates/codelab-stack/tests/website/browser")
                .join(script),
        )
        .env("CHROMIUM", &tools.chromium)
        .env("ARTIFACTS", &tools.artifacts)
        .env("NODE_PROJECT", &tools.node_project)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    for (name, value) in vars {
        command.env(name, value);
    }
    command
        .spawn()
        .expect("node must be installed (Debian: apt-get install -y nodejs)")
}

/// How a walk ended: its exit status, the JSON lines it printed (one per step, echoed to
/// the test's output) and its standard error.
pub(crate) async fn finish_walk(
    mut child: tokio::process::Child,
) -> (std::process::ExitStatus, Vec<Value>, String) {
    let stdout = child.stdout.take().unwrap();
    let stderr = child.stderr.take().unwrap();
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
}

/// The steps a walk reported as passed.
pub(crate) fn passed(steps: &[Value]) -> Vec<&str> {
    steps
        .iter()
        .filter(|s| s["ok"] == true)
        .filter_map(|s| s["step"].as_str())
        .collect()
}

/// Whether the walk saved the screenshot `name` (not an empty file).
pub(crate) fn assert_screenshots(tools: &BrowserTools, names: &[&str]) {
    for shot in names {
        let path = tools.artifacts.join(format!("{shot}.png"));
        assert!(
            std::fs::metadata(&path).is_ok_and(|m| m.len() > 1000),
            "{} was not saved",
            path.display()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_person_uses_the_console_in_chromium() {
    let tools = browser_tools();
    let site = start_site(Layout::SingleOrigin).await;

    // Everyone's default budget, for the usage page's bars.
    site.set_budget(&codelab_agent_runtime::model::Budget {
        subject: codelab_agent_runtime::model::DEFAULT_BUDGET.to_owned(),
        daily_tokens: Some(1_000_000),
        monthly_tokens: None,
        daily_cost: None,
        monthly_cost: Some(50.0),
        requests_per_minute: None,
        tokens_per_minute: None,
        updated_at: codelab_core::db::now_from(&codelab_core::clock::SystemClock),
    })
    .await;
    // The Flutter IDE, through the same front door: a write waiting for approval.
    let (session, mut ide, call) =
        common::ide_with_a_waiting_write(&site.url, &site.url, BROWSER_TIMEOUT).await;
    assert!(call.requires_approval);

    let child = start_walk(
        &tools,
        "console.mjs",
        &[
            ("SITE_URL", &site.url),
            ("SESSION_ID", &session),
            ("CALL_ID", &call.call_id),
            ("ADMIN_PASSWORD", ADMIN_PASSWORD),
            ("USER_PASSWORD", USER_PASSWORD),
        ],
    );
    let browser = finish_walk(child);
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

    let done = passed(&steps);
    for step in [
        "signed_in",
        "status",
        "sessions",
        "session",
        "approved",
        "chat_reply",
        "chat_tool_unavailable",
        "docs",
        "usage",
        "admin",
        "logged_out",
        "non_admin_forbidden",
        "csrf_refused",
        "done",
    ] {
        assert!(done.contains(&step), "step {step} missing: {steps:?}");
    }
    assert_screenshots(
        &tools,
        &[
            "01-login",
            "02-status",
            "04-session-pending",
            "07-chat",
            "12-usage",
            "10-forbidden",
        ],
    );
}
