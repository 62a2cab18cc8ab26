//! SMTP dispatch for mailpipe.
//!
//! * [`Transport`] is the seam: the worker hands it an [`Envelope`] and signed
//!   bytes and gets a [`Reply`] or a [`DeliveryError`] that says in which
//!   [`Phase`] things went wrong.
//! * [`SmtpPool`] drives lettre's `AsyncSmtpConnection` over TCP streams we
//!   open ourselves with `TCP_NODELAY`, with a bounded, reused set of
//!   connections to one relay. (lettre's pooled transport leaves Nagle on and
//!   NOOPs on every checkout; see issue 3.)
//! * [`FileTransport`] writes `.eml` files, for the embedded demo.
//! * [`classify`] is the one exhaustive decision of what a result means.
//! * [`SmtpSettings`] is the `[smtp]` configuration section; [`open`] makes
//!   the transport it describes.
#![forbid(unsafe_code)]

mod classify;
mod file;
mod pool;
mod settings;

use std::future::Future;
use std::pin::Pin;

use mailpipe_core::EmailAddress;

pub use classify::{Disposition, classify, enforcement};
pub use file::FileTransport;
pub use pool::SmtpPool;
pub use settings::{OpenError, SmtpSettings, TlsMode, TransportKind, open};

/// Sender and one recipient: mailpipe sends one recipient per envelope.
#[derive(Debug, Clone)]
pub struct Envelope {
    pub from: EmailAddress,
    pub to: EmailAddress,
}

/// The step of the SMTP transaction a failure happened in. Only a failure in
/// [`Phase::Message`] can leave a message delivered without our knowing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Connect,
    Greeting,
    /// STARTTLS and the TLS handshake.
    Tls,
    /// AUTH to the relay.
    Auth,
    MailFrom,
    RcptTo,
    Data,
    /// Content sent, waiting for the final reply to `.`.
    Message,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Connect => "connect",
            Phase::Greeting => "greeting",
            Phase::Tls => "tls",
            Phase::Auth => "auth",
            Phase::MailFrom => "mail_from",
            Phase::RcptTo => "rcpt_to",
            Phase::Data => "data",
            Phase::Message => "message",
        }
    }
}

/// An SMTP reply: code, enhanced status code if any, and text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub code: u16,
    pub enhanced: Option<String>,
    pub text: String,
}

impl Reply {
    /// Splits an enhanced status code (`5.1.1`) off the front of the text.
    pub fn new(code: u16, text: &str) -> Self {
        let text = text.trim();
        let (enhanced, rest) = match text.split_once(' ') {
            Some((first, rest)) if is_enhanced(first) => (Some(first.to_owned()), rest),
            _ if is_enhanced(text) => (Some(text.to_owned()), ""),
            _ => (None, text),
        };
        Reply { code, enhanced, text: rest.trim().to_owned() }
    }

    pub fn to_event(&self) -> mailpipe_core::SmtpReply {
        mailpipe_core::SmtpReply {
            code: self.code,
            enhanced: self.enhanced.clone(),
            message: self.text.clone(),
        }
    }
}

impl std::fmt::Display for Reply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.enhanced {
            Some(e) => write!(f, "{} {} {}", self.code, e, self.text),
            None => write!(f, "{} {}", self.code, self.text),
        }
    }
}

fn is_enhanced(s: &str) -> bool {
    let mut parts = s.split('.');
    let class = parts.next();
    matches!(class, Some("2" | "4" | "5"))
        && parts.clone().count() == 2
        && parts.all(|p| !p.is_empty() && p.len() <= 3 && p.bytes().all(|b| b.is_ascii_digit()))
}

/// Why a delivery did not end in a positive reply.
#[derive(Debug, Clone, thiserror::Error)]
pub enum DeliveryError {
    /// The server answered 4xx or 5xx.
    #[error("{phase:?} rejected: {reply}", phase = phase.as_str())]
    Rejected { phase: Phase, reply: Reply },
    /// The connection failed, timed out or closed.
    #[error("{phase} i/o error: {detail}", phase = phase.as_str())]
    Io { phase: Phase, detail: String },
    /// The server sent something that is not SMTP.
    #[error("{phase} protocol error: {detail}", phase = phase.as_str())]
    Protocol { phase: Phase, detail: String },
    /// The message cannot be sent to this server at all (for example a UTF-8
    /// address to a server without SMTPUTF8).
    #[error("not sendable: {0}")]
    Unsendable(String),
    /// The caller's [`BeforeContent`] step failed, so the transaction was
    /// abandoned before any content went out.
    #[error("abandoned before the content was sent: {0}")]
    Abandoned(String),
}

/// A boxed future, so that `dyn Transport` works.
pub type SendFuture<'a> = Pin<Box<dyn Future<Output = Result<Reply, DeliveryError>> + Send + 'a>>;

/// Run by the transport at the commit point: the server has accepted the
/// recipient and answered 354 to DATA, and the content is about to go out.
/// The worker records "sending" here, so that only a failure after this
/// point leaves a job in doubt. If it fails, the transaction is abandoned
/// (the connection is dropped mid-DATA, which makes the server discard it).
pub type BeforeContent<'a> = Pin<Box<dyn Future<Output = Result<(), String>> + Send + 'a>>;

/// The seam between the worker and whatever carries mail.
pub trait Transport: Send + Sync {
    /// Delivers `message` (already signed) to the envelope recipient,
    /// awaiting `before_content` just before the content is sent.
    fn send<'a>(
        &'a self,
        envelope: &'a Envelope,
        message: &'a [u8],
        before_content: BeforeContent<'a>,
    ) -> SendFuture<'a>;

    /// A short name for logs and metrics.
    fn name(&self) -> &'static str;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reply_splits_enhanced_codes() {
        let r = Reply::new(550, "5.1.1 <x@y>: Recipient address rejected");
        assert_eq!(r.enhanced.as_deref(), Some("5.1.1"));
        assert_eq!(r.text, "<x@y>: Recipient address rejected");
        let r = Reply::new(250, "Ok");
        assert_eq!(r.enhanced, None);
        assert_eq!(r.to_string(), "250 Ok");
        let r = Reply::new(421, "4.7.0");
        assert_eq!(r.enhanced.as_deref(), Some("4.7.0"));
        assert_eq!(Reply::new(250, "2.0 ok").enhanced, None);
    }
}
