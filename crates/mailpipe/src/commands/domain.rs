//! `mailpipe domain add|add-shared|list|records|check|rotate|retire|remove|reseal`:
//! the operator's side of sending domains (docs/domains.md).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Subcommand;
use mailpipe_core::{DkimAlgorithm, Domain, Selector, TenantId};
use mailpipe_domains::onboard::{self, KeySource};
use mailpipe_domains::{Dns, Finding, Outcome, Record};
use mailpipe_store::{Owner, SendingDomain};

use super::tenant_id;
use crate::app;
use crate::config::Config;

/// The key a new domain signs with: made now, or brought along (a key
/// already published, such as one the platform signed with before).
#[derive(clap::Args)]
pub struct KeyArgs {
    /// rsa-sha256 or ed25519-sha256 (default: domains.default_algorithm).
    #[arg(long, value_parser = parse_algorithm)]
    algorithm: Option<DkimAlgorithm>,
    /// A PEM private key (PKCS#8, or PKCS#1 for RSA) already published
    /// under --selector, instead of a new one.
    #[arg(long, requires = "selector")]
    key_file: Option<PathBuf>,
    /// The selector --key-file's public key is published under.
    #[arg(long, requires = "key_file", value_parser = parse_selector)]
    selector: Option<Selector>,
}

impl KeyArgs {
    /// The key file's contents, read now; [`KeyArgs::source`] borrows them.
    fn read(&self) -> anyhow::Result<Option<Vec<u8>>> {
        let file = self.key_file.as_ref();
        file.map(|f| std::fs::read(f).with_context(|| format!("reading {}", f.display()))).transpose()
    }

    fn source<'a>(&self, default: DkimAlgorithm, pem: Option<&'a [u8]>) -> KeySource<'a> {
        let algorithm = self.algorithm.unwrap_or(default);
        match (pem, &self.selector) {
            (Some(pem), Some(selector)) => KeySource::Pem { algorithm, selector: selector.clone(), pem },
            _ => KeySource::Generate(algorithm),
        }
    }
}

#[derive(Subcommand)]
pub enum Command {
    /// Add a tenant's own domain: a key pair is made (or brought along with
    /// --key-file), and the DNS records to publish are printed. It sends
    /// once a check finds its DKIM record.
    Add {
        tenant: String,
        domain: String,
        #[command(flatten)]
        key: KeyArgs,
    },
    /// Add (or change the tenants of) a platform-owned domain that the
    /// listed tenants may send as.
    AddShared {
        domain: String,
        /// Comma-separated tenant ids.
        #[arg(long, value_delimiter = ',', required = true)]
        tenants: Vec<String>,
        /// The operator vouches for the domain: it sends at once, whatever
        /// DNS says (checks still record their findings).
        #[arg(long)]
        attested: bool,
        #[command(flatten)]
        key: KeyArgs,
    },
    /// List sending domains (a tenant's with --tenant): status, keys, tenants.
    List {
        #[arg(long)]
        tenant: Option<String>,
    },
    /// Print the DNS records a domain should publish, as zone file lines.
    Records { domain: String },
    /// Check a domain's DNS now, print the findings, and record the status
    /// they lead to. Exits 1 unless the domain may send.
    Check { domain: String },
    /// Start a key rotation: a new key is made and its record printed; it
    /// signs once a check finds the record, and the old key is kept
    /// (`previous`) until it is retired.
    Rotate {
        domain: String,
        #[arg(long, value_parser = parse_algorithm)]
        algorithm: Option<DkimAlgorithm>,
    },
    /// Delete a replaced (`previous`) key.
    Retire {
        domain: String,
        #[arg(value_parser = parse_selector)]
        selector: Selector,
    },
    /// Remove a domain and its keys: its mail is refused from the next
    /// refresh of every worker.
    Remove { domain: String },
    /// Seal every private key under domains.active_key (after adding a new
    /// key-encryption key); prints how many moved.
    Reseal,
}

fn parse_algorithm(s: &str) -> Result<DkimAlgorithm, String> {
    s.parse().map_err(|e: mailpipe_core::SendingError| e.to_string())
}

fn parse_selector(s: &str) -> Result<Selector, String> {
    Selector::parse(s).map_err(|e| e.to_string())
}

fn domain(s: &str) -> anyhow::Result<Domain> {
    Domain::parse(s).map_err(|e| anyhow::anyhow!("domain {s:?}: {e}"))
}

fn print_records(records: &[Record]) {
    println!("; publish these records:");
    for r in records {
        println!("{}", r.zone_line());
    }
}

fn print_findings(findings: &[Finding]) {
    for f in findings {
        let mark = match f.outcome {
            Outcome::Pass => "pass",
            Outcome::Warn => "warn",
            Outcome::Fail => "FAIL",
        };
        let check = serde_json::to_value(f.check)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default();
        println!("{mark:<5}{check:<12}{}", f.detail);
        if let Some(fix) = &f.fix {
            println!("{:17}fix: {fix}", "");
        }
    }
}

fn print_domain(d: &SendingDomain) {
    let owner = match &d.owner {
        Owner::Tenant(t) => t.to_string(),
        Owner::Platform => "platform".into(),
    };
    let keys: Vec<String> =
        d.keys.iter().map(|k| format!("{}({},{})", k.selector, k.algorithm, k.state)).collect();
    let tenants: Vec<&str> = d.tenants.iter().map(TenantId::as_str).collect();
    println!(
        "{}\t{}{}\towner={owner}\ttenants={}\tkeys={}",
        d.domain.as_str(),
        d.status,
        if d.attested { " (attested)" } else { "" },
        tenants.join(","),
        keys.join(" ")
    );
}

pub async fn run(command: Command, cfg: &Config) -> anyhow::Result<ExitCode> {
    let store = app::store(cfg).await?;
    let settings = &cfg.domains;
    match command {
        Command::Add { tenant, domain: name, key } => {
            let (tenant, name) = (tenant_id(&tenant)?, domain(&name)?);
            if !store.tenant_exists(&tenant).await? {
                anyhow::bail!("tenant {tenant} is not registered (mailpipe tenant add {tenant})");
            }
            let pem = key.read()?;
            let source = key.source(settings.default_algorithm, pem.as_deref());
            let sealer = app::sealer(cfg)?;
            let records = onboard::add(
                &store,
                &sealer,
                settings,
                &name,
                &Owner::Tenant(tenant.clone()),
                &[],
                false,
                source,
            )
            .await?;
            println!(
                "; {name} added for {tenant}: pending until `mailpipe domain check {name}` finds its DKIM record"
            );
            print_records(&records);
        }
        Command::AddShared { domain: name, tenants, attested, key } => {
            let name = domain(&name)?;
            let tenants = tenants.iter().map(|t| tenant_id(t)).collect::<anyhow::Result<Vec<_>>>()?;
            for t in &tenants {
                if !store.tenant_exists(t).await? {
                    anyhow::bail!("tenant {t} is not registered (mailpipe tenant add {t})");
                }
            }
            let sealer = app::sealer(cfg)?;
            let pem = key.read()?;
            let source = key.source(settings.default_algorithm, pem.as_deref());
            let records =
                onboard::add(&store, &sealer, settings, &name, &Owner::Platform, &tenants, attested, source)
                    .await?;
            let list: Vec<&str> = tenants.iter().map(TenantId::as_str).collect();
            println!("; {name} (platform) may be sent as by {}", list.join(", "));
            print_records(&records);
        }
        Command::List { tenant } => {
            let tenant = tenant.as_deref().map(tenant_id).transpose()?;
            for d in store.sending_domains(tenant.as_ref()).await? {
                print_domain(&d);
            }
        }
        Command::Records { domain: name } => {
            let name = domain(&name)?;
            let d =
                store.sending_domain(&name).await?.with_context(|| format!("no sending domain {name}"))?;
            print_records(&onboard::to_publish(&d, settings));
        }
        Command::Check { domain: name } => {
            let name = domain(&name)?;
            let d =
                store.sending_domain(&name).await?.with_context(|| format!("no sending domain {name}"))?;
            let dns = Dns::new(&settings.nameservers, settings.dns_timeout)?;
            let checked = mailpipe_domains::check(&store, &dns, settings, &d).await?;
            println!("{name}: {}", checked.status);
            print_findings(&checked.findings);
            if let Some(s) = &checked.promoted {
                println!("rotation complete: selector {s} signs from now on");
            }
            if !checked.status.may_send() {
                return Ok(ExitCode::FAILURE);
            }
        }
        Command::Rotate { domain: name, algorithm } => {
            let name = domain(&name)?;
            let sealer = app::sealer(cfg)?;
            let record =
                onboard::rotate(&store, &sealer, &name, algorithm.unwrap_or(settings.default_algorithm))
                    .await?;
            println!("; publish the new key; it signs once `mailpipe domain check {name}` finds it:");
            println!("{}", record.zone_line());
        }
        Command::Retire { domain: name, selector } => {
            let name = domain(&name)?;
            onboard::retire(&store, &name, &selector).await?;
            println!("retired {selector} of {name}; its DNS record can go once its mail has been delivered");
        }
        Command::Remove { domain: name } => {
            let name = domain(&name)?;
            if !store.remove_sending_domain(&name).await? {
                eprintln!("no sending domain {name}");
                return Ok(ExitCode::FAILURE);
            }
            println!("removed {name}");
        }
        Command::Reseal => {
            let sealer = app::sealer(cfg)?;
            let moved = onboard::reseal_all(&store, &sealer).await?;
            println!("resealed {moved} keys under key-encryption key {}", settings.active_key);
        }
    }
    store.close().await;
    Ok(ExitCode::SUCCESS)
}
