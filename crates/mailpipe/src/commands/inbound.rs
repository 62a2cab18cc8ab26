//! `mailpipe inbound`: the SMTP receiver for return paths and the feedback
//! loop (docs/bounces.md).

use std::process::ExitCode;

use crate::config::Config;
use crate::{app, telemetry};

pub async fn run(cfg: &Config) -> anyhow::Result<ExitCode> {
    app::run_inbound(cfg, app::shutdown_token(), telemetry::init_metrics()).await?;
    Ok(ExitCode::SUCCESS)
}
