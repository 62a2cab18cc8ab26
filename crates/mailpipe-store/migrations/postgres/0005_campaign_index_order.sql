-- The campaign index was a btree on (tenant_id, campaign_id), beside the
-- primary key (tenant_id, job_id). Before the table's first ANALYZE the
-- planner cannot tell the two apart for the worker's
-- "WHERE tenant_id = $1 AND job_id = $2" updates, and it picked the
-- campaign index, reading every row of the tenant for each job: a fresh
-- deployment ran at a fraction of its speed until autovacuum's first
-- analyze. A btree led by campaign_id does not help (PostgreSQL still
-- scans it with tenant_id as a condition). A hash index on campaign_id
-- serves only "campaign_id = $x", so the per-job updates can only use the
-- primary key; the (tenant, campaign) reads filter its few rows by tenant.
DROP INDEX send_ledger_campaign;
CREATE INDEX send_ledger_campaign ON send_ledger USING hash (campaign_id);
