//! `mailpipe complaint`: one ARF report, from a file or stdin.

use std::path::PathBuf;
use std::process::ExitCode;

use mailpipe_analytics::complaint::ComplaintError;

use crate::app;
use crate::config::{Config, QueueKind};

#[derive(clap::Args)]
pub struct Args {
    /// The report, or `-` for stdin.
    file: PathBuf,
}

pub async fn run(args: Args, cfg: &Config) -> anyhow::Result<ExitCode> {
    let report = if args.file.as_os_str() == "-" {
        let mut buf = Vec::new();
        std::io::Read::read_to_end(&mut std::io::stdin(), &mut buf)?;
        buf
    } else {
        std::fs::read(&args.file).map_err(|e| anyhow::anyhow!("{}: {e}", args.file.display()))?
    };
    let store = app::store(cfg).await?;
    let keys = app::keys(cfg)?;
    let kafka = (cfg.queue.kind == QueueKind::Kafka).then_some(&cfg.queue.kafka);
    let (tenant, job) = mailpipe_analytics::complaint::complaint(&store, &keys.hasher, kafka, &report)
        .await
        .map_err(|e| match e {
            ComplaintError::Queue(q) => app::kafka_hint(q),
            other => other.into(),
        })?;
    println!("complaint recorded for {tenant}/{job}; recipient suppressed platform-wide");
    Ok(ExitCode::SUCCESS)
}
