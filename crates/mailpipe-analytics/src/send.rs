//! `POST /api/v1/messages`: a tenant's batch of send jobs, for integrations
//! that speak HTTP rather than Kafka (docs/api.md, "Sending").
//!
//! Each job is parsed by the worker's own parser ([`SendJob::from_json`]),
//! so an item is refused here for the same reason, in the same words, that
//! the worker would dead-letter it. What passes goes to the send queue
//! byte for byte as it came, keyed by its rate-limit key, like
//! `mailpipe enqueue`. Sending is idempotent on `job_id`: the worker's
//! ledger sends a job once however often it is queued, so a client that
//! did not get an answer sends the same batch again.

use std::collections::HashSet;
use std::future::Future;
use std::pin::Pin;

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use mailpipe_core::{Category, SendJob, TenantId, redact_addresses};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use tracing::{info, warn};

use crate::api::{ApiState, err, internal, json, read_body, tenant};

/// The most jobs one request may carry.
pub const MAX_BATCH: usize = 1000;
/// The most of a request body read: a thousand jobs of 16 KiB each. One
/// job may be up to 1 MiB ([`mailpipe_core::MAX_JOB_BYTES`]); fewer of
/// those fit in a request.
pub const MAX_SEND_BODY: usize = 16 * 1024 * 1024;

/// How long a send request's body may take to arrive (16 MiB at 1.1 MB/s).
const BODY_DEADLINE: std::time::Duration = std::time::Duration::from_secs(15);

/// Send requests of one tenant served at once; more get a 429.
pub const PER_TENANT_AT_ONCE: usize = 2;

/// Send requests in progress, by tenant.
pub(crate) type TenantSlots = std::sync::Arc<std::sync::Mutex<std::collections::HashMap<TenantId, usize>>>;

/// One of a tenant's [`PER_TENANT_AT_ONCE`] requests, given back when dropped.
struct TenantSlot {
    slots: TenantSlots,
    tenant: TenantId,
}

impl TenantSlot {
    fn take(slots: &TenantSlots, tenant: &TenantId) -> Option<Self> {
        let mut map = slots.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let n = map.entry(tenant.clone()).or_insert(0);
        if *n >= PER_TENANT_AT_ONCE {
            return None;
        }
        *n += 1;
        Some(Self { slots: slots.clone(), tenant: tenant.clone() })
    }
}

impl Drop for TenantSlot {
    fn drop(&mut self) {
        let mut map = self.slots.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(n) = map.get_mut(&self.tenant) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.tenant);
            }
        }
    }
}

/// A failed hand-over to the send queue, as the queue said it.
pub type SinkError = Box<dyn std::error::Error + Send + Sync>;

/// Where accepted jobs go: the send topic on Kafka, or the single node's
/// queue in the store.
pub trait JobSink: Send + Sync {
    /// The key a job is queued under: its rate-limit key, so that the one
    /// worker that owns the key's partition paces every job it covers.
    fn key(&self, job: &SendJob) -> String;

    /// Queues every job (key, bytes), or fails. On failure some may have
    /// been queued: the caller is told to send them all again, which the
    /// ledger makes harmless.
    fn submit<'a>(
        &'a self,
        jobs: &'a [(String, Vec<u8>)],
    ) -> Pin<Box<dyn Future<Output = Result<(), SinkError>> + Send + 'a>>;
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Batch<'a> {
    #[serde(borrow)]
    messages: Vec<&'a RawValue>,
}

/// What became of one job of the batch, in the batch's order.
#[derive(Serialize)]
struct ItemResult {
    index: usize,
    /// As the item gave it, when it had a string `job_id` at all.
    #[serde(skip_serializing_if = "Option::is_none")]
    job_id: Option<String>,
    status: ItemStatus,
    /// A dead-letter reason code (docs/schemas.md), or one of this API's:
    /// `tenant_mismatch`, `duplicate_job_id`.
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    detail: Option<String>,
}

#[derive(Serialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
enum ItemStatus {
    Accepted,
    Rejected,
}

#[derive(Serialize)]
struct BatchResult {
    accepted: usize,
    rejected: usize,
    results: Vec<ItemResult>,
}

/// Why an item that parsed is refused all the same.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refusal {
    /// The job names another tenant than the API key's.
    TenantMismatch,
    /// The job's `job_id` came earlier in the same batch.
    DuplicateJobId,
    /// A transactional job from a tenant not allowed that category.
    CategoryNotAllowed,
    /// A `send_at` further ahead than the worker keeps a job waiting.
    TooFarAhead,
    /// Over the send topic's record limit, which the broker would refuse.
    TooLargeForTheQueue,
}

impl Refusal {
    fn reason(self) -> &'static str {
        match self {
            Refusal::TenantMismatch => "tenant_mismatch",
            Refusal::DuplicateJobId => "duplicate_job_id",
            Refusal::CategoryNotAllowed => "category_not_allowed",
            Refusal::TooFarAhead => "invalid",
            Refusal::TooLargeForTheQueue => "too_large",
        }
    }

    fn detail(self) -> &'static str {
        match self {
            Refusal::TenantMismatch => "the job's tenant_id is not the API key's tenant",
            Refusal::DuplicateJobId => "the job_id came earlier in this batch; the first was taken",
            Refusal::CategoryNotAllowed => "this tenant may not send the transactional category",
            Refusal::TooFarAhead => "send_at is more than 30 days ahead",
            Refusal::TooLargeForTheQueue => "over the send topic's 1,000,000-byte record limit",
        }
    }
}

/// The largest record the send topic takes: librdkafka's default
/// `message.max.bytes`, under the parser's 1 MiB, so that a job the
/// broker would refuse is refused here, alone, not as a failed batch.
pub const MAX_QUEUED_JOB_BYTES: usize = 1_000_000;

/// The one classifier of a parsed job (`bytes` long): queued, or refused
/// and why.
fn refusal(
    job: &SendJob,
    bytes: usize,
    tenant: &TenantId,
    transactional: bool,
    seen: &mut HashSet<String>,
) -> Option<Refusal> {
    if &job.tenant_id != tenant {
        Some(Refusal::TenantMismatch)
    } else if job.category == Category::Transactional && !transactional {
        Some(Refusal::CategoryNotAllowed)
    } else if job.schedule_error(time::OffsetDateTime::now_utc()).is_some() {
        Some(Refusal::TooFarAhead)
    } else if bytes > MAX_QUEUED_JOB_BYTES {
        Some(Refusal::TooLargeForTheQueue)
    } else if !seen.insert(job.job_id.to_string()) {
        Some(Refusal::DuplicateJobId)
    } else {
        None
    }
}

/// The `job_id` an item that did not parse says it has, if it is a short
/// string: echoed so that the client can match the answer to its job.
fn claimed_job_id(raw: &RawValue) -> Option<String> {
    #[derive(Deserialize)]
    struct JobIdOnly {
        job_id: Option<serde_json::Value>,
    }
    let v: JobIdOnly = serde_json::from_str(raw.get()).ok()?;
    match v.job_id? {
        serde_json::Value::String(s) if s.len() <= 256 => Some(s),
        _ => None,
    }
}

pub(crate) async fn post_messages(State(s): State<ApiState>, headers: HeaderMap, body: Body) -> Response {
    let tenant = match tenant(&s, &headers, None).await {
        Ok(t) => t,
        Err(r) => return r,
    };
    let Some(sink) = s.sink.clone() else {
        return err(
            StatusCode::SERVICE_UNAVAILABLE,
            "this server does not send: the send API needs queue.kind = \"store\" (one machine) or \"kafka\" with the send topic (see the server's log)",
        );
    };
    // A tenant's own share first, so that one tenant's slow or many
    // requests cannot hold every read; then the server's. Both held until
    // the answer: the body and what is made of it are in memory till then.
    let Some(_mine) = TenantSlot::take(&s.send_by_tenant, &tenant) else {
        return err(
            StatusCode::TOO_MANY_REQUESTS,
            &format!(
                "at most {PER_TENANT_AT_ONCE} send requests of a tenant at once: wait for an answer first"
            ),
        );
    };
    let Ok(_permit) = s.send_permits.clone().acquire_owned().await else {
        return err(StatusCode::SERVICE_UNAVAILABLE, "shutting down");
    };
    // A turn is held while the body comes in: a client that trickles it
    // gives the turn up after BODY_DEADLINE, not after the whole request's.
    let bytes = match tokio::time::timeout(BODY_DEADLINE, read_body(body, MAX_SEND_BODY)).await {
        Ok(Ok(b)) => b,
        Ok(Err(r)) => return r,
        Err(_) => {
            return err(
                StatusCode::REQUEST_TIMEOUT,
                &format!("the body did not arrive within {} s", BODY_DEADLINE.as_secs()),
            );
        }
    };
    let batch: Batch<'_> = match serde_json::from_slice(&bytes) {
        Ok(b) => b,
        Err(e) => return err(StatusCode::BAD_REQUEST, &format!("not a batch of messages: {e}")),
    };
    if batch.messages.is_empty() {
        return err(StatusCode::BAD_REQUEST, "the batch has no messages");
    }
    if batch.messages.len() > MAX_BATCH {
        return err(
            StatusCode::PAYLOAD_TOO_LARGE,
            &format!("{} messages: at most {MAX_BATCH} a request", batch.messages.len()),
        );
    }
    let transactional = match s.store.tenant_policy(&tenant).await {
        Ok(p) => p.is_some_and(|p| p.transactional),
        Err(e) => return internal(e),
    };

    let mut results = Vec::with_capacity(batch.messages.len());
    let mut queued = Vec::new();
    let mut seen = HashSet::new();
    for (index, raw) in batch.messages.iter().enumerate() {
        let rejected = |job_id, reason, detail: &str| ItemResult {
            index,
            job_id,
            status: ItemStatus::Rejected,
            reason: Some(reason),
            detail: Some(redact_addresses(detail).into_owned()),
        };
        let item = match SendJob::from_json(raw.get().as_bytes()) {
            Err(e) => rejected(claimed_job_id(raw), e.reason(), &e.to_string()),
            Ok(job) => match refusal(&job, raw.get().len(), &tenant, transactional, &mut seen) {
                Some(r) => rejected(Some(job.job_id.to_string()), r.reason(), r.detail()),
                None => {
                    queued.push((sink.key(&job), raw.get().as_bytes().to_vec()));
                    ItemResult {
                        index,
                        job_id: Some(job.job_id.to_string()),
                        status: ItemStatus::Accepted,
                        reason: None,
                        detail: None,
                    }
                }
            },
        };
        results.push(item);
    }
    if !queued.is_empty()
        && let Err(e) = sink.submit(&queued).await
    {
        warn!(tenant = %tenant, error = %e, jobs = queued.len(), "the send queue refused a batch");
        metrics::counter!("mailpipe_api_messages_total", "result" => "unavailable")
            .increment(queued.len() as u64);
        return err(
            StatusCode::SERVICE_UNAVAILABLE,
            "the send queue is unavailable: send the batch again (each job is sent once, by its job_id)",
        );
    }
    let accepted = queued.len();
    let rejected = results.len() - accepted;
    metrics::counter!("mailpipe_api_messages_total", "result" => "accepted").increment(accepted as u64);
    metrics::counter!("mailpipe_api_messages_total", "result" => "rejected").increment(rejected as u64);
    info!(tenant = %tenant, accepted, rejected, "messages submitted");
    (StatusCode::ACCEPTED, json(&BatchResult { accepted, rejected, results })).into_response()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // Tests fail loudly on purpose.

    use super::*;

    fn job(tenant: &str, id: &str, category: &str) -> SendJob {
        let v = serde_json::json!({
            "job_id": id, "tenant_id": tenant, "campaign_id": "c", "category": category,
            "from": {"email": "news@sender.example"}, "to": {"email": "a@b.example"},
            "subject": "s", "text": "t"
        });
        SendJob::from_json(v.to_string().as_bytes()).unwrap()
    }

    fn refusal_of(
        job: &SendJob,
        tenant: &TenantId,
        transactional: bool,
        seen: &mut HashSet<String>,
    ) -> Option<Refusal> {
        refusal(job, 100, tenant, transactional, seen)
    }

    #[test]
    fn each_parsed_job_is_queued_or_refused_for_one_reason() {
        let acme = TenantId::parse("acme").unwrap();
        let mut seen = HashSet::new();
        assert_eq!(refusal_of(&job("acme", "j1", "marketing"), &acme, false, &mut seen), None);
        assert_eq!(
            refusal_of(&job("acme", "j1", "marketing"), &acme, false, &mut seen),
            Some(Refusal::DuplicateJobId)
        );
        assert_eq!(
            refusal_of(&job("globex", "j2", "marketing"), &acme, true, &mut seen),
            Some(Refusal::TenantMismatch)
        );
        assert_eq!(
            refusal_of(&job("acme", "j3", "transactional"), &acme, false, &mut seen),
            Some(Refusal::CategoryNotAllowed)
        );
        assert_eq!(refusal_of(&job("acme", "j3", "transactional"), &acme, true, &mut seen), None);
        let mut later = job("acme", "j5", "marketing");
        later.send_at = Some(time::OffsetDateTime::now_utc() + time::Duration::days(31));
        assert_eq!(refusal_of(&later, &acme, true, &mut seen), Some(Refusal::TooFarAhead));
        assert_eq!(
            refusal(&job("acme", "j6", "marketing"), MAX_QUEUED_JOB_BYTES + 1, &acme, true, &mut seen),
            Some(Refusal::TooLargeForTheQueue)
        );
        // Another tenant's job does not take its id from this tenant's.
        assert_eq!(
            refusal_of(&job("globex", "j4", "marketing"), &acme, true, &mut seen),
            Some(Refusal::TenantMismatch)
        );
        assert_eq!(refusal_of(&job("acme", "j4", "marketing"), &acme, true, &mut seen), None);
    }

    #[test]
    fn a_tenant_holds_at_most_its_share_of_send_requests() {
        let slots = TenantSlots::default();
        let (acme, globex) = (TenantId::parse("acme").unwrap(), TenantId::parse("globex").unwrap());
        let held: Vec<_> =
            (0..PER_TENANT_AT_ONCE).map(|_| TenantSlot::take(&slots, &acme).unwrap()).collect();
        assert!(TenantSlot::take(&slots, &acme).is_none(), "acme's share is taken");
        assert!(TenantSlot::take(&slots, &globex).is_some(), "globex has its own");
        drop(held);
        assert!(TenantSlot::take(&slots, &acme).is_some(), "given back");
        assert!(slots.lock().unwrap().is_empty(), "no tenant left counted");
    }

    #[test]
    fn an_unparsed_item_echoes_only_a_short_string_job_id() {
        let raw = |s: &str| RawValue::from_string(s.to_owned()).unwrap();
        assert_eq!(claimed_job_id(&raw(r#"{"job_id": "x-1", "bogus": 1}"#)).as_deref(), Some("x-1"));
        assert_eq!(claimed_job_id(&raw(r#"{"job_id": 5}"#)), None);
        assert_eq!(claimed_job_id(&raw(&format!(r#"{{"job_id": "{}"}}"#, "a".repeat(300)))), None);
        assert_eq!(claimed_job_id(&raw("[1, 2]")), None);
    }
}
