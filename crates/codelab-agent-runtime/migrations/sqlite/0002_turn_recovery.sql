-- Durable turns (part 2): a cancel request that can be set without the session lock, and an
-- index for the recovery sweep, which looks for turns whose runner died. Timestamps are
-- fixed-width RFC 3339 UTC text, as in 0001.

-- Set by `cancel_turn` without waiting for the session lock; the task running the turn polls
-- it and stops. NULL: no cancel was asked for.
ALTER TABLE turns ADD COLUMN cancel_requested_at TEXT;

-- list_stalled_turns: unfinished turns, oldest change first (SQLite uses it only when the
-- query repeats this predicate).
CREATE INDEX ix_turns_unfinished ON turns (updated_at)
    WHERE status IN ('running', 'awaiting_tools');
