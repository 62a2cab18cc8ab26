-- Two more suppression reasons: 'import' (a list a tenant brought along)
-- and 'erasure' (what an erasure on request leaves behind: the keyed hash
-- only). Entries made before keep the reason they were given (erasures
-- recorded 'manual'). SQLite cannot alter a CHECK constraint, so the table
-- is copied into one with the wider constraint.
CREATE TABLE suppressions_v6 (
    scope_tenant   TEXT NOT NULL,
    recipient_hash TEXT NOT NULL,
    reason         TEXT NOT NULL CHECK (reason IN ('unsubscribe', 'complaint', 'hard_bounce', 'manual', 'import', 'erasure')),
    -- 'marketing': stops marketing mail only; 'all': stops every category.
    applies_to     TEXT NOT NULL CHECK (applies_to IN ('marketing', 'all')),
    source_tenant  TEXT,
    created_at     BIGINT NOT NULL,
    PRIMARY KEY (scope_tenant, recipient_hash, applies_to)
);
INSERT INTO suppressions_v6 (scope_tenant, recipient_hash, reason, applies_to, source_tenant, created_at)
SELECT scope_tenant, recipient_hash, reason, applies_to, source_tenant, created_at FROM suppressions;
DROP TABLE suppressions;
ALTER TABLE suppressions_v6 RENAME TO suppressions;
CREATE INDEX suppressions_created ON suppressions (created_at);
