//! Events and dead letters on PostgreSQL are partitioned by month
//! (migration 0021): retention drops whole months, an event emitted again
//! later is still stored once, and a database from before the migration
//! keeps its rows.

use mailpipe_core::{CampaignId, Event, EventType, JobId, TenantId};
use mailpipe_store::{DeadLetter, Retention, Store};
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

/// A deployment upgrading to 0021 keeps every row, without copying them:
/// its tables become the partitions of everything before next month, and
/// retention deletes from them row by row until they are all past it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgraded_database_keeps_its_rows_in_the_old_table() {
    let db = fresh_database().await;
    let dir = std::env::temp_dir().join(unique("migrations-0020"));
    std::fs::create_dir_all(&dir).unwrap();
    let src =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../crates/mailpipe-store/migrations/postgres");
    for f in std::fs::read_dir(&src).unwrap() {
        let f = f.unwrap().path();
        let name = f.file_name().unwrap().to_string_lossy().into_owned();
        if name.as_str() < "0021" {
            std::fs::copy(&f, dir.join(&name)).unwrap();
        }
    }
    let now = mailpipe_core::now_ms();
    {
        let mut owner = sqlx::PgConnection::connect(&db.url).await.unwrap();
        sqlx::migrate::Migrator::new(dir.as_path()).await.unwrap().run(&mut owner).await.unwrap();
        let _ = std::fs::remove_dir_all(&dir);
    }
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

    let r = Retention { events_days: 30, dead_letters_days: 30, ..keep_forever() };
    let rep = store.purge(now, r).await.unwrap();
    assert_eq!(rep.events_deleted, 30, "30 of 60 days are past: {rep:?}");
    let rep = store.purge(now + 400 * DAY, r).await.unwrap();
    assert!(rep.partitions_dropped >= 2, "the old tables go whole once all of them is past: {rep:?}");
    let left = partitions(&db.url, "events").await;
    assert!(!left.iter().any(|(n, _)| n.ends_with("_before_0021")), "{left:?}");
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
