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
-- The new index is built before the old one is dropped: the build holds a
-- SHARE lock on each month of the ledger (claims, marks and outcomes wait,
-- reads go on), and only the drop, last, takes the ACCESS EXCLUSIVE lock,
-- from there to the commit. Locks are waited for 10 s at most; the
-- migration then fails and runs again whole. No month is made meanwhile
-- (the lock mailpipe_prepare_partitions takes first, as in 0031).
--
-- docs/operations.md, "Upgrading to migration 0032", builds the index month
-- by month without the write lock beforehand; the CREATE below then adopts
-- those. An index such a build left invalid (an interrupted CONCURRENTLY,
-- or a parent made ON ONLY whose months were not all attached) is dropped
-- first and made again here, so that the ledger is never left without a
-- valid campaign index.
SET LOCAL lock_timeout = '10s';
SELECT pg_advisory_xact_lock(hashtextextended('mailpipe_partitions', 0));
DO $$
DECLARE
  i regclass;
BEGIN
  -- The parent first: dropping it drops the months' indexes attached to it.
  FOR i IN SELECT x.indexrelid::regclass FROM pg_index x
           WHERE NOT x.indisvalid AND x.indrelid = 'send_ledger'::regclass
             AND x.indexrelid = to_regclass('send_ledger_by_campaign') LOOP
    EXECUTE format('DROP INDEX %s', i);
  END LOOP;
  FOR i IN SELECT x.indexrelid::regclass FROM pg_index x JOIN pg_class c ON c.oid = x.indexrelid
           WHERE NOT x.indisvalid AND c.relname LIKE '%\_by\_campaign'
             AND x.indrelid IN (SELECT inhrelid FROM pg_inherits WHERE inhparent = 'send_ledger'::regclass) LOOP
    EXECUTE format('DROP INDEX %s', i);
  END LOOP;
END $$;
CREATE INDEX IF NOT EXISTS send_ledger_by_campaign ON send_ledger (campaign_id);
-- The CREATE adopts a month's index on campaign_id as it finds it, invalid
-- or not, whatever its name: the hash index goes only if the new one works.
DO $$
BEGIN
  IF NOT (SELECT indisvalid FROM pg_index WHERE indexrelid = 'send_ledger_by_campaign'::regclass) THEN
    RAISE EXCEPTION 'send_ledger_by_campaign is invalid: a month of send_ledger has an invalid index on campaign_id (an interrupted CREATE INDEX CONCURRENTLY?); drop it and run mailpipe migrate again';
  END IF;
END $$;
DROP INDEX IF EXISTS send_ledger_campaign;
