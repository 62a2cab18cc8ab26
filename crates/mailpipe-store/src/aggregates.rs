//! Analytics aggregates: counters per campaign (`bucket_hour = 0` for
//! totals, else the hour), kept by idempotent upserts. An event is counted
//! only if its `event_id` is new to `analytics_seen`, in the same
//! transaction, so a redelivered event counts once. Tenant reads run under
//! row-level security on PostgreSQL ([`Store::as_tenant`]).

use std::collections::BTreeMap;

use mailpipe_core::{Event, EventType, TenantId, VerdictClass, now_ms};

use crate::{LedgerStatus, Pool, Result, Store};

const HOUR_MS: i64 = 3_600_000;
const DAY_MS: i64 = 86_400_000;

/// A tenant at a glance.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Overview {
    pub tenant_id: String,
    pub campaigns: Vec<CampaignRates>,
    /// Streams with a state (absent: active, never paused).
    pub streams: Vec<crate::StreamState>,
    pub daily_volume: Vec<DailyVolume>,
}

/// A campaign's outcomes and the rates made of them. A rate is a fraction
/// (0.012 is 1.2%), absent when its denominator is 0. Raw open and click
/// rates count every recipient with an open or click; human ones only
/// those with a human's (docs/tracker.md, verdicts).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct CampaignRates {
    pub campaign_id: String,
    pub delivered: i64,
    pub bounced: i64,
    pub complaints: i64,
    pub unique_opens: i64,
    pub unique_opens_human: i64,
    pub unique_clicks: i64,
    pub unique_clicks_human: i64,
    pub unsubscribes: i64,
    /// Over messages that left or were refused at once (delivered plus
    /// refused at once; a bounce that came back later is in delivered
    /// already).
    pub bounce_rate: Option<f64>,
    /// The rest over delivered.
    pub complaint_rate: Option<f64>,
    pub open_rate: Option<f64>,
    pub open_rate_human: Option<f64>,
    pub click_rate: Option<f64>,
    pub click_rate_human: Option<f64>,
    pub unsubscribe_rate: Option<f64>,
}

impl CampaignRates {
    pub fn of(st: &CampaignStats) -> Self {
        let m = |k: &str| st.totals.get(k).copied().unwrap_or(0);
        let rate = |n: i64, d: i64| (d > 0).then(|| n as f64 / d as f64);
        let (delivered, bounced) = (m("sent"), m("bounced"));
        let refused_at_once = (bounced - m("bounced_async")).max(0);
        Self {
            campaign_id: st.campaign_id.clone(),
            delivered,
            bounced,
            complaints: m("complaints"),
            unique_opens: m("unique_opens"),
            unique_opens_human: m("unique_opens_human"),
            unique_clicks: m("unique_clicks"),
            unique_clicks_human: m("unique_clicks_human"),
            unsubscribes: m("unsubscribes"),
            bounce_rate: rate(bounced, delivered + refused_at_once),
            complaint_rate: rate(m("complaints"), delivered),
            open_rate: rate(m("unique_opens"), delivered),
            open_rate_human: rate(m("unique_opens_human"), delivered),
            click_rate: rate(m("unique_clicks"), delivered),
            click_rate_human: rate(m("unique_clicks_human"), delivered),
            unsubscribe_rate: rate(m("unsubscribes"), delivered),
        }
    }
}

/// One day's messages sent as one organisational From domain.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, sqlx::FromRow)]
pub struct DailyVolume {
    /// UTC midnight of the day, unix ms.
    pub day: i64,
    /// The From domains' organisational domain (`news.acme.example` →
    /// `acme.example`), as mailbox providers count bulk senders.
    pub org_domain: String,
    pub sent: i64,
}

/// One campaign's figures, as the API and the dashboard show them.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct CampaignStats {
    pub campaign_id: String,
    /// Metric → value: sent, deferred, bounced, suppressed, dead_lettered,
    /// failed, opens, opens_human, opens_machine, unique_opens, clicks,
    /// clicks_human, clicks_machine, unique_clicks, unsubscribes,
    /// complaints, unique_opens_human, unique_clicks_human (recipients with
    /// a human open or click), bounced_async (bounces that came back after
    /// the relay accepted), and `provider:<group>:<outcome>`.
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
            // A bounce that came back after the relay accepted (no delivery
            // attempt of ours ended in it): its message is in `sent` too.
            if e.kind == EventType::Bounced && e.attempt.is_none() {
                m.push("bounced_async".into());
            }
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
        EventType::StreamPaused | EventType::StreamResumed | EventType::WebhookDisabled => {}
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
        let volume = "INSERT INTO sender_volume (tenant_id, day, org_domain, sent) VALUES ($1, $2, $3, 1)
                      ON CONFLICT (tenant_id, day, org_domain) DO UPDATE SET sent = sender_volume.sent + 1";
        let link = "INSERT INTO campaign_links (tenant_id, campaign_id, url, clicks, human_clicks) VALUES ($1, $2, $3, 1, $4)
                    ON CONFLICT (tenant_id, campaign_id, url) DO UPDATE SET clicks = campaign_links.clicks + 1, human_clicks = campaign_links.human_clicks + excluded.human_clicks";
        let now = now_ms();
        let mut fresh = 0;
        on_pool!(self, p => {
            let mut tx = p.begin().await?;
            // Events also go out to their tenants' webhooks, once: with
            // the counting, in this transaction.
            let hooked: std::collections::HashSet<String> =
                sqlx::query_scalar(crate::webhooks::HOOKED).fetch_all(&mut *tx).await?.into_iter().collect();
            for e in events {
                let Some(t) = e.tenant_id.as_ref() else { continue };
                let hooks = hooked.contains(t.as_str());
                let Some(c) = e.campaign_id.as_ref() else {
                    // About a tenant, not a campaign: nothing to count.
                    if hooks {
                        let new = sqlx::query(seen).bind(e.event_id.as_str()).bind(now).execute(&mut *tx).await?.rows_affected();
                        if new > 0 {
                            sqlx::query(crate::webhooks::FAN_OUT)
                                .bind(crate::webhooks::webhook_message_id(e)).bind(e.kind.as_str())
                                .bind(crate::webhooks::webhook_payload(e)).bind(now).bind(t.as_str())
                                .execute(&mut *tx).await?;
                        }
                    }
                    continue;
                };
                let new = sqlx::query(seen).bind(e.event_id.as_str()).bind(now).execute(&mut *tx).await?.rows_affected();
                if new == 0 {
                    continue;
                }
                fresh += 1;
                if hooks {
                    sqlx::query(crate::webhooks::FAN_OUT)
                        .bind(crate::webhooks::webhook_message_id(e)).bind(e.kind.as_str())
                        .bind(crate::webhooks::webhook_payload(e)).bind(now).bind(t.as_str())
                        .execute(&mut *tx).await?;
                }
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
                    // The recipients a human opened or clicked for: the
                    // rates that machine opens (privacy proxies, scanners)
                    // do not inflate.
                    if e.verdict.as_ref().is_some_and(|v| v.class == VerdictClass::Human) {
                        let (kind, metric) = if e.kind == EventType::Open {
                            ("open_human", "unique_opens_human")
                        } else {
                            ("click_human", "unique_clicks_human")
                        };
                        let first = sqlx::query(unique)
                            .bind(t.as_str()).bind(c.as_str()).bind(kind).bind(j.as_str())
                            .execute(&mut *tx).await?.rows_affected();
                        if first > 0 {
                            metrics.push(metric.into());
                        }
                    }
                }
                if e.kind == EventType::Click && let Some(url) = &e.url {
                    let human = i64::from(e.verdict.as_ref().is_some_and(|v| v.class == VerdictClass::Human));
                    sqlx::query(link).bind(t.as_str()).bind(c.as_str()).bind(url).bind(human).execute(&mut *tx).await?;
                }
                if e.kind == EventType::Sent
                    && let Some(d) = &e.sender_domain
                {
                    let org = mailpipe_core::organizational(d);
                    let day = at - at.rem_euclid(DAY_MS);
                    sqlx::query(volume).bind(t.as_str()).bind(day).bind(org).execute(&mut *tx).await?;
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

    /// The oldest events of the SQLite store's feed not yet counted (up to
    /// `limit`), and the feed position to pass to
    /// [`Store::events_feed_done`] once they are. Events erased since are
    /// skipped. `None` on PostgreSQL, which has no feed:
    /// [`Store::events_after`] reads it.
    pub async fn events_feed(&self, limit: i64) -> Result<Option<(i64, Vec<Event>)>> {
        let Pool::Sqlite(p) = &self.pool else { return Ok(None) };
        let rows: Vec<(i64, Option<String>)> = sqlx::query_as(
            "SELECT f.seq, e.payload FROM events_feed f LEFT JOIN events e ON e.event_id = f.event_id ORDER BY f.seq LIMIT $1",
        )
        .bind(limit)
        .fetch_all(p)
        .await?;
        let last = rows.last().map_or(0, |r| r.0);
        let events = rows
            .iter()
            .filter_map(|(_, p)| p.as_deref())
            .filter_map(|p| serde_json::from_str(p).ok())
            .collect();
        Ok(Some((last, events)))
    }

    /// Removes the feed's rows up to `upto`: counted.
    pub async fn events_feed_done(&self, upto: i64) -> Result<()> {
        if let Pool::Sqlite(p) = &self.pool {
            sqlx::query("DELETE FROM events_feed WHERE seq <= $1").bind(upto).execute(p).await?;
        }
        Ok(())
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

    /// What the tenant overview shows (`GET /api/v1/overview`, the
    /// dashboard's first page): each campaign with its rates, the streams
    /// the breaker has acted on, and the daily volume per organisational
    /// From domain over the last `days` days. In the tenant's context.
    pub async fn overview(&self, tenant: &TenantId, days: i64, now: i64) -> Result<Overview> {
        let campaigns = self.campaigns(tenant).await?.iter().map(CampaignRates::of).collect();
        let streams = self.for_tenant(tenant).streams(Some(tenant)).await?;
        let today = now - now.rem_euclid(DAY_MS);
        let daily_volume = self.daily_volume(tenant, today - (days - 1).max(0) * DAY_MS).await?;
        Ok(Overview { tenant_id: tenant.to_string(), campaigns, streams, daily_volume })
    }

    /// The tenant's messages sent per day and organisational From domain
    /// since `since` (unix ms), newest day first. In the tenant's context.
    pub async fn daily_volume(&self, tenant: &TenantId, since: i64) -> Result<Vec<DailyVolume>> {
        let sql = "SELECT day, org_domain, sent FROM sender_volume WHERE tenant_id = $1 AND day >= CAST($2 AS BIGINT)
                   ORDER BY day DESC, org_domain";
        self.as_tenant(tenant, sql, Some(&since.to_string())).await
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
