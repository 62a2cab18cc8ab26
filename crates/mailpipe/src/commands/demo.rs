//! `mailpipe demo`: the whole pipeline in one process on the embedded
//! default, over a built-in sample campaign.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use std::process::ExitCode;

use anyhow::{Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use mailpipe_core::{CampaignId, Category, DkimAlgorithm, Domain, JobId, Suppression, TenantId};
use mailpipe_domains::{KeySource, Sealer, Senders, onboard};
use mailpipe_queue::memory::memory_queue;
use mailpipe_smtp::TransportKind;
use mailpipe_store::{Owner, Store};
use mailpipe_token::{Action, Claims};
use mailpipe_worker::{EventOut, Pipeline};
use rand::RngCore;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::app::{self, Keys};
use crate::config::{Config, TokenSecrets};

#[derive(clap::Args)]
pub struct Args {
    /// How many jobs the sample campaign has.
    #[arg(long, default_value_t = 1000)]
    messages: usize,
    /// Keep the tracker up this many seconds after sending (0: exit at
    /// once). Without it, the tracker runs until Ctrl-C.
    #[arg(long, value_name = "SECS")]
    serve_for: Option<u64>,
    /// No progress bar (for scripts and CI logs).
    #[arg(long)]
    no_progress: bool,
}

impl Args {
    pub fn progress(&self) -> bool {
        !self.no_progress
    }
}

/// `mailpipe demo`: fails unless every job is accounted for.
pub async fn run(args: Args, cfg: &Config) -> Result<ExitCode> {
    let opts = DemoOptions {
        messages: args.messages,
        serve_for: args.serve_for.map(Duration::from_secs),
        progress: args.progress(),
    };
    let summary = send_sample(cfg, opts, app::shutdown_token()).await?;
    Ok(if summary.accounted() == summary.enqueued { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

pub struct DemoOptions {
    pub messages: usize,
    /// Keep the tracker up after sending: `None` until Ctrl-C, `Some(d)` for `d`.
    pub serve_for: Option<Duration>,
    pub progress: bool,
}

/// What the demo did, checked against the store.
#[derive(Debug)]
pub struct DemoSummary {
    pub campaign: String,
    pub enqueued: u64,
    pub sent: u64,
    pub suppressed: u64,
    pub dead_lettered: u64,
    pub bounced: u64,
    pub failed: u64,
    pub replayed: u64,
    pub ledger_total: i64,
    pub events_total: i64,
    pub eml_files: Option<usize>,
    pub mail_dir: String,
    pub tracker_url: String,
    pub sample_click: String,
    pub sample_unsubscribe: String,
    pub elapsed: Duration,
}

impl DemoSummary {
    pub fn accounted(&self) -> u64 {
        self.sent + self.suppressed + self.dead_lettered + self.bounced + self.failed + self.replayed
    }
}

const FIRST: [&str; 12] = [
    "Ada", "Grace", "Alan", "Edsger", "Barbara", "Donald", "Frances", "Ken", "Radia", "Leslie", "Margaret",
    "Tim",
];
const CITIES: [&str; 6] = ["Lisbon", "Oslo", "Nairobi", "Osaka", "Quito", "Tallinn"];
const DOMAINS: [&str; 4] = ["example.com", "example.net", "example.org", "mail.example"];

const HTML: &str = r#"<!doctype html><html><head><meta charset="utf-8"><title>{{ subject_line }}</title>
<style>body{font-family:sans-serif}</style></head><body>
<h1>Hello {{ first_name }},</h1>
<p>Spring has reached {{ city }}. Here is what we picked for you:</p>
<ul>{% for p in products %}<li><a href="https://shop.acme.example/p/{{ p.sku }}?utm_campaign=spring">{{ p.name }}</a> &ndash; {{ p.price }}</li>{% endfor %}</ul>
<p><a href="https://shop.acme.example/sale?city={{ city | urlencode }}">See the whole sale</a></p>
<!--[if mso]><v:roundrect href="https://shop.acme.example/outlook" style="height:40px"><center>Shop now</center></v:roundrect><![endif]-->
<p>Questions? <a href="mailto:help@acme.example">Write to us</a>.</p>
<p style="font-size:small"><a href="{{ unsubscribe_url }}">Unsubscribe</a> &middot; <a href="https://acme.example/privacy" data-notrack>Privacy</a></p>
</body></html>"#;

/// The sample recipient number `r`.
fn recipient(r: usize) -> (&'static str, String) {
    let first = FIRST[r % FIRST.len()];
    (first, format!("{}.{r:04}@{}", first.to_lowercase(), DOMAINS[r % DOMAINS.len()]))
}

/// Job `i` of the sample, for recipient `r`. Job ids carry the campaign, so
/// a second run on the same database sends afresh instead of replaying.
fn job(i: usize, r: usize, tenant: &str, campaign: &str) -> serde_json::Value {
    let (first, email) = recipient(r);
    if tenant == "globex" {
        // Transactional mail through a registered template.
        return json!({
            "job_id": format!("{campaign}.r{i:05}"), "tenant_id": tenant, "campaign_id": campaign,
            "category": "transactional",
            "from": {"email": "orders@globex.example", "name": "Globex Books"},
            "to": {"email": email, "name": first},
            "template_id": "receipt",
            "vars": {"first_name": first, "order": 1000 + i, "total": format!("{}.{:02}", 10 + i % 90, i % 100)},
            "tags": ["receipt"]
        });
    }
    json!({
        "job_id": format!("{campaign}.m{i:05}"), "tenant_id": tenant, "campaign_id": campaign,
        "category": "marketing",
        "from": {"email": "news@acme.example", "name": "Acme Outdoor"},
        "to": {"email": email, "name": first},
        "subject": "{{ first_name }}, spring deals in {{ city }}",
        "html": HTML,
        "vars": {
            "first_name": first, "city": CITIES[i % CITIES.len()], "subject_line": "Spring deals",
            "products": [
                {"sku": format!("tent-{}", i % 7), "name": "Two-person tent", "price": "€149"},
                {"sku": format!("boots-{}", i % 5), "name": "Trail boots", "price": "€89"},
                {"sku": "lamp", "name": "Head lamp", "price": "€24"}
            ]
        },
        "headers": {"X-Campaign-Ref": "spring-2026"},
        "tags": ["spring", "demo"]
    })
}

/// The bad jobs every demo includes, to show that they are dead-lettered
/// with a reason and do not stop the run.
fn bad_job(i: usize, campaign: &str) -> Vec<u8> {
    match i % 4 {
        0 => b"{\"job_id\": \"broken\", this is not json".to_vec(),
        1 => {
            let mut j = job(i, i, "acme", campaign);
            j["job_id"] = json!(format!("{campaign}.bad{i}"));
            j["to"]["name"] = json!("Mallory\r\nBcc: everyone@example.com");
            serde_json::to_vec(&j).unwrap_or_default()
        }
        3 => {
            // Acme sending as Globex's domain: refused, nothing is signed.
            let mut j = job(i, i, "acme", campaign);
            j["job_id"] = json!(format!("{campaign}.bad{i}"));
            j["from"]["email"] = json!("billing@globex.example");
            serde_json::to_vec(&j).unwrap_or_default()
        }
        _ => {
            let mut j = job(i, i, "acme", campaign);
            j["job_id"] = json!(format!("{campaign}.bad{i}"));
            j["html"] = json!("<p>Hi {{ first_name.missing_attribute.deeper }}</p>");
            serde_json::to_vec(&j).unwrap_or_default()
        }
    }
}

/// Acme and Globex send as their own domains, each signed with its own key.
/// They are the platform's demo domains, attested rather than checked in
/// DNS (`.example` has none). Without a configured key-encryption key the
/// demo seals them under a throwaway one, so it makes them afresh each run.
async fn demo_senders(cfg: &Config, store: &Store, stop: &CancellationToken) -> Result<Arc<Senders>> {
    let (sealer, afresh) = match app::sealer(cfg) {
        Ok(s) => (s, false),
        Err(_) => {
            let mut kek = vec![0u8; 32];
            rand::rng().fill_bytes(&mut kek);
            (Sealer::new(&[(1, kek.into())], 1)?, true)
        }
    };
    for (domain, tenant, algorithm) in [
        ("acme.example", "acme", DkimAlgorithm::RsaSha256),
        ("globex.example", "globex", DkimAlgorithm::Ed25519Sha256),
    ] {
        let domain = Domain::parse(domain)?;
        if afresh {
            store.remove_sending_domain(&domain).await?;
        }
        onboard::add(
            store,
            &sealer,
            &cfg.domains,
            &domain,
            &Owner::Platform,
            &[TenantId::parse(tenant)?],
            true,
            KeySource::Generate(algorithm),
        )
        .await
        .with_context(|| format!("registering the demo sending domain {domain}"))?;
    }
    app::senders(cfg, store, sealer, stop).await
}

fn throwaway_secrets() -> TokenSecrets {
    let mut rng = rand::rng();
    let mut key = vec![0u8; 32];
    rng.fill_bytes(&mut key);
    let mut rkey = vec![0u8; 32];
    rng.fill_bytes(&mut rkey);
    let mut ikey = vec![0u8; 32];
    rng.fill_bytes(&mut ikey);
    TokenSecrets {
        keys: vec![(1, key.into())],
        retired: Vec::new(),
        ageing: mailpipe_token::Ageing::default(),
        recipient_key: rkey.into(),
        ip_key: Some(ikey.into()),
    }
}

/// Sends the sample campaign through the whole pipeline in this process,
/// prints the summary, and serves the tracker as `opts.serve_for` says.
pub async fn send_sample(
    cfg: &Config,
    opts: DemoOptions,
    shutdown: CancellationToken,
) -> Result<DemoSummary> {
    let started = Instant::now();
    let keys = match cfg.token_secrets() {
        Ok(s) => Keys::from_secrets(&s, cfg.tokens.active_key)?,
        Err(_) => Keys::from_secrets(&throwaway_secrets(), 1)?,
    };
    let store = app::store(cfg).await?;

    let stamp = time::OffsetDateTime::now_utc().unix_timestamp();
    let campaign = format!("spring-{stamp}");
    let receipts = format!("receipts-{stamp}");
    store.upsert_tenant(&TenantId::parse("acme")?, "Acme Outdoor").await?;
    store.upsert_tenant(&TenantId::parse("globex")?, "Globex Books").await?;
    // The demo's operator lets both send receipts.
    store.set_transactional_allowed(&TenantId::parse("acme")?, true).await?;
    store.set_transactional_allowed(&TenantId::parse("globex")?, true).await?;
    store
        .register_template(
            "globex",
            &receipts,
            "receipt",
            "Your Globex order {{ order }}",
            Some("<p>Thank you, {{ first_name }}.</p><p>Order {{ order }}: €{{ total }}.</p><p><a href=\"https://globex.example/orders/{{ order }}\">Track your order</a></p>"),
            None,
        )
        .await?;

    // Recipients 55, 155, 255... unsubscribed from marketing (platform-wide):
    // their marketing jobs are suppressed, and the receipt each of them also
    // gets (job 65, 165, ...) still goes out, because it is transactional.
    let n = opts.messages.max(10);
    let acme = TenantId::parse("acme")?;
    for r in (55..n).step_by(100) {
        let rref = keys.hasher.hash(&recipient(r).1);
        store.add_suppression(&Suppression::unsubscribe(&acme, rref)).await?;
    }

    // The tracker, on localhost, sharing this process's keys.
    let listener = tokio::net::TcpListener::bind(cfg.tracker.listen)
        .await
        .with_context(|| format!("tracker.listen {}: cannot bind (set MAILPIPE__TRACKER__LISTEN and MAILPIPE__TRACKER__PUBLIC_URL to another port)", cfg.tracker.listen))?;
    let (writer, app_router) = app::tracker_app(cfg, &keys, store.clone(), None)?;
    let tracker_stop = CancellationToken::new();
    let tracker_task = tokio::spawn({
        let (settings, stop) = (cfg.tracker.clone(), tracker_stop.clone());
        async move { mailpipe_tracker::serve(listener, app_router, &settings, stop).await }
    });

    let senders = demo_senders(cfg, &store, &tracker_stop).await?;
    let transport = app::transport(cfg).await?;
    let pipeline = Arc::new(
        Pipeline::new(
            store.clone(),
            app::composer(cfg, keys.ring.clone(), keys.hasher.clone()).await?,
            transport,
            EventOut::StoreOnly,
            cfg.worker.clone(),
            senders,
        )
        .with_suppression_filter(app::suppression_filter(cfg, &store, &tracker_stop)),
    );
    let counters = pipeline.counters.clone();

    let (producer, mut source) = memory_queue(cfg.queue.capacity);
    let (c1, c2) = (campaign.clone(), receipts.clone());
    let produce = tokio::spawn(async move {
        let mut enqueued = 0u64;
        for i in 0..n {
            let payload = if i % 250 == 249 {
                bad_job(i / 250, &c1)
            } else if i % 100 == 65 {
                serde_json::to_vec(&job(i, i - 10, "globex", &c2)).unwrap_or_default()
            } else if i % 10 == 0 {
                serde_json::to_vec(&job(i, i, "globex", &c2)).unwrap_or_default()
            } else {
                serde_json::to_vec(&job(i, i, "acme", &c1)).unwrap_or_default()
            };
            let key = DOMAINS[i % DOMAINS.len()];
            if producer.send(key, payload).await.is_err() {
                break;
            }
            enqueued += 1;
        }
        enqueued
    });

    let bar = if opts.progress { ProgressBar::new(n as u64) } else { ProgressBar::hidden() };
    bar.set_style(
        ProgressStyle::with_template("{spinner} sending [{bar:40}] {pos}/{len} {per_sec} eta {eta} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    let ticker = {
        let bar = bar.clone();
        let counters = counters.clone();
        tokio::spawn(async move {
            loop {
                bar.set_position(counters.finished());
                bar.set_message(format!(
                    "sent {} suppressed {} dead-lettered {}",
                    counters.sent.load(Ordering::Relaxed),
                    counters.suppressed.load(Ordering::Relaxed),
                    counters.dead_lettered.load(Ordering::Relaxed)
                ));
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };

    let report = mailpipe_worker::run(&mut source, pipeline, &cfg.worker, shutdown.clone()).await;
    let enqueued = produce.await.unwrap_or(0);
    ticker.abort();
    bar.set_position(counters.finished());
    bar.finish_and_clear();
    if report.abandoned > 0 {
        anyhow::bail!("interrupted with {} jobs in flight", report.abandoned);
    }

    let ledger: i64 = store.ledger_counts("acme", &campaign).await?.values().sum::<i64>()
        + store.ledger_counts("globex", &receipts).await?.values().sum::<i64>();
    let events: i64 = store.event_counts("acme", &campaign).await?.values().sum::<i64>()
        + store.event_counts("globex", &receipts).await?.values().sum::<i64>();

    let claims = |action| Claims {
        tenant_id: TenantId::parse("acme").expect("valid"),
        campaign_id: CampaignId::parse(campaign.as_str()).expect("valid"),
        job_id: JobId::parse(format!("{campaign}.m00001")).expect("valid"),
        category: Category::Marketing,
        sent_at: stamp as u32,
        action,
    };
    let base = cfg.tracker.public_url.trim_end_matches('/');
    let sample_click = format!(
        "{base}/c/{}",
        keys.ring.sign(&claims(Action::Click { url: "https://shop.acme.example/sale?city=Oslo".into() }))?
    );
    let rref = keys.hasher.hash("ada.0001@example.net");
    let sample_unsubscribe =
        format!("{base}/u/{}", keys.ring.sign(&claims(Action::Unsubscribe { recipient: rref }))?);
    let eml_files = (cfg.smtp.kind == TransportKind::File).then(|| {
        std::fs::read_dir(&cfg.smtp.dir)
            .map(|d| {
                d.filter_map(Result::ok).filter(|e| e.path().extension().is_some_and(|x| x == "eml")).count()
            })
            .unwrap_or(0)
    });

    let summary = DemoSummary {
        campaign: campaign.clone(),
        enqueued,
        sent: counters.sent.load(Ordering::Relaxed),
        suppressed: counters.suppressed.load(Ordering::Relaxed),
        dead_lettered: counters.dead_lettered.load(Ordering::Relaxed),
        bounced: counters.bounced.load(Ordering::Relaxed),
        failed: counters.failed.load(Ordering::Relaxed),
        replayed: counters.replayed.load(Ordering::Relaxed),
        ledger_total: ledger,
        events_total: events,
        eml_files,
        mail_dir: match cfg.smtp.kind {
            TransportKind::File => cfg.smtp.dir.display().to_string(),
            TransportKind::Smtp => format!("smtp://{}:{}", cfg.smtp.host, cfg.smtp.port),
        },
        tracker_url: base.to_owned(),
        sample_click,
        sample_unsubscribe,
        elapsed: started.elapsed(),
    };

    print_summary(&summary);
    match opts.serve_for {
        Some(d) if d.is_zero() => {}
        Some(d) => {
            println!("\nThe tracker stays up for {}s.", d.as_secs());
            tokio::select! { _ = tokio::time::sleep(d) => {}, _ = shutdown.cancelled() => {} }
        }
        None => {
            println!("\nThe tracker is running at {base}; press Ctrl-C to stop.");
            shutdown.cancelled().await;
        }
    }
    tracker_stop.cancel();
    let _ = tracker_task.await;
    writer.finish(cfg.tracker.shutdown_grace).await;
    store.close().await;
    Ok(summary)
}

fn print_summary(s: &DemoSummary) {
    println!("mailpipe demo: campaign {} ({:.1}s)", s.campaign, s.elapsed.as_secs_f64());
    println!("  enqueued       {:>6}", s.enqueued);
    println!("  sent           {:>6}", s.sent);
    println!(
        "  suppressed     {:>6}   (marketing unsubscribes; their receipts still went out)",
        s.suppressed
    );
    println!(
        "  dead-lettered  {:>6}   (malformed JSON, header injection, template error, another tenant's domain)",
        s.dead_lettered
    );
    if s.bounced + s.failed + s.replayed > 0 {
        println!("  bounced        {:>6}", s.bounced);
        println!("  failed         {:>6}", s.failed);
        println!(
            "  replayed       {:>6}   (finished earlier; outcome re-published, nothing sent)",
            s.replayed
        );
    }
    let ok = s.accounted() == s.enqueued;
    println!(
        "  accounted for  {:>6} of {}  {}",
        s.accounted(),
        s.enqueued,
        if ok { "(every job has exactly one outcome)" } else { "(MISMATCH)" }
    );
    println!("  ledger rows {} · events stored {}", s.ledger_total, s.events_total);
    match s.eml_files {
        Some(n) => println!("  mail: {n} .eml files in {}", s.mail_dir),
        None => println!("  mail: sent to {}", s.mail_dir),
    }
    println!("\nTry a tracked link in a browser (it redirects to the shop):\n  {}", s.sample_click);
    println!(
        "An unsubscribe page (GET shows a button; nothing changes until you press it):\n  {}",
        s.sample_unsubscribe
    );
}
