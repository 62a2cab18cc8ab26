//! `mailpipe tenant add|transactional|key-create|key-revoke`.

use std::process::ExitCode;

use clap::Subcommand;

use super::tenant_id;
use crate::app;
use crate::config::Config;

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum Policy {
    Allow,
    Deny,
}

#[derive(Subcommand)]
pub enum Command {
    /// Register a tenant (or rename one). Jobs for unknown tenants are dead-lettered.
    Add {
        /// Tenant id: letters, digits, and . _ : - (at most 64).
        id: String,
        /// Display name.
        #[arg(long)]
        name: Option<String>,
        /// Let the tenant send transactional mail (receipts, account and
        /// legal notices), which marketing unsubscribes do not stop. Without
        /// it a new tenant's transactional jobs are dead-lettered
        /// `category_not_allowed`; an existing tenant keeps its setting.
        #[arg(long)]
        allow_transactional: bool,
    },
    /// Allow or deny a tenant transactional mail (workers apply it within
    /// seconds).
    Transactional {
        id: String,
        #[arg(value_enum)]
        policy: Policy,
    },
    /// Create an API key for a tenant; it is printed once and stored hashed.
    KeyCreate {
        id: String,
        #[arg(long, default_value = "default")]
        label: String,
    },
    /// Revoke an API key.
    KeyRevoke { key: String },
    /// Revoke the tenant's tracked links sent so far: their opens and
    /// clicks get 404 from every tracker within tokens.generation_refresh_secs;
    /// their unsubscribe links keep working. Other tenants are untouched.
    RevokeLinks { id: String },
    /// Show each tenant's marketing stream: active, or paused by the
    /// reputation breaker and why (docs/deliverability.md).
    Streams,
    /// Resume a tenant's paused marketing streams (every one, or only that
    /// of `--domain`): their held jobs go out (once each) as they come due;
    /// the breaker then reads only figures from after the resume.
    Resume {
        id: String,
        /// Only the stream of this sending domain.
        #[arg(long, conflicts_with = "provider")]
        domain: Option<String>,
        /// Only the stream of this mailbox provider (`google`, ...).
        #[arg(long)]
        provider: Option<String>,
    },
}

pub async fn run(command: Command, cfg: &Config) -> anyhow::Result<ExitCode> {
    match command {
        Command::Add { id, name, allow_transactional } => {
            let tenant = tenant_id(&id)?;
            let store = app::store(cfg).await?;
            store.upsert_tenant(&tenant, name.as_deref().unwrap_or(&id)).await?;
            if allow_transactional {
                store.set_transactional_allowed(&tenant, true).await?;
            }
            // Token keys are platform keys from which each tenant's key is
            // derived: the registry records which ids exist when it is added.
            let key_ids: Vec<String> = cfg.tokens.keys.keys().cloned().collect();
            store.set_tenant_key_refs(&tenant, &key_ids.join(",")).await?;
            println!(
                "tenant {tenant} registered; add its sending domains with `mailpipe domain add {tenant} DOMAIN`"
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Transactional { id, policy } => {
            let tenant = tenant_id(&id)?;
            let store = app::store(cfg).await?;
            let allowed = matches!(policy, Policy::Allow);
            if !store.set_transactional_allowed(&tenant, allowed).await? {
                anyhow::bail!("tenant {tenant} is not registered (mailpipe tenant add {tenant})");
            }
            println!("tenant {tenant}: transactional mail {}", if allowed { "allowed" } else { "denied" });
            Ok(ExitCode::SUCCESS)
        }
        Command::KeyCreate { id, label } => {
            let tenant = tenant_id(&id)?;
            let store = app::store(cfg).await?;
            if !store.tenant_exists(&tenant).await? {
                anyhow::bail!("tenant {tenant} is not registered (mailpipe tenant add {tenant})");
            }
            println!("{}", store.create_api_key(&tenant, &label).await?);
            eprintln!("API key for {tenant} created; it is shown only now");
            Ok(ExitCode::SUCCESS)
        }
        Command::Streams => {
            let store = app::store(cfg).await?;
            println!("tenant\tdomain\tprovider\tstate\tchanged_at\treason");
            for s in store.streams(None).await? {
                let reason = s.reason.as_deref().unwrap_or("-");
                let domain = s.domain.as_deref().unwrap_or("*");
                let provider = s.provider.as_deref().unwrap_or("*");
                println!("{}\t{domain}\t{provider}\t{}\t{}\t{reason}", s.tenant_id, s.state, s.changed_at);
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Resume { id, domain, provider } => {
            let tenant = tenant_id(&id)?;
            let store = app::store(cfg).await?;
            let now = mailpipe_core::now_ms();
            // As the events spell it: lowercase ASCII (punycode), no final dot.
            let domain = match domain.as_deref() {
                Some(d) => {
                    Some(mailpipe_core::Domain::parse(d).map_err(|e| anyhow::anyhow!("--domain: {e}"))?)
                }
                None => None,
            };
            let domain = domain.as_ref().map(|d| d.as_str().to_owned());
            let resumed = store.resume_streams(&tenant, domain.as_deref(), provider.as_deref(), now).await?;
            if resumed.is_empty() {
                match (&domain, &provider) {
                    (Some(d), _) => anyhow::bail!("tenant {tenant}'s stream as {d} is not paused"),
                    (None, Some(p)) => anyhow::bail!("tenant {tenant}'s stream to {p} is not paused"),
                    (None, None) => anyhow::bail!("tenant {tenant} has no paused stream"),
                }
            }
            let events: Vec<_> = resumed
                .iter()
                .map(|k| {
                    mailpipe_worker::breaker::stream_event(
                        mailpipe_core::EventType::StreamResumed,
                        k,
                        now,
                        None,
                    )
                })
                .collect();
            store.insert_events(&events).await?;
            if cfg.queue.kind == crate::config::QueueKind::Kafka {
                let out = mailpipe_queue::kafka::KafkaEvents::connect(&cfg.queue.kafka)
                    .await
                    .map_err(app::kafka_hint)?;
                out.publish(&events).await?;
            }
            for k in &resumed {
                println!("{k}: marketing stream resumed; held jobs go out as they come due");
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::RevokeLinks { id } => {
            let tenant = tenant_id(&id)?;
            let store = app::store(cfg).await?;
            let Some(generation) = store.revoke_links(&tenant).await? else {
                anyhow::bail!("tenant {tenant} is not registered, or its links were revoked 65535 times");
            };
            println!(
                "tenant {tenant}: links before generation {generation} revoked (unsubscribe links excepted)"
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::KeyRevoke { key } => {
            let store = app::store(cfg).await?;
            if store.revoke_api_key(&key).await? {
                println!("revoked");
                Ok(ExitCode::SUCCESS)
            } else {
                eprintln!("no such active key");
                Ok(ExitCode::FAILURE)
            }
        }
    }
}
