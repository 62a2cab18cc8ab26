//! The send job, topic `mailpipe.send.v1`. See docs/schemas.md and
//! docs/schemas/send-job.v1.json.
//!
//! [`SendJob::from_json`] is the only way in: it turns untrusted bytes into a
//! typed job or a [`SendJobError`] whose [`reason`](SendJobError::reason) is
//! the dead-letter reason code.

use std::collections::BTreeMap;
use std::num::NonZeroU32;

use serde::{Deserialize, Serialize};

use crate::address::{AddressError, EmailAddress};
use crate::id::{CampaignId, IdError, JobId, TemplateId, TenantId};

/// Largest inline template (subject, html or text), in bytes.
pub const MAX_TEMPLATE_BYTES: usize = 256 * 1024;
/// The furthest ahead a job's `send_at` may be: a scheduled job waits in
/// the ledger, within its retention, not for ever.
pub const MAX_SCHEDULE_AHEAD: time::Duration = time::Duration::days(30);
/// Largest encoded job accepted from the queue.
pub const MAX_JOB_BYTES: usize = 1024 * 1024;
/// The most a job's `vars` may take, as JSON: what a template sees is
/// bounded before any template runs.
pub const MAX_VARS_BYTES: usize = 256 * 1024;
const MAX_HEADERS: usize = 32;
const MAX_TAGS: usize = 16;
const MAX_DISPLAY_NAME: usize = 256;

/// Marketing mail honours marketing unsubscribes; transactional mail
/// (verification, receipts, legal notices) does not.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Category {
    Marketing,
    Transactional,
}

impl Category {
    pub fn as_str(self) -> &'static str {
        match self {
            Category::Marketing => "marketing",
            Category::Transactional => "transactional",
        }
    }
}

/// A display name and an address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mailbox {
    pub email: EmailAddress,
    pub name: Option<String>,
}

/// Where the message body comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Content {
    /// Templates carried in the job itself. At least one of html and text.
    Inline { subject: String, html: Option<String>, text: Option<String> },
    /// A template registered for the job's campaign: the version given,
    /// or the latest when none is.
    Registered { id: TemplateId, version: Option<NonZeroU32> },
}

/// A validated send job.
#[derive(Debug, Clone, PartialEq)]
pub struct SendJob {
    pub job_id: JobId,
    pub tenant_id: TenantId,
    pub campaign_id: CampaignId,
    pub category: Category,
    pub from: Mailbox,
    pub to: Mailbox,
    pub content: Content,
    pub vars: serde_json::Map<String, serde_json::Value>,
    /// Extra headers, checked for injection and for clashes with the headers
    /// mailpipe owns. Names keep the caller's spelling.
    pub headers: BTreeMap<String, String>,
    pub tags: Vec<String>,
    /// Not before this time: until then the job waits on the retry
    /// schedule (held in the ledger, not in memory). A time past is now.
    pub send_at: Option<time::OffsetDateTime>,
}

/// Why a send job was refused. Every variant is a dead-letter case: the job
/// can never succeed as written, so it is not retried.
#[derive(Debug, thiserror::Error)]
pub enum SendJobError {
    #[error("job is {0} bytes, more than the 1 MiB limit")]
    TooLarge(usize),
    #[error("malformed job: {0}")]
    Malformed(#[from] serde_json::Error),
    #[error("{field}: {source}")]
    BadId {
        field: &'static str,
        #[source]
        source: IdError,
    },
    #[error("{field}: {source}")]
    BadAddress {
        field: &'static str,
        #[source]
        source: AddressError,
    },
    #[error("{field} contains CR, LF or another control character")]
    HeaderInjection { field: String },
    #[error("{field} is {size} bytes, more than the {MAX_TEMPLATE_BYTES}-byte limit")]
    OversizedTemplate { field: &'static str, size: usize },
    #[error("vars are {0} bytes as JSON, more than the {MAX_VARS_BYTES}-byte limit")]
    VarsTooLarge(usize),
    #[error("{0}")]
    Invalid(String),
}

impl SendJobError {
    /// A stable, low-cardinality reason code for the dead-letter record and metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            SendJobError::TooLarge(_) | SendJobError::VarsTooLarge(_) => "too_large",
            SendJobError::Malformed(_) => "malformed",
            SendJobError::BadId { .. } => "invalid_id",
            SendJobError::BadAddress { .. } => "invalid_address",
            SendJobError::HeaderInjection { .. } => "header_injection",
            SendJobError::OversizedTemplate { .. } => "oversized_template",
            SendJobError::Invalid(_) => "invalid",
        }
    }
}

/// The JSON shape on the wire. Unknown fields are refused so that a typo in a
/// scheduler (`"subjet"`) is a dead letter with a reason, not a blank subject.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SendJobWire {
    pub job_id: String,
    pub tenant_id: String,
    pub campaign_id: String,
    pub category: Category,
    pub from: MailboxWire,
    pub to: MailboxWire,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub html: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template_id: Option<String>,
    /// The registered version to render (with `template_id` only); the
    /// latest when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template_version: Option<NonZeroU32>,
    #[serde(default)]
    pub vars: serde_json::Map<String, serde_json::Value>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    /// RFC 3339, e.g. `2026-12-24T09:00:00Z`.
    #[serde(default, skip_serializing_if = "Option::is_none", with = "time::serde::rfc3339::option")]
    pub send_at: Option<time::OffsetDateTime>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MailboxWire {
    pub email: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// Headers that mailpipe sets itself; a job may not supply them.
const RESERVED_HEADERS: &[&str] = &[
    "from",
    "to",
    "cc",
    "bcc",
    "subject",
    "date",
    "message-id",
    "mime-version",
    "content-type",
    "content-transfer-encoding",
    "dkim-signature",
    "list-unsubscribe",
    "list-unsubscribe-post",
    "feedback-id",
    "x-mailpipe-ref",
    "return-path",
    "received",
    // What receivers and relays add, and who sent on whose behalf: a job
    // that supplied them could pose as a verdict or another sender.
    "sender",
    "authentication-results",
    "received-spf",
];

/// Prefixes no job header may start with: mailpipe's own, resent headers,
/// and the ARC chain.
const RESERVED_PREFIXES: &[&str] = &["x-mailpipe-", "resent-", "arc-"];

fn reserved(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    RESERVED_HEADERS.contains(&name.as_str()) || RESERVED_PREFIXES.iter().any(|p| name.starts_with(p))
}

fn no_control(field: impl Into<String>, s: &str) -> Result<(), SendJobError> {
    // Tab is legal folding white space in a header; CR and LF are how
    // injection happens; other controls have no business in a header.
    if s.chars().any(|c| c.is_control() && c != '\t') {
        return Err(SendJobError::HeaderInjection { field: field.into() });
    }
    Ok(())
}

fn mailbox(field: &'static str, w: MailboxWire) -> Result<Mailbox, SendJobError> {
    let email = EmailAddress::parse(&w.email).map_err(|source| SendJobError::BadAddress { field, source })?;
    if let Some(n) = &w.name {
        no_control(format!("{field}.name"), n)?;
        if n.len() > MAX_DISPLAY_NAME {
            return Err(SendJobError::Invalid(format!("{field}.name is too long")));
        }
    }
    Ok(Mailbox { email, name: w.name.filter(|n| !n.trim().is_empty()) })
}

fn id<T>(field: &'static str, r: Result<T, IdError>) -> Result<T, SendJobError> {
    r.map_err(|source| SendJobError::BadId { field, source })
}

fn template(field: &'static str, s: Option<String>) -> Result<Option<String>, SendJobError> {
    match s {
        Some(s) if s.len() > MAX_TEMPLATE_BYTES => {
            Err(SendJobError::OversizedTemplate { field, size: s.len() })
        }
        other => Ok(other),
    }
}

impl SendJob {
    /// Parses and validates the JSON value of a `mailpipe.send.v1` message.
    pub fn from_json(bytes: &[u8]) -> Result<Self, SendJobError> {
        if bytes.len() > MAX_JOB_BYTES {
            return Err(SendJobError::TooLarge(bytes.len()));
        }
        let wire: SendJobWire = serde_json::from_slice(bytes)?;
        Self::try_from(wire)
    }

    /// The wire form, for producers (the `enqueue` command, tests, benches).
    pub fn to_wire(&self) -> SendJobWire {
        let (subject, html, text, template_id, template_version) = match &self.content {
            Content::Inline { subject, html, text } => {
                (Some(subject.clone()), html.clone(), text.clone(), None, None)
            }
            Content::Registered { id, version } => (None, None, None, Some(id.to_string()), *version),
        };
        let mb = |m: &Mailbox| MailboxWire { email: m.email.to_string(), name: m.name.clone() };
        SendJobWire {
            job_id: self.job_id.to_string(),
            tenant_id: self.tenant_id.to_string(),
            campaign_id: self.campaign_id.to_string(),
            category: self.category,
            from: mb(&self.from),
            to: mb(&self.to),
            subject,
            html,
            text,
            template_id,
            template_version,
            vars: self.vars.clone(),
            headers: self.headers.clone(),
            tags: self.tags.clone(),
            send_at: self.send_at,
        }
    }

    /// Why the job's `send_at` cannot be kept as of `now`: further ahead than
    /// [`MAX_SCHEDULE_AHEAD`]. Checked where the time is known (the send
    /// API, the worker), not by the parser, which reads bytes only.
    pub fn schedule_error(&self, now: time::OffsetDateTime) -> Option<SendJobError> {
        let at = self.send_at?;
        (at - now > MAX_SCHEDULE_AHEAD).then(|| {
            SendJobError::Invalid(format!(
                "send_at is more than {} days ahead",
                MAX_SCHEDULE_AHEAD.whole_days()
            ))
        })
    }

    /// The Kafka key of the job: the recipient's domain, so that one consumer
    /// owns a domain and its rate limit.
    pub fn queue_key(&self) -> &str {
        self.to.email.domain()
    }
}

impl TryFrom<SendJobWire> for SendJob {
    type Error = SendJobError;

    fn try_from(w: SendJobWire) -> Result<Self, SendJobError> {
        let job_id = id("job_id", JobId::parse(w.job_id))?;
        let tenant_id = id("tenant_id", TenantId::parse(w.tenant_id))?;
        let campaign_id = id("campaign_id", CampaignId::parse(w.campaign_id))?;
        let from = mailbox("from", w.from)?;
        let to = mailbox("to", w.to)?;

        let subject = template("subject", w.subject)?;
        let html = template("html", w.html)?;
        let text = template("text", w.text)?;
        let content = match (w.template_id, subject, html, text) {
            (Some(t), None, None, None) => Content::Registered {
                id: id("template_id", TemplateId::parse(t))?,
                version: w.template_version,
            },
            (Some(_), ..) => {
                return Err(SendJobError::Invalid(
                    "give either template_id or inline subject/html/text, not both".into(),
                ));
            }
            (None, ..) if w.template_version.is_some() => {
                return Err(SendJobError::Invalid("template_version is given without template_id".into()));
            }
            (None, Some(_), None, None) => {
                return Err(SendJobError::Invalid("html or text is required".into()));
            }
            (None, Some(subject), html, text) => Content::Inline { subject, html, text },
            (None, None, ..) => {
                return Err(SendJobError::Invalid("subject is required when template_id is absent".into()));
            }
        };

        if w.headers.len() > MAX_HEADERS {
            return Err(SendJobError::Invalid(format!("more than {MAX_HEADERS} headers")));
        }
        for (name, value) in &w.headers {
            let valid_name = !name.is_empty()
                && name.len() <= 76
                && name.bytes().all(|b| b.is_ascii_graphic() && b != b':');
            if !valid_name {
                return Err(SendJobError::Invalid(format!("header name {name:?} is not valid")));
            }
            if reserved(name) {
                return Err(SendJobError::Invalid(format!(
                    "header {name:?} is set by mailpipe and may not be supplied"
                )));
            }
            no_control(format!("headers.{name}"), value)?;
            if value.len() > 998 {
                return Err(SendJobError::Invalid(format!("header {name:?} is too long")));
            }
        }
        if w.tags.len() > MAX_TAGS {
            return Err(SendJobError::Invalid(format!("more than {MAX_TAGS} tags")));
        }
        for t in &w.tags {
            no_control("tags", t)?;
            if t.is_empty() || t.len() > 64 {
                return Err(SendJobError::Invalid("a tag is empty or longer than 64".into()));
            }
        }

        if !w.vars.is_empty() {
            let size = serde_json::to_vec(&w.vars).map_or(usize::MAX, |v| v.len());
            if size > MAX_VARS_BYTES {
                return Err(SendJobError::VarsTooLarge(size));
            }
        }

        Ok(SendJob {
            job_id,
            tenant_id,
            campaign_id,
            category: w.category,
            from,
            to,
            content,
            vars: w.vars,
            headers: w.headers,
            tags: w.tags,
            send_at: w.send_at,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn send_at_is_rfc3339_and_optional() {
        let base = r#""job_id":"j","tenant_id":"t","campaign_id":"c","category":"marketing","from":{"email":"a@b.example"},"to":{"email":"c@d.example"},"subject":"s","text":"x""#;
        let at =
            SendJob::from_json(format!(r#"{{{base},"send_at":"2026-12-24T09:00:00+01:00"}}"#).as_bytes())
                .unwrap();
        assert_eq!(at.send_at.map(|t| t.unix_timestamp()), Some(1_798_099_200));
        let wire = serde_json::to_string(&at.to_wire()).unwrap();
        assert!(wire.contains(r#""send_at":"2026-12-24T09:00:00+01:00""#), "{wire}");
        assert_eq!(SendJob::from_json(format!("{{{base}}}").as_bytes()).unwrap().send_at, None);
        let e = SendJob::from_json(format!(r#"{{{base},"send_at":"tomorrow"}}"#).as_bytes()).unwrap_err();
        assert_eq!(e.reason(), "malformed");
        let now = time::OffsetDateTime::from_unix_timestamp(1_798_099_200).unwrap();
        assert!(at.schedule_error(now - time::Duration::days(30)).is_none(), "30 days ahead is kept");
        let e = at.schedule_error(now - time::Duration::days(31)).unwrap();
        assert_eq!(e.reason(), "invalid");
    }
    use serde_json::json;

    fn base() -> serde_json::Value {
        json!({
            "job_id": "j-1",
            "tenant_id": "acme",
            "campaign_id": "spring",
            "category": "marketing",
            "from": {"email": "news@acme.example", "name": "Acme"},
            "to": {"email": "jane@example.com"},
            "subject": "Hi {{ name }}",
            "html": "<p>Hello {{ name }}</p>",
            "vars": {"name": "Jane"},
            "headers": {"X-Campaign-Ref": "q2"},
            "tags": ["spring"]
        })
    }

    fn parse(v: serde_json::Value) -> Result<SendJob, SendJobError> {
        SendJob::from_json(&serde_json::to_vec(&v).unwrap())
    }

    #[test]
    fn parses_an_inline_job_and_round_trips() {
        let job = parse(base()).unwrap();
        assert_eq!(job.tenant_id.as_str(), "acme");
        assert_eq!(job.queue_key(), "example.com");
        assert!(matches!(job.content, Content::Inline { .. }));
        let again = SendJob::try_from(job.to_wire()).unwrap();
        assert_eq!(again, job);
    }

    #[test]
    fn parses_a_registered_template_job() {
        let mut v = base();
        let o = v.as_object_mut().unwrap();
        o.remove("subject");
        o.remove("html");
        o.insert("template_id".into(), json!("welcome"));
        let job = parse(v.clone()).unwrap();
        let welcome = TemplateId::parse("welcome").unwrap();
        assert_eq!(job.content, Content::Registered { id: welcome.clone(), version: None });

        v["template_version"] = json!(3);
        let pinned = parse(v.clone()).unwrap();
        assert_eq!(pinned.content, Content::Registered { id: welcome, version: NonZeroU32::new(3) });
        assert_eq!(SendJob::try_from(pinned.to_wire()).unwrap(), pinned, "the pin round-trips");

        for (bad, why) in
            [(json!(0), "versions start at 1"), (json!(-1), "negative"), (json!("3"), "a string")]
        {
            v["template_version"] = bad;
            assert_eq!(parse(v.clone()).unwrap_err().reason(), "malformed", "{why}");
        }
        let mut inline = base();
        inline["template_version"] = json!(2);
        let e = parse(inline).unwrap_err();
        assert_eq!(
            (e.reason(), e.to_string().as_str()),
            ("invalid", "template_version is given without template_id")
        );
    }

    #[test]
    fn each_bad_input_has_its_reason() {
        let cases: Vec<(serde_json::Value, &str)> = vec![
            (json!("not an object"), "malformed"),
            (
                {
                    let mut v = base();
                    v.as_object_mut().unwrap().remove("to");
                    v
                },
                "malformed",
            ),
            (
                {
                    let mut v = base();
                    v["subjet"] = json!("x");
                    v
                },
                "malformed",
            ),
            (
                {
                    let mut v = base();
                    v["category"] = json!("promo");
                    v
                },
                "malformed",
            ),
            (
                {
                    let mut v = base();
                    v["tenant_id"] = json!("a b");
                    v
                },
                "invalid_id",
            ),
            (
                {
                    let mut v = base();
                    v["to"]["email"] = json!("nope");
                    v
                },
                "invalid_address",
            ),
            (
                {
                    let mut v = base();
                    v["to"]["name"] = json!("Jane\r\nBcc: x@y.com");
                    v
                },
                "header_injection",
            ),
            (
                {
                    let mut v = base();
                    v["headers"]["X-Ok"] = json!("a\nb");
                    v
                },
                "header_injection",
            ),
            (
                {
                    let mut v = base();
                    v["headers"]["Subject"] = json!("x");
                    v
                },
                "invalid",
            ),
            (
                {
                    let mut v = base();
                    v["headers"]["X-Mailpipe-Ref"] = json!("globex/job-1/forged");
                    v
                },
                "invalid",
            ),
            (
                {
                    let mut v = base();
                    v["headers"]["ARC-Seal"] = json!("i=1");
                    v
                },
                "invalid",
            ),
            (
                {
                    let mut v = base();
                    v["headers"]["Sender"] = json!("ceo@bank.example");
                    v
                },
                "invalid",
            ),
            (
                {
                    let mut v = base();
                    v["html"] = json!("x".repeat(MAX_TEMPLATE_BYTES + 1));
                    v
                },
                "oversized_template",
            ),
            (
                {
                    let mut v = base();
                    v["vars"]["big"] = json!("x".repeat(MAX_VARS_BYTES));
                    v
                },
                "too_large",
            ),
            (
                {
                    let mut v = base();
                    v["template_id"] = json!("t");
                    v
                },
                "invalid",
            ),
            (
                {
                    let mut v = base();
                    v.as_object_mut().unwrap().remove("subject");
                    v
                },
                "invalid",
            ),
        ];
        for (v, want) in cases {
            let err = parse(v.clone()).expect_err(&v.to_string());
            assert_eq!(err.reason(), want, "{v}: {err}");
        }
    }

    #[test]
    fn oversized_jobs_are_refused_before_parsing() {
        let big = vec![b' '; MAX_JOB_BYTES + 1];
        assert_eq!(SendJob::from_json(&big).unwrap_err().reason(), "too_large");
    }
}
