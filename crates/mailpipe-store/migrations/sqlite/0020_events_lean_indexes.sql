-- Fewer indexes on the hottest table, as on PostgreSQL (see its 0020):
-- events_campaign served only the demo's counts, and the breaker's figures
-- get a partial index that opens and clicks skip (its predicate is the
-- breaker query's IN list, word for word, which SQLite needs to use it).
CREATE INDEX IF NOT EXISTS events_outcomes_time ON events (occurred_at) WHERE type IN ('sent', 'bounced', 'complaint');
DROP INDEX IF EXISTS events_tenant_type_time;
DROP INDEX IF EXISTS events_campaign;
