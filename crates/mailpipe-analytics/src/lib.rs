//! The analytics service (`mailpipe analytics`) and the privacy and
//! feedback workflows around the suppression list.
//!
//! * [`ingest`]: counts events into per-campaign aggregates, from
//!   `mailpipe.events.v1` (offsets stored only after a batch is counted) or,
//!   embedded, from the store's events table.
//! * [`api`]: the tenant API and the SVG dashboard, reads confined to the
//!   caller's tenant by the database.
//! * [`csv`]: suppression lists in and out as CSV, for the CLI and the API.
//! * [`privacy`]: erasure on request, and purges on the retention schedule.
//! * [`complaint`]: ARF complaint reports (RFC 5965) to a suppression and a
//!   `complaint` event.
//! * sending domains through the API (`/api/v1/domains`) and the dashboard
//!   (`/dashboard/domains`): [`DomainsApi`].
//!
//! [`run`] puts the service together: API, ingestion and scheduled purges,
//! until shutdown.
#![forbid(unsafe_code)]

pub mod api;
pub mod complaint;
pub mod csv;
mod dashboard;
mod domains;
pub mod ingest;
pub mod privacy;
pub mod send;
mod session;
pub mod templates;
mod warmup;
pub mod webhooks;

use std::net::SocketAddr;
use std::time::Duration;

use mailpipe_queue::QueueError;
use mailpipe_store::{Retention, Store, StoreError};
use mailpipe_token::RecipientHasher;
use tokio_util::sync::CancellationToken;
use tracing::info;

pub use api::{ApiState, router};
pub use domains::DomainsApi;
pub use ingest::EventFeed;

/// `[analytics]`: the configuration section itself.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct AnalyticsSettings {
    /// Where the tenant API and dashboard listen.
    pub listen: SocketAddr,
    /// Consumer group on the events topic.
    pub group_id: String,
    /// Mark the dashboard's sign-in cookie `Secure` (HTTPS only).
    pub secure_cookie: bool,
    /// A client must send its request head within this time.
    #[serde(rename = "header_read_timeout_secs", deserialize_with = "mailpipe_core::units::secs")]
    pub header_read_timeout: Duration,
    /// A request (head, body and answer) must be done within this time.
    #[serde(rename = "request_timeout_secs", deserialize_with = "mailpipe_core::units::secs")]
    pub request_timeout: Duration,
    /// Open connections at most; more wait to be accepted.
    pub max_connections: usize,
}

impl AnalyticsSettings {
    /// The API listener's limits; shutdown gives requests 10 s.
    pub fn limits(&self) -> mailpipe_http::ServeLimits {
        mailpipe_http::ServeLimits {
            header_read_timeout: self.header_read_timeout,
            request_timeout: self.request_timeout,
            max_connections: self.max_connections,
            shutdown_grace: Duration::from_secs(10),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AnalyticsError {
    #[error("analytics.listen {0}: cannot bind")]
    Bind(SocketAddr, #[source] std::io::Error),
    #[error(transparent)]
    Queue(#[from] QueueError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What `mailpipe analytics` reads events from, and where the send API
/// queues jobs (none: the API answers 503 to a send).
pub struct Queues {
    pub events: EventFeed,
    pub send: Option<std::sync::Arc<dyn send::JobSink>>,
}

/// What the API manages besides the figures: sending domains, and webhook
/// endpoints (none: those routes answer 503 and nothing is delivered).
pub struct Apis {
    pub domains: DomainsApi,
    pub webhooks: Option<webhooks::WebhooksApi>,
    /// The ramp warming domains are on, to show where they stand.
    pub warmup: mailpipe_core::WarmupSettings,
}

/// `mailpipe analytics`: the tenant API and dashboard, event ingestion and
/// the send API on `queues`, webhook deliveries, and purges every
/// `retention.purge_interval_hours`, until `shutdown`.
pub async fn run(
    settings: &AnalyticsSettings,
    store: Store,
    hasher: RecipientHasher,
    apis: Apis,
    queues: Queues,
    retention: Retention,
    shutdown: CancellationToken,
) -> Result<(), AnalyticsError> {
    let listener = tokio::net::TcpListener::bind(settings.listen)
        .await
        .map_err(|e| AnalyticsError::Bind(settings.listen, e))?;
    let mut state = ApiState::new(store.clone(), hasher)
        .with_domains(apis.domains)
        .with_warmup(apis.warmup)
        .with_secure_cookie(settings.secure_cookie);
    if let Some(sink) = queues.send {
        state = state.with_sink(sink);
    }
    let mut dispatcher = None;
    if let Some(w) = apis.webhooks {
        let run =
            mailpipe_webhooks::run(store.clone(), w.sealer.clone(), w.settings.clone(), shutdown.clone());
        dispatcher = Some(tokio::spawn(run));
        state = state.with_webhooks(w);
    }
    let router = router(state);
    let limits = settings.limits();
    let server = tokio::spawn({
        let shutdown = shutdown.clone();
        async move { mailpipe_http::serve(listener, router, limits, "api", shutdown).await }
    });
    tokio::spawn(privacy::purge_on_schedule(store.clone(), retention, shutdown.clone()));
    info!(listen = %settings.listen, "analytics started");
    let ingested = ingest::run(queues.events, &store, shutdown.clone()).await;
    shutdown.cancel();
    let _ = server.await;
    if let Some(d) = dispatcher {
        let _ = d.await;
    }
    ingested
}
