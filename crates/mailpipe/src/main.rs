//! `mailpipe`: thin entry point. Parses the command line, loads the
//! configuration, starts telemetry, and hands over to `mailpipe::app`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use mailpipe::config::Config;
use mailpipe::{ConfigErrors, app, demo, telemetry};

// mimalloc: the tracker spends a tenth of its time in malloc and free under
// load, and the worker allocates per message; see docs/benchmarks.md.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mailpipe: send marketing and transactional email for many tenants, and
/// track opens, clicks and unsubscribes.
#[derive(Parser)]
#[command(version, about, long_about = None)]
struct Cli {
    /// A TOML file layered over the built-in defaults (config/default.toml).
    /// Environment variables MAILPIPE__SECTION__KEY override both.
    #[arg(long, short, global = true, value_name = "FILE", env = "MAILPIPE_CONFIG")]
    config: Option<PathBuf>,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the whole pipeline in one process on a sample campaign: SQLite,
    /// an in-process queue, .eml files, and the tracker on localhost.
    Demo {
        /// How many jobs the sample campaign has.
        #[arg(long, default_value_t = 1000)]
        messages: usize,
        /// Keep the tracker up this many seconds after sending (0: exit at
        /// once). Without it, the tracker runs until Ctrl-C.
        #[arg(long, value_name = "SECS")]
        serve_for: Option<u64>,
        /// No progress bar (for scripts and CI logs).
        #[arg(long)]
        no_progress: bool,
    },
    /// Consume send jobs from Kafka and deliver them, until SIGTERM or
    /// Ctrl-C; then drain in-flight jobs within worker.grace_period_secs.
    Worker,
    /// Serve open pixels, click redirects and unsubscribes, until SIGTERM or
    /// Ctrl-C; then flush pending events.
    Tracker,
    /// Produce send jobs from a JSON Lines file to Kafka (what a campaign
    /// scheduler does). Every line is validated first; nothing is sent if
    /// any line is invalid, unless --skip-invalid is given.
    Enqueue {
        /// One send job (wire contract v1) per line.
        file: PathBuf,
        /// Send the valid lines even if some are invalid.
        #[arg(long)]
        skip_invalid: bool,
    },
    /// Apply database migrations to the configured store.
    Migrate,
    /// Manage tenants.
    Tenant {
        #[command(subcommand)]
        command: TenantCommand,
    },
    /// Serve the tenant API and dashboard, count events into per-campaign
    /// aggregates, and purge on the retention schedule, until SIGTERM.
    Analytics,
    /// Delete what is past its retention (docs/privacy.md), now.
    Purge,
    /// Remove a recipient's personal data everywhere, keeping only a keyed
    /// hash in the suppression list so they are never mailed again.
    Erase {
        #[arg(long)]
        email: String,
        /// Only this tenant's data (and a suppression in its scope).
        #[arg(long)]
        tenant: Option<String>,
    },
    /// Manage suppressions (platform-wide, or one tenant's with --tenant).
    Suppress {
        #[command(subcommand)]
        command: SuppressCommand,
    },
    /// Take an ARF complaint report (RFC 5965) from FILE or stdin (`-`), as a
    /// feedback-loop mailbox would pipe it: the recipient is suppressed for
    /// every tenant and category, and a `complaint` event recorded.
    Complaint { file: PathBuf },
    /// Load and check the configuration, and report every error at once.
    CheckConfig,
}

#[derive(Subcommand)]
enum SuppressCommand {
    /// Suppress an address.
    Add {
        email: String,
        #[arg(long)]
        tenant: Option<String>,
        /// marketing (default) or all.
        #[arg(long, default_value = "marketing")]
        applies_to: String,
        #[arg(long, default_value = "manual")]
        reason: String,
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

#[derive(Subcommand)]
enum TenantCommand {
    /// Register a tenant (or rename one). Jobs for unknown tenants are dead-lettered.
    Add {
        /// Tenant id: letters, digits, and . _ : - (at most 64).
        id: String,
        /// Display name.
        #[arg(long)]
        name: Option<String>,
        /// Keep this tenant's marketing unsubscribes to itself instead of
        /// applying them platform-wide.
        #[arg(long)]
        tenant_scoped_unsubscribes: bool,
        /// Domains this tenant sends from whose DKIM keys are in [dkim]
        /// (comma-separated), recorded as references in the registry.
        #[arg(long, default_value = "")]
        dkim_domains: String,
    },
    /// Create an API key for a tenant; it is printed once and stored hashed.
    KeyCreate {
        id: String,
        #[arg(long, default_value = "default")]
        label: String,
    },
    /// Revoke an API key.
    KeyRevoke { key: String },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let cfg = match Config::load(cli.config.as_deref(), std::env::vars()) {
        Ok(c) => c,
        Err(e) => {
            eprint!("{e}");
            return ExitCode::from(2);
        }
    };
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cli.command, cfg)) {
        Ok(code) => code,
        Err(e) => {
            if let Some(c) = e.downcast_ref::<ConfigErrors>() {
                eprint!("{c}");
                return ExitCode::from(2);
            }
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn tenant_id(id: &str) -> anyhow::Result<mailpipe_core::TenantId> {
    mailpipe_core::TenantId::parse(id).map_err(|e| anyhow::anyhow!("tenant id: {e}"))
}

async fn suppress(cfg: &Config, command: SuppressCommand) -> anyhow::Result<ExitCode> {
    let scope = |t: &Option<String>| t.as_deref().map(tenant_id).transpose();
    let hash = |email: &str| -> anyhow::Result<String> {
        let addr = mailpipe_core::EmailAddress::parse(email).map_err(|e| anyhow::anyhow!("{email}: {e}"))?;
        let (_, hasher) = app::keyring(&cfg.token_secrets()?, cfg.tokens.active_key)?;
        Ok(hasher.hash(&addr.canonical()).to_hex())
    };
    let store = app::store(cfg).await?;
    match command {
        SuppressCommand::Add { email, tenant, applies_to, reason } => {
            let t = scope(&tenant)?;
            let category = match applies_to.as_str() {
                "marketing" => mailpipe_core::Category::Marketing,
                "all" => mailpipe_core::Category::Transactional,
                other => anyhow::bail!("--applies-to {other}: expected marketing or all"),
            };
            if !["hard_bounce", "complaint", "unsubscribe", "manual"].contains(&reason.as_str()) {
                anyhow::bail!("--reason {reason}: expected hard_bounce, complaint, unsubscribe or manual");
            }
            let scope = t.as_ref().map(|t| t.as_str());
            store.add_suppression(scope, &hash(&email)?, &reason, category, scope).await?;
            println!("suppressed");
        }
        SuppressCommand::Remove { email, tenant } => {
            let t = scope(&tenant)?;
            let n = store.remove_suppression(t.as_ref().map(|t| t.as_str()), &hash(&email)?).await?;
            println!("removed {n} suppression(s)");
        }
        SuppressCommand::List { tenant } | SuppressCommand::Export { tenant } => {
            let t = scope(&tenant)?;
            let rows = store.list_suppressions(t.as_ref().map(|t| t.as_str())).await?;
            print!("{}", mailpipe_api::export_csv(&rows));
        }
        SuppressCommand::Import { file, tenant } => {
            let t = scope(&tenant)?;
            let n =
                mailpipe::analytics::import_suppressions(cfg, &file, t.as_ref().map(|t| t.as_str())).await?;
            println!("imported {n} suppression(s)");
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn run(command: Command, mut cfg: Config) -> anyhow::Result<ExitCode> {
    match command {
        Command::Demo { messages, serve_for, no_progress } => {
            // The progress bar owns the terminal; keep logs to warnings.
            if std::env::var_os("RUST_LOG").is_none() && cfg.log.level == "info" {
                cfg.log.level = "warn".into();
            }
            telemetry::init_tracing(&cfg.log);
            let opts = demo::DemoOptions {
                messages,
                serve_for: serve_for.map(Duration::from_secs),
                progress: !no_progress,
            };
            let summary = demo::run(&cfg, opts, app::shutdown_token()).await?;
            Ok(if summary.accounted() == summary.enqueued { ExitCode::SUCCESS } else { ExitCode::FAILURE })
        }
        Command::Worker => {
            telemetry::init_tracing(&cfg.log);
            let metrics = telemetry::init_metrics().map(|h| std::sync::Arc::new(move || h.render()) as _);
            app::run_worker(&cfg, app::shutdown_token(), metrics).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Tracker => {
            telemetry::init_tracing(&cfg.log);
            let metrics = telemetry::init_metrics().map(|h| std::sync::Arc::new(move || h.render()) as _);
            app::run_tracker(&cfg, app::shutdown_token(), metrics).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Enqueue { file, skip_invalid } => {
            telemetry::init_tracing(&cfg.log);
            let (jobs, bad) = app::read_jobs(&cfg, &file)?;
            for b in &bad {
                eprintln!("{}:{}: {}", file.display(), b.line, b.error);
            }
            if !bad.is_empty() && !skip_invalid {
                eprintln!(
                    "{} invalid line(s); nothing was sent (use --skip-invalid to send the {} valid ones)",
                    bad.len(),
                    jobs.len()
                );
                return Ok(ExitCode::FAILURE);
            }
            let n = app::enqueue(&cfg, &jobs).await?;
            println!("enqueued {n} job(s) to {}", cfg.queue.kafka.send_topic);
            Ok(if bad.is_empty() { ExitCode::SUCCESS } else { ExitCode::FAILURE })
        }
        Command::Migrate => {
            telemetry::init_tracing(&cfg.log);
            println!("{}", app::migrate(&cfg).await?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Tenant {
            command: TenantCommand::Add { id, name, tenant_scoped_unsubscribes, dkim_domains },
        } => {
            telemetry::init_tracing(&cfg.log);
            let tenant = tenant_id(&id)?;
            app::ensure_sqlite_dir(&cfg)?;
            let store = app::store(&cfg).await?;
            store.upsert_tenant(&tenant, name.as_deref().unwrap_or(&id)).await?;
            store.set_unsubscribe_scope(&tenant, !tenant_scoped_unsubscribes).await?;
            // Token keys are platform keys from which each tenant's key is
            // derived: the registry records which ids exist when it is added.
            let key_ids: Vec<String> = cfg.tokens.keys.keys().cloned().collect();
            store.set_tenant_key_refs(&tenant, &key_ids.join(","), &dkim_domains).await?;
            println!("tenant {tenant} registered");
            Ok(ExitCode::SUCCESS)
        }
        Command::Tenant { command: TenantCommand::KeyCreate { id, label } } => {
            telemetry::init_tracing(&cfg.log);
            let tenant = tenant_id(&id)?;
            let store = app::store(&cfg).await?;
            if !store.tenant_exists(&tenant).await? {
                anyhow::bail!("tenant {tenant} is not registered (mailpipe tenant add {tenant})");
            }
            println!("{}", store.create_api_key(&tenant, &label).await?);
            eprintln!("API key for {tenant} created; it is shown only now");
            Ok(ExitCode::SUCCESS)
        }
        Command::Tenant { command: TenantCommand::KeyRevoke { key } } => {
            telemetry::init_tracing(&cfg.log);
            let store = app::store(&cfg).await?;
            if store.revoke_api_key(&key).await? {
                println!("revoked");
                Ok(ExitCode::SUCCESS)
            } else {
                eprintln!("no such active key");
                Ok(ExitCode::FAILURE)
            }
        }
        Command::Analytics => {
            telemetry::init_tracing(&cfg.log);
            mailpipe::analytics::run(&cfg, app::shutdown_token()).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Purge => {
            telemetry::init_tracing(&cfg.log);
            let r = mailpipe::analytics::purge(&cfg).await?;
            println!(
                "purged: {} events, {} ledger rows, client details of {} events, {} dead letters",
                r.events_deleted, r.ledger_rows_deleted, r.client_details_removed, r.dead_letters_deleted
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Erase { email, tenant } => {
            telemetry::init_tracing(&cfg.log);
            let r = mailpipe::analytics::erase(&cfg, &email, tenant.as_deref()).await?;
            println!(
                "erased: {} ledger rows anonymised, {} events deleted, {} dead letters deleted; a keyed hash stays on the suppression list",
                r.ledger_rows_anonymised, r.events_deleted, r.dead_letters_deleted
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Complaint { file } => {
            telemetry::init_tracing(&cfg.log);
            let report = if file.as_os_str() == "-" {
                let mut buf = Vec::new();
                std::io::Read::read_to_end(&mut std::io::stdin(), &mut buf)?;
                buf
            } else {
                std::fs::read(&file).map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?
            };
            let (tenant, job) = mailpipe::analytics::complaint(&cfg, &report).await?;
            println!("complaint recorded for {tenant}/{job}; recipient suppressed platform-wide");
            Ok(ExitCode::SUCCESS)
        }
        Command::Suppress { command } => {
            telemetry::init_tracing(&cfg.log);
            suppress(&cfg, command).await
        }
        Command::CheckConfig => {
            println!(
                "configuration is valid (store: {}, queue: {:?}, smtp: {:?})",
                cfg.store.redacted_url(),
                cfg.queue.kind,
                cfg.smtp.kind
            );
            if let Err(e) = cfg.token_secrets() {
                print!("note: `worker` and `tracker` will refuse to start:\n{e}");
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}
