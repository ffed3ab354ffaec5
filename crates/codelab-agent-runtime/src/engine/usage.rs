//! The usage record of each LLM call a turn makes (docs/usage.md): built from what the call
//! measured ([`CallMeter`]) and where it was made, stored with the turn's next commit.

use chrono::{DateTime, Utc};

use crate::llm::{CallMeter, LlmError};
use crate::model::{LlmUsage, UsageOutcome, UsagePurpose};

/// Where a call was made.
pub(super) struct UsagePlace<'a> {
    pub(super) session_id: &'a str,
    pub(super) turn_id: &'a str,
    pub(super) step: i32,
    pub(super) agent: &'a str,
    pub(super) purpose: UsagePurpose,
}

/// The row of `call`, made at `place` and ended at `now`. The user is filled in by the store
/// (the session's owner).
pub(super) fn usage_row(call: CallMeter, place: UsagePlace<'_>, now: DateTime<Utc>) -> LlmUsage {
    let usage = call.usage.unwrap_or_default();
    let (outcome, error_kind) = match &call.failure {
        None => (UsageOutcome::Ok, None),
        Some(LlmError::Cancelled) => (UsageOutcome::Cancelled, None),
        Some(error) => (UsageOutcome::Error, Some(error.kind())),
    };
    LlmUsage {
        id: codelab_core::new_id().to_string(),
        created_at: now,
        user_id: String::new(),
        session_id: place.session_id.to_owned(),
        turn_id: Some(place.turn_id.to_owned()),
        step: place.step,
        agent: place.agent.to_owned(),
        purpose: place.purpose,
        requested_model: call.requested_model,
        provider: call.answered_by.provider,
        model: call.answered_by.model,
        prompt_tokens: usage.prompt_tokens,
        completion_tokens: usage.completion_tokens,
        total_tokens: usage.total_tokens,
        cached_tokens: usage
            .prompt_tokens_details
            .map_or(0, |details| details.cached_tokens),
        cost: usage.cost,
        latency_ms: millis(call.latency),
        ttft_ms: call.ttft.map(millis),
        tool_calls: call.tool_calls,
        outcome,
        error_kind,
    }
}

fn millis(duration: std::time::Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}
