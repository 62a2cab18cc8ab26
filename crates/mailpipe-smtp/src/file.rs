//! `.eml` files through lettre's file transport, for the embedded default.

use std::path::PathBuf;

use lettre::AsyncFileTransport;
use lettre::AsyncTransport as _;
use lettre::Tokio1Executor;

use crate::{BeforeContent, DeliveryError, Envelope, Phase, Reply, SendFuture, Transport};

/// Writes each message to `<dir>/<uuid>.eml`.
pub struct FileTransport {
    dir: PathBuf,
    inner: AsyncFileTransport<Tokio1Executor>,
}

impl FileTransport {
    pub fn new(dir: impl Into<PathBuf>) -> std::io::Result<Self> {
        let dir = dir.into();
        std::fs::create_dir_all(&dir)?;
        Ok(Self { inner: AsyncFileTransport::new(&dir), dir })
    }

    pub fn dir(&self) -> &std::path::Path {
        &self.dir
    }
}

pub(crate) fn lettre_envelope(e: &Envelope) -> Result<lettre::address::Envelope, DeliveryError> {
    let conv = |a: &mailpipe_core::EmailAddress| {
        a.as_str().parse::<lettre::Address>().map_err(|e| DeliveryError::Unsendable(e.to_string()))
    };
    lettre::address::Envelope::new(Some(conv(&e.from)?), vec![conv(&e.to)?])
        .map_err(|e| DeliveryError::Unsendable(e.to_string()))
}

impl Transport for FileTransport {
    fn send<'a>(
        &'a self,
        envelope: &'a Envelope,
        message: &'a [u8],
        before_content: BeforeContent<'a>,
    ) -> SendFuture<'a> {
        Box::pin(async move {
            let env = lettre_envelope(envelope)?;
            before_content.await.map_err(DeliveryError::Abandoned)?;
            let id = self
                .inner
                .send_raw(&env, message)
                .await
                .map_err(|e| DeliveryError::Io { phase: Phase::Message, detail: e.to_string() })?;
            Ok(Reply::new(250, &format!("2.0.0 written {id}.eml")))
        })
    }

    fn name(&self) -> &'static str {
        "file"
    }
}
