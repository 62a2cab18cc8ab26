-- The return path a send went out with carries a tag (a MAC over tenant
-- and job, docs/bounces.md); a bounce to it finds its send by the tag.
ALTER TABLE send_ledger ADD COLUMN return_tag TEXT;
CREATE INDEX send_ledger_return_tag ON send_ledger (return_tag) WHERE return_tag IS NOT NULL;

-- Soft bounces per address (its keyed hash), so that enough of them within
-- a window suppress it. Platform data: no tenant column.
CREATE TABLE soft_bounces (
    recipient_hash TEXT NOT NULL,
    at             BIGINT NOT NULL
);
CREATE INDEX soft_bounces_recipient ON soft_bounces (recipient_hash, at);
