//! `mailpipe purge`: deletes what is past its retention, now.

use std::process::ExitCode;

use crate::app;
use crate::config::Config;

pub async fn run(cfg: &Config) -> anyhow::Result<ExitCode> {
    let store = app::store(cfg).await?;
    let r = store.purge(mailpipe_core::now_ms(), cfg.retention).await?;
    println!(
        "purged: {} events, {} ledger rows, client details of {} events, {} dead letters, {} rejected reports, {} webhook deliveries, {} superseded template versions; {} month partitions dropped",
        r.events_deleted,
        r.ledger_rows_deleted,
        r.client_details_removed,
        r.dead_letters_deleted,
        r.rejected_reports_deleted,
        r.webhook_deliveries_deleted,
        r.template_versions_deleted,
        r.partitions_dropped
    );
    Ok(ExitCode::SUCCESS)
}
