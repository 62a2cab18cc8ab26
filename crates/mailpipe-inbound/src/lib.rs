//! `mailpipe inbound`: the SMTP receiver for the platform's return paths
//! and its feedback-loop address, and what it does with what comes back.
//!
//! - [`smtp`] speaks SMTP to strangers: recipients are only return paths
//!   (`b-<tag>@<bounce domain>`) and the feedback address; bounded lines,
//!   messages, sessions and time; a message is acknowledged only once it
//!   has been acted on, so that a failure here (451) leaves it with the
//!   sending MTA, which tries again.
//! - [`Inbound`] reads each message ([`mailpipe_feedback::read`]), finds
//!   its send (the return path's tag in the ledger, or a MAC-checked
//!   reference in an embedded original: nothing else), and acts:
//!   - a hard bounce suppresses the address platform-wide for every
//!     category and records an asynchronous `bounced` event on the send;
//!   - soft bounces that say something about the address (a full mailbox,
//!     expiry) and that the reporter gave up on are counted once per send,
//!     and `soft_bounce_limit` sends within `soft_bounce_window_days`
//!     suppress it; ones about the sender (authentication, policy, content,
//!     rate) or a transient failure never do;
//!   - a bounce acts only from the null sender, and only about the send's
//!     own recipient (an expanded alias's member is not the recipient);
//!   - what comes back to a return path under a tenant's own sending domain
//!     (whose DNS the tenant controls) suppresses in that tenant's scope
//!     only; the platform's bounce domain and verified references act
//!     platform-wide;
//!   - a complaint suppresses and records a `complaint` event, as
//!     `mailpipe complaint` does;
//!   - auto-replies and delivery reports change nothing and are counted.
//!
//!   What names no send, or cannot be read, is kept in `rejected_reports`
//!   with its reason, for the operator.
#![forbid(unsafe_code)]

pub mod smtp;
pub mod tls;

use std::collections::HashSet;
use std::sync::{Arc, RwLock};

use mailpipe_analytics::complaint::{self, ComplaintError, Effect, Reported};
use mailpipe_core::status::{BounceReason, Kind};
use mailpipe_core::{EmailAddress, JobId, TenantId, now_ms};
use mailpipe_feedback::{Finding, ReturnPaths};
use mailpipe_queue::kafka::KafkaEvents;
use mailpipe_store::Store;
use mailpipe_token::{RecipientHasher, References, ReturnTag};
use tracing::{debug, info};

/// What [`Inbound`] acts with.
pub struct Inbound {
    store: Store,
    hasher: RecipientHasher,
    references: References,
    events: Option<KafkaEvents>,
    paths: ReturnPaths,
    feedback_address: Option<EmailAddress>,
    /// The domains the platform sends as, for `<label>.<domain>` return
    /// paths; refreshed by [`Inbound::refresh_sending_domains`].
    sending_domains: RwLock<HashSet<String>>,
    soft_bounce_limit: i64,
    soft_bounce_window_ms: i64,
}

/// Soft bounces that say something about the address, and so count
/// towards suppressing it; the others are about the sender.
fn counts_against_the_address(reason: BounceReason) -> bool {
    match reason {
        BounceReason::MailboxFull | BounceReason::Expired | BounceReason::Other => true,
        BounceReason::Transient
        | BounceReason::Policy
        | BounceReason::SpamContent
        | BounceReason::AuthenticationFailure
        | BounceReason::RateLimited
        | BounceReason::MessageTooLarge
        | BounceReason::UserUnknown
        | BounceReason::MailboxDisabled
        | BounceReason::HostUnknown
        | BounceReason::Complaint
        | BounceReason::AutoReply
        | BounceReason::Delivered => false,
    }
}

impl Inbound {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        store: Store,
        hasher: RecipientHasher,
        events: Option<KafkaEvents>,
        paths: ReturnPaths,
        feedback_address: Option<EmailAddress>,
        soft_bounce_limit: u32,
        soft_bounce_window_days: u32,
    ) -> Self {
        Self {
            store,
            references: hasher.references(),
            hasher,
            events,
            paths,
            feedback_address,
            sending_domains: RwLock::new(HashSet::new()),
            soft_bounce_limit: i64::from(soft_bounce_limit),
            soft_bounce_window_ms: i64::from(soft_bounce_window_days) * 86_400_000,
        }
    }

    /// Reads the domains the platform sends as again.
    pub async fn refresh_sending_domains(&self) -> Result<(), mailpipe_store::StoreError> {
        let all = self.store.sending_domains(None).await?;
        let set = all.into_iter().map(|d| d.domain.as_str().to_owned()).collect();
        *self.sending_domains.write().unwrap_or_else(|p| p.into_inner()) = set;
        Ok(())
    }

    fn is_sending_domain(&self, domain: &str) -> bool {
        self.sending_domains.read().unwrap_or_else(|p| p.into_inner()).contains(domain)
    }

    fn tag_of(&self, rcpt: &EmailAddress) -> Option<ReturnTag> {
        self.paths.tag_of(rcpt, |d| self.is_sending_domain(d))
    }

    /// Acts on one message that came from `sender` (empty: the null path)
    /// to `rcpts`.
    pub async fn take(
        &self,
        sender: &str,
        rcpts: &[EmailAddress],
        message: &[u8],
    ) -> Result<(), ComplaintError> {
        let findings = match mailpipe_feedback::read(message) {
            Ok(f) => f,
            Err(_) => return self.keep(Kind::Unknown, "not_mime", message).await,
        };
        // The send: by the return path's tag, else by a reference whose
        // MAC checks out. A tag that names no send is kept for the operator.
        let tagged = rcpts.iter().find_map(|r| self.tag_of(r).map(|t| (t, r)));
        let send = match &tagged {
            Some((t, _)) => match self.store.job_for_return_tag(t.as_str()).await? {
                Some((tenant, job)) => parse_ids(&tenant, &job),
                None => return self.keep(Kind::Unknown, "unknown_return_path", message).await,
            },
            None => findings
                .iter()
                .find_map(|f| f.reference.as_deref())
                .and_then(|r| self.references.verify(r).ok()),
        };
        // A return path under a tenant's own sending domain is one whose DNS
        // the tenant controls: what comes back there acts in its scope only.
        let platform_wide = tagged.is_none_or(|(_, r)| r.domain().eq_ignore_ascii_case(self.paths.domain()));
        let reported = match &send {
            Some((tenant, job)) => complaint::sent_message(&self.store, tenant, job).await?,
            None => None,
        };
        let mut kept = None;
        for f in &findings {
            if let Err(why) = self.act(sender, f, reported.as_ref(), platform_wide).await? {
                kept.get_or_insert(why);
            }
        }
        match kept {
            Some(why) => self.keep(Kind::Unknown, why, message).await,
            None => Ok(()),
        }
    }

    /// Keeps a message that could not be used (at most its first 64 KiB),
    /// once, with the reason.
    async fn keep(&self, kind: Kind, why: &'static str, message: &[u8]) -> Result<(), ComplaintError> {
        counted(kind, why);
        self.store.reject_report(why, &message[..message.len().min(64 << 10)]).await?;
        Ok(())
    }

    /// Acts on one finding; `Ok(Err(why))` when it should have acted but
    /// cannot, and the message is to be kept.
    async fn act(
        &self,
        sender: &str,
        f: &Finding,
        reported: Option<&Reported>,
        platform_wide: bool,
    ) -> Result<Result<(), &'static str>, ComplaintError> {
        counted(f.kind, f.reason.as_str());
        let bounce = matches!(f.kind, Kind::HardBounce | Kind::SoftBounce);
        // Bounces come from the null path (RFC 5321 4.5.5); a "bounce" sent
        // with a sender is someone's message about one.
        if bounce && !sender.is_empty() {
            return Ok(Err("bounce_with_sender"));
        }
        let effect = match f.kind {
            Kind::HardBounce => Some(Effect::Bounce { reason: f.reason.as_str() }),
            Kind::Complaint => Some(Effect::Complaint),
            // Soft bounces about the address count, once per send, when the
            // reporter has given up (not a delay warning).
            Kind::SoftBounce if counts_against_the_address(f.reason) && !f.delayed => match reported {
                Some(r) => {
                    if !self.same_recipient(f, r) {
                        return Ok(Err("recipient_mismatch"));
                    }
                    let recipient = complaint::reported_recipient(&self.hasher, r.recipient());
                    let send = format!("{}/{}", r.tenant, r.job);
                    let n = self
                        .store
                        .record_soft_bounce(&recipient, &send, now_ms(), self.soft_bounce_window_ms)
                        .await?;
                    (n >= self.soft_bounce_limit).then_some(Effect::Bounce { reason: "soft_bounce_limit" })
                }
                None => None,
            },
            Kind::SoftBounce | Kind::AutoReply | Kind::Delivered | Kind::Unknown => None,
        };
        let Some(effect) = effect else { return Ok(Ok(())) };
        // A bounce or complaint that names no send of ours: nothing to
        // suppress on its word alone.
        let Some(reported) = reported else { return Ok(Err("no_send")) };
        // A bounce about someone other than the send's recipient (an alias
        // or forward expanded on the way) says nothing about the recipient.
        if bounce && !self.same_recipient(f, reported) {
            return Ok(Err("recipient_mismatch"));
        }
        let (tenant, job) = complaint::apply(
            &self.store,
            &self.hasher,
            self.events.as_ref(),
            reported.clone(),
            effect,
            platform_wide,
        )
        .await?;
        info!(%tenant, %job, kind = f.kind.as_str(), reason = f.reason.as_str(), platform_wide, "inbound: acted on what came back");
        Ok(Ok(()))
    }

    /// Whether the finding is about the send's recipient: the same keyed
    /// hash of the canonical address (the ledger may hold only the hash,
    /// after an erasure). A finding that names nobody is taken to be about
    /// the send its return path names.
    fn same_recipient(&self, f: &Finding, r: &Reported) -> bool {
        let Some(named) = f.recipient.as_deref().and_then(|a| EmailAddress::parse(a).ok()) else {
            return true;
        };
        self.hasher.hash(&named.canonical()) == complaint::reported_recipient(&self.hasher, r.recipient())
    }

    /// Whether mail to `rcpt` is taken: the feedback address, or a return
    /// path whose tag names a send in the ledger. A made-up tag is refused
    /// at RCPT, before any message is read or kept.
    pub async fn accepts(&self, rcpt: &EmailAddress) -> smtp::Recipient {
        if self.feedback_address.as_ref().is_some_and(|f| f.as_str().eq_ignore_ascii_case(rcpt.as_str())) {
            return smtp::Recipient::Ours;
        }
        let Some(tag) = self.tag_of(rcpt) else { return smtp::Recipient::NotOurs };
        match self.store.job_for_return_tag(tag.as_str()).await {
            Ok(Some(_)) => smtp::Recipient::Ours,
            Ok(None) => {
                counted(Kind::Unknown, "unknown_return_path");
                smtp::Recipient::NotOurs
            }
            Err(e) => {
                tracing::warn!(error = %e, "inbound: cannot look up a return path; 451");
                smtp::Recipient::TryLater
            }
        }
    }
}

fn parse_ids(tenant: &str, job: &str) -> Option<(TenantId, JobId)> {
    Some((TenantId::parse(tenant).ok()?, JobId::parse(job).ok()?))
}

fn counted(kind: Kind, reason: &str) {
    debug!(kind = kind.as_str(), reason, "inbound: read");
    metrics::counter!("mailpipe_inbound_findings_total", "kind" => kind.as_str(), "reason" => reason.to_owned())
        .increment(1);
}

impl smtp::Accept for Inbound {
    async fn accepts(&self, rcpt: &EmailAddress) -> smtp::Recipient {
        Inbound::accepts(self, rcpt).await
    }
}

impl smtp::Deliver for Inbound {
    async fn deliver(
        &self,
        sender: String,
        rcpts: Vec<EmailAddress>,
        message: Vec<u8>,
    ) -> Result<(), String> {
        self.take(&sender, &rcpts, &message).await.map_err(|e| e.to_string())
    }
}

/// Serves `listener` with `inbound` until `shutdown`, re-reading the
/// sending domains every minute.
pub async fn run(
    listener: tokio::net::TcpListener,
    limits: smtp::Limits,
    inbound: Arc<Inbound>,
    shutdown: tokio_util::sync::CancellationToken,
) {
    let refresher = {
        let (inbound, shutdown) = (inbound.clone(), shutdown.clone());
        tokio::spawn(async move {
            loop {
                if let Err(e) = inbound.refresh_sending_domains().await {
                    tracing::warn!(error = %e, "inbound: cannot read the sending domains; keeping the last");
                }
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(std::time::Duration::from_secs(60)) => {}
                }
            }
        })
    };
    smtp::serve(listener, limits, inbound.clone(), inbound, shutdown).await;
    let _ = refresher.await;
}
