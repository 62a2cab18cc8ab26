-- Fewer indexes on the hottest table, as on PostgreSQL (see its 0020):
-- events_campaign served only the demo's counts, and the breaker's figures
-- get a partial index that opens and clicks skip. SQLite has no BRIN, so
-- events_occurred stays a btree.
DROP INDEX events_campaign;
DROP INDEX events_tenant_type_time;
CREATE INDEX events_outcomes_time ON events (occurred_at) WHERE type IN ('sent', 'bounced', 'complaint');
