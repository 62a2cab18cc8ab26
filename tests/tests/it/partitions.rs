//! Events and dead letters (migration 0021) and the send ledger (0022) on
//! PostgreSQL are partitioned by month: retention drops whole months, an
//! event emitted again later is still stored once, a job is claimed once
//! however the months move, and a database from before the migrations
//! keeps its rows.

use mailpipe_core::{CampaignId, Event, EventType, JobId, SendJob, TenantId};
use mailpipe_store::{ClaimRequest, DeadLetter, LedgerStatus, OutcomeRecord, Retention, Store};
use mailpipe_tests::*;
use sqlx::Connection;

const DAY: i64 = 86_400_000;

fn ev(kind: EventType, job: &str, disc: &str, at_ms: i64) -> Event {
    let mut e = Event::for_job(
        kind,
        &TenantId::parse("acme").unwrap(),
        &CampaignId::parse("spring").unwrap(),
        &JobId::parse(job).unwrap(),
        disc,
    );
    e.occurred_at = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(at_ms) * 1_000_000).unwrap();
    e
}

fn keep_forever() -> Retention {
    Retention {
        events_days: 0,
        ledger_days: 0,
        client_details_days: 0,
        dead_letters_days: 0,
        rejected_reports_days: 0,
        webhook_deliveries_days: 0,
        template_versions_days: 0,
        purge_interval_hours: 0,
    }
}

/// The partitions of `parent`, by name, with the rows each holds.
async fn partitions(db: &str, parent: &str) -> Vec<(String, i64)> {
    let mut conn = platform_connection(db).await;
    let names: Vec<String> = sqlx::query_scalar(
        "SELECT c.relname::text FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
         WHERE i.inhparent = $1::regclass ORDER BY 1",
    )
    .bind(parent)
    .fetch_all(&mut conn)
    .await
    .unwrap();
    let mut out = Vec::new();
    for name in names {
        // As the owner would see them: the rows are counted through the
        // parent, by the partition each sits in.
        let n: i64 =
            sqlx::query_scalar(&format!("SELECT COUNT(*) FROM {parent} WHERE tableoid = '{name}'::regclass"))
                .fetch_one(&mut conn)
                .await
                .unwrap();
        out.push((name, n));
    }
    out
}

async fn count(db: &str, sql: &str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(&mut platform_connection(db).await).await.unwrap()
}

/// The name suffix of the month `ahead` months after the one of `at_ms`.
fn month_after(at_ms: i64, ahead: i32) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp(at_ms / 1000).unwrap();
    let m = t.year() * 12 + i32::from(u8::from(t.month())) - 1 + ahead;
    format!("{}{:02}", m / 12, m % 12 + 1)
}

/// The first millisecond of the month `ahead` months after the one of `at_ms`.
fn month_start(at_ms: i64, ahead: i32) -> i64 {
    let m = month_after(at_ms, ahead);
    let (y, mo) = (m[..4].parse().unwrap(), m[4..].parse::<u8>().unwrap());
    let d = time::Date::from_calendar_date(y, time::Month::try_from(mo).unwrap(), 1).unwrap();
    d.midnight().assume_utc().unix_timestamp() * 1000
}

fn month(at_ms: i64) -> String {
    month_after(at_ms, 0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_drops_whole_months_and_keeps_the_rest() {
    let TestStore { store, db } = fresh_store().await;
    let now = mailpipe_core::now_ms();
    let old = now - 100 * DAY;
    // A purge as of 100 days ago made that month's partitions and the next
    // two's, as a deployment running since then would have.
    store.purge(old, keep_forever()).await.unwrap();
    let made = partitions(&db.url, "events").await;
    assert!(made.iter().any(|(n, _)| *n == format!("events_{}", month(old))), "{made:?}");
    assert!(
        made.iter().any(|(n, _)| *n == format!("events_{}", month(now))),
        "this month's, from the migration: {made:?}"
    );

    let mut opens: Vec<Event> =
        (0..50).map(|i| ev(EventType::Open, "j1", &format!("o{i}"), old + i)).collect();
    opens.push(ev(EventType::Open, "j1", "today", now));
    store.insert_events(&opens).await.unwrap();
    assert_eq!(count(&db.url, "SELECT COUNT(*) FROM events").await, 51);
    let old_month = format!("events_{}", month(old));
    assert!(partitions(&db.url, "events").await.contains(&(old_month.clone(), 50)));

    let r = Retention { events_days: 30, dead_letters_days: 30, ..keep_forever() };
    let rep = store.purge(now, r).await.unwrap();
    assert!(rep.partitions_dropped >= 1, "{rep:?}");
    assert_eq!(rep.events_deleted, 0, "no row deleted one by one: {rep:?}");
    let left = partitions(&db.url, "events").await;
    assert!(!left.iter().any(|(n, _)| *n == old_month), "the old month is dropped: {left:?}");
    assert!(left.contains(&(format!("events_{}", month(now)), 1)), "this month's open is kept: {left:?}");
    assert!(left.iter().any(|(n, _)| *n == "events_default"), "{left:?}");
    // The next two months are there before their rows.
    for ahead in [1, 2] {
        let m = format!("events_{}", month_after(now, ahead));
        assert!(left.iter().any(|(n, _)| *n == m), "{m} made ahead: {left:?}");
    }

    // A row older than any partition (a clock far behind) lands in the
    // default partition, and goes one by one past its retention.
    store.insert_events(&[ev(EventType::Open, "j2", "ancient", now - 400 * DAY)]).await.unwrap();
    assert!(partitions(&db.url, "events").await.contains(&("events_default".into(), 1)));
    let rep = store.purge(now, r).await.unwrap();
    assert_eq!((rep.events_deleted, rep.partitions_dropped), (1, 0), "{rep:?}");
    assert_eq!(count(&db.url, "SELECT COUNT(*) FROM events").await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_ahead_of_its_partition_moves_in_when_the_month_is_made() {
    let TestStore { store, db } = fresh_store().await;
    let now = mailpipe_core::now_ms();
    let later = now + 100 * DAY;
    store.insert_events(&[ev(EventType::Open, "j1", "early", later)]).await.unwrap();
    assert!(partitions(&db.url, "events").await.contains(&("events_default".into(), 1)));
    store.purge(later, keep_forever()).await.unwrap();
    let after = partitions(&db.url, "events").await;
    assert!(after.contains(&(format!("events_{}", month(later)), 1)), "{after:?}");
    assert!(after.contains(&("events_default".into(), 0)), "{after:?}");
}

/// An unsubscribe, a complaint, a stream pause: one id per job or tenant,
/// which may come again with a later time, in another month's partition.
/// Opens carry their time with them: a batch shipped twice is refused by
/// the primary key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_emitted_again_later_is_stored_once() {
    let TestStore { store, db } = fresh_store().await;
    let now = mailpipe_core::now_ms();
    store.purge(now - 40 * DAY, keep_forever()).await.unwrap();
    let first = ev(EventType::Unsubscribe, "j1", "", now - 40 * DAY);
    store.insert_events(std::slice::from_ref(&first)).await.unwrap();
    let again = ev(EventType::Unsubscribe, "j1", "", now);
    assert_eq!(first.event_id, again.event_id);
    let open = ev(EventType::Open, "j1", "r1", now);
    store.insert_events(&[again.clone(), open.clone(), again]).await.unwrap();
    store.insert_events(&[open.clone(), open]).await.unwrap();
    let rows: Vec<(String, i64)> = sqlx::query_as("SELECT type, occurred_at FROM events ORDER BY type")
        .fetch_all(&mut platform_connection(&db.url).await)
        .await
        .unwrap();
    assert_eq!(
        rows,
        [("open".to_string(), now), ("unsubscribe".to_string(), now - 40 * DAY)],
        "the first time stays"
    );

    // Two trackers given the same unsubscribe at once, with their own times.
    let tasks: Vec<_> = (0..8)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move {
                store.insert_events(&[ev(EventType::Unsubscribe, "j2", "", now + i)]).await
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    assert_eq!(count(&db.url, "SELECT COUNT(*) FROM events WHERE job_id = 'j2'").await, 1);
}

/// The same record dead-lettered by two workers at once (a rebalance hands
/// it over mid-way): one dead letter, one event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_dead_lettered_twice_at_once_is_kept_once() {
    let TestStore { store, db } = fresh_store().await;
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let store = store.clone();
            tokio::spawn(async move {
                let dl = DeadLetter {
                    source: "mailpipe.send.v1/0/9".into(),
                    reason: "header_injection".into(),
                    detail: "x".into(),
                    tenant_id: Some("acme".into()),
                    job_id: Some("job-9".into()),
                    payload: b"{}".to_vec(),
                };
                store
                    .dead_letter(&dl, &ev(EventType::DeadLettered, "job-9", "", mailpipe_core::now_ms()))
                    .await
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    assert_eq!(count(&db.url, "SELECT COUNT(*) FROM dead_letters").await, 1);
    assert_eq!(count(&db.url, "SELECT COUNT(*) FROM events").await, 1);
}

/// A deployment upgrading to 0021 and 0022 keeps every row, without copying them:
/// its tables become the partitions of everything before next month (the
/// ledger's, of month 0), and
/// retention deletes from them row by row until they are all past it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgraded_database_keeps_its_rows_in_the_old_table() {
    let db = fresh_database().await;
    let src =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../crates/mailpipe-store/migrations/postgres");
    migrate_postgres_before(&db.url, "0021").await;
    let now = mailpipe_core::now_ms();
    let store = Store::connect(&db.url, 2).await.unwrap();
    let events: Vec<Event> =
        (0..60).map(|d| ev(EventType::Sent, &format!("j{d}"), "", now - d * DAY - 1000)).collect();
    store.insert_events(&events).await.unwrap();
    let dl = DeadLetter {
        source: "mailpipe.send.v1/0/1".into(),
        reason: "r".into(),
        detail: "d".into(),
        tenant_id: None,
        job_id: None,
        payload: b"x".to_vec(),
    };
    store.dead_letter(&dl, &Event::unattributed(EventType::DeadLettered, &dl.source)).await.unwrap();
    // Three jobs sent before the upgrade (the store of today claims into
    // months, so the rows go in as the store of then wrote them).
    sqlx::query(
        "INSERT INTO send_ledger (tenant_id, job_id, campaign_id, category, recipient, recipient_domain, status, attempts, created_at, updated_at)
         SELECT 'acme', 'job-0000' || n, 'c', 'marketing', 'x', 'a.example', 'sent', 1, $1, $1 FROM generate_series(1, 3) n",
    )
    .bind(now - 2 * DAY)
    .execute(&mut platform_connection(&db.url).await)
    .await
    .unwrap();

    store.close().await;
    // As the owner, with the bound proven beforehand (docs/operations.md),
    // three months ahead; and in no scope: the migration must see the old
    // rows through their FORCEd policies itself.
    let bound = month_start(now, 3);
    {
        let mut owner = sqlx::PgConnection::connect(&db.url).await.unwrap();
        sqlx::query(&format!(
            "ALTER TABLE events ADD CONSTRAINT events_before_0021_bound CHECK (occurred_at < {bound})"
        ))
        .execute(&mut owner)
        .await
        .unwrap();
        sqlx::migrate::Migrator::new(src.as_path())
            .await
            .unwrap()
            .run(&mut owner)
            .await
            .expect("0021 over a database with rows");
    }
    let mut owner = platform_connection(&db.url).await;
    let legacy: String = sqlx::query_scalar(
        "SELECT pg_get_expr(relpartbound, oid) FROM pg_class WHERE relname = 'events_before_0021'",
    )
    .fetch_one(&mut owner)
    .await
    .unwrap();
    assert_eq!(
        legacy,
        format!("FOR VALUES FROM (MINVALUE) TO ('{bound}')"),
        "the proven bound is the old table's"
    );
    let store = Store::connect(&service_url(&db), 2).await.unwrap();
    assert!(
        partitions(&db.url, "events").await.contains(&("events_before_0021".into(), 61)),
        "60 sent and a dead letter's"
    );
    assert_eq!(count(&db.url, "SELECT COUNT(*) FROM dead_letters").await, 1);
    // Still the same events: their ids refuse a second copy.
    store.insert_events(&events[..5]).await.unwrap();
    store.dead_letter(&dl, &Event::unattributed(EventType::DeadLettered, &dl.source)).await.unwrap();
    assert_eq!(count(&db.url, "SELECT COUNT(*) FROM events").await, 61, "60 sent and the dead letter's");
    assert_eq!(count(&db.url, "SELECT COUNT(*) FROM dead_letters").await, 1);
    // The services' role reads them through the parent only.
    let mut service = sqlx::PgConnection::connect(&service_url(&db)).await.unwrap();
    let direct = sqlx::query("SELECT 1 FROM events_before_0021 LIMIT 1").execute(&mut service).await;
    assert!(direct.is_err(), "a partition is not the services' to read directly");

    // The ledger's old rows: a partition of their own, found by a claim.
    assert!(
        partitions(&db.url, "send_ledger").await.contains(&("send_ledger_before_0022".into(), 3)),
        "{:?}",
        partitions(&db.url, "send_ledger").await
    );
    let again = store.claim_jobs(&[claim_req(&send_job(1)), claim_req(&send_job(4))]).await.unwrap();
    assert_eq!((again[0].status, again[1].status), (LedgerStatus::Sent, LedgerStatus::Pending));
    assert_eq!(count(&db.url, "SELECT COUNT(*) FROM send_ledger").await, 4);

    let r = Retention { events_days: 30, dead_letters_days: 30, ledger_days: 30, ..keep_forever() };
    let rep = store.purge(now, r).await.unwrap();
    assert_eq!(rep.events_deleted, 30, "30 of 60 days are past: {rep:?}");
    assert_eq!(rep.ledger_rows_deleted, 0, "{rep:?}");
    let rep = store.purge(now + 400 * DAY, r).await.unwrap();
    assert!(rep.partitions_dropped >= 3, "the old tables go whole once all of them is past: {rep:?}");
    assert_eq!(rep.ledger_rows_deleted, 3, "the old ledger's rows one by one, then the table: {rep:?}");
    let left = partitions(&db.url, "events").await;
    assert!(!left.iter().any(|(n, _)| n.ends_with("_before_0021")), "{left:?}");
    let left = partitions(&db.url, "send_ledger").await;
    assert!(!left.iter().any(|(n, _)| n.ends_with("_before_0022")), "{left:?}");
}

/// A tracker batch can hold thousands of unsubscribes (a tenant can make
/// its own recipients click), and several writers run at once: the locks
/// are taken by stripe, at most 256 a transaction. A lock per id overflows
/// this server's lock table (64 × 300 slots, with slack) at 40,000 in one
/// transaction ("out of shared memory", tried in psql).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_of_many_unsubscribes_is_stored_whole() {
    let TestStore { store, db } = fresh_store().await;
    let now = mailpipe_core::now_ms();
    let many: Vec<Event> =
        (0..40_000).map(|i| ev(EventType::Unsubscribe, &format!("j{i}"), "", now)).collect();
    store.insert_events(&many).await.unwrap();
    assert_eq!(count(&db.url, "SELECT COUNT(*) FROM events").await, 40_000);
}

fn send_job(n: usize) -> SendJob {
    SendJob::from_json(&serde_json::to_vec(&job(n, "acme", "c", "a.example")).unwrap()).unwrap()
}

fn claim_req(j: &SendJob) -> ClaimRequest {
    ClaimRequest::new(j, &test_keys().hasher.hash(&j.to.email.canonical()), None)
}

fn sent(j: &SendJob) -> OutcomeRecord {
    let ev = Event::for_job(EventType::Sent, &j.tenant_id, &j.campaign_id, &j.job_id, "");
    OutcomeRecord::new(j.tenant_id.as_str(), j.job_id.as_str(), LedgerStatus::Sent, Some("250 ok"), ev)
}

async fn ledger_month(db: &str) -> String {
    let m: i32 = sqlx::query_scalar("SELECT part FROM send_ledger_current")
        .fetch_one(&mut platform_connection(db).await)
        .await
        .unwrap();
    m.to_string()
}

/// The ledger's month moves on (at the first purge of a month) while claims
/// of the same jobs run from several workers: each job still has one row,
/// and every claim of it reads that row, whichever month it went to.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_is_claimed_once_across_a_change_of_month() {
    let TestStore { store, db } = fresh_store().await;
    let now = mailpipe_core::now_ms();
    assert_eq!(ledger_month(&db.url).await, month(now));
    let jobs: Vec<SendJob> = (0..300).map(send_job).collect();
    let first: Vec<ClaimRequest> = jobs[..50].iter().map(claim_req).collect();
    store.claim_jobs(&first).await.unwrap();
    store.finish_many(&jobs[..50].iter().map(sent).collect::<Vec<_>>()).await.unwrap();

    store.purge(month_start(now, 1) + DAY, keep_forever()).await.unwrap();
    assert_eq!(ledger_month(&db.url).await, month_after(now, 1), "the month moved on");
    let again = store.claim_jobs(&first).await.unwrap();
    assert!(again.iter().all(|c| c.status == LedgerStatus::Sent), "claimed last month, found this month");

    // Four workers claim the other 250 jobs, each all of them in its own
    // order, in batches of 25, while the month moves on twice more.
    let store = std::sync::Arc::new(store);
    let rest: std::sync::Arc<Vec<SendJob>> = std::sync::Arc::new(jobs[50..].to_vec());
    let claimers: Vec<_> = (0..4)
        .map(|w| {
            let (store, rest) = (store.clone(), rest.clone());
            tokio::spawn(async move {
                let mut seen = std::collections::HashMap::new();
                let order: Vec<usize> = (0..rest.len()).map(|i| (i * 7 + w * 61) % rest.len()).collect();
                for chunk in order.chunks(25) {
                    let reqs: Vec<ClaimRequest> = chunk.iter().map(|&i| claim_req(&rest[i])).collect();
                    let claims = store.claim_jobs(&reqs).await.unwrap();
                    for (&i, c) in chunk.iter().zip(claims) {
                        seen.insert(i, c.created_at_ms);
                    }
                }
                seen
            })
        })
        .collect();
    for ahead in [2, 3] {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        store.purge(month_start(now, ahead) + DAY, keep_forever()).await.unwrap();
    }
    let mut views = Vec::new();
    for c in claimers {
        views.push(c.await.unwrap());
    }
    for i in 0..rest.len() {
        let times: std::collections::HashSet<i64> = views.iter().map(|v| v[&i]).collect();
        assert_eq!(times.len(), 1, "job {i}: every claim read the same row");
    }
    assert_eq!(ledger_month(&db.url).await, month_after(now, 3));
    assert_eq!(count(&db.url, "SELECT COUNT(*) FROM send_ledger").await, 300, "one row a job");
    assert_eq!(count(&db.url, "SELECT COUNT(DISTINCT (tenant_id, job_id)) FROM send_ledger").await, 300);
    let parts = partitions(&db.url, "send_ledger").await;
    assert!(parts.contains(&(format!("send_ledger_{}", month(now)), 50)), "{parts:?}");
}

/// The ledger's month moves on only between claims: the move waits for a
/// claim under way, which has read the month before it, and a claim waits
/// for a move under way, so that it reads the new month and finds every
/// row of the old one committed. (The test above races them; this one
/// holds each side of the lock, so that a claim or a move without it fails
/// here every time.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_month_moves_on_only_between_claims() {
    use sqlx::Connection as _;
    const MONTH_LOCK: i32 = 1_818_584_167;
    let TestStore { store, db } = fresh_store().await;
    let now = mailpipe_core::now_ms();

    // A claim under way: its transaction holds the month, shared, and has
    // written its row to the month it read.
    let mut conn = platform_connection(&db.url).await;
    let mut claim = conn.begin().await.unwrap();
    sqlx::query("SELECT pg_advisory_xact_lock_shared($1, 0)")
        .bind(MONTH_LOCK)
        .execute(&mut *claim)
        .await
        .unwrap();
    sqlx::query(
        "INSERT INTO send_ledger (tenant_id, job_id, campaign_id, category, recipient, recipient_domain, status, created_at, updated_at, part)
         SELECT 'acme', 'job-00001', 'c', 'marketing', 'x', 'a.example', 'pending', 12345, 12345, part FROM send_ledger_current",
    )
    .execute(&mut *claim)
    .await
    .unwrap();
    let mover = tokio::spawn({
        let store = store.clone();
        async move { store.purge(month_start(now, 1) + DAY, keep_forever()).await }
    });
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert!(!mover.is_finished(), "the move waits for the claim under way");
    claim.commit().await.unwrap();
    mover.await.unwrap().unwrap();
    assert_eq!(ledger_month(&db.url).await, month_after(now, 1));
    let c = store.claim_jobs(&[claim_req(&send_job(1))]).await.unwrap().remove(0);
    assert_eq!(c.created_at_ms, 12345, "the new month's claim found the old month's row");
    assert_eq!(count(&db.url, "SELECT COUNT(*) FROM send_ledger").await, 1);

    // A move under way: a claim waits for it.
    let mut conn = platform_connection(&db.url).await;
    let mut moving = conn.begin().await.unwrap();
    sqlx::query("SELECT pg_advisory_xact_lock($1, 0)").bind(MONTH_LOCK).execute(&mut *moving).await.unwrap();
    let claimer = tokio::spawn({
        let store = store.clone();
        async move { store.claim_jobs(&[claim_req(&send_job(2))]).await }
    });
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert!(!claimer.is_finished(), "the claim waits for the move under way");
    moving.commit().await.unwrap();
    assert_eq!(claimer.await.unwrap().unwrap()[0].status, LedgerStatus::Pending);
}

/// Retention drops a month of the ledger whole once its rows are past
/// `ledger_days`; its few unfinished jobs move to the default partition
/// first, where a claim still finds them. A month the cutoff falls in or
/// after stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_drops_a_ledger_month_and_keeps_its_unfinished_jobs() {
    let TestStore { store, db } = fresh_store().await;
    let now = mailpipe_core::now_ms();
    let jobs: Vec<SendJob> = (0..50).map(send_job).collect();
    store.claim_jobs(&jobs.iter().map(claim_req).collect::<Vec<_>>()).await.unwrap();
    store.finish_many(&jobs[..48].iter().map(sent).collect::<Vec<_>>()).await.unwrap();
    // Job 48 stays pending (a worker died before sending); job 49 waits
    // on the retry schedule.
    let j = &jobs[49];
    store
        .defer(j.tenant_id.as_str(), j.job_id.as_str(), 0, 1, Some("451 later"), now + 10 * DAY, b"job", None)
        .await
        .unwrap();
    let this_month = format!("send_ledger_{}", month(now));
    let r = Retention { ledger_days: 20, ..keep_forever() };

    // Next week: the cutoff is in this month or the last; nothing goes.
    let rep = store.purge(now + 7 * DAY, r).await.unwrap();
    assert_eq!((rep.ledger_rows_deleted, rep.partitions_dropped), (0, 0), "{rep:?}");
    assert!(partitions(&db.url, "send_ledger").await.contains(&(this_month.clone(), 50)));

    // Two months on, the cutoff is past this month: it goes whole.
    let rep = store.purge(month_start(now, 2) + DAY, r).await.unwrap();
    assert_eq!(rep.partitions_dropped, 1, "{rep:?}");
    assert_eq!(rep.ledger_rows_deleted, 0, "no row deleted one by one: {rep:?}");
    let left = partitions(&db.url, "send_ledger").await;
    assert!(!left.iter().any(|(n, _)| *n == this_month), "{left:?}");
    assert!(left.contains(&("send_ledger_default".into(), 2)), "the two unfinished jobs moved: {left:?}");
    let again = store.claim_jobs(&[claim_req(&jobs[48]), claim_req(&jobs[49])]).await.unwrap();
    assert_eq!(again[0].status, LedgerStatus::Pending);
    assert_eq!((again[1].status, again[1].scheduled), (LedgerStatus::Deferred, true));
    assert_eq!(count(&db.url, "SELECT COUNT(*) FROM send_ledger").await, 2);
    assert_eq!(store.retry_backlog().await.unwrap().0, 1, "still on the retry schedule");

    // Once finished and past retention, they go one by one from there.
    store.finish_many(&[sent(&jobs[48]), sent(&jobs[49])]).await.unwrap();
    let rep = store.purge(month_start(now, 2) + DAY, r).await.unwrap();
    assert_eq!((rep.ledger_rows_deleted, rep.partitions_dropped), (2, 0), "{rep:?}");
    assert_eq!(count(&db.url, "SELECT COUNT(*) FROM send_ledger").await, 0);
}

/// A month that keeps more than a thousand unfinished jobs (a tenant may
/// schedule many ahead) is not dropped, and its finished rows past
/// retention still go, one by one (migration 0023).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_month_with_many_unfinished_jobs_still_loses_its_finished_rows() {
    let TestStore { store, db } = fresh_store().await;
    let now = mailpipe_core::now_ms();
    let jobs: Vec<SendJob> = (0..1101).map(send_job).collect();
    store.claim_jobs(&jobs.iter().map(claim_req).collect::<Vec<_>>()).await.unwrap();
    store.finish_many(&jobs[..100].iter().map(sent).collect::<Vec<_>>()).await.unwrap();
    let r = Retention { ledger_days: 20, ..keep_forever() };
    let rep = store.purge(month_start(now, 2) + DAY, r).await.unwrap();
    assert_eq!((rep.ledger_rows_deleted, rep.partitions_dropped), (100, 0), "{rep:?}");
    let this_month = format!("send_ledger_{}", month(now));
    assert!(partitions(&db.url, "send_ledger").await.contains(&(this_month, 1001)), "the unfinished stay");
}
