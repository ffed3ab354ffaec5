-- Durable turns (part 2): a cancel request that any replica can set without the session lock,
-- and an index for the recovery sweep, which looks for turns whose runner died.

-- Set by `cancel_turn` (on any replica, without waiting for the session lock); the process
-- running the turn polls it and stops. NULL: no cancel was asked for.
ALTER TABLE turns ADD COLUMN cancel_requested_at TIMESTAMPTZ;

-- list_stalled_turns: unfinished turns, oldest change first.
CREATE INDEX ix_turns_unfinished ON turns (updated_at)
    WHERE status IN ('running', 'awaiting_tools');
