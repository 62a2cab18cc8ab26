//! kill -9 of the tracker process under traffic loses no answered event.
//!
//! The tracker runs as its own process with the default spool settings, in
//! which a batch is written to the spool file before its requests are
//! answered and fdatasynced on a timer (`tracker.spool_sync_ms`). Written
//! data is the kernel's once `write` returns, so killing the process loses
//! none of it. Shipping is held back for the first process, so every event
//! is only in the spool when it dies; the next start must ship them all.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mailpipe_core::{CampaignId, Category, JobId, TenantId};
use mailpipe_tests::*;
use mailpipe_token::{Action, Claims};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answered_events_survive_kill_9_of_the_tracker_and_ship_at_the_next_start() {
    let env = TestEnv::setup().no_relay().tracker().tenants(&[]).start().await;
    assert!(!env.config().tracker.spool_sync.is_zero(), "this test is about the default, timed-sync spool");
    let ring = mailpipe::app::keys(&env.config()).unwrap().ring;

    // The first tracker ships nothing: traffic never pauses long enough.
    let mut tracker = env.tracker_process_with(&[
        ("MAILPIPE__TRACKER__SHIP_IDLE_MS", "600000"),
        ("MAILPIPE__TRACKER__SHIP_MAX_DELAY_SECS", "600"),
    ]);
    let addr = env.tracker_addr();
    eventually("the tracker listens", Duration::from_secs(30), || async { listens(&addr).await }).await;

    // Eight clients each open their own jobs' pixels, one job per request,
    // so that every answered request names the one event it must leave.
    let answered: Arc<Mutex<HashSet<String>>> = Arc::default();
    let clients: Vec<_> = (0..8)
        .map(|c| {
            let (addr, ring, answered) = (addr.clone(), ring.clone(), answered.clone());
            tokio::spawn(async move {
                let mut refused = 0;
                for i in 0.. {
                    let job = format!("c{c}-{i:06}");
                    let token = ring
                        .sign(&Claims {
                            tenant_id: TenantId::parse("acme").unwrap(),
                            campaign_id: CampaignId::parse("crash").unwrap(),
                            job_id: JobId::parse(&job).unwrap(),
                            category: Category::Marketing,
                            sent_at: 1,
                            action: Action::Open,
                        })
                        .unwrap();
                    let ua = [("User-Agent", "Mozilla/5.0 Chrome/126.0")];
                    match try_http(&addr, "GET", &format!("/o/{token}"), &ua, b"").await {
                        Ok(r) => {
                            assert_eq!(r.status, 200, "a live tracker answers a valid pixel with 200");
                            answered.lock().unwrap().insert(job);
                        }
                        // The tracker is gone: this client is done.
                        Err(_) => {
                            refused += 1;
                            if refused >= 3 {
                                return;
                            }
                        }
                    }
                }
            })
        })
        .collect();

    eventually("1,000 requests answered", Duration::from_secs(60), || async {
        answered.lock().unwrap().len() >= 1000
    })
    .await;
    tracker.kill_9();
    for c in clients {
        c.await.unwrap();
    }
    let answered = answered.lock().unwrap().clone();

    let mut conn = env.pg().await;
    let stored: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM events").fetch_one(&mut conn).await.unwrap();
    assert_eq!(stored, 0, "the first tracker shipped nothing, so every event was only in its spool");

    // The next start, with the same spool and default settings, ships them.
    let mut restarted = env.tracker_process();
    let open_events = || async {
        let mut conn = env.pg().await;
        sqlx::query_as::<_, (String, i64)>(
            "SELECT job_id, COUNT(*) FROM events WHERE type = 'open' GROUP BY job_id",
        )
        .fetch_all(&mut conn)
        .await
        .unwrap()
        .into_iter()
        .collect::<HashMap<String, i64>>()
    };
    eventually(
        &format!("the {} answered events shipped", answered.len()),
        Duration::from_secs(60),
        || async {
            let got = open_events().await;
            answered.iter().all(|j| got.contains_key(j))
        },
    )
    .await;
    let got = open_events().await;
    assert!(got.values().all(|&n| n == 1), "an event stored twice");
    // Requests in flight at the kill may have been spooled, not answered:
    // at most one per client.
    let unanswered = got.keys().filter(|j| !answered.contains(*j)).count();
    assert!(
        unanswered <= 8,
        "{unanswered} events of unanswered requests, more than the 8 that were in flight"
    );
    let status = restarted.terminate(Duration::from_secs(30)).await;
    assert!(status.success(), "SIGTERM ends the tracker cleanly: {status:?}");
    println!(
        "tracker kill -9: {} requests answered, all {} events shipped at the next start ({unanswered} from requests cut off by the kill)",
        answered.len(),
        got.len()
    );
}
