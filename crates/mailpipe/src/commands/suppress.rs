//! `mailpipe suppress add|remove|list|import|export`, platform-wide or, with
//! `--tenant`, in one tenant's scope.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Subcommand;
use mailpipe_analytics::csv::{ImportError, export_csv};
use mailpipe_core::{AppliesTo, Reason, Scope, Suppression};

use super::{address, tenant_id};
use crate::app;
use crate::config::Config;

#[derive(Subcommand)]
pub enum Command {
    /// Suppress an address.
    Add {
        email: String,
        #[arg(long)]
        tenant: Option<String>,
        /// marketing (default) or all.
        #[arg(long, default_value_t = AppliesTo::Marketing, value_parser = parse_applies_to)]
        applies_to: AppliesTo,
        /// unsubscribe, complaint, hard_bounce, manual (default) or import.
        #[arg(long, default_value_t = Reason::Manual, value_parser = parse_reason)]
        reason: Reason,
    },
    /// Lift an address's suppressions in the scope.
    Remove {
        email: String,
        #[arg(long)]
        tenant: Option<String>,
    },
    /// List (keyed hashes, never addresses).
    List {
        #[arg(long)]
        tenant: Option<String>,
    },
    /// Import a CSV of email,reason,applies_to: every line or none.
    Import {
        file: PathBuf,
        #[arg(long)]
        tenant: Option<String>,
    },
    /// Export as CSV: scope,recipient_hash,reason,applies_to,created_at.
    Export {
        #[arg(long)]
        tenant: Option<String>,
    },
}

fn parse_applies_to(s: &str) -> Result<AppliesTo, String> {
    s.parse().map_err(|e: mailpipe_core::SuppressionError| e.to_string())
}

fn parse_reason(s: &str) -> Result<Reason, String> {
    Reason::from_operator(s).map_err(|e| e.to_string())
}

fn scope(tenant: Option<&str>) -> anyhow::Result<Scope> {
    Ok(Scope::of(tenant.map(tenant_id).transpose()?))
}

pub async fn run(command: Command, cfg: &Config) -> anyhow::Result<ExitCode> {
    let store = app::store(cfg).await?;
    // Listing needs no secrets; anything that hashes an address does.
    let hasher = || app::keys(cfg).map(|k| k.hasher);
    match command {
        Command::Add { email, tenant, applies_to, reason } => {
            let scope = scope(tenant.as_deref())?;
            let recipient = hasher()?.hash(&address(&email, &email)?.canonical());
            let mut entry = Suppression::new(scope.clone(), recipient, reason, applies_to);
            if let Scope::Tenant(t) = &scope {
                entry = entry.from_tenant(t);
            }
            store.add_suppression(&entry).await?;
            println!("suppressed");
        }
        Command::Remove { email, tenant } => {
            let scope = scope(tenant.as_deref())?;
            let recipient = hasher()?.hash(&address(&email, &email)?.canonical());
            let r = store.remove_suppression(&scope, &recipient).await?;
            println!("removed {} suppression(s)", r.removed);
            if !r.kept.is_empty() {
                let kept: Vec<&str> = r.kept.iter().map(|k| k.as_str()).collect();
                anyhow::bail!(
                    "kept {}: a recipient's unsubscribe or complaint, an erasure, and (for a tenant) a hard bounce are never removed",
                    kept.join(", ")
                );
            }
        }
        Command::List { tenant } | Command::Export { tenant } => {
            let entries = store.list_suppressions(&scope(tenant.as_deref())?).await?;
            print!("{}", export_csv(&entries));
        }
        Command::Import { file, tenant } => {
            let scope = scope(tenant.as_deref())?;
            let text =
                std::fs::read_to_string(&file).with_context(|| format!("reading {}", file.display()))?;
            match mailpipe_analytics::csv::import(&store, &hasher()?, &text, &scope).await {
                Ok(n) => println!("imported {n} suppression(s)"),
                Err(ImportError::BadLines(errors)) => {
                    let mut msg =
                        format!("{}: {} bad line(s); nothing was imported", file.display(), errors.len());
                    for e in &errors {
                        msg.push_str(&format!("\n  line {}: {}", e.line, e.error));
                    }
                    anyhow::bail!(msg);
                }
                Err(ImportError::Store(e)) => return Err(e.into()),
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
