//! No tracker event is lost while PostgreSQL and then Kafka restart under
//! traffic: responses keep coming (events wait in the spool), and every
//! answered request ends up in the store and on the topic exactly once.
//! It holds the shared services alone, since it restarts them. The
//! tracker runs as its own process, so that its peak RSS through the
//! outages (events held in the spool, not in memory) can be read.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use mailpipe_core::{CampaignId, Category, JobId, TenantId};
use mailpipe_tests::*;
use mailpipe_token::{Action, Claims};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_event_is_lost_when_postgres_then_kafka_restart_under_traffic() {
    let env = TestEnv::setup().no_relay().tracker().tenants(&[]).exclusive().start().await;
    let ring = mailpipe::app::keys(&env.config()).unwrap().ring;
    let mut tracker = env.tracker_process();
    let addr = env.tracker_addr();
    eventually("the tracker listens", Duration::from_secs(20), || async { listens(&addr).await }).await;
    let token = ring
        .sign(&Claims {
            tenant_id: TenantId::parse("acme").unwrap(),
            campaign_id: CampaignId::parse("c").unwrap(),
            job_id: JobId::parse("j").unwrap(),
            category: Category::Marketing,
            sent_at: 1,
            action: Action::Open,
        })
        .unwrap();

    // Four clients fetch the pixel in a loop throughout.
    let answered = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicUsize::new(0));
    let running = Arc::new(AtomicBool::new(true));
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let (addr, path) = (addr.clone(), format!("/o/{token}"));
            let (answered, failed, running) = (answered.clone(), failed.clone(), running.clone());
            tokio::spawn(async move {
                while running.load(Ordering::Relaxed) {
                    let r =
                        http(&addr, "GET", &path, &[("User-Agent", "Mozilla/5.0 Chrome/126.0")], b"").await;
                    if r.status == 200 { &answered } else { &failed }.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            })
        })
        .collect();

    tokio::time::sleep(Duration::from_secs(1)).await;
    tokio::task::block_in_place(|| restart_service(env.exclusive(), "postgres"));
    let after_pg = answered.load(Ordering::Relaxed);
    tokio::time::sleep(Duration::from_secs(1)).await;
    tokio::task::block_in_place(|| restart_service(env.exclusive(), "kafka"));
    tokio::time::sleep(Duration::from_secs(1)).await;
    running.store(false, Ordering::Relaxed);
    for c in clients {
        c.await.unwrap();
    }
    let answered = answered.load(Ordering::Relaxed);
    assert_eq!(failed.load(Ordering::Relaxed), 0, "every request was answered");
    assert!(answered > after_pg, "requests kept being answered through the outages");

    // Every answered request has exactly one event, in the store...
    let count = || async {
        let mut conn = env.pg().await;
        sqlx::query_scalar::<_, i64>("SELECT COUNT(*) FROM events WHERE type = 'open'")
            .fetch_one(&mut conn)
            .await
            .unwrap()
    };
    eventually(&format!("{answered} events stored"), Duration::from_secs(90), || async {
        count().await >= answered as i64
    })
    .await;
    assert_eq!(count().await, answered as i64);
    // ...and on the topic (redelivered batches may repeat; event_id dedups).
    let ids = read_event_ids(&env.topics.events, answered, Duration::from_secs(90));
    assert_eq!(ids.len(), answered);
    let peak_rss_mb = tracker.peak_rss_mb();
    let status = tracker.terminate(Duration::from_secs(30)).await;
    assert!(status.success(), "SIGTERM ends the tracker cleanly after both outages: {status:?}");
    println!(
        "{answered} requests answered across both restarts; all recorded; tracker peak RSS {peak_rss_mb} MB"
    );
}
