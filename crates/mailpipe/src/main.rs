//! `mailpipe`: thin entry point. Parses the command line, loads the
//! configuration, starts telemetry, and hands over to `mailpipe::app`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use mailpipe::config::Config;
use mailpipe::{ConfigErrors, app, demo, telemetry};

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
    /// Load and check the configuration, and report every error at once.
    CheckConfig,
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
    },
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
        Command::Tenant { command: TenantCommand::Add { id, name } } => {
            telemetry::init_tracing(&cfg.log);
            let tenant =
                mailpipe_core::TenantId::parse(id.as_str()).map_err(|e| anyhow::anyhow!("tenant id: {e}"))?;
            app::ensure_sqlite_dir(&cfg)?;
            let store = app::store(&cfg).await?;
            store.upsert_tenant(&tenant, name.as_deref().unwrap_or(&id)).await?;
            println!("tenant {tenant} registered");
            Ok(ExitCode::SUCCESS)
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
