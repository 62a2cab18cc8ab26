//! `mailpipe topics`: creates the send, events and dead-letter topics if
//! they are missing, and sets each one's retention from
//! `[queue.kafka.topics]`.

use std::process::ExitCode;

use crate::app;
use crate::config::Config;

pub async fn run(cfg: &Config) -> anyhow::Result<ExitCode> {
    let reports = mailpipe_queue::topics::ensure(&cfg.queue.kafka).await.map_err(app::queue_error)?;
    for r in reports {
        println!("{r}");
    }
    Ok(ExitCode::SUCCESS)
}
