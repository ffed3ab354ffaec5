-- Budgets (docs/usage.md, "Budgets"): per user, and a default for everyone without their own
-- (subject '*'). A NULL limit is no limit. Spend is read from llm_usage (0004), so a limit
-- needs no counter of its own and no job to reset it. Timestamps are TIMESTAMPTZ (UTC), as in 0001.

CREATE TABLE budgets (
    -- A user's id (the tokens' sub), or '*' for the default.
    subject TEXT PRIMARY KEY,
    -- Tokens and USD per UTC calendar day and month.
    daily_tokens BIGINT,
    monthly_tokens BIGINT,
    daily_cost DOUBLE PRECISION,
    monthly_cost DOUBLE PRECISION,
    -- LLM calls and tokens in the last 60 seconds.
    requests_per_minute BIGINT,
    tokens_per_minute BIGINT,
    updated_at TIMESTAMPTZ NOT NULL
);
