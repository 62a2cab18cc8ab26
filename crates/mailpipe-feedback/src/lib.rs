//! What comes back to the platform's return paths, read per recipient.
//!
//! One entry point, [`read`], takes a whole message as it arrived (from
//! `mailpipe inbound`, or a file for `mailpipe bounce parse`) and says what
//! it reports about each recipient:
//!
//! - an RFC 5965 ARF complaint report: a [`Kind::Complaint`], about the
//!   recipient of the embedded original;
//! - an RFC 3464 delivery status notification (`message/delivery-status`):
//!   one [`Finding`] per recipient block, from its `Action`, `Status` and
//!   `Diagnostic-Code`;
//! - a non-standard bounce (qmail, Exim, old Sendmail, Exchange, providers'
//!   own formats): recognised by who sent it and what it is called, then
//!   read from its human-readable text ([`text`]);
//! - an RFC 3834 auto-reply (out of office, vacation): [`Kind::AutoReply`],
//!   never a bounce;
//! - anything else: one [`Kind::Unknown`] finding, for the operator.
//!
//! Every message is hostile input: nothing here trusts a header to name a
//! send. The reference to the send (`X-Mailpipe-Ref`, read only from an
//! embedded original) is returned unverified; the caller checks its MAC.
//! Classification is [`mailpipe_core::status::classify`], the one the SMTP
//! client uses too.
#![forbid(unsafe_code)]

mod dsn;
pub mod return_path;
mod text;

use mail_parser::{MessageParser, MimeHeaders, PartType};
use mailpipe_core::status::classify;
pub use mailpipe_core::status::{BounceReason, Kind, StatusCode};
pub use return_path::{BounceSettings, ReturnPaths};

/// How a finding was read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// An RFC 5965 feedback report.
    Arf,
    /// An RFC 3464 delivery status notification.
    Dsn,
    /// A bounce without a machine-readable part, read from its text.
    Text,
    /// An RFC 3834 automatic reply.
    AutoReply,
    /// Not recognised.
    None,
}

/// What a message reports about one recipient.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Finding {
    /// The address as the report gives it (lower-cased), if it gives one.
    pub recipient: Option<String>,
    pub status: Option<String>,
    pub reply_code: Option<u16>,
    pub kind: Kind,
    pub reason: BounceReason,
    /// The diagnostic text, as the reporter wrote it (one line, at most
    /// 300 characters). Holds addresses: not for logs at info level.
    pub diagnostic: Option<String>,
    /// `X-Mailpipe-Ref` of the embedded original, unverified.
    pub reference: Option<String>,
    pub source: Source,
    /// A DSN's `Action: delayed`: the reporter is still trying.
    pub delayed: bool,
}

impl Finding {
    fn new(source: Source, kind: Kind, reason: BounceReason) -> Self {
        Self {
            recipient: None,
            status: None,
            reply_code: None,
            kind,
            reason,
            diagnostic: None,
            reference: None,
            source,
            delayed: false,
        }
    }

    /// Classified from codes and text, the one way.
    fn classified(source: Source, status: Option<StatusCode>, reply: Option<u16>, text: &str) -> Self {
        let (kind, reason) = classify(status, reply, text);
        let mut f = Self::new(source, kind, reason);
        f.status = status.map(|s| s.to_string());
        f.reply_code = reply;
        f.diagnostic = one_line(text);
        f
    }
}

/// Why a message could not be read at all.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReadError {
    NotMime,
}

impl std::fmt::Display for ReadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("not an RFC 5322 message")
    }
}

impl std::error::Error for ReadError {}

/// The largest message [`read`] looks at; `mailpipe inbound` refuses larger
/// ones before reading them.
pub const MAX_MESSAGE_BYTES: usize = 10 << 20;

/// At most this many findings per message: a hostile report naming
/// thousands of recipients gets no further.
pub const MAX_FINDINGS: usize = 100;

/// Reads one message: at least one finding, each for one recipient.
pub fn read(raw: &[u8]) -> Result<Vec<Finding>, ReadError> {
    let raw = &raw[..raw.len().min(MAX_MESSAGE_BYTES)];
    let msg = MessageParser::default().parse(raw).ok_or(ReadError::NotMime)?;
    if msg.parts.is_empty() || msg.headers().is_empty() {
        return Err(ReadError::NotMime);
    }
    let reference = embedded_reference(&msg);
    let with_ref = |mut v: Vec<Finding>| {
        for f in &mut v {
            f.reference.clone_from(&reference);
        }
        v
    };
    if msg.parts.iter().any(|p| p.is_content_type("message", "feedback-report")) {
        return Ok(with_ref(vec![complaint(&msg)]));
    }
    if let Some(status) = msg.parts.iter().find(|p| p.is_content_type("message", "delivery-status")) {
        let found = dsn::read(status.text_contents().unwrap_or_default());
        if !found.is_empty() {
            return Ok(with_ref(found));
        }
    }
    if text::looks_like_bounce(&msg) {
        return Ok(with_ref(text::read(&msg)));
    }
    if auto_reply(&msg) {
        let mut f = Finding::new(Source::AutoReply, Kind::AutoReply, BounceReason::AutoReply);
        f.recipient = first_address(msg.from());
        return Ok(with_ref(vec![f]));
    }
    Ok(with_ref(vec![Finding::new(Source::None, Kind::Unknown, BounceReason::Other)]))
}

/// The `X-Mailpipe-Ref` of the original message a report embeds (its
/// `message/rfc822` or `text/rfc822-headers` part), never of the report
/// itself or of free text: a reporter can only quote what we sent.
pub fn embedded_reference(msg: &mail_parser::Message<'_>) -> Option<String> {
    let quoted = |m: &mail_parser::Message<'_>| m.header_raw("X-Mailpipe-Ref").map(|v| v.trim().to_owned());
    msg.parts.iter().skip(1).find_map(|p| match &p.body {
        PartType::Message(original) => quoted(original),
        _ if p.is_content_type("text", "rfc822-headers") => {
            let headers = p.text_contents()?;
            MessageParser::default().parse(headers.as_bytes()).and_then(|m| quoted(&m))
        }
        _ => None,
    })
}

/// An ARF report: the complaint is about the embedded original's recipient
/// (`Original-Rcpt-To` in the report, else the original's `To`).
fn complaint(msg: &mail_parser::Message<'_>) -> Finding {
    let mut f = Finding::new(Source::Arf, Kind::Complaint, BounceReason::Complaint);
    let report = msg.parts.iter().find(|p| p.is_content_type("message", "feedback-report"));
    let fields = report.and_then(|p| p.text_contents()).map(dsn::fields).unwrap_or_default();
    // RFC 6650's not-spam: the opposite of a complaint.
    if dsn::field(&fields, "feedback-type").is_some_and(|t| t.trim().eq_ignore_ascii_case("not-spam")) {
        f.kind = Kind::Unknown;
        f.reason = BounceReason::Other;
    }
    f.recipient = dsn::field(&fields, "original-rcpt-to").and_then(dsn::address);
    if f.recipient.is_none() {
        f.recipient = msg.parts.iter().skip(1).find_map(|p| match &p.body {
            PartType::Message(original) => first_address(original.to()),
            _ => None,
        });
    }
    f
}

/// RFC 3834: `Auto-Submitted` other than `no`, or the headers that
/// out-of-office software sets without it.
fn auto_reply(msg: &mail_parser::Message<'_>) -> bool {
    let header = |name: &str| msg.header_raw(name).map(|v| v.trim().to_ascii_lowercase());
    if header("Auto-Submitted").is_some_and(|v| !v.is_empty() && !v.starts_with("no")) {
        return true;
    }
    if header("X-Autoreply").is_some() || header("X-Autorespond").is_some() {
        return true;
    }
    if header("Precedence").is_some_and(|v| v == "auto_reply") {
        return true;
    }
    let subject = msg.subject().unwrap_or_default().to_lowercase();
    const PREFIXES: [&str; 9] = [
        "auto:",
        "automatic reply",
        "autoreply",
        "auto-reply",
        "out of office",
        "out of the office",
        "abwesenheitsnotiz",
        "réponse automatique",
        "respuesta automática",
    ];
    PREFIXES.iter().any(|p| subject.starts_with(p))
}

fn first_address(a: Option<&mail_parser::Address<'_>>) -> Option<String> {
    a?.first()?.address().map(|s| s.trim().to_ascii_lowercase()).filter(|s| s.contains('@'))
}

/// `text` on one line, at most 300 characters; `None` when empty.
fn one_line(text: &str) -> Option<String> {
    let s: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
    let s: String = s.chars().take(300).collect();
    (!s.is_empty()).then_some(s)
}
