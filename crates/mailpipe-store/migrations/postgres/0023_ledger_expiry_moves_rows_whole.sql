-- mailpipe_expire_ledger as in 0022, with two changes (a review of 0022):
-- * A month that keeps more than a thousand unfinished rows (a tenant may
--   schedule jobs far ahead) is not dropped, and its rows past retention
--   are now deleted one by one, as before 0022, instead of kept with it.
-- * A month's last rows move to the DEFAULT partition by DETACH, copy by
--   key, DROP; no longer through one jsonb value, which payloads of up to
--   1 MiB each could take past jsonb's size limit and fail every purge.

CREATE OR REPLACE FUNCTION mailpipe_expire_ledger(cutoff_ms bigint,
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
    IF coalesce(cardinality(tenants), 0) > 1000 THEN
      -- Too many to move: the month stays, and its rows past retention go
      -- one by one, as before 0022, so that no unfinished job (a tenant's
      -- far-off send_at) keeps the others' past their retention.
      EXECUTE format('DELETE FROM %I WHERE ' || past, p.relname) USING cutoff_ms;
      GET DIAGNOSTICS n = ROW_COUNT;
      rows_deleted := rows_deleted + n;
      CONTINUE;
    END IF;
    doomed := doomed || jsonb_build_object('rel', p.relname, 't', coalesce(tenants, '{}'), 'j', coalesce(jobs, '{}'));
  END LOOP;
  IF jsonb_array_length(doomed) > 0 THEN
    -- Held to the end of the call: no statement reaches a row on the move.
    LOCK TABLE send_ledger IN ACCESS EXCLUSIVE MODE;
    FOR d IN SELECT * FROM jsonb_array_elements(doomed) LOOP
      -- Detached first (the default partition takes no row of a month that
      -- has its own partition), its few rows copied over by key, then
      -- dropped: row to row, whatever their payloads weigh.
      EXECUTE format('ALTER TABLE send_ledger DETACH PARTITION %I', d->>'rel');
      EXECUTE format('INSERT INTO send_ledger_default SELECT l.* FROM %I l
                      JOIN UNNEST($1::text[], $2::text[]) AS k (tenant_id, job_id)
                        ON l.tenant_id = k.tenant_id AND l.job_id = k.job_id', d->>'rel')
        USING ARRAY(SELECT jsonb_array_elements_text(d->'t')), ARRAY(SELECT jsonb_array_elements_text(d->'j'));
      EXECUTE format('DROP TABLE %I', d->>'rel');
      partitions_dropped := partitions_dropped + 1;
    END LOOP;
  END IF;
  PERFORM set_config('mailpipe.scope', caller_scope, true);
END $$;

