//! Budgets enforced before each LLM step (docs/usage.md, "Budgets"): over a limit, the turn
//! ends with an `error` of code `budget_exceeded` and `turn_finished{failed}`, nothing of the
//! step is stored, and the session goes on once the limit allows; at 80% of a day's or a
//! month's budget the user is warned once. The mock model's usage is its word counts.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use chrono::{DateTime, Utc};
use codelab_agent_runtime::model::{Budget, DEFAULT_BUDGET};
use codelab_core::clock::ManualClock;
use codelab_protocol::runtime::SequencedEvent;
use serde_json::json;

use crate::common::{Backend, Runtime, Text, all, call_ids, first, outcome};

/// A budget of `subject` with no limit set.
fn unlimited(subject: &str) -> Budget {
    Budget {
        subject: subject.to_owned(),
        daily_tokens: None,
        monthly_tokens: None,
        daily_cost: None,
        monthly_cost: None,
        requests_per_minute: None,
        tokens_per_minute: None,
        updated_at: now(),
    }
}

fn now() -> DateTime<Utc> {
    codelab_core::db::now_from(&codelab_core::clock::SystemClock)
}

async fn set(rt: &Runtime, budget: Budget) {
    rt.state.store.set_budget(&budget).await.unwrap();
}

/// Tokens of every call of `session`, and how many calls.
async fn spent(rt: &Runtime, session: &str) -> (u64, usize) {
    let rows = rt.state.store.session_usage(session).await.unwrap();
    (rows.iter().map(|row| row.total_tokens).sum(), rows.len())
}

/// A coder turn that calls a tool at every step, so it goes on as long as results come.
const TOOL_EVERY_STEP: &str = "::step * ::tool read_file {\"path\": \"a.txt\"}";

fn budget_error(events: &[SequencedEvent]) -> serde_json::Value {
    let error = first(events, "error");
    assert_eq!(error["code"], "budget_exceeded", "{error}");
    assert_eq!(outcome(events), "failed");
    error
}

async fn a_used_up_daily_budget_refuses_the_next_turn_until_it_is_raised(backend: Backend) {
    let rt = Runtime::start(backend).await;
    let (session, events) = rt.new_turn("coder", "hello").await;
    assert_eq!(outcome(&events), "completed");
    let (used, calls) = spent(&rt, &session).await;
    // Set while the runtime runs: applies from the next step.
    set(
        &rt,
        Budget {
            daily_tokens: Some(used),
            ..unlimited("dev")
        },
    )
    .await;
    let refused = rt.to_coder(&session, "and again").await;
    let error = budget_error(&refused);
    let message = error["message"].text();
    let tomorrow = (now() + chrono::Duration::days(1))
        .format("%Y-%m-%dT00:00:00Z")
        .to_string();
    assert!(
        message.contains(&format!("daily token budget of {used} tokens is used up"))
            && message.contains(&format!("It resets at {tomorrow}")),
        "names the limit, the usage and the reset: {message}"
    );
    assert!(all(&refused, "assistant_message").is_empty(), "no step ran");
    assert_eq!(
        spent(&rt, &session).await,
        (used, calls),
        "no LLM call made"
    );
    // The refusal is stored like any turn's end (a reconnecting client replays it).
    let stored = rt.stored_events(&session).await;
    assert_eq!(all(&stored, "error").len(), 1);
    // The session stays usable: a raised limit lets the next turn run.
    set(
        &rt,
        Budget {
            daily_tokens: Some(used * 10),
            ..unlimited("dev")
        },
    )
    .await;
    let events = rt.to_coder(&session, "once more").await;
    assert_eq!(outcome(&events), "completed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_used_up_daily_budget_refuses_the_next_turn_until_it_is_raised_on_sqlite() {
    a_used_up_daily_budget_refuses_the_next_turn_until_it_is_raised(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_used_up_daily_budget_refuses_the_next_turn_until_it_is_raised_on_postgres() {
    a_used_up_daily_budget_refuses_the_next_turn_until_it_is_raised(Backend::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_default_budget_applies_to_users_without_their_own() {
    let rt = Runtime::start(Backend::Sqlite).await;
    set(
        &rt,
        Budget {
            requests_per_minute: Some(1),
            ..unlimited(DEFAULT_BUDGET)
        },
    )
    .await;
    let (session, events) = rt.new_turn("coder", "hello").await;
    assert_eq!(outcome(&events), "completed", "no call in the last minute");
    let refused = rt.to_coder(&session, "again").await;
    let message = budget_error(&refused)["message"].text().to_owned();
    assert!(
        message.contains(
            "the limit of 1 LLM call per minute is used up (1 LLM call used in the last minute)"
        ),
        "{message}"
    );
    // Her own budget replaces the default.
    set(
        &rt,
        Budget {
            requests_per_minute: Some(100),
            ..unlimited("dev")
        },
    )
    .await;
    assert_eq!(outcome(&rt.to_coder(&session, "again").await), "completed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_step_after_a_tool_result_is_refused_and_the_result_is_kept() {
    let (rt, session, events, call_id) = Runtime::with_call(Backend::Sqlite, TOOL_EVERY_STEP).await;
    assert_eq!(outcome(&events), "awaiting_tools");
    let (used, _) = spent(&rt, &session).await;
    set(
        &rt,
        Budget {
            daily_tokens: Some(used),
            ..unlimited("dev")
        },
    )
    .await;
    let refused = rt.result(&session, &call_id, json!("contents")).await;
    budget_error(&refused);
    assert!(call_ids(&refused).is_empty(), "no second step");
    let history = rt.history(&session).await;
    let tool_messages: Vec<_> = history["messages"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["role"] == "tool")
        .collect();
    assert_eq!(tool_messages.len(), 1, "the result is stored: {history}");
    assert!(
        rt.state
            .store
            .active_turn(&session)
            .await
            .unwrap()
            .is_none()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn eighty_percent_of_a_budget_warns_once() {
    let rt = Runtime::start(Backend::Sqlite).await;
    let (session, _) = rt.new_turn("coder", "hello").await;
    let (used, _) = spent(&rt, &session).await;
    // `used` is 85% of the limit: the next step warns, then runs.
    let limit = used * 100 / 85;
    set(
        &rt,
        Budget {
            monthly_tokens: Some(limit),
            ..unlimited("dev")
        },
    )
    .await;
    let warned = rt.to_coder(&session, "again").await;
    assert_eq!(outcome(&warned), "completed");
    let warnings = all(&warned, "warning");
    assert_eq!(warnings.len(), 1, "{warned:?}");
    assert_eq!(warnings[0]["code"], "budget_warning");
    let message = warnings[0]["message"].text();
    assert!(
        message.starts_with("Budget warning: 8")
            && message.contains(&format!("monthly token budget of {limit} tokens is used")),
        "{message}"
    );
    // Past the limit now: the next turn is refused, and not warned again.
    let refused = rt.to_coder(&session, "and again").await;
    budget_error(&refused);
    assert!(all(&refused, "warning").is_empty());
    let stored = rt.stored_events(&session).await;
    assert_eq!(all(&stored, "warning").len(), 1, "warned once");
    let metrics = rt.metrics_text().await;
    assert!(
        metrics
            .contains(r#"codelab_agent_runtime_budget_warnings_total{limit="monthly_tokens"} 1"#)
            && metrics
                .contains(r#"codelab_agent_runtime_budget_refusals_total{limit="monthly_tokens"}"#),
        "{metrics}"
    );
}

/// 2026-12-31T23:59:30Z: half a minute before a new day, month and year.
fn new_years_eve() -> SystemTime {
    let at: DateTime<Utc> = "2026-12-31T23:59:30Z".parse().unwrap();
    SystemTime::from(at)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn windows_are_utc_days_and_months_and_roll_over_by_themselves() {
    let clock = ManualClock::new(new_years_eve());
    let rt = Runtime::start_with_clock(Backend::Sqlite, Arc::new(clock.clone())).await;
    let (session, _) = rt.new_turn("coder", "hello").await;
    let (used, _) = spent(&rt, &session).await;
    set(
        &rt,
        Budget {
            daily_tokens: Some(used),
            monthly_tokens: Some(used * 3),
            ..unlimited("dev")
        },
    )
    .await;
    let refused = rt.to_coder(&session, "again").await;
    let message = budget_error(&refused)["message"].text().to_owned();
    assert!(
        message.contains("daily token budget") && message.contains("2027-01-01T00:00:00Z"),
        "{message}"
    );
    // A minute later it is a new day: nothing to reset.
    clock.advance(Duration::from_secs(60));
    assert_eq!(
        outcome(&rt.to_coder(&session, "new day").await),
        "completed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_turns_overshoot_a_budget_by_at_most_one_step_each() {
    let rt = Runtime::start(Backend::Sqlite).await;
    let mut turns = Vec::new();
    for _ in 0..2 {
        let (session, events) = rt.new_turn("coder", TOOL_EVERY_STEP).await;
        turns.push((session, call_ids(&events)[0].clone()));
    }
    let sessions: Vec<String> = turns.iter().map(|(session, _)| session.clone()).collect();
    let mut before = 0;
    let mut calls_before = 0;
    for session in &sessions {
        let (tokens, calls) = spent(&rt, session).await;
        before += tokens;
        calls_before += calls;
    }
    // One token left: whichever step checks first may run; the rest are refused.
    set(
        &rt,
        Budget {
            daily_tokens: Some(before + 1),
            ..unlimited("dev")
        },
    )
    .await;
    let mut results = Vec::new();
    for round in 0..3 {
        let sends = turns.iter().map(|(session, call_id)| {
            let rt = &rt;
            async move {
                rt.result(session, call_id, json!(format!("round {round}")))
                    .await
            }
        });
        let answers = futures_util::future::join_all(sends).await;
        let mut next = Vec::new();
        for ((session, _), events) in turns.iter().zip(answers) {
            if let Some(call_id) = call_ids(&events).first() {
                next.push((session.clone(), call_id.clone()));
            } else {
                budget_error(&events);
            }
            results.push(events);
        }
        turns = next;
        if turns.is_empty() {
            break;
        }
    }
    assert!(turns.is_empty(), "every turn was stopped");
    let steps_after: usize = results.iter().map(|events| call_ids(events).len()).sum();
    let mut calls_after = 0;
    for session in &sessions {
        calls_after += spent(&rt, session).await.1;
    }
    assert!(
        (1..=2).contains(&steps_after),
        "one step at least (the budget had room), at most one per turn: {steps_after}"
    );
    assert_eq!(
        calls_after - calls_before,
        steps_after,
        "a refused step calls no LLM"
    );
}
