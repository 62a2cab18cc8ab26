//! Stage 5: the outcome, durably. A terminal outcome is the ledger row and
//! its event in one transaction, then the event published; a deferral puts
//! the job on the durable retry schedule; a job that cannot succeed is
//! dead-lettered. The helpers here also end jobs for the earlier stages.

use std::ops::ControlFlow;
use std::time::Duration;

use mailpipe_core::{Event, EventType, Reason, SendJob, Suppression, now_ms};
use mailpipe_render::Composed;
use mailpipe_smtp::{Disposition, Reply};
use mailpipe_store::{Claim, DeadLetter, LedgerStatus, OutcomeRecord};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::deliver::{Attempt, Mark};
use super::{EventOut, Outcome, Pipeline, Record, Step, durably};
use crate::InDoubtPolicy;

impl Pipeline {
    pub(super) async fn settle(
        &self,
        rec: &Record<'_>,
        job: &SendJob,
        claim: &Claim,
        message: &Composed,
        attempt: Attempt,
        shutdown: &CancellationToken,
    ) -> Step<Outcome> {
        let ev = |kind, disc: &str| {
            let mut e = self.event(job, kind, disc);
            e.message_id = Some(message.message_id.clone());
            e.attempt = Some(attempt.number);
            e.smtp = attempt.reply.as_ref().map(Reply::to_event);
            e
        };
        let last = attempt.last.as_deref();
        match attempt.disposition {
            Disposition::Delivered => {
                return self
                    .finish(job, LedgerStatus::Sent, last, ev(EventType::Sent, ""), Outcome::Sent, shutdown)
                    .await;
            }
            Disposition::InDoubt => {
                self.counters.in_doubt.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                metrics::counter!("mailpipe_jobs_in_doubt_total").increment(1);
                if self.cfg.in_doubt == InDoubtPolicy::AssumeDelivered {
                    let mut e = ev(EventType::Sent, "");
                    e.reason = Some("in_doubt".into());
                    return self.finish(job, LedgerStatus::Sent, last, e, Outcome::Sent, shutdown).await;
                }
                // Retry policy: a deferral, below.
            }
            Disposition::Bounced { suppress } => {
                let mut e = ev(EventType::Bounced, "");
                e.reason =
                    Some(if suppress { bad_address(attempt.reply.as_ref()) } else { "rejected" }.into());
                if suppress {
                    let recipient = self.composer.recipients().hash(&job.to.email.canonical());
                    let entry = Suppression::hard_bounce(&job.tenant_id, recipient);
                    durably("suppress", shutdown, || async { Ok(self.store.add_suppression(&entry).await?) })
                        .await?;
                    e.recipient_ref = Some(recipient.to_hex());
                }
                return self.finish(job, LedgerStatus::Bounced, last, e, Outcome::Bounced, shutdown).await;
            }
            Disposition::DeadLetter { reason } => {
                return self.reject(rec, Some(job), reason, last.unwrap_or_default(), shutdown).await;
            }
            Disposition::Deferred { .. } => {}
        }

        // Deferred (or in doubt under the retry policy): onto the durable
        // retry schedule, unless the job is out of attempts or too old.
        let delay = self.cfg.retry_backoff().jittered(attempt.number);
        // Its age from its first attempt: a job held before that (by its
        // send_at, a warm-up cap, a paused stream, a rate limit) waited on
        // us, not on the receiver. This attempt is the first when the claim
        // read none; a job attempted before migration 0030 keeps its claim.
        let now = now_ms();
        let since = match (claim.first_attempt_ms, claim.attempts) {
            (Some(first), _) => first,
            (None, 0) => now,
            (None, _) => claim.created_at_ms,
        };
        let age = Duration::from_millis((now - since).max(0) as u64);
        if attempt.number >= self.cfg.max_attempts || age + delay > self.cfg.max_age {
            let mut e = ev(EventType::Failed, "");
            let why = if attempt.number >= self.cfg.max_attempts { "max_attempts" } else { "max_age" };
            e.reason = Some(why.into());
            return self.finish(job, LedgerStatus::Failed, last, e, Outcome::Failed, shutdown).await;
        }
        let due = now_ms() + delay.as_millis() as i64;
        let e = ev(EventType::Deferred, &attempt.number.to_string());
        // Only over the row as this attempt left it. Otherwise another
        // attempt of the job (after a rebalance) has marked or sent it
        // meanwhile, and a deferral would send it again: answer by that
        // attempt's outcome instead, as a superseded attempt does.
        // A mark whose write failed may have committed: then the row is
        // `sending` by this attempt, or (rarer still: a rebalance at the same
        // moment) by another from the same claim, which this cannot tell
        // apart. Taking it for ours risks a duplicate only if that other
        // attempt also dies before its outcome; taking it for another's
        // would leave a job never sent in doubt (and, by default, `sent`).
        let (claimed, own_mark) =
            ((claim.status, claim.attempts), (LedgerStatus::Sending, claim.attempts + 1));
        let expect: &[(LedgerStatus, i32)] = match attempt.mark {
            Mark::NotWritten => &[claimed],
            Mark::Applied => &[own_mark],
            Mark::Unknown => &[claimed, own_mark],
        };
        let deferred = durably("record_deferral", shutdown, || async {
            Ok(self
                .store
                .defer_attempt(
                    job.tenant_id.as_str(),
                    job.job_id.as_str(),
                    rec.shard,
                    attempt.number,
                    last,
                    due,
                    rec.payload,
                    Some(&e),
                    Some(expect),
                )
                .await?)
        })
        .await?;
        if !deferred {
            return self.after_other_attempt(rec, job, shutdown).await;
        }
        // A step of its own: retrying the fenced write after a failed
        // publish would find the row moved on by the retry schedule.
        durably("publish_deferral", shutdown, || self.publish(std::slice::from_ref(&e))).await?;
        self.count(Outcome::Deferred, &self.provider(job.to.email.domain()));
        ControlFlow::Continue(Outcome::Deferred)
    }

    /// Stores a terminal outcome, then publishes it; both retried until done.
    pub(super) async fn finish(
        &self,
        job: &SendJob,
        status: LedgerStatus,
        last_reply: Option<&str>,
        event: Event,
        outcome: Outcome,
        shutdown: &CancellationToken,
    ) -> Step<Outcome> {
        let (tenant, id) = (job.tenant_id.as_str(), job.job_id.as_str());
        let recorded = durably("record_outcome", shutdown, || async {
            Ok(self.ledger.finish(OutcomeRecord::new(tenant, id, status, last_reply, event.clone())).await?)
        })
        .await?;
        if !recorded {
            // Another attempt recorded the job's outcome first: that one
            // stands, and is what this record answers with.
            warn!("the job already has an outcome; keeping it, not this attempt's");
            return self.republish_outcome(job, None, shutdown).await;
        }
        durably("publish_outcome", shutdown, || self.publish(std::slice::from_ref(&event))).await?;
        self.count(outcome, &self.provider(job.to.email.domain()));
        ControlFlow::Continue(outcome)
    }

    /// A job that finished in an earlier run: whatever that run owed is
    /// published again (the outcome event, with the same `event_id`, and
    /// for a dead-lettered job the dead letter too, as a crash may have
    /// come between recording and publishing them), and nothing is sent.
    pub(super) async fn replay(
        &self,
        rec: &Record<'_>,
        job: &SendJob,
        shutdown: &CancellationToken,
    ) -> Step<Outcome> {
        debug!("job already finished; outcome re-published, nothing sent");
        self.republish_outcome(job, Some(rec), shutdown).await
    }

    /// Publishes the job's stored terminal event again, and, given the
    /// record, a stored dead letter to the dead-letter topic; nothing is sent.
    async fn republish_outcome(
        &self,
        job: &SendJob,
        rec: Option<&Record<'_>>,
        shutdown: &CancellationToken,
    ) -> Step<Outcome> {
        let (tenant, id) = (job.tenant_id.as_str(), job.job_id.as_str());
        let ev =
            durably("load_outcome", shutdown, || async { Ok(self.store.terminal_event(tenant, id).await?) })
                .await?;
        match (ev, rec) {
            (Some(ev), Some(rec)) if ev.kind == EventType::DeadLettered => {
                let payload = self.dead_letter_payload(rec, Some(job), shutdown).await?;
                self.publish_dead_letter(rec, &payload, &ev, shutdown).await?;
            }
            (Some(ev), _) => {
                durably("publish_outcome", shutdown, || self.publish(std::slice::from_ref(&ev))).await?;
            }
            (None, _) => {}
        }
        self.count(Outcome::Replayed, &self.provider(job.to.email.domain()));
        ControlFlow::Continue(Outcome::Replayed)
    }

    /// Another attempt of the job (a second record of it, in another
    /// worker) reached the commit point first, and this one sent nothing.
    /// Waits for that attempt's outcome and answers this record by it: a
    /// terminal outcome is re-published, a deferral belongs to the retry
    /// schedule. If none comes within `worker.retry_lease_secs` (the other
    /// worker died mid-send), the job is in doubt, and `worker.in_doubt`
    /// decides, as for a redelivered `sending` row.
    pub(super) async fn after_other_attempt(
        &self,
        rec: &Record<'_>,
        job: &SendJob,
        shutdown: &CancellationToken,
    ) -> Step<Outcome> {
        warn!("another record of this job reached the relay first; waiting for its outcome, sending nothing");
        let mut wait = mailpipe_core::Backoff::new(Duration::from_millis(50), Duration::from_secs(5));
        let started = std::time::Instant::now();
        let recipient = self.recipient(job);
        loop {
            let claim = self.claim(job, &recipient, shutdown).await?;
            if claim.status.is_terminal() {
                return self.replay(rec, job, shutdown).await;
            }
            if claim.scheduled || claim.status == LedgerStatus::Deferred {
                return ControlFlow::Continue(Outcome::Scheduled);
            }
            if started.elapsed() >= self.cfg.retry_lease {
                warn!("the other attempt never finished; the job is in doubt");
                self.counters.in_doubt.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                metrics::counter!("mailpipe_jobs_in_doubt_total").increment(1);
                if self.cfg.in_doubt == InDoubtPolicy::AssumeDelivered {
                    let mut ev = self.event(job, EventType::Sent, "");
                    ev.message_id = claim.message_id.clone();
                    ev.reason = Some("in_doubt".into());
                    return self.finish(job, LedgerStatus::Sent, None, ev, Outcome::Sent, shutdown).await;
                }
                // Retry policy: onto the schedule, to be sent again.
                let (t, j) = (job.tenant_id.as_str(), job.job_id.as_str());
                let attempts = claim.attempts.max(0) as u32;
                durably("record_deferral", shutdown, || async {
                    Ok(self
                        .store
                        .defer(t, j, rec.shard, attempts, Some("in doubt"), now_ms(), rec.payload, None)
                        .await?)
                })
                .await?;
                return ControlFlow::Continue(Outcome::Scheduled);
            }
            tokio::select! {
                _ = shutdown.cancelled() => return ControlFlow::Break(None),
                _ = tokio::time::sleep(wait.next_delay()) => {}
            }
        }
    }

    /// Dead-letters a record: to the store (with its event), to the DLQ
    /// topic, and the event to the events topic.
    pub(super) async fn reject(
        &self,
        rec: &Record<'_>,
        job: Option<&SendJob>,
        reason: &str,
        detail: &str,
        shutdown: &CancellationToken,
    ) -> Step<Outcome> {
        // A parse error may quote the input: the detail goes to logs, the
        // store and the topics, so it names no address.
        let detail = &*mailpipe_core::redact_addresses(detail);
        warn!(reason, detail, record = %rec.source, "dead-lettering job");
        let mut ev = match job {
            Some(j) => self.event(j, EventType::DeadLettered, ""),
            // Too broken to name a tenant: key the event by the record.
            None => Event::unattributed(EventType::DeadLettered, &rec.source),
        };
        ev.reason = Some(reason.to_owned());
        ev.detail = Some(detail.to_owned());
        let dl = DeadLetter {
            source: rec.source.clone(),
            reason: reason.to_owned(),
            detail: detail.to_owned(),
            tenant_id: job.map(|j| j.tenant_id.to_string()),
            job_id: job.map(|j| j.job_id.to_string()),
            payload: self.dead_letter_payload(rec, job, shutdown).await?.into_owned(),
        };
        // The same payload goes to the topic as to the store.
        let recorded =
            durably("record_dead_letter", shutdown, || async { Ok(self.store.dead_letter(&dl, &ev).await?) })
                .await?;
        if let (false, Some(j)) = (recorded, job) {
            warn!("the job already has an outcome; keeping it, not this dead letter");
            return self.republish_outcome(j, None, shutdown).await;
        }
        self.publish_dead_letter(rec, &dl.payload, &ev, shutdown).await?;
        let provider =
            job.map_or_else(|| std::sync::Arc::from("unknown"), |j| self.provider(j.to.email.domain()));
        self.count(Outcome::DeadLettered, &provider);
        ControlFlow::Continue(Outcome::DeadLettered)
    }

    /// What a dead letter keeps of its record: the record as it came, unless
    /// the job names someone who was erased (in its tenant or everywhere);
    /// then only its ids, since such a job can never be sent anyway.
    async fn dead_letter_payload<'r>(
        &self,
        rec: &Record<'r>,
        job: Option<&SendJob>,
        shutdown: &CancellationToken,
    ) -> Step<std::borrow::Cow<'r, [u8]>> {
        let Some(j) = job else { return ControlFlow::Continue(rec.payload.into()) };
        let recipient = self.recipient(j);
        let erased = durably("erasure", shutdown, || async {
            Ok(self.store.is_erased(&recipient, &j.tenant_id).await?)
        })
        .await?;
        if !erased {
            return ControlFlow::Continue(rec.payload.into());
        }
        let stub = serde_json::json!({ "tenant_id": j.tenant_id, "job_id": j.job_id, "recipient": "erased" });
        ControlFlow::Continue(stub.to_string().into_bytes().into())
    }

    /// Publishes a dead letter: `payload` (the record as it came, or its
    /// stub: [`Pipeline::dead_letter_payload`]) under the record's own key,
    /// to the dead-letter topic with the reason, detail and source in its
    /// headers, and its event to the events topic. At least once: a replay
    /// publishes both again.
    async fn publish_dead_letter(
        &self,
        rec: &Record<'_>,
        payload: &[u8],
        ev: &Event,
        shutdown: &CancellationToken,
    ) -> Step<()> {
        let (reason, detail) =
            (ev.reason.as_deref().unwrap_or_default(), ev.detail.as_deref().unwrap_or_default());
        match &self.events {
            EventOut::Kafka(k) => {
                durably("publish_dead_letter", shutdown, || async {
                    k.dead_letter(&rec.source, rec.key, payload, reason, detail).await?;
                    Ok(k.publish(std::slice::from_ref(ev)).await?)
                })
                .await
            }
            EventOut::StoreOnly => ControlFlow::Continue(()),
        }
    }
}

/// Why a refusal that suppresses its recipient says the address is bad, in
/// docs/bounces.md's vocabulary (as an asynchronous bounce gives it), so
/// that the breaker counts unknown users alike; `hard_bounce` when the
/// reply says no more.
fn bad_address(reply: Option<&Reply>) -> &'static str {
    use mailpipe_core::status::{BounceReason, StatusCode, classify};
    let Some(r) = reply else { return Reason::HardBounce.as_str() };
    let status = r.enhanced.as_deref().and_then(StatusCode::parse);
    match classify(status, Some(r.code), &r.text).1 {
        reason @ (BounceReason::UserUnknown | BounceReason::MailboxDisabled | BounceReason::HostUnknown) => {
            reason.as_str()
        }
        _ => Reason::HardBounce.as_str(),
    }
}
