//! `[smtp]`: where mail goes. This type is the configuration section itself;
//! [`open`] turns it into the [`Transport`] it describes.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use mailpipe_core::units::secs;
use secrecy::SecretString;
use serde::Deserialize;

use crate::{DeliveryError, FileTransport, SmtpPool, Transport};

/// Which transport carries mail.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TransportKind {
    /// `.eml` files in `dir`: the embedded default.
    File,
    /// A relay at `host:port`.
    Smtp,
}

/// Whether to encrypt the connection to the relay with STARTTLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TlsMode {
    /// Plain text (a relay on the same host or a trusted network).
    None,
    /// STARTTLS when the relay offers it, plain text otherwise.
    Opportunistic,
    /// STARTTLS or no delivery: a relay that does not offer it, or whose
    /// certificate does not verify, defers the mail.
    Required,
}

#[derive(Debug, Clone, Deserialize)]
pub struct SmtpSettings {
    pub kind: TransportKind,
    /// Where `file` writes `.eml` files.
    pub dir: PathBuf,
    pub host: String,
    pub port: u16,
    /// Name sent in EHLO.
    pub hello_name: String,
    /// Most connections open at once to the relay.
    pub max_connections: usize,
    #[serde(rename = "connect_timeout_secs", deserialize_with = "secs")]
    pub connect_timeout: Duration,
    /// Per command (MAIL, RCPT, DATA).
    #[serde(rename = "command_timeout_secs", deserialize_with = "secs")]
    pub command_timeout: Duration,
    /// Waiting for the reply to the final `.`; RFC 5321 suggests 10 minutes.
    #[serde(rename = "data_timeout_secs", deserialize_with = "secs")]
    pub data_timeout: Duration,
    /// Idle connections older than this are closed instead of reused.
    #[serde(rename = "idle_timeout_secs", deserialize_with = "secs")]
    pub idle_timeout: Duration,
    pub tls: TlsMode,
    /// Send MAIL, RCPT and DATA in one write when the relay offers
    /// PIPELINING (RFC 2920), reading the replies in order.
    #[serde(default = "yes")]
    pub pipelining: bool,
    /// An extra trusted CA certificate (PEM), besides the system's.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// AUTH PLAIN or LOGIN after STARTTLS, when both are set.
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub password: Option<SecretString>,
}

fn yes() -> bool {
    true
}

/// Why the configured transport cannot be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("smtp.dir {0}")]
    Dir(PathBuf, #[source] std::io::Error),
    #[error("smtp.ca_file {0}")]
    CaFile(PathBuf, #[source] std::io::Error),
    #[error("smtp: {0}")]
    Tls(DeliveryError),
    #[error("SMTP relay {host}:{port} is not answering: {error}")]
    Unreachable { host: String, port: u16, error: DeliveryError },
}

/// The transport `settings` describe: the `.eml` directory (created), or a
/// connection pool to the relay, which must answer a probe first.
pub async fn open(settings: &SmtpSettings) -> Result<Arc<dyn Transport>, OpenError> {
    match settings.kind {
        TransportKind::File => Ok(Arc::new(
            FileTransport::new(&settings.dir).map_err(|e| OpenError::Dir(settings.dir.clone(), e))?,
        )),
        TransportKind::Smtp => {
            let pool = SmtpPool::new(settings.clone())?;
            pool.probe().await.map_err(|error| OpenError::Unreachable {
                host: settings.host.clone(),
                port: settings.port,
                error,
            })?;
            Ok(Arc::new(pool))
        }
    }
}
