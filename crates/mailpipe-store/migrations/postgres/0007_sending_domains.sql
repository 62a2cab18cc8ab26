-- Sending domains: a tenant sends only as a domain it holds, and signs with
-- that domain's own DKIM key, kept here, sealed.

-- owner: the tenant that holds the domain, or '' for a platform-owned one
-- (an operator's shared domain), which the tenants in
-- sending_domain_tenants may send as. attested: a platform-owned domain the
-- operator vouches for; checks record their findings but never change its
-- status.
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

-- Who may send as each domain: its owner, or a platform domain's tenants.
CREATE TABLE sending_domain_tenants (
    domain    TEXT NOT NULL REFERENCES sending_domains (domain) ON DELETE CASCADE,
    tenant_id TEXT NOT NULL,
    PRIMARY KEY (domain, tenant_id)
);
CREATE INDEX sending_domain_tenants_tenant ON sending_domain_tenants (tenant_id);

-- DKIM keys: the private key is PKCS#8 sealed with AES-256-GCM under a
-- key-encryption key from the configuration ([domains.keys]); it is never
-- stored in the clear, and the API role cannot read it at all.
CREATE TABLE dkim_keys (
    domain     TEXT NOT NULL REFERENCES sending_domains (domain) ON DELETE CASCADE,
    selector   TEXT NOT NULL,
    algorithm  TEXT NOT NULL CHECK (algorithm IN ('rsa-sha256', 'ed25519-sha256')),
    state      TEXT NOT NULL CHECK (state IN ('pending', 'active', 'previous')),
    public_key TEXT NOT NULL,
    sealed_key BYTEA NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (domain, selector)
);

-- Never read; sending domains replace it.
-- One number that every change to who may send as what moves on, in the
-- same transaction: how a worker knows, with one cheap read, to reload.
-- (Not a timestamp: clocks of different hosts disagree.)
CREATE TABLE sending_domains_revision (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    n  BIGINT NOT NULL
);
INSERT INTO sending_domains_revision (id, n) VALUES (1, 0);

ALTER TABLE tenants DROP COLUMN dkim_domains;

-- The tenant API reads a tenant's domains under row-level security, and
-- every column of its keys but the sealed private key.
GRANT SELECT ON sending_domains, sending_domain_tenants TO mailpipe_api;
GRANT SELECT (domain, selector, algorithm, state, public_key, created_at, updated_at) ON dkim_keys TO mailpipe_api;
ALTER TABLE sending_domains ENABLE ROW LEVEL SECURITY;
ALTER TABLE sending_domain_tenants ENABLE ROW LEVEL SECURITY;
ALTER TABLE dkim_keys ENABLE ROW LEVEL SECURITY;
CREATE POLICY tenant_rows ON sending_domain_tenants FOR SELECT TO mailpipe_api
    USING (tenant_id = current_setting('mailpipe.tenant', true));
CREATE POLICY tenant_rows ON sending_domains FOR SELECT TO mailpipe_api
    USING (domain IN (SELECT domain FROM sending_domain_tenants));
CREATE POLICY tenant_rows ON dkim_keys FOR SELECT TO mailpipe_api
    USING (domain IN (SELECT domain FROM sending_domain_tenants));
