-- When a job's first SMTP attempt began: see the PostgreSQL migration 0030.
ALTER TABLE send_ledger ADD COLUMN first_attempt_at INTEGER;
