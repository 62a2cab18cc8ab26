//! Templates registered for a campaign.

use mailpipe_core::now_ms;

use crate::{Result, Store};

/// A registered template set as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredTemplate {
    pub subject: String,
    pub html: Option<String>,
    pub text: Option<String>,
    pub version: i64,
}

impl Store {
    pub async fn put_template(
        &self,
        tenant: &str,
        campaign: &str,
        template: &str,
        t: &StoredTemplate,
    ) -> Result<()> {
        let sql = "INSERT INTO campaign_templates (tenant_id, campaign_id, template_id, subject, html, text, version, created_at)
                   VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
                   ON CONFLICT (tenant_id, campaign_id, template_id) DO UPDATE
                   SET subject = excluded.subject, html = excluded.html, text = excluded.text, version = excluded.version";
        on_pool!(self, p => sqlx::query(sql)
            .bind(tenant).bind(campaign).bind(template)
            .bind(&t.subject).bind(&t.html).bind(&t.text).bind(t.version).bind(now_ms())
            .execute(p).await.map(|_| ()))?;
        Ok(())
    }

    pub async fn template(
        &self,
        tenant: &str,
        campaign: &str,
        template: &str,
    ) -> Result<Option<StoredTemplate>> {
        let sql = "SELECT subject, html, text, version FROM campaign_templates
                   WHERE tenant_id = $1 AND campaign_id = $2 AND template_id = $3";
        let row: Option<(String, Option<String>, Option<String>, i64)> = on_pool!(self, p =>
            sqlx::query_as(sql).bind(tenant).bind(campaign).bind(template).fetch_optional(p).await)?;
        Ok(row.map(|(subject, html, text, version)| StoredTemplate { subject, html, text, version }))
    }
}
