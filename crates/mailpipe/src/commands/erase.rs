//! `mailpipe erase`: removes a recipient's personal data, keeping only a
//! keyed hash in the suppression list.

use std::process::ExitCode;

use mailpipe_core::{Scope, TenantId};

use super::address;
use crate::app;
use crate::config::Config;

#[derive(clap::Args)]
pub struct Args {
    #[arg(long)]
    email: String,
    /// Only this tenant's data (and a suppression in its scope).
    #[arg(long)]
    tenant: Option<String>,
}

pub async fn run(args: Args, cfg: &Config) -> anyhow::Result<ExitCode> {
    let addr = address("--email", &args.email)?;
    let tenant = args.tenant.as_deref().map(TenantId::parse).transpose();
    let scope = Scope::of(tenant.map_err(|e| anyhow::anyhow!("--tenant: {e}"))?);
    let keys = app::keys(cfg)?;
    // An operator's command, as the tables' owner when one is configured:
    // only the owner may VACUUM what the erasure deleted off the disk.
    let store = match cfg.store.owner_url {
        Some(_) => app::owner_store(cfg).await?,
        None => app::store(cfg).await?,
    };
    let r = mailpipe_analytics::privacy::erase(&store, &keys.hasher, &addr, &scope).await?;
    println!(
        "erased: {} ledger rows anonymised, {} events, {} dead letters, {} personalised links and {} rejected reports deleted; \
         a keyed hash stays on the suppression list",
        r.ledger_rows_anonymised,
        r.events_deleted,
        r.dead_letters_deleted,
        r.campaign_links_deleted,
        r.rejected_reports_deleted
    );
    if !r.vacuumed {
        println!(
            "not vacuumed: this role does not own the tables, so the deleted rows' old versions stay in the \
             data files until autovacuum; set store.owner_url to vacuum now"
        );
    }
    Ok(ExitCode::SUCCESS)
}
