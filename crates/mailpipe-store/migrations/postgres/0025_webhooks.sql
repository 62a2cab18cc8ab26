-- Signed webhooks (issue 17, item 3). A tenant's endpoints, and one row per
-- (endpoint, event) to deliver: the event's id is the message id, so every
-- retry of it carries the same `webhook-id`. Secrets are sealed under the
-- key-encryption key (as DKIM keys are), bound to the endpoint's id.
CREATE TABLE webhook_endpoints (
    endpoint_id TEXT PRIMARY KEY,
    tenant_id TEXT NOT NULL,
    url TEXT NOT NULL,
    -- Comma-separated event types; '' for every type.
    event_types TEXT NOT NULL DEFAULT '',
    secret BYTEA NOT NULL,
    -- The secret before the last rotation, still signing until then.
    previous_secret BYTEA,
    previous_until BIGINT,
    created_at BIGINT NOT NULL,
    last_success_at BIGINT,
    disabled_at BIGINT,
    disabled_reason TEXT
);
CREATE INDEX webhook_endpoints_tenant ON webhook_endpoints (tenant_id);

CREATE TABLE webhook_deliveries (
    endpoint_id TEXT NOT NULL,
    message_id TEXT NOT NULL,
    tenant_id TEXT NOT NULL,
    event_type TEXT NOT NULL,
    payload TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    attempts BIGINT NOT NULL DEFAULT 0,
    -- pending (next_attempt_at set), delivered or failed.
    status TEXT NOT NULL DEFAULT 'pending',
    next_attempt_at BIGINT,
    last_error TEXT,
    PRIMARY KEY (endpoint_id, message_id)
);
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (endpoint_id, next_attempt_at) WHERE status = 'pending';
CREATE INDEX webhook_deliveries_created ON webhook_deliveries (created_at);

-- Tenant rows, as every other tenant table (0012): the platform's context
-- sees all, a tenant's only its own. A tenant manages its endpoints and
-- reads its deliveries; it never writes a delivery.
DO $$
DECLARE
  t text;
BEGIN
  FOREACH t IN ARRAY ARRAY['webhook_endpoints', 'webhook_deliveries'] LOOP
    EXECUTE format('ALTER TABLE %I ENABLE ROW LEVEL SECURITY', t);
    EXECUTE format('ALTER TABLE %I FORCE ROW LEVEL SECURITY', t);
    EXECUTE format('CREATE POLICY platform ON %I USING (mailpipe_platform()) WITH CHECK (mailpipe_platform())', t);
    EXECUTE format('CREATE POLICY tenant ON %I USING (tenant_id = mailpipe_tenant()) WITH CHECK (tenant_id = mailpipe_tenant())', t);
  END LOOP;
END $$;
GRANT SELECT, INSERT, UPDATE, DELETE ON webhook_endpoints TO mailpipe_api;
GRANT SELECT ON webhook_deliveries TO mailpipe_api;
