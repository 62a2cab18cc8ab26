//! Stage 1: may this job be sent at all? The tenant is registered, the
//! ledger claim is ours (a finished job is only re-announced), a job left in
//! doubt is resolved by policy, the tenant may send the job's category and
//! as its From domain, and the recipient is not suppressed.

use std::ops::ControlFlow;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use mailpipe_core::{Category, EventType, RecipientRef, SendJob, Suppressed, TenantId};
use mailpipe_domains::Permit;
use mailpipe_render::DkimKey;
use mailpipe_store::{Claim, ClaimRequest, LedgerStatus, TenantPolicy, Verdict};
use mailpipe_token::ReturnTag;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::{Infra, Outcome, Pipeline, Record, Step, durably, ended};
use crate::InDoubtPolicy;

/// A job that may be sent: its ledger claim, and the key it is signed with.
pub(super) struct Admitted {
    pub(super) claim: Claim,
    pub(super) signer: Arc<DkimKey>,
}

/// How long a worker trusts what it read of a tenant's policy.
const POLICY_TTL: Duration = Duration::from_secs(5);

impl Pipeline {
    pub(super) async fn admit(
        &self,
        rec: &Record<'_>,
        job: &SendJob,
        shutdown: &CancellationToken,
    ) -> Step<Admitted> {
        let Some(policy) = self.tenant_policy(&job.tenant_id, shutdown).await? else {
            return ended(
                self.reject(rec, Some(job), "unknown_tenant", "tenant is not registered", shutdown).await?,
            );
        };
        let recipient = self.recipient(job);
        let claim = self.claim(job, &recipient, shutdown).await?;
        if claim.status.is_terminal() {
            return ended(self.replay(rec, job, shutdown).await?);
        }
        if claim.scheduled && !rec.retry {
            // Deferred earlier and acknowledged late (a crash in between):
            // the retry schedule owns the job now.
            debug!("job is on the retry schedule; queue record acknowledged");
            return ended(Outcome::Scheduled);
        }
        if claim.status == LedgerStatus::Sending {
            self.counters.in_doubt.fetch_add(1, Ordering::Relaxed);
            metrics::counter!("mailpipe_jobs_in_doubt_total").increment(1);
            if self.cfg.in_doubt == InDoubtPolicy::AssumeDelivered {
                warn!("previous attempt died mid-transaction; recording as sent (in doubt) per policy");
                let mut ev = self.event(job, EventType::Sent, "");
                ev.message_id = claim.message_id.clone();
                ev.reason = Some("in_doubt".into());
                return ended(self.finish(job, LedgerStatus::Sent, None, ev, Outcome::Sent, shutdown).await?);
            }
        }
        // Transactional mail is exempt from marketing unsubscribes, so a
        // tenant may not simply declare it: the operator allows it.
        if job.category == Category::Transactional && !policy.transactional {
            metrics::counter!("mailpipe_category_refusals_total").increment(1);
            let detail = format!("tenant {} may not send transactional mail", job.tenant_id);
            return ended(self.reject(rec, Some(job), "category_not_allowed", &detail, shutdown).await?);
        }
        // Only a domain the job's own tenant may send as, signed with that
        // domain's key: never another tenant's domain or key.
        let domain = job.from.email.domain();
        let permit = durably("senders", shutdown, || async {
            match self.senders.permit_or_refresh(&self.store, &job.tenant_id, domain).await? {
                Permit::Sign(key) => Ok(Some(key)),
                Permit::Refused => Ok(None),
                // Not the job's fault: it waits, like for a store outage.
                Permit::KeyUnavailable => Err(Infra::KeyUnavailable(domain.to_owned())),
            }
        })
        .await?;
        let Some(signer) = permit else {
            metrics::counter!("mailpipe_sender_refusals_total").increment(1);
            let detail = format!("{domain} is not a verified sending domain of tenant {}", job.tenant_id);
            return ended(
                self.reject(rec, Some(job), "sender_domain_not_verified", &detail, shutdown).await?,
            );
        };
        // Suppression comes before rendering: a suppressed job costs one lookup.
        if let Some(s) = self.suppressed(job, &recipient, shutdown).await? {
            let mut ev = self.event(job, EventType::Suppressed, "");
            ev.reason = Some(s.reason.as_str().to_owned());
            ev.detail = Some(s.scope.kind().into());
            return ended(
                self.finish(job, LedgerStatus::Suppressed, None, ev, Outcome::Suppressed, shutdown).await?,
            );
        }
        ControlFlow::Continue(Admitted { claim, signer })
    }

    /// The suppression that stops this job, if any: the in-memory filter
    /// answers "certainly not", anything else is an exact lookup.
    async fn suppressed(
        &self,
        job: &SendJob,
        recipient: &RecipientRef,
        shutdown: &CancellationToken,
    ) -> Step<Option<Suppressed>> {
        match self.filter.as_ref().map(|f| f.check(recipient)) {
            Some(Verdict::Absent) => ControlFlow::Continue(None),
            Some(Verdict::Lookup) | None => {
                durably("suppression", shutdown, || async {
                    Ok(self.store.suppression(recipient, &job.tenant_id, job.category).await?)
                })
                .await
            }
        }
    }

    /// The keyed hash of the job's canonical address: how the suppression
    /// list and an erasure know the recipient.
    pub(super) fn recipient(&self, job: &SendJob) -> RecipientRef {
        self.composer.recipients().hash(&job.to.email.canonical())
    }

    /// Claims the job's ledger row (see [`mailpipe_store::Store::claim_job`]),
    /// in a batch with other jobs' claims.
    pub(super) async fn claim(
        &self,
        job: &SendJob,
        recipient: &RecipientRef,
        shutdown: &CancellationToken,
    ) -> Step<Claim> {
        let tag = self.new_return_tag();
        let tag = tag.as_ref().map(ReturnTag::as_str);
        durably("claim", shutdown, || async {
            Ok(self.ledger.claim(ClaimRequest::new(job, recipient, tag)).await?)
        })
        .await
    }

    /// What the operator allows `tenant`, or `None` if it is not
    /// registered. Registered tenants' policies are cached for
    /// [`POLICY_TTL`], so a change reaches every worker within it.
    async fn tenant_policy(
        &self,
        tenant: &TenantId,
        shutdown: &CancellationToken,
    ) -> Step<Option<TenantPolicy>> {
        if let Some((policy, at)) = self.tenants.lock().unwrap_or_else(|p| p.into_inner()).get(tenant)
            && at.elapsed() < POLICY_TTL
        {
            return ControlFlow::Continue(Some(*policy));
        }
        let policy =
            durably("tenant", shutdown, || async { Ok(self.store.tenant_policy(tenant).await?) }).await?;
        if let Some(p) = policy {
            self.tenants
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(tenant.clone(), (p, Instant::now()));
        }
        ControlFlow::Continue(policy)
    }
}
