-- Kept in step with PostgreSQL's 0005, where the campaign index must not
-- compete with the primary key (tenant_id, job_id) for per-job updates.
-- SQLite cannot use a btree's second column without its first, so leading
-- with campaign_id is enough here.
DROP INDEX send_ledger_campaign;
CREATE INDEX send_ledger_campaign ON send_ledger (campaign_id, tenant_id);
