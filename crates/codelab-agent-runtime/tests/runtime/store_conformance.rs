//! One conformance suite for [`RuntimeStore`], run against SQLite (a temp file) and PostgreSQL
//! (a fresh database on the server at `CODELAB_TEST_DATABASE_URL`, dropped afterwards).
//!
//! Every check below is an `async fn(Arc<dyn RuntimeStore>)`; `store_conformance!` (testkit)
//! turns each into a `sqlite::<check>` and a `postgres::<check>` test, each on its own empty
//! database. A few backend-specific tests (two pools as two replicas, reopening a file)
//! follow at the end.

use std::sync::Arc;
use std::time::Duration;

use ToolCallStatus::{
    AwaitingResult, Cancelled, Executed, Failed, Invalid, PendingApproval, Rejected, Succeeded,
};
use chrono::{DateTime, SubsecRound, Utc};
use codelab_agent_runtime::model::{
    AgentSwitch, Budget, Committed, DEFAULT_BUDGET, LlmUsage, Message, NewMessage, NewSession,
    OwnerBudget, Plan, PlanStatus, PlanVersion, PlanWrite, PlanningMode, Role, Session,
    SessionQuery, Spend, SpendWindows, StepCommit, Subtask, SubtaskStatus, ToolCallRecord,
    ToolCallStatus, ToolCallUpdate, Turn, TurnStatus, TurnUpdate, UpdateOutcome, UsageGroup,
    UsageOutcome, UsagePurpose, UsageQuery, WindowSpend,
};
use codelab_agent_runtime::store::{RuntimeStore, StoreError, open_store};
use codelab_core::clock::SystemClock;
use codelab_core::db::{DbOptions, DbPool, connect_database};
use codelab_protocol::runtime::{RuntimeEvent, SequencedEvent, TurnOutcome};
use serde_json::json;
use tokio::time::timeout;

use crate::common::{postgres_db, reopen, sqlite_db};

codelab_testkit::store_conformance!(
    sqlite: super::sqlite_db, postgres: super::postgres_db;
    answers_a_ping,
    creates_a_session_and_reads_it_back,
    refuses_a_duplicate_session_id_even_after_deletion,
    lists_an_owners_sessions_most_recently_active_first_with_paging_and_a_total,
    searches_titles_ignoring_case_and_matches_wildcards_literally,
    sets_the_title_and_the_current_agent_of_live_sessions_only,
    keeps_a_sessions_planning_setting_a_routing_verdict_and_a_turns_plan_requirement,
    deleting_a_session_hides_it_and_everything_in_it,
    purges_sessions_idle_before_the_cutoff_in_batches_with_everything_in_them,
    appends_messages_in_order_with_consecutive_seqs_and_counts_them,
    appending_a_message_bumps_the_sessions_last_activity,
    concurrent_message_appends_get_distinct_consecutive_seqs,
    writes_to_an_unknown_session_are_not_found,
    records_agent_switches_oldest_first_keeping_their_confidence,
    stores_tool_calls_and_reads_them_back,
    refuses_a_taken_call_id_and_stores_none_of_that_batch,
    call_id_exists_knows_our_ids_and_the_providers,
    updates_a_call_only_from_an_expected_state_keeping_unset_fields,
    of_twenty_concurrent_settlements_of_one_call_exactly_one_wins,
    lists_a_steps_calls_in_the_order_the_model_made_them,
    lists_open_calls_and_all_calls_of_a_session_oldest_first,
    counts_the_calls_waiting_for_approval_in_all_live_sessions,
    a_turn_is_active_until_it_finishes,
    the_active_turn_is_the_newest_unfinished_one,
    numbers_events_from_one_per_session,
    lists_events_after_a_seq_up_to_a_limit,
    concurrent_event_appends_get_distinct_consecutive_seqs,
    a_second_lock_on_a_session_waits_until_the_first_is_dropped,
    locks_on_different_sessions_do_not_block_each_other,
    a_cancelled_lock_wait_leaves_the_session_unlocked,
    a_session_can_be_locked_and_released_many_times,
    try_lock_answers_none_while_the_session_is_held,
    commits_a_steps_outcome_in_one_transaction,
    a_commit_of_many_messages_and_events_keeps_their_order_and_seqs,
    reads_a_sessions_state_as_the_single_reads_do,
    a_commit_can_start_a_turn_with_its_user_message,
    a_failing_commit_stores_nothing_of_the_step,
    a_commit_against_a_turn_that_moved_on_is_stale_and_stores_nothing,
    settling_a_call_appends_its_tool_message_exactly_once,
    a_cancel_request_marks_the_active_turn_once,
    lists_the_turns_that_lost_their_runner,
    counts_each_llm_call_with_its_step_and_keeps_it_after_the_session,
    sums_a_users_spend_in_each_window,
    sets_replaces_lists_and_clears_budgets_with_a_default,
    reads_the_budget_of_a_sessions_owner_their_own_before_the_default,
    notes_a_budget_warning_once_per_limit_and_window,
    reports_usage_grouped_by_day_model_agent_and_user,
    proposes_a_plan_and_reads_it_back,
    a_new_version_replaces_the_subtasks_and_keeps_the_previous_with_its_feedback,
    plan_and_subtask_states_change_with_a_step,
    plan_writes_apply_with_a_call_update_only_when_the_call_is_updated,
    a_plan_write_that_fails_stores_nothing_of_the_commit,
    a_plan_write_never_reaches_another_sessions_plan,
    a_turn_keeps_its_plan_once_it_has_one,
    plans_go_with_their_session,
);

// ---------------------------------------------------------------------------------------------
// Fixtures
// ---------------------------------------------------------------------------------------------

/// Long enough for a wrongly granted lock to show up, short enough to keep the suite quick.
const STILL_WAITING: Duration = Duration::from_millis(300);
/// A bound on anything that should happen promptly (a freed lock being granted).
const PROMPTLY: Duration = Duration::from_secs(10);

/// A fixed whole-second "now" so caller-supplied times compare equal after a round trip.
fn t0() -> DateTime<Utc> {
    Utc::now().trunc_subsecs(0)
}

/// Waits (without sleeping) until the clock, at the stores' microsecond precision, is past
/// `at`, and returns that instant.
fn instant_after(at: DateTime<Utc>) -> DateTime<Utc> {
    loop {
        let now = Utc::now().trunc_subsecs(6);
        if now > at {
            return now;
        }
        std::hint::spin_loop();
    }
}

fn new_session(id: &str, owner: &str) -> NewSession {
    NewSession {
        id: id.to_owned(),
        owner: owner.to_owned(),
        current_agent: "orchestrator".to_owned(),
    }
}

async fn create(store: &Arc<dyn RuntimeStore>, id: &str, owner: &str) -> Session {
    store.create_session(new_session(id, owner)).await.unwrap()
}

async fn append(store: &Arc<dyn RuntimeStore>, message: NewMessage) -> Message {
    store.append_message(message).await.unwrap()
}

async fn append_event(
    store: &Arc<dyn RuntimeStore>,
    session_id: &str,
    event: &RuntimeEvent,
) -> SequencedEvent {
    store.append_event(session_id, event).await.unwrap()
}

async fn update_turn(
    store: &Arc<dyn RuntimeStore>,
    turn_id: &str,
    status: TurnStatus,
    steps: i32,
    agent: &str,
) {
    store
        .update_turn(turn_id, status, steps, agent)
        .await
        .unwrap();
}

async fn insert(store: &Arc<dyn RuntimeStore>, calls: Vec<ToolCallRecord>) {
    store.insert_tool_calls(calls).await.unwrap();
}

/// Stores one call made by `write_file` (see [`call`]).
async fn insert_call(
    store: &Arc<dyn RuntimeStore>,
    session_id: &str,
    turn_id: &str,
    step: i32,
    call_id: &str,
    status: ToolCallStatus,
) {
    let calls = vec![call(session_id, turn_id, step, call_id, status)];
    insert(store, calls).await;
}

async fn start_turn(store: &Arc<dyn RuntimeStore>, turn: Turn) {
    store.create_turn(turn).await.unwrap();
}

async fn record(store: &Arc<dyn RuntimeStore>, switch: AgentSwitch) {
    store.record_switch(switch).await.unwrap();
}

/// Every kind of write into `session_id`, each of which must fail; the errors in order.
async fn failed_writes(store: &Arc<dyn RuntimeStore>, session_id: &str) -> Vec<StoreError> {
    let again = message(session_id, Role::User, "again");
    let event = notice("again");
    let switch = switch(session_id, Some("coder"), "architect", None);
    let turn = turn("t2", session_id, TurnStatus::Running, t0());
    let calls = vec![call(session_id, "t2", 1, "call_2", AwaitingResult)];
    vec![
        store.append_message(again).await.unwrap_err(),
        store.append_event(session_id, &event).await.unwrap_err(),
        store.record_switch(switch).await.unwrap_err(),
        store.create_turn(turn).await.unwrap_err(),
        store.insert_tool_calls(calls).await.unwrap_err(),
    ]
}

/// The live session `id`, which must exist.
async fn live_session(store: &Arc<dyn RuntimeStore>, id: &str) -> Session {
    store.get_session(id).await.unwrap().unwrap()
}

async fn update_call(
    store: &Arc<dyn RuntimeStore>,
    session_id: &str,
    call_id: &str,
    expected: &[ToolCallStatus],
    update: ToolCallUpdate,
) -> UpdateOutcome {
    store
        .update_tool_call(session_id, call_id, expected, update)
        .await
        .unwrap()
}

fn message(session_id: &str, role: Role, content: &str) -> NewMessage {
    NewMessage::text(session_id, role, content)
}

fn call(
    session_id: &str,
    turn_id: &str,
    step: i32,
    call_id: &str,
    status: ToolCallStatus,
) -> ToolCallRecord {
    ToolCallRecord {
        call_id: call_id.to_owned(),
        session_id: session_id.to_owned(),
        turn_id: turn_id.to_owned(),
        step,
        provider_call_id: None,
        tool_name: "write_file".to_owned(),
        arguments: json!({"path": "src/main.rs", "content": "fn main() {}"}),
        requires_approval: status == ToolCallStatus::PendingApproval,
        approval_reason: (status == ToolCallStatus::PendingApproval)
            .then(|| "File modification requires user approval".to_owned()),
        agent: "coder".to_owned(),
        status,
        decision: None,
        feedback: None,
        modified_arguments: None,
        result: None,
        error: None,
        created_at: t0(),
        settled_at: None,
    }
}

fn update(status: ToolCallStatus) -> ToolCallUpdate {
    ToolCallUpdate::to(status)
}

pub(crate) fn turn(id: &str, session_id: &str, status: TurnStatus, at: DateTime<Utc>) -> Turn {
    Turn {
        id: id.to_owned(),
        session_id: session_id.to_owned(),
        status,
        steps: 0,
        agent: "coder".to_owned(),
        created_at: at,
        updated_at: at,
        cancel_requested_at: None,
        plan_id: None,
        plan_required: false,
    }
}

fn switch(session_id: &str, from: Option<&str>, to: &str, confidence: Option<&str>) -> AgentSwitch {
    AgentSwitch {
        session_id: session_id.to_owned(),
        from_agent: from.map(str::to_owned),
        to_agent: to.to_owned(),
        reason: format!("the request is for the {to}"),
        confidence: confidence.map(str::to_owned),
        method: "llm".to_owned(),
        created_at: t0(),
        complexity: None,
    }
}

fn notice(text: &str) -> RuntimeEvent {
    RuntimeEvent::Notice {
        message: text.to_owned(),
    }
}

/// A page of `owner`'s sessions and the total.
async fn list(
    store: &Arc<dyn RuntimeStore>,
    owner: &str,
    search: Option<&str>,
    limit: u32,
    offset: u32,
) -> (Vec<Session>, u64) {
    let query = SessionQuery {
        owner: owner.to_owned(),
        search: search.map(str::to_owned),
        limit,
        offset,
    };
    store.list_sessions(&query).await.unwrap()
}

fn ids<'a>(items: impl IntoIterator<Item = &'a ToolCallRecord>) -> Vec<&'a str> {
    items.into_iter().map(|c| c.call_id.as_str()).collect()
}

// ---------------------------------------------------------------------------------------------
// Sessions
// ---------------------------------------------------------------------------------------------

async fn answers_a_ping(store: Arc<dyn RuntimeStore>) {
    store.ping().await.unwrap();
}

async fn creates_a_session_and_reads_it_back(store: Arc<dyn RuntimeStore>) {
    let before = Utc::now().trunc_subsecs(6);
    let session = create(&store, "s1", "alice").await;
    assert_eq!(session.id, "s1");
    assert_eq!(session.owner, "alice");
    assert_eq!(session.title, None);
    assert_eq!(session.current_agent, "orchestrator");
    assert_eq!(session.message_count, 0);
    assert_eq!(session.created_at, session.last_activity);
    assert!(session.created_at >= before && session.created_at <= Utc::now());

    assert_eq!(store.get_session("s1").await.unwrap(), Some(session));
    assert_eq!(store.get_session("s2").await.unwrap(), None);
}

async fn refuses_a_duplicate_session_id_even_after_deletion(store: Arc<dyn RuntimeStore>) {
    create(&store, "s1", "alice").await;
    let taken = new_session("s1", "bob");
    let err = store.create_session(taken).await.unwrap_err();
    assert!(matches!(err, StoreError::Conflict(_)), "{err:?}");

    assert!(store.delete_session("s1").await.unwrap());
    let again = new_session("s1", "alice");
    let err = store.create_session(again).await.unwrap_err();
    assert!(matches!(err, StoreError::Conflict(_)), "{err:?}");
    // The first owner's session is untouched.
    assert_eq!(store.get_session("s1").await.unwrap(), None);
}

async fn lists_an_owners_sessions_most_recently_active_first_with_paging_and_a_total(
    store: Arc<dyn RuntimeStore>,
) {
    for id in ["a", "b", "c"] {
        create(&store, id, "alice").await;
    }
    create(&store, "d", "bob").await;
    // Activity on the oldest brings it to the front.
    append(&store, message("a", Role::User, "hello")).await;

    let (page, total) = list(&store, "alice", None, 2, 0).await;
    assert_eq!(
        page.iter().map(|s| s.id.as_str()).collect::<Vec<_>>(),
        ["a", "c"]
    );
    assert_eq!(total, 3);
    assert_eq!(page[0].message_count, 1);

    let (page, total) = list(&store, "alice", None, 2, 2).await;
    assert_eq!(
        page.iter().map(|s| s.id.as_str()).collect::<Vec<_>>(),
        ["b"]
    );
    assert_eq!(total, 3);

    let (page, total) = list(&store, "alice", None, 10, 5).await;
    assert!(page.is_empty());
    assert_eq!(total, 3);

    let (page, total) = list(&store, "bob", None, 10, 0).await;
    assert_eq!(page, vec![live_session(&store, "d").await]);
    assert_eq!(total, 1);

    let (page, total) = list(&store, "carol", None, 10, 0).await;
    assert!(page.is_empty());
    assert_eq!(total, 0);
}

async fn searches_titles_ignoring_case_and_matches_wildcards_literally(
    store: Arc<dyn RuntimeStore>,
) {
    let titles = [
        ("login", "Fix the Login bug"),
        ("percent", "Reach 100% coverage"),
        ("underscore", "rename snake_case names"),
        ("unicode", "ÜBER Straße"),
        ("plain", "Reach 1000 coverage points"),
    ];
    for (id, title) in titles {
        create(&store, id, "alice").await;
        store.set_title(id, title).await.unwrap();
    }
    create(&store, "untitled", "alice").await;
    create(&store, "other-owner", "bob").await;
    store
        .set_title("other-owner", "login for bob")
        .await
        .unwrap();

    let search = |text: &'static str| {
        let store = store.clone();
        async move {
            let (found, total) = list(&store, "alice", Some(text), 50, 0).await;
            let mut ids = found.into_iter().map(|s| s.id).collect::<Vec<_>>();
            ids.sort();
            assert_eq!(total, ids.len() as u64, "total of {text:?}");
            ids
        }
    };
    assert_eq!(search("login").await, ["login"]);
    assert_eq!(search("LOGIN").await, ["login"]);
    assert_eq!(search("über").await, ["unicode"]);
    assert_eq!(search("STRASSE").await, Vec::<String>::new());
    assert_eq!(search("straße").await, ["unicode"]);
    // `%` and `_` are the user's characters, not wildcards.
    assert_eq!(search("100%").await, ["percent"]);
    assert_eq!(search("e_c").await, ["underscore"]);
    assert_eq!(search("_").await, ["underscore"]);
    assert_eq!(search("coverage").await, ["percent", "plain"]);
    assert_eq!(search("nothing like it").await, Vec::<String>::new());

    let (page, total) = list(&store, "alice", Some("reach"), 1, 1).await;
    assert_eq!(page.len(), 1);
    assert_eq!(total, 2);
}

async fn sets_the_title_and_the_current_agent_of_live_sessions_only(store: Arc<dyn RuntimeStore>) {
    create(&store, "s1", "alice").await;
    store.set_title("s1", "Refactor the parser").await.unwrap();
    store.set_current_agent("s1", "coder").await.unwrap();
    let session = live_session(&store, "s1").await;
    assert_eq!(session.title.as_deref(), Some("Refactor the parser"));
    assert_eq!(session.current_agent, "coder");

    let err = store.set_title("nope", "x").await.unwrap_err();
    assert!(matches!(err, StoreError::NotFound(_)), "{err:?}");
    let err = store.set_current_agent("nope", "coder").await.unwrap_err();
    assert!(matches!(err, StoreError::NotFound(_)), "{err:?}");

    store.delete_session("s1").await.unwrap();
    let err = store.set_title("s1", "x").await.unwrap_err();
    assert!(matches!(err, StoreError::NotFound(_)), "{err:?}");
    let err = store
        .set_current_agent("s1", "architect")
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::NotFound(_)), "{err:?}");
}

async fn keeps_a_sessions_planning_setting_a_routing_verdict_and_a_turns_plan_requirement(
    store: Arc<dyn RuntimeStore>,
) {
    create(&store, "s1", "alice").await;
    assert_eq!(
        live_session(&store, "s1").await.planning,
        PlanningMode::Auto
    );
    store.set_planning("s1", PlanningMode::Never).await.unwrap();
    assert_eq!(
        live_session(&store, "s1").await.planning,
        PlanningMode::Never
    );
    let err = store
        .set_planning("nope", PlanningMode::Always)
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::NotFound(_)), "{err:?}");

    record(
        &store,
        AgentSwitch {
            complexity: Some("complex".to_owned()),
            ..switch("s1", Some("orchestrator"), "architect", Some("high"))
        },
    )
    .await;
    let switches = store.list_switches("s1").await.unwrap();
    assert_eq!(switches[0].complexity.as_deref(), Some("complex"));

    // Set once, a turn's plan requirement stays: a later update without it keeps it.
    start_turn(
        &store,
        Turn {
            plan_required: true,
            ..turn("t1", "s1", TurnStatus::Running, t0())
        },
    )
    .await;
    let commit = StepCommit {
        turn: Some(step_update(TurnStatus::AwaitingTools, 1, None)),
        ..step("s1")
    };
    store.commit_step(commit).await.unwrap();
    let stored = store.get_turn("t1").await.unwrap().unwrap();
    assert!(stored.plan_required);
    assert_eq!(stored.status, TurnStatus::AwaitingTools);
    start_turn(&store, turn("t2", "s1", TurnStatus::Running, t0())).await;
    assert!(!store.get_turn("t2").await.unwrap().unwrap().plan_required);
}

async fn deleting_a_session_hides_it_and_everything_in_it(store: Arc<dyn RuntimeStore>) {
    create(&store, "s1", "alice").await;
    create(&store, "s2", "alice").await;
    append(&store, message("s1", Role::User, "hi")).await;
    record(&store, switch("s1", None, "coder", Some("high"))).await;
    append_event(&store, "s1", &notice("hello")).await;
    start_turn(&store, turn("t1", "s1", TurnStatus::AwaitingTools, t0())).await;
    insert_call(&store, "s1", "t1", 1, "call_1", PendingApproval).await;

    assert!(store.delete_session("s1").await.unwrap());
    assert!(
        !store.delete_session("s1").await.unwrap(),
        "a second delete finds nothing"
    );
    assert!(!store.delete_session("never").await.unwrap());

    assert_eq!(store.get_session("s1").await.unwrap(), None);
    let (page, total) = list(&store, "alice", None, 10, 0).await;
    assert_eq!(
        page.iter().map(|s| s.id.as_str()).collect::<Vec<_>>(),
        ["s2"]
    );
    assert_eq!(total, 1);
    assert!(store.list_messages("s1").await.unwrap().is_empty());
    assert!(store.list_switches("s1").await.unwrap().is_empty());
    assert!(store.list_events("s1", 0, 100).await.unwrap().is_empty());
    assert!(store.list_open_calls("s1").await.unwrap().is_empty());
    assert!(store.list_session_calls("s1").await.unwrap().is_empty());
    assert_eq!(store.active_turn("s1").await.unwrap(), None);

    for err in failed_writes(&store, "s1").await {
        assert!(matches!(err, StoreError::NotFound(_)), "{err:?}");
    }
}

async fn purges_sessions_idle_before_the_cutoff_in_batches_with_everything_in_them(
    store: Arc<dyn RuntimeStore>,
) {
    create(&store, "old-deleted", "alice").await;
    store.delete_session("old-deleted").await.unwrap();
    create(&store, "old", "alice").await;
    append(&store, message("old", Role::User, "hi")).await;
    record(&store, switch("old", None, "coder", None)).await;
    append_event(&store, "old", &notice("hello")).await;
    let old_turn = turn("t-old", "old", TurnStatus::AwaitingTools, t0());
    start_turn(&store, old_turn).await;
    insert_call(&store, "old", "t-old", 1, "call_1", PendingApproval).await;
    let newest_old = live_session(&store, "old").await.last_activity;

    let cutoff = instant_after(newest_old);
    create(&store, "fresh", "alice").await;
    append(&store, message("fresh", Role::User, "hi")).await;

    assert_eq!(
        store.purge_idle_sessions(cutoff, 1).await.unwrap(),
        1,
        "one per batch"
    );
    assert_eq!(store.purge_idle_sessions(cutoff, 100).await.unwrap(), 1);
    assert_eq!(store.purge_idle_sessions(cutoff, 100).await.unwrap(), 0);

    assert_eq!(store.get_session("old").await.unwrap(), None);
    assert_eq!(store.get_tool_call("old", "call_1").await.unwrap(), None);
    assert!(!store.call_id_exists("old", "call_1").await.unwrap());
    assert_eq!(store.get_turn("t-old").await.unwrap(), None);
    assert!(store.list_step_calls("t-old", 1).await.unwrap().is_empty());
    // The ids are free again, and nothing of the old rows is left to collide with.
    create(&store, "old", "alice").await;
    create(&store, "old-deleted", "alice").await;
    assert_eq!(
        append(&store, message("old", Role::User, "again"))
            .await
            .seq,
        1
    );
    assert_eq!(append_event(&store, "old", &notice("again")).await.seq, 1);
    assert!(store.list_switches("old").await.unwrap().is_empty());
    insert_call(&store, "old", "t-new", 1, "call_1", AwaitingResult).await;

    let fresh = live_session(&store, "fresh").await;
    assert_eq!(fresh.message_count, 1);
    assert_eq!(store.list_messages("fresh").await.unwrap().len(), 1);
}

// ---------------------------------------------------------------------------------------------
// Messages
// ---------------------------------------------------------------------------------------------

async fn appends_messages_in_order_with_consecutive_seqs_and_counts_them(
    store: Arc<dyn RuntimeStore>,
) {
    create(&store, "s1", "alice").await;
    create(&store, "s2", "alice").await;
    let tool_calls = json!([{
        "id": "call_1",
        "type": "function",
        "function": {"name": "read_file", "arguments": "{\"path\":\"a.py\"}"}
    }]);
    let inputs = vec![
        NewMessage {
            content: None,
            ..message("s1", Role::System, "")
        },
        message("s1", Role::User, "read a.py"),
        NewMessage {
            content: None,
            agent: Some("coder".to_owned()),
            tool_calls: Some(tool_calls.clone()),
            ..message("s1", Role::Assistant, "")
        },
        NewMessage {
            tool_call_id: Some("call_1".to_owned()),
            ..message("s1", Role::Tool, "print('hi') — ünïcode kept")
        },
    ];
    let mut stored: Vec<Message> = Vec::new();
    for input in inputs.clone() {
        stored.push(append(&store, input).await);
    }
    let other = append(&store, message("s2", Role::User, "elsewhere")).await;
    assert_eq!(other.seq, 1, "seqs are per session");

    for (i, (message, input)) in stored.iter().zip(&inputs).enumerate() {
        assert_eq!(message.seq, i as i64 + 1);
        assert_eq!(message.session_id, "s1");
        assert_eq!(message.role, input.role);
        assert_eq!(message.content, input.content);
        assert_eq!(message.agent, input.agent);
        assert_eq!(message.tool_calls, input.tool_calls);
        assert_eq!(message.tool_call_id, input.tool_call_id);
        assert!(uuid::Uuid::parse_str(&message.id).is_ok(), "{}", message.id);
    }
    assert!(
        stored
            .windows(2)
            .all(|w| w[0].created_at <= w[1].created_at)
    );
    assert!(stored.windows(2).all(|w| w[0].id != w[1].id));
    assert_eq!(store.list_messages("s1").await.unwrap(), stored);
    assert_eq!(store.list_messages("s2").await.unwrap(), vec![other]);
    assert!(store.list_messages("nope").await.unwrap().is_empty());
    assert_eq!(live_session(&store, "s1").await.message_count, 4);
}

async fn appending_a_message_bumps_the_sessions_last_activity(store: Arc<dyn RuntimeStore>) {
    let created = create(&store, "s1", "alice").await;
    instant_after(created.last_activity);
    let appended = append(&store, message("s1", Role::User, "hi")).await;
    let session = live_session(&store, "s1").await;
    assert!(session.last_activity > created.last_activity);
    assert_eq!(session.last_activity, appended.created_at);
    assert_eq!(session.created_at, created.created_at);
}

async fn concurrent_message_appends_get_distinct_consecutive_seqs(store: Arc<dyn RuntimeStore>) {
    create(&store, "s1", "alice").await;
    let tasks = (0..20)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move {
                append(&store, message("s1", Role::User, &format!("message {i}"))).await
            })
        })
        .collect::<Vec<_>>();
    let mut seqs = Vec::new();
    for task in tasks {
        seqs.push(task.await.unwrap().seq);
    }
    seqs.sort_unstable();
    assert_eq!(seqs, (1..=20).collect::<Vec<i64>>());
    assert_eq!(live_session(&store, "s1").await.message_count, 20);
    let listed = store.list_messages("s1").await.unwrap();
    assert_eq!(
        listed.iter().map(|m| m.seq).collect::<Vec<_>>(),
        (1..=20).collect::<Vec<i64>>()
    );
}

async fn writes_to_an_unknown_session_are_not_found(store: Arc<dyn RuntimeStore>) {
    for err in failed_writes(&store, "nope").await {
        assert!(matches!(err, StoreError::NotFound(_)), "{err:?}");
    }
    assert_eq!(store.get_session("nope").await.unwrap(), None);
}

// ---------------------------------------------------------------------------------------------
// Agent switches
// ---------------------------------------------------------------------------------------------

async fn records_agent_switches_oldest_first_keeping_their_confidence(
    store: Arc<dyn RuntimeStore>,
) {
    create(&store, "s1", "alice").await;
    create(&store, "s2", "alice").await;
    let first = switch("s1", None, "architect", Some("high"));
    let second = AgentSwitch {
        method: "explicit".to_owned(),
        ..switch("s1", Some("architect"), "coder", None)
    };
    let third = AgentSwitch {
        method: "tool".to_owned(),
        ..switch("s1", Some("coder"), "debug", Some("0.85"))
    };
    for s in [&first, &second, &third] {
        record(&store, s.clone()).await;
    }
    record(&store, switch("s2", None, "ask", Some("low"))).await;

    assert_eq!(
        store.list_switches("s1").await.unwrap(),
        vec![first, second, third]
    );
    assert_eq!(store.list_switches("s2").await.unwrap().len(), 1);
    assert!(store.list_switches("nope").await.unwrap().is_empty());
}

// ---------------------------------------------------------------------------------------------
// Tool calls
// ---------------------------------------------------------------------------------------------

async fn stores_tool_calls_and_reads_them_back(store: Arc<dyn RuntimeStore>) {
    create(&store, "s1", "alice").await;
    let pending = ToolCallRecord {
        provider_call_id: Some("toolu_01".to_owned()),
        ..call("s1", "t1", 1, "call_1", PendingApproval)
    };
    let settled = ToolCallRecord {
        tool_name: "read_file".to_owned(),
        arguments: json!({"path": "ä/b.py", "limits": [1, 2, {"deep": null}]}),
        decision: Some("edit".to_owned()),
        feedback: Some("use b.py".to_owned()),
        modified_arguments: Some(json!({"path": "b.py"})),
        result: Some(json!({"content": "print(1)", "lines": 1})),
        error: None,
        settled_at: Some(t0()),
        ..call("s1", "t1", 1, "call_2", Succeeded)
    };
    insert(&store, vec![pending.clone(), settled.clone()]).await;
    insert(&store, Vec::new()).await;

    assert_eq!(
        store.get_tool_call("s1", "call_1").await.unwrap(),
        Some(pending.clone())
    );
    assert_eq!(
        store.get_tool_call("s1", "call_2").await.unwrap(),
        Some(settled.clone())
    );
    assert_eq!(store.get_tool_call("s1", "call_3").await.unwrap(), None);
    assert_eq!(store.get_tool_call("s2", "call_1").await.unwrap(), None);
    assert_eq!(
        store.list_session_calls("s1").await.unwrap(),
        vec![pending, settled]
    );
}

async fn refuses_a_taken_call_id_and_stores_none_of_that_batch(store: Arc<dyn RuntimeStore>) {
    create(&store, "s1", "alice").await;
    create(&store, "s2", "alice").await;
    insert_call(&store, "s1", "t1", 1, "call_1", AwaitingResult).await;

    let err = store
        .insert_tool_calls(vec![
            call("s1", "t1", 2, "call_2", AwaitingResult),
            call("s1", "t1", 2, "call_1", AwaitingResult),
        ])
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Conflict(_)), "{err:?}");
    assert_eq!(store.get_tool_call("s1", "call_2").await.unwrap(), None);
    assert_eq!(
        store
            .get_tool_call("s1", "call_1")
            .await
            .unwrap()
            .unwrap()
            .step,
        1
    );

    let err = store
        .insert_tool_calls(vec![
            call("s1", "t1", 3, "call_3", AwaitingResult),
            call("s1", "t1", 3, "call_3", AwaitingResult),
        ])
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Conflict(_)), "{err:?}");
    assert_eq!(store.get_tool_call("s1", "call_3").await.unwrap(), None);

    // Call ids are unique per session, not globally.
    insert_call(&store, "s2", "t2", 1, "call_1", AwaitingResult).await;
    assert_eq!(store.list_session_calls("s1").await.unwrap().len(), 1);
}

async fn call_id_exists_knows_our_ids_and_the_providers(store: Arc<dyn RuntimeStore>) {
    create(&store, "s1", "alice").await;
    create(&store, "s2", "alice").await;
    let renamed = ToolCallRecord {
        provider_call_id: Some("toolu_01".to_owned()),
        ..call("s1", "t1", 1, "call_x1", AwaitingResult)
    };
    insert(&store, vec![renamed]).await;

    assert!(store.call_id_exists("s1", "call_x1").await.unwrap());
    assert!(store.call_id_exists("s1", "toolu_01").await.unwrap());
    assert!(!store.call_id_exists("s1", "toolu_02").await.unwrap());
    assert!(!store.call_id_exists("s2", "call_x1").await.unwrap());
    assert!(!store.call_id_exists("s2", "toolu_01").await.unwrap());
}

async fn updates_a_call_only_from_an_expected_state_keeping_unset_fields(
    store: Arc<dyn RuntimeStore>,
) {
    create(&store, "s1", "alice").await;
    let original = call("s1", "t1", 1, "call_1", PendingApproval);
    insert(&store, vec![original.clone()]).await;

    let approve = ToolCallUpdate {
        decision: Some("edit".to_owned()),
        feedback: Some("write to b.rs".to_owned()),
        modified_arguments: Some(json!({"path": "b.rs"})),
        ..update(AwaitingResult)
    };
    let UpdateOutcome::Updated(approved) =
        update_call(&store, "s1", "call_1", &[PendingApproval], approve.clone()).await
    else {
        panic!("a pending call must accept the decision");
    };
    assert_eq!(
        approved,
        ToolCallRecord {
            status: ToolCallStatus::AwaitingResult,
            decision: Some("edit".to_owned()),
            feedback: Some("write to b.rs".to_owned()),
            modified_arguments: Some(json!({"path": "b.rs"})),
            ..original.clone()
        }
    );

    // A repeated decision finds the call in another state and changes nothing.
    let repeated = update_call(&store, "s1", "call_1", &[PendingApproval], update(Rejected)).await;
    assert_eq!(repeated, UpdateOutcome::Unchanged(approved.clone()));
    let nothing_expected = update_call(&store, "s1", "call_1", &[], update(Cancelled)).await;
    assert_eq!(nothing_expected, UpdateOutcome::Unchanged(approved.clone()));

    let before_settling = Utc::now().trunc_subsecs(6);
    let result = ToolCallUpdate {
        result: Some(json!({"written": 12})),
        settle: true,
        tool_message: None,
        ..update(Succeeded)
    };
    let UpdateOutcome::Updated(settled) = update_call(
        &store,
        "s1",
        "call_1",
        &[PendingApproval, AwaitingResult],
        result,
    )
    .await
    else {
        panic!("an awaited call must accept its result");
    };
    assert_eq!(settled.status, ToolCallStatus::Succeeded);
    assert_eq!(settled.result, Some(json!({"written": 12})));
    // Fields the update left unset keep what the decision stored.
    assert_eq!(settled.decision.as_deref(), Some("edit"));
    assert_eq!(settled.feedback.as_deref(), Some("write to b.rs"));
    assert_eq!(settled.modified_arguments, Some(json!({"path": "b.rs"})));
    assert_eq!(settled.arguments, original.arguments);
    let settled_at = settled
        .settled_at
        .expect("a settling update sets settled_at");
    assert!(settled_at >= before_settling && settled_at <= Utc::now());
    assert_eq!(
        store.get_tool_call("s1", "call_1").await.unwrap(),
        Some(settled)
    );

    let missing = update_call(&store, "s1", "call_9", &[PendingApproval], update(Rejected)).await;
    assert_eq!(missing, UpdateOutcome::NotFound);
    let other_session = update_call(&store, "s2", "call_1", &[Succeeded], update(Failed)).await;
    assert_eq!(other_session, UpdateOutcome::NotFound);
}

async fn of_twenty_concurrent_settlements_of_one_call_exactly_one_wins(
    store: Arc<dyn RuntimeStore>,
) {
    create(&store, "s1", "alice").await;
    insert_call(&store, "s1", "t1", 1, "call_1", PendingApproval).await;
    let barrier = Arc::new(tokio::sync::Barrier::new(20));
    let tasks = (0..20)
        .map(|i| {
            let store = store.clone();
            let barrier = barrier.clone();
            tokio::spawn(async move {
                let settle = ToolCallUpdate {
                    result: Some(json!({"attempt": i})),
                    settle: true,
                    tool_message: None,
                    ..update(if i % 2 == 0 {
                        ToolCallStatus::Succeeded
                    } else {
                        ToolCallStatus::Rejected
                    })
                };
                barrier.wait().await;
                update_call(
                    &store,
                    "s1",
                    "call_1",
                    &[PendingApproval, AwaitingResult],
                    settle,
                )
                .await
            })
        })
        .collect::<Vec<_>>();
    let mut winners = Vec::new();
    let mut unchanged = 0;
    for task in tasks {
        match task.await.unwrap() {
            UpdateOutcome::Updated(record) => winners.push(record),
            UpdateOutcome::Unchanged(_) => unchanged += 1,
            UpdateOutcome::NotFound => panic!("the call exists"),
        }
    }
    assert_eq!(winners.len(), 1, "exactly one settlement applies");
    assert_eq!(unchanged, 19);
    let stored = store.get_tool_call("s1", "call_1").await.unwrap();
    assert_eq!(
        stored.as_ref(),
        winners.first(),
        "the winner's outcome is what is stored"
    );
}

async fn lists_a_steps_calls_in_the_order_the_model_made_them(store: Arc<dyn RuntimeStore>) {
    create(&store, "s1", "alice").await;
    insert(
        &store,
        ["call_z", "call_a", "call_m"]
            .iter()
            .map(|id| call("s1", "t1", 1, id, AwaitingResult))
            .collect(),
    )
    .await;
    insert(
        &store,
        vec![
            call("s1", "t1", 2, "call_b", AwaitingResult),
            call("s1", "t1", 2, "call_0", Executed),
        ],
    )
    .await;
    insert_call(&store, "s1", "t2", 1, "call_c", AwaitingResult).await;

    assert_eq!(
        ids(&store.list_step_calls("t1", 1).await.unwrap()),
        ["call_z", "call_a", "call_m"]
    );
    assert_eq!(
        ids(&store.list_step_calls("t1", 2).await.unwrap()),
        ["call_b", "call_0"]
    );
    assert_eq!(
        ids(&store.list_step_calls("t2", 1).await.unwrap()),
        ["call_c"]
    );
    assert!(store.list_step_calls("t1", 3).await.unwrap().is_empty());
}

async fn lists_open_calls_and_all_calls_of_a_session_oldest_first(store: Arc<dyn RuntimeStore>) {
    create(&store, "s1", "alice").await;
    create(&store, "s2", "alice").await;
    insert(
        &store,
        vec![
            call("s1", "t1", 1, "call_4", PendingApproval),
            call("s1", "t1", 1, "call_3", AwaitingResult),
            call("s1", "t1", 1, "call_2", Executed),
            call("s1", "t1", 1, "call_1", Invalid),
        ],
    )
    .await;
    insert_call(&store, "s1", "t1", 2, "call_0", PendingApproval).await;
    insert_call(&store, "s2", "t9", 1, "call_9", PendingApproval).await;
    let settle = ToolCallUpdate {
        settle: true,
        tool_message: None,
        ..update(Rejected)
    };
    update_call(&store, "s1", "call_4", &[PendingApproval], settle).await;

    assert_eq!(
        ids(&store.list_open_calls("s1").await.unwrap()),
        ["call_3", "call_0"]
    );
    assert_eq!(
        ids(&store.list_session_calls("s1").await.unwrap()),
        ["call_4", "call_3", "call_2", "call_1", "call_0"]
    );
    assert_eq!(ids(&store.list_open_calls("s2").await.unwrap()), ["call_9"]);
    assert!(store.list_open_calls("nope").await.unwrap().is_empty());
}

async fn counts_the_calls_waiting_for_approval_in_all_live_sessions(store: Arc<dyn RuntimeStore>) {
    assert_eq!(store.count_pending_approvals().await.unwrap(), 0);
    create(&store, "s1", "alice").await;
    create(&store, "s2", "bob").await;
    create(&store, "gone", "alice").await;
    insert(
        &store,
        vec![
            call("s1", "t1", 1, "call_1", PendingApproval),
            call("s1", "t1", 1, "call_2", PendingApproval),
            call("s1", "t1", 1, "call_3", AwaitingResult),
            call("s1", "t1", 1, "call_4", Succeeded),
            call("s1", "t1", 1, "call_5", Rejected),
            call("s1", "t1", 1, "call_6", ToolCallStatus::Cancelled),
            call("s1", "t1", 1, "call_7", Executed),
        ],
    )
    .await;
    insert(
        &store,
        vec![
            call("s2", "t2", 1, "call_1", PendingApproval),
            call("s2", "t2", 1, "call_2", ToolCallStatus::Failed),
            call("s2", "t2", 1, "call_3", Invalid),
        ],
    )
    .await;
    insert_call(&store, "gone", "t3", 1, "call_1", PendingApproval).await;
    assert_eq!(
        store.count_pending_approvals().await.unwrap(),
        4,
        "the pending_approval calls of every session, nothing else"
    );

    // A deleted session's calls wait for nobody.
    assert!(store.delete_session("gone").await.unwrap());
    assert_eq!(store.count_pending_approvals().await.unwrap(), 3);

    // Approved (now awaiting its result) and rejected calls no longer count.
    let approve = ToolCallUpdate {
        decision: Some("approve".to_owned()),
        ..update(AwaitingResult)
    };
    let outcome = update_call(&store, "s1", "call_1", &[PendingApproval], approve).await;
    assert!(matches!(outcome, UpdateOutcome::Updated(_)), "{outcome:?}");
    let reject = ToolCallUpdate {
        decision: Some("reject".to_owned()),
        settle: true,
        ..update(Rejected)
    };
    let outcome = update_call(&store, "s2", "call_1", &[PendingApproval], reject).await;
    assert!(matches!(outcome, UpdateOutcome::Updated(_)), "{outcome:?}");
    assert_eq!(store.count_pending_approvals().await.unwrap(), 1);
}

// ---------------------------------------------------------------------------------------------
// Turns
// ---------------------------------------------------------------------------------------------

async fn a_turn_is_active_until_it_finishes(store: Arc<dyn RuntimeStore>) {
    create(&store, "s1", "alice").await;
    let running = turn("t1", "s1", TurnStatus::Running, t0());
    start_turn(&store, running.clone()).await;
    assert_eq!(store.get_turn("t1").await.unwrap(), Some(running.clone()));
    assert_eq!(
        store.active_turn("s1").await.unwrap(),
        Some(running.clone())
    );
    assert_eq!(store.get_turn("t9").await.unwrap(), None);

    let err = store.create_turn(running.clone()).await.unwrap_err();
    assert!(matches!(err, StoreError::Conflict(_)), "{err:?}");

    update_turn(&store, "t1", TurnStatus::AwaitingTools, 1, "architect").await;
    let waiting = store.active_turn("s1").await.unwrap().unwrap();
    assert_eq!(
        (waiting.status, waiting.steps, waiting.agent.as_str()),
        (TurnStatus::AwaitingTools, 1, "architect")
    );
    assert_eq!(waiting.created_at, running.created_at);
    assert!(waiting.updated_at >= running.updated_at);

    update_turn(&store, "t1", TurnStatus::Completed, 2, "architect").await;
    assert_eq!(store.active_turn("s1").await.unwrap(), None);
    let done = store.get_turn("t1").await.unwrap().unwrap();
    assert_eq!((done.status, done.steps), (TurnStatus::Completed, 2));

    for finished in [
        TurnStatus::Cancelled,
        TurnStatus::Failed,
        TurnStatus::StepLimit,
    ] {
        update_turn(&store, "t1", TurnStatus::Running, 2, "architect").await;
        assert!(store.active_turn("s1").await.unwrap().is_some());
        update_turn(&store, "t1", finished, 3, "architect").await;
        assert_eq!(
            store.active_turn("s1").await.unwrap(),
            None,
            "{finished:?} is finished"
        );
    }

    let err = store
        .update_turn("t9", TurnStatus::Completed, 1, "coder")
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::NotFound(_)), "{err:?}");
}

async fn the_active_turn_is_the_newest_unfinished_one(store: Arc<dyn RuntimeStore>) {
    create(&store, "s1", "alice").await;
    create(&store, "s2", "alice").await;
    let now = t0();
    let at = |seconds| now + chrono::Duration::seconds(seconds);
    start_turn(&store, turn("t-old", "s1", TurnStatus::Running, at(-20))).await;
    let middle = turn("t-mid", "s1", TurnStatus::AwaitingTools, at(-10));
    start_turn(&store, middle.clone()).await;
    start_turn(&store, turn("t-new", "s1", TurnStatus::Completed, now)).await;
    start_turn(&store, turn("t-other", "s2", TurnStatus::Running, at(5))).await;

    assert_eq!(store.active_turn("s1").await.unwrap(), Some(middle));
    assert_eq!(store.active_turn("nope").await.unwrap(), None);
}

// ---------------------------------------------------------------------------------------------
// Events
// ---------------------------------------------------------------------------------------------

async fn numbers_events_from_one_per_session(store: Arc<dyn RuntimeStore>) {
    create(&store, "s1", "alice").await;
    create(&store, "s2", "alice").await;
    let events = [
        RuntimeEvent::SessionInfo {
            session_id: "s1".to_owned(),
            current_agent: "orchestrator".to_owned(),
        },
        RuntimeEvent::ToolCall {
            call_id: "call_1".to_owned(),
            tool_name: "write_file".to_owned(),
            arguments: json!({"path": "a.py", "content": "ünïcode"}),
            requires_approval: true,
            approval_reason: Some("File modification requires user approval".to_owned()),
            agent: "coder".to_owned(),
        },
        RuntimeEvent::TurnFinished {
            outcome: TurnOutcome::AwaitingTools,
        },
    ];
    for (i, event) in events.iter().enumerate() {
        let stored = append_event(&store, "s1", event).await;
        assert_eq!(stored.seq, i as u64 + 1);
        assert_eq!(&stored.event, event);
    }
    assert_eq!(append_event(&store, "s2", &notice("other")).await.seq, 1);

    let listed = store.list_events("s1", 0, 100).await.unwrap();
    assert_eq!(listed.iter().map(|e| e.seq).collect::<Vec<_>>(), [1, 2, 3]);
    assert_eq!(
        listed.into_iter().map(|e| e.event).collect::<Vec<_>>(),
        events
    );
}

async fn lists_events_after_a_seq_up_to_a_limit(store: Arc<dyn RuntimeStore>) {
    create(&store, "s1", "alice").await;
    for i in 1..=5 {
        append_event(&store, "s1", &notice(&format!("event {i}"))).await;
    }
    let seqs = |after: u64, limit: u32| {
        let store = store.clone();
        async move {
            store
                .list_events("s1", after, limit)
                .await
                .unwrap()
                .into_iter()
                .map(|e| e.seq)
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(seqs(0, 100).await, [1, 2, 3, 4, 5]);
    assert_eq!(seqs(2, 2).await, [3, 4]);
    assert_eq!(seqs(4, 10).await, [5]);
    assert!(seqs(5, 10).await.is_empty());
    assert!(seqs(u64::MAX, 10).await.is_empty());
    assert!(seqs(0, 0).await.is_empty());
    let third = store.list_events("s1", 2, 1).await.unwrap();
    assert_eq!(third[0].event, notice("event 3"));
    assert!(store.list_events("nope", 0, 10).await.unwrap().is_empty());
}

async fn concurrent_event_appends_get_distinct_consecutive_seqs(store: Arc<dyn RuntimeStore>) {
    create(&store, "s1", "alice").await;
    let tasks = (0..20)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move {
                // Messages interleave with events: both counters live on the session row.
                if i % 4 == 0 {
                    append(&store, message("s1", Role::User, "hi")).await;
                }
                append_event(&store, "s1", &notice(&format!("event {i}")))
                    .await
                    .seq
            })
        })
        .collect::<Vec<_>>();
    let mut seqs = Vec::new();
    for task in tasks {
        seqs.push(task.await.unwrap());
    }
    seqs.sort_unstable();
    assert_eq!(seqs, (1..=20).collect::<Vec<u64>>());
    assert_eq!(store.list_events("s1", 0, 100).await.unwrap().len(), 20);
    assert_eq!(live_session(&store, "s1").await.message_count, 5);
}

// ---------------------------------------------------------------------------------------------
// Session locks
// ---------------------------------------------------------------------------------------------

async fn a_second_lock_on_a_session_waits_until_the_first_is_dropped(store: Arc<dyn RuntimeStore>) {
    let first = store.lock_session("s1").await.unwrap();
    let mut second = tokio::spawn({
        let store = store.clone();
        async move { store.lock_session("s1").await.unwrap() }
    });
    assert!(
        timeout(STILL_WAITING, &mut second).await.is_err(),
        "the second lock must wait while the first is held"
    );
    drop(first);
    let second = timeout(PROMPTLY, second)
        .await
        .expect("the second lock is granted once the first is dropped")
        .unwrap();
    drop(second);
}

async fn locks_on_different_sessions_do_not_block_each_other(store: Arc<dyn RuntimeStore>) {
    let first = store.lock_session("s1").await.unwrap();
    let second = timeout(PROMPTLY, store.lock_session("s2"))
        .await
        .expect("another session's lock is granted while s1 is held")
        .unwrap();
    drop((first, second));
}

async fn a_cancelled_lock_wait_leaves_the_session_unlocked(store: Arc<dyn RuntimeStore>) {
    let first = store.lock_session("s1").await.unwrap();
    assert!(
        timeout(STILL_WAITING, store.lock_session("s1"))
            .await
            .is_err(),
        "the wait is cancelled while the first lock is held"
    );
    drop(first);
    // Were the cancelled request still queued (or its connection back in a pool holding the
    // lock), this would hang.
    let again = timeout(PROMPTLY, store.lock_session("s1"))
        .await
        .expect("the session is free after the holder and the cancelled waiter are gone")
        .unwrap();
    drop(again);
}

async fn a_session_can_be_locked_and_released_many_times(store: Arc<dyn RuntimeStore>) {
    // More cycles than any pool has connections: a guard that kept or leaked its connection
    // would exhaust the pool.
    for i in 0..40 {
        let guard = timeout(
            PROMPTLY,
            store.lock_session(if i % 2 == 0 { "s1" } else { "s2" }),
        )
        .await
        .unwrap_or_else(|_| panic!("lock {i} was not granted"))
        .unwrap();
        drop(guard);
    }
    store.ping().await.unwrap();
}

async fn try_lock_answers_none_while_the_session_is_held(store: Arc<dyn RuntimeStore>) {
    let held = store
        .try_lock_session("s1")
        .await
        .unwrap()
        .expect("a free session");
    assert!(store.try_lock_session("s1").await.unwrap().is_none());
    let other = store.try_lock_session("s2").await.unwrap();
    assert!(other.is_some(), "another session is free");
    // A waiting lock_session is not granted while try_lock's guard is held.
    assert!(
        timeout(STILL_WAITING, store.lock_session("s1"))
            .await
            .is_err()
    );
    drop(held);
    // The release may take a moment (PostgreSQL unlocks on a task).
    let again = timeout(PROMPTLY, async {
        loop {
            if let Some(guard) = store.try_lock_session("s1").await.unwrap() {
                return guard;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the session is free again");
    drop((again, other));
    // Failed attempts keep no connection: more than any pool holds.
    let held = store.lock_session("s3").await.unwrap();
    for _ in 0..40 {
        assert!(store.try_lock_session("s3").await.unwrap().is_none());
    }
    drop(held);
    store.ping().await.unwrap();
}

/// A session `s1` with a running turn `t1` at step 1 and its user message.
async fn running_turn(store: &Arc<dyn RuntimeStore>) {
    create(store, "s1", "alice").await;
    let commit = StepCommit {
        new_turn: Some(turn("t1", "s1", TurnStatus::Running, t0())),
        messages: vec![message("s1", Role::User, "write main.rs")],
        events: vec![notice("turn started")],
        ..step("s1")
    };
    store.commit_step(commit).await.unwrap();
    update_turn(store, "t1", TurnStatus::Running, 1, "coder").await;
}

fn assistant_calling(session_id: &str, call_ids: &[&str]) -> NewMessage {
    NewMessage {
        session_id: session_id.to_owned(),
        role: Role::Assistant,
        content: Some("Let me look.".to_owned()),
        agent: Some("coder".to_owned()),
        tool_calls: Some(json!(
            call_ids
                .iter()
                .map(|id| json!({
                    "id": id, "type": "function",
                    "function": {"name": "write_file", "arguments": "{}"}
                }))
                .collect::<Vec<_>>()
        )),
        tool_call_id: None,
    }
}

/// A commit to `session_id` of nothing yet.
pub(crate) fn step(session_id: &str) -> StepCommit {
    StepCommit {
        session_id: session_id.to_owned(),
        ..StepCommit::default()
    }
}

fn step_update(status: TurnStatus, steps: i32, expect: Option<(TurnStatus, i32)>) -> TurnUpdate {
    TurnUpdate {
        turn_id: "t1".into(),
        status,
        steps,
        agent: "architect".into(),
        plan_id: None,
        plan_required: false,
        expect,
    }
}

/// More rows than one multi-row insert takes (the store splits them).
async fn a_commit_of_many_messages_and_events_keeps_their_order_and_seqs(
    store: Arc<dyn RuntimeStore>,
) {
    running_turn(&store).await;
    let texts: Vec<String> = (0..21).map(|i| format!("part {i}")).collect();
    let commit = StepCommit {
        messages: texts
            .iter()
            .map(|text| message("s1", Role::Assistant, text))
            .collect(),
        events: texts.iter().map(|text| notice(text)).collect(),
        ..step("s1")
    };
    let committed = store.commit_step(commit).await.unwrap();
    let seqs: Vec<i64> = committed.messages.iter().map(|m| m.seq).collect();
    assert_eq!(seqs, (2..=22).collect::<Vec<_>>(), "after the user message");
    let messages = store.list_messages("s1").await.unwrap();
    assert_eq!(messages[1..], committed.messages[..]);
    let contents: Vec<&str> = messages[1..]
        .iter()
        .filter_map(|m| m.content.as_deref())
        .collect();
    assert_eq!(contents, texts);
    let event_seqs: Vec<u64> = committed.events.iter().map(|e| e.seq).collect();
    assert_eq!(event_seqs, (2..=22).collect::<Vec<_>>());
    assert_eq!(
        store.list_events("s1", 1, 100).await.unwrap(),
        committed.events
    );
    let session = live_session(&store, "s1").await;
    assert_eq!(session.message_count, 22);
    // The next append goes on from there.
    let next = append(&store, message("s1", Role::User, "next")).await;
    assert_eq!(next.seq, 23);
    assert_eq!(append_event(&store, "s1", &notice("next")).await.seq, 23);
}

async fn reads_a_sessions_state_as_the_single_reads_do(store: Arc<dyn RuntimeStore>) {
    assert_eq!(store.session_state("s0", true).await.unwrap(), None);
    create(&store, "s0", "alice").await;
    let state = store.session_state("s0", true).await.unwrap().unwrap();
    assert_eq!(state.session, live_session(&store, "s0").await);
    assert_eq!(state.active_turn, None);
    assert!(state.step_calls.is_empty() && state.open_calls.is_empty());

    // A turn at step 0 has no step calls yet.
    running_turn(&store).await;
    update_turn(&store, "t1", TurnStatus::Running, 0, "coder").await;
    let state = store.session_state("s1", true).await.unwrap().unwrap();
    assert_eq!(state.active_turn, store.active_turn("s1").await.unwrap());
    assert!(state.step_calls.is_empty());

    // Step 2 waits on calls; an open call of step 1 stays open too.
    update_turn(&store, "t1", TurnStatus::AwaitingTools, 2, "coder").await;
    insert_call(&store, "s1", "t1", 1, "call_1", AwaitingResult).await;
    insert_call(&store, "s1", "t1", 2, "call_2", PendingApproval).await;
    insert_call(&store, "s1", "t1", 2, "call_3", Succeeded).await;
    let state = store.session_state("s1", true).await.unwrap().unwrap();
    assert_eq!(state.session, live_session(&store, "s1").await);
    assert_eq!(state.active_turn, store.active_turn("s1").await.unwrap());
    assert_eq!(
        state.step_calls,
        store.list_step_calls("t1", 2).await.unwrap()
    );
    assert_eq!(ids(&state.step_calls), ["call_2", "call_3"]);
    assert_eq!(state.open_calls, store.list_open_calls("s1").await.unwrap());
    assert_eq!(ids(&state.open_calls), ["call_1", "call_2"]);
    // Open calls only when asked for.
    let state = store.session_state("s1", false).await.unwrap().unwrap();
    assert!(state.open_calls.is_empty());
    assert_eq!(state.step_calls.len(), 2);

    // A finished turn is not active; a deleted session has no state.
    update_turn(&store, "t1", TurnStatus::Completed, 2, "coder").await;
    let state = store.session_state("s1", false).await.unwrap().unwrap();
    assert_eq!((state.active_turn, state.step_calls.len()), (None, 0));
    assert!(store.delete_session("s1").await.unwrap());
    assert_eq!(store.session_state("s1", true).await.unwrap(), None);
}

async fn commits_a_steps_outcome_in_one_transaction(store: Arc<dyn RuntimeStore>) {
    running_turn(&store).await;
    let mut invalid = call("s1", "t1", 1, "call_2", Invalid);
    invalid.error = Some("bad arguments".into());
    let commit = StepCommit {
        title: Some("Write main.rs".into()),
        messages: vec![
            assistant_calling("s1", &["call_1", "call_2"]),
            NewMessage::tool_result("s1", "call_2", "Error: bad arguments"),
        ],
        calls: vec![call("s1", "t1", 1, "call_1", PendingApproval), invalid],
        switches: vec![switch("s1", Some("coder"), "architect", None)],
        turn: Some(step_update(
            TurnStatus::AwaitingTools,
            1,
            Some((TurnStatus::Running, 1)),
        )),
        events: vec![notice("call_1 waits"), notice("step 1 done")],
        ..step("s1")
    };
    let committed = store.commit_step(commit).await.unwrap();
    let stored = committed.messages;
    assert_eq!(stored.len(), 2);
    assert_eq!(
        stored.iter().map(|m| m.seq).collect::<Vec<_>>(),
        [2, 3],
        "after the user message"
    );
    assert_eq!(stored[1].tool_call_id.as_deref(), Some("call_2"));
    // The events come after the one stored with the user message, in order.
    let seqs: Vec<u64> = committed.events.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, [2, 3]);
    assert_eq!(
        store.list_events("s1", 1, 10).await.unwrap(),
        committed.events
    );

    let messages = store.list_messages("s1").await.unwrap();
    assert_eq!(messages.len(), 3);
    assert_eq!(messages[1], stored[0]);
    let calls = store.list_step_calls("t1", 1).await.unwrap();
    assert_eq!(ids(&calls), ["call_1", "call_2"]);
    assert_eq!(calls[1].error.as_deref(), Some("bad arguments"));
    let session = live_session(&store, "s1").await;
    assert_eq!(session.current_agent, "architect");
    assert_eq!(session.message_count, 3);
    assert_eq!(session.title.as_deref(), Some("Write main.rs"));
    // A title once set stays.
    let commit = StepCommit {
        title: Some("another".into()),
        ..step("s1")
    };
    store.commit_step(commit).await.unwrap();
    let session = live_session(&store, "s1").await;
    assert_eq!(session.title.as_deref(), Some("Write main.rs"));
    assert_eq!(store.list_switches("s1").await.unwrap().len(), 1);
    let turn = store.get_turn("t1").await.unwrap().unwrap();
    assert_eq!(turn.status, TurnStatus::AwaitingTools);
    assert_eq!((turn.steps, turn.agent.as_str()), (1, "architect"));

    // An empty commit changes nothing and is fine; one on a missing session is NotFound.
    assert!(
        store
            .commit_step(StepCommit {
                session_id: "s1".into(),
                ..StepCommit::default()
            })
            .await
            .unwrap()
            == Committed::default()
    );
    let commit = StepCommit {
        messages: vec![message("nope", Role::User, "x")],
        ..step("nope")
    };
    let missing = store.commit_step(commit).await;
    assert!(
        matches!(missing, Err(StoreError::NotFound(_))),
        "{missing:?}"
    );
}

async fn a_commit_can_start_a_turn_with_its_user_message(store: Arc<dyn RuntimeStore>) {
    create(&store, "s1", "alice").await;
    let mut started = turn("t1", "s1", TurnStatus::Running, t0());
    started.agent = "debug".into();
    let commit = StepCommit {
        new_turn: Some(started.clone()),
        messages: vec![message("s1", Role::User, "why does it crash?")],
        switches: vec![switch("s1", Some("orchestrator"), "debug", Some("high"))],
        ..step("s1")
    };
    let stored = store.commit_step(commit).await.unwrap();
    assert_eq!(
        stored.messages[0].content.as_deref(),
        Some("why does it crash?")
    );
    assert_eq!(store.active_turn("s1").await.unwrap(), Some(started));
    assert_eq!(live_session(&store, "s1").await.current_agent, "debug");
    // The same turn id again: nothing of that commit is stored.
    let commit = StepCommit {
        new_turn: Some(turn("t1", "s1", TurnStatus::Running, t0())),
        messages: vec![message("s1", Role::User, "again")],
        ..step("s1")
    };
    let again = store.commit_step(commit).await;
    assert!(matches!(again, Err(StoreError::Conflict(_))), "{again:?}");
    assert_eq!(store.list_messages("s1").await.unwrap().len(), 1);
}

async fn a_failing_commit_stores_nothing_of_the_step(store: Arc<dyn RuntimeStore>) {
    running_turn(&store).await;
    insert_call(&store, "s1", "t1", 1, "call_taken", Succeeded).await;
    let before = store.get_turn("t1").await.unwrap().unwrap();
    let commit = StepCommit {
        title: Some("never set".into()),
        messages: vec![assistant_calling("s1", &["call_new", "call_taken"])],
        calls: vec![
            call("s1", "t1", 1, "call_new", AwaitingResult),
            call("s1", "t1", 1, "call_taken", AwaitingResult),
        ],
        switches: vec![switch("s1", Some("coder"), "architect", None)],
        turn: Some(step_update(TurnStatus::AwaitingTools, 1, None)),
        events: vec![notice("never told")],
        ..step("s1")
    };
    let failed = store.commit_step(commit).await;
    assert!(matches!(failed, Err(StoreError::Conflict(_))), "{failed:?}");
    assert_eq!(
        store.list_events("s1", 0, 10).await.unwrap().len(),
        1,
        "only the user message's event"
    );
    // Nothing of it: no assistant message, no new call, no switch, the turn as it was.
    assert_eq!(store.list_messages("s1").await.unwrap().len(), 1);
    let session = live_session(&store, "s1").await;
    assert_eq!(
        (session.message_count, session.current_agent.as_str()),
        (1, "orchestrator")
    );
    assert_eq!(session.title, None);
    assert!(
        store
            .get_tool_call("s1", "call_new")
            .await
            .unwrap()
            .is_none()
    );
    assert!(store.list_switches("s1").await.unwrap().is_empty());
    assert_eq!(store.get_turn("t1").await.unwrap().unwrap(), before);
    // The next message still gets the next seq: the failed commit used none.
    let next = append(&store, message("s1", Role::User, "next")).await;
    assert_eq!(next.seq, 2);
}

async fn a_commit_against_a_turn_that_moved_on_is_stale_and_stores_nothing(
    store: Arc<dyn RuntimeStore>,
) {
    running_turn(&store).await;
    // Another runner finished step 1 meanwhile.
    update_turn(&store, "t1", TurnStatus::Completed, 1, "coder").await;
    let commit = StepCommit {
        messages: vec![message("s1", Role::Assistant, "late answer")],
        turn: Some(step_update(
            TurnStatus::Completed,
            1,
            Some((TurnStatus::Running, 1)),
        )),
        ..step("s1")
    };
    let stale = store.commit_step(commit).await;
    let Err(StoreError::Stale(text)) = stale else {
        panic!("expected Stale, got {stale:?}")
    };
    assert!(text.contains("no longer running at step 1"), "{text}");
    assert_eq!(store.list_messages("s1").await.unwrap().len(), 1);
    // Without `expect` a missing turn is NotFound.
    let commit = StepCommit {
        turn: Some(TurnUpdate {
            turn_id: "nope".into(),
            ..step_update(TurnStatus::Completed, 1, None)
        }),
        ..step("s1")
    };
    let missing = store.commit_step(commit).await;
    assert!(
        matches!(missing, Err(StoreError::NotFound(_))),
        "{missing:?}"
    );
}

async fn settling_a_call_appends_its_tool_message_exactly_once(store: Arc<dyn RuntimeStore>) {
    running_turn(&store).await;
    insert_call(&store, "s1", "t1", 1, "call_1", AwaitingResult).await;
    let settle = ToolCallUpdate {
        result: Some(json!("done")),
        settle: true,
        tool_message: Some("done".into()),
        ..update(Succeeded)
    };
    let first = update_call(&store, "s1", "call_1", &[AwaitingResult], settle.clone()).await;
    assert!(matches!(first, UpdateOutcome::Updated(_)));
    let again = update_call(&store, "s1", "call_1", &[AwaitingResult], settle).await;
    assert!(matches!(again, UpdateOutcome::Unchanged(_)));
    let messages = store.list_messages("s1").await.unwrap();
    let tools: Vec<&Message> = messages.iter().filter(|m| m.role == Role::Tool).collect();
    assert_eq!(tools.len(), 1, "one tool message for one settlement");
    assert_eq!(tools[0].tool_call_id.as_deref(), Some("call_1"));
    assert_eq!(tools[0].content.as_deref(), Some("done"));
}

async fn a_cancel_request_marks_the_active_turn_once(store: Arc<dyn RuntimeStore>) {
    create(&store, "s1", "alice").await;
    assert_eq!(store.request_cancel("s1").await.unwrap(), None);
    start_turn(&store, turn("t_old", "s1", TurnStatus::Completed, t0())).await;
    assert_eq!(
        store.request_cancel("s1").await.unwrap(),
        None,
        "a finished turn is not asked to stop"
    );
    start_turn(&store, turn("t1", "s1", TurnStatus::AwaitingTools, t0())).await;
    let first = store.request_cancel("s1").await.unwrap().unwrap();
    assert_eq!(first.id, "t1");
    let at = first.cancel_requested_at.expect("marked");
    let second = store.request_cancel("s1").await.unwrap().unwrap();
    assert_eq!(
        second.cancel_requested_at,
        Some(at),
        "the first request's time stays"
    );
    assert_eq!(store.get_turn("t1").await.unwrap().unwrap(), second);
    assert_eq!(
        store
            .get_turn("t_old")
            .await
            .unwrap()
            .unwrap()
            .cancel_requested_at,
        None
    );
    assert_eq!(store.request_cancel("nope").await.unwrap(), None);
}

async fn lists_the_turns_that_lost_their_runner(store: Arc<dyn RuntimeStore>) {
    // s1: running (its runner may have died). s2: waits on an open call (not stalled).
    // s3: waits, but every call of its step is settled (stalled). s4: completed. s5: running,
    // in a deleted session. s6: waits without a call at its step (`recover` leaves it, so it
    // is not listed sweep after sweep). s7: an older running turn behind a newer waiting one
    // (`recover` reads only the newest).
    for id in ["s1", "s2", "s3", "s4", "s5", "s6", "s7"] {
        create(&store, id, "alice").await;
    }
    let turns = [
        ("t1", "s1", TurnStatus::Running),
        ("t2", "s2", TurnStatus::AwaitingTools),
        ("t3", "s3", TurnStatus::AwaitingTools),
        ("t4", "s4", TurnStatus::Completed),
        ("t5", "s5", TurnStatus::Running),
        ("t6", "s6", TurnStatus::AwaitingTools),
        ("t7a", "s7", TurnStatus::Running),
        ("t7b", "s7", TurnStatus::AwaitingTools),
    ];
    for (id, session, status) in turns {
        start_turn(&store, turn(id, session, status, t0())).await;
        update_turn(&store, id, status, 1, "coder").await;
    }
    insert(
        &store,
        vec![
            call("s2", "t2", 1, "c2", AwaitingResult),
            call("s2", "t2", 1, "c2b", Succeeded),
        ],
    )
    .await;
    insert_call(&store, "s3", "t3", 1, "c3", Succeeded).await;
    insert_call(&store, "s7", "t7b", 1, "c7", AwaitingResult).await;
    store.delete_session("s5").await.unwrap();
    let stalled = store.list_stalled_turns(10).await.unwrap();
    let mut found: Vec<&str> = stalled.iter().map(|t| t.id.as_str()).collect();
    found.sort_unstable();
    assert_eq!(found, ["t1", "t3"]);
    assert_eq!(store.list_stalled_turns(1).await.unwrap().len(), 1);
}

/// A priced step call of turn `t1` in `s1`, made at `at`.
fn usage(id: &str, at: DateTime<Utc>) -> LlmUsage {
    LlmUsage {
        id: id.to_owned(),
        created_at: at,
        user_id: String::new(),
        session_id: "s1".to_owned(),
        turn_id: Some("t1".to_owned()),
        step: 1,
        agent: "coder".to_owned(),
        purpose: UsagePurpose::Step,
        requested_model: "gpt-4o".to_owned(),
        provider: Some("openai".to_owned()),
        model: Some("gpt-4o-2024-08-06".to_owned()),
        prompt_tokens: 1200,
        completion_tokens: 80,
        total_tokens: 1280,
        cached_tokens: 1024,
        cost: Some(0.001_234_5),
        latency_ms: 950,
        ttft_ms: Some(210),
        tool_calls: 2,
        outcome: UsageOutcome::Ok,
        error_kind: None,
    }
}

async fn counts_each_llm_call_with_its_step_and_keeps_it_after_the_session(
    store: Arc<dyn RuntimeStore>,
) {
    running_turn(&store).await;
    let routing = LlmUsage {
        step: 0,
        agent: "orchestrator".to_owned(),
        purpose: UsagePurpose::Routing,
        provider: None,
        model: None,
        cost: None,
        ttft_ms: None,
        outcome: UsageOutcome::Error,
        error_kind: Some("status_503".to_owned()),
        ..usage("u0", t0())
    };
    let answer = usage("u1", t0() + chrono::Duration::seconds(1));
    let commit = StepCommit {
        messages: vec![message("s1", Role::Assistant, "done")],
        usage: vec![routing.clone(), answer.clone()],
        ..step("s1")
    };
    store.commit_step(commit).await.unwrap();
    let stored = store.session_usage("s1").await.unwrap();
    let owned = |row: &LlmUsage| LlmUsage {
        user_id: "alice".to_owned(),
        ..row.clone()
    };
    assert_eq!(
        stored,
        [owned(&routing), owned(&answer)],
        "the owner is the user"
    );

    // A step that is not stored is not counted.
    update_turn(&store, "t1", TurnStatus::Completed, 1, "coder").await;
    let commit = StepCommit {
        turn: Some(step_update(
            TurnStatus::Completed,
            1,
            Some((TurnStatus::Running, 1)),
        )),
        usage: vec![usage("u2", t0())],
        ..step("s1")
    };
    assert!(matches!(
        store.commit_step(commit).await,
        Err(StoreError::Stale(_))
    ));
    // Nor is a call of a session that does not exist.
    let commit = StepCommit {
        usage: vec![LlmUsage {
            session_id: "nope".to_owned(),
            ..usage("u3", t0())
        }],
        ..step("nope")
    };
    assert!(matches!(
        store.commit_step(commit).await,
        Err(StoreError::NotFound(_))
    ));
    assert_eq!(store.session_usage("s1").await.unwrap().len(), 2);

    // What was spent stays spent: deleted, even purged, the session's calls remain.
    assert!(store.delete_session("s1").await.unwrap());
    assert_eq!(store.session_usage("s1").await.unwrap().len(), 2);
    let cutoff = Utc::now() + chrono::Duration::days(1);
    store.purge_idle_sessions(cutoff, 100).await.unwrap();
    assert!(store.get_session("s1").await.unwrap().is_none());
    assert_eq!(store.session_usage("s1").await.unwrap().len(), 2);
}

async fn sums_a_users_spend_in_each_window(store: Arc<dyn RuntimeStore>) {
    running_turn(&store).await;
    create(&store, "s2", "bob").await;
    let at = t0();
    let calls = vec![
        usage("u1", at),
        LlmUsage {
            cost: None,
            ..usage("u2", at + chrono::Duration::seconds(10))
        },
        usage("u3", at + chrono::Duration::seconds(20)),
    ];
    let commit = StepCommit {
        usage: calls,
        ..step("s1")
    };
    store.commit_step(commit).await.unwrap();
    let bobs = StepCommit {
        usage: vec![LlmUsage {
            session_id: "s2".to_owned(),
            ..usage("u4", at)
        }],
        ..step("s2")
    };
    store.commit_step(bobs).await.unwrap();

    let windows = |minute: i64, day: i64, month: i64| SpendWindows {
        minute: at + chrono::Duration::seconds(minute),
        day: at + chrono::Duration::seconds(day),
        month: at + chrono::Duration::seconds(month),
    };
    let spent = store.spend_in("alice", &windows(21, 10, 0)).await.unwrap();
    assert_eq!(spent.month.requests, 3);
    assert_eq!(spent.month.tokens, 3 * 1280);
    assert!(
        (spent.month.cost - 2.0 * 0.001_234_5).abs() < 1e-12,
        "{spent:?}"
    );
    assert_eq!((spent.day.requests, spent.day.tokens), (2, 2 * 1280));
    assert!(
        (spent.day.cost - 0.001_234_5).abs() < 1e-12,
        "u2 has no price"
    );
    assert_eq!(
        spent.minute,
        Spend::default(),
        "nothing since: zeros, not an error"
    );
    // Each window is summed on its own, whichever starts first.
    let spent = store.spend_in("alice", &windows(0, 21, 10)).await.unwrap();
    assert_eq!(
        (
            spent.minute.requests,
            spent.day.requests,
            spent.month.requests
        ),
        (3, 0, 2)
    );
    assert_eq!(
        store
            .spend_in("bob", &windows(0, 0, 0))
            .await
            .unwrap()
            .day
            .requests,
        1
    );
    assert_eq!(
        store.spend_in("carol", &windows(0, 0, 0)).await.unwrap(),
        WindowSpend::default()
    );
}

fn budget(subject: &str) -> Budget {
    Budget {
        subject: subject.to_owned(),
        daily_tokens: Some(100_000),
        monthly_tokens: None,
        daily_cost: Some(2.5),
        monthly_cost: Some(40.0),
        requests_per_minute: Some(30),
        tokens_per_minute: None,
        updated_at: t0(),
    }
}

async fn sets_replaces_lists_and_clears_budgets_with_a_default(store: Arc<dyn RuntimeStore>) {
    assert_eq!(store.budgets_of("alice").await.unwrap(), (None, None));
    assert!(store.list_budgets().await.unwrap().is_empty());
    store.set_budget(&budget("alice")).await.unwrap();
    store.set_budget(&budget(DEFAULT_BUDGET)).await.unwrap();
    store.set_budget(&budget("bob")).await.unwrap();
    let (own, default) = store.budgets_of("alice").await.unwrap();
    assert_eq!(own, Some(budget("alice")));
    assert_eq!(default, Some(budget(DEFAULT_BUDGET)));
    assert_eq!(
        store.budgets_of("carol").await.unwrap(),
        (None, Some(budget(DEFAULT_BUDGET))),
        "no budget of her own: the default"
    );
    // Setting again replaces every limit, unset ones included.
    let replaced = Budget {
        daily_tokens: None,
        tokens_per_minute: Some(9_000),
        updated_at: t0() + chrono::Duration::seconds(1),
        ..budget("alice")
    };
    store.set_budget(&replaced).await.unwrap();
    assert_eq!(store.budgets_of("alice").await.unwrap().0, Some(replaced));
    let subjects: Vec<String> = store
        .list_budgets()
        .await
        .unwrap()
        .into_iter()
        .map(|b| b.subject)
        .collect();
    assert_eq!(
        subjects,
        [DEFAULT_BUDGET, "alice", "bob"],
        "the default first"
    );
    assert!(store.clear_budget("alice").await.unwrap());
    assert!(!store.clear_budget("alice").await.unwrap(), "already gone");
    assert_eq!(store.budgets_of("alice").await.unwrap().0, None);
}

async fn reports_usage_grouped_by_day_model_agent_and_user(store: Arc<dyn RuntimeStore>) {
    running_turn(&store).await;
    create(&store, "s2", "bob").await;
    let day = |text: &str| -> DateTime<Utc> { text.parse().unwrap() };
    let alices = vec![
        usage("u1", day("2026-12-06T23:59:59Z")),
        LlmUsage {
            agent: "orchestrator".to_owned(),
            model: None,
            cost: None,
            ..usage("u2", day("2026-12-07T00:00:00Z"))
        },
        usage("u3", day("2026-12-07T12:00:00Z")),
    ];
    store
        .commit_step(StepCommit {
            usage: alices,
            ..step("s1")
        })
        .await
        .unwrap();
    store
        .commit_step(StepCommit {
            usage: vec![LlmUsage {
                session_id: "s2".to_owned(),
                ..usage("u4", day("2026-12-07T08:00:00Z"))
            }],
            ..step("s2")
        })
        .await
        .unwrap();
    let everyone = UsageQuery {
        user_id: None,
        from: day("2026-12-01T00:00:00Z"),
        to: day("2026-12-08T00:00:00Z"),
    };
    let report = |query: UsageQuery, group_by: Vec<UsageGroup>, limit: u32| {
        let store = Arc::clone(&store);
        async move { store.usage_report(&query, &group_by, limit).await.unwrap() }
    };
    let totals = report(everyone.clone(), vec![], 10).await;
    assert_eq!(totals.len(), 1);
    assert!(totals[0].keys.is_empty());
    assert_eq!(
        (
            totals[0].totals.requests,
            totals[0].totals.total_tokens,
            totals[0].totals.cached_tokens
        ),
        (4, 4 * 1280, 4 * 1024)
    );
    assert!((totals[0].totals.cost.unwrap() - 3.0 * 0.001_234_5).abs() < 1e-12);
    assert_eq!(totals[0].totals.unpriced_requests, 1);
    // UTC days, in order.
    let days = report(everyone.clone(), vec![UsageGroup::Day], 10).await;
    let by_day: Vec<(&str, u64)> = days
        .iter()
        .map(|g| (g.keys[0].as_str(), g.totals.requests))
        .collect();
    assert_eq!(by_day, [("2026-12-06", 1), ("2026-12-07", 3)]);
    // The model that answered, else the one asked for; the largest first.
    let models = report(everyone.clone(), vec![UsageGroup::Model], 10).await;
    let by_model: Vec<(&str, u64)> = models
        .iter()
        .map(|g| (g.keys[0].as_str(), g.totals.requests))
        .collect();
    assert_eq!(by_model, [("gpt-4o-2024-08-06", 3), ("gpt-4o", 1)]);
    assert_eq!(models[1].totals.cost, None, "no call of it had a price");
    let users = report(
        everyone.clone(),
        vec![UsageGroup::User, UsageGroup::Agent],
        10,
    )
    .await;
    let by_user: Vec<(&str, &str, u64)> = users
        .iter()
        .map(|g| (g.keys[0].as_str(), g.keys[1].as_str(), g.totals.requests))
        .collect();
    assert_eq!(
        by_user,
        [
            ("alice", "coder", 2),
            ("alice", "orchestrator", 1),
            ("bob", "coder", 1)
        ]
    );
    // One user's, in a range: `to` is exclusive.
    let alice_on_the_7th = UsageQuery {
        user_id: Some("alice".to_owned()),
        from: day("2026-12-07T00:00:00Z"),
        to: day("2026-12-07T12:00:00Z"),
    };
    let found = report(alice_on_the_7th, vec![UsageGroup::Session], 10).await;
    assert_eq!(found.len(), 1);
    assert_eq!(
        (found[0].keys[0].as_str(), found[0].totals.requests),
        ("s1", 1)
    );
    // At most `limit` groups.
    assert_eq!(report(everyone, vec![UsageGroup::Day], 1).await.len(), 1);
}

async fn reads_the_budget_of_a_sessions_owner_their_own_before_the_default(
    store: Arc<dyn RuntimeStore>,
) {
    create(&store, "s1", "alice").await;
    create(&store, "s2", "bob").await;
    let of = |found: Option<OwnerBudget>| found.map(|f| (f.owner, f.budget.map(|b| b.subject)));
    assert_eq!(
        of(store.owner_budget("s1").await.unwrap()),
        Some(("alice".to_owned(), None)),
        "no budget anywhere: the owner, and none"
    );
    assert_eq!(of(store.owner_budget("nope").await.unwrap()), None);
    store.set_budget(&budget(DEFAULT_BUDGET)).await.unwrap();
    assert_eq!(
        of(store.owner_budget("s1").await.unwrap()),
        Some(("alice".to_owned(), Some(DEFAULT_BUDGET.to_owned())))
    );
    store.set_budget(&budget("alice")).await.unwrap();
    let found = store.owner_budget("s1").await.unwrap().unwrap();
    assert_eq!(found.budget, Some(budget("alice")), "her own wins");
    assert_eq!(
        of(store.owner_budget("s2").await.unwrap()),
        Some(("bob".to_owned(), Some(DEFAULT_BUDGET.to_owned())))
    );
}

async fn notes_a_budget_warning_once_per_limit_and_window(store: Arc<dyn RuntimeStore>) {
    let day = t0();
    let next = day + chrono::Duration::days(1);
    assert!(
        store
            .note_budget_warning("alice", "daily_tokens", day)
            .await
            .unwrap()
    );
    assert!(
        !store
            .note_budget_warning("alice", "daily_tokens", day)
            .await
            .unwrap()
    );
    assert!(
        store
            .note_budget_warning("alice", "daily_cost", day)
            .await
            .unwrap()
    );
    assert!(
        store
            .note_budget_warning("bob", "daily_tokens", day)
            .await
            .unwrap()
    );
    // Concurrent turns of one user: exactly one of them warns.
    let tries = (0..10).map(|_| {
        let store = Arc::clone(&store);
        async move {
            store
                .note_budget_warning("carol", "monthly_cost", day)
                .await
                .unwrap()
        }
    });
    let firsts = futures_util::future::join_all(tries).await;
    assert_eq!(firsts.iter().filter(|first| **first).count(), 1);
    // The next window warns again.
    assert!(
        store
            .note_budget_warning("alice", "daily_tokens", next)
            .await
            .unwrap()
    );
    assert!(
        !store
            .note_budget_warning("alice", "daily_tokens", next)
            .await
            .unwrap()
    );
}

// ---------------------------------------------------------------------------------------------
// Plans
// ---------------------------------------------------------------------------------------------

/// A pending subtask at `position`, done by `agent` after `dependencies`.
fn subtask(position: i32, agent: &str, dependencies: &[i32]) -> Subtask {
    Subtask {
        position,
        title: format!("Subtask {position}"),
        description: format!("Do part {position} of the login page"),
        agent: agent.to_owned(),
        estimated_minutes: 5 + position,
        dependencies: dependencies.to_vec(),
        status: SubtaskStatus::Pending,
        result: None,
        error: None,
        context_from: None,
        first_step: None,
    }
}

/// Version `version` of plan `id` in `session_id`, proposed by `call_id` in turn `t1` at `at`,
/// awaiting approval, with three subtasks (the third after the first two).
fn plan(id: &str, session_id: &str, version: i32, call_id: &str, at: DateTime<Utc>) -> Plan {
    Plan {
        id: id.to_owned(),
        session_id: session_id.to_owned(),
        version,
        title: format!("Add a login page (version {version})"),
        description: "A form, its handler and a test".to_owned(),
        status: PlanStatus::AwaitingApproval,
        call_id: call_id.to_owned(),
        turn_id: "t1".to_owned(),
        feedback: None,
        summary: None,
        created_at: at,
        updated_at: at,
        subtasks: vec![
            subtask(0, "coder", &[]),
            subtask(1, "debug", &[]),
            subtask(2, "ask", &[0, 1]),
        ],
    }
}

/// Commits `writes` to `session_id` as a step of nothing else.
async fn write_plans(
    store: &Arc<dyn RuntimeStore>,
    session_id: &str,
    writes: Vec<PlanWrite>,
) -> Result<Committed, StoreError> {
    let commit = StepCommit {
        plans: writes,
        ..step(session_id)
    };
    store.commit_step(commit).await
}

async fn propose(store: &Arc<dyn RuntimeStore>, plan: &Plan) {
    let proposed = vec![PlanWrite::Propose(plan.clone())];
    write_plans(store, &plan.session_id, proposed)
        .await
        .unwrap();
}

async fn stored_plan(store: &Arc<dyn RuntimeStore>, plan_id: &str) -> Plan {
    store
        .get_plan(plan_id)
        .await
        .unwrap()
        .expect("the plan is stored")
}

/// The subtasks of `plan` as `create_plan` proposes them.
fn proposed_subtasks(plan: &Plan) -> serde_json::Value {
    json!(
        plan.subtasks
            .iter()
            .map(|s| json!({
                "title": s.title, "description": s.description, "agent": s.agent,
                "estimated_time_minutes": s.estimated_minutes, "dependencies": s.dependencies,
            }))
            .collect::<Vec<_>>()
    )
}

/// What `list_plan_versions` holds for `plan` as proposed, with `feedback`.
fn version_of(plan: &Plan, feedback: Option<&str>) -> PlanVersion {
    PlanVersion {
        plan_id: plan.id.clone(),
        version: plan.version,
        title: plan.title.clone(),
        description: plan.description.clone(),
        subtasks: proposed_subtasks(plan),
        feedback: feedback.map(str::to_owned),
        created_at: plan.updated_at,
    }
}

async fn proposes_a_plan_and_reads_it_back(store: Arc<dyn RuntimeStore>) {
    running_turn(&store).await;
    create(&store, "s2", "alice").await;
    assert_eq!(store.get_plan("p1").await.unwrap(), None);
    assert!(store.list_plans("s1").await.unwrap().is_empty());

    let first = plan("p1", "s1", 1, "call_plan", t0());
    // A later plan of the same session, with more subtasks than one insert statement takes
    // and a started subtask (its nullable numbers set).
    let mut second = plan(
        "p2",
        "s1",
        1,
        "call_other",
        t0() + chrono::Duration::seconds(1),
    );
    second.subtasks = (0..11).map(|i| subtask(i, "coder", &[])).collect();
    second.subtasks[0].status = SubtaskStatus::InProgress;
    second.subtasks[0].context_from = Some(5_000_000_000);
    second.subtasks[0].first_step = Some(3);
    propose(&store, &second).await;
    propose(&store, &first).await;

    assert_eq!(stored_plan(&store, "p1").await, first);
    assert_eq!(stored_plan(&store, "p2").await, second);
    assert_eq!(
        store.list_plans("s1").await.unwrap(),
        [first.clone(), second.clone()],
        "oldest first, subtasks in order"
    );
    assert_eq!(
        store.plan_of_call("s1", "call_plan").await.unwrap(),
        Some(first.clone())
    );
    assert_eq!(store.plan_of_call("s1", "call_1").await.unwrap(), None);
    assert_eq!(store.plan_of_call("s2", "call_plan").await.unwrap(), None);
    assert!(store.list_plans("s2").await.unwrap().is_empty());
    assert_eq!(
        store.list_plan_versions("p1").await.unwrap(),
        [version_of(&first, None)]
    );
    assert!(store.list_plan_versions("nope").await.unwrap().is_empty());
}

async fn a_new_version_replaces_the_subtasks_and_keeps_the_previous_with_its_feedback(
    store: Arc<dyn RuntimeStore>,
) {
    running_turn(&store).await;
    let first = plan("p1", "s1", 1, "call_plan_1", t0());
    propose(&store, &first).await;
    // A person asks for changes: the plan holds the feedback until the next version.
    let modify = PlanWrite::Status {
        plan_id: "p1".into(),
        status: PlanStatus::AwaitingApproval,
        turn_id: None,
        feedback: Some("split the handler from the form".into()),
        summary: None,
    };
    write_plans(&store, "s1", vec![modify]).await.unwrap();
    assert_eq!(
        stored_plan(&store, "p1").await.feedback.as_deref(),
        Some("split the handler from the form")
    );

    let mut second = plan(
        "p1",
        "s1",
        2,
        "call_plan_2",
        t0() + chrono::Duration::seconds(5),
    );
    second.subtasks = vec![subtask(0, "coder", &[]), subtask(1, "ask", &[0])];
    second.turn_id = "t2".into();
    propose(&store, &second).await;

    let stored = stored_plan(&store, "p1").await;
    assert_eq!(
        stored,
        Plan {
            created_at: first.created_at,
            ..second.clone()
        },
        "the new version, its subtasks only, no feedback, created when the plan was"
    );
    assert_eq!(store.plan_of_call("s1", "call_plan_1").await.unwrap(), None);
    assert_eq!(
        store.plan_of_call("s1", "call_plan_2").await.unwrap(),
        Some(stored.clone())
    );
    assert_eq!(
        store.list_plan_versions("p1").await.unwrap(),
        [
            version_of(&first, Some("split the handler from the form")),
            version_of(&second, None),
        ]
    );
    assert_eq!(
        store.list_plans("s1").await.unwrap(),
        std::slice::from_ref(&stored)
    );

    // The same version again is refused, and nothing of that commit is stored.
    let mut again = second.clone();
    again.title = "never stored".into();
    let commit = StepCommit {
        messages: vec![message("s1", Role::Assistant, "never stored")],
        plans: vec![PlanWrite::Propose(again)],
        ..step("s1")
    };
    let refused = store.commit_step(commit).await;
    assert!(
        matches!(refused, Err(StoreError::Conflict(_))),
        "{refused:?}"
    );
    assert_eq!(stored_plan(&store, "p1").await, stored);
    assert_eq!(store.list_plan_versions("p1").await.unwrap().len(), 2);
    assert_eq!(store.list_messages("s1").await.unwrap().len(), 1);
}

async fn plan_and_subtask_states_change_with_a_step(store: Arc<dyn RuntimeStore>) {
    running_turn(&store).await;
    let proposed = plan("p1", "s1", 1, "call_plan", t0());
    propose(&store, &proposed).await;

    let started = Subtask {
        status: SubtaskStatus::InProgress,
        context_from: Some(1),
        first_step: Some(1),
        ..subtask(0, "coder", &[])
    };
    let commit = StepCommit {
        plans: vec![
            PlanWrite::status("p1", PlanStatus::Approved),
            PlanWrite::Status {
                plan_id: "p1".into(),
                status: PlanStatus::InProgress,
                turn_id: Some("t1b".into()),
                feedback: None,
                summary: None,
            },
            PlanWrite::subtask("p1", &started),
        ],
        turn: Some(step_update(
            TurnStatus::Running,
            2,
            Some((TurnStatus::Running, 1)),
        )),
        events: vec![notice("subtask 0 started")],
        ..step("s1")
    };
    store.commit_step(commit).await.unwrap();
    let stored = stored_plan(&store, "p1").await;
    assert_eq!(
        stored.status,
        PlanStatus::InProgress,
        "the writes apply in order"
    );
    assert_eq!(stored.turn_id, "t1b");
    assert!(stored.updated_at >= proposed.updated_at);
    assert_eq!(stored.subtasks[0], started);
    assert_eq!(stored.subtasks[1..], proposed.subtasks[1..]);

    // A subtask's state is written whole: a retry clears what the failure had set.
    let failed = Subtask {
        status: SubtaskStatus::Failed,
        error: Some("the build broke".into()),
        result: Some("half done".into()),
        ..started.clone()
    };
    write_plans(&store, "s1", vec![PlanWrite::subtask("p1", &failed)])
        .await
        .unwrap();
    assert_eq!(stored_plan(&store, "p1").await.subtasks[0], failed);
    let retried = subtask(0, "coder", &[]);
    write_plans(&store, "s1", vec![PlanWrite::subtask("p1", &retried)])
        .await
        .unwrap();
    assert_eq!(stored_plan(&store, "p1").await.subtasks[0], retried);

    // The run ends with a summary; `None` fields keep what is stored.
    let finished = PlanWrite::Status {
        plan_id: "p1".into(),
        status: PlanStatus::Completed,
        turn_id: None,
        feedback: None,
        summary: Some("Login page added".into()),
    };
    write_plans(&store, "s1", vec![finished]).await.unwrap();
    let done = stored_plan(&store, "p1").await;
    assert_eq!(done.status, PlanStatus::Completed);
    assert_eq!(done.summary.as_deref(), Some("Login page added"));
    assert_eq!((done.turn_id.as_str(), done.feedback), ("t1b", None));
}

async fn plan_writes_apply_with_a_call_update_only_when_the_call_is_updated(
    store: Arc<dyn RuntimeStore>,
) {
    running_turn(&store).await;
    insert_call(&store, "s1", "t1", 1, "call_plan", PendingApproval).await;
    propose(&store, &plan("p1", "s1", 1, "call_plan", t0())).await;

    let approve = ToolCallUpdate {
        decision: Some("approve".into()),
        settle: true,
        tool_message: Some("Plan approved".into()),
        plans: vec![PlanWrite::status("p1", PlanStatus::Approved)],
        ..update(Succeeded)
    };
    let first = update_call(&store, "s1", "call_plan", &[PendingApproval], approve).await;
    assert!(matches!(first, UpdateOutcome::Updated(_)), "{first:?}");
    assert_eq!(stored_plan(&store, "p1").await.status, PlanStatus::Approved);

    // A second decision finds the call no longer pending: its plan write is not applied.
    let reject = ToolCallUpdate {
        decision: Some("reject".into()),
        settle: true,
        plans: vec![PlanWrite::status("p1", PlanStatus::Rejected)],
        ..update(Rejected)
    };
    let late = update_call(&store, "s1", "call_plan", &[PendingApproval], reject).await;
    assert!(matches!(late, UpdateOutcome::Unchanged(_)), "{late:?}");
    assert_eq!(stored_plan(&store, "p1").await.status, PlanStatus::Approved);

    // A plan write that fails undoes the call's update and its tool message.
    insert_call(&store, "s1", "t1", 1, "call_2", PendingApproval).await;
    let broken = ToolCallUpdate {
        settle: true,
        tool_message: Some("never stored".into()),
        plans: vec![
            PlanWrite::status("p1", PlanStatus::Cancelled),
            PlanWrite::status("nope", PlanStatus::Cancelled),
        ],
        ..update(Succeeded)
    };
    let failed = store
        .update_tool_call("s1", "call_2", &[PendingApproval], broken)
        .await;
    assert!(matches!(failed, Err(StoreError::NotFound(_))), "{failed:?}");
    let call = store.get_tool_call("s1", "call_2").await.unwrap().unwrap();
    assert_eq!((call.status, call.settled_at), (PendingApproval, None));
    assert_eq!(stored_plan(&store, "p1").await.status, PlanStatus::Approved);
    let messages = store.list_messages("s1").await.unwrap();
    assert_eq!(
        messages.iter().filter(|m| m.role == Role::Tool).count(),
        1,
        "only the approval's tool message"
    );
}

async fn a_plan_write_that_fails_stores_nothing_of_the_commit(store: Arc<dyn RuntimeStore>) {
    running_turn(&store).await;
    let before = store.get_turn("t1").await.unwrap().unwrap();
    let cases = [
        PlanWrite::status("nope", PlanStatus::Approved),
        PlanWrite::subtask("p1", &subtask(7, "coder", &[])),
    ];
    for unknown in cases {
        let commit = StepCommit {
            messages: vec![message("s1", Role::Assistant, "never stored")],
            calls: vec![call("s1", "t1", 1, "call_new", AwaitingResult)],
            plans: vec![
                PlanWrite::Propose(plan("p1", "s1", 1, "call_plan", t0())),
                unknown,
            ],
            turn: Some(TurnUpdate {
                plan_id: Some("p1".into()),
                ..step_update(TurnStatus::AwaitingTools, 1, None)
            }),
            events: vec![notice("never told")],
            ..step("s1")
        };
        let failed = store.commit_step(commit).await;
        assert!(matches!(failed, Err(StoreError::NotFound(_))), "{failed:?}");
        assert_eq!(store.get_plan("p1").await.unwrap(), None);
        assert!(store.list_plans("s1").await.unwrap().is_empty());
        assert!(store.list_plan_versions("p1").await.unwrap().is_empty());
        assert_eq!(store.list_messages("s1").await.unwrap().len(), 1);
        assert_eq!(store.list_events("s1", 0, 10).await.unwrap().len(), 1);
        assert_eq!(store.get_tool_call("s1", "call_new").await.unwrap(), None);
        assert_eq!(store.get_turn("t1").await.unwrap().unwrap(), before);
        assert_eq!(live_session(&store, "s1").await.message_count, 1);
    }
}

/// Writes name a plan by id only; the store keeps them inside the committing session.
async fn a_plan_write_never_reaches_another_sessions_plan(store: Arc<dyn RuntimeStore>) {
    running_turn(&store).await;
    create(&store, "s2", "mallory").await;
    let victim = plan("p1", "s1", 1, "call_plan", t0());
    propose(&store, &victim).await;

    let approve = PlanWrite::status("p1", PlanStatus::Approved);
    let started = PlanWrite::subtask(
        "p1",
        &Subtask {
            status: SubtaskStatus::InProgress,
            ..subtask(0, "coder", &[])
        },
    );
    for write in [approve, started] {
        let refused = write_plans(&store, "s2", vec![write]).await;
        assert!(
            matches!(refused, Err(StoreError::NotFound(_))),
            "{refused:?}"
        );
    }
    // The same id proposed in another session, or a plan of another session proposed here.
    let mut hijack = plan("p1", "s2", 2, "call_evil", t0());
    hijack.title = "hijacked".into();
    let refused = write_plans(&store, "s2", vec![PlanWrite::Propose(hijack.clone())]).await;
    assert!(
        matches!(refused, Err(StoreError::Conflict(_))),
        "{refused:?}"
    );
    let refused = write_plans(&store, "s1", vec![PlanWrite::Propose(hijack)]).await;
    assert!(
        matches!(refused, Err(StoreError::Conflict(_))),
        "{refused:?}"
    );
    // Also through a call's settlement in the other session.
    insert_call(&store, "s2", "t9", 1, "call_s2", PendingApproval).await;
    let settle = ToolCallUpdate {
        plans: vec![PlanWrite::status("p1", PlanStatus::Rejected)],
        ..update(Succeeded)
    };
    let refused = store
        .update_tool_call("s2", "call_s2", &[PendingApproval], settle)
        .await;
    assert!(
        matches!(refused, Err(StoreError::NotFound(_))),
        "{refused:?}"
    );

    assert_eq!(stored_plan(&store, "p1").await, victim);
    assert_eq!(
        store.list_plan_versions("p1").await.unwrap(),
        [version_of(&victim, None)]
    );
    assert!(store.list_plans("s2").await.unwrap().is_empty());
}

async fn a_turn_keeps_its_plan_once_it_has_one(store: Arc<dyn RuntimeStore>) {
    running_turn(&store).await;
    // A turn may start with its plan (a decision resuming it) ...
    let resumed = Turn {
        plan_id: Some("p0".into()),
        ..turn("t0", "s1", TurnStatus::Completed, t0())
    };
    start_turn(&store, resumed.clone()).await;
    assert_eq!(store.get_turn("t0").await.unwrap(), Some(resumed));

    // ... or get it from a step, which keeps it through later steps that name none.
    assert_eq!(store.get_turn("t1").await.unwrap().unwrap().plan_id, None);
    let commit = StepCommit {
        plans: vec![PlanWrite::Propose(plan("p1", "s1", 1, "call_plan", t0()))],
        turn: Some(TurnUpdate {
            plan_id: Some("p1".into()),
            ..step_update(TurnStatus::Running, 2, Some((TurnStatus::Running, 1)))
        }),
        ..step("s1")
    };
    store.commit_step(commit).await.unwrap();
    let commit = StepCommit {
        turn: Some(step_update(
            TurnStatus::AwaitingTools,
            3,
            Some((TurnStatus::Running, 2)),
        )),
        ..step("s1")
    };
    store.commit_step(commit).await.unwrap();
    update_turn(&store, "t1", TurnStatus::Running, 3, "coder").await;
    let active = store.active_turn("s1").await.unwrap().unwrap();
    assert_eq!((active.id.as_str(), active.steps), ("t1", 3));
    assert_eq!(active.plan_id.as_deref(), Some("p1"));
    let cancelled = store.request_cancel("s1").await.unwrap().unwrap();
    assert_eq!(cancelled.plan_id.as_deref(), Some("p1"));
    let state = store.session_state("s1", false).await.unwrap().unwrap();
    assert_eq!(state.active_turn.unwrap().plan_id.as_deref(), Some("p1"));
}

async fn plans_go_with_their_session(store: Arc<dyn RuntimeStore>) {
    running_turn(&store).await;
    let first = plan("p1", "s1", 1, "call_plan_1", t0());
    propose(&store, &first).await;
    propose(&store, &plan("p1", "s1", 2, "call_plan_2", t0())).await;
    // Proposing is no activity (only messages and events are): s1 is idle from here.
    let cutoff = instant_after(live_session(&store, "s1").await.last_activity);
    create(&store, "s2", "alice").await;
    let kept = plan("p2", "s2", 1, "call_plan", t0());
    propose(&store, &kept).await;

    // A deleted session's plans are hidden from every read ...
    assert!(store.delete_session("s1").await.unwrap());
    assert_eq!(store.get_plan("p1").await.unwrap(), None);
    assert!(store.list_plans("s1").await.unwrap().is_empty());
    assert_eq!(store.plan_of_call("s1", "call_plan_2").await.unwrap(), None);
    assert!(store.list_plan_versions("p1").await.unwrap().is_empty());

    // ... and purged with it, versions and subtasks included: the ids are free again.
    assert_eq!(store.purge_idle_sessions(cutoff, 100).await.unwrap(), 1);
    create(&store, "s1", "alice").await;
    propose(&store, &first).await;
    assert_eq!(stored_plan(&store, "p1").await, first);
    assert_eq!(
        store.list_plan_versions("p1").await.unwrap(),
        [version_of(&first, None)]
    );
    assert_eq!(
        stored_plan(&store, "p2").await,
        kept,
        "another session's plan stays"
    );
}

// ---------------------------------------------------------------------------------------------
// Backend-specific
// ---------------------------------------------------------------------------------------------

mod postgres_only {
    use super::*;

    /// Two pools on one database behave like two replicas of the runtime.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn a_session_lock_excludes_another_replica_until_dropped() {
        let db = postgres_db().await;
        let replica = reopen(&db.url, Arc::new(SystemClock)).await;

        let held = db.store.lock_session("s1").await.unwrap();
        let mut waiting = tokio::spawn({
            let replica = replica.clone();
            async move { replica.lock_session("s1").await.unwrap() }
        });
        assert!(
            timeout(STILL_WAITING, &mut waiting).await.is_err(),
            "the other replica must wait while the lock is held"
        );
        let other = timeout(PROMPTLY, replica.lock_session("s2"))
            .await
            .expect("another session is free on the other replica")
            .unwrap();
        drop(held);
        let granted = timeout(PROMPTLY, waiting)
            .await
            .expect("the other replica gets the lock once it is dropped")
            .unwrap();

        // And back: the first replica now waits for the second.
        assert!(
            timeout(STILL_WAITING, db.store.lock_session("s1"))
                .await
                .is_err()
        );
        drop((granted, other));
        let back = timeout(PROMPTLY, db.store.lock_session("s1"))
            .await
            .expect("lock returns")
            .unwrap();
        drop(back);
    }

    /// A second store on a migrated database finds its data: migrations are idempotent.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn reopening_a_migrated_database_keeps_its_data() {
        let db = postgres_db().await;
        create(&db.store, "s1", "alice").await;
        let again = reopen(&db.url, Arc::new(SystemClock)).await;
        assert_eq!(live_session(&again, "s1").await.owner, "alice");
    }
}

mod sqlite_only {
    use super::*;

    async fn second_store(url: &str) -> Arc<dyn RuntimeStore> {
        let pool = connect_database(url, &DbOptions::default()).await.unwrap();
        assert!(matches!(pool, DbPool::Sqlite(_)));
        open_store(pool, Arc::new(SystemClock)).await.unwrap()
    }

    /// Session locks are per process and database file, not per store value.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn two_stores_on_one_file_share_session_locks() {
        let db = sqlite_db().await;
        let other = second_store(&db.url).await;
        let held = db.store.lock_session("s1").await.unwrap();
        assert!(
            timeout(STILL_WAITING, other.lock_session("s1"))
                .await
                .is_err()
        );
        drop(held);
        let granted = timeout(PROMPTLY, other.lock_session("s1"))
            .await
            .expect("lock is granted")
            .unwrap();
        drop(granted);

        // A different file is a different database: its sessions are not locked.
        let unrelated = sqlite_db().await;
        let held = db.store.lock_session("s1").await.unwrap();
        let free = timeout(PROMPTLY, unrelated.store.lock_session("s1"))
            .await
            .expect("not blocked")
            .unwrap();
        drop((held, free));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn reopening_a_migrated_file_keeps_its_data() {
        let db = sqlite_db().await;
        create(&db.store, "s1", "alice").await;
        append(&db.store, message("s1", Role::User, "hi")).await;
        let again = second_store(&db.url).await;
        assert_eq!(live_session(&again, "s1").await.message_count, 1);
        assert_eq!(
            append(&again, message("s1", Role::User, "again")).await.seq,
            2
        );
    }
}
