-- Events and dead letters partitioned by month (issue 16, item 8): the
-- tables that grow with every message lose their old rows by dropping a
-- month's partition, not by a DELETE over millions of rows (and the
-- vacuuming and WAL such a DELETE costs). docs/operations.md, "Partitions".
--
-- * A partition per UTC month of `occurred_at` (events) and `received_at`
--   (dead letters), made ahead of time by mailpipe_prepare_partitions (the
--   current month and the next two), which `mailpipe migrate` and every
--   retention purge call. A DEFAULT partition takes any row no month
--   partition covers yet, so an insert never fails for want of one; when
--   its month's partition is made, the rows move there.
-- * Retention drops a month when all of it is past the retention
--   (mailpipe_expire_partitions): a row lives at least its retention and at
--   most a month more. Rows in the DEFAULT partition, and in the table from
--   before this migration, are deleted row by row, as before.
-- * A primary key on a partitioned table must hold the partition column, so
--   it is (event_id, occurred_at): it refuses a batch shipped twice. An
--   event whose id is one per job (an unsubscribe, a complaint, a dead
--   letter) may be emitted again with a later time; the store checks that
--   id across partitions, under an advisory lock, before inserting it
--   (crates/mailpipe-store/src/events.rs). Dead letters likewise, by source.
-- * Partitions are reached only through their parent, whose grants and
--   row-level security apply; the services' roles hold nothing on a
--   partition itself, which has the parent's policies too, FORCEd.
-- * The table from before this migration, if it holds rows, becomes the
--   partition of everything before next month: no row is copied.

CREATE FUNCTION mailpipe_month_bounds(at_ms bigint, months_ahead integer,
                                      OUT lo bigint, OUT hi bigint, OUT suffix text)
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT (extract(epoch FROM m) * 1000)::bigint,
           (extract(epoch FROM m + interval '1 month') * 1000)::bigint,
           to_char(m, 'YYYYMM')
    FROM (SELECT date_trunc('month', to_timestamp(at_ms / 1000.0) AT TIME ZONE 'UTC')
                 + make_interval(months => months_ahead) AS m) s
$$;

-- The partitioned tables and their time columns: the only tables the
-- functions below act on.
CREATE FUNCTION mailpipe_partitioned(parent text) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE parent WHEN 'events' THEN 'occurred_at' WHEN 'dead_letters' THEN 'received_at' END
$$;

-- A partition is reached through its parent, whose grants and policies
-- apply; its own are the same policies (so that the owner, held to them on
-- the parent by FORCE, is held to them here too) and no grant at all.
CREATE FUNCTION mailpipe_protect_partition(part text) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, public, pg_temp AS $$
BEGIN
  EXECUTE format('ALTER TABLE %I ENABLE ROW LEVEL SECURITY', part);
  EXECUTE format('ALTER TABLE %I FORCE ROW LEVEL SECURITY', part);
  EXECUTE format('DROP POLICY IF EXISTS platform ON %I', part);
  EXECUTE format('DROP POLICY IF EXISTS tenant ON %I', part);
  EXECUTE format('CREATE POLICY platform ON %I USING (mailpipe_platform()) WITH CHECK (mailpipe_platform())', part);
  EXECUTE format('CREATE POLICY tenant ON %I USING (tenant_id = mailpipe_tenant()) WITH CHECK (tenant_id = mailpipe_tenant())', part);
  EXECUTE format('REVOKE ALL ON %I FROM PUBLIC, mailpipe_service, mailpipe_api', part);
END $$;
REVOKE ALL ON FUNCTION mailpipe_protect_partition(text) FROM PUBLIC;

ALTER TABLE events RENAME TO events_before_0021;
ALTER INDEX events_pkey RENAME TO events_before_0021_pkey;
ALTER INDEX events_job RENAME TO events_before_0021_job;
ALTER INDEX events_occurred RENAME TO events_before_0021_occurred;
ALTER INDEX events_outcomes_time RENAME TO events_before_0021_outcomes_time;
ALTER TABLE dead_letters RENAME TO dead_letters_before_0021;
ALTER INDEX dead_letters_pkey RENAME TO dead_letters_before_0021_pkey;
ALTER TABLE dead_letters_before_0021 RENAME CONSTRAINT dead_letters_source_key TO dead_letters_before_0021_source_key;
-- The id sequence outlives the old table, which may be dropped below.
ALTER SEQUENCE dead_letters_id_seq OWNED BY NONE;

CREATE TABLE events (
    event_id       TEXT NOT NULL,
    tenant_id      TEXT,
    campaign_id    TEXT,
    job_id         TEXT,
    type           TEXT NOT NULL,
    occurred_at    BIGINT NOT NULL,
    payload        TEXT NOT NULL,
    sender_domain  TEXT,
    reason         TEXT,
    provider       TEXT,
    PRIMARY KEY (event_id, occurred_at)
) PARTITION BY RANGE (occurred_at);
CREATE INDEX events_job ON events (tenant_id, job_id);
CREATE INDEX events_occurred ON events (occurred_at);
CREATE INDEX events_outcomes_time ON events (occurred_at) WHERE type IN ('sent', 'bounced', 'complaint');
CREATE TABLE events_default PARTITION OF events DEFAULT;

CREATE TABLE dead_letters (
    id             BIGINT NOT NULL DEFAULT nextval('dead_letters_id_seq'),
    received_at    BIGINT NOT NULL,
    source         TEXT NOT NULL,
    reason         TEXT NOT NULL,
    detail         TEXT NOT NULL,
    tenant_id      TEXT,
    job_id         TEXT,
    payload        BYTEA NOT NULL,
    PRIMARY KEY (id, received_at)
) PARTITION BY RANGE (received_at);
-- Kept once per source record: checked by the store before each insert.
CREATE INDEX dead_letters_source ON dead_letters (source);
CREATE TABLE dead_letters_default PARTITION OF dead_letters DEFAULT;

DO $$
DECLARE
  t record;
  n bigint;
  next_month bigint := (SELECT hi FROM mailpipe_month_bounds((extract(epoch FROM now()) * 1000)::bigint, 0));
  cut bigint;
BEGIN
  -- The old tables' rows are every tenant's; their FORCEd policies would
  -- hide them from the owner, and an empty-looking table be dropped.
  PERFORM set_config('mailpipe.scope', 'platform', true);
  FOR t IN SELECT parent, parent || '_before_0021' AS old, mailpipe_partitioned(parent) AS col, id
           FROM (VALUES ('events', 'event_id'), ('dead_letters', 'id')) AS v (parent, id) LOOP
    EXECUTE format('SELECT count(*) FROM (SELECT 1 FROM %I LIMIT 1) s', t.old) INTO n;
    IF n = 0 THEN
      EXECUTE format('DROP TABLE %I', t.old);
    ELSE
      -- An owner who proved a bound beforehand (a validated CHECK named
      -- <table>_before_0021_bound, docs/operations.md) spares the attach
      -- its scan; the table then covers everything before that bound.
      SELECT (regexp_match(pg_get_constraintdef(c.oid), '<\s*''?(-?[0-9]+)'))[1]::bigint INTO cut
      FROM pg_constraint c
      WHERE c.conrelid = t.old::regclass AND c.conname = t.old || '_bound' AND c.contype = 'c' AND c.convalidated;
      cut := coalesce(cut, next_month);
      -- A unique index left invalid by an interrupted CONCURRENTLY build.
      IF EXISTS (SELECT 1 FROM pg_index WHERE indexrelid = to_regclass(t.old || '_key') AND NOT indisvalid) THEN
        EXECUTE format('DROP INDEX %I', t.old || '_key');
      END IF;
      -- Rows dated next month or later (a clock ahead) go to the default
      -- partition, to move on into their month's when it is made.
      EXECUTE format('WITH moved AS (DELETE FROM %I WHERE %I >= %s RETURNING *) INSERT INTO %I SELECT * FROM moved',
                     t.old, t.col, cut, t.parent || '_default');
      -- The parent's primary key, (id, time), replaces the table's own.
      EXECUTE format('CREATE UNIQUE INDEX IF NOT EXISTS %I ON %I (%I, %I)', t.old || '_key', t.old, t.id, t.col);
      EXECUTE format('ALTER TABLE %I DROP CONSTRAINT %I', t.old, t.old || '_pkey');
      EXECUTE format('ALTER TABLE %I ADD CONSTRAINT %I PRIMARY KEY USING INDEX %I', t.old, t.old || '_pkey', t.old || '_key');
      EXECUTE format('ALTER TABLE %I ATTACH PARTITION %I FOR VALUES FROM (MINVALUE) TO (%s)', t.parent, t.old, cut);
      PERFORM mailpipe_protect_partition(t.old);
    END IF;
  END LOOP;
END $$;

ALTER SEQUENCE dead_letters_id_seq OWNED BY dead_letters.id;

-- Row-level security and grants of the tables they replace (0012).
DO $$
DECLARE
  parent text;
BEGIN
  FOREACH parent IN ARRAY ARRAY['events', 'dead_letters'] LOOP
    EXECUTE format('ALTER TABLE %I ENABLE ROW LEVEL SECURITY', parent);
    EXECUTE format('ALTER TABLE %I FORCE ROW LEVEL SECURITY', parent);
    EXECUTE format('CREATE POLICY platform ON %I USING (mailpipe_platform()) WITH CHECK (mailpipe_platform())', parent);
    EXECUTE format('CREATE POLICY tenant ON %I USING (tenant_id = mailpipe_tenant()) WITH CHECK (tenant_id = mailpipe_tenant())', parent);
    EXECUTE format('GRANT SELECT, INSERT, UPDATE, DELETE ON %I TO mailpipe_service', parent);
    PERFORM mailpipe_protect_partition(parent || '_default');
  END LOOP;
END $$;
GRANT SELECT ON events TO mailpipe_api;

-- Makes the partitions of the month of `now_ms` and the two after it, for
-- both tables, moving in any rows the default partition holds for them.
-- Returns how many it made. Owned by the schema's owner and run with its
-- rights (the services' role has no DDL); callable by the services.
CREATE FUNCTION mailpipe_prepare_partitions(now_ms bigint) RETURNS integer
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, public, pg_temp SET lock_timeout = '10s' AS $$
DECLARE
  parent text;
  col text;
  b record;
  part text;
  made integer := 0;
  caller_scope text := coalesce(current_setting('mailpipe.scope', true), '');
BEGIN
  -- One caller at a time: two services starting together make each table once.
  PERFORM pg_advisory_xact_lock(hashtextextended('mailpipe_partitions', 0));
  -- The rows it moves are every tenant's: the platform's scope, for the
  -- call only (a function's SET clause may not name a custom setting).
  PERFORM set_config('mailpipe.scope', 'platform', true);
  FOREACH parent IN ARRAY ARRAY['events', 'dead_letters'] LOOP
    col := mailpipe_partitioned(parent);
    FOR i IN 0..2 LOOP
      SELECT * INTO b FROM mailpipe_month_bounds(now_ms, i);
      part := parent || '_' || b.suffix;
      CONTINUE WHEN to_regclass(part) IS NOT NULL;
      BEGIN
        -- The lock the attach would take anyway, taken before the move: no
        -- row for the month can reach the default partition in between.
        EXECUTE format('LOCK TABLE %I IN ACCESS EXCLUSIVE MODE', parent || '_default');
        EXECUTE format('CREATE TABLE public.%I (LIKE public.%I INCLUDING DEFAULTS)', part, parent);
        EXECUTE format('WITH moved AS (DELETE FROM %I WHERE %I >= %s AND %I < %s RETURNING *) INSERT INTO %I SELECT * FROM moved',
                       parent || '_default', col, b.lo, col, b.hi, part);
        EXECUTE format('ALTER TABLE %I ATTACH PARTITION %I FOR VALUES FROM (%s) TO (%s)', parent, part, b.lo, b.hi);
        PERFORM mailpipe_protect_partition(part);
        made := made + 1;
      EXCEPTION WHEN invalid_object_definition THEN
        -- The month is inside the partition of the table from before 0021.
        NULL;
      END;
    END LOOP;
  END LOOP;
  PERFORM set_config('mailpipe.scope', caller_scope, true);
  RETURN made;
END $$;

-- Past retention in `parent` (events or dead_letters): drops each month
-- partition whose every row is older than `cutoff_ms`, and deletes the
-- older rows of the default partition and of the table from before 0021
-- (dropped too once all of it is older). Returns the partitions dropped and
-- the rows deleted (not counting the dropped partitions' rows). Dropping a
-- partition locks its parent for a moment; waiting long for that lock
-- would hold every insert up behind the wait: it gives up after 5 s
-- instead, and the next purge tries again.
CREATE FUNCTION mailpipe_expire_partitions(parent text, cutoff_ms bigint,
                                           OUT partitions_dropped integer, OUT rows_deleted bigint)
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, public, pg_temp SET lock_timeout = '5s' AS $$
DECLARE
  col text := mailpipe_partitioned(parent);
  p record;
  upper_bound bigint;
  n bigint;
  caller_scope text := coalesce(current_setting('mailpipe.scope', true), '');
BEGIN
  IF col IS NULL THEN
    RAISE EXCEPTION 'not a partitioned table of mailpipe: %', parent;
  END IF;
  PERFORM set_config('mailpipe.scope', 'platform', true);
  partitions_dropped := 0;
  rows_deleted := 0;
  -- Row by row first, where rows go so, and the drops last: each drop
  -- holds the parent's lock until the end of the call.
  FOR p IN SELECT c.relname, pg_get_expr(c.relpartbound, c.oid) AS bound
           FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
           WHERE i.inhparent = parent::regclass ORDER BY c.relname LOOP
    upper_bound := (regexp_match(p.bound, 'TO \(''(-?[0-9]+)''\)'))[1]::bigint;
    IF (p.bound = 'DEFAULT' OR p.bound LIKE '%FROM (MINVALUE)%') AND NOT coalesce(upper_bound <= cutoff_ms, false) THEN
      EXECUTE format('DELETE FROM %I WHERE %I < $1', p.relname, col) USING cutoff_ms;
      GET DIAGNOSTICS n = ROW_COUNT;
      rows_deleted := rows_deleted + n;
    END IF;
  END LOOP;
  FOR p IN SELECT c.relname, pg_get_expr(c.relpartbound, c.oid) AS bound
           FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
           WHERE i.inhparent = parent::regclass ORDER BY c.relname LOOP
    upper_bound := (regexp_match(p.bound, 'TO \(''(-?[0-9]+)''\)'))[1]::bigint;
    IF upper_bound <= cutoff_ms THEN
      EXECUTE format('DROP TABLE %I', p.relname);
      partitions_dropped := partitions_dropped + 1;
    END IF;
  END LOOP;
  PERFORM set_config('mailpipe.scope', caller_scope, true);
END $$;

REVOKE ALL ON FUNCTION mailpipe_prepare_partitions(bigint) FROM PUBLIC;
REVOKE ALL ON FUNCTION mailpipe_expire_partitions(text, bigint) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION mailpipe_prepare_partitions(bigint) TO mailpipe_service;
GRANT EXECUTE ON FUNCTION mailpipe_expire_partitions(text, bigint) TO mailpipe_service;

SELECT mailpipe_prepare_partitions((extract(epoch FROM now()) * 1000)::bigint);
