//! What the feedback loop needs: the message a report is about, and a
//! place for reports that could not be used.

use mailpipe_core::now_ms;

use crate::{Result, Store};

impl Store {
    /// The recipient and campaign of a ledger row, for mapping a complaint
    /// back to its message.
    pub async fn ledger_recipient(&self, tenant: &str, job_id: &str) -> Result<Option<(String, String)>> {
        let sql = "SELECT recipient, campaign_id FROM send_ledger WHERE tenant_id = $1 AND job_id = $2";
        Ok(on_pool!(self, p => sqlx::query_as(sql).bind(tenant).bind(job_id).fetch_optional(p).await)?)
    }

    /// Keeps a feedback report that could not be used, with the reason.
    pub async fn reject_report(&self, reason: &str, report: &[u8]) -> Result<()> {
        let sql = "INSERT INTO rejected_reports (received_at, reason, report) VALUES ($1, $2, $3)";
        on_pool!(self, p => sqlx::query(sql).bind(now_ms()).bind(reason).bind(report).execute(p).await.map(|_| ()))?;
        Ok(())
    }
}
