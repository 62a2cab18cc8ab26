-- mailpipe schema v1 (SQLite). Timestamps are unix milliseconds (BIGINT)
-- so that PostgreSQL and SQLite share one representation and one set of queries.

CREATE TABLE tenants (
    tenant_id      TEXT PRIMARY KEY,
    name           TEXT NOT NULL,
    -- Whether a marketing unsubscribe from this tenant's mail applies to every
    -- tenant (the platform default) or to this tenant only.
    unsubscribe_scope TEXT NOT NULL DEFAULT 'platform' CHECK (unsubscribe_scope IN ('platform', 'tenant')),
    created_at     BIGINT NOT NULL
);

CREATE TABLE campaign_templates (
    tenant_id      TEXT NOT NULL,
    campaign_id    TEXT NOT NULL,
    template_id    TEXT NOT NULL,
    subject        TEXT NOT NULL,
    html           TEXT,
    text           TEXT,
    version        BIGINT NOT NULL DEFAULT 1,
    created_at     BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, campaign_id, template_id)
);

-- One row per send job; (tenant_id, job_id) is the idempotency key.
CREATE TABLE send_ledger (
    tenant_id      TEXT NOT NULL,
    job_id         TEXT NOT NULL,
    campaign_id    TEXT NOT NULL,
    category       TEXT NOT NULL CHECK (category IN ('marketing', 'transactional')),
    recipient      TEXT NOT NULL,
    recipient_domain TEXT NOT NULL,
    -- pending: claimed, nothing sent; sending: SMTP transaction under way (a
    -- crash here leaves the job in doubt); the rest are terminal.
    status         TEXT NOT NULL CHECK (status IN ('pending', 'sending', 'deferred', 'sent', 'bounced', 'suppressed', 'failed', 'dead_lettered')),
    message_id     TEXT,
    attempts       INTEGER NOT NULL DEFAULT 0,
    last_reply     TEXT,
    next_attempt_at BIGINT,
    created_at     BIGINT NOT NULL,
    updated_at     BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, job_id)
);
CREATE INDEX send_ledger_campaign ON send_ledger (tenant_id, campaign_id);
CREATE INDEX send_ledger_due ON send_ledger (next_attempt_at) WHERE status = 'deferred';

-- Suppressions hold a keyed hash of the canonical address, never the address.
-- scope_tenant is '' for platform-wide entries.
CREATE TABLE suppressions (
    scope_tenant   TEXT NOT NULL,
    recipient_hash TEXT NOT NULL,
    reason         TEXT NOT NULL CHECK (reason IN ('hard_bounce', 'complaint', 'unsubscribe', 'manual')),
    -- 'marketing': stops marketing mail only; 'all': stops every category.
    applies_to     TEXT NOT NULL CHECK (applies_to IN ('marketing', 'all')),
    source_tenant  TEXT,
    created_at     BIGINT NOT NULL,
    PRIMARY KEY (scope_tenant, recipient_hash, applies_to)
);
CREATE INDEX suppressions_created ON suppressions (created_at);

CREATE TABLE events (
    event_id       TEXT PRIMARY KEY,
    tenant_id      TEXT,
    campaign_id    TEXT,
    job_id         TEXT,
    type           TEXT NOT NULL,
    occurred_at    BIGINT NOT NULL,
    payload        TEXT NOT NULL
);
CREATE INDEX events_campaign ON events (tenant_id, campaign_id, type);
CREATE INDEX events_job ON events (tenant_id, job_id);

CREATE TABLE dead_letters (
    id             INTEGER PRIMARY KEY AUTOINCREMENT,
    received_at    BIGINT NOT NULL,
    source         TEXT NOT NULL,
    reason         TEXT NOT NULL,
    detail         TEXT NOT NULL,
    tenant_id      TEXT,
    job_id         TEXT,
    payload        BLOB NOT NULL,
    -- The same queue record is dead-lettered once, however often it is redelivered.
    UNIQUE (source)
);
