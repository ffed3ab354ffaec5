-- The agent runtime's schema: sessions and everything a turn needs to resume after a restart
-- (messages, tool calls with their approval state, turns, events). Same tables as on
-- PostgreSQL; timestamps are fixed-width RFC 3339 UTC text (`2024-01-02T03:04:05.123456Z`)
-- so comparing the text compares the instants; JSON is text; booleans are 0/1. Children go
-- with their session (ON DELETE CASCADE, with `PRAGMA foreign_keys` on, as every connection
-- of codelab-core's pool has it), which the idle-session purge relies on.
--
-- Not an adoption of the original's database: its `sessions`/`messages` tables have another
-- shape, and this migration fails on them rather than mixing the two.

CREATE TABLE sessions (
    id TEXT PRIMARY KEY NOT NULL,
    owner TEXT NOT NULL,
    title TEXT,
    -- The title lower-cased by the store (SQLite's lower() only folds ASCII).
    title_folded TEXT,
    current_agent TEXT NOT NULL,
    -- Also the seq of the newest message: append_message increments it in a write transaction.
    message_count INTEGER NOT NULL DEFAULT 0,
    -- The seq of the newest event, incremented the same way by append_event.
    last_event_seq INTEGER NOT NULL DEFAULT 0,
    created_at TEXT NOT NULL,
    last_activity TEXT NOT NULL,
    deleted_at TEXT
);
-- list_sessions: an owner's live sessions, most recently active first.
CREATE INDEX ix_sessions_owner_activity ON sessions (owner, last_activity DESC, id)
    WHERE deleted_at IS NULL;
-- purge_idle_sessions.
CREATE INDEX ix_sessions_last_activity ON sessions (last_activity);

CREATE TABLE messages (
    id TEXT PRIMARY KEY NOT NULL,
    session_id TEXT NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
    seq INTEGER NOT NULL,
    role TEXT NOT NULL CHECK (role IN ('user', 'assistant', 'system', 'tool')),
    content TEXT,
    agent TEXT,
    tool_calls TEXT,
    tool_call_id TEXT,
    created_at TEXT NOT NULL,
    CONSTRAINT ux_messages_session_seq UNIQUE (session_id, seq)
);

CREATE TABLE agent_switches (
    id INTEGER PRIMARY KEY,
    session_id TEXT NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
    from_agent TEXT,
    to_agent TEXT NOT NULL,
    reason TEXT NOT NULL,
    -- The original dropped it on save; kept here.
    confidence TEXT,
    method TEXT NOT NULL,
    created_at TEXT NOT NULL
);
CREATE INDEX ix_agent_switches_session ON agent_switches (session_id, id);

CREATE TABLE turns (
    id TEXT PRIMARY KEY NOT NULL,
    session_id TEXT NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
    status TEXT NOT NULL CHECK (status IN ('running', 'awaiting_tools', 'completed', 'cancelled',
                                           'failed', 'step_limit')),
    steps INTEGER NOT NULL,
    agent TEXT NOT NULL,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
-- Cascading deletes from sessions.
CREATE INDEX ix_turns_session ON turns (session_id);
-- active_turn: the newest unfinished turn of a session.
CREATE INDEX ix_turns_active ON turns (session_id, created_at DESC, id DESC)
    WHERE status IN ('running', 'awaiting_tools');

CREATE TABLE tool_calls (
    -- The rowid: insertion order, i.e. the order of the model's calls within a reply.
    id INTEGER PRIMARY KEY,
    session_id TEXT NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
    call_id TEXT NOT NULL,
    -- No foreign key: a turn's calls are written by the turn loop, which owns that order.
    turn_id TEXT NOT NULL,
    step INTEGER NOT NULL,
    provider_call_id TEXT,
    tool_name TEXT NOT NULL,
    arguments TEXT NOT NULL,
    requires_approval INTEGER NOT NULL CHECK (requires_approval IN (0, 1)),
    approval_reason TEXT,
    agent TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('pending_approval', 'awaiting_result', 'succeeded',
                                           'failed', 'rejected', 'cancelled', 'invalid',
                                           'executed')),
    decision TEXT,
    feedback TEXT,
    modified_arguments TEXT,
    result TEXT,
    error TEXT,
    created_at TEXT NOT NULL,
    settled_at TEXT,
    CONSTRAINT ux_tool_calls_session_call UNIQUE (session_id, call_id)
);
-- list_open_calls (SQLite uses it only when the query repeats this predicate).
CREATE INDEX ix_tool_calls_open ON tool_calls (session_id, id)
    WHERE status IN ('pending_approval', 'awaiting_result');
-- list_step_calls.
CREATE INDEX ix_tool_calls_turn_step ON tool_calls (turn_id, step, id);
-- call_id_exists with a provider's id.
CREATE INDEX ix_tool_calls_provider_call ON tool_calls (session_id, provider_call_id)
    WHERE provider_call_id IS NOT NULL;

CREATE TABLE events (
    session_id TEXT NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
    seq INTEGER NOT NULL,
    event TEXT NOT NULL,
    created_at TEXT NOT NULL,
    PRIMARY KEY (session_id, seq)
) WITHOUT ROWID;
