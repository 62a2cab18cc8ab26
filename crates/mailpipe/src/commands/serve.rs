//! `mailpipe serve`: the single-node mode.

use std::process::ExitCode;

use crate::config::Config;
use crate::{app, telemetry};

pub async fn run(cfg: &Config) -> anyhow::Result<ExitCode> {
    app::run_serve(cfg, app::shutdown_token(), telemetry::init_metrics()).await?;
    Ok(ExitCode::SUCCESS)
}
