-- The reputation breaker's state per tenant (docs/deliverability.md): a
-- paused stream's marketing jobs wait on the retry schedule until resumed.
-- resumed_at bounds the figures the breaker reads, so that a resume is not
-- undone by the same complaints that paused it.
CREATE TABLE streams (
    tenant_id  TEXT PRIMARY KEY,
    state      TEXT NOT NULL CHECK (state IN ('active', 'paused')),
    reason     TEXT,
    changed_at BIGINT NOT NULL,
    resumed_at BIGINT NOT NULL DEFAULT 0
);
-- A tenant's row, as every tenant table (0012).
ALTER TABLE streams ENABLE ROW LEVEL SECURITY;
ALTER TABLE streams FORCE ROW LEVEL SECURITY;
CREATE POLICY platform ON streams USING (mailpipe_platform()) WITH CHECK (mailpipe_platform());
CREATE POLICY tenant ON streams FOR SELECT USING (tenant_id = mailpipe_tenant());
GRANT SELECT ON streams TO mailpipe_api;
-- The figures it reads: a tenant's events of a kind since a time.
CREATE INDEX events_tenant_type_time ON events (tenant_id, type, occurred_at);
