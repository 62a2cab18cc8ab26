-- The queue partition a scheduled job came from. Only the worker that owns
-- that partition runs the job's retries, so every job a rate limit applies to
-- still passes through one worker (see docs/worker.md, "Rate limits").
ALTER TABLE send_ledger ADD COLUMN shard INTEGER NOT NULL DEFAULT 0;
