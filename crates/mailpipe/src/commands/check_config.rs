//! `mailpipe check-config`: loading the configuration already checked it;
//! this says so, and what `worker` and `tracker` would still need.

use std::process::ExitCode;

use crate::config::Config;

pub fn run(cfg: &Config) -> anyhow::Result<ExitCode> {
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
