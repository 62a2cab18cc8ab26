//! Wiring: configuration in, running services out. Each function here
//! builds what a library crate needs from [`Config`] and hands over; the
//! logic lives in the crates. Tests drive these functions directly.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use mailpipe_analytics::send::{JobSink, SinkError};
use mailpipe_analytics::webhooks::WebhooksApi;
use mailpipe_analytics::{AnalyticsError, Apis, DomainsApi, EventFeed, Queues};
use mailpipe_domains::{Sealer, Senders};
use mailpipe_queue::QueueError;
use mailpipe_queue::kafka::{KafkaEvents, KafkaSource};
use mailpipe_queue::stored::StoredSource;
use mailpipe_render::{Composer, Isolation, Sandbox, TrackingLinks};
use mailpipe_smtp::{OpenError, Transport};
use mailpipe_store::{Store, SuppressionFilter};
use mailpipe_throttle::Throttle;
use mailpipe_token::{Keyring, RecipientHasher, SigningKey};
use mailpipe_tracker::EventWriter;
use mailpipe_worker::{EventOut, Pipeline};
use secrecy::{ExposeSecret, SecretString};
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::config::{Config, QueueKind, TokenSecrets};
use crate::telemetry::MetricsRender;

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
}

/// A token that is cancelled by SIGINT/SIGTERM.
pub fn shutdown_token() -> CancellationToken {
    let token = CancellationToken::new();
    let t = token.clone();
    tokio::spawn(async move {
        shutdown_signal().await;
        info!("shutdown signal received");
        t.cancel();
    });
    token
}

/// Everything the token secrets give: the link keyring, the recipient
/// hasher, and the key that hashes client addresses (`tracker.ip = "hash"`).
pub struct Keys {
    pub ring: Arc<Keyring>,
    pub hasher: RecipientHasher,
    pub ip_key: Vec<u8>,
}

impl Keys {
    pub fn from_secrets(s: &TokenSecrets, active: u16) -> Result<Self> {
        let signing =
            s.keys.iter().map(|(id, secret)| SigningKey { id: *id, secret: secret.clone() }).collect();
        let mut ring = Keyring::new(signing, active).context("tokens")?.with_ageing(s.ageing);
        for &(id, at) in &s.retired {
            ring = ring.retire(id, at).context("tokens.retired")?;
        }
        let hasher = RecipientHasher::new(&s.recipient_key).context("tokens.recipient_key")?;
        // A key of its own: the recipient key keys suppressions for good,
        // and client addresses must not be linkable through it.
        let ip_key = s.ip_key.as_ref().map(|k| k.expose_secret().to_vec()).unwrap_or_default();
        Ok(Self { ring: Arc::new(ring), hasher, ip_key })
    }
}

/// Keeps `keys`' link generations current from the store: now, then every
/// `tokens.generation_refresh_secs` until `shutdown`. A failed read keeps
/// the last generations (a revocation waits for the store, nothing else).
pub async fn follow_link_generations(cfg: &Config, keys: &Keys, store: &Store, shutdown: &CancellationToken) {
    let generations = keys.ring.generations().clone();
    match store.link_generations().await {
        Ok(all) => generations.set_all(all),
        Err(e) => tracing::warn!(error = %e, "cannot read the tenants' link generations; will retry"),
    }
    let (store, shutdown, every) = (store.clone(), shutdown.clone(), cfg.tokens.generation_refresh);
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(every) => {}
            }
            match store.link_generations().await {
                Ok(all) => generations.set_all(all),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read the tenants' link generations; keeping the last")
                }
            }
        }
    });
}

/// The configured keys; an error names each missing secret.
pub fn keys(cfg: &Config) -> Result<Keys> {
    Keys::from_secrets(&cfg.token_secrets()?, cfg.tokens.active_key)
}

/// Connects to the configured store as the services do. The embedded
/// SQLite file is migrated here; a PostgreSQL schema must be current
/// already (`mailpipe migrate`, as its owner), since the services' role may
/// not change it.
pub async fn store(cfg: &Config) -> Result<Store> {
    let store = connect(cfg, &cfg.store.url).await?;
    if store.backend() == "sqlite" {
        store.migrate().await.context("applying migrations")?;
        return Ok(store);
    }
    let pending = store.pending_migrations().await.context("reading the applied migrations")?;
    if !pending.is_empty() {
        anyhow::bail!(
            "the database schema lacks migrations {pending:?} ({}): run `mailpipe migrate`, \
             which connects as the tables' owner (store.owner_url)",
            cfg.store.redacted_url()
        );
    }
    if store.owns_tables().await? {
        tracing::warn!(
            url = %cfg.store.redacted_url(),
            "connected to PostgreSQL as the tables' owner (or a role that bypasses row-level security): \
             the services need only a role with mailpipe_service's grants (docs/operations.md, \"Database roles\")"
        );
    }
    Ok(store)
}

/// Connects as the schema's owner (`store.owner_url`, or `store.url`), for
/// `migrate` and for an erasure's vacuum.
pub async fn owner_store(cfg: &Config) -> Result<Store> {
    connect(cfg, cfg.store.owner_url()).await
}

async fn connect(cfg: &Config, url: &SecretString) -> Result<Store> {
    let url = url.expose_secret();
    Store::connect(url, cfg.store.max_connections).await.map_err(|e| {
        let hint = if url.starts_with("postgres") {
            "is PostgreSQL running? `scripts/services.sh up` starts one on 127.0.0.1:55432"
        } else {
            "check that the directory of the SQLite file exists and is writable"
        };
        anyhow::anyhow!("{e} ({}); {hint}", crate::config::redact_url(url))
    })
}

pub fn kafka_hint(e: impl std::fmt::Display) -> anyhow::Error {
    anyhow::anyhow!("{e}; is Kafka running? `scripts/services.sh up` starts one on 127.0.0.1:59092")
}

/// A queue error, with the hint when no broker answered.
pub fn queue_error(e: QueueError) -> anyhow::Error {
    match e {
        QueueError::Unreachable { .. } => kafka_hint(e),
        other => other.into(),
    }
}

/// The configured transport, checked for reachability.
pub async fn transport(cfg: &Config) -> Result<Arc<dyn Transport>> {
    mailpipe_smtp::open(&cfg.smtp).await.map_err(|e| match e {
        OpenError::Unreachable { .. } => {
            anyhow::anyhow!("{e}; `scripts/services.sh up` starts smtp-sink on 127.0.0.1:2525")
        }
        other => other.into(),
    })
}

/// The message composer, with its render sandbox started (unless
/// `render.isolation` is "none"). (Which key signs a message is the
/// worker's choice, by its sender registry.)
pub async fn composer(cfg: &Config, keyring: Arc<Keyring>, hasher: RecipientHasher) -> Result<Composer> {
    let links = TrackingLinks {
        base_url: cfg.tracker.public_url.clone(),
        unsubscribe_mailto: cfg.tracker.unsubscribe_mailto.clone(),
    };
    let composer = Composer::new(keyring, hasher, links, cfg.render.limits())
        .with_max_message_bytes(cfg.render.max_message_bytes);
    if cfg.render.isolation == Isolation::None {
        return Ok(composer);
    }
    // This very executable, even after an upgrade replaced the file.
    let exe = std::path::PathBuf::from("/proc/self/exe");
    let sandbox = Arc::new(Sandbox::new(cfg.render.sandbox(exe)));
    sandbox.check().await.context("starting a render sandbox (render.sandbox_exe, render.isolation)")?;
    Ok(composer.with_sandbox(sandbox))
}

/// What seals and opens DKIM keys, from the configured key-encryption keys.
pub fn sealer(cfg: &Config) -> Result<Sealer> {
    Ok(Sealer::new(&cfg.kek_secrets()?, cfg.domains.active_key)?)
}

/// The sending domains a worker may sign for, loaded now and then kept
/// current in the background until `shutdown`.
pub async fn senders(
    cfg: &Config,
    store: &Store,
    sealer: Sealer,
    shutdown: &CancellationToken,
) -> Result<Arc<Senders>> {
    let senders = Senders::load(store, sealer).await.context("loading the sending domains")?;
    tokio::spawn(senders.clone().follow(store.clone(), cfg.domains.refresh, shutdown.clone()));
    Ok(senders)
}

/// The in-memory suppression filter, loaded and then kept current in the
/// background until `shutdown`: new suppressions (a tracker's unsubscribe, a
/// bounce seen by another worker) reach this worker within one poll.
pub fn suppression_filter(
    cfg: &Config,
    store: &Store,
    shutdown: &CancellationToken,
) -> Arc<SuppressionFilter> {
    let filter = SuppressionFilter::new(cfg.worker.suppression_filter_capacity);
    tokio::spawn(filter.clone().follow(
        store.clone(),
        cfg.worker.suppression_poll,
        cfg.worker.suppression_rebuild,
        shutdown.clone(),
    ));
    filter
}

/// `mailpipe worker`: the Kafka consumer group, or the single node's store
/// queue, until shutdown.
pub async fn run_worker(
    cfg: &Config,
    shutdown: CancellationToken,
    metrics: Option<MetricsRender>,
) -> Result<()> {
    if cfg.queue.kind == QueueKind::Memory {
        bail!(
            "queue.kind: `worker` consumes from Kafka (\"kafka\") or the store's durable queue (\"store\"); the in-process \"memory\" queue is the demo's (`mailpipe demo`)"
        );
    }
    // Every key is loaded before any service is contacted: a bad key is a
    // configuration error (exit 2), not a half-started worker.
    keys(cfg)?;
    sealer(cfg)?;
    let store = store(cfg).await?;
    let r = worker_on(cfg, &store, shutdown, metrics).await;
    store.close().await;
    r
}

/// The worker on `store`, which the caller closes.
async fn worker_on(
    cfg: &Config,
    store: &Store,
    shutdown: CancellationToken,
    metrics: Option<MetricsRender>,
) -> Result<()> {
    let (keys, sealer) = (keys(cfg)?, sealer(cfg)?);
    let events = match cfg.queue.kind {
        QueueKind::Kafka => Some(KafkaEvents::connect(&cfg.queue.kafka).await.map_err(kafka_hint)?),
        QueueKind::Store | QueueKind::Memory => None,
    };
    let pipeline = worker_pipeline(cfg, keys, store, sealer, events.as_ref(), &shutdown).await?;
    if let Some(render) = metrics {
        spawn_metrics_server("metrics.listen", cfg.metrics.listen, render, shutdown.clone()).await?;
    }
    match &events {
        Some(events) => {
            let kafka = &cfg.queue.kafka;
            let mut source =
                KafkaSource::connect(kafka, cfg.worker.grace_period).await.map_err(kafka_hint)?;
            info!(brokers = %kafka.brokers, group = %kafka.group_id, store = store.backend(), "worker started");
            let report = mailpipe_worker::run(&mut source, pipeline, &cfg.worker, shutdown).await;
            // Everything that finished has its offset stored; commit before
            // leaving the group so the next owner starts exactly after it.
            source.commit_stored()?;
            events.flush(Duration::from_secs(10))?;
            info!(abandoned = report.abandoned, "worker stopped");
        }
        None => {
            // One consumer per file: a second would read every row too.
            let _held = queue_lock(cfg)?;
            let mut source = StoredSource::new(store.clone(), cfg.queue.poll, STORE_QUEUE_BATCH);
            info!(store = %cfg.store.redacted_url(), "worker started on the store's queue");
            let report = mailpipe_worker::run(&mut source, pipeline, &cfg.worker, shutdown).await;
            // What finished leaves the queue; what did not is read again.
            if let Err(e) = source.flush().await {
                tracing::warn!(error = %e, "cannot remove finished jobs from the queue; the next start replays them");
            }
            info!(abandoned = report.abandoned, "worker stopped");
        }
    }
    Ok(())
}

/// Takes the store queue's lock, a file beside the SQLite file held while
/// this process consumes its queue (the system lets it go when the process
/// dies, kill -9 included).
fn queue_lock(cfg: &Config) -> Result<std::fs::File> {
    let url = cfg.store.url.expose_secret();
    let path = url.trim_start_matches("sqlite:").trim_start_matches("//");
    let path = path.split('?').next().unwrap_or(path);
    let lock = format!("{path}.queue-lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock)
        .with_context(|| format!("opening the store queue's lock file {lock}"))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => bail!(
            "another `mailpipe serve` or `worker` consumes the queue of {path} (it holds {lock}): run one per file"
        ),
        Err(std::fs::TryLockError::Error(e)) => Err(e).with_context(|| format!("locking {lock}")),
    }
}

/// Records a store-queue worker reads at a time.
const STORE_QUEUE_BATCH: usize = 256;

/// The worker's pipeline over `store`, its events to Kafka when `events`
/// is given, else only to the store; the sender registry, suppression
/// filter and breaker follow the store in the background until `shutdown`.
async fn worker_pipeline(
    cfg: &Config,
    keys: Keys,
    store: &Store,
    sealer: Sealer,
    events: Option<&KafkaEvents>,
    shutdown: &CancellationToken,
) -> Result<Arc<Pipeline>> {
    // New links are signed in each tenant's current link generation.
    follow_link_generations(cfg, &keys, store, shutdown).await;
    let composer = composer(cfg, keys.ring, keys.hasher).await?;
    let senders = senders(cfg, store, sealer, shutdown).await?;
    let transport = transport(cfg).await?;
    let out = match events {
        Some(e) => EventOut::Kafka(e.clone()),
        None => EventOut::StoreOnly,
    };
    Ok(Arc::new(
        Pipeline::new(store.clone(), composer, transport, out, cfg.worker.clone(), senders)
            .with_throttle(Arc::new(Throttle::new(&cfg.throttle)))
            .with_providers(Arc::new(
                mailpipe_domains::Providers::new(&cfg.providers, &cfg.throttle.groups)
                    .context("providers: the DNS resolver for MX lookups")?,
            ))
            .with_suppression_filter(suppression_filter(cfg, store, shutdown))
            .with_return_paths(cfg.return_paths.clone())
            .with_breaker(breaker(cfg, store, events, shutdown))
            .with_warmup(
                cfg.warmup
                    .enabled
                    .then(|| Arc::new(mailpipe_worker::Warmup::new(cfg.warmup.clone(), &cfg.breaker))),
            ),
    ))
}

/// `mailpipe serve`: the single-node mode. The worker on the store's
/// queue, the tracker, the API and analytics, and `inbound` when
/// `bounces.domain` is set, in this one process until shutdown; each
/// drains as it does alone. If one cannot start or fails, all stop.
pub async fn run_serve(
    cfg: &Config,
    shutdown: CancellationToken,
    metrics: Option<MetricsRender>,
) -> Result<()> {
    if cfg.queue.kind != QueueKind::Store {
        bail!(
            "queue.kind: `serve` is the single-node mode, whose queue is in the SQLite store: set queue.kind = \"store\" (beyond one machine, run `worker`, `tracker` and `analytics` on Kafka)"
        );
    }
    // Configuration errors before anything starts; then one store (one
    // pool on the file) for every part.
    keys(cfg)?;
    sealer(cfg)?;
    let store = store(cfg).await?;
    // A part that ends, for whatever reason, stops the others: a node
    // without its worker or its tracker is not running.
    let watch = |what: &'static str, r: Result<()>| {
        shutdown.cancel();
        r.with_context(|| format!("serve: the {what}"))
    };
    let inbound = async {
        match cfg.return_paths {
            Some(_) => watch("inbound listener", inbound_on(cfg, &store, shutdown.clone(), None).await),
            None => Ok(()),
        }
    };
    info!(store = %cfg.store.redacted_url(), "serving: worker, tracker, API and analytics");
    let (worker, tracker, analytics, inbound) = tokio::join!(
        async { watch("worker", worker_on(cfg, &store, shutdown.clone(), metrics).await) },
        async { watch("tracker", tracker_on(cfg, &store, shutdown.clone(), None).await) },
        async { watch("API and analytics", analytics_on(cfg, &store, shutdown.clone()).await) },
        inbound,
    );
    store.close().await;
    worker.and(tracker).and(analytics).and(inbound)
}

/// The reputation breaker's view of paused streams, kept current by a task
/// until `shutdown`; `None` when `breaker.enabled` is off.
fn breaker(
    cfg: &Config,
    store: &Store,
    events: Option<&KafkaEvents>,
    shutdown: &CancellationToken,
) -> Option<(Arc<mailpipe_worker::Streams>, Duration)> {
    if !cfg.breaker.enabled {
        return None;
    }
    let streams = Arc::new(mailpipe_worker::Streams::default());
    let task = mailpipe_worker::breaker::run(
        store.clone(),
        cfg.breaker.clone(),
        streams.clone(),
        events.cloned(),
        shutdown.clone(),
    );
    tokio::spawn(task);
    Some((streams, cfg.breaker.recheck))
}

/// `/metrics` (and `/healthz`) on an admin listener; `setting` names the
/// address's configuration key in errors.
async fn spawn_metrics_server(
    setting: &str,
    addr: std::net::SocketAddr,
    render: MetricsRender,
    shutdown: CancellationToken,
) -> Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| format!("{setting} {addr}"))?;
    let app = axum::Router::new()
        .route(
            "/metrics",
            axum::routing::get(move || {
                let r = render.clone();
                async move { r() }
            }),
        )
        .route("/healthz", axum::routing::get(|| async { "ok\n" }));
    tokio::spawn(async move {
        let _ = axum::serve(listener, app)
            .with_graceful_shutdown(async move { shutdown.cancelled().await })
            .await;
    });
    Ok(())
}

/// The tracker's router and its event writer, from configuration.
pub fn tracker_app(
    cfg: &Config,
    keys: &Keys,
    store: Store,
    kafka: Option<KafkaEvents>,
) -> Result<(EventWriter, axum::Router)> {
    Ok(mailpipe_tracker::app(&cfg.tracker, keys.ring.clone(), keys.ip_key.clone(), store, kafka)?)
}

/// `mailpipe inbound`: bounces, auto-replies and complaints that come back
/// to the return paths and the feedback address, until `shutdown`.
pub async fn run_inbound(
    cfg: &Config,
    shutdown: CancellationToken,
    metrics: Option<MetricsRender>,
) -> Result<()> {
    if cfg.return_paths.is_none() {
        bail!(
            "bounces.domain is not set: `mailpipe inbound` receives mail for the return paths on it (docs/bounces.md)"
        );
    }
    keys(cfg)?;
    let store = store(cfg).await?;
    let r = inbound_on(cfg, &store, shutdown, metrics).await;
    store.close().await;
    r
}

/// `inbound` on `store`, which the caller closes.
async fn inbound_on(
    cfg: &Config,
    store: &Store,
    shutdown: CancellationToken,
    metrics: Option<MetricsRender>,
) -> Result<()> {
    let Some(paths) = cfg.return_paths.clone() else { bail!("bounces.domain is not set") };
    let keys = keys(cfg)?;
    let events = match cfg.queue.kind {
        QueueKind::Kafka => Some(KafkaEvents::connect(&cfg.queue.kafka).await.map_err(kafka_hint)?),
        QueueKind::Store | QueueKind::Memory => None,
    };
    let b = &cfg.bounces;
    let listener = tokio::net::TcpListener::bind(b.listen)
        .await
        .with_context(|| format!("bounces.listen {}: cannot bind", b.listen))?;
    if let Some(render) = metrics {
        spawn_metrics_server("metrics.listen", cfg.metrics.listen, render, shutdown.clone()).await?;
    }
    let limits = mailpipe_inbound::smtp::Limits {
        hostname: b.hostname.clone(),
        max_message_bytes: b.max_message_kib << 10,
        max_connections: b.max_connections,
        command_timeout: Duration::from_secs(b.command_timeout_secs),
        data_timeout: Duration::from_secs(b.data_timeout_secs),
        tls: if b.tls_cert_file.trim().is_empty() {
            None
        } else {
            let (cert, key) = (b.tls_cert_file.trim(), b.tls_key_file.trim());
            Some(mailpipe_inbound::tls::acceptor(cert.as_ref(), key.as_ref())?)
        },
    };
    let inbound = Arc::new(mailpipe_inbound::Inbound::new(
        store.clone(),
        keys.hasher,
        events,
        paths.clone(),
        b.feedback_address(),
        b.soft_bounce_limit,
        b.soft_bounce_window_days,
    ));
    info!(listen = %listener.local_addr()?, domain = paths.domain(), "inbound started");
    mailpipe_inbound::run(listener, limits, inbound, shutdown).await;
    info!("inbound stopped");
    Ok(())
}

/// `mailpipe tracker`: serves until shutdown, then flushes events.
pub async fn run_tracker(
    cfg: &Config,
    shutdown: CancellationToken,
    metrics: Option<MetricsRender>,
) -> Result<()> {
    keys(cfg)?;
    let store = store(cfg).await?;
    let r = tracker_on(cfg, &store, shutdown, metrics).await;
    store.close().await;
    r
}

/// The tracker on `store`, which the caller closes.
async fn tracker_on(
    cfg: &Config,
    store: &Store,
    shutdown: CancellationToken,
    metrics: Option<MetricsRender>,
) -> Result<()> {
    let keys = keys(cfg)?;
    // A tenant's revoked links are refused from the first request on.
    follow_link_generations(cfg, &keys, store, &shutdown).await;
    let kafka = match cfg.queue.kind {
        QueueKind::Kafka => Some(KafkaEvents::connect(&cfg.queue.kafka).await.map_err(kafka_hint)?),
        QueueKind::Store | QueueKind::Memory => None,
    };
    let listener = tokio::net::TcpListener::bind(cfg.tracker.listen)
        .await
        .with_context(|| format!("tracker.listen {}: cannot bind", cfg.tracker.listen))?;
    // /metrics on its own listener: not for the public internet.
    if let (Some(render), Some(addr)) = (metrics, cfg.tracker.metrics_listen) {
        spawn_metrics_server("tracker.metrics_listen", addr, render, shutdown.clone()).await?;
    }
    let (writer, app) = tracker_app(cfg, &keys, store.clone(), kafka)?;
    info!(listen = %cfg.tracker.listen, "tracker started");
    mailpipe_tracker::serve(listener, app, &cfg.tracker, shutdown).await?;
    // The router (and every handle) is gone; the writer drains and stops.
    writer.finish(cfg.tracker.shutdown_grace).await;
    info!("tracker stopped");
    Ok(())
}

/// `mailpipe analytics`: the tenant API and dashboard, event counting and
/// scheduled purges, until shutdown.
pub async fn run_analytics(cfg: &Config, shutdown: CancellationToken) -> Result<()> {
    keys(cfg)?;
    sealer(cfg)?;
    let store = store(cfg).await?;
    let r = analytics_on(cfg, &store, shutdown).await;
    store.close().await;
    r
}

/// Analytics on `store`, which the caller closes.
async fn analytics_on(cfg: &Config, store: &Store, shutdown: CancellationToken) -> Result<()> {
    let keys = keys(cfg)?;
    let domains = DomainsApi::new(sealer(cfg)?, cfg.domains.clone());
    let webhooks = cfg.webhooks.enabled.then(|| -> Result<WebhooksApi> {
        Ok(WebhooksApi { sealer: Arc::new(sealer(cfg)?), settings: cfg.webhooks.clone() })
    });
    let apis = Apis { domains, webhooks: webhooks.transpose()?, warmup: cfg.warmup.clone() };
    tokio::spawn(mailpipe_domains::run_checks(store.clone(), cfg.domains.clone(), shutdown.clone()));
    let queues = match cfg.queue.kind {
        QueueKind::Kafka => {
            let kafka = &cfg.queue.kafka;
            // The API and the stats do not need the send topic: without it
            // (not there yet, or no Write for this service's principal) the
            // send API answers 503 and says why in the log.
            let send = match KafkaEvents::connect_to(kafka, &kafka.send_topic).await {
                Ok(producer) => {
                    let sink: Arc<dyn JobSink> =
                        Arc::new(SendTopic { producer, throttle: Throttle::new(&cfg.throttle) });
                    Some(sink)
                }
                Err(e) => {
                    tracing::warn!(topic = %kafka.send_topic, error = %e, "the send API is off: the send topic cannot be written");
                    None
                }
            };
            Queues { events: EventFeed::kafka(kafka, &cfg.analytics.group_id), send }
        }
        QueueKind::Store => {
            let sink: Arc<dyn JobSink> = Arc::new(StoreQueue {
                store: store.clone(),
                throttle: Throttle::new(&cfg.throttle),
                max_depth: cfg.queue.max_depth,
            });
            Queues { events: EventFeed::Store, send: Some(sink) }
        }
        QueueKind::Memory => Queues { events: EventFeed::Store, send: None },
    };
    mailpipe_analytics::run(&cfg.analytics, store.clone(), keys.hasher, apis, queues, cfg.retention, shutdown)
        .await
        .map_err(|e| match e {
            AnalyticsError::Queue(q) => queue_error(q),
            other => other.into(),
        })
}

/// `mailpipe migrate`.
pub async fn migrate(cfg: &Config) -> Result<String> {
    let s = owner_store(cfg).await?;
    s.migrate().await.context("applying migrations")?;
    let backend = s.backend();
    s.close().await;
    Ok(format!(
        "migrations applied ({backend}, {})",
        crate::config::redact_url(cfg.store.owner_url().expose_secret())
    ))
}

/// The send API's way to the send topic: each job keyed by its rate-limit
/// key, as `mailpipe enqueue` keys them, and acknowledged by the broker
/// (`acks=all`) before the API answers.
struct SendTopic {
    producer: KafkaEvents,
    throttle: Throttle,
}

impl JobSink for SendTopic {
    fn key(&self, job: &mailpipe_core::SendJob) -> String {
        self.throttle.key(job.queue_key()).to_owned()
    }

    fn submit<'a>(
        &'a self,
        jobs: &'a [KeyedJob],
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), SinkError>> + Send + 'a>> {
        Box::pin(async move {
            let sends = jobs.iter().map(|(key, payload)| self.producer.enqueue(key, payload));
            futures::future::try_join_all(sends).await?;
            Ok(())
        })
    }
}

/// The send API's way to the single node's queue: each batch appended in
/// one transaction, durable before the API answers.
struct StoreQueue {
    store: Store,
    throttle: Throttle,
    max_depth: u64,
}

/// Refuses `n` more jobs when the store queue would hold more than `max`.
async fn room_in_store_queue(store: &Store, n: usize, max: u64) -> Result<()> {
    let depth = store.queue_depth().await.context("reading the store queue's depth")?;
    if depth as u64 + n as u64 > max {
        bail!(
            "the store queue is full: {depth} jobs wait and {n} more would pass queue.max_depth ({max}); the worker (`mailpipe serve`) must catch up first"
        );
    }
    Ok(())
}

impl JobSink for StoreQueue {
    fn key(&self, job: &mailpipe_core::SendJob) -> String {
        self.throttle.key(job.queue_key()).to_owned()
    }

    fn submit<'a>(
        &'a self,
        jobs: &'a [KeyedJob],
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), SinkError>> + Send + 'a>> {
        Box::pin(async move {
            room_in_store_queue(&self.store, jobs.len(), self.max_depth).await.map_err(SinkError::from)?;
            self.store.enqueue_jobs(jobs).await?;
            Ok(())
        })
    }
}

/// A job ready to produce: its Kafka key (rate-limit key) and bytes.
pub type KeyedJob = (String, Vec<u8>);

/// Puts jobs on the configured queue (the send topic, acknowledged by the
/// broker, or the store's queue, committed) and returns how many.
pub async fn enqueue(cfg: &Config, jobs: &[KeyedJob]) -> Result<usize> {
    match cfg.queue.kind {
        QueueKind::Kafka => {}
        QueueKind::Store => {
            // All or nothing: one transaction for the whole file.
            let store = store(cfg).await?;
            room_in_store_queue(&store, jobs.len(), cfg.queue.max_depth).await?;
            store.enqueue_jobs(jobs).await.context("writing to the store's queue (nothing was queued)")?;
            store.close().await;
            return Ok(jobs.len());
        }
        QueueKind::Memory => bail!(
            "queue.kind: the in-process \"memory\" queue is the demo's; enqueue to \"store\" (the single-node mode's) or \"kafka\""
        ),
    }
    let kafka = &cfg.queue.kafka;
    let producer = KafkaEvents::connect_to(kafka, &kafka.send_topic).await.map_err(kafka_hint)?;
    let mut sent = 0;
    for chunk in jobs.chunks(1000) {
        let sends = chunk.iter().map(|(key, payload)| producer.enqueue(key, payload));
        futures::future::try_join_all(sends).await.context("producing to Kafka")?;
        sent += chunk.len();
    }
    producer.flush(Duration::from_secs(10))?;
    Ok(sent)
}
