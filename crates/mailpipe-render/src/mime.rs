//! MIME assembly with mail-builder.

use mail_builder::MessageBuilder;
use mail_builder::headers::address::Address;
use mail_builder::headers::content_type::ContentType;
use mail_builder::headers::date::Date;
use mail_builder::headers::message_id::MessageId;
use mail_builder::headers::raw::Raw;
use mail_builder::headers::text::Text;
use mail_builder::mime::MimePart;
use mailpipe_core::{Category, SendJob};
use time::OffsetDateTime;

/// Everything that goes into one message.
pub(crate) struct Parts<'a> {
    pub job: &'a SendJob,
    pub message_id: &'a str,
    pub date: OffsetDateTime,
    pub subject: &'a str,
    pub html: Option<&'a str>,
    pub text: &'a str,
    pub list_unsubscribe: Option<&'a str>,
    /// The value of `X-Mailpipe-Ref`: tenant, job and a MAC
    /// ([`mailpipe_token::References`]), which maps a bounce or an ARF
    /// report that quotes our headers back to the exact send.
    pub reference: &'a str,
}

/// The value of `Feedback-ID`: `campaign:tenant:category:mailpipe`, the form
/// Gmail's feedback loop aggregates on, which also maps a complaint back to
/// its tenant.
pub fn feedback_id(job: &SendJob) -> String {
    format!("{}:{}:{}:mailpipe", job.campaign_id, job.tenant_id, job.category.as_str())
}

pub(crate) fn build(p: Parts<'_>) -> std::io::Result<Vec<u8>> {
    let job = p.job;
    let mut m = MessageBuilder::new()
        .from(Address::new_address(job.from.name.as_deref(), job.from.email.as_str()))
        .to(Address::new_address(job.to.name.as_deref(), job.to.email.as_str()))
        .subject(Text::new(p.subject))
        .message_id(MessageId::new(p.message_id))
        .date(Date::new(p.date.unix_timestamp()))
        .header("Feedback-ID", Raw::new(feedback_id(job)))
        .header("X-Mailpipe-Ref", Raw::new(p.reference));
    if let (Category::Marketing, Some(lu)) = (job.category, p.list_unsubscribe) {
        m = m
            .header("List-Unsubscribe", Raw::new(lu))
            .header("List-Unsubscribe-Post", Raw::new("List-Unsubscribe=One-Click"));
    }
    for (name, value) in &job.headers {
        // Values were checked for control characters when the job was parsed;
        // Text encodes non-ASCII as RFC 2047 words.
        m = m.header(name.as_str(), Text::new(value.as_str()));
    }
    // Bodies are encoded here (see qp.rs); mail-builder writes them as given.
    let part = |ctype: &'static str, body: &str| {
        MimePart::new(ContentType::new(ctype).attribute("charset", "utf-8"), crate::qp::encode(body))
            .transfer_encoding("quoted-printable")
    };
    m = match p.html {
        Some(html) => m.body(MimePart::new(
            "multipart/alternative",
            vec![part("text/plain", p.text), part("text/html", html)],
        )),
        None => m.body(part("text/plain", p.text)),
    };
    let mut out = Vec::with_capacity(p.text.len() + p.html.map_or(0, str::len) * 2 + 1024);
    m.write_to(&mut out)?;
    Ok(out)
}
