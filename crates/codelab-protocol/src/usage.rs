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

/// One group of a usage report: the values it is grouped by (only those), and its sums.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct UsageRow {
    /// The UTC day, `YYYY-MM-DD`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub day: Option<String>,
    /// The user's id (the tokens' `sub`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// The model that answered, else the one asked for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_id: Option<String>,
    #[serde(flatten)]
    pub totals: UsageTotals,
}

/// `GET /api/v1/usage`: the caller's LLM calls in a time range, in total and per day, model
/// and agent, with the sessions that used the most.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct MyUsage {
    /// The range: from (inclusive) to (exclusive), RFC 3339 UTC.
    pub from: String,
    pub to: String,
    pub totals: UsageTotals,
    pub by_day: Vec<UsageRow>,
    pub by_model: Vec<UsageRow>,
    pub by_agent: Vec<UsageRow>,
    /// Per day and model, for a chart stacked by model.
    pub by_day_and_model: Vec<UsageRow>,
    /// The ten sessions that used the most tokens.
    pub top_sessions: Vec<UsageRow>,
}

/// `GET /api/v1/admin/usage`: everyone's LLM calls in a time range, grouped as asked.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct UsageReport {
    /// What the rows are grouped by, in order (`user`, `model`, `agent`, `day`).
    pub group_by: Vec<String>,
    pub from: String,
    pub to: String,
    pub totals: UsageTotals,
    pub rows: Vec<UsageRow>,
    /// More groups than the answer holds: the largest (or the earliest days) are shown.
    pub truncated: bool,
}

/// A budget as the admin API answers it (docs/usage.md, "Budgets"); `None` is no limit.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BudgetView {
    /// A user's id, or `*` for the default.
    pub subject: String,
    pub daily_tokens: Option<u64>,
    pub monthly_tokens: Option<u64>,
    pub daily_cost: Option<f64>,
    pub monthly_cost: Option<f64>,
    pub requests_per_minute: Option<u64>,
    pub tokens_per_minute: Option<u64>,
    pub updated_at: String,
}

/// `GET /api/v1/admin/budgets`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct BudgetList {
    pub budgets: Vec<BudgetView>,
}

impl UsageReport {
    /// The report as CSV (RFC 4180): a header, then one line per row: the grouped values in
    /// `group_by` order, then the sums. A text cell that a spreadsheet would run as a formula
    /// (starting with `=`, `+`, `-`, `@`, a tab or a carriage return) is prefixed with `'`.
    pub fn to_csv(&self) -> String {
        let mut out = String::new();
        let mut header: Vec<&str> = self.group_by.iter().map(String::as_str).collect();
        header.extend([
            "requests",
            "prompt_tokens",
            "completion_tokens",
            "total_tokens",
            "cached_tokens",
            "cost",
            "unpriced_requests",
        ]);
        out.push_str(&header.join(","));
        out.push_str("\r\n");
        for row in &self.rows {
            let mut cells: Vec<String> = self
                .group_by
                .iter()
                .map(|by| {
                    let value = match by.as_str() {
                        "day" => &row.day,
                        "user" => &row.user,
                        "model" => &row.model,
                        "agent" => &row.agent,
                        _ => &row.session_id,
                    };
                    csv_text(value.as_deref().unwrap_or(""))
                })
                .collect();
            let totals = &row.totals;
            cells.extend([
                totals.requests.to_string(),
                totals.prompt_tokens.to_string(),
                totals.completion_tokens.to_string(),
                totals.total_tokens.to_string(),
                totals.cached_tokens.to_string(),
                totals.cost.map(|cost| cost.to_string()).unwrap_or_default(),
                totals.unpriced_requests.to_string(),
            ]);
            out.push_str(&cells.join(","));
            out.push_str("\r\n");
        }
        out
    }
}

/// A text cell: defused if a spreadsheet would read it as a formula, quoted if needed.
fn csv_text(value: &str) -> String {
    let defused = if value.starts_with(['=', '+', '-', '@', '\t', '\r']) {
        format!("'{value}")
    } else {
        value.to_owned()
    };
    if defused.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", defused.replace('"', "\"\""))
    } else {
        defused
    }
}

/// The schema of a report's `from`/`to`: a `YYYY-MM-DD` date or an RFC 3339 time.
pub fn range_schema() -> serde_json::Value {
    serde_json::json!({ "anyOf": [
        { "type": "string", "format": "date" },
        { "type": "string", "format": "date-time" } ] })
}

/// The schema of a budget's subject or a report's user: a user id (`default` names the default
/// budget), as `internal::is_valid_user_id` admits.
pub fn subject_schema() -> serde_json::Value {
    serde_json::json!({ "type": "string", "pattern": "^[A-Za-z0-9_.@:|-]{1,128}$" })
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
    let time = serde_json::json!({ "type": "string", "format": "date-time" });
    let rows = serde_json::json!({ "type": "array", "items": schema("UsageRow") });
    // Some limit is set (not null): one branch per limit.
    let at_least_one_limit: Vec<serde_json::Value> = [
        ("daily_tokens", "integer"),
        ("monthly_tokens", "integer"),
        ("requests_per_minute", "integer"),
        ("tokens_per_minute", "integer"),
        ("daily_cost", "number"),
        ("monthly_cost", "number"),
    ]
    .iter()
    .map(|(name, kind)| {
        let mut properties = serde_json::Map::new();
        properties.insert((*name).to_owned(), serde_json::json!({ "type": kind }));
        serde_json::json!({ "required": [name], "properties": properties })
    })
    .collect();
    let limit_count =
        serde_json::json!({ "type": ["integer", "null"], "minimum": 1, "maximum": i64::MAX });
    let limit_cost =
        serde_json::json!({ "type": ["number", "null"], "minimum": 0, "maximum": 1e9 });
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
        "BudgetLimits": { "type": "object", "additionalProperties": false,
            "description": "A budget's limits; absent or null is no limit, at least one is set",
            "anyOf": at_least_one_limit,
            "properties": {
                "daily_tokens": limit_count, "monthly_tokens": limit_count,
                "daily_cost": limit_cost, "monthly_cost": limit_cost,
                "requests_per_minute": limit_count, "tokens_per_minute": limit_count } },
        "Budget": { "type": "object",
            "required": ["subject", "daily_tokens", "monthly_tokens", "daily_cost",
                "monthly_cost", "requests_per_minute", "tokens_per_minute", "updated_at"],
            "properties": {
                "subject": { "type": "string", "description": "A user id, or * for the default" },
                "daily_tokens": limit_count, "monthly_tokens": limit_count,
                "daily_cost": limit_cost, "monthly_cost": limit_cost,
                "requests_per_minute": limit_count, "tokens_per_minute": limit_count,
                "updated_at": time } },
        "BudgetList": { "type": "object", "required": ["budgets"],
            "properties": { "budgets": { "type": "array", "items": schema("Budget") } } },
        "UsageRow": { "type": "object",
            "required": ["requests", "prompt_tokens", "completion_tokens", "total_tokens",
                "cached_tokens", "cost", "unpriced_requests"],
            "properties": { "day": { "type": "string", "format": "date" }, "user": text,
                "model": text, "agent": text, "session_id": text,
                "requests": count, "prompt_tokens": count,
                "completion_tokens": count, "total_tokens": count, "cached_tokens": count,
                "cost": cost, "unpriced_requests": count } },
        "MyUsage": { "type": "object",
            "required": ["from", "to", "totals", "by_day", "by_model", "by_agent",
                "by_day_and_model", "top_sessions"],
            "properties": { "from": time, "to": time, "totals": schema("UsageTotals"),
                "by_day": rows, "by_model": rows, "by_agent": rows,
                "by_day_and_model": rows, "top_sessions": rows } },
        "UsageReport": { "type": "object",
            "required": ["group_by", "from", "to", "totals", "rows", "truncated"],
            "properties": {
                "group_by": { "type": "array",
                    "items": { "enum": ["user", "model", "agent", "day"] } },
                "from": time, "to": time, "totals": schema("UsageTotals"), "rows": rows,
                "truncated": { "type": "boolean" } } },
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
    fn a_report_is_csv_with_formulas_defused_and_cells_quoted() {
        let totals = |requests, cost| UsageTotals {
            requests,
            total_tokens: requests * 10,
            cost,
            ..UsageTotals::default()
        };
        let report = UsageReport {
            group_by: vec!["user".into(), "model".into()],
            rows: vec![
                UsageRow {
                    user: Some("alice".into()),
                    model: Some("gpt-4o".into()),
                    totals: totals(2, Some(0.25)),
                    ..UsageRow::default()
                },
                UsageRow {
                    user: Some("=HYPERLINK(\"x\")".into()),
                    model: Some("a,b".into()),
                    totals: totals(1, None),
                    ..UsageRow::default()
                },
            ],
            ..UsageReport::default()
        };
        assert_eq!(
            report.to_csv(),
            "user,model,requests,prompt_tokens,completion_tokens,total_tokens,cached_tokens,cost,unpriced_requests\r\n\
             alice,gpt-4o,2,0,0,20,0,0.25,0\r\n\
             \"'=HYPERLINK(\"\"x\"\")\",\"a,b\",1,0,0,10,0,,0\r\n"
        );
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
