-- The ledger's campaign index becomes a btree on campaign_id.
--
-- 0005 made it a hash index, and 0022 kept it. A hash index puts every row
-- of one campaign in one bucket, and an insert walks that bucket's overflow
-- chain to its last page: the chain grows with the campaign, so each claim
-- costs more than the one before, and a campaign of n jobs costs O(n^2).
-- In the send bench the claim's insert read 30 buffers per row at the start
-- of a 30,000-job campaign and 97 at its end. One row more, on a temporary
-- table, read 125 buffers at 50,000 rows of one key and 494 at 200,000
-- (0.30 ms), against 3 for a btree; building the hash index over 1,000,000
-- rows of one key had not finished after 10 minutes (docs/benchmarks.md,
-- session 35).
--
-- A btree keeps equal keys in key order and then by row: an insert goes
-- down the tree once, whatever the campaign's size. Like the hash index,
-- and unlike 0001's (tenant_id, campaign_id) or a btree with tenant_id
-- second, it has no column the per-job reads and writes ask by (tenant_id,
-- job_id), so the planner cannot pick it for them. The (tenant_id,
-- campaign_id) reads use it as they used the hash index, and filter its
-- rows by tenant.
--
-- Building it holds a SHARE lock on each month of the ledger until the
-- migration commits: writes wait, reads go on. docs/operations.md,
-- "Upgrading to migration 0032", says how to build it beforehand, month by
-- month and without the lock, on a large ledger; IF NOT EXISTS then finds
-- it made.
SET LOCAL lock_timeout = '10s';
DROP INDEX IF EXISTS send_ledger_campaign;
CREATE INDEX IF NOT EXISTS send_ledger_by_campaign ON send_ledger (campaign_id);
