//! Wiring: configuration in, running services out.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use mailpipe_core::SendJob;
use mailpipe_queue::kafka::{KafkaEvents, KafkaSettings, KafkaSource};
use mailpipe_render::{Composer, TemplateLimits, TrackingLinks};
use mailpipe_smtp::{FileTransport, SmtpPool, SmtpPoolConfig, TlsMode, Transport};
use mailpipe_store::{Store, SuppressionFilter};
use mailpipe_token::{Keyring, RecipientHasher, SigningKey};
use mailpipe_tracker::{EventWriter, TrackerState};
use mailpipe_worker::{EventOut, InDoubtPolicy, Pipeline, PipelineConfig, WorkerConfig};
use secrecy::ExposeSecret;
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::config::{Config, InDoubt, QueueKind, SmtpKind, SmtpTls, TokenSecrets, TrackerIp};

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

pub fn keyring(s: &TokenSecrets, active: u16) -> Result<(Arc<Keyring>, RecipientHasher)> {
    let keys = s.keys.iter().map(|(id, secret)| SigningKey { id: *id, secret: secret.clone() }).collect();
    let ring = Keyring::new(keys, active).context("tokens")?;
    let hasher = RecipientHasher::new(&s.recipient_key).context("tokens.recipient_key")?;
    Ok((Arc::new(ring), hasher))
}

/// Connects to the configured store and applies migrations.
pub async fn store(cfg: &Config) -> Result<Store> {
    let url = cfg.store.url.expose_secret();
    let store = Store::connect(url, cfg.store.max_connections).await.map_err(|e| {
        let hint = if url.starts_with("postgres") {
            "is PostgreSQL running? `scripts/services.sh up` starts one on 127.0.0.1:55432"
        } else {
            "check that the directory of the SQLite file exists and is writable"
        };
        anyhow::anyhow!("{e} ({}); {hint}", cfg.store.redacted_url())
    })?;
    store.migrate().await.context("applying migrations")?;
    Ok(store)
}

/// SQLite creates the file but not its directory.
pub fn ensure_sqlite_dir(cfg: &Config) -> Result<()> {
    let url = cfg.store.url.expose_secret();
    if let Some(path) = url.strip_prefix("sqlite:").map(|p| p.trim_start_matches("//")) {
        let path = path.split('?').next().unwrap_or(path);
        if let Some(dir) = Path::new(path).parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
    }
    Ok(())
}

pub fn kafka_settings(cfg: &Config) -> KafkaSettings {
    let k = &cfg.queue.kafka;
    let mut s = KafkaSettings::new(k.brokers.clone());
    s.group_id = k.group_id.clone();
    s.send_topic = k.send_topic.clone();
    s.events_topic = k.events_topic.clone();
    s.dlq_topic = k.dlq_topic.clone();
    s
}

pub fn kafka_hint(e: impl std::fmt::Display) -> anyhow::Error {
    anyhow::anyhow!("{e}; is Kafka running? `scripts/services.sh up` starts one on 127.0.0.1:59092")
}

/// The configured transport, checked for reachability.
pub async fn transport(cfg: &Config) -> Result<Arc<dyn Transport>> {
    match cfg.smtp.kind {
        SmtpKind::File => Ok(Arc::new(
            FileTransport::new(&cfg.smtp.dir)
                .with_context(|| format!("smtp.dir {}", cfg.smtp.dir.display()))?,
        )),
        SmtpKind::Smtp => {
            let s = &cfg.smtp;
            let pool = SmtpPool::new(SmtpPoolConfig {
                host: s.host.clone(),
                port: s.port,
                hello_name: s.hello_name.clone(),
                max_connections: s.max_connections,
                connect_timeout: Duration::from_secs(s.connect_timeout_secs),
                command_timeout: Duration::from_secs(s.command_timeout_secs),
                data_timeout: Duration::from_secs(s.data_timeout_secs),
                idle_timeout: Duration::from_secs(s.idle_timeout_secs),
                tls: match s.tls {
                    SmtpTls::None => TlsMode::None,
                    SmtpTls::Opportunistic => TlsMode::Opportunistic,
                    SmtpTls::Required => TlsMode::Required,
                },
                ca_pem: match &s.ca_file {
                    Some(f) => {
                        Some(std::fs::read(f).with_context(|| format!("smtp.ca_file {}", f.display()))?)
                    }
                    None => None,
                },
                credentials: s.username.clone().zip(s.password.clone()),
            })
            .context("smtp")?;
            pool.probe().await.map_err(|e| {
                anyhow::anyhow!("SMTP relay {}:{} is not answering: {e}; `scripts/services.sh up` starts smtp-sink on 127.0.0.1:2525", s.host, s.port)
            })?;
            Ok(Arc::new(pool))
        }
    }
}

/// The message composer, with every configured DKIM key loaded.
pub fn composer(cfg: &Config, keyring: Arc<Keyring>, hasher: RecipientHasher) -> Result<Composer> {
    let dkim = cfg.dkim_keys()?;
    Ok(Composer::new(
        keyring,
        hasher,
        TrackingLinks {
            base_url: cfg.tracker.public_url.clone(),
            unsubscribe_mailto: cfg.tracker.unsubscribe_mailto.clone(),
        },
        TemplateLimits::default(),
    )
    .with_dkim(dkim))
}

pub fn pipeline_config(cfg: &Config) -> PipelineConfig {
    PipelineConfig {
        in_doubt: match cfg.worker.in_doubt {
            InDoubt::AssumeDelivered => InDoubtPolicy::AssumeDelivered,
            InDoubt::Retry => InDoubtPolicy::Retry,
        },
        max_attempts: cfg.worker.max_attempts,
        retry_base: Duration::from_millis(cfg.worker.retry_base_ms),
        retry_max: Duration::from_millis(cfg.worker.retry_max_ms),
        max_age: Duration::from_secs(cfg.worker.max_age_secs),
        park_after: Duration::from_millis(cfg.worker.park_after_ms),
    }
}

pub fn worker_config(cfg: &Config) -> WorkerConfig {
    WorkerConfig {
        max_in_flight: cfg.worker.max_in_flight,
        grace_period: Duration::from_secs(cfg.worker.grace_period_secs),
        retry_poll: Duration::from_millis(cfg.worker.retry_poll_ms),
        retry_lease: Duration::from_secs(cfg.worker.retry_lease_secs),
    }
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
        Duration::from_millis(cfg.worker.suppression_poll_ms),
        shutdown.clone(),
    ));
    filter
}

/// `mailpipe worker`: the Kafka consumer group, until shutdown.
pub async fn run_worker(
    cfg: &Config,
    shutdown: CancellationToken,
    metrics: Option<mailpipe_tracker::MetricsRender>,
) -> Result<()> {
    if cfg.queue.kind != QueueKind::Kafka {
        bail!(
            "queue.kind: `worker` consumes from Kafka; set queue.kind = \"kafka\" (the embedded in-process queue runs as `mailpipe demo`)"
        );
    }
    let secrets = cfg.token_secrets()?;
    let (ring, hasher) = keyring(&secrets, cfg.tokens.active_key)?;
    // Every key is loaded before any service is contacted: a bad key is a
    // configuration error (exit 2), not a half-started worker.
    let composer = composer(cfg, ring, hasher)?;
    ensure_sqlite_dir(cfg)?;
    let store = store(cfg).await?;
    let settings = kafka_settings(cfg);
    let timeout = Duration::from_secs(cfg.queue.kafka.connect_timeout_secs);
    let events = KafkaEvents::connect(&settings, timeout).await.map_err(kafka_hint)?;
    let drain = Duration::from_secs(cfg.worker.grace_period_secs);
    let mut source = KafkaSource::connect(&settings, timeout, drain).await.map_err(kafka_hint)?;
    let transport = transport(cfg).await?;
    if let Some(render) = metrics {
        spawn_metrics_server(cfg.metrics.listen, render, shutdown.clone()).await?;
    }
    let throttle = Arc::new(mailpipe_smtp::Throttle::new(&cfg.throttle_config()?));
    let pipeline = Arc::new(
        Pipeline::new(
            store.clone(),
            composer,
            transport,
            EventOut::Kafka(events.clone()),
            pipeline_config(cfg),
        )
        .with_throttle(throttle)
        .with_suppression_filter(suppression_filter(cfg, &store, &shutdown)),
    );
    info!(brokers = %settings.brokers, group = %settings.group_id, store = store.backend(), "worker started");
    let report = mailpipe_worker::run(&mut source, pipeline, worker_config(cfg), shutdown).await;
    // Everything that finished has its offset stored; commit before leaving
    // the group so the next owner starts exactly after it.
    source.commit_stored()?;
    events.flush(Duration::from_secs(10))?;
    store.close().await;
    info!(abandoned = report.abandoned, "worker stopped");
    Ok(())
}

async fn spawn_metrics_server(
    addr: std::net::SocketAddr,
    render: mailpipe_tracker::MetricsRender,
    shutdown: CancellationToken,
) -> Result<()> {
    let listener =
        tokio::net::TcpListener::bind(addr).await.with_context(|| format!("metrics.listen {addr}"))?;
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
    secrets: &TokenSecrets,
    ring: Arc<Keyring>,
    store: Store,
    kafka: Option<KafkaEvents>,
    metrics: Option<mailpipe_tracker::MetricsRender>,
) -> Result<(EventWriter, axum::Router)> {
    use secrecy::ExposeSecret;
    let t = &cfg.tracker;
    let options = mailpipe_tracker::SpoolOptions {
        max_bytes: t.spool_max_mb.saturating_mul(1 << 20),
        sync_every: (t.spool_sync_ms > 0).then(|| Duration::from_millis(t.spool_sync_ms)),
        ..Default::default()
    };
    let spool = mailpipe_tracker::Spool::open_with(&t.spool_dir, options)
        .with_context(|| format!("tracker.spool_dir {}", t.spool_dir.display()))?;
    let policy = mailpipe_tracker::ShipPolicy {
        idle_after: Duration::from_millis(t.ship_idle_ms),
        max_delay: Duration::from_secs(t.ship_max_delay_secs),
        ..Default::default()
    };
    let (writer, handle) = EventWriter::spawn(store, kafka, Arc::new(spool), t.event_queue, policy);
    let per_ip = match &t.per_ip_rate {
        Some(r) => Some(
            r.parse::<mailpipe_smtp::RateSpec>()
                .map_err(|e| anyhow::anyhow!("tracker.per_ip_rate: {e}"))?
                .quota(),
        ),
        None => None,
    };
    let settings = mailpipe_tracker::TrackerSettings {
        public_url: t.public_url.trim_end_matches('/').to_owned(),
        ip_mode: match t.ip {
            TrackerIp::Truncate => mailpipe_tracker::IpMode::Truncate,
            TrackerIp::Hash => mailpipe_tracker::IpMode::Hash,
            TrackerIp::Drop => mailpipe_tracker::IpMode::Drop,
        },
        ip_key: secrets.recipient_key.expose_secret().to_vec(),
        trust_forwarded_for: t.trust_forwarded_for,
        machine_click_secs: t.machine_click_secs,
        max_path_bytes: t.max_path_bytes,
        max_header_bytes: t.max_header_bytes,
        per_ip,
    };
    Ok((writer, mailpipe_tracker::router(TrackerState::new(ring, handle, metrics, settings))))
}

pub fn serve_limits(cfg: &Config) -> mailpipe_tracker::ServeLimits {
    mailpipe_tracker::ServeLimits {
        header_read_timeout: Duration::from_secs(cfg.tracker.header_read_timeout_secs),
        grace: Duration::from_secs(cfg.tracker.shutdown_grace_secs),
    }
}

/// `mailpipe tracker`: serves until shutdown, then flushes events.
pub async fn run_tracker(
    cfg: &Config,
    shutdown: CancellationToken,
    metrics: Option<mailpipe_tracker::MetricsRender>,
) -> Result<()> {
    let secrets = cfg.token_secrets()?;
    let (ring, _) = keyring(&secrets, cfg.tokens.active_key)?;
    ensure_sqlite_dir(cfg)?;
    let store = store(cfg).await?;
    let kafka = match cfg.queue.kind {
        QueueKind::Kafka => Some(
            KafkaEvents::connect(
                &kafka_settings(cfg),
                Duration::from_secs(cfg.queue.kafka.connect_timeout_secs),
            )
            .await
            .map_err(kafka_hint)?,
        ),
        QueueKind::Memory => None,
    };
    let listener = tokio::net::TcpListener::bind(cfg.tracker.listen)
        .await
        .with_context(|| format!("tracker.listen {}: cannot bind", cfg.tracker.listen))?;
    let (writer, app) = tracker_app(cfg, &secrets, ring, store.clone(), kafka, metrics)?;
    info!(listen = %cfg.tracker.listen, "tracker started");
    mailpipe_tracker::serve(listener, app, serve_limits(cfg), shutdown).await?;
    // The router (and every handle) is gone; the writer drains and stops.
    writer.finish(Duration::from_secs(cfg.tracker.shutdown_grace_secs)).await;
    store.close().await;
    info!("tracker stopped");
    Ok(())
}

/// `mailpipe migrate`.
pub async fn migrate(cfg: &Config) -> Result<String> {
    ensure_sqlite_dir(cfg)?;
    let s = store(cfg).await?;
    let backend = s.backend();
    s.close().await;
    Ok(format!("migrations applied ({backend}, {})", cfg.store.redacted_url()))
}

/// A line of an enqueue file that is not a valid job.
#[derive(Debug)]
pub struct BadLine {
    pub line: usize,
    pub error: String,
}

/// A job ready to produce: its Kafka key (rate-limit key) and bytes.
pub type KeyedJob = (String, Vec<u8>);

/// Reads and validates a JSON Lines file of send jobs, keying each by its
/// rate-limit key: the recipient domain's provider group if it has one, else
/// the domain. One partition, so one worker, then carries every job a limit
/// applies to, which is what makes the limit hold across the worker group.
pub fn read_jobs(cfg: &Config, path: &Path) -> Result<(Vec<KeyedJob>, Vec<BadLine>)> {
    let throttle = mailpipe_smtp::Throttle::new(&cfg.throttle_config()?);
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut ok = Vec::new();
    let mut bad = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        match SendJob::from_json(line.as_bytes()) {
            Ok(job) => ok.push((throttle.key(job.queue_key()).to_owned(), line.as_bytes().to_vec())),
            Err(e) => bad.push(BadLine { line: i + 1, error: e.to_string() }),
        }
    }
    Ok((ok, bad))
}

/// `mailpipe enqueue`: produces jobs to `mailpipe.send.v1`, keyed by
/// recipient domain, and returns how many the broker acknowledged.
pub async fn enqueue(cfg: &Config, jobs: &[KeyedJob]) -> Result<usize> {
    let settings = kafka_settings(cfg);
    let producer = KafkaEvents::connect(&settings, Duration::from_secs(cfg.queue.kafka.connect_timeout_secs))
        .await
        .map_err(kafka_hint)?;
    let mut sent = 0;
    for chunk in jobs.chunks(1000) {
        let sends = chunk.iter().map(|(key, payload)| producer.enqueue(key, payload));
        futures::future::try_join_all(sends).await.context("producing to Kafka")?;
        sent += chunk.len();
    }
    producer.flush(Duration::from_secs(10))?;
    Ok(sent)
}
