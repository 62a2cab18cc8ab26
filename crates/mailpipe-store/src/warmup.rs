//! Warm-up ramps (migrations 0027 PostgreSQL, 0028 SQLite): for each
//! warming sending domain and provider group, where its ramp stands and
//! what the current window let through. The arithmetic is
//! [`mailpipe_core::warmup`]'s; this module only counts, atomically, so that
//! any number of workers together never let more through than the cap.

use mailpipe_core::warmup::TRANSACTIONAL_HEADROOM;
use mailpipe_core::{Domain, TenantId};

use crate::domains::BUMP;
use crate::{Result, Store, StreamFigures};

/// One (domain, provider group)'s ramp.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct WarmupRow {
    pub domain: String,
    pub provider: String,
    /// Steps of the ramp done: today is step `step` (day `step + 1`).
    pub step: i64,
    /// The window `used` and `parked` are of (unix ms).
    pub window_start: i64,
    /// The cap of that window; `None`: warm, no cap.
    pub cap: Option<i64>,
    /// Sends let through in that window (transactional mail included).
    pub used: i64,
    /// Jobs parked over the cap in that window.
    pub parked: i64,
    /// Why the ramp did not move on at the last window's end, if it held.
    pub held: Option<String>,
    pub started_at: i64,
    pub updated_at: i64,
}

/// A warming domain and its ramps.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct WarmupDomain {
    pub domain: String,
    /// When its warm-up began.
    pub since: i64,
    /// One per provider group it has sent to since.
    pub providers: Vec<WarmupRow>,
}

/// What taking one send of a ramp's window found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Take {
    /// Taken: the send may go. `warm`: the pair has no cap any more.
    Taken { warm: bool },
    /// The window's cap is used up: this job is the `k`th (from 0) parked
    /// over it, at step `step`.
    Over { step: i64, k: i64 },
    /// The row is of another window: one before (roll it over first), or
    /// the same or later (changed meanwhile: take again).
    Stale(WarmupRow),
    /// No row yet: this pair's first send.
    Missing,
}

type Row = (String, String, i64, i64, Option<i64>, i64, i64, Option<String>, i64, i64);

fn row(r: Row) -> WarmupRow {
    let (domain, provider, step, window_start, cap, used, parked, held, started_at, updated_at) = r;
    WarmupRow { domain, provider, step, window_start, cap, used, parked, held, started_at, updated_at }
}

const COLUMNS: &str = "w.domain, w.provider, w.step, w.window_start, w.cap, w.used, w.parked, w.held, w.started_at, w.updated_at";

impl Store {
    /// Takes one send of `domain`'s ramp to `provider` in the window that
    /// starts at `window`: within the cap, or, when `force` (transactional
    /// mail, which counts against the cap but is not held for an ordinary
    /// overflow), within [`TRANSACTIONAL_HEADROOM`] times the cap.
    pub async fn warmup_take(
        &self,
        domain: &str,
        provider: &str,
        window: i64,
        force: bool,
        now: i64,
    ) -> Result<Take> {
        let take = "UPDATE warmup SET used = used + 1, updated_at = $5
                    WHERE domain = $1 AND provider = $2 AND window_start = $3
                      AND (cap IS NULL OR used < cap OR ($4 AND used / $6 < cap))
                    RETURNING cap";
        let over = "UPDATE warmup SET parked = parked + 1, updated_at = $4
                    WHERE domain = $1 AND provider = $2 AND window_start = $3 AND cap IS NOT NULL AND used >= cap
                    RETURNING step, parked";
        let read = format!("SELECT {COLUMNS} FROM warmup w WHERE w.domain = $1 AND w.provider = $2");
        let taken: Option<Option<i64>> = on_pool!(self, p => sqlx::query_scalar(take).bind(domain).bind(provider).bind(window).bind(force).bind(now).bind(TRANSACTIONAL_HEADROOM).fetch_optional(p).await)?;
        if let Some(cap) = taken {
            return Ok(Take::Taken { warm: cap.is_none() });
        }
        let parked: Option<(i64, i64)> = on_pool!(self, p => sqlx::query_as(over).bind(domain).bind(provider).bind(window).bind(now).fetch_optional(p).await)?;
        if let Some((step, parked)) = parked {
            return Ok(Take::Over { step, k: parked - 1 });
        }
        let found: Option<Row> =
            on_pool!(self, p => sqlx::query_as(&read).bind(domain).bind(provider).fetch_optional(p).await)?;
        // A row of this window here was rolled over by another worker
        // between the statements (or is ahead, by a clock that is): the
        // caller takes again.
        Ok(found.map_or(Take::Missing, |r| Take::Stale(row(r))))
    }

    /// Starts `domain`'s ramp to `provider` at step 0 in `window` with
    /// `cap`, unless another worker did first.
    pub async fn warmup_begin(
        &self,
        domain: &str,
        provider: &str,
        window: i64,
        cap: Option<i64>,
        now: i64,
    ) -> Result<()> {
        // Only for a domain still warming: one skipped meanwhile stays so.
        let sql = "INSERT INTO warmup (domain, provider, step, window_start, cap, started_at, updated_at)
                   SELECT domain, $2, 0, $3, $4, $5, $5 FROM sending_domains WHERE domain = $1 AND warmup_from IS NOT NULL
                   ON CONFLICT (domain, provider) DO NOTHING";
        on_pool!(self, p => sqlx::query(sql).bind(domain).bind(provider).bind(window).bind(cap).bind(now).execute(p).await.map(|_| ()))?;
        Ok(())
    }

    /// Rolls `domain`'s ramp to `provider` over from the window `from` to
    /// `to`, at `step` with `cap`, noting why it `held` if it did. `false`
    /// if another worker rolled it over first.
    #[allow(clippy::too_many_arguments)]
    pub async fn warmup_roll(
        &self,
        domain: &str,
        provider: &str,
        from: i64,
        to: i64,
        step: i64,
        cap: Option<i64>,
        held: Option<&str>,
        now: i64,
    ) -> Result<bool> {
        let sql = "UPDATE warmup SET step = $5, window_start = $4, cap = $6, used = 0, parked = 0, held = $7, updated_at = $8
                   WHERE domain = $1 AND provider = $2 AND window_start = $3";
        let n = on_pool!(self, p => sqlx::query(sql).bind(domain).bind(provider).bind(from).bind(to).bind(step).bind(cap).bind(held).bind(now)
            .execute(p).await.map(|r| r.rows_affected()))?;
        Ok(n > 0)
    }

    /// What mail sent as `domain` (by any tenant) met since `since`: the
    /// figures a warm-up's health is judged on.
    pub async fn domain_figures(&self, domain: &str, since: i64) -> Result<StreamFigures> {
        // The IN list word for word as the partial index's (0020).
        let sql = "SELECT COALESCE(SUM(CASE WHEN type = 'sent' THEN 1 ELSE 0 END), 0),
                          COALESCE(SUM(CASE WHEN type = 'complaint' THEN 1 ELSE 0 END), 0),
                          COALESCE(SUM(CASE WHEN type = 'bounced' AND COALESCE(reason, '') <> 'rejected' THEN 1 ELSE 0 END), 0),
                          COALESCE(SUM(CASE WHEN type = 'bounced' AND reason = 'user_unknown' THEN 1 ELSE 0 END), 0)
                   FROM events WHERE type IN ('sent', 'bounced', 'complaint') AND occurred_at >= $2 AND sender_domain = $1";
        let (delivered, complaints, hard_bounces, unknown_users): (i64, i64, i64, i64) = match &self.pool {
            crate::Pool::Postgres(p) => {
                let sql = sql.replace("ELSE 0 END), 0)", "ELSE 0 END), 0)::BIGINT");
                sqlx::query_as(&sql).bind(domain).bind(since).fetch_one(p).await?
            }
            crate::Pool::Sqlite(p) => sqlx::query_as(sql).bind(domain).bind(since).fetch_one(p).await?,
        };
        Ok(StreamFigures { delivered, complaints, hard_bounces, unknown_users })
    }

    /// Starts (or starts again) `domain`'s warm-up at `now`: its ramps go
    /// back to their first step. Returns whether the domain exists.
    pub async fn start_warmup(&self, domain: &Domain, now: i64) -> Result<bool> {
        self.set_warmup(domain, Some(now)).await
    }

    /// Ends `domain`'s warm-up: it is established, with no ramp. Returns
    /// whether the domain exists.
    pub async fn skip_warmup(&self, domain: &Domain) -> Result<bool> {
        self.set_warmup(domain, None).await
    }

    async fn set_warmup(&self, domain: &Domain, from: Option<i64>) -> Result<bool> {
        let set = "UPDATE sending_domains SET warmup_from = $2 WHERE domain = $1";
        let clear = "DELETE FROM warmup WHERE domain = $1";
        let n = on_pool!(self, p => {
            let mut tx = p.begin().await?;
            let n = sqlx::query(set).bind(domain.as_str()).bind(from).execute(&mut *tx).await?.rows_affected();
            sqlx::query(clear).bind(domain.as_str()).execute(&mut *tx).await?;
            sqlx::query(BUMP).execute(&mut *tx).await?;
            tx.commit().await?;
            n
        });
        Ok(n > 0)
    }

    /// The warming domains with their ramps: every one, or (with `tenant`)
    /// those the tenant may send as, read in the tenant's context on a
    /// [`Store::for_tenant`] handle.
    pub async fn warmups(&self, tenant: Option<&TenantId>) -> Result<Vec<WarmupDomain>> {
        let domains = "SELECT d.domain, d.warmup_from FROM sending_domains d WHERE d.warmup_from IS NOT NULL
                       AND ($1 = '' OR d.domain IN (SELECT domain FROM sending_domain_tenants WHERE tenant_id = $1))
                       ORDER BY d.domain";
        let rows = format!(
            "SELECT {COLUMNS} FROM warmup w WHERE $1 = '' OR w.domain IN (SELECT domain FROM sending_domain_tenants WHERE tenant_id = $1)
             ORDER BY w.domain, w.provider"
        );
        let key = tenant.map_or("", TenantId::as_str);
        let found: Vec<(String, Option<i64>)> =
            scoped!(self, p => sqlx::query_as(domains).bind(key).fetch_all(p).await)?;
        let ramps: Vec<Row> = scoped!(self, p => sqlx::query_as(&rows).bind(key).fetch_all(p).await)?;
        let mut ramps: Vec<WarmupRow> = ramps.into_iter().map(row).collect();
        Ok(found
            .into_iter()
            .map(|(domain, since)| {
                let (mine, rest) = std::mem::take(&mut ramps).into_iter().partition(|r| r.domain == domain);
                ramps = rest;
                WarmupDomain { domain, since: since.unwrap_or_default(), providers: mine }
            })
            .collect())
    }
}

/// Where one ramp stands at a moment, as `mailpipe warmup status`, the API
/// and the dashboard show it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RampView {
    pub provider: String,
    /// `ramping`, `holding` (its figures held it at the last window's end)
    /// or `warm` (past the ramp: no cap).
    pub state: &'static str,
    /// The ramp's day it is on (from 1), of `days`.
    pub day: i64,
    pub days: i64,
    /// This window's cap; absent when warm.
    pub cap: Option<i64>,
    /// Let through and parked in this window.
    pub sent: i64,
    pub parked: i64,
    /// Why it holds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub held: Option<String>,
}

impl WarmupRow {
    /// This ramp in the window `now` is in. A row of an earlier window has
    /// sent nothing in this one yet (it rolls over at its next send).
    pub fn view(&self, s: &mailpipe_core::WarmupSettings, now: i64) -> RampView {
        let current = self.window_start >= s.window_start(now);
        // The cap in force is the row's; a later window's, the ramp's.
        let cap = if current { self.cap } else { s.cap(self.step) };
        let state = match (&cap, &self.held) {
            (None, _) => "warm",
            (Some(_), Some(_)) => "holding",
            (Some(_), None) => "ramping",
        };
        RampView {
            provider: self.provider.clone(),
            state,
            day: (self.step + 1).min(s.steps()),
            days: s.steps(),
            cap,
            sent: if current { self.used } else { 0 },
            parked: if current { self.parked } else { 0 },
            held: self.held.clone(),
        }
    }
}
