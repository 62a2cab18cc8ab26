-- The ledger's pages are filled to half at insert (fillfactor 50), leaving
-- room for the two updates every row gets soon after (the `sending` mark at
-- the commit point, then the outcome), so that both are heap-only (HOT):
-- the new version on the same page, no new entry in the ledger's indexes.
-- At the default fillfactor (100) the page is full when the row lands, and
-- 56-60% of the updates were HOT in the send bench; at 50, 96-97%, with
-- 12-13% less WAL per message (docs/benchmarks.md, session 34).
--
-- A partitioned table takes no storage parameters of its own: each month's
-- partition gets it. Pages already full stay as they are; new ones follow
-- the setting.
--
-- No month is made meanwhile (the lock mailpipe_prepare_partitions takes
-- first), so none is missed by the loop below and made by the function's
-- old text. A partition whose lock a VACUUM holds is waited for 10 s at
-- most: the migration then fails, and runs again whole.
SET LOCAL lock_timeout = '10s';
SELECT pg_advisory_xact_lock(hashtextextended('mailpipe_partitions', 0));
DO $$
DECLARE
  p regclass;
BEGIN
  FOR p IN SELECT inhrelid FROM pg_inherits WHERE inhparent = 'send_ledger'::regclass LOOP
    EXECUTE format('ALTER TABLE %s SET (fillfactor = 50)', p);
  END LOOP;
END $$;

-- As in 0022, but for the fillfactor of the ledger's new months.
CREATE OR REPLACE FUNCTION mailpipe_prepare_partitions(now_ms bigint) RETURNS integer
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, public, pg_temp SET lock_timeout = '10s' AS $$
DECLARE
  parent text;
  col text;
  b record;
  lo bigint;
  hi bigint;
  part text;
  made integer := 0;
  this_month integer;
  caller_scope text := coalesce(current_setting('mailpipe.scope', true), '');
BEGIN
  -- One caller at a time: two services starting together make each table once.
  PERFORM pg_advisory_xact_lock(hashtextextended('mailpipe_partitions', 0));
  -- Moving the ledger's month on waits for the claims under way, which
  -- hold this lock shared; taken before any table's lock, as a claim takes
  -- it before its tables', so that neither waits on the other's.
  this_month := (SELECT suffix::integer FROM mailpipe_month_bounds(now_ms, 0));
  IF (SELECT s.part FROM send_ledger_current s) < this_month THEN
    PERFORM pg_advisory_xact_lock(1818584167, 0);
  END IF;
  -- The rows it moves are every tenant's: the platform's scope, for the
  -- call only (a function's SET clause may not name a custom setting).
  PERFORM set_config('mailpipe.scope', 'platform', true);
  FOREACH parent IN ARRAY ARRAY['events', 'dead_letters', 'send_ledger'] LOOP
    -- The ledger's partition column is not a time (and not one for
    -- mailpipe_expire_partitions to drop by).
    col := CASE parent WHEN 'send_ledger' THEN 'part' ELSE mailpipe_partitioned(parent) END;
    FOR i IN 0..2 LOOP
      SELECT * INTO b FROM mailpipe_month_bounds(now_ms, i);
      -- Times for events and dead letters, the month's number for the ledger.
      IF parent = 'send_ledger' THEN
        lo := b.suffix::bigint;
        hi := lo + 1;
        -- Never a month before the current one again: its partition may
        -- have been dropped, its last rows moved to the default partition.
        CONTINUE WHEN lo < (SELECT s.part FROM send_ledger_current s);
      ELSE
        lo := b.lo;
        hi := b.hi;
      END IF;
      part := parent || '_' || b.suffix;
      CONTINUE WHEN to_regclass(part) IS NOT NULL;
      BEGIN
        -- The lock the attach would take anyway, taken before the move: no
        -- row for the month can reach the default partition in between.
        EXECUTE format('LOCK TABLE %I IN ACCESS EXCLUSIVE MODE', parent || '_default');
        -- A ledger row is updated twice after its insert (the commit
        -- point, the outcome): room on its page keeps both updates HOT.
        EXECUTE format('CREATE TABLE public.%I (LIKE public.%I INCLUDING DEFAULTS INCLUDING CONSTRAINTS)%s',
                       part, parent, CASE parent WHEN 'send_ledger' THEN ' WITH (fillfactor = 50)' ELSE '' END);
        EXECUTE format('WITH moved AS (DELETE FROM %I WHERE %I >= %s AND %I < %s RETURNING *) INSERT INTO %I SELECT * FROM moved',
                       parent || '_default', col, lo, col, hi, part);
        EXECUTE format('ALTER TABLE %I ATTACH PARTITION %I FOR VALUES FROM (%s) TO (%s)', parent, part, lo, hi);
        PERFORM mailpipe_protect_partition(part);
        made := made + 1;
      EXCEPTION WHEN invalid_object_definition THEN
        -- The month is inside the partition of the table from before 0021.
        NULL;
      END;
    END LOOP;
  END LOOP;
  -- Its partition is made (above): the month may now be current.
  UPDATE send_ledger_current SET part = this_month WHERE send_ledger_current.part < this_month;
  PERFORM set_config('mailpipe.scope', caller_scope, true);
  RETURN made;
END $$;
