-- Two more suppression reasons: 'import' (a list a tenant brought along)
-- and 'erasure' (what an erasure on request leaves behind: the keyed hash
-- only). Entries made before keep the reason they were given (erasures
-- recorded 'manual').
--
-- The constraint is added NOT VALID and then validated: validation scans
-- the table under a SHARE UPDATE EXCLUSIVE lock, which lets the workers go
-- on reading and adding suppressions meanwhile.
ALTER TABLE suppressions DROP CONSTRAINT suppressions_reason_check;
ALTER TABLE suppressions ADD CONSTRAINT suppressions_reason_check
    CHECK (reason IN ('unsubscribe', 'complaint', 'hard_bounce', 'manual', 'import', 'erasure')) NOT VALID;
ALTER TABLE suppressions VALIDATE CONSTRAINT suppressions_reason_check;
