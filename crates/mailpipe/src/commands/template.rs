//! `mailpipe template put|list|show|versions`: the operator's side of the templates
//! a tenant registers with `POST /api/v1/templates` (docs/api.md,
//! "Templates"), with the same checks.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Subcommand;
use mailpipe_analytics::templates::{Upload, check};

use super::tenant_id;
use crate::app;
use crate::config::Config;

#[derive(Subcommand)]
pub enum Command {
    /// Register a template for a tenant's campaign as its next version,
    /// compiled first: a template that does not compile is refused with its
    /// part and line.
    Put {
        tenant: String,
        #[arg(long)]
        campaign: String,
        /// The template_id jobs name it by.
        #[arg(long)]
        id: String,
        #[arg(long)]
        subject: String,
        /// A file with the HTML part.
        #[arg(long)]
        html: Option<PathBuf>,
        /// A file with the text part.
        #[arg(long)]
        text: Option<PathBuf>,
    },
    /// A tenant's templates, each at its latest version.
    List { tenant: String },
    /// A template's latest version, or the one given, as JSON.
    Show {
        tenant: String,
        #[arg(long)]
        campaign: String,
        #[arg(long)]
        id: String,
        /// A kept version (`template versions` lists them).
        #[arg(long)]
        version: Option<std::num::NonZeroU32>,
    },
    /// The kept versions of a template: when each was registered and, but
    /// for the latest, replaced.
    Versions {
        tenant: String,
        #[arg(long)]
        campaign: String,
        #[arg(long)]
        id: String,
    },
}

fn read(path: Option<&PathBuf>) -> anyhow::Result<Option<String>> {
    path.map(|p| std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))).transpose()
}

pub async fn run(command: Command, cfg: &Config) -> anyhow::Result<ExitCode> {
    let store = app::store(cfg).await?;
    match command {
        Command::Put { tenant, campaign, id, subject, html, text } => {
            let tenant = tenant_id(&tenant)?;
            let upload = Upload {
                campaign_id: campaign,
                template_id: id,
                subject,
                html: read(html.as_ref())?,
                text: read(text.as_ref())?,
            };
            let (campaign, template) = check(&upload).map_err(|e| anyhow::anyhow!("refused: {e}"))?;
            let version = store
                .register_template(
                    tenant.as_str(),
                    campaign.as_str(),
                    template.as_str(),
                    &upload.subject,
                    upload.html.as_deref(),
                    upload.text.as_deref(),
                )
                .await?;
            println!("registered {campaign}/{template} for {tenant}: version {version}");
        }
        Command::List { tenant } => {
            let tenant = tenant_id(&tenant)?;
            println!("campaign_id\ttemplate_id\tversion");
            for (campaign, template, version, _) in store.list_templates(tenant.as_str()).await? {
                println!("{campaign}\t{template}\t{version}");
            }
        }
        Command::Show { tenant, campaign, id, version } => {
            let tenant = tenant_id(&tenant)?;
            let pinned = version.map(|v| i64::from(v.get()));
            let Some(t) = store.template(tenant.as_str(), &campaign, &id, pinned).await? else {
                match version {
                    None => anyhow::bail!("{tenant} has no template {id} for campaign {campaign}"),
                    Some(v) => {
                        anyhow::bail!("{tenant} has no version {v} of template {id} for campaign {campaign}")
                    }
                }
            };
            let shown = serde_json::json!({
                "campaign_id": campaign, "template_id": id, "version": t.version,
                "subject": t.subject, "html": t.html, "text": t.text
            });
            println!("{}", serde_json::to_string_pretty(&shown)?);
        }
        Command::Versions { tenant, campaign, id } => {
            let tenant = tenant_id(&tenant)?;
            let versions = store.template_versions(tenant.as_str(), &campaign, &id).await?;
            if versions.is_empty() {
                anyhow::bail!("{tenant} has no template {id} for campaign {campaign}");
            }
            println!("version\tregistered_at\tsuperseded_at");
            for v in versions {
                let at = |ms: i64| {
                    time::OffsetDateTime::from_unix_timestamp(ms.div_euclid(1000))
                        .ok()
                        .and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok())
                        .unwrap_or_else(|| ms.to_string())
                };
                let superseded = v.superseded_at.map(at).unwrap_or_else(|| "-".into());
                println!("{}\t{}\t{superseded}", v.version, at(v.registered_at));
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
