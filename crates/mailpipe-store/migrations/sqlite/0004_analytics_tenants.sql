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
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    received_at BIGINT NOT NULL,
    reason      TEXT NOT NULL,
    report      BLOB NOT NULL
);

CREATE INDEX send_ledger_recipient ON send_ledger (recipient);
CREATE INDEX events_occurred ON events (occurred_at);

-- SQLite has no row-level security; the embedded default serves one
-- operator, and every query still filters by tenant (tests/tests/analytics.rs).
