//! Usage answers (docs/usage.md), in OpenAI's names (`prompt_tokens`, `completion_tokens`,
//! `total_tokens`) plus `cached_tokens` and `cost` (USD, `null` when no call had a price).

use serde::{Deserialize, Serialize};

/// Sums over some LLM calls.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct UsageTotals {
    /// How many calls.
    pub requests: u64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub total_tokens: u64,
    pub cached_tokens: u64,
    /// USD of the calls that had a price; `null` when none had.
    pub cost: Option<f64>,
    /// Calls of a model without a price (not in `cost`).
    pub unpriced_requests: u64,
}

impl UsageTotals {
    /// Adds one call.
    pub fn add(&mut self, call: &UsageCall) {
        self.requests += 1;
        self.prompt_tokens += call.prompt_tokens;
        self.completion_tokens += call.completion_tokens;
        self.total_tokens += call.total_tokens;
        self.cached_tokens += call.cached_tokens;
        match call.cost {
            Some(cost) => self.cost = Some(self.cost.unwrap_or(0.0) + cost),
            None => self.unpriced_requests += 1,
        }
    }
}

/// One LLM call.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UsageCall {
    pub id: String,
    /// When it ended (RFC 3339, UTC).
    pub created_at: String,
    pub agent: String,
    /// `step` (an agent's answer) or `routing` (the orchestrator's classification).
    pub purpose: String,
    pub requested_model: String,
    /// The deployment that answered, as the proxy named it.
    pub provider: Option<String>,
    pub model: Option<String>,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub total_tokens: u64,
    pub cached_tokens: u64,
    pub cost: Option<f64>,
    pub latency_ms: u64,
    pub ttft_ms: Option<u64>,
    /// Tool calls the answer made.
    pub tool_calls: u32,
    /// `ok`, `error` or `cancelled`.
    pub outcome: String,
    pub error_kind: Option<String>,
}

/// The calls of one step of a turn.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepUsage {
    pub step: i32,
    pub totals: UsageTotals,
    pub calls: Vec<UsageCall>,
}

/// The calls of one turn, by step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TurnUsage {
    pub turn_id: Option<String>,
    pub totals: UsageTotals,
    pub steps: Vec<StepUsage>,
}

/// `GET /sessions/{id}/usage`: the session's LLM calls per turn and step, oldest first.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SessionUsage {
    pub session_id: String,
    pub totals: UsageTotals,
    pub turns: Vec<TurnUsage>,
}

impl SessionUsage {
    /// The answer for `calls` (oldest first): turns in the order of their first call, steps in
    /// order within each.
    pub fn of(session_id: &str, calls: Vec<(Option<String>, i32, UsageCall)>) -> SessionUsage {
        let mut usage = SessionUsage {
            session_id: session_id.to_owned(),
            ..SessionUsage::default()
        };
        for (turn_id, step, call) in calls {
            usage.totals.add(&call);
            // From the end: calls come in time order, so a call's turn is nearly always the last.
            let turn = match usage.turns.iter().rposition(|t| t.turn_id == turn_id) {
                Some(index) => &mut usage.turns[index],
                None => {
                    usage.turns.push(TurnUsage {
                        turn_id,
                        totals: UsageTotals::default(),
                        steps: Vec::new(),
                    });
                    let last = usage.turns.len() - 1;
                    &mut usage.turns[last]
                }
            };
            turn.totals.add(&call);
            let steps = &mut turn.steps;
            let at = match steps.binary_search_by_key(&step, |s| s.step) {
                Ok(at) => at,
                Err(at) => {
                    steps.insert(
                        at,
                        StepUsage {
                            step,
                            totals: UsageTotals::default(),
                            calls: Vec::new(),
                        },
                    );
                    at
                }
            };
            steps[at].totals.add(&call);
            steps[at].calls.push(call);
        }
        usage
    }
}

impl crate::internal::SessionResource for SessionUsage {
    const SUFFIX: &'static str = "/usage";
}

/// The OpenAPI schemas of these answers (`components.schemas` entries), one text for the
/// runtime's and the gateway's descriptions.
pub fn openapi_schemas() -> serde_json::Value {
    let count = serde_json::json!({ "type": "integer", "minimum": 0 });
    let text = serde_json::json!({ "type": "string" });
    let optional_text = serde_json::json!({ "type": ["string", "null"] });
    let cost = serde_json::json!({ "type": ["number", "null"], "minimum": 0,
        "description": "USD; null when no call had a price" });
    let schema = |name: &str| serde_json::json!({ "$ref": format!("#/components/schemas/{name}") });
    serde_json::json!({
        "UsageTotals": { "type": "object",
            "required": ["requests", "prompt_tokens", "completion_tokens", "total_tokens",
                "cached_tokens", "cost", "unpriced_requests"],
            "properties": { "requests": count, "prompt_tokens": count,
                "completion_tokens": count, "total_tokens": count, "cached_tokens": count,
                "cost": cost, "unpriced_requests": count } },
        "UsageCall": { "type": "object",
            "required": ["id", "created_at", "agent", "purpose", "requested_model", "provider",
                "model", "prompt_tokens", "completion_tokens", "total_tokens", "cached_tokens",
                "cost", "latency_ms", "ttft_ms", "tool_calls", "outcome", "error_kind"],
            "properties": { "id": text, "created_at": { "type": "string", "format": "date-time" },
                "agent": text, "purpose": { "enum": ["step", "routing"] },
                "requested_model": text, "provider": optional_text, "model": optional_text,
                "prompt_tokens": count, "completion_tokens": count, "total_tokens": count,
                "cached_tokens": count, "cost": cost, "latency_ms": count,
                "ttft_ms": { "type": ["integer", "null"], "minimum": 0 },
                "tool_calls": count,
                "outcome": { "enum": ["ok", "error", "cancelled"] },
                "error_kind": optional_text } },
        "StepUsage": { "type": "object", "required": ["step", "totals", "calls"],
            "properties": { "step": { "type": "integer", "minimum": 0 },
                "totals": schema("UsageTotals"),
                "calls": { "type": "array", "items": schema("UsageCall") } } },
        "TurnUsage": { "type": "object", "required": ["turn_id", "totals", "steps"],
            "properties": { "turn_id": optional_text, "totals": schema("UsageTotals"),
                "steps": { "type": "array", "items": schema("StepUsage") } } },
        "SessionUsage": { "type": "object", "required": ["session_id", "totals", "turns"],
            "properties": { "session_id": text, "totals": schema("UsageTotals"),
                "turns": { "type": "array", "items": schema("TurnUsage") } } },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(id: &str, prompt: u64, cost: Option<f64>) -> UsageCall {
        UsageCall {
            id: id.to_owned(),
            created_at: "2026-12-07T10:00:00.000000Z".to_owned(),
            agent: "coder".to_owned(),
            purpose: "step".to_owned(),
            requested_model: "m".to_owned(),
            provider: None,
            model: None,
            prompt_tokens: prompt,
            completion_tokens: 1,
            total_tokens: prompt + 1,
            cached_tokens: 0,
            cost,
            latency_ms: 5,
            ttft_ms: None,
            tool_calls: 0,
            outcome: "ok".to_owned(),
            error_kind: None,
        }
    }

    #[test]
    fn calls_are_grouped_by_turn_and_step_with_totals_at_every_level() {
        let t1 = Some("t1".to_owned());
        let t2 = Some("t2".to_owned());
        let usage = SessionUsage::of(
            "s",
            vec![
                (t1.clone(), 1, call("a", 10, None)),
                (t1.clone(), 1, call("b", 20, Some(0.5))),
                (t1.clone(), 2, call("c", 30, Some(0.25))),
                (t2.clone(), 1, call("d", 40, None)),
            ],
        );
        assert_eq!(usage.totals.requests, 4);
        assert_eq!(usage.totals.prompt_tokens, 100);
        assert_eq!(usage.totals.total_tokens, 104);
        assert_eq!(usage.totals.cost, Some(0.75));
        assert_eq!(usage.totals.unpriced_requests, 2);
        assert_eq!(usage.turns.len(), 2);
        let first = &usage.turns[0];
        assert_eq!(first.turn_id, t1);
        assert_eq!(
            first.steps.iter().map(|s| s.step).collect::<Vec<_>>(),
            [1, 2]
        );
        assert_eq!(first.steps[0].calls.len(), 2);
        assert_eq!(first.steps[0].totals.cost, Some(0.5));
        assert_eq!(usage.turns[1].totals.cost, None, "no call had a price");
        assert_eq!(usage.turns[1].totals.unpriced_requests, 1);
    }
}
