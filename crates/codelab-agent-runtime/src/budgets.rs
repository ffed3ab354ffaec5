//! Whether a user's budget lets the next LLM step run (docs/usage.md, "Budgets"): the limits
//! against what the user's calls used in each window. Pure: the engine reads the budget and the
//! spend, and sends what this decides.
//!
//! Windows are UTC calendar days and months and the last 60 seconds, so they roll over by
//! themselves: nothing is reset by a job.

use chrono::{DateTime, Datelike, Duration, NaiveDate, TimeZone, Utc};

use crate::model::{Budget, Spend, SpendWindows, WindowSpend};

/// The share of a day's or a month's budget at which the user is warned, once per window.
pub const WARNING_SHARE: f64 = 0.8;

/// One limit of a budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    DailyTokens,
    MonthlyTokens,
    DailyCost,
    MonthlyCost,
    RequestsPerMinute,
    TokensPerMinute,
}

impl Limit {
    /// The name used in settings, flags (with dashes) and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Limit::DailyTokens => "daily_tokens",
            Limit::MonthlyTokens => "monthly_tokens",
            Limit::DailyCost => "daily_cost",
            Limit::MonthlyCost => "monthly_cost",
            Limit::RequestsPerMinute => "requests_per_minute",
            Limit::TokensPerMinute => "tokens_per_minute",
        }
    }

    /// How a person reads it, with its amount.
    fn describe(self, allowed: f64) -> String {
        let amount = self.amount(allowed);
        match self {
            Limit::DailyTokens => format!("daily token budget of {amount}"),
            Limit::MonthlyTokens => format!("monthly token budget of {amount}"),
            Limit::DailyCost => format!("daily cost budget of {amount}"),
            Limit::MonthlyCost => format!("monthly cost budget of {amount}"),
            Limit::RequestsPerMinute | Limit::TokensPerMinute => {
                format!("limit of {amount} per minute")
            }
        }
    }

    /// The window it counts, in words.
    fn window(self) -> &'static str {
        match self {
            Limit::DailyTokens | Limit::DailyCost => "today (UTC)",
            Limit::MonthlyTokens | Limit::MonthlyCost => "this month (UTC)",
            Limit::RequestsPerMinute | Limit::TokensPerMinute => "in the last minute",
        }
    }

    /// Whether it is warned about before it is reached (the per-minute limits are not: they
    /// free up within a minute).
    fn warns(self) -> bool {
        !matches!(self, Limit::RequestsPerMinute | Limit::TokensPerMinute)
    }

    fn is_cost(self) -> bool {
        matches!(self, Limit::DailyCost | Limit::MonthlyCost)
    }

    /// The amount in its unit: tokens, LLM calls or USD.
    fn amount(self, value: f64) -> String {
        let unit = match self {
            Limit::DailyCost | Limit::MonthlyCost => return format!("${value:.4}"),
            Limit::RequestsPerMinute => "LLM call",
            _ => "token",
        };
        let number = format!("{value:.0}");
        let plural = if number == "1" { "" } else { "s" };
        format!("{number} {unit}{plural}")
    }
}

/// The largest amount of a cost limit, in USD.
pub const MAX_COST_USD: f64 = 1e9;
/// The largest count limit (the databases store counts as signed 64-bit integers).
pub const MAX_COUNT: u64 = i64::MAX as u64;

/// Why `budget` cannot be set, or `None`: it needs at least one limit, counts from 1 and USD
/// amounts from 0 to [`MAX_COST_USD`].
pub fn refusal(budget: &Budget) -> Option<String> {
    let counts = [
        (Limit::DailyTokens, budget.daily_tokens),
        (Limit::MonthlyTokens, budget.monthly_tokens),
        (Limit::RequestsPerMinute, budget.requests_per_minute),
        (Limit::TokensPerMinute, budget.tokens_per_minute),
    ];
    let costs = [
        (Limit::DailyCost, budget.daily_cost),
        (Limit::MonthlyCost, budget.monthly_cost),
    ];
    if counts.iter().all(|(_, v)| v.is_none()) && costs.iter().all(|(_, v)| v.is_none()) {
        return Some("a budget needs at least one limit".to_owned());
    }
    let outside = |v: &Option<u64>| v.is_some_and(|count| !(1..=MAX_COUNT).contains(&count));
    if let Some((limit, _)) = counts.iter().find(|(_, v)| outside(v)) {
        return Some(format!("{} must be from 1 to {MAX_COUNT}", limit.as_str()));
    }
    costs
        .iter()
        .find(|(_, v)| v.is_some_and(|usd| !(0.0..=MAX_COST_USD).contains(&usd)))
        .map(|(limit, _)| {
            format!(
                "{} must be a USD amount from 0 to {MAX_COST_USD:e}",
                limit.as_str()
            )
        })
}

/// Where a user stands against one limit.
#[derive(Debug, Clone, PartialEq)]
pub struct Standing {
    pub limit: Limit,
    pub used: f64,
    pub allowed: f64,
    /// The start of the window counted (the key of "warned once").
    pub window_start: DateTime<Utc>,
    /// When the window rolls over (for the per-minute limits: by when it has freed up).
    pub resets_at: DateTime<Utc>,
}

impl Standing {
    /// The text of the `error` that ends a turn over this limit.
    pub fn exceeded_message(&self) -> String {
        format!(
            "Budget exceeded: the {} is used up ({} used {}). It resets at {}.",
            self.limit.describe(self.allowed),
            self.limit.amount(self.used),
            self.limit.window(),
            rfc3339(self.resets_at),
        )
    }

    /// The text of the warning sent once when this limit is nearly used up.
    pub fn warning_message(&self) -> String {
        let share = if self.allowed > 0.0 {
            (self.used / self.allowed * 100.0).floor()
        } else {
            100.0
        };
        format!(
            "Budget warning: {share:.0}% of the {} is used ({} used {}). It resets at {}.",
            self.limit.describe(self.allowed),
            self.limit.amount(self.used),
            self.limit.window(),
            rfc3339(self.resets_at),
        )
    }
}

/// What a budget decides before a step.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Verdict {
    /// The limit that stops the step, if any (of several, the one that frees up last).
    pub exceeded: Option<Standing>,
    /// The day and month limits at or past [`WARNING_SHARE`] and not exceeded.
    pub warnings: Vec<Standing>,
}

/// The windows `budget` needs summed at `now`. A window no limit of the budget counts starts at
/// `now`, so the sum reads no rows for it.
pub fn windows(budget: &Budget, now: DateTime<Utc>) -> SpendWindows {
    let minute = budget.requests_per_minute.is_some() || budget.tokens_per_minute.is_some();
    let day = budget.daily_tokens.is_some() || budget.daily_cost.is_some();
    let month = budget.monthly_tokens.is_some() || budget.monthly_cost.is_some();
    SpendWindows {
        minute: if minute {
            now - Duration::seconds(60)
        } else {
            now
        },
        day: if day { day_start(now) } else { now },
        month: if month { month_start(now) } else { now },
    }
}

/// Judges `spend` (summed over [`windows`]) against `budget` at `now`.
pub fn judge(budget: &Budget, spend: &WindowSpend, now: DateTime<Utc>) -> Verdict {
    let day = (day_start(now), day_start(now) + Duration::days(1));
    let month = (month_start(now), next_month_start(now));
    let minute = (now - Duration::seconds(60), now + Duration::seconds(60));
    let limits = [
        (
            Limit::DailyTokens,
            budget.daily_tokens.map(as_f64),
            &spend.day,
            day,
        ),
        (
            Limit::MonthlyTokens,
            budget.monthly_tokens.map(as_f64),
            &spend.month,
            month,
        ),
        (Limit::DailyCost, budget.daily_cost, &spend.day, day),
        (Limit::MonthlyCost, budget.monthly_cost, &spend.month, month),
        (
            Limit::RequestsPerMinute,
            budget.requests_per_minute.map(as_f64),
            &spend.minute,
            minute,
        ),
        (
            Limit::TokensPerMinute,
            budget.tokens_per_minute.map(as_f64),
            &spend.minute,
            minute,
        ),
    ];
    let mut verdict = Verdict::default();
    for (limit, allowed, spent, (window_start, resets_at)) in limits {
        let Some(allowed) = allowed else { continue };
        let standing = Standing {
            limit,
            used: used(limit, spent),
            allowed,
            window_start,
            resets_at,
        };
        if standing.used >= allowed {
            let later = verdict
                .exceeded
                .as_ref()
                .is_none_or(|current| standing.resets_at > current.resets_at);
            if later {
                verdict.exceeded = Some(standing);
            }
        } else if limit.warns() && standing.used >= allowed * WARNING_SHARE {
            verdict.warnings.push(standing);
        }
    }
    if verdict.exceeded.is_some() {
        verdict.warnings.clear();
    }
    verdict
}

/// What `spent` counts against `limit`.
fn used(limit: Limit, spent: &Spend) -> f64 {
    if limit.is_cost() {
        spent.cost
    } else if limit == Limit::RequestsPerMinute {
        as_f64(spent.requests)
    } else {
        as_f64(spent.tokens)
    }
}

/// A count as `f64`: exact below 2^53, far above any count here.
fn as_f64(count: u64) -> f64 {
    count as f64
}

/// Midnight UTC of `now`'s day.
pub fn day_start(now: DateTime<Utc>) -> DateTime<Utc> {
    midnight(now.date_naive())
}

/// Midnight UTC of the first of `now`'s month.
pub fn month_start(now: DateTime<Utc>) -> DateTime<Utc> {
    midnight(now.date_naive().with_day(1).unwrap_or(now.date_naive()))
}

/// Midnight UTC of the first of the month after `now`'s.
fn next_month_start(now: DateTime<Utc>) -> DateTime<Utc> {
    let (year, month) = match now.month() {
        12 => (now.year() + 1, 1),
        month => (now.year(), month + 1),
    };
    NaiveDate::from_ymd_opt(year, month, 1)
        .map_or_else(|| day_start(now) + Duration::days(31), midnight)
}

/// Midnight UTC of `date`.
pub fn midnight(date: NaiveDate) -> DateTime<Utc> {
    Utc.from_utc_datetime(&date.and_time(chrono::NaiveTime::MIN))
}

fn rfc3339(time: DateTime<Utc>) -> String {
    time.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text)
            .unwrap()
            .with_timezone(&Utc)
    }

    fn unlimited() -> Budget {
        Budget {
            subject: "alice".into(),
            daily_tokens: None,
            monthly_tokens: None,
            daily_cost: None,
            monthly_cost: None,
            requests_per_minute: None,
            tokens_per_minute: None,
            updated_at: at("2026-12-01T00:00:00Z"),
        }
    }

    fn spend(requests: u64, tokens: u64, cost: f64) -> Spend {
        Spend {
            requests,
            tokens,
            cost,
        }
    }

    #[test]
    fn windows_are_utc_calendar_days_and_months_and_the_last_minute() {
        let now = at("2026-12-30T23:59:30Z");
        let budget = Budget {
            daily_tokens: Some(10),
            monthly_cost: Some(1.0),
            requests_per_minute: Some(5),
            ..unlimited()
        };
        let windows = windows(&budget, now);
        assert_eq!(windows.day, at("2026-12-30T00:00:00Z"));
        assert_eq!(windows.month, at("2026-12-01T00:00:00Z"));
        assert_eq!(windows.minute, at("2026-12-30T23:58:30Z"));
        let over = WindowSpend {
            day: spend(1, 10, 0.0),
            month: spend(1, 10, 1.0),
            minute: spend(5, 10, 0.0),
        };
        let verdict = judge(&budget, &over, now);
        let exceeded = verdict.exceeded.unwrap();
        assert_eq!(
            exceeded.limit,
            Limit::MonthlyCost,
            "the one that frees up last"
        );
        assert_eq!(exceeded.resets_at, at("2027-01-01T00:00:00Z"), "a new year");
    }

    #[test]
    fn a_window_no_limit_counts_reads_nothing() {
        let now = at("2026-12-07T10:00:00Z");
        let windows = windows(&unlimited(), now);
        assert_eq!(
            (windows.minute, windows.day, windows.month),
            (now, now, now)
        );
    }

    #[test]
    fn the_limit_itself_is_over_and_eighty_percent_warns() {
        let now = at("2026-12-07T10:00:00Z");
        let budget = Budget {
            daily_tokens: Some(1000),
            ..unlimited()
        };
        let with = |tokens| WindowSpend {
            day: spend(1, tokens, 0.0),
            ..WindowSpend::default()
        };
        assert_eq!(judge(&budget, &with(799), now), Verdict::default());
        let warned = judge(&budget, &with(800), now);
        assert_eq!(warned.exceeded, None);
        assert_eq!(warned.warnings.len(), 1);
        assert_eq!(
            warned.warnings[0].warning_message(),
            "Budget warning: 80% of the daily token budget of 1000 tokens is used (800 tokens \
             used today (UTC)). It resets at 2026-12-08T00:00:00Z."
        );
        let over = judge(&budget, &with(1000), now);
        assert!(over.warnings.is_empty(), "the error says it all");
        assert_eq!(
            over.exceeded.unwrap().exceeded_message(),
            "Budget exceeded: the daily token budget of 1000 tokens is used up (1000 tokens used \
             today (UTC)). It resets at 2026-12-08T00:00:00Z."
        );
    }

    #[test]
    fn per_minute_limits_never_warn_and_count_calls_or_tokens() {
        let now = at("2026-12-07T10:00:00Z");
        let budget = Budget {
            requests_per_minute: Some(10),
            tokens_per_minute: Some(100),
            ..unlimited()
        };
        let calls = WindowSpend {
            minute: spend(9, 10, 0.0),
            ..WindowSpend::default()
        };
        assert_eq!(judge(&budget, &calls, now), Verdict::default());
        let tokens = WindowSpend {
            minute: spend(1, 100, 0.0),
            ..WindowSpend::default()
        };
        let exceeded = judge(&budget, &tokens, now).exceeded.unwrap();
        assert_eq!(exceeded.limit, Limit::TokensPerMinute);
        assert_eq!(exceeded.resets_at, at("2026-12-07T10:01:00Z"));
    }

    #[test]
    fn a_budget_needs_a_limit_counts_from_one_and_sane_amounts() {
        assert!(refusal(&unlimited()).is_some());
        let ok = Budget {
            daily_cost: Some(0.0),
            ..unlimited()
        };
        assert_eq!(refusal(&ok), None);
        let zero = Budget {
            requests_per_minute: Some(0),
            ..unlimited()
        };
        assert_eq!(
            refusal(&zero).as_deref(),
            Some("requests_per_minute must be from 1 to 9223372036854775807")
        );
        let huge = Budget {
            tokens_per_minute: Some(u64::MAX),
            ..unlimited()
        };
        assert!(refusal(&huge).is_some());
        for usd in [-1.0, f64::NAN, f64::INFINITY, 2e9] {
            let bad = Budget {
                monthly_cost: Some(usd),
                ..unlimited()
            };
            assert!(refusal(&bad).unwrap().starts_with("monthly_cost"), "{usd}");
        }
    }

    #[test]
    fn costs_are_dollars() {
        let now = at("2026-02-10T10:00:00Z");
        let budget = Budget {
            monthly_cost: Some(2.5),
            ..unlimited()
        };
        let spent = WindowSpend {
            month: spend(3, 10, 2.5),
            ..WindowSpend::default()
        };
        let exceeded = judge(&budget, &spent, now).exceeded.unwrap();
        assert_eq!(
            exceeded.exceeded_message(),
            "Budget exceeded: the monthly cost budget of $2.5000 is used up ($2.5000 used this \
             month (UTC)). It resets at 2026-03-01T00:00:00Z."
        );
    }
}
