//! Stage 4: one SMTP attempt. The ledger says `sending` only from the
//! commit point on (after the server's 354 to DATA), so a crash before it is
//! a plain redelivery, not a job in doubt. The result is classified once,
//! by [`classify`], and the provider's "slow down" or success feeds the
//! throttle.

use std::time::Instant;

use mailpipe_core::SendJob;
use mailpipe_render::Composed;
use mailpipe_smtp::{DeliveryError, Disposition, Envelope, Reply, classify};
use mailpipe_store::Claim;
use tracing::debug;

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
}

impl Pipeline {
    pub(super) async fn deliver(&self, job: &SendJob, claim: &Claim, message: &Composed) -> Attempt {
        let envelope = Envelope { from: job.from.email.clone(), to: job.to.email.clone() };
        let number = claim.attempts.max(0) as u32 + 1;
        let commit_point = Box::pin(async {
            self.store
                .mark_sending(job.tenant_id.as_str(), job.job_id.as_str(), &message.message_id)
                .await
                .map_err(|e| e.to_string())
        });
        let started = Instant::now();
        let result = self.transport.send(&envelope, &message.bytes, commit_point).await;
        metrics::histogram!("mailpipe_send_duration_seconds").record(started.elapsed().as_secs_f64());
        let disposition = classify(&result);
        debug!(?disposition, attempt = number, "delivery attempt");
        if let Some(t) = &self.throttle {
            match &disposition {
                Disposition::Deferred { slow_down: true } => t.slow_down(job.to.email.domain()),
                Disposition::Delivered => t.recovered(job.to.email.domain()),
                _ => {}
            }
        }
        let reply = reply_of(&result);
        let last = reply
            .as_ref()
            .map(ToString::to_string)
            .or_else(|| result.as_ref().err().map(ToString::to_string));
        Attempt { number, disposition, reply, last }
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
