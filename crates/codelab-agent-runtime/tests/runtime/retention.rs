//! The retention job on the runtime alone (no LLM is called): sessions idle past the setting
//! are purged in batches with everything in them.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use codelab_agent_runtime::model::{NewMessage, Role, StepCommit, TurnStatus};
use codelab_agent_runtime::store::RuntimeStore;
use codelab_core::service::Service as _;

use crate::common::reopen;
use crate::store_conformance::{step, turn};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_retention_job_removes_sessions_idle_past_the_setting() {
    use codelab_agent_runtime::Config;
    use codelab_agent_runtime::model::NewSession;
    use codelab_core::clock::ManualClock;
    use codelab_core::service::SharedDeps;

    const DAY: Duration = Duration::from_secs(86_400);
    let database = codelab_testkit::TempDatabase::sqlite("agent_runtime.db");
    let url = database.url.clone();
    let clock = ManualClock::starting_now();
    let config = Config {
        db_url: url.clone(),
        session_retention_days: 30,
        recovery_interval: 0.0,
        ..Config::default()
    };
    let deps = SharedDeps::default().with_clock(Arc::new(clock.clone()));
    let state = codelab_agent_runtime::RuntimeService::build(config, deps)
        .await
        .unwrap();
    // More than two purge batches, each with a message, a turn and an event.
    for i in 0..250 {
        let id = format!("idle-{i}");
        state
            .store
            .create_session(NewSession {
                id: id.clone(),
                owner: "dev".into(),
                current_agent: "coder".into(),
            })
            .await
            .unwrap();
        crash_mid_step_in(&state.store, &id).await;
    }
    clock.advance(29 * DAY);
    assert_eq!(state.purge_now().await.unwrap(), 0, "29 days idle: kept");
    clock.advance(2 * DAY);
    assert_eq!(state.purge_now().await.unwrap(), 250);
    // Committed: another pool on the same file sees nothing left.
    let other = reopen(&url, Arc::new(clock.clone())).await;
    assert!(other.get_session("idle-0").await.unwrap().is_none());
    assert!(other.list_stalled_turns(10).await.unwrap().is_empty());
    assert_eq!(state.purge_now().await.unwrap(), 0);
}

/// The state a crash leaves mid-step, on a bare store: a user message and a running turn.
async fn crash_mid_step_in(store: &Arc<dyn RuntimeStore>, session: &str) {
    let id = codelab_core::new_id().to_string();
    let mut running = turn(&id, session, TurnStatus::Running, Utc::now());
    running.steps = 1;
    let commit = StepCommit {
        new_turn: Some(running),
        messages: vec![NewMessage::text(session, Role::User, "hello")],
        ..step(session)
    };
    store.commit_step(commit).await.unwrap();
}
