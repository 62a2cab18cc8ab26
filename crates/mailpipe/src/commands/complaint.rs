//! `mailpipe complaint`: one ARF report, from a file or stdin.

use std::path::PathBuf;
use std::process::ExitCode;

use mailpipe_analytics::complaint::{self, ComplaintError};

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
    // A report unusable whatever the keys is kept even without them; the
    // key that checks a reference is needed next, Kafka only after.
    let keys = match app::keys(cfg) {
        Ok(k) => k,
        Err(e) => {
            complaint::keep_if_unusable(&store, &report).await?;
            return Err(e);
        }
    };
    let reported = complaint::read_report(&store, &keys.hasher.references(), &report).await?;
    let kafka = (cfg.queue.kind == QueueKind::Kafka).then_some(&cfg.queue.kafka);
    let (tenant, job) =
        complaint::act_on(&store, &keys.hasher, kafka, reported).await.map_err(|e| match e {
            ComplaintError::Queue(q) => app::queue_error(q),
            other => other.into(),
        })?;
    println!("complaint recorded for {tenant}/{job}; recipient suppressed platform-wide");
    Ok(ExitCode::SUCCESS)
}
