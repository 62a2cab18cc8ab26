-- Daily volume per organisational From domain (see the PostgreSQL migration).
CREATE TABLE sender_volume (
    tenant_id  TEXT NOT NULL,
    day        BIGINT NOT NULL,
    org_domain TEXT NOT NULL,
    sent       BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, day, org_domain)
);
