-- The breaker per mailbox provider too (see the PostgreSQL migration).
ALTER TABLE events ADD COLUMN provider TEXT;
UPDATE events SET provider = json_extract(payload, '$.provider')
 WHERE type IN ('sent', 'bounced') AND occurred_at >= CAST(strftime('%s', 'now') AS INTEGER) * 1000 - 7 * 86400000;

CREATE TABLE streams_new (
    tenant_id  TEXT NOT NULL,
    domain     TEXT NOT NULL DEFAULT '',
    provider   TEXT NOT NULL DEFAULT '',
    state      TEXT NOT NULL CHECK (state IN ('active', 'paused')),
    reason     TEXT,
    changed_at BIGINT NOT NULL,
    resumed_at BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (tenant_id, domain, provider)
);
INSERT INTO streams_new (tenant_id, domain, state, reason, changed_at, resumed_at)
    SELECT tenant_id, domain, state, reason, changed_at, resumed_at FROM streams;
DROP TABLE streams;
ALTER TABLE streams_new RENAME TO streams;
