//! `mailpipe analytics` (ingestion, the tenant API, scheduled purges) and
//! the privacy commands: `purge`, `erase`, and suppression management.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use mailpipe_core::{EmailAddress, Event, TenantId};
use mailpipe_queue::JobSource;
use mailpipe_queue::kafka::KafkaSource;
use mailpipe_store::{ErasureReport, PurgeReport, Retention, Store};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::app;
use crate::config::{Config, QueueKind};

pub fn retention(cfg: &Config) -> Retention {
    let r = cfg.retention;
    Retention {
        events_days: r.events_days,
        ledger_days: r.ledger_days,
        client_details_days: r.client_details_days,
        dead_letters_days: r.dead_letters_days,
    }
}

/// `mailpipe purge`: deletes what is past its retention, now.
pub async fn purge(cfg: &Config) -> Result<PurgeReport> {
    let store = app::store(cfg).await?;
    Ok(store.purge(mailpipe_core::now_ms(), retention(cfg)).await?)
}

/// `mailpipe erase`: removes a recipient's personal data, keeping only a
/// keyed hash in the suppression list.
pub async fn erase(cfg: &Config, email: &str, tenant: Option<&str>) -> Result<ErasureReport> {
    let addr = EmailAddress::parse(email).map_err(|e| anyhow::anyhow!("--email: {e}"))?;
    let tenant = tenant.map(TenantId::parse).transpose().map_err(|e| anyhow::anyhow!("--tenant: {e}"))?;
    let secrets = cfg.token_secrets()?;
    let (_, hasher) = app::keyring(&secrets, cfg.tokens.active_key)?;
    let hash = hasher.hash(&addr.canonical()).to_hex();
    let store = app::store(cfg).await?;
    Ok(store.erase(addr.as_str(), &hash, tenant.as_ref()).await?)
}

/// `mailpipe suppress import`: all lines or none.
pub async fn import_suppressions(cfg: &Config, file: &Path, scope: Option<&str>) -> Result<u64> {
    let text = std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    let secrets = cfg.token_secrets()?;
    let (_, hasher) = app::keyring(&secrets, cfg.tokens.active_key)?;
    let rows = match mailpipe_api::parse_suppression_csv(&text, scope, |a| hasher.hash(a).to_hex()) {
        Ok(rows) => rows,
        Err(errors) => {
            let mut msg = format!("{}: {} bad line(s); nothing was imported\n", file.display(), errors.len());
            for e in &errors {
                msg.push_str(&format!("  line {}: {}\n", e.line, e.error));
            }
            bail!(msg.trim_end().to_owned());
        }
    };
    let store = app::store(cfg).await?;
    Ok(store.import_suppressions(&rows).await?)
}

/// Counts events into the aggregates until `shutdown`: from
/// `mailpipe.events.v1` with Kafka (offsets stored only after the batch is
/// counted), or from the store's events table embedded.
pub async fn ingest(cfg: &Config, store: Store, shutdown: CancellationToken) -> Result<()> {
    match cfg.queue.kind {
        QueueKind::Kafka => {
            let mut settings = app::kafka_settings(cfg);
            settings.send_topic = settings.events_topic.clone();
            settings.group_id = cfg.analytics.group_id.clone();
            let timeout = Duration::from_secs(cfg.queue.kafka.connect_timeout_secs);
            let mut source = KafkaSource::connect(&settings, timeout, Duration::from_secs(10))
                .await
                .map_err(app::kafka_hint)?;
            let acker = source.acker();
            loop {
                let first = tokio::select! {
                    _ = shutdown.cancelled() => break,
                    r = source.recv() => r,
                };
                let mut batch = match first {
                    Ok(Some(d)) => vec![d],
                    Ok(None) => break,
                    Err(e) => {
                        warn!(error = %e, "events: receive failed");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        continue;
                    }
                };
                // Take what else is ready, up to 500, without waiting long.
                while batch.len() < 500 {
                    match tokio::time::timeout(Duration::from_millis(20), source.recv()).await {
                        Ok(Ok(Some(d))) => batch.push(d),
                        _ => break,
                    }
                }
                let events: Vec<Event> =
                    batch.iter().filter_map(|d| serde_json::from_slice(&d.payload).ok()).collect();
                let mut delay = Duration::from_millis(100);
                while let Err(e) = store.apply_events(&events).await {
                    warn!(error = %e, "cannot count events; retrying");
                    tokio::select! {
                        _ = shutdown.cancelled() => return Ok(()),
                        _ = tokio::time::sleep(delay) => {}
                    }
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
                for d in &batch {
                    acker.ack(&d.id);
                }
                metrics::counter!("mailpipe_analytics_events_total").increment(events.len() as u64);
            }
            source.commit_stored()?;
        }
        QueueKind::Memory => {
            // Counting is idempotent, so re-reading from the start each
            // pass is correct; the embedded store is small.
            loop {
                ingest_store_once(&store).await?;
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
        }
    }
    Ok(())
}

/// `mailpipe analytics`: the tenant API and dashboard, event ingestion, and
/// scheduled purges, until shutdown.
pub async fn run(cfg: &Config, shutdown: CancellationToken) -> Result<()> {
    app::ensure_sqlite_dir(cfg)?;
    let store = app::store(cfg).await?;
    let secrets = cfg.token_secrets()?;
    let (_, hasher) = app::keyring(&secrets, cfg.tokens.active_key)?;
    let listener = tokio::net::TcpListener::bind(cfg.analytics.listen)
        .await
        .with_context(|| format!("analytics.listen {}: cannot bind", cfg.analytics.listen))?;
    let router = mailpipe_api::router(mailpipe_api::ApiState::new(store.clone(), hasher));
    let server = tokio::spawn({
        let shutdown = shutdown.clone();
        async move {
            axum::serve(listener, router)
                .with_graceful_shutdown(async move { shutdown.cancelled().await })
                .await
        }
    });
    if cfg.retention.purge_interval_hours > 0 {
        let (store, r, every) =
            (store.clone(), retention(cfg), Duration::from_secs(cfg.retention.purge_interval_hours * 3600));
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            loop {
                match store.purge(mailpipe_core::now_ms(), r).await {
                    Ok(rep) => info!(?rep, "retention purge"),
                    Err(e) => warn!(error = %e, "retention purge failed; next run as scheduled"),
                }
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(every) => {}
                }
            }
        });
    }
    info!(listen = %cfg.analytics.listen, "analytics started");
    let ingested = ingest(cfg, store.clone(), shutdown.clone()).await;
    shutdown.cancel();
    let _ = server.await;
    store.close().await;
    ingested
}

/// Shared with the embedded demo: count everything in the store now.
pub async fn ingest_store_once(store: &Store) -> Result<usize> {
    let (mut cursor, mut n) = (0, 0);
    loop {
        let (next, events) = store.events_after(cursor, 1000).await?;
        if events.is_empty() {
            return Ok(n);
        }
        n += store.apply_events(&events).await?;
        cursor = next;
    }
}

/// Why a feedback report could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ArfError {
    #[error("not a MIME message")]
    NotMime,
    #[error("no message/feedback-report part (not an ARF report, RFC 5965)")]
    NotArf,
    #[error("the report's original message carries no X-Mailpipe-Ref header")]
    NoReference,
    #[error("X-Mailpipe-Ref {0:?} is not tenant/job")]
    BadReference(String),
    #[error("no message {0} was sent by this platform")]
    UnknownMessage(String),
}

impl ArfError {
    pub fn reason(&self) -> &'static str {
        match self {
            ArfError::NotMime => "not_mime",
            ArfError::NotArf => "not_arf",
            ArfError::NoReference => "no_reference",
            ArfError::BadReference(_) => "bad_reference",
            ArfError::UnknownMessage(_) => "unknown_message",
        }
    }
}

/// The `tenant/job` reference of the original message inside an ARF report.
pub fn arf_reference(report: &[u8]) -> Result<(TenantId, mailpipe_core::JobId), ArfError> {
    let msg = mail_parser::MessageParser::default().parse(report).ok_or(ArfError::NotMime)?;
    use mail_parser::MimeHeaders;
    let is_feedback = msg.parts.iter().any(|p| p.is_content_type("message", "feedback-report"));
    if !is_feedback {
        return Err(ArfError::NotArf);
    }
    // The original is a message/rfc822 part or text/rfc822-headers: find the
    // header in the raw bytes of whichever part carries it.
    let text = String::from_utf8_lossy(report);
    let unfolded = text.replace("\r\n", "\n");
    let value = unfolded
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim().eq_ignore_ascii_case("x-mailpipe-ref").then(|| v.trim().to_owned())
        })
        .ok_or(ArfError::NoReference)?;
    let (t, j) = value.split_once('/').ok_or_else(|| ArfError::BadReference(value.clone()))?;
    let tenant = TenantId::parse(t).map_err(|_| ArfError::BadReference(value.clone()))?;
    let job = mailpipe_core::JobId::parse(j).map_err(|_| ArfError::BadReference(value.clone()))?;
    Ok((tenant, job))
}

/// `mailpipe complaint`: maps an ARF report to its tenant and message,
/// suppresses the recipient platform-wide for every category, and records a
/// `complaint` event. A report that cannot be used is stored with its reason
/// and the error returned.
pub async fn complaint(cfg: &Config, report: &[u8]) -> Result<(TenantId, mailpipe_core::JobId)> {
    let store = app::store(cfg).await?;
    let outcome = async {
        let (tenant, job) = arf_reference(report)?;
        let Some((recipient, campaign)) = store
            .ledger_recipient(tenant.as_str(), job.as_str())
            .await
            .map_err(|_| ArfError::UnknownMessage(format!("{tenant}/{job}")))?
        else {
            return Err(ArfError::UnknownMessage(format!("{tenant}/{job}")));
        };
        Ok((tenant, job, recipient, campaign))
    }
    .await;
    let (tenant, job, recipient, campaign) = match outcome {
        Ok(v) => v,
        Err(e) => {
            store.reject_report(e.reason(), report).await?;
            bail!("report rejected ({}): {e}; stored for inspection", e.reason());
        }
    };
    let secrets = cfg.token_secrets()?;
    let (_, hasher) = app::keyring(&secrets, cfg.tokens.active_key)?;
    // An erased recipient's ledger row holds `erased:<hash>` already.
    let hash = match recipient.strip_prefix("erased:") {
        Some(h) => h.to_owned(),
        None => hasher
            .hash(&EmailAddress::parse(&recipient).map(|a| a.canonical()).unwrap_or(recipient.clone()))
            .to_hex(),
    };
    store
        .add_suppression(
            None,
            &hash,
            "complaint",
            mailpipe_core::Category::Transactional,
            Some(tenant.as_str()),
        )
        .await?;
    let campaign = mailpipe_core::CampaignId::parse(campaign).map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut e = Event::for_job(mailpipe_core::EventType::Complaint, &tenant, &campaign, &job, "");
    e.recipient_ref = Some(hash);
    e.reason = Some("arf".into());
    store.insert_events(std::slice::from_ref(&e)).await?;
    if cfg.queue.kind == QueueKind::Kafka {
        let k = mailpipe_queue::kafka::KafkaEvents::connect(
            &app::kafka_settings(cfg),
            Duration::from_secs(cfg.queue.kafka.connect_timeout_secs),
        )
        .await
        .map_err(app::kafka_hint)?;
        k.publish(std::slice::from_ref(&e)).await?;
    }
    Ok((tenant, job))
}
