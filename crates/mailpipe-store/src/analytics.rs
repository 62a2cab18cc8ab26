//! Analytics aggregates, tenant API keys, erasure and retention.
//!
//! Aggregates are counters per campaign (`bucket_hour = 0` for totals, else
//! the hour), kept by idempotent upserts: an event is counted only if its
//! `event_id` is new to `analytics_seen`, in the same transaction, so a
//! redelivered event counts once.

use std::collections::BTreeMap;

use mailpipe_core::{Event, EventType, TenantId, VerdictClass, now_ms};
use sha2::{Digest, Sha256};

use crate::{Pool, Result, Store};

const HOUR_MS: i64 = 3_600_000;

/// One campaign's figures, as the API and the dashboard show them.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct CampaignStats {
    pub campaign_id: String,
    /// Metric → value: sent, deferred, bounced, suppressed, dead_lettered,
    /// failed, opens, opens_human, opens_machine, unique_opens, clicks,
    /// clicks_human, clicks_machine, unique_clicks, unsubscribes,
    /// complaints, and `provider:<group>:<outcome>`.
    pub totals: BTreeMap<String, i64>,
    /// Hour start (unix ms) → metric → value.
    pub hourly: BTreeMap<i64, BTreeMap<String, i64>>,
    /// (url, clicks, human clicks), most clicked first.
    pub links: Vec<(String, i64, i64)>,
    /// Where the campaign's jobs stand, read from the send ledger.
    pub progress: Progress,
}

/// A campaign's jobs as the send ledger sees them. `complete` is true only
/// when every job the workers have taken in has its final outcome: a job
/// that is deferred, parked, scheduled or in flight keeps it false. Jobs
/// still waiting on the queue are not in the ledger yet; consumer lag
/// (`mailpipe_consumer_lag`) tells whether any are.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Progress {
    /// Jobs in the ledger.
    pub accepted: i64,
    /// Jobs without a final outcome: pending, sending or deferred.
    pub outstanding: i64,
    pub complete: bool,
}

impl Progress {
    fn from_statuses(rows: &[(String, i64)]) -> Self {
        let accepted = rows.iter().map(|r| r.1).sum();
        let outstanding = rows
            .iter()
            .filter(|(status, _)| matches!(status.as_str(), "pending" | "sending" | "deferred"))
            .map(|r| r.1)
            .sum();
        Self { accepted, outstanding, complete: accepted > 0 && outstanding == 0 }
    }
}

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

/// Retention per data class, in days (0 keeps forever).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    pub events_days: u32,
    pub ledger_days: u32,
    pub client_details_days: u32,
    pub dead_letters_days: u32,
}

fn increments(e: &Event) -> Vec<String> {
    let mut m = Vec::new();
    let provider = e.provider.as_deref().unwrap_or("other");
    let human = e.verdict.as_ref().map(|v| v.class);
    match e.kind {
        EventType::Sent | EventType::Bounced | EventType::Deferred => {
            m.push(e.kind.as_str().to_owned());
            m.push(format!("provider:{provider}:{}", e.kind.as_str()));
        }
        EventType::Suppressed | EventType::DeadLettered | EventType::Failed => {
            m.push(e.kind.as_str().to_owned())
        }
        EventType::Open | EventType::Click => {
            let base = if e.kind == EventType::Open { "opens" } else { "clicks" };
            m.push(base.to_owned());
            match human {
                Some(VerdictClass::Human) => m.push(format!("{base}_human")),
                Some(VerdictClass::Machine) => m.push(format!("{base}_machine")),
                Some(VerdictClass::Unknown) | None => m.push(format!("{base}_unknown")),
            }
        }
        EventType::Unsubscribe => m.push("unsubscribes".into()),
        EventType::Complaint => m.push("complaints".into()),
    }
    m
}

impl Store {
    /// Counts events into the aggregates, each at most once. Returns how
    /// many were new.
    pub async fn apply_events(&self, events: &[Event]) -> Result<usize> {
        let seen = "INSERT INTO analytics_seen (event_id, seen_at) VALUES ($1, $2) ON CONFLICT (event_id) DO NOTHING";
        let bump = "INSERT INTO campaign_counters (tenant_id, campaign_id, bucket_hour, metric, value) VALUES ($1, $2, $3, $4, 1)
                    ON CONFLICT (tenant_id, campaign_id, bucket_hour, metric) DO UPDATE SET value = campaign_counters.value + 1";
        let unique = "INSERT INTO analytics_unique (tenant_id, campaign_id, kind, job_id) VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING";
        let link = "INSERT INTO campaign_links (tenant_id, campaign_id, url, clicks, human_clicks) VALUES ($1, $2, $3, 1, $4)
                    ON CONFLICT (tenant_id, campaign_id, url) DO UPDATE SET clicks = campaign_links.clicks + 1, human_clicks = campaign_links.human_clicks + excluded.human_clicks";
        let now = now_ms();
        let mut fresh = 0;
        on_pool!(self, p => {
            let mut tx = p.begin().await?;
            for e in events {
                let (Some(t), Some(c)) = (e.tenant_id.as_ref(), e.campaign_id.as_ref()) else { continue };
                let new = sqlx::query(seen).bind(e.event_id.as_str()).bind(now).execute(&mut *tx).await?.rows_affected();
                if new == 0 {
                    continue;
                }
                fresh += 1;
                let at = (e.occurred_at.unix_timestamp_nanos() / 1_000_000) as i64;
                let hour = at - at.rem_euclid(HOUR_MS);
                let mut metrics = increments(e);
                if matches!(e.kind, EventType::Open | EventType::Click)
                    && let Some(j) = &e.job_id
                {
                    let first = sqlx::query(unique)
                        .bind(t.as_str()).bind(c.as_str()).bind(e.kind.as_str()).bind(j.as_str())
                        .execute(&mut *tx).await?.rows_affected();
                    if first > 0 {
                        metrics.push(if e.kind == EventType::Open { "unique_opens" } else { "unique_clicks" }.into());
                    }
                }
                if e.kind == EventType::Click && let Some(url) = &e.url {
                    let human = i64::from(e.verdict.as_ref().is_some_and(|v| v.class == VerdictClass::Human));
                    sqlx::query(link).bind(t.as_str()).bind(c.as_str()).bind(url).bind(human).execute(&mut *tx).await?;
                }
                for m in &metrics {
                    for bucket in [0, hour] {
                        sqlx::query(bump).bind(t.as_str()).bind(c.as_str()).bind(bucket).bind(m).execute(&mut *tx).await?;
                    }
                }
            }
            tx.commit().await?;
        });
        Ok(fresh)
    }

    /// Stored events after `cursor` (an opaque position; 0 = the start), in
    /// storage order, and the cursor to continue from.
    pub async fn events_after(&self, cursor: i64, limit: i64) -> Result<(i64, Vec<Event>)> {
        let rows: Vec<(i64, String)> = match &self.pool {
            Pool::Postgres(p) => {
                // No serial column: page by occurred_at (ms) then event_id is
                // not a stable cursor, so use the row's position in a scan of
                // (occurred_at, event_id) by offset. Adequate for replays.
                sqlx::query_as("SELECT ($1 + ROW_NUMBER() OVER ())::bigint, payload FROM (SELECT payload FROM events ORDER BY occurred_at, event_id OFFSET $1 LIMIT $2) t")
                    .bind(cursor)
                    .bind(limit)
                    .fetch_all(p)
                    .await?
            }
            Pool::Sqlite(p) => {
                sqlx::query_as("SELECT rowid, payload FROM events WHERE rowid > $1 ORDER BY rowid LIMIT $2")
                    .bind(cursor)
                    .bind(limit)
                    .fetch_all(p)
                    .await?
            }
        };
        let next = rows.last().map_or(cursor, |r| r.0);
        Ok((next, rows.iter().filter_map(|(_, p)| serde_json::from_str(p).ok()).collect()))
    }

    /// The tenant's campaigns with their totals, newest activity first.
    /// On PostgreSQL the read runs under row-level security as the tenant.
    pub async fn campaigns(&self, tenant: &TenantId) -> Result<Vec<CampaignStats>> {
        let sql = "SELECT campaign_id, metric, value FROM campaign_counters WHERE tenant_id = $1 AND bucket_hour = 0 ORDER BY campaign_id";
        let rows: Vec<(String, String, i64)> = self.as_tenant(tenant, sql, None).await?;
        let mut out: Vec<CampaignStats> = Vec::new();
        for (c, m, v) in rows {
            if out.last().is_none_or(|s| s.campaign_id != c) {
                out.push(CampaignStats { campaign_id: c.clone(), ..Default::default() });
            }
            if let Some(s) = out.last_mut() {
                s.totals.insert(m, v);
            }
        }
        Ok(out)
    }

    /// One campaign of the tenant, or `None` if the tenant has no such
    /// campaign (whether or not another tenant has).
    pub async fn campaign_stats(&self, tenant: &TenantId, campaign: &str) -> Result<Option<CampaignStats>> {
        let sql = "SELECT bucket_hour, metric, value FROM campaign_counters WHERE tenant_id = $1 AND campaign_id = $2";
        let rows: Vec<(i64, String, i64)> = self.as_tenant(tenant, sql, Some(campaign)).await?;
        let sql = "SELECT status, COUNT(*) FROM send_ledger WHERE tenant_id = $1 AND campaign_id = $2 GROUP BY status";
        let statuses: Vec<(String, i64)> = self.as_tenant(tenant, sql, Some(campaign)).await?;
        if rows.is_empty() && statuses.is_empty() {
            return Ok(None);
        }
        let mut s = CampaignStats {
            campaign_id: campaign.to_owned(),
            progress: Progress::from_statuses(&statuses),
            ..Default::default()
        };
        for (bucket, m, v) in rows {
            if bucket == 0 {
                s.totals.insert(m, v);
            } else {
                s.hourly.entry(bucket).or_default().insert(m, v);
            }
        }
        let sql = "SELECT url, clicks, human_clicks FROM campaign_links WHERE tenant_id = $1 AND campaign_id = $2 ORDER BY clicks DESC, url LIMIT 20";
        s.links = self.as_tenant(tenant, sql, Some(campaign)).await?;
        Ok(Some(s))
    }

    /// Runs a read with `$1` = tenant (and `$2` = `arg`). On PostgreSQL it
    /// runs as role `mailpipe_api` with `mailpipe.tenant` set, so row-level
    /// security limits it to the tenant's rows even if the SQL did not.
    async fn as_tenant<T>(&self, tenant: &TenantId, sql: &str, arg: Option<&str>) -> Result<Vec<T>>
    where
        T: for<'r> sqlx::FromRow<'r, sqlx::postgres::PgRow>
            + for<'r> sqlx::FromRow<'r, sqlx::sqlite::SqliteRow>
            + Send
            + Unpin,
    {
        match &self.pool {
            Pool::Postgres(p) => {
                let mut tx = p.begin().await?;
                sqlx::query("SET LOCAL ROLE mailpipe_api").execute(&mut *tx).await?;
                sqlx::query("SELECT set_config('mailpipe.tenant', $1, true)")
                    .bind(tenant.as_str())
                    .execute(&mut *tx)
                    .await?;
                let mut q = sqlx::query_as::<_, T>(sql).bind(tenant.as_str());
                if let Some(a) = arg {
                    q = q.bind(a);
                }
                let rows = q.fetch_all(&mut *tx).await?;
                tx.commit().await?;
                Ok(rows)
            }
            Pool::Sqlite(p) => {
                let mut q = sqlx::query_as::<_, T>(sql).bind(tenant.as_str());
                if let Some(a) = arg {
                    q = q.bind(a);
                }
                Ok(q.fetch_all(p).await?)
            }
        }
    }

    /// Creates an API key for `tenant` and returns it; only its hash is kept.
    pub async fn create_api_key(&self, tenant: &TenantId, label: &str) -> Result<String> {
        let mut raw = [0u8; 24];
        rand::RngCore::fill_bytes(&mut rand::rng(), &mut raw);
        let key = format!("mp_{}", raw.iter().map(|b| format!("{b:02x}")).collect::<String>());
        let sql = "INSERT INTO api_keys (key_hash, tenant_id, label, created_at) VALUES ($1, $2, $3, $4)";
        on_pool!(self, p => sqlx::query(sql).bind(key_hash(&key)).bind(tenant.as_str()).bind(label).bind(now_ms()).execute(p).await.map(|_| ()))?;
        Ok(key)
    }

    /// The tenant an API key belongs to, if it exists and is not revoked.
    pub async fn tenant_for_api_key(&self, key: &str) -> Result<Option<TenantId>> {
        let sql = "SELECT tenant_id FROM api_keys WHERE key_hash = $1 AND revoked_at IS NULL";
        let t: Option<String> =
            on_pool!(self, p => sqlx::query_scalar(sql).bind(key_hash(key)).fetch_optional(p).await)?;
        Ok(t.and_then(|t| TenantId::parse(t).ok()))
    }

    /// Revokes an API key. True if it existed.
    pub async fn revoke_api_key(&self, key: &str) -> Result<bool> {
        let sql = "UPDATE api_keys SET revoked_at = $2 WHERE key_hash = $1 AND revoked_at IS NULL";
        let n = on_pool!(self, p => sqlx::query(sql).bind(key_hash(key)).bind(now_ms()).execute(p).await?.rows_affected());
        Ok(n > 0)
    }

    /// Erases a recipient: the ledger keeps its rows (so a redelivered job is
    /// still recognised and not resent) with the address replaced by its
    /// keyed hash and the job payload dropped; the jobs' events and any dead
    /// letter holding the address are deleted; a suppression on the keyed
    /// hash stops all future mail. With `tenant`, only that tenant's data.
    pub async fn erase(
        &self,
        address: &str,
        recipient_hash: &str,
        tenant: Option<&TenantId>,
    ) -> Result<ErasureReport> {
        let scope = tenant.map(|t| t.as_str().to_owned()).unwrap_or_default();
        let anon = format!("erased:{recipient_hash}");
        let mut r = ErasureReport::default();
        let jobs_sql =
            "SELECT tenant_id, job_id FROM send_ledger WHERE recipient = $1 AND ($2 = '' OR tenant_id = $2)";
        let del_events = "DELETE FROM events WHERE tenant_id = $1 AND job_id = $2";
        let anon_sql =
            "UPDATE send_ledger SET recipient = $3, payload = NULL WHERE tenant_id = $1 AND job_id = $2";
        let supp = "INSERT INTO suppressions (scope_tenant, recipient_hash, reason, applies_to, source_tenant, created_at)
                    VALUES ($1, $2, 'manual', 'all', NULL, $3) ON CONFLICT (scope_tenant, recipient_hash, applies_to) DO NOTHING";
        let log = "INSERT INTO erasures (recipient_hash, scope_tenant, erased_at) VALUES ($1, $2, $3)
                   ON CONFLICT (recipient_hash, scope_tenant) DO UPDATE SET erased_at = excluded.erased_at";
        // The only dialect differences: finding bytes in a blob, and how to
        // reclaim the deleted rows' space (PostgreSQL: the dead row versions
        // of the touched tables; SQLite: the whole file, so no free page
        // keeps the address).
        let (del_dead_letters, vacuums): (&str, &[&str]) = match self.pool {
            Pool::Postgres(_) => (
                "DELETE FROM dead_letters WHERE position($1::bytea in payload) > 0 AND ($2 = '' OR tenant_id = $2)",
                &["VACUUM send_ledger", "VACUUM events", "VACUUM dead_letters"],
            ),
            // In WAL mode VACUUM's rewrite lands in the WAL first: checkpoint
            // and truncate it so that neither file keeps the old pages.
            Pool::Sqlite(_) => (
                "DELETE FROM dead_letters WHERE instr(payload, $1) > 0 AND ($2 = '' OR tenant_id = $2)",
                &["VACUUM", "PRAGMA wal_checkpoint(TRUNCATE)"],
            ),
        };
        let needle = address.as_bytes().to_vec();
        on_pool!(self, p => {
            let mut tx = p.begin().await?;
            let jobs: Vec<(String, String)> =
                sqlx::query_as(jobs_sql).bind(address).bind(&scope).fetch_all(&mut *tx).await?;
            for (tid, jid) in &jobs {
                r.events_deleted +=
                    sqlx::query(del_events).bind(tid).bind(jid).execute(&mut *tx).await?.rows_affected();
                r.ledger_rows_anonymised +=
                    sqlx::query(anon_sql).bind(tid).bind(jid).bind(&anon).execute(&mut *tx).await?.rows_affected();
            }
            r.dead_letters_deleted =
                sqlx::query(del_dead_letters).bind(&needle).bind(&scope).execute(&mut *tx).await?.rows_affected();
            sqlx::query(supp).bind(&scope).bind(recipient_hash).bind(now_ms()).execute(&mut *tx).await?;
            sqlx::query(log).bind(recipient_hash).bind(&scope).bind(now_ms()).execute(&mut *tx).await?;
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
}

impl Store {
    /// The recipient and campaign of a ledger row, for mapping a complaint
    /// back to its message.
    pub async fn ledger_recipient(&self, tenant: &str, job_id: &str) -> Result<Option<(String, String)>> {
        let sql = "SELECT recipient, campaign_id FROM send_ledger WHERE tenant_id = $1 AND job_id = $2";
        Ok(on_pool!(self, p => sqlx::query_as(sql).bind(tenant).bind(job_id).fetch_optional(p).await)?)
    }

    /// Records which token key ids and DKIM signing domains belong to a
    /// tenant: references for operators, never the secrets themselves.
    pub async fn set_tenant_key_refs(
        &self,
        tenant: &TenantId,
        token_key_ids: &str,
        dkim_domains: &str,
    ) -> Result<()> {
        let sql = "UPDATE tenants SET token_key_ids = $2, dkim_domains = $3 WHERE tenant_id = $1";
        on_pool!(self, p => sqlx::query(sql).bind(tenant.as_str()).bind(token_key_ids).bind(dkim_domains).execute(p).await.map(|_| ()))?;
        Ok(())
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

    /// Keeps a feedback report that could not be used, with the reason.
    pub async fn reject_report(&self, reason: &str, report: &[u8]) -> Result<()> {
        let sql = "INSERT INTO rejected_reports (received_at, reason, report) VALUES ($1, $2, $3)";
        on_pool!(self, p => sqlx::query(sql).bind(now_ms()).bind(reason).bind(report).execute(p).await.map(|_| ()))?;
        Ok(())
    }
}

/// A suppression as listed and exported (a keyed hash, never an address).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, sqlx::FromRow)]
pub struct SuppressionRow {
    /// Empty for platform-wide.
    pub scope_tenant: String,
    pub recipient_hash: String,
    pub reason: String,
    pub applies_to: String,
    pub created_at: i64,
}

impl Store {
    /// Suppressions of one scope: a tenant's, or (`None`) the platform's.
    pub async fn list_suppressions(&self, scope_tenant: Option<&str>) -> Result<Vec<SuppressionRow>> {
        let sql = "SELECT scope_tenant, recipient_hash, reason, applies_to, created_at FROM suppressions
                   WHERE scope_tenant = $1 ORDER BY created_at, recipient_hash";
        Ok(on_pool!(self, p => sqlx::query_as(sql).bind(scope_tenant.unwrap_or("")).fetch_all(p).await)?)
    }

    /// Removes a recipient's suppressions in one scope. Returns how many.
    pub async fn remove_suppression(&self, scope_tenant: Option<&str>, recipient_hash: &str) -> Result<u64> {
        let sql = "DELETE FROM suppressions WHERE scope_tenant = $1 AND recipient_hash = $2";
        Ok(
            on_pool!(self, p => sqlx::query(sql).bind(scope_tenant.unwrap_or("")).bind(recipient_hash).execute(p).await?.rows_affected()),
        )
    }

    /// Adds many suppressions in one transaction: all or none.
    pub async fn import_suppressions(&self, rows: &[SuppressionRow]) -> Result<u64> {
        let sql = "INSERT INTO suppressions (scope_tenant, recipient_hash, reason, applies_to, source_tenant, created_at)
                   VALUES ($1, $2, $3, $4, NULL, $5) ON CONFLICT (scope_tenant, recipient_hash, applies_to) DO NOTHING";
        let mut n = 0;
        on_pool!(self, p => {
            let mut tx = p.begin().await?;
            for r in rows {
                n += sqlx::query(sql).bind(&r.scope_tenant).bind(&r.recipient_hash).bind(&r.reason).bind(&r.applies_to).bind(r.created_at)
                    .execute(&mut *tx).await?.rows_affected();
            }
            tx.commit().await?;
        });
        Ok(n)
    }
}

fn key_hash(key: &str) -> String {
    Sha256::digest(key.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}
