-- Usage accounting (docs/usage.md): one row per LLM call the runtime makes, written in the
-- same transaction as the step it belongs to. Rows outlive their session (no foreign key, no
-- cascade): what was spent stays spent when a session is deleted or purged. Timestamps are
-- fixed-width RFC 3339 UTC text, as in 0001.

CREATE TABLE llm_usage (
    id TEXT PRIMARY KEY NOT NULL,
    created_at TEXT NOT NULL,
    -- The session's owner when the call was made.
    user_id TEXT NOT NULL,
    session_id TEXT NOT NULL,
    turn_id TEXT,
    -- The turn's step the call belongs to (a routing call: the step it routed).
    step INTEGER NOT NULL,
    agent TEXT NOT NULL,
    -- `step`: an agent's answer; `routing`: the orchestrator's classification.
    purpose TEXT NOT NULL CHECK (purpose IN ('step', 'routing')),
    requested_model TEXT NOT NULL,
    -- The deployment that answered, as the proxy named it; NULL when it did not say.
    provider TEXT,
    model TEXT,
    prompt_tokens INTEGER NOT NULL,
    completion_tokens INTEGER NOT NULL,
    total_tokens INTEGER NOT NULL,
    cached_tokens INTEGER NOT NULL,
    -- USD; NULL when the model has no price (never guessed).
    cost REAL,
    latency_ms INTEGER NOT NULL,
    -- NULL when no token arrived.
    ttft_ms INTEGER,
    -- Tool calls the answer made.
    tool_calls INTEGER NOT NULL,
    outcome TEXT NOT NULL CHECK (outcome IN ('ok', 'error', 'cancelled')),
    -- For `error`: what failed (`timeout`, `connect`, `status_429`, `stream`, ...).
    error_kind TEXT
);
-- A user's spend in a window (budgets, GET /api/v1/usage).
CREATE INDEX ix_llm_usage_user_time ON llm_usage (user_id, created_at);
-- A session's usage per turn and step.
CREATE INDEX ix_llm_usage_session ON llm_usage (session_id, created_at);
-- The admin report over a period.
CREATE INDEX ix_llm_usage_time ON llm_usage (created_at);
