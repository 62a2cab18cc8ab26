//! Logging and metrics set-up.

use std::sync::Arc;

use metrics_exporter_prometheus::PrometheusBuilder;
use tracing_subscriber::EnvFilter;

use crate::config::{LogConfig, LogFormat};

/// Starts tracing. `RUST_LOG` wins over the configured level; `quiet`
/// (a command that owns the terminal) lowers the default `info` to `warn`.
pub fn init_tracing(cfg: &LogConfig, quiet: bool) {
    let level = if quiet && cfg.level == "info" { "warn" } else { cfg.level.as_str() };
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new(format!("{level},rdkafka=warn,sqlx=warn")));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let _ = match cfg.format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Text => builder.try_init(),
    };
}

/// Renders the Prometheus exposition of the process's recorder.
pub type MetricsRender = Arc<dyn Fn() -> String + Send + Sync>;

/// Installs the Prometheus recorder and returns what renders it; `None` if
/// one is installed already.
pub fn init_metrics() -> Option<MetricsRender> {
    let handle = PrometheusBuilder::new()
        .set_buckets(&[0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0])
        .ok()?
        .install_recorder()
        .ok()?;
    Some(Arc::new(move || handle.render()))
}
