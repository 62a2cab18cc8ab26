//! `mailpipe enqueue FILE.jsonl`: what a campaign scheduler does. Every line
//! is parsed first, by the parser the worker uses; nothing is sent if any
//! line is invalid, unless `--skip-invalid`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use mailpipe_core::SendJob;
use mailpipe_throttle::Throttle;

use crate::app::{self, KeyedJob};
use crate::config::{Config, QueueKind};

#[derive(clap::Args)]
pub struct Args {
    /// One send job (wire contract v1) per line.
    file: PathBuf,
    /// Send the valid lines even if some are invalid.
    #[arg(long)]
    skip_invalid: bool,
}

/// A line of an enqueue file that is not a valid job.
#[derive(Debug)]
pub struct BadLine {
    pub line: usize,
    pub error: String,
}

pub async fn run(args: Args, cfg: &Config) -> anyhow::Result<ExitCode> {
    let (jobs, bad) = read_jobs(cfg, &args.file)?;
    for b in &bad {
        eprintln!("{}:{}: {}", args.file.display(), b.line, b.error);
    }
    if !bad.is_empty() && !args.skip_invalid {
        eprintln!(
            "{} invalid line(s); nothing was sent (use --skip-invalid to send the {} valid ones)",
            bad.len(),
            jobs.len()
        );
        return Ok(ExitCode::FAILURE);
    }
    let n = app::enqueue(cfg, &jobs).await?;
    match cfg.queue.kind {
        QueueKind::Kafka => println!("enqueued {n} job(s) to {}", cfg.queue.kafka.send_topic),
        _ => println!("enqueued {n} job(s) to the store's queue ({})", cfg.store.redacted_url()),
    }
    Ok(if bad.is_empty() { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

/// Reads and validates a JSON Lines file of send jobs, keying each by its
/// rate-limit key: the recipient domain's provider group if it has one, else
/// the domain. One partition, so one worker, then carries every job a limit
/// applies to, which is what makes the limit hold across the worker group.
pub fn read_jobs(cfg: &Config, path: &Path) -> anyhow::Result<(Vec<KeyedJob>, Vec<BadLine>)> {
    let throttle = Throttle::new(&cfg.throttle);
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut ok = Vec::new();
    let mut bad = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        match SendJob::from_json(line.as_bytes()) {
            Ok(job) => ok.push((throttle.key(job.queue_key()).to_owned(), line.as_bytes().to_vec())),
            Err(e) => bad.push(BadLine { line: i + 1, error: e.to_string() }),
        }
    }
    Ok((ok, bad))
}
