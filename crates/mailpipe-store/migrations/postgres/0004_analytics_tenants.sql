-- Analytics aggregates, tenant API keys, erasure log and tenant isolation.

-- Per-campaign counters. bucket_hour = 0 holds the campaign totals; other
-- rows are the hourly series (unix hour start, in ms). metric names are
-- fixed (see mailpipe_store::analytics), plus `provider:<group>:<outcome>`.
CREATE TABLE campaign_counters (
    tenant_id   TEXT NOT NULL,
    campaign_id TEXT NOT NULL,
    bucket_hour BIGINT NOT NULL,
    metric      TEXT NOT NULL,
    value       BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, campaign_id, bucket_hour, metric)
);

-- Clicks per link.
CREATE TABLE campaign_links (
    tenant_id    TEXT NOT NULL,
    campaign_id  TEXT NOT NULL,
    url          TEXT NOT NULL,
    clicks       BIGINT NOT NULL,
    human_clicks BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, campaign_id, url)
);

-- Events already counted: a redelivered event counts once.
CREATE TABLE analytics_seen (
    event_id TEXT PRIMARY KEY,
    seen_at  BIGINT NOT NULL
);

-- First open / click per job, for the unique counts.
CREATE TABLE analytics_unique (
    tenant_id   TEXT NOT NULL,
    campaign_id TEXT NOT NULL,
    kind        TEXT NOT NULL,
    job_id      TEXT NOT NULL,
    PRIMARY KEY (tenant_id, campaign_id, kind, job_id)
);

-- Tenant API keys: only a SHA-256 of the key is stored.
CREATE TABLE api_keys (
    key_hash   TEXT PRIMARY KEY,
    tenant_id  TEXT NOT NULL,
    label      TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    revoked_at BIGINT
);
CREATE INDEX api_keys_tenant ON api_keys (tenant_id);

-- References to each tenant's keys (never the secrets themselves).
ALTER TABLE tenants ADD COLUMN token_key_ids TEXT NOT NULL DEFAULT '';
ALTER TABLE tenants ADD COLUMN dkim_domains TEXT NOT NULL DEFAULT '';

-- Erasures done: keyed hash only, so the address is never mailed again.
CREATE TABLE erasures (
    recipient_hash TEXT NOT NULL,
    scope_tenant   TEXT NOT NULL,
    erased_at      BIGINT NOT NULL,
    PRIMARY KEY (recipient_hash, scope_tenant)
);

-- ARF reports that could not be used, kept for inspection.
CREATE TABLE rejected_reports (
    id          BIGSERIAL PRIMARY KEY,
    received_at BIGINT NOT NULL,
    reason      TEXT NOT NULL,
    report      BYTEA NOT NULL
);

CREATE INDEX send_ledger_recipient ON send_ledger (recipient);
CREATE INDEX events_occurred ON events (occurred_at);

-- Row-level security: the API runs its reads as mailpipe_api, with
-- mailpipe.tenant set to the caller's tenant, so a query can only ever see
-- that tenant's rows, whatever its WHERE clause says.
-- The role mailpipe_api (NOLOGIN, granted to the application's user) is
-- created by the database administrator, as scripts/services.sh does:
--   CREATE ROLE mailpipe_api NOLOGIN; GRANT mailpipe_api TO mailpipe;
GRANT USAGE ON SCHEMA public TO mailpipe_api;
GRANT SELECT ON campaign_counters, campaign_links, send_ledger, events, suppressions TO mailpipe_api;
ALTER TABLE campaign_counters ENABLE ROW LEVEL SECURITY;
ALTER TABLE campaign_links ENABLE ROW LEVEL SECURITY;
ALTER TABLE send_ledger ENABLE ROW LEVEL SECURITY;
ALTER TABLE events ENABLE ROW LEVEL SECURITY;
ALTER TABLE suppressions ENABLE ROW LEVEL SECURITY;
CREATE POLICY tenant_rows ON campaign_counters FOR SELECT TO mailpipe_api
    USING (tenant_id = current_setting('mailpipe.tenant', true));
CREATE POLICY tenant_rows ON campaign_links FOR SELECT TO mailpipe_api
    USING (tenant_id = current_setting('mailpipe.tenant', true));
CREATE POLICY tenant_rows ON send_ledger FOR SELECT TO mailpipe_api
    USING (tenant_id = current_setting('mailpipe.tenant', true));
CREATE POLICY tenant_rows ON events FOR SELECT TO mailpipe_api
    USING (tenant_id = current_setting('mailpipe.tenant', true));
CREATE POLICY tenant_rows ON suppressions FOR SELECT TO mailpipe_api
    USING (scope_tenant = current_setting('mailpipe.tenant', true));
