-- How many stdout lines of the session's current container the journal has consumed, so
-- output printed while the relay was down can be recovered from the engine's log without
-- duplicates. Updated in the same transaction as the journal lines it counts.
ALTER TABLE sessions ADD COLUMN sandbox_stdout_lines INTEGER NOT NULL DEFAULT 0;
