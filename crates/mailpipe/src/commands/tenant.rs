//! `mailpipe tenant add|key-create|key-revoke`.

use std::process::ExitCode;

use clap::Subcommand;
use mailpipe_core::UnsubscribeScope;

use super::tenant_id;
use crate::app;
use crate::config::Config;

#[derive(Subcommand)]
pub enum Command {
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

pub async fn run(command: Command, cfg: &Config) -> anyhow::Result<ExitCode> {
    match command {
        Command::Add { id, name, tenant_scoped_unsubscribes } => {
            let tenant = tenant_id(&id)?;
            let store = app::store(cfg).await?;
            store.upsert_tenant(&tenant, name.as_deref().unwrap_or(&id)).await?;
            let scope = if tenant_scoped_unsubscribes {
                UnsubscribeScope::Tenant
            } else {
                UnsubscribeScope::Platform
            };
            store.set_unsubscribe_scope(&tenant, scope).await?;
            // Token keys are platform keys from which each tenant's key is
            // derived: the registry records which ids exist when it is added.
            let key_ids: Vec<String> = cfg.tokens.keys.keys().cloned().collect();
            store.set_tenant_key_refs(&tenant, &key_ids.join(",")).await?;
            println!(
                "tenant {tenant} registered; add its sending domains with `mailpipe domain add {tenant} DOMAIN`"
            );
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
