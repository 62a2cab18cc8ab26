-- What one more insert costs a hash index and a btree holding n rows of one
-- key (docs/benchmarks.md, session 35; migration 0032):
--   PGOPTIONS="-c temp_buffers=512MB" psql "$MAILPIPE_TEST_DATABASE_URL" -v n=200000 -f scripts/bench/hash_index_cost.sql
CREATE TEMP TABLE th (c text); CREATE INDEX ON th USING hash (c);
CREATE TEMP TABLE tb (c text); CREATE INDEX ON tb (c);
\timing on
INSERT INTO th SELECT 'campaign-2026-12-news' FROM generate_series(1,:n);
INSERT INTO tb SELECT 'campaign-2026-12-news' FROM generate_series(1,:n);
\timing off
EXPLAIN (ANALYZE, BUFFERS, COSTS OFF, TIMING OFF) INSERT INTO th VALUES ('campaign-2026-12-news');
EXPLAIN (ANALYZE, BUFFERS, COSTS OFF, TIMING OFF) INSERT INTO tb VALUES ('campaign-2026-12-news');
\timing on
INSERT INTO th SELECT 'campaign-2026-12-news' FROM generate_series(1,1000);
INSERT INTO tb SELECT 'campaign-2026-12-news' FROM generate_series(1,1000);
