-- Planning (docs/agent-runtime.md, "Planning"): the plans the architect writes with
-- `create_plan`, their subtasks with their states, every version a `modify` replaced, and the
-- plan a turn runs. Timestamps are TIMESTAMPTZ (UTC); JSON is JSONB, as in 0001. Everything
-- goes with its session (ON DELETE CASCADE), which the idle-session purge relies on.

CREATE TABLE plans (
    id TEXT PRIMARY KEY,
    session_id TEXT NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
    -- 1, then one more per revision a `modify` asked for.
    version INTEGER NOT NULL,
    title TEXT NOT NULL,
    description TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('awaiting_approval', 'approved', 'in_progress',
                                           'completed', 'rejected', 'failed', 'cancelled')),
    -- The `create_plan` call of the current version: each version has its own call, so it is
    -- not unique over time (a plain index below).
    call_id TEXT NOT NULL,
    -- No foreign key, as tool_calls.turn_id: the turn loop owns that order.
    turn_id TEXT NOT NULL,
    -- The feedback of the latest `modify`, until the next version is proposed.
    feedback TEXT,
    summary TEXT,
    created_at TIMESTAMPTZ NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL
);
-- plan_of_call.
CREATE INDEX ix_plans_session_call ON plans (session_id, call_id);
-- list_plans: a session's plans, oldest first; also the cascading deletes from sessions.
CREATE INDEX ix_plans_session_created ON plans (session_id, created_at, id);

-- The subtasks of a plan's current version; a new version replaces them all.
CREATE TABLE plan_subtasks (
    plan_id TEXT NOT NULL REFERENCES plans (id) ON DELETE CASCADE,
    -- 0-based: the subtask's id within its plan, and its order.
    position INTEGER NOT NULL,
    title TEXT NOT NULL,
    description TEXT NOT NULL,
    agent TEXT NOT NULL,
    estimated_minutes INTEGER NOT NULL,
    -- The positions of the subtasks to finish first: a JSON array of integers.
    dependencies JSONB NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('pending', 'in_progress', 'completed', 'failed',
                                           'skipped', 'cancelled')),
    result TEXT,
    error TEXT,
    -- The seq of the session's last message before the subtask started (its context is what
    -- came after); NULL until it starts.
    context_from BIGINT,
    -- The turn's step count when the subtask started; NULL until it starts.
    first_step INTEGER,
    PRIMARY KEY (plan_id, position)
);

-- Every version of a plan as proposed, kept when a `modify` replaces it.
CREATE TABLE plan_versions (
    plan_id TEXT NOT NULL REFERENCES plans (id) ON DELETE CASCADE,
    version INTEGER NOT NULL,
    title TEXT NOT NULL,
    description TEXT NOT NULL,
    -- The subtasks in `create_plan`'s argument shape.
    subtasks JSONB NOT NULL,
    -- The feedback that asked for the next version; NULL while none followed.
    feedback TEXT,
    created_at TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (plan_id, version)
);

-- The plan a turn runs, once one was approved in it; never cleared (a turn never leaves its
-- plan). No foreign key: both go with their session.
ALTER TABLE turns ADD COLUMN plan_id TEXT;

-- Whether the turn must produce a plan: the router classified its request as complex, the
-- session always plans, or the user asked for a plan. Never cleared within a turn.
ALTER TABLE turns ADD COLUMN plan_required BOOLEAN NOT NULL DEFAULT FALSE;

-- The router's verdict on the request it routed (`atomic` or `complex`); NULL for a change
-- of agent that was not a routing decision.
ALTER TABLE agent_switches ADD COLUMN complexity TEXT;

-- A session's planning setting: `auto` (the router decides), `always` or `never`.
ALTER TABLE sessions ADD COLUMN planning TEXT NOT NULL DEFAULT 'auto'
    CHECK (planning IN ('auto', 'always', 'never'));
