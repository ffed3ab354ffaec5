//! The `codelab_agent_runtime_pending_approvals` gauge through `/metrics`, on SQLite, against
//! the real LLM proxy's mock model. The metrics recorder is global to the process, so another
//! runtime in the same process (a parallel test under `cargo test`) would set the same gauge
//! from its own database: the test runs in a process of its own.
use codelab_testkit::isolation::alone_in_process;

use crate::common::{Backend, Runtime, Text, decision, first, kinds};

const GAUGE: &str = "codelab_agent_runtime_pending_approvals";

/// The gauge's value in a scrape of `/metrics` (which carries no key).
async fn pending(rt: &Runtime) -> String {
    let text = rt.metrics_text().await;
    text.lines()
        .find_map(|line| line.strip_prefix(GAUGE)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no {GAUGE} in the scrape:\n{text}"))
        .to_owned()
}

/// Asks the coder for a write, which waits for approval; the call's id.
async fn ask_for_a_write(rt: &Runtime, session: &str) -> String {
    let events = rt
        .to_coder(
            session,
            r#"::tool write_file {"path":"a.md","content":"x"}"#,
        )
        .await;
    let approval = first(&events, "approval_required");
    approval["call_id"].text().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_gauge_follows_approvals_asked_for_and_decided_in_every_session() {
    let true = alone_in_process() else { return };
    let rt = Runtime::start(Backend::Sqlite).await;
    assert_eq!(pending(&rt).await, "0", "exported from the start");

    let s1 = rt.new_session("dev").await;
    let call_1 = ask_for_a_write(&rt, &s1).await;
    assert_eq!(pending(&rt).await, "1");

    let s2 = rt.new_session("dev").await;
    let call_2 = ask_for_a_write(&rt, &s2).await;
    assert_eq!(pending(&rt).await, "2", "counted across sessions");

    let approved = rt.send(&s1, decision(&call_1, "approve")).await;
    assert_eq!(kinds(&approved), ["tool_call", "step_finished"]);
    assert_eq!(
        pending(&rt).await,
        "1",
        "an approved call awaits its result, not a human"
    );

    let rejected = rt.send(&s2, decision(&call_2, "reject")).await;
    assert_eq!(first(&rejected, "tool_settled")["outcome"], "rejected");
    assert_eq!(pending(&rt).await, "0");
}
