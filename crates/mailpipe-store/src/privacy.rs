//! What the privacy promises need from the store: erasure on request,
//! deletion past retention, and which jobs' recipients were erased.

use mailpipe_core::{EmailAddress, RecipientRef, Scope, Suppression, now_ms};

use crate::{Pool, Result, Store, suppressions};

/// What `erase` removed.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct ErasureReport {
    pub ledger_rows_anonymised: u64,
    pub events_deleted: u64,
    pub dead_letters_deleted: u64,
    pub suppression_kept: bool,
}

/// What a retention purge removed.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct PurgeReport {
    pub events_deleted: u64,
    pub ledger_rows_deleted: u64,
    pub client_details_removed: u64,
    pub dead_letters_deleted: u64,
}

/// Retention per data class, in days (0 keeps forever): the `[retention]`
/// section of the configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
pub struct Retention {
    pub events_days: u32,
    pub ledger_days: u32,
    /// IP (truncated or hashed) and user-agent family on open and click events.
    pub client_details_days: u32,
    pub dead_letters_days: u32,
    /// How often `mailpipe analytics` purges (0: only `mailpipe purge`).
    /// [`Store::purge`] itself does not read it.
    pub purge_interval_hours: u64,
}

impl Store {
    /// Erases a recipient: the ledger keeps its rows (so a redelivered job is
    /// still recognised and not resent) with the address replaced by its
    /// keyed hash and the job payload dropped; the jobs' events and any dead
    /// letter holding the address are deleted; a suppression on the keyed
    /// hash stops all future mail. Within a tenant's `scope`, only that
    /// tenant's data.
    pub async fn erase(
        &self,
        address: &EmailAddress,
        recipient: RecipientRef,
        scope: &Scope,
    ) -> Result<ErasureReport> {
        let kept = Suppression::erasure(scope.clone(), recipient);
        let recipient_hash = recipient.to_hex();
        let address = address.as_str();
        let everywhere = scope.is_platform();
        let scope = scope.key();
        let anon = format!("erased:{recipient_hash}");
        let mut r = ErasureReport::default();
        let jobs_sql =
            "SELECT tenant_id, job_id FROM send_ledger WHERE recipient = $1 AND ($3 OR tenant_id = $2)";
        let del_events = "DELETE FROM events WHERE tenant_id = $1 AND job_id = $2";
        let anon_sql =
            "UPDATE send_ledger SET recipient = $3, payload = NULL WHERE tenant_id = $1 AND job_id = $2";
        let log = "INSERT INTO erasures (recipient_hash, scope_tenant, erased_at) VALUES ($1, $2, $3)
                   ON CONFLICT (recipient_hash, scope_tenant) DO UPDATE SET erased_at = excluded.erased_at";
        // The only dialect differences: finding bytes in a blob, and how to
        // reclaim the deleted rows' space (PostgreSQL: the dead row versions
        // of the touched tables; SQLite: the whole file, so no free page
        // keeps the address).
        let (del_dead_letters, vacuums): (&str, &[&str]) = match self.pool {
            Pool::Postgres(_) => (
                "DELETE FROM dead_letters WHERE position($1::bytea in payload) > 0 AND ($3 OR tenant_id = $2)",
                &["VACUUM send_ledger", "VACUUM events", "VACUUM dead_letters"],
            ),
            // In WAL mode VACUUM's rewrite lands in the WAL first: checkpoint
            // and truncate it so that neither file keeps the old pages.
            Pool::Sqlite(_) => (
                "DELETE FROM dead_letters WHERE instr(payload, $1) > 0 AND ($3 OR tenant_id = $2)",
                &["VACUUM", "PRAGMA wal_checkpoint(TRUNCATE)"],
            ),
        };
        let needle = address.as_bytes().to_vec();
        on_pool!(self, p => {
            let mut tx = p.begin().await?;
            let jobs: Vec<(String, String)> =
                sqlx::query_as(jobs_sql).bind(address).bind(scope).bind(everywhere).fetch_all(&mut *tx).await?;
            for (tid, jid) in &jobs {
                r.events_deleted +=
                    sqlx::query(del_events).bind(tid).bind(jid).execute(&mut *tx).await?.rows_affected();
                r.ledger_rows_anonymised +=
                    sqlx::query(anon_sql).bind(tid).bind(jid).bind(&anon).execute(&mut *tx).await?.rows_affected();
            }
            r.dead_letters_deleted =
                sqlx::query(del_dead_letters).bind(&needle).bind(scope).bind(everywhere).execute(&mut *tx).await?.rows_affected();
            suppressions::insert_q(&kept, &recipient_hash, now_ms()).execute(&mut *tx).await?;
            sqlx::query(log).bind(&recipient_hash).bind(scope).bind(now_ms()).execute(&mut *tx).await?;
            tx.commit().await?;
            for v in vacuums {
                sqlx::query(v).execute(p).await?;
            }
        });
        r.suppression_kept = true;
        Ok(r)
    }

    /// Deletes what is older than its retention, as of `now_ms`.
    pub async fn purge(&self, now: i64, r: Retention) -> Result<PurgeReport> {
        let cutoff = |days: u32| if days == 0 { i64::MIN } else { now - i64::from(days) * 86_400_000 };
        let mut out = PurgeReport::default();
        let strip_pg = "UPDATE events SET payload = (payload::jsonb - 'client')::text WHERE occurred_at < $1 AND payload LIKE '%\"client\"%'";
        let strip_lite = "UPDATE events SET payload = json_remove(payload, '$.client') WHERE occurred_at < $1 AND payload LIKE '%\"client\"%'";
        let strip = match self.pool {
            Pool::Postgres(_) => strip_pg,
            Pool::Sqlite(_) => strip_lite,
        };
        on_pool!(self, p => {
            out.client_details_removed = sqlx::query(strip).bind(cutoff(r.client_details_days)).execute(p).await?.rows_affected();
            out.events_deleted = sqlx::query("DELETE FROM events WHERE occurred_at < $1").bind(cutoff(r.events_days)).execute(p).await?.rows_affected();
            sqlx::query("DELETE FROM analytics_seen WHERE seen_at < $1").bind(cutoff(r.events_days)).execute(p).await?;
            // Only finished jobs: a job still on the retry schedule keeps its row.
            out.ledger_rows_deleted = sqlx::query("DELETE FROM send_ledger WHERE updated_at < $1 AND payload IS NULL AND status NOT IN ('pending', 'sending', 'deferred')")
                .bind(cutoff(r.ledger_days)).execute(p).await?.rows_affected();
            out.dead_letters_deleted = sqlx::query("DELETE FROM dead_letters WHERE received_at < $1").bind(cutoff(r.dead_letters_days)).execute(p).await?.rows_affected();
        });
        Ok(out)
    }

    /// Of the given (tenant, job) pairs, those whose recipient was erased.
    /// The tracker strips client details from their events, so an erased
    /// person's old links produce no new identifying data.
    pub async fn erased_jobs(
        &self,
        jobs: &[(String, String)],
    ) -> Result<std::collections::HashSet<(String, String)>> {
        if jobs.is_empty() {
            return Ok(Default::default());
        }
        let tenants: Vec<&str> = jobs.iter().map(|(t, _)| t.as_str()).collect();
        let ids: Vec<&str> = jobs.iter().map(|(_, j)| j.as_str()).collect();
        // A superset (any tenant × any job of the batch), narrowed below.
        let rows: Vec<(String, String)> = match &self.pool {
            Pool::Postgres(p) => {
                sqlx::query_as("SELECT tenant_id, job_id FROM send_ledger WHERE recipient LIKE 'erased:%' AND tenant_id = ANY($1) AND job_id = ANY($2)")
                    .bind(tenants)
                    .bind(ids)
                    .fetch_all(p)
                    .await?
            }
            Pool::Sqlite(p) => {
                let (t, j) = (serde_json::to_string(&tenants).unwrap_or_default(), serde_json::to_string(&ids).unwrap_or_default());
                sqlx::query_as("SELECT tenant_id, job_id FROM send_ledger WHERE recipient LIKE 'erased:%' AND tenant_id IN (SELECT value FROM json_each($1)) AND job_id IN (SELECT value FROM json_each($2))")
                    .bind(t)
                    .bind(j)
                    .fetch_all(p)
                    .await?
            }
        };
        let wanted: std::collections::HashSet<&(String, String)> = jobs.iter().collect();
        Ok(rows.into_iter().filter(|r| wanted.contains(r)).collect())
    }
}
