-- Budgets (docs/usage.md, "Budgets"): per user, and a default for everyone without their own
-- (subject '*'). A NULL limit is no limit. Spend is read from llm_usage (0004), so a limit
-- needs no counter of its own and no job to reset it. Timestamps are fixed-width RFC 3339 UTC
-- text, as in 0001.

CREATE TABLE budgets (
    -- A user's id (the tokens' sub), or '*' for the default.
    subject TEXT PRIMARY KEY NOT NULL,
    -- Tokens and USD per UTC calendar day and month.
    daily_tokens INTEGER,
    monthly_tokens INTEGER,
    daily_cost REAL,
    monthly_cost REAL,
    -- LLM calls and tokens in the last 60 seconds.
    requests_per_minute INTEGER,
    tokens_per_minute INTEGER,
    updated_at TEXT NOT NULL
);
