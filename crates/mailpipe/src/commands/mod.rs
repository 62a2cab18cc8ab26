//! One module per subcommand: its arguments (clap) and its `run`, which
//! turns the loaded configuration into what the command does, calling the
//! library crates through [`crate::app`].

pub mod analytics;
pub mod bounce;
pub mod check_config;
pub mod complaint;
pub mod demo;
pub mod domain;
pub mod enqueue;
pub mod erase;
pub mod inbound;
pub mod migrate;
pub mod purge;
pub mod serve;
pub mod suppress;
pub mod template;
pub mod tenant;
pub mod topics;
pub mod tracker;
pub mod warmup;
pub mod worker;

use std::process::ExitCode;

use clap::Subcommand;

use crate::config::Config;

#[derive(Subcommand)]
pub enum Command {
    /// Run the whole pipeline in one process on a sample campaign: SQLite,
    /// an in-process queue, .eml files, and the tracker on localhost.
    Demo(demo::Args),
    /// Run the single-node mode until SIGTERM or Ctrl-C: the worker on the
    /// durable queue in the SQLite store, the tracker, the API and
    /// analytics (and inbound, when bounces.domain is set) in one process.
    Serve,
    /// Consume send jobs from Kafka (or the store's queue) and deliver
    /// them, until SIGTERM or Ctrl-C; then drain in-flight jobs within
    /// worker.grace_period_secs.
    Worker,
    /// Serve open pixels, click redirects and unsubscribes, until SIGTERM or
    /// Ctrl-C; then flush pending events.
    Tracker,
    /// Queue send jobs from a JSON Lines file, on Kafka or the store's
    /// queue as queue.kind says (what a campaign scheduler does). Every line is validated first; nothing is sent if
    /// any line is invalid, unless --skip-invalid is given.
    Enqueue(enqueue::Args),
    /// Apply database migrations to the configured store.
    Migrate,
    /// Create the Kafka topics that are missing and set every topic's
    /// retention from [queue.kafka.topics] (their records hold personal data).
    Topics,
    /// Manage tenants.
    Tenant {
        #[command(subcommand)]
        command: tenant::Command,
    },
    /// Manage sending domains: a tenant sends only as a domain it holds,
    /// signed with that domain's own DKIM key.
    Domain {
        #[command(subcommand)]
        command: domain::Command,
    },
    /// Serve the tenant API and dashboard, count events into per-campaign
    /// aggregates, and purge on the retention schedule, until SIGTERM.
    Analytics,
    /// Delete what is past its retention (docs/privacy.md), now.
    Purge,
    /// Remove a recipient's personal data everywhere, keeping only a keyed
    /// hash in the suppression list so they are never mailed again.
    Erase(erase::Args),
    /// Register and look at the templates a tenant's jobs name by
    /// template_id (tenants do it themselves with POST /api/v1/templates).
    Template {
        #[command(subcommand)]
        command: template::Command,
    },
    /// Sending domains' warm-up: where each ramp stands; start or skip one.
    Warmup {
        #[command(subcommand)]
        command: warmup::Command,
    },
    /// Manage suppressions (platform-wide, or one tenant's with --tenant).
    Suppress {
        #[command(subcommand)]
        command: suppress::Command,
    },
    /// Take an ARF complaint report (RFC 5965) from FILE or stdin (`-`), as a
    /// feedback-loop mailbox would pipe it: the recipient is suppressed for
    /// marketing from every tenant, and a `complaint` event recorded.
    Complaint(complaint::Args),
    /// Receive what comes back over SMTP (the return paths on
    /// bounces.domain, and bounces.feedback_address), and act on it: hard
    /// bounces and complaints suppress, soft bounces are counted; until
    /// SIGTERM or Ctrl-C.
    Inbound,
    /// Bounces, complaints and auto-replies: `parse` shows what the
    /// platform reads from messages that came back.
    Bounce {
        #[command(subcommand)]
        command: bounce::Command,
    },
    /// Load and check the configuration, and report every error at once.
    CheckConfig,
}

impl Command {
    /// Whether the command owns the terminal (the demo's progress bar and
    /// summary), so that logs below warnings would get in its way.
    pub fn owns_terminal(&self) -> bool {
        matches!(self, Command::Demo(_))
    }

    pub async fn run(self, cfg: &Config) -> anyhow::Result<ExitCode> {
        match self {
            Command::Demo(args) => demo::run(args, cfg).await,
            Command::Serve => serve::run(cfg).await,
            Command::Worker => worker::run(cfg).await,
            Command::Tracker => tracker::run(cfg).await,
            Command::Enqueue(args) => enqueue::run(args, cfg).await,
            Command::Migrate => migrate::run(cfg).await,
            Command::Topics => topics::run(cfg).await,
            Command::Tenant { command } => tenant::run(command, cfg).await,
            Command::Domain { command } => domain::run(command, cfg).await,
            Command::Analytics => analytics::run(cfg).await,
            Command::Purge => purge::run(cfg).await,
            Command::Erase(args) => erase::run(args, cfg).await,
            Command::Suppress { command } => suppress::run(command, cfg).await,
            Command::Template { command } => template::run(command, cfg).await,
            Command::Warmup { command } => warmup::run(command, cfg).await,
            Command::Complaint(args) => complaint::run(args, cfg).await,
            Command::Bounce { command } => bounce::run(command, cfg).await,
            Command::Inbound => inbound::run(cfg).await,
            Command::CheckConfig => check_config::run(cfg),
        }
    }
}

/// A `--tenant` option, parsed.
fn tenant_id(id: &str) -> anyhow::Result<mailpipe_core::TenantId> {
    mailpipe_core::TenantId::parse(id).map_err(|e| anyhow::anyhow!("tenant id: {e}"))
}

/// An address given on the command line, parsed; `what` names it in the error.
fn address(what: &str, email: &str) -> anyhow::Result<mailpipe_core::EmailAddress> {
    mailpipe_core::EmailAddress::parse(email).map_err(|e| anyhow::anyhow!("{what}: {e}"))
}
