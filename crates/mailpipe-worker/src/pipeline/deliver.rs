//! Stage 4: one SMTP attempt. The ledger says `sending` only from the
//! commit point on (after the server's 354 to DATA), so a crash before it is
//! a plain redelivery, not a job in doubt. The result is classified once,
//! by [`classify`], and the provider's "slow down" or success feeds the
//! throttle.

use std::time::Instant;

use mailpipe_core::{SendJob, redact_addresses};
use mailpipe_render::Composed;
use mailpipe_smtp::{DeliveryError, Disposition, Envelope, Reply, classify, enforcement};
use mailpipe_store::{Claim, SendingMark};
use tracing::{debug, warn};

use super::Pipeline;

/// What one delivery attempt came to.
pub(super) struct Attempt {
    /// 1 for the first attempt.
    pub(super) number: u32,
    pub(super) disposition: Disposition,
    /// The server's reply, when there was one.
    pub(super) reply: Option<Reply>,
    /// The reply or the error, as the ledger keeps it.
    pub(super) last: Option<String>,
    /// Another attempt of the job (a second record of it) reached the
    /// commit point first: this one sent nothing and must record nothing.
    pub(super) superseded: bool,
    /// What became of this attempt's `sending` mark.
    pub(super) mark: Mark,
}

/// An attempt's `sending` mark, as far as the attempt knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Mark {
    /// Never written: the attempt did not reach the commit point.
    NotWritten,
    /// Applied: the row is `sending` with this attempt's number, and no
    /// other attempt can have marked it since.
    Applied,
    /// The write failed: it may have committed all the same (an answer
    /// lost with its connection).
    Unknown,
}

/// Why a commit point refuses to let content go out.
const SUPERSEDED: &str = "another attempt of this job is under way";

impl Pipeline {
    pub(super) async fn deliver(&self, job: &SendJob, claim: &Claim, message: &Composed) -> Attempt {
        let envelope = Envelope { from: self.envelope_from(job, claim), to: job.to.email.clone() };
        let number = claim.attempts.max(0) as u32 + 1;
        let superseded = std::sync::atomic::AtomicBool::new(false);
        // 0: not written, 1: applied, 2: unknown.
        let mark_state = std::sync::atomic::AtomicU8::new(0);
        let commit_point = Box::pin(async {
            let mark = SendingMark {
                tenant_id: job.tenant_id.as_str().to_owned(),
                job_id: job.job_id.as_str().to_owned(),
                message_id: message.message_id.clone(),
                status: claim.status,
                attempts: claim.attempts,
            };
            match self.ledger.mark_sending(mark).await {
                Ok(true) => {
                    mark_state.store(1, std::sync::atomic::Ordering::Relaxed);
                    Ok(())
                }
                Ok(false) => {
                    superseded.store(true, std::sync::atomic::Ordering::Relaxed);
                    Err(SUPERSEDED.to_owned())
                }
                Err(e) => {
                    mark_state.store(2, std::sync::atomic::Ordering::Relaxed);
                    Err(e.to_string())
                }
            }
        });
        let started = Instant::now();
        let result = self.transport.send(&envelope, &message.bytes, commit_point).await;
        metrics::histogram!("mailpipe_send_duration_seconds").record(started.elapsed().as_secs_f64());
        let disposition = classify(&result);
        debug!(?disposition, attempt = number, "delivery attempt");
        if let Err(DeliveryError::Rejected { reply, .. }) = &result
            && enforcement(reply)
        {
            // A provider refusing the sending domain's authentication: an
            // alert for that domain, per provider group (both bounded sets).
            let provider = self.provider(job.to.email.domain());
            let domain = job.from.email.domain().to_owned();
            metrics::counter!("mailpipe_provider_enforcement_total", "domain" => domain.clone(), "provider" => provider.to_string())
                .increment(1);
            warn!(%domain, provider = &*provider, status = reply.enhanced.as_deref().unwrap_or(""), "a mailbox provider refuses the sending domain's authentication");
        }
        if let Some(t) = &self.throttle {
            // Under the key it was paced by: its provider's, found by MX.
            let group = self.group(job.to.email.domain());
            let key = t.key_for(job.to.email.domain(), group.as_deref());
            match &disposition {
                Disposition::Deferred { slow_down: true } => t.slow_down(key),
                Disposition::Delivered => t.recovered(key),
                _ => {}
            }
        }
        // Servers echo the recipient in their replies: the text is redacted
        // here, before the ledger or any topic sees it.
        let reply = reply_of(&result).map(|mut r| {
            r.text = redact_addresses(&r.text).into_owned();
            r
        });
        let last = reply
            .as_ref()
            .map(ToString::to_string)
            .or_else(|| result.as_ref().err().map(|e| redact_addresses(&e.to_string()).into_owned()));
        let superseded = superseded.load(std::sync::atomic::Ordering::Relaxed);
        let mark = match mark_state.load(std::sync::atomic::Ordering::Relaxed) {
            0 => Mark::NotWritten,
            1 => Mark::Applied,
            _ => Mark::Unknown,
        };
        Attempt { number, disposition, reply, last, superseded, mark }
    }
}

fn reply_of(r: &Result<Reply, DeliveryError>) -> Option<Reply> {
    match r {
        Ok(reply) => Some(reply.clone()),
        Err(DeliveryError::Rejected { reply, .. }) => Some(reply.clone()),
        Err(
            DeliveryError::Io { .. }
            | DeliveryError::Protocol { .. }
            | DeliveryError::Unsendable(_)
            | DeliveryError::Abandoned(_),
        ) => None,
    }
}
