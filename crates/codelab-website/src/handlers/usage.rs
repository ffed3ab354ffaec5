//! `/console/usage`: the signed-in user's LLM usage over the last 30 days (totals, a per-day
//! chart stacked by model drawn as SVG on the server, so it needs no script, per model and
//! agent, the sessions that used the most); for administrators, every user's use today and this
//! month against their budget (docs/usage.md).

use std::collections::HashMap;

use askama::Template;
use axum::response::Response;
use chrono::{DateTime, Datelike, Duration, NaiveDate, Utc};
use codelab_core::db::now_from;

use super::ConsoleRequest;
use crate::upstream::{BudgetView, MyUsage, UsageRow};
use crate::web::{Layout, render};

/// Days the chart shows, today included.
pub const CHART_DAYS: i64 = 30;
/// Colours of the chart's models, the most used first; the rest share [`OTHER_COLOUR`].
const PALETTE: [&str; 7] = [
    "#2563eb", "#16a34a", "#d97706", "#9333ea", "#dc2626", "#0891b2", "#4d7c0f",
];
const OTHER_COLOUR: &str = "#94a3b8";
/// The chart's geometry, in SVG units.
const BAR_WIDTH: u32 = 20;
const BAR_GAP: u32 = 6;
const AXIS_WIDTH: u32 = 8;
const PLOT_HEIGHT: u32 = 180;
/// The width of a full budget bar.
pub const BUDGET_BAR_WIDTH: u32 = 160;

/// Sums of a row as the page shows them.
#[derive(Debug, Clone)]
pub struct RowView {
    pub key: String,
    pub requests: u64,
    pub tokens: u64,
    pub cost: String,
}

fn row_view(key: Option<&String>, row: &UsageRow) -> RowView {
    RowView {
        key: key.cloned().unwrap_or_default(),
        requests: row.totals.requests,
        tokens: row.totals.total_tokens,
        cost: cost_text(row.totals.cost),
    }
}

/// USD with four decimals, or `—` when no call had a price.
fn cost_text(cost: Option<f64>) -> String {
    cost.map_or_else(|| "—".to_owned(), |usd| format!("${usd:.4}"))
}

/// One model's part of a day's bar.
#[derive(Debug, Clone)]
pub struct Segment {
    pub y: u32,
    pub height: u32,
    pub colour: &'static str,
    /// The tooltip: day, model, tokens.
    pub title: String,
}

/// One day of the chart.
#[derive(Debug, Clone)]
pub struct Bar {
    pub x: u32,
    pub segments: Vec<Segment>,
}

/// A model in the legend.
#[derive(Debug, Clone)]
pub struct LegendEntry {
    pub colour: &'static str,
    pub model: String,
}

/// The per-day chart stacked by model.
#[derive(Debug, Clone)]
pub struct Chart {
    pub width: u32,
    pub height: u32,
    pub plot_height: u32,
    pub bar_width: u32,
    pub bars: Vec<Bar>,
    pub legend: Vec<LegendEntry>,
    /// The tallest day's tokens (the top of the scale).
    pub max_tokens: u64,
    pub first_day: String,
    pub last_day: String,
}

/// The chart of `usage` over the `days` given (oldest first).
pub fn chart(usage: &MyUsage, days: &[NaiveDate]) -> Chart {
    let colour_of: HashMap<&str, &'static str> = usage
        .by_model
        .iter()
        .filter_map(|row| row.model.as_deref())
        .zip(PALETTE)
        .collect();
    let mut per_day: HashMap<&str, Vec<(&str, u64)>> = HashMap::new();
    for row in &usage.by_day_and_model {
        if let (Some(day), Some(model)) = (row.day.as_deref(), row.model.as_deref()) {
            per_day
                .entry(day)
                .or_default()
                .push((model, row.totals.total_tokens));
        }
    }
    let day_names: Vec<String> = days
        .iter()
        .map(|d| d.format("%Y-%m-%d").to_string())
        .collect();
    let max_tokens = day_names
        .iter()
        .map(|day| {
            per_day
                .get(day.as_str())
                .map_or(0, |parts| parts.iter().map(|(_, t)| t).sum())
        })
        .max()
        .unwrap_or(0);
    let scale = |tokens: u64| -> u32 {
        if max_tokens == 0 {
            return 0;
        }
        let height = u128::from(tokens) * u128::from(PLOT_HEIGHT) / u128::from(max_tokens);
        u32::try_from(height).unwrap_or(PLOT_HEIGHT)
    };
    let mut bars = Vec::new();
    for (i, day) in day_names.iter().enumerate() {
        let mut top = PLOT_HEIGHT;
        let mut segments = Vec::new();
        let mut parts = per_day.get(day.as_str()).cloned().unwrap_or_default();
        // The same order of models in every bar: the most used at the bottom.
        parts.sort_by_key(|(model, _)| {
            usage
                .by_model
                .iter()
                .position(|row| row.model.as_deref() == Some(model))
                .unwrap_or(usize::MAX)
        });
        for (model, tokens) in parts {
            let height = scale(tokens).max(1);
            top = top.saturating_sub(height);
            segments.push(Segment {
                y: top,
                height,
                colour: colour_of.get(model).copied().unwrap_or(OTHER_COLOUR),
                title: format!("{day} · {model}: {tokens} tokens"),
            });
        }
        let x = AXIS_WIDTH + u32::try_from(i).unwrap_or(0) * (BAR_WIDTH + BAR_GAP);
        bars.push(Bar { x, segments });
    }
    let mut legend: Vec<LegendEntry> = usage
        .by_model
        .iter()
        .filter_map(|row| row.model.clone())
        .zip(PALETTE)
        .map(|(model, colour)| LegendEntry { colour, model })
        .collect();
    if usage.by_model.len() > PALETTE.len() {
        legend.push(LegendEntry {
            colour: OTHER_COLOUR,
            model: "other models".to_owned(),
        });
    }
    let count = u32::try_from(days.len()).unwrap_or(0);
    Chart {
        width: AXIS_WIDTH + count * (BAR_WIDTH + BAR_GAP),
        height: PLOT_HEIGHT + 4,
        plot_height: PLOT_HEIGHT,
        bar_width: BAR_WIDTH,
        bars,
        legend,
        max_tokens,
        first_day: day_names.first().cloned().unwrap_or_default(),
        last_day: day_names.last().cloned().unwrap_or_default(),
    }
}

/// Use against one limit of a budget.
#[derive(Debug, Clone)]
pub struct LimitBar {
    /// `daily tokens`, `monthly cost`, ...
    pub label: String,
    /// `12000 of 100000`.
    pub text: String,
    /// The filled part, 0 to [`BUDGET_BAR_WIDTH`].
    pub width: u32,
    /// At or past the limit.
    pub over: bool,
}

/// A user's row of the administrators' table.
#[derive(Debug, Clone)]
pub struct UserUsage {
    pub name: String,
    pub today_tokens: u64,
    pub month_tokens: u64,
    pub month_cost: String,
    /// `own`, `default` or `none`.
    pub budget: &'static str,
    pub limits: Vec<LimitBar>,
}

fn limit_bar(label: &str, used: f64, limit: f64, amount: impl Fn(f64) -> String) -> LimitBar {
    let share = if limit > 0.0 { used / limit } else { 1.0 };
    let filled = (share.clamp(0.0, 1.0) * f64::from(BUDGET_BAR_WIDTH)).round();
    LimitBar {
        label: label.to_owned(),
        text: format!("{} of {}", amount(used), amount(limit)),
        // In range: clamped to 0..=BUDGET_BAR_WIDTH above.
        width: filled as u32,
        over: used >= limit,
    }
}

/// Counts as `f64` (exact below 2^53, far above any count here).
fn count_f64(count: u64) -> f64 {
    count as f64
}

/// The bars of `budget`'s day and month limits for what a user used today and this month.
fn limit_bars(budget: &BudgetView, today: &UsageRow, month: &UsageRow) -> Vec<LimitBar> {
    let tokens = |v: f64| format!("{v:.0} tokens");
    let usd = |v: f64| format!("${v:.2}");
    let mut bars = Vec::new();
    if let Some(limit) = budget.daily_tokens {
        let used = count_f64(today.totals.total_tokens);
        bars.push(limit_bar("daily tokens", used, count_f64(limit), tokens));
    }
    if let Some(limit) = budget.monthly_tokens {
        let used = count_f64(month.totals.total_tokens);
        bars.push(limit_bar("monthly tokens", used, count_f64(limit), tokens));
    }
    if let Some(limit) = budget.daily_cost {
        let used = today.totals.cost.unwrap_or(0.0);
        bars.push(limit_bar("daily cost", used, limit, usd));
    }
    if let Some(limit) = budget.monthly_cost {
        let used = month.totals.cost.unwrap_or(0.0);
        bars.push(limit_bar("monthly cost", used, limit, usd));
    }
    bars
}

#[derive(Template)]
#[template(path = "usage.html")]
struct UsagePage {
    layout: Layout,
    from_day: String,
    requests: u64,
    tokens: u64,
    cost: String,
    chart: Chart,
    by_model: Vec<RowView>,
    by_agent: Vec<RowView>,
    top_sessions: Vec<RowView>,
    /// For administrators: every user who used something this month, or has a budget.
    users: Option<Vec<UserUsage>>,
    budget_bar_width: u32,
}

/// `GET /console/usage`.
pub async fn show_usage(console: ConsoleRequest) -> Response {
    console
        .page(|c| async move {
            let (auth, gateway, token) = c.clients_and_token().await?;
            let now: DateTime<Utc> = now_from(c.state.clock.as_ref());
            let today = now.date_naive();
            let days: Vec<NaiveDate> = (0..CHART_DAYS)
                .rev()
                .map(|back| today - Duration::days(back))
                .collect();
            let from = days.first().copied().unwrap_or(today);
            let from_day = from.format("%Y-%m-%d").to_string();
            let usage = gateway
                .my_usage(&token, &from_day)
                .await
                .map_err(|e| c.failed(e))?;
            let users = if c.session.user.is_admin() {
                let month_start = today
                    .with_day(1)
                    .unwrap_or(today)
                    .format("%Y-%m-%d")
                    .to_string();
                let today_text = today.format("%Y-%m-%d").to_string();
                let (month, day, budgets, accounts) = tokio::join!(
                    gateway.usage_by_user(&token, &month_start),
                    gateway.usage_by_user(&token, &today_text),
                    gateway.budgets(&token),
                    auth.list_users(&token),
                );
                let month = month.map_err(|e| c.failed(e))?;
                let day = day.map_err(|e| c.failed(e))?;
                let budgets = budgets.map_err(|e| c.failed(e))?.budgets;
                let accounts = accounts.map_err(|e| c.failed(e))?;
                let names: HashMap<String, String> =
                    accounts.into_iter().map(|u| (u.id, u.username)).collect();
                Some(user_rows(&month.rows, &day.rows, &budgets, &names))
            } else {
                None
            };
            let top = |rows: &[UsageRow], key: fn(&UsageRow) -> Option<&String>| {
                rows.iter().map(|row| row_view(key(row), row)).collect()
            };
            Ok(render(&UsagePage {
                layout: c.layout("Usage", "usage"),
                from_day,
                requests: usage.totals.requests,
                tokens: usage.totals.total_tokens,
                cost: cost_text(usage.totals.cost),
                chart: chart(&usage, &days),
                by_model: top(&usage.by_model, |r| r.model.as_ref()),
                by_agent: top(&usage.by_agent, |r| r.agent.as_ref()),
                top_sessions: top(&usage.top_sessions, |r| r.session_id.as_ref()),
                users,
                budget_bar_width: BUDGET_BAR_WIDTH,
            }))
        })
        .await
}

/// The administrators' table: every user who used something this month or has a budget of
/// their own, the largest use first, each with the budget that applies and its bars.
fn user_rows(
    month: &[UsageRow],
    today: &[UsageRow],
    budgets: &[BudgetView],
    names: &HashMap<String, String>,
) -> Vec<UserUsage> {
    let default = budgets.iter().find(|b| b.subject == "*");
    let mut ids: Vec<&str> = month.iter().filter_map(|r| r.user.as_deref()).collect();
    for budget in budgets {
        if budget.subject != "*" && !ids.contains(&budget.subject.as_str()) {
            ids.push(&budget.subject);
        }
    }
    let none = UsageRow::default();
    let find = |rows: &'_ [UsageRow], id: &str| -> UsageRow {
        rows.iter()
            .find(|r| r.user.as_deref() == Some(id))
            .cloned()
            .unwrap_or_else(|| none.clone())
    };
    ids.into_iter()
        .map(|id| {
            let month_row = find(month, id);
            let today_row = find(today, id);
            let own = budgets.iter().find(|b| b.subject == id);
            let (budget, applies) = match (own, default) {
                (Some(own), _) => ("own", Some(own)),
                (None, Some(default)) => ("default", Some(default)),
                (None, None) => ("none", None),
            };
            UserUsage {
                name: names
                    .get(id)
                    .cloned()
                    .unwrap_or_else(|| format!("user id {id}")),
                today_tokens: today_row.totals.total_tokens,
                month_tokens: month_row.totals.total_tokens,
                month_cost: cost_text(month_row.totals.cost),
                budget,
                limits: applies
                    .map(|b| limit_bars(b, &today_row, &month_row))
                    .unwrap_or_default(),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use codelab_protocol::usage::UsageTotals;

    fn row(day: Option<&str>, model: &str, tokens: u64) -> UsageRow {
        UsageRow {
            day: day.map(str::to_owned),
            model: Some(model.to_owned()),
            totals: UsageTotals {
                requests: 1,
                total_tokens: tokens,
                ..UsageTotals::default()
            },
            ..UsageRow::default()
        }
    }

    #[test]
    fn bars_stack_models_in_one_order_scaled_to_the_busiest_day() {
        let usage = MyUsage {
            by_model: vec![row(None, "big", 300), row(None, "small", 100)],
            by_day_and_model: vec![
                row(Some("2026-12-06"), "small", 100),
                row(Some("2026-12-06"), "big", 100),
                row(Some("2026-12-07"), "big", 200),
            ],
            ..MyUsage::default()
        };
        let days = [
            NaiveDate::from_ymd_opt(2026, 12, 5).unwrap(),
            NaiveDate::from_ymd_opt(2026, 12, 6).unwrap(),
            NaiveDate::from_ymd_opt(2026, 12, 7).unwrap(),
        ];
        let chart = chart(&usage, &days);
        assert_eq!(chart.max_tokens, 200);
        assert!(chart.bars[0].segments.is_empty(), "a day without use");
        let sixth = &chart.bars[1].segments;
        assert_eq!(sixth.len(), 2);
        assert_eq!(sixth[0].colour, PALETTE[0], "the most used model first");
        assert_eq!((sixth[0].height, sixth[1].height), (90, 90));
        assert_eq!(sixth[1].y, 0, "the busiest day fills the plot");
        assert_eq!(chart.bars[2].segments[0].height, PLOT_HEIGHT);
        assert_eq!(chart.legend.len(), 2);
        assert_eq!(
            (chart.first_day.as_str(), chart.last_day.as_str()),
            ("2026-12-05", "2026-12-07")
        );
    }

    #[test]
    fn a_budget_bar_is_full_at_the_limit_and_says_so() {
        let bar = limit_bar("daily tokens", 150.0, 100.0, |v| format!("{v:.0}"));
        assert_eq!((bar.width, bar.over), (BUDGET_BAR_WIDTH, true));
        assert_eq!(bar.text, "150 of 100");
        let half = limit_bar("monthly cost", 0.5, 1.0, |v| format!("{v}"));
        assert_eq!((half.width, half.over), (BUDGET_BAR_WIDTH / 2, false));
    }
}
