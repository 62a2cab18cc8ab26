-- Two more suppression reasons: 'import' (a list a tenant brought along)
-- and 'erasure' (what an erasure on request leaves behind: the keyed hash
-- only). Erasures used to record 'manual'; the entries an erasure made are
-- the ones with no source tenant whose recipient and scope are in
-- `erasures`, and they are relabelled.
ALTER TABLE suppressions DROP CONSTRAINT suppressions_reason_check;
ALTER TABLE suppressions ADD CONSTRAINT suppressions_reason_check
    CHECK (reason IN ('unsubscribe', 'complaint', 'hard_bounce', 'manual', 'import', 'erasure'));

UPDATE suppressions s SET reason = 'erasure'
WHERE s.reason = 'manual' AND s.applies_to = 'all' AND s.source_tenant IS NULL
  AND EXISTS (SELECT 1 FROM erasures e WHERE e.recipient_hash = s.recipient_hash AND e.scope_tenant = s.scope_tenant);
