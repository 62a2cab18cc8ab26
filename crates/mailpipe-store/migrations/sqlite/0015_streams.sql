-- The reputation breaker's state per tenant (see the PostgreSQL migration).
CREATE TABLE streams (
    tenant_id  TEXT PRIMARY KEY,
    state      TEXT NOT NULL CHECK (state IN ('active', 'paused')),
    reason     TEXT,
    changed_at BIGINT NOT NULL,
    resumed_at BIGINT NOT NULL DEFAULT 0
);
CREATE INDEX events_tenant_type_time ON events (tenant_id, type, occurred_at);
