-- Two more suppression reasons: 'import' (a list a tenant brought along)
-- and 'erasure' (what an erasure on request leaves behind: the keyed hash
-- only). SQLite cannot alter a CHECK constraint, so the table is rebuilt.
-- Erasures used to record 'manual'; the entries an erasure made are the
-- ones with no source tenant whose recipient and scope are in `erasures`,
-- and they are relabelled.
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
SELECT s.scope_tenant, s.recipient_hash,
       CASE WHEN s.reason = 'manual' AND s.applies_to = 'all' AND s.source_tenant IS NULL
                 AND EXISTS (SELECT 1 FROM erasures e
                             WHERE e.recipient_hash = s.recipient_hash AND e.scope_tenant = s.scope_tenant)
            THEN 'erasure' ELSE s.reason END,
       s.applies_to, s.source_tenant, s.created_at
FROM suppressions s;
DROP TABLE suppressions;
ALTER TABLE suppressions_v6 RENAME TO suppressions;
CREATE INDEX suppressions_created ON suppressions (created_at);
