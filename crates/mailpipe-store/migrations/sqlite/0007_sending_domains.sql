-- Sending domains: a tenant sends only as a domain it holds, and signs with
-- that domain's own DKIM key, kept here, sealed. See the PostgreSQL
-- migration for what each column means; the embedded default has no
-- row-level security (one process, one operator).
CREATE TABLE sending_domains (
    domain        TEXT PRIMARY KEY,
    owner         TEXT NOT NULL,
    status        TEXT NOT NULL CHECK (status IN ('pending', 'verified', 'failing', 'disabled')),
    attested      BOOLEAN NOT NULL DEFAULT FALSE,
    findings      TEXT,
    created_at    BIGINT NOT NULL,
    updated_at    BIGINT NOT NULL,
    checked_at    BIGINT,
    failing_since BIGINT
);

CREATE TABLE sending_domain_tenants (
    domain    TEXT NOT NULL REFERENCES sending_domains (domain) ON DELETE CASCADE,
    tenant_id TEXT NOT NULL,
    PRIMARY KEY (domain, tenant_id)
);
CREATE INDEX sending_domain_tenants_tenant ON sending_domain_tenants (tenant_id);

CREATE TABLE dkim_keys (
    domain     TEXT NOT NULL REFERENCES sending_domains (domain) ON DELETE CASCADE,
    selector   TEXT NOT NULL,
    algorithm  TEXT NOT NULL CHECK (algorithm IN ('rsa-sha256', 'ed25519-sha256')),
    state      TEXT NOT NULL CHECK (state IN ('pending', 'active', 'previous')),
    public_key TEXT NOT NULL,
    sealed_key BLOB NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (domain, selector)
);

-- One number that every change to who may send as what moves on, in the
-- same transaction: how a worker knows, with one cheap read, to reload.
-- (Not a timestamp: clocks of different hosts disagree.)
CREATE TABLE sending_domains_revision (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    n  BIGINT NOT NULL
);
INSERT INTO sending_domains_revision (id, n) VALUES (1, 0);

ALTER TABLE tenants DROP COLUMN dkim_domains;
