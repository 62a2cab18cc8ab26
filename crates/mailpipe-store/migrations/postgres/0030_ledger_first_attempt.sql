-- When a job's first SMTP attempt was made (unix ms), set by its first
-- commit-point mark, or by the deferral of an attempt refused before DATA. `worker.max_age_secs` bounds retries from then, not from the
-- claim: a job held before its first attempt (scheduled by send_at, parked
-- by a warm-up cap, a paused stream or a rate limit) was waiting on us, not
-- on the receiver, and a first deferral after days of that must still be
-- retried. NULL for a job not yet attempted, or last attempted before this
-- migration (those keep the claim's time). Added to the partitioned parent:
-- every month's partition gets it, with no rewrite.
ALTER TABLE send_ledger ADD COLUMN IF NOT EXISTS first_attempt_at BIGINT;
