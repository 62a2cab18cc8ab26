-- Fewer indexes on the hottest table (issue 16, item 7). Every open and
-- click is a row of events, and each btree it is in costs PostgreSQL a
-- descent and a page write per row: with five, storing an event cost about
-- 25 µs of the database's CPU, more than the tracker spent serving it.
--
-- * events_campaign (tenant, campaign, type) served only the demo's counts:
--   campaign figures come from the analytics tables.
-- * The breaker's figures (sent, bounced, complaint since a time, across
--   tenants) get a partial index on time, so opens and clicks skip it.
-- * Retention and the stored-event feed read events by time, and rows
--   arrive in time order: a BRIN index serves those range scans at almost
--   no cost per insert.
-- Left: the primary key (idempotent writes) and (tenant_id, job_id), which
-- erasure, the terminal event and a bounce's origin look rows up by.
DROP INDEX events_campaign;
DROP INDEX events_tenant_type_time;
CREATE INDEX events_outcomes_time ON events (occurred_at) WHERE type IN ('sent', 'bounced', 'complaint');
DROP INDEX events_occurred;
CREATE INDEX events_occurred ON events USING brin (occurred_at);
