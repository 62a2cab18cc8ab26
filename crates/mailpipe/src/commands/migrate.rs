//! `mailpipe migrate`.

use std::process::ExitCode;

use crate::app;
use crate::config::Config;

pub async fn run(cfg: &Config) -> anyhow::Result<ExitCode> {
    println!("{}", app::migrate(cfg).await?);
    Ok(ExitCode::SUCCESS)
}
