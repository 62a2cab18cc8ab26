//! Templates registered for a campaign: the demo and tests put a version of
//! their choosing ([`Store::put_template`]); a tenant's upload makes the next
//! one ([`Store::register_template`]).

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

    /// Registers a tenant's template for its campaign as the next version
    /// (1 when new) and returns it. Run through [`Store::for_tenant`], the
    /// database holds the statement to the tenant's own rows.
    pub async fn register_template(
        &self,
        tenant: &str,
        campaign: &str,
        template: &str,
        subject: &str,
        html: Option<&str>,
        text: Option<&str>,
    ) -> Result<i64> {
        let sql = "INSERT INTO campaign_templates (tenant_id, campaign_id, template_id, subject, html, text, version, created_at)
                   VALUES ($1, $2, $3, $4, $5, $6, 1, $7)
                   ON CONFLICT (tenant_id, campaign_id, template_id) DO UPDATE
                   SET subject = excluded.subject, html = excluded.html, text = excluded.text,
                       version = campaign_templates.version + 1, created_at = excluded.created_at
                   RETURNING version";
        let version: i64 = scoped!(self, p => sqlx::query_scalar(sql)
            .bind(tenant).bind(campaign).bind(template).bind(subject).bind(html).bind(text).bind(now_ms())
            .fetch_one(p).await)?;
        Ok(version)
    }

    /// A tenant's registered templates: (campaign, template, version,
    /// registered at ms), by campaign and template.
    pub async fn list_templates(&self, tenant: &str) -> Result<Vec<(String, String, i64, i64)>> {
        let sql = "SELECT campaign_id, template_id, version, created_at FROM campaign_templates
                   WHERE tenant_id = $1 ORDER BY campaign_id, template_id";
        let rows = scoped!(self, p => sqlx::query_as(sql).bind(tenant).fetch_all(p).await)?;
        Ok(rows)
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
