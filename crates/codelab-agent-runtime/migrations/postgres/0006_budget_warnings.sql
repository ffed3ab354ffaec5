-- Budget warnings sent (docs/usage.md, "Budgets"): a user is warned once per limit and window
-- when a day's or a month's budget is 80% used, however many turns and replicas run. A row is
-- removed when a later window of the same limit is warned about, so a user has at most one per
-- limit.

CREATE TABLE budget_warnings (
    user_id TEXT NOT NULL,
    -- daily_tokens, monthly_tokens, daily_cost or monthly_cost.
    budget_limit TEXT NOT NULL,
    -- The start of the UTC day or month warned about.
    window_start TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (user_id, budget_limit, window_start)
);
