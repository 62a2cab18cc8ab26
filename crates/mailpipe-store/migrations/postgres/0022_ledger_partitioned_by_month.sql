-- The send ledger partitioned by month (issue 16, item 8), like events and
-- dead letters in 0021: retention drops a month's partition instead of
-- deleting its rows one by one. docs/operations.md, "Partitions".
--
-- * A claim is what makes a send happen once: two claims of one job meet on
--   the key (tenant_id, job_id). A partitioned table's unique key must hold
--   its partition column, so the ledger is partitioned by `part`, a month
--   (YYYYMM) that every claim takes from `send_ledger_current`, not from its
--   own clock: claims of the same job made in the same month meet on the
--   primary key (tenant_id, job_id, part), and a claim also looks the job up
--   in every other month (crates/mailpipe-store/src/ledger.rs).
-- * The current month moves on (mailpipe_prepare_partitions) under an
--   exclusive advisory lock that every claim holds shared for its
--   transaction. So a claim that read the old month has committed before the
--   change, and a claim that reads the new month looks after it, and sees
--   the old month's row. Moving late only makes the old month a little
--   longer; the months' partitions are made before the month is current.
-- * Retention: a month before the current one takes no new rows. It is
--   dropped once every row in it is past `retention.ledger_days` (finished,
--   and last updated before the cutoff), but for up to a thousand
--   unfinished or recent ones, which move to the DEFAULT partition first
--   (mailpipe_expire_ledger). The DEFAULT partition and the table from
--   before this migration lose their rows one by one, as before.
-- * The table from before this migration, if it holds rows, becomes the
--   partition of month 0 (`part` 0 for every row it has): no row is copied.
--   Its primary key is rebuilt to hold `part` (docs/operations.md, "Upgrading
--   to migration 0022", says how to build it beforehand).

CREATE TABLE send_ledger_current (
    only_row BOOLEAN PRIMARY KEY DEFAULT true CHECK (only_row),
    part     INTEGER NOT NULL
);
INSERT INTO send_ledger_current (part)
    VALUES (to_char(now() AT TIME ZONE 'UTC', 'YYYYMM')::integer);
-- The services read it; only the owner's functions move it on.
REVOKE ALL ON send_ledger_current FROM PUBLIC, mailpipe_service, mailpipe_api;
GRANT SELECT ON send_ledger_current TO mailpipe_service;

ALTER TABLE send_ledger RENAME TO send_ledger_before_0022;
ALTER INDEX send_ledger_pkey RENAME TO send_ledger_before_0022_pkey;
ALTER INDEX send_ledger_campaign RENAME TO send_ledger_before_0022_campaign;
ALTER INDEX send_ledger_due RENAME TO send_ledger_before_0022_due;
ALTER INDEX send_ledger_recipient_hash RENAME TO send_ledger_before_0022_recipient_hash;
ALTER INDEX send_ledger_recipient_legacy RENAME TO send_ledger_before_0022_recipient_legacy;
ALTER INDEX send_ledger_return_tag RENAME TO send_ledger_before_0022_return_tag;

-- The columns in the old table's order, `part` last.
CREATE TABLE send_ledger (
    tenant_id      TEXT NOT NULL,
    job_id         TEXT NOT NULL,
    campaign_id    TEXT NOT NULL,
    -- Named as the old table's are: a partition must have its parent's.
    category       TEXT NOT NULL CONSTRAINT send_ledger_category_check CHECK (category IN ('marketing', 'transactional')),
    recipient      TEXT NOT NULL,
    recipient_domain TEXT NOT NULL,
    status         TEXT NOT NULL CONSTRAINT send_ledger_status_check CHECK (status IN ('pending', 'sending', 'deferred', 'sent', 'bounced', 'suppressed', 'failed', 'dead_lettered')),
    message_id     TEXT,
    attempts       INTEGER NOT NULL DEFAULT 0,
    last_reply     TEXT,
    next_attempt_at BIGINT,
    created_at     BIGINT NOT NULL,
    updated_at     BIGINT NOT NULL,
    payload        BYTEA,
    shard          INTEGER NOT NULL DEFAULT 0,
    recipient_hash TEXT,
    return_tag     TEXT,
    part           INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, job_id, part)
) PARTITION BY RANGE (part);
CREATE INDEX send_ledger_campaign ON send_ledger USING hash (campaign_id);
CREATE INDEX send_ledger_due ON send_ledger (next_attempt_at) WHERE payload IS NOT NULL;
CREATE INDEX send_ledger_recipient_hash ON send_ledger (recipient_hash);
CREATE INDEX send_ledger_recipient_legacy ON send_ledger (lower(recipient)) WHERE recipient_hash IS NULL;
CREATE INDEX send_ledger_return_tag ON send_ledger (return_tag) WHERE return_tag IS NOT NULL;
CREATE TABLE send_ledger_default PARTITION OF send_ledger DEFAULT;

DO $$
DECLARE
  n bigint;
BEGIN
  -- Every tenant's rows: the old table's FORCEd policies would hide them
  -- from the owner, and a full table look empty.
  PERFORM set_config('mailpipe.scope', 'platform', true);
  SELECT count(*) INTO n FROM (SELECT 1 FROM send_ledger_before_0022 LIMIT 1) s;
  IF n = 0 THEN
    DROP TABLE send_ledger_before_0022;
  ELSE
    -- Instant (a constant default), and a no-op if done beforehand.
    ALTER TABLE send_ledger_before_0022 ADD COLUMN IF NOT EXISTS part INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE send_ledger_before_0022 ALTER COLUMN part DROP DEFAULT;
    IF EXISTS (SELECT 1 FROM pg_index WHERE indexrelid = to_regclass('send_ledger_before_0022_key') AND NOT indisvalid) THEN
      DROP INDEX send_ledger_before_0022_key;
    END IF;
    CREATE UNIQUE INDEX IF NOT EXISTS send_ledger_before_0022_key ON send_ledger_before_0022 (tenant_id, job_id, part);
    ALTER TABLE send_ledger_before_0022 DROP CONSTRAINT send_ledger_before_0022_pkey;
    ALTER TABLE send_ledger_before_0022 ADD CONSTRAINT send_ledger_before_0022_pkey
      PRIMARY KEY USING INDEX send_ledger_before_0022_key;
    ALTER TABLE send_ledger ATTACH PARTITION send_ledger_before_0022 FOR VALUES FROM (MINVALUE) TO (1);
    -- Its own policies are the old ones, already forced; made the same as
    -- every partition's.
    PERFORM mailpipe_protect_partition('send_ledger_before_0022');
  END IF;
END $$;

-- Row-level security and grants of the table it replaces (0004, 0012).
ALTER TABLE send_ledger ENABLE ROW LEVEL SECURITY;
ALTER TABLE send_ledger FORCE ROW LEVEL SECURITY;
CREATE POLICY platform ON send_ledger USING (mailpipe_platform()) WITH CHECK (mailpipe_platform());
CREATE POLICY tenant ON send_ledger USING (tenant_id = mailpipe_tenant()) WITH CHECK (tenant_id = mailpipe_tenant());
GRANT SELECT, INSERT, UPDATE, DELETE ON send_ledger TO mailpipe_service;
GRANT SELECT ON send_ledger TO mailpipe_api;
SELECT mailpipe_protect_partition('send_ledger_default');

-- As in 0021, and the ledger's months too: made three ahead, and the
-- current month moved on to the month of `now_ms` once its partition is
-- there (never back: a purge as of a past time leaves it).
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
        EXECUTE format('CREATE TABLE public.%I (LIKE public.%I INCLUDING DEFAULTS INCLUDING CONSTRAINTS)', part, parent);
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

-- Past retention in the ledger (`cutoff_ms` from `retention.ledger_days`):
-- a row is past it when finished (not pending, sending or deferred, and
-- off the retry schedule) and last updated before the cutoff, as before
-- 0022. Deletes such rows from the DEFAULT partition and the table from
-- before 0022 (dropped once empty), and drops each month before the
-- current one and the cutoff's whose rows are all past it but for at most
-- a thousand, which move to the DEFAULT partition first. A month's rows are looked over
-- without a lock (they take no new rows, and a row past retention is
-- finished, so it stays so); the parent is locked for the moves and drops
-- only, at most 5 s waited for, as in mailpipe_expire_partitions.
CREATE FUNCTION mailpipe_expire_ledger(cutoff_ms bigint,
                                       OUT partitions_dropped integer, OUT rows_deleted bigint)
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, public, pg_temp SET lock_timeout = '5s' AS $$
DECLARE
  past constant text := 'updated_at < $1 AND payload IS NULL AND status NOT IN (''pending'', ''sending'', ''deferred'')';
  cur integer := (SELECT s.part FROM send_ledger_current s);
  -- Months wholly before the cutoff's: a later one's rows are mostly
  -- within retention, and stay where they are.
  cut_month integer := CASE WHEN cutoff_ms > 0 THEN (SELECT suffix::integer FROM mailpipe_month_bounds(cutoff_ms, 0)) ELSE 0 END;
  p record;
  lo bigint;
  n bigint;
  tenants text[];
  jobs text[];
  doomed jsonb := '[]';
  d jsonb;
  kept jsonb;
  caller_scope text := coalesce(current_setting('mailpipe.scope', true), '');
BEGIN
  PERFORM set_config('mailpipe.scope', 'platform', true);
  partitions_dropped := 0;
  rows_deleted := 0;
  FOR p IN SELECT c.relname, pg_get_expr(c.relpartbound, c.oid) AS bound
           FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
           WHERE i.inhparent = 'send_ledger'::regclass ORDER BY c.relname LOOP
    IF p.bound = 'DEFAULT' OR p.bound LIKE '%FROM (MINVALUE)%' THEN
      EXECUTE format('DELETE FROM %I WHERE ' || past, p.relname) USING cutoff_ms;
      GET DIAGNOSTICS n = ROW_COUNT;
      rows_deleted := rows_deleted + n;
      IF p.bound <> 'DEFAULT' THEN
        EXECUTE format('SELECT count(*) FROM (SELECT 1 FROM %I LIMIT 1) s', p.relname) INTO n;
        IF n = 0 THEN
          doomed := doomed || jsonb_build_object('rel', p.relname, 't', '{}'::text[], 'j', '{}'::text[]);
        END IF;
      END IF;
      CONTINUE;
    END IF;
    lo := (regexp_match(p.bound, 'FROM \(''?(-?[0-9]+)'))[1]::bigint;
    CONTINUE WHEN lo >= least(cur, cut_month);
    EXECUTE format('SELECT array_agg(tenant_id), array_agg(job_id)
                    FROM (SELECT tenant_id, job_id FROM %I WHERE NOT (' || past || ') LIMIT 1001) s', p.relname)
      INTO tenants, jobs USING cutoff_ms;
    CONTINUE WHEN coalesce(cardinality(tenants), 0) > 1000;
    doomed := doomed || jsonb_build_object('rel', p.relname, 't', coalesce(tenants, '{}'), 'j', coalesce(jobs, '{}'));
  END LOOP;
  IF jsonb_array_length(doomed) > 0 THEN
    -- Held to the end of the call: no statement reaches a row on the move.
    LOCK TABLE send_ledger IN ACCESS EXCLUSIVE MODE;
    FOR d IN SELECT * FROM jsonb_array_elements(doomed) LOOP
      -- Read out, the month dropped, then written to the default partition,
      -- which takes no row of a month that has its own partition.
      EXECUTE format('SELECT coalesce(jsonb_agg(to_jsonb(l)), ''[]'') FROM %I l
                      JOIN UNNEST($1::text[], $2::text[]) AS k (tenant_id, job_id)
                        ON l.tenant_id = k.tenant_id AND l.job_id = k.job_id', d->>'rel')
        INTO kept USING ARRAY(SELECT jsonb_array_elements_text(d->'t')), ARRAY(SELECT jsonb_array_elements_text(d->'j'));
      EXECUTE format('DROP TABLE %I', d->>'rel');
      INSERT INTO send_ledger_default SELECT * FROM jsonb_populate_recordset(NULL::send_ledger_default, kept);
      partitions_dropped := partitions_dropped + 1;
    END LOOP;
  END IF;
  PERFORM set_config('mailpipe.scope', caller_scope, true);
END $$;

REVOKE ALL ON FUNCTION mailpipe_expire_ledger(bigint) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION mailpipe_expire_ledger(bigint) TO mailpipe_service;

SELECT mailpipe_prepare_partitions((extract(epoch FROM now()) * 1000)::bigint);
