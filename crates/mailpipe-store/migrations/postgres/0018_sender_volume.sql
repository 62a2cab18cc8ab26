-- Daily volume per organisational From domain (docs/deliverability.md):
-- mailbox providers classify bulk senders by it (5,000 a day to Gmail), so
-- a tenant sees it in the stats. Counted from `sent` events, once each.
CREATE TABLE sender_volume (
    tenant_id  TEXT NOT NULL,
    -- UTC midnight, unix ms.
    day        BIGINT NOT NULL,
    org_domain TEXT NOT NULL,
    sent       BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, day, org_domain)
);
ALTER TABLE sender_volume ENABLE ROW LEVEL SECURITY;
ALTER TABLE sender_volume FORCE ROW LEVEL SECURITY;
CREATE POLICY platform ON sender_volume USING (mailpipe_platform()) WITH CHECK (mailpipe_platform());
CREATE POLICY tenant ON sender_volume FOR SELECT USING (tenant_id = mailpipe_tenant());
GRANT SELECT ON sender_volume TO mailpipe_api;
