//! ARF complaint reports (RFC 5965), as a feedback-loop mailbox pipes them
//! in: the report is mapped to the message it is about, the recipient is
//! suppressed platform-wide for marketing (as an unsubscribe is), and a
//! `complaint` event is recorded. A report that cannot be used is kept, with its reason.

use mailpipe_core::{
    AppliesTo, CampaignId, EmailAddress, Event, EventType, JobId, Reason as SuppressionReason, Scope,
    Suppression, TenantId,
};
use mailpipe_queue::QueueError;
use mailpipe_queue::kafka::{KafkaEvents, KafkaSettings};
use mailpipe_store::{Store, StoreError};
use mailpipe_token::{RecipientHasher, ReferenceError, References};

/// Why a feedback report could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ArfError {
    #[error("not a MIME message")]
    NotMime,
    #[error("no message/feedback-report part (not an ARF report, RFC 5965)")]
    NotArf,
    #[error("the report's embedded original message carries no X-Mailpipe-Ref header")]
    NoReference,
    #[error("X-Mailpipe-Ref {0:?} is not tenant/job/tag")]
    BadReference(String),
    #[error("X-Mailpipe-Ref {0:?} was not made by this platform (its tag does not check out)")]
    Forged(String),
    #[error("no message {0} was sent by this platform")]
    UnknownMessage(String),
}

impl ArfError {
    pub fn reason(&self) -> &'static str {
        match self {
            ArfError::NotMime => "not_mime",
            ArfError::NotArf => "not_arf",
            ArfError::NoReference => "no_reference",
            ArfError::BadReference(_) => "bad_reference",
            ArfError::Forged(_) => "forged_reference",
            ArfError::UnknownMessage(_) => "unknown_message",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ComplaintError {
    /// The report is kept in `rejected_reports` for the operator.
    #[error("report rejected ({reason}): {0}; stored for inspection", reason = .0.reason())]
    Rejected(ArfError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Queue(#[from] QueueError),
}

/// The tenant and job of the original message inside an ARF report, read
/// only from the report's embedded original (its `message/rfc822` part or
/// `text/rfc822-headers` part), never from the free text around it, and
/// only if its tag checks out.
pub fn arf_reference(report: &[u8], references: &References) -> Result<(TenantId, JobId), ArfError> {
    let value = quoted_reference(report)?;
    references.verify(&value).map_err(|e| match e {
        ReferenceError::Malformed => ArfError::BadReference(value),
        ReferenceError::Forged => ArfError::Forged(value),
    })
}

/// The `X-Mailpipe-Ref` value the report's embedded original carries, not
/// yet checked.
fn quoted_reference(report: &[u8]) -> Result<String, ArfError> {
    use mail_parser::MimeHeaders;
    let msg = mail_parser::MessageParser::default().parse(report).ok_or(ArfError::NotMime)?;
    let is_feedback = msg.parts.iter().any(|p| p.is_content_type("message", "feedback-report"));
    if !is_feedback {
        return Err(ArfError::NotArf);
    }
    mailpipe_feedback::embedded_reference(&msg).ok_or(ArfError::NoReference)
}

/// Keeps a report that is unusable whatever the keys (not MIME, not ARF, no
/// reference), with its reason, and returns [`ComplaintError::Rejected`];
/// anything else is left for [`read_report`]. For a caller that cannot
/// check references (no keys configured) but must not lose a bad report.
pub async fn keep_if_unusable(store: &Store, report: &[u8]) -> Result<(), ComplaintError> {
    match quoted_reference(report) {
        Ok(_) => Ok(()),
        Err(e) => {
            store.reject_report(e.reason(), report).await?;
            Err(ComplaintError::Rejected(e))
        }
    }
}

/// The message a usable report is about, as the ledger has it.
#[derive(Debug, Clone)]
pub struct Reported {
    pub tenant: TenantId,
    pub job: JobId,
    pub campaign: CampaignId,
    /// The address, or `erased:<hash>` after an erasure.
    recipient: String,
}

impl Reported {
    /// The recipient as the ledger has it: the address, or `erased:<hash>`.
    pub fn recipient(&self) -> &str {
        &self.recipient
    }
}

/// Takes one report: maps it to its tenant and message, suppresses the
/// recipient platform-wide for marketing, records a `complaint` event
/// and, with `kafka`, publishes it. A report that cannot be used is stored
/// with its reason and [`ComplaintError::Rejected`] returned.
pub async fn complaint(
    store: &Store,
    hasher: &RecipientHasher,
    kafka: Option<&KafkaSettings>,
    report: &[u8],
) -> Result<(TenantId, JobId), ComplaintError> {
    let reported = read_report(store, &hasher.references(), report).await?;
    act_on(store, hasher, kafka, reported).await
}

/// The message `report` is about. A report that cannot be used is kept in
/// `rejected_reports` with its reason, and [`ComplaintError::Rejected`]
/// returned; nothing else changes.
pub async fn read_report(
    store: &Store,
    references: &References,
    report: &[u8],
) -> Result<Reported, ComplaintError> {
    match reported_message(store, references, report).await {
        Ok(found) => Ok(found),
        Err(e) => {
            store.reject_report(e.reason(), report).await?;
            Err(ComplaintError::Rejected(e))
        }
    }
}

/// Suppresses the recipient of a reported message platform-wide for
/// marketing, records a `complaint` event and, with `kafka`, publishes it.
pub async fn act_on(
    store: &Store,
    hasher: &RecipientHasher,
    kafka: Option<&KafkaSettings>,
    reported: Reported,
) -> Result<(TenantId, JobId), ComplaintError> {
    let events = match kafka {
        Some(settings) => Some(KafkaEvents::connect(settings).await?),
        None => None,
    };
    apply(store, hasher, events.as_ref(), reported, Effect::Complaint, true).await
}

/// What something that came back does to its send's recipient.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Effect {
    /// A spam complaint: marketing suppressed platform-wide, a `complaint`
    /// event.
    Complaint,
    /// The address takes no mail (a hard bounce after the relay accepted,
    /// or soft bounces past their limit): suppressed platform-wide for
    /// every category, a `bounced` event with `reason`.
    Bounce { reason: &'static str },
}

/// Applies `effect` to the recipient of `reported`: the suppression, then
/// the event in the store and, with `events`, on the events topic.
///
/// `platform_wide`: suppressed for every tenant, or (for what a tenant's
/// own DNS could have steered: a return path under its sending domain) in
/// the tenant's scope only.
pub async fn apply(
    store: &Store,
    hasher: &RecipientHasher,
    events: Option<&KafkaEvents>,
    reported: Reported,
    effect: Effect,
    platform_wide: bool,
) -> Result<(TenantId, JobId), ComplaintError> {
    let Reported { tenant, job, campaign, recipient } = reported;
    let recipient_ref = reported_recipient(hasher, &recipient);
    let scope = if platform_wide { Scope::Platform } else { Scope::Tenant(tenant.clone()) };
    // The event's discriminator keeps an asynchronous bounce apart from
    // the synchronous one a send may have had.
    // A complaint stops marketing, as an unsubscribe does; a hard bounce
    // every category.
    let (kept, applies_to, kind, reason, disc) = match effect {
        Effect::Complaint => {
            (SuppressionReason::Complaint, AppliesTo::Marketing, EventType::Complaint, "arf", "")
        }
        Effect::Bounce { reason } => {
            (SuppressionReason::HardBounce, AppliesTo::All, EventType::Bounced, reason, "async")
        }
    };
    let entry = Suppression::new(scope, recipient_ref, kept, applies_to).from_tenant(&tenant);
    store.add_suppression(&entry).await?;
    let mut e = Event::for_job(kind, &tenant, &campaign, &job, disc);
    e.recipient_ref = Some(recipient_ref.to_hex());
    e.reason = Some(reason.into());
    // The domain the send went out as and the provider it went to: the
    // breaker's figures per domain and per provider.
    (e.sender_domain, e.provider) = store.send_origin(tenant.as_str(), job.as_str()).await?;
    store.insert_events(std::slice::from_ref(&e)).await?;
    if let Some(events) = events {
        events.publish(std::slice::from_ref(&e)).await?;
    }
    Ok((tenant, job))
}

/// The keyed hash of a ledger row's recipient: an erased one's row holds
/// `erased:<hash>` already.
pub fn reported_recipient(hasher: &RecipientHasher, recipient: &str) -> mailpipe_core::RecipientRef {
    match recipient.strip_prefix("erased:").and_then(|h| h.parse().ok()) {
        Some(r) => r,
        None => hasher
            .hash(&EmailAddress::parse(recipient).map(|a| a.canonical()).unwrap_or(recipient.to_owned())),
    }
}

/// The send `tenant`/`job` as the ledger has it, for what came back to its
/// return path; `None` if the ledger has no such send.
pub async fn sent_message(
    store: &Store,
    tenant: &TenantId,
    job: &JobId,
) -> Result<Option<Reported>, StoreError> {
    let Some((recipient, campaign)) = store.ledger_recipient(tenant.as_str(), job.as_str()).await? else {
        return Ok(None);
    };
    let Ok(campaign) = CampaignId::parse(campaign) else { return Ok(None) };
    Ok(Some(Reported { tenant: tenant.clone(), job: job.clone(), campaign, recipient }))
}

/// The report's message, from its `X-Mailpipe-Ref` and the ledger.
async fn reported_message(
    store: &Store,
    references: &References,
    report: &[u8],
) -> Result<Reported, ArfError> {
    let (tenant, job) = arf_reference(report, references)?;
    let unknown = || ArfError::UnknownMessage(format!("{tenant}/{job}"));
    let (recipient, campaign) = store
        .ledger_recipient(tenant.as_str(), job.as_str())
        .await
        .map_err(|_| unknown())?
        .ok_or_else(unknown)?;
    let campaign = CampaignId::parse(campaign).map_err(|_| unknown())?;
    Ok(Reported { tenant, job, campaign, recipient })
}
