//! `mailpipe analytics`.

use std::process::ExitCode;

use crate::app;
use crate::config::Config;

pub async fn run(cfg: &Config) -> anyhow::Result<ExitCode> {
    app::run_analytics(cfg, app::shutdown_token()).await?;
    Ok(ExitCode::SUCCESS)
}
