//! `mailpipe bounce parse`: what the platform reads from bounces,
//! complaints and auto-replies, for an operator to inspect by hand.

use std::path::PathBuf;
use std::process::ExitCode;

use mailpipe_feedback::Finding;

use crate::app;
use crate::config::Config;

#[derive(clap::Subcommand)]
pub enum Command {
    /// Read each FILE (a whole message, as it arrived) and print one line
    /// per recipient it reports on: kind, reason, codes and the send it
    /// names (only when the reference's MAC checks out with this
    /// configuration's keys). Changes nothing.
    Parse(ParseArgs),
}

#[derive(clap::Args)]
pub struct ParseArgs {
    #[arg(required = true)]
    files: Vec<PathBuf>,
    /// One JSON object per line: file, recipient, status, reply_code, kind,
    /// reason, job, source, diagnostic.
    #[arg(long)]
    json: bool,
}

pub async fn run(command: Command, cfg: &Config) -> anyhow::Result<ExitCode> {
    match command {
        Command::Parse(args) => parse(args, cfg),
    }
}

fn parse(args: ParseArgs, cfg: &Config) -> anyhow::Result<ExitCode> {
    // Without keys nothing can be verified: every `job` is then null.
    let references = match app::keys(cfg) {
        Ok(k) => Some(k.hasher.references()),
        Err(e) => {
            eprintln!("note: no send can be named without the keys ({e:#})");
            None
        }
    };
    let mut failed = false;
    for file in &args.files {
        let raw = match std::fs::read(file) {
            Ok(r) => r,
            Err(e) => {
                eprintln!("{}: {e}", file.display());
                failed = true;
                continue;
            }
        };
        let found = match mailpipe_feedback::read(&raw) {
            Ok(f) => f,
            Err(e) => {
                eprintln!("{}: {e}", file.display());
                failed = true;
                continue;
            }
        };
        for f in found {
            let job = f
                .reference
                .as_deref()
                .zip(references.as_ref())
                .and_then(|(r, refs)| refs.verify(r).ok())
                .map(|(t, j)| format!("{t}/{j}"));
            print_finding(file, &f, job.as_deref(), args.json);
        }
    }
    Ok(if failed { ExitCode::FAILURE } else { ExitCode::SUCCESS })
}

fn print_finding(file: &std::path::Path, f: &Finding, job: Option<&str>, json: bool) {
    if json {
        let line = serde_json::json!({
            "file": file.display().to_string(),
            "recipient": f.recipient,
            "status": f.status,
            "reply_code": f.reply_code,
            "kind": f.kind,
            "reason": f.reason,
            "job": job,
            "source": f.source,
            "diagnostic": f.diagnostic,
        });
        println!("{line}");
    } else {
        let dash = |s: Option<&str>| s.unwrap_or("-").to_owned();
        println!(
            "{}\t{}\t{}\t{}\t{}\t{}\t{}",
            file.display(),
            dash(f.recipient.as_deref()),
            f.kind.as_str(),
            f.reason.as_str(),
            dash(f.status.as_deref()),
            dash(f.reply_code.map(|c| c.to_string()).as_deref()),
            dash(job)
        );
    }
}
