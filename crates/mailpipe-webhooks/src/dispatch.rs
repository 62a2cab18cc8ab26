//! The dispatcher: every `poll`, the endpoints with due deliveries; for each
//! with room under its own cap and its tenant's, up to that many deliveries
//! taken (leased) and attempted, at most `max_in_flight` at once overall.
//! A receiver that hangs holds its endpoint's few slots for `timeout` each,
//! never another tenant's. An attempt's outcome is recorded before its slot
//! is let go; a crash mid-attempt leaves the lease, and the delivery is due
//! again when it runs out (at least once).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use mailpipe_core::{Backoff, Event, EventType, TenantId, now_ms};
use mailpipe_domains::Sealer;
use mailpipe_store::{Attempted, Store, WebhookDelivery, WebhookTarget};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use crate::client::{Client, SendError};
use crate::guard::WebhookUrl;
use crate::sign::{Secret, signature_header};
use crate::{WebhookSettings, sealing_context};

/// Attempts in flight per endpoint and per tenant.
#[derive(Default)]
struct Slots {
    endpoints: HashMap<String, usize>,
    tenants: HashMap<String, usize>,
}

/// One attempt's hold on its endpoint's and tenant's slots, and on a global
/// permit: let go when dropped, however the attempt ends (a panic too).
struct Held {
    slots: Arc<Mutex<Slots>>,
    endpoint: String,
    tenant: String,
    wake: Arc<Notify>,
    _permit: OwnedSemaphorePermit,
}

impl Drop for Held {
    fn drop(&mut self) {
        let mut s = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        release(&mut s.endpoints, &self.endpoint);
        release(&mut s.tenants, &self.tenant);
        drop(s);
        // A slot is free: look for more now, not at the next poll.
        self.wake.notify_one();
    }
}

/// Delivers until `shutdown`, then lets the attempts in flight finish
/// within their timeout.
pub async fn run(store: Store, sealer: Arc<Sealer>, settings: WebhookSettings, shutdown: CancellationToken) {
    let client = match Client::new() {
        Ok(c) => c,
        Err(e) => {
            warn!(error = %e, "webhooks are off: no TLS client");
            return;
        }
    };
    let global = Arc::new(Semaphore::new(settings.max_in_flight.max(1)));
    let slots = Arc::new(Mutex::new(Slots::default()));
    let wake = Arc::new(Notify::new());
    let tasks = TaskTracker::new();
    let settings = Arc::new(settings);
    let mut outage = Backoff::new(settings.poll, Duration::from_secs(30));
    info!(retry_span_secs = settings.retry_span().as_secs(), "webhook dispatcher started");
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep(settings.poll) => {}
            _ = wake.notified() => {
                // Attempts that end together are looked past together.
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        let now = now_ms();
        let endpoints = match store.due_webhook_endpoints(now).await {
            Ok(e) => {
                outage.reset();
                e
            }
            Err(e) => {
                // The store is away: look again later and later (up to 30 s),
                // not at every poll, and say so once per wait.
                let wait = outage.next_delay();
                warn!(error = %e, retry_in_ms = wait.as_millis() as u64, "cannot read the due webhooks");
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(wait) => {}
                }
                continue;
            }
        };
        for endpoint in endpoints {
            if shutdown.is_cancelled() || global.available_permits() == 0 {
                break;
            }
            let target = match store.webhook_target(&endpoint).await {
                Ok(Some(t)) if !t.disabled => t,
                // Disabled: its pending deliveries were closed with it.
                Ok(Some(_)) => continue,
                Ok(None) => {
                    // Removed: nothing more goes to it.
                    let _ = store.drop_webhook_deliveries(&endpoint).await;
                    continue;
                }
                Err(e) => {
                    warn!(error = %e, "cannot read a webhook endpoint; retrying");
                    continue;
                }
            };
            // Only this loop takes permits, so what is free now stays free
            // until the deliveries below are taken and started.
            let room = {
                let s = slots.lock().unwrap_or_else(|p| p.into_inner());
                let e = s.endpoints.get(&endpoint).copied().unwrap_or(0);
                let t = s.tenants.get(&target.tenant_id).copied().unwrap_or(0);
                settings
                    .per_endpoint_in_flight
                    .saturating_sub(e)
                    .min(settings.per_tenant_in_flight.saturating_sub(t))
                    .min(global.available_permits())
            };
            if room == 0 {
                continue;
            }
            let secrets = match open_secrets(&sealer, &target, now) {
                Ok(s) => Arc::new(s),
                Err(e) => {
                    // The key-encryption key that sealed it is not configured:
                    // the deliveries wait for it.
                    warn!(endpoint = %endpoint, error = %e, "cannot open a webhook secret");
                    continue;
                }
            };
            // Leased past the attempt's deadline: a crash hands it back.
            let taken = now_ms();
            let lease = taken + (settings.timeout.as_millis() as i64) * 2 + 5_000;
            let batch = match store.take_due_webhooks(&endpoint, taken, room as i64, lease).await {
                Ok(b) => b,
                Err(e) => {
                    warn!(error = %e, "cannot take due webhooks; retrying");
                    continue;
                }
            };
            let target = Arc::new(target);
            for d in batch {
                let Ok(permit) = global.clone().try_acquire_owned() else { break };
                {
                    let mut s = slots.lock().unwrap_or_else(|p| p.into_inner());
                    *s.endpoints.entry(endpoint.clone()).or_default() += 1;
                    *s.tenants.entry(target.tenant_id.clone()).or_default() += 1;
                }
                let held = Held {
                    slots: slots.clone(),
                    endpoint: endpoint.clone(),
                    tenant: target.tenant_id.clone(),
                    wake: wake.clone(),
                    _permit: permit,
                };
                let (client, store, settings) = (client.clone(), store.clone(), settings.clone());
                let (target, secrets) = (target.clone(), secrets.clone());
                tasks.spawn(async move {
                    attempt(&client, &store, &settings, &target, &secrets, &d).await;
                    drop(held);
                });
            }
        }
    }
    tasks.close();
    if tokio::time::timeout(settings.timeout + Duration::from_secs(1), tasks.wait()).await.is_err() {
        warn!("webhook attempts still in flight at shutdown: they are retried when their lease runs out");
    }
    info!("webhook dispatcher stopped");
}

fn release(map: &mut HashMap<String, usize>, key: &str) {
    if let Some(n) = map.get_mut(key) {
        *n = n.saturating_sub(1);
        if *n == 0 {
            map.remove(key);
        }
    }
}

fn open_secrets(
    sealer: &Sealer,
    t: &WebhookTarget,
    now: i64,
) -> Result<Vec<Secret>, mailpipe_domains::SealError> {
    let context = sealing_context(&t.endpoint_id);
    let mut out = vec![Secret::from_bytes(sealer.open(&t.secret, &context)?)];
    if let Some((previous, until)) = &t.previous
        && *until > now
    {
        out.push(Secret::from_bytes(sealer.open(previous, &context)?));
    }
    Ok(out)
}

/// One attempt of one delivery, its outcome recorded.
async fn attempt(
    client: &Client,
    store: &Store,
    settings: &WebhookSettings,
    target: &WebhookTarget,
    secrets: &[Secret],
    d: &WebhookDelivery,
) {
    let policy = settings.policy();
    // One deadline over the name's resolution and the exchange.
    let exchange = async {
        let url = WebhookUrl::parse(&target.url, &policy).map_err(|e| e.to_string())?;
        // Vetted now, not only at registration: the name may point
        // elsewhere since.
        let addrs = url.resolve(&policy).await.map_err(|e| e.to_string())?;
        let ts = now_ms() / 1000;
        let headers = [
            ("webhook-id", d.message_id.clone()),
            ("webhook-timestamp", ts.to_string()),
            ("webhook-signature", signature_header(secrets, &d.message_id, ts, d.payload.as_bytes())),
        ];
        let body = Bytes::from(d.payload.clone());
        match client.post(&url, &addrs, &headers, body, settings.timeout).await {
            Ok(status) if (200..300).contains(&status) => Ok(()),
            Ok(status) => Err(format!("answered {status}")),
            // What the tenant may read says no more than this: the reason a
            // connection failed would map the network around the address.
            Err(SendError::Timeout(t)) => Err(format!("no answer within {} s", t.as_secs())),
            Err(e) => {
                debug!(endpoint = %d.endpoint_id, error = %e, "webhook attempt failed");
                Err("could not connect or complete the request".to_owned())
            }
        }
    };
    let result = match tokio::time::timeout(settings.timeout, exchange).await {
        Ok(r) => r,
        Err(_) => Err(format!("no answer within {} s", settings.timeout.as_secs())),
    };
    let done = d.attempts as usize + 1;
    let outcome = match result {
        Ok(()) => Attempted::Delivered,
        Err(error) => match settings.retry_schedule_secs.get(done - 1) {
            Some(wait) => {
                // Up to a tenth more, so retries of many deliveries spread.
                let jitter = rand::random_range(0..=(*wait * 100).max(1));
                Attempted::Retry { at: now_ms() + (*wait as i64) * 1000 + jitter as i64, error }
            }
            None => Attempted::Failed { error },
        },
    };
    let label = match &outcome {
        Attempted::Delivered => "delivered",
        Attempted::Retry { .. } => "retry",
        Attempted::Failed { .. } => "failed",
    };
    metrics::counter!("mailpipe_webhook_attempts_total", "result" => label).increment(1);
    match store.webhook_attempted(d, &outcome).await {
        Ok(true) => {}
        // Another attempt of it recorded first (this one outlived its
        // lease): that one's outcome stands.
        Ok(false) => return,
        Err(e) => {
            warn!(error = %e, endpoint = %d.endpoint_id, "cannot record a webhook attempt; it is retried when its lease runs out");
            return;
        }
    }
    if let Attempted::Failed { error } = &outcome {
        disable_if_failing(store, settings, d, error).await;
    }
}

/// After a delivery's last attempt failed: the endpoint is disabled if
/// nothing reached it since that delivery was made (it has failed for the
/// whole retry schedule), and the tenant gets a `webhook_disabled` event.
async fn disable_if_failing(store: &Store, settings: &WebhookSettings, d: &WebhookDelivery, error: &str) {
    let Ok(Some(target)) = store.webhook_target(&d.endpoint_id).await else { return };
    if target.last_success_at.is_some_and(|t| t >= d.created_at) {
        return;
    }
    let Ok(tenant) = TenantId::parse(d.tenant_id.as_str()) else { return };
    let hours = settings.retry_span().as_secs() / 3600;
    let discriminator = format!("{}/{}", d.endpoint_id, now_ms());
    let mut event = Event::for_tenant(EventType::WebhookDisabled, &tenant, &discriminator);
    event.reason = Some("persistent_failure".into());
    event.detail = Some(format!(
        "webhook endpoint {} failed every attempt for {hours} h (last: {error}); enable it again with POST /api/v1/webhooks/{}/enable",
        d.endpoint_id, d.endpoint_id
    ));
    match store.disable_webhook(&d.endpoint_id, "persistent_failure", &event).await {
        Ok(true) => {
            warn!(tenant = %d.tenant_id, endpoint = %d.endpoint_id, "webhook endpoint disabled after persistent failure")
        }
        Ok(false) => {}
        Err(e) => warn!(error = %e, endpoint = %d.endpoint_id, "cannot disable a failing webhook endpoint"),
    }
}
