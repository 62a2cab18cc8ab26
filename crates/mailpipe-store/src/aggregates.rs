//! Analytics aggregates: counters per campaign (`bucket_hour = 0` for
//! totals, else the hour), kept by idempotent upserts. An event is counted
//! only if its `event_id` is new to `analytics_seen`, in the same
//! transaction, so a redelivered event counts once. Tenant reads run under
//! row-level security on PostgreSQL ([`Store::as_tenant`]).

use std::collections::BTreeMap;

use mailpipe_core::{Event, EventType, TenantId, VerdictClass, now_ms};

use crate::{LedgerStatus, Pool, Result, Store};

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
            // An unknown status counts as unfinished: never claim a campaign
            // complete on a row we cannot read.
            .filter(|(status, _)| status.parse::<LedgerStatus>().map_or(true, |s| !s.is_terminal()))
            .map(|r| r.1)
            .sum();
        Self { accepted, outstanding, complete: accepted > 0 && outstanding == 0 }
    }
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
        // About a tenant, not a campaign.
        EventType::StreamPaused | EventType::StreamResumed => {}
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

    /// Runs a read with `$1` = tenant (and `$2` = `arg`), in the tenant's
    /// context ([`crate::context`]): on PostgreSQL, row-level security limits
    /// it to the tenant's rows even if the SQL did not.
    pub(crate) async fn as_tenant<T>(&self, tenant: &TenantId, sql: &str, arg: Option<&str>) -> Result<Vec<T>>
    where
        T: for<'r> sqlx::FromRow<'r, sqlx::postgres::PgRow>
            + for<'r> sqlx::FromRow<'r, sqlx::sqlite::SqliteRow>
            + Send
            + Unpin,
    {
        let store = self.for_tenant(tenant);
        scoped!(store, p => {
            let mut q = sqlx::query_as::<_, T>(sql).bind(tenant.as_str());
            if let Some(a) = arg {
                q = q.bind(a);
            }
            q.fetch_all(p).await
        })
        .map_err(Into::into)
    }
}
