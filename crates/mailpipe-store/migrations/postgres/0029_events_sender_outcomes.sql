-- A warming domain's health (issue 17, item 4) is its own mail's outcomes
-- over the last seven windows: by sender domain, not across the platform's
-- every send of the week. Partial, on the breaker's IN list word for word,
-- so that opens and clicks (the tracker's hot rows) never touch it; each
-- send's outcome pays one more btree insert.
--
-- On a large events table, build it per partition CONCURRENTLY first
-- (docs/operations.md, "Upgrading to migration 0020" does the same for
-- events_outcomes_time); this migration then finds the work done.
CREATE INDEX IF NOT EXISTS events_sender_outcomes ON events (sender_domain, occurred_at)
    WHERE type IN ('sent', 'bounced', 'complaint');
