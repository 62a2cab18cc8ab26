//! What the feedback loop needs: the message a report is about, and a
//! place for reports that could not be used.

use mailpipe_core::{RecipientRef, now_ms};

use crate::{Result, Store};

impl Store {
    /// The recipient and campaign of a ledger row, for mapping a complaint
    /// back to its message.
    pub async fn ledger_recipient(&self, tenant: &str, job_id: &str) -> Result<Option<(String, String)>> {
        let sql = "SELECT recipient, campaign_id FROM send_ledger WHERE tenant_id = $1 AND job_id = $2";
        Ok(on_pool!(self, p => sqlx::query_as(sql).bind(tenant).bind(job_id).fetch_optional(p).await)?)
    }

    /// The send (tenant, job) whose return path carried `tag`, if any.
    pub async fn job_for_return_tag(&self, tag: &str) -> Result<Option<(String, String)>> {
        let sql = "SELECT tenant_id, job_id FROM send_ledger WHERE return_tag = $1";
        Ok(on_pool!(self, p => sqlx::query_as(sql).bind(tag).fetch_optional(p).await)?)
    }

    /// Records a soft bounce of `recipient` by the send `send_key` at `now`
    /// (once per send: a repeat changes nothing), and returns how many
    /// sends it has soft-bounced since `now - window_ms`.
    pub async fn record_soft_bounce(
        &self,
        recipient: &RecipientRef,
        send_key: &str,
        now: i64,
        window_ms: i64,
    ) -> Result<i64> {
        let hash = recipient.to_hex();
        let n: i64;
        in_tx!(self, tx => {
            sqlx::query("INSERT INTO soft_bounces (recipient_hash, send_key, at) VALUES ($1, $2, $3)
                         ON CONFLICT (recipient_hash, send_key) DO NOTHING")
                .bind(&hash).bind(send_key).bind(now).execute(&mut *tx).await?;
            n = sqlx::query_scalar("SELECT COUNT(*) FROM soft_bounces WHERE recipient_hash = $1 AND at >= $2")
                .bind(&hash).bind(now - window_ms).fetch_one(&mut *tx).await?;
        });
        Ok(n)
    }

    /// Keeps a feedback report that could not be used, with the reason.
    pub async fn reject_report(&self, reason: &str, report: &[u8]) -> Result<()> {
        let sql = "INSERT INTO rejected_reports (received_at, reason, report) VALUES ($1, $2, $3)";
        on_pool!(self, p => sqlx::query(sql).bind(now_ms()).bind(reason).bind(report).execute(p).await.map(|_| ()))?;
        Ok(())
    }
}
