-- A warming domain's health by its own mail's outcomes: see the PostgreSQL
-- migration 0029.
CREATE INDEX IF NOT EXISTS events_sender_outcomes ON events (sender_domain, occurred_at)
    WHERE type IN ('sent', 'bounced', 'complaint');
