-- Fewer indexes on the hottest table (issue 16, item 7). Every open and
-- click is a row of events, and each btree it is in costs PostgreSQL a
-- descent and a page write per row.
--
-- * events_campaign (tenant, campaign, type) served only the demo's counts:
--   campaign figures come from the analytics tables.
-- * The breaker's figures (sent, bounced, complaint since a time, across
--   tenants) get a partial index on time, so opens and clicks skip it. Its
--   predicate is the breaker query's IN list, word for word (SQLite uses a
--   partial index only then).
-- Left: the primary key (idempotent writes), (tenant_id, job_id), which
-- erasure, the terminal event and a bounce's origin look rows up by, and
-- events_occurred, which retention and the stored-event feed read by.
--
-- Building an index here locks events for the build. On a large table,
-- run the CONCURRENTLY forms first (docs/operations.md, "Upgrading to
-- migration 0020"); this migration then finds the work done.
CREATE INDEX IF NOT EXISTS events_outcomes_time ON events (occurred_at) WHERE type IN ('sent', 'bounced', 'complaint');
DROP INDEX IF EXISTS events_tenant_type_time;
DROP INDEX IF EXISTS events_campaign;
