//! `mailpipe warmup status|start|skip`: where each warming domain's ramps
//! stand, and the operator's hand on them (docs/deliverability.md,
//! "Warm-up").

use std::process::ExitCode;

use clap::Subcommand;

use super::tenant_id;
use crate::app;
use crate::config::Config;

#[derive(Subcommand)]
pub enum Command {
    /// Show each warming domain's ramp per provider group: its day, today's
    /// cap, what went and what was parked today, and whether it holds.
    Status {
        /// Only the domains this tenant may send as.
        #[arg(long)]
        tenant: Option<String>,
        /// One JSON document instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Start a domain's warm-up (again): every ramp back to its first day.
    Start { domain: String },
    /// End a domain's warm-up: it is established and sends with no cap (a
    /// domain that brings its reputation from another platform).
    Skip { domain: String },
}

pub async fn run(command: Command, cfg: &Config) -> anyhow::Result<ExitCode> {
    let store = app::store(cfg).await?;
    let domain = |d: &str| mailpipe_core::Domain::parse(d).map_err(|e| anyhow::anyhow!("{d}: {e}"));
    match command {
        Command::Status { tenant, json } => {
            let tenant = tenant.as_deref().map(tenant_id).transpose()?;
            let now = mailpipe_core::now_ms();
            let s = &cfg.warmup;
            let domains = store.warmups(tenant.as_ref()).await?;
            if json {
                let out: Vec<_> = domains
                    .iter()
                    .map(|d| {
                        serde_json::json!({
                            "domain": d.domain,
                            "since": d.since,
                            "providers": d.providers.iter().map(|r| r.view(s, now)).collect::<Vec<_>>(),
                        })
                    })
                    .collect();
                println!("{}", serde_json::json!({ "enabled": s.enabled, "domains": out }));
                return Ok(ExitCode::SUCCESS);
            }
            if !s.enabled {
                eprintln!("warmup.enabled is false: workers apply no ramp");
            }
            println!("domain\tprovider\tstate\tday\tcap\tsent\tparked\theld");
            for d in &domains {
                if d.providers.is_empty() {
                    println!(
                        "{}\t*\tnot started\t1/{}\t{}\t0\t0\t-",
                        d.domain,
                        s.steps(),
                        s.cap(0).unwrap_or(0)
                    );
                }
                for r in d.providers.iter().map(|r| r.view(s, now)) {
                    let cap = r.cap.map_or("-".to_owned(), |c| c.to_string());
                    let held = r.held.as_deref().unwrap_or("-");
                    println!(
                        "{}\t{}\t{}\t{}/{}\t{cap}\t{}\t{}\t{held}",
                        d.domain, r.provider, r.state, r.day, r.days, r.sent, r.parked
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Start { domain: d } => {
            let d = domain(&d)?;
            if !store.start_warmup(&d, mailpipe_core::now_ms()).await? {
                anyhow::bail!("{d} is not a sending domain (mailpipe domain add)");
            }
            println!("{d}: warm-up started; each provider group begins at day 1 of {}", cfg.warmup.steps());
            Ok(ExitCode::SUCCESS)
        }
        Command::Skip { domain: d } => {
            let d = domain(&d)?;
            if !store.skip_warmup(&d).await? {
                anyhow::bail!("{d} is not a sending domain (mailpipe domain add)");
            }
            println!("{d}: established; its mail is no longer capped by a ramp");
            Ok(ExitCode::SUCCESS)
        }
    }
}
