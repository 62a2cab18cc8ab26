-- Erasure finds a person's ledger rows by the keyed hash of their canonical
-- (lower-cased) address, whatever case a producer wrote it in: every new row
-- carries the hash. Rows from before this migration have none; they are
-- found by the lower-cased address through a partial index that new rows
-- never enter, so the hot path writes one index instead of two.
ALTER TABLE send_ledger ADD COLUMN recipient_hash TEXT;
DROP INDEX send_ledger_recipient;
CREATE INDEX send_ledger_recipient_hash ON send_ledger (recipient_hash);
CREATE INDEX send_ledger_recipient_legacy ON send_ledger (lower(recipient)) WHERE recipient_hash IS NULL;
