-- Durable retries. A deferred job keeps its send-job payload in the ledger
-- until it ends, so a retry scheduler (on any worker) can run it again after
-- the queue record was acknowledged. next_attempt_at doubles as a lease: a
-- worker that picks a due job pushes it forward, and if that worker dies the
-- job falls due again. The payload is cleared when the job reaches a
-- terminal status.
ALTER TABLE send_ledger ADD COLUMN payload BYTEA;
DROP INDEX send_ledger_due;
CREATE INDEX send_ledger_due ON send_ledger (next_attempt_at) WHERE payload IS NOT NULL;
