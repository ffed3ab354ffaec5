-- The agent runtime's schema: sessions and everything a turn needs to resume after a restart
-- or on another replica (messages, tool calls with their approval state, turns, events).
-- Timestamps are TIMESTAMPTZ (UTC); JSON is JSONB. Children go with their session
-- (ON DELETE CASCADE), which the idle-session purge relies on.
--
-- Not an adoption of the original's database: its `sessions`/`messages` tables have another
-- shape, and this migration fails on them rather than mixing the two.

CREATE TABLE sessions (
    id TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    title TEXT,
    -- The title lower-cased by the store: the search folds case the same way on both databases.
    title_folded TEXT,
    current_agent TEXT NOT NULL,
    -- Also the seq of the newest message: append_message increments it under the row lock.
    message_count BIGINT NOT NULL DEFAULT 0,
    -- The seq of the newest event, incremented the same way by append_event.
    last_event_seq BIGINT NOT NULL DEFAULT 0,
    created_at TIMESTAMPTZ NOT NULL,
    last_activity TIMESTAMPTZ NOT NULL,
    deleted_at TIMESTAMPTZ
);
-- list_sessions: an owner's live sessions, most recently active first.
CREATE INDEX ix_sessions_owner_activity ON sessions (owner, last_activity DESC, id)
    WHERE deleted_at IS NULL;
-- purge_idle_sessions.
CREATE INDEX ix_sessions_last_activity ON sessions (last_activity);

CREATE TABLE messages (
    id UUID PRIMARY KEY,
    session_id TEXT NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
    seq BIGINT NOT NULL,
    role TEXT NOT NULL CHECK (role IN ('user', 'assistant', 'system', 'tool')),
    content TEXT,
    agent TEXT,
    tool_calls JSONB,
    tool_call_id TEXT,
    created_at TIMESTAMPTZ NOT NULL,
    CONSTRAINT ux_messages_session_seq UNIQUE (session_id, seq)
);

CREATE TABLE agent_switches (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    session_id TEXT NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
    from_agent TEXT,
    to_agent TEXT NOT NULL,
    reason TEXT NOT NULL,
    -- The original dropped it on save; kept here.
    confidence TEXT,
    method TEXT NOT NULL,
    created_at TIMESTAMPTZ NOT NULL
);
CREATE INDEX ix_agent_switches_session ON agent_switches (session_id, id);

CREATE TABLE turns (
    id TEXT PRIMARY KEY,
    session_id TEXT NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
    status TEXT NOT NULL CHECK (status IN ('running', 'awaiting_tools', 'completed', 'cancelled',
                                           'failed', 'step_limit')),
    steps INTEGER NOT NULL,
    agent TEXT NOT NULL,
    created_at TIMESTAMPTZ NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL
);
-- Cascading deletes from sessions.
CREATE INDEX ix_turns_session ON turns (session_id);
-- active_turn: the newest unfinished turn of a session.
CREATE INDEX ix_turns_active ON turns (session_id, created_at DESC, id DESC)
    WHERE status IN ('running', 'awaiting_tools');

CREATE TABLE tool_calls (
    -- Insertion order: the order of the model's calls within a reply, and oldest first overall.
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    session_id TEXT NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
    call_id TEXT NOT NULL,
    -- No foreign key: a turn's calls are written by the turn loop, which owns that order.
    turn_id TEXT NOT NULL,
    step INTEGER NOT NULL,
    provider_call_id TEXT,
    tool_name TEXT NOT NULL,
    arguments JSONB NOT NULL,
    requires_approval BOOLEAN NOT NULL,
    approval_reason TEXT,
    agent TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('pending_approval', 'awaiting_result', 'succeeded',
                                           'failed', 'rejected', 'cancelled', 'invalid',
                                           'executed')),
    decision TEXT,
    feedback TEXT,
    modified_arguments JSONB,
    result JSONB,
    error TEXT,
    created_at TIMESTAMPTZ NOT NULL,
    settled_at TIMESTAMPTZ,
    CONSTRAINT ux_tool_calls_session_call UNIQUE (session_id, call_id)
);
-- list_open_calls.
CREATE INDEX ix_tool_calls_open ON tool_calls (session_id, id)
    WHERE status IN ('pending_approval', 'awaiting_result');
-- list_step_calls.
CREATE INDEX ix_tool_calls_turn_step ON tool_calls (turn_id, step, id);
-- call_id_exists with a provider's id.
CREATE INDEX ix_tool_calls_provider_call ON tool_calls (session_id, provider_call_id)
    WHERE provider_call_id IS NOT NULL;

CREATE TABLE events (
    session_id TEXT NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
    seq BIGINT NOT NULL,
    event JSONB NOT NULL,
    created_at TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (session_id, seq)
);
