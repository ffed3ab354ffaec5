//! Metric names of the agent runtime (`codelab_agent_runtime_*`). Labels are bounded sets: tool
//! names of the registry (anything else is `other`), call outcomes, decisions, agent kinds,
//! routing methods, token directions, the models the runtime is configured with. Never a
//! session, user or call id.

use std::time::Duration;

use crate::model::LlmUsage;
use crate::store::RuntimeStore;
use crate::tools;

/// Turn endings (and pauses) by `outcome`: `completed`, `awaiting_tools`, `cancelled`,
/// `step_limit`, `failed`.
pub const TURNS: &str = "codelab_agent_runtime_turns_total";
/// LLM steps started.
pub const STEPS: &str = "codelab_agent_runtime_steps_total";
/// Tool calls that reached a final state, by `tool` and `outcome`.
pub const TOOL_CALLS: &str = "codelab_agent_runtime_tool_calls_total";
/// Human decisions on calls that required approval, by `decision` (`approve`, `edit`, `reject`).
pub const APPROVALS: &str = "codelab_agent_runtime_approvals_total";
/// Agent changes by target `agent` and `method` (`llm`, `fallback`, `single_agent`,
/// `explicit`, `tool`).
pub const ROUTING_DECISIONS: &str = "codelab_agent_runtime_routing_decisions_total";
/// One LLM step from request to the end of the answer, by `outcome` (`ok`, `error`).
pub const LLM_REQUEST_DURATION: &str = "codelab_agent_runtime_llm_request_duration_seconds";
/// Time from the LLM request to its first piece of text or tool call.
pub const LLM_TTFT: &str = "codelab_agent_runtime_llm_ttft_seconds";
/// Tokens by `direction` (`in` = prompt, `out` = completion), requested `model` and `agent`, as
/// the proxy reported them.
pub const LLM_TOKENS: &str = "codelab_agent_runtime_llm_tokens_total";
/// Cost of the LLM calls in millionths of a USD, by requested `model` and `agent` (calls of a
/// model without a price add nothing).
pub const LLM_COST: &str = "codelab_agent_runtime_llm_cost_micro_usd_total";
/// Steps refused because a budget was used up, by `limit` (docs/usage.md, "Budgets").
pub const BUDGET_REFUSALS: &str = "codelab_agent_runtime_budget_refusals_total";
/// Budget warnings sent (80% of a day's or month's budget), by `limit`.
pub const BUDGET_WARNINGS: &str = "codelab_agent_runtime_budget_warnings_total";
/// Frames being processed right now (each holds its session's lock).
pub const ACTIVE_TURNS: &str = "codelab_agent_runtime_active_turns";
/// Idle sessions removed by the retention task.
pub const SESSIONS_PURGED: &str = "codelab_agent_runtime_sessions_purged_total";
/// Turns resumed after their runner died (a crash, a restart, a lost replica).
pub const TURNS_RECOVERED: &str = "codelab_agent_runtime_turns_recovered_total";
/// Tool calls waiting for a human approval right now, in all sessions. Counted in the shared
/// database, so every replica reports the same number: dashboards take `max`, not `sum`.
pub const PENDING_APPROVALS: &str = "codelab_agent_runtime_pending_approvals";

/// Help texts of the counters.
const COUNTERS: [(&str, &str); 11] = [
    (TURNS, "Turns ended or paused, by outcome"),
    (STEPS, "LLM steps started"),
    (TOOL_CALLS, "Tool calls settled, by tool and outcome"),
    (APPROVALS, "Human decisions on tool calls, by decision"),
    (
        ROUTING_DECISIONS,
        "Agent changes by target agent and method",
    ),
    (LLM_TOKENS, "LLM tokens by direction, model and agent"),
    (
        LLM_COST,
        "LLM cost in millionths of a USD, by model and agent",
    ),
    (
        BUDGET_REFUSALS,
        "LLM steps refused because a budget was used up, by limit",
    ),
    (
        BUDGET_WARNINGS,
        "Budget warnings sent (80% of a day's or month's budget), by limit",
    ),
    (SESSIONS_PURGED, "Idle sessions removed by retention"),
    (
        TURNS_RECOVERED,
        "Turns resumed after their runner died (crash, restart, lost replica)",
    ),
];

/// Registers help texts (once per process; repeated calls are harmless).
pub fn describe() {
    for (name, help) in COUNTERS {
        metrics::describe_counter!(name, help);
    }
    for (name, help) in [
        (
            LLM_REQUEST_DURATION,
            "LLM step duration, request to end of answer, by outcome",
        ),
        (LLM_TTFT, "Time to the first piece of an LLM answer"),
    ] {
        metrics::describe_histogram!(name, metrics::Unit::Seconds, help);
    }
    metrics::describe_gauge!(ACTIVE_TURNS, "Frames being processed");
    metrics::describe_gauge!(
        PENDING_APPROVALS,
        "Tool calls waiting for a human approval, in all sessions (the same on every replica)"
    );
}

/// A bounded label for a tool name: a registry name, or `other`.
pub fn tool_label(name: &str) -> &'static str {
    tools::get(name).map_or("other", |tool| tool.name)
}

/// Counts a call that reached a final state.
pub fn tool_call_settled(tool: &str, outcome: &'static str) {
    metrics::counter!(TOOL_CALLS, "tool" => tool_label(tool), "outcome" => outcome).increment(1);
}

/// Counts a human decision (`approve`, `edit`, `reject`).
pub fn approval(decision: &'static str) {
    metrics::counter!(APPROVALS, "decision" => decision).increment(1);
}

/// Counts an agent change.
pub fn routing_decision(agent: &'static str, method: &'static str) {
    metrics::counter!(ROUTING_DECISIONS, "agent" => agent, "method" => method).increment(1);
}

/// Counts a turn ending or pausing.
pub fn turn(outcome: &'static str) {
    metrics::counter!(TURNS, "outcome" => outcome).increment(1);
}

/// Counts a turn resumed after its runner died.
pub fn turn_recovered() {
    metrics::counter!(TURNS_RECOVERED).increment(1);
}

/// Counts a step started.
pub fn counter_step() {
    metrics::counter!(STEPS).increment(1);
}

/// Records one LLM step.
pub fn llm_request(elapsed: Duration, ok: bool) {
    let outcome = if ok { "ok" } else { "error" };
    metrics::histogram!(LLM_REQUEST_DURATION, "outcome" => outcome).record(elapsed.as_secs_f64());
}

/// Records the time to the first piece of an answer.
pub fn llm_ttft(elapsed: Duration) {
    metrics::histogram!(LLM_TTFT).record(elapsed.as_secs_f64());
}

/// Adds the token counts of one answer.
/// Counts one LLM call's tokens and cost. The model label is the requested one: the runtime's
/// configured models, a bounded set (the answering model comes from the proxy).
pub fn llm_usage(usage: &LlmUsage) {
    let model = usage.requested_model.clone();
    let agent = usage.agent.clone();
    metrics::counter!(LLM_TOKENS, "direction" => "in", "model" => model.clone(), "agent" => agent.clone())
        .increment(usage.prompt_tokens);
    metrics::counter!(LLM_TOKENS, "direction" => "out", "model" => model.clone(), "agent" => agent.clone())
        .increment(usage.completion_tokens);
    if let Some(cost) = usage.cost {
        // Rounded per call: a call cheaper than half a millionth of a USD adds nothing.
        let micro_usd = (cost * 1e6).round();
        if micro_usd >= 1.0 {
            // In range: a finite, non-negative cost far below 2^64 millionths.
            metrics::counter!(LLM_COST, "model" => model, "agent" => agent)
                .increment(micro_usd as u64);
        }
    }
}

/// Counts a step refused over `limit` (a [`crate::budgets::Limit`] name: six values).
pub fn budget_refusal(limit: &'static str) {
    metrics::counter!(BUDGET_REFUSALS, "limit" => limit).increment(1);
}

/// Counts a budget warning about `limit`.
pub fn budget_warning(limit: &'static str) {
    metrics::counter!(BUDGET_WARNINGS, "limit" => limit).increment(1);
}

/// Sets the pending-approvals gauge from the database. On a database error it logs a warning
/// and keeps the previous value (a scrape shows the last known number, not a false 0).
pub async fn refresh_pending_approvals(store: &dyn RuntimeStore) {
    match store.count_pending_approvals().await {
        // Exact up to 2^53 calls.
        Ok(count) => metrics::gauge!(PENDING_APPROVALS).set(count as f64),
        Err(error) => tracing::warn!(%error, "counting the pending approvals failed"),
    }
}

/// Keeps the active-turns gauge right however processing ends (finished, failed, panicked).
#[derive(Debug)]
pub struct ActiveTurnGuard;

impl ActiveTurnGuard {
    /// Counts one more frame in progress, until the guard is dropped.
    pub fn start() -> Self {
        metrics::gauge!(ACTIVE_TURNS).increment(1.0);
        ActiveTurnGuard
    }
}

impl Drop for ActiveTurnGuard {
    fn drop(&mut self) {
        metrics::gauge!(ACTIVE_TURNS).decrement(1.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tool_labels_are_bounded_to_the_registry() {
        assert_eq!(tool_label("write_file"), "write_file");
        assert_eq!(tool_label("switch_mode"), "switch_mode");
        assert_eq!(tool_label("rm -rf /"), "other");
        assert_eq!(tool_label(""), "other");
    }
}
