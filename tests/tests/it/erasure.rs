//! Erasure leaves no trace: an address that was sent to in mixed case,
//! bounced with a reply that echoes it, dead-lettered, clicked through a
//! personalised link and complained about is found afterwards in no text
//! column of any table, in any case, on PostgreSQL or SQLite. And SMTP
//! replies leave the worker without the address.

use std::time::Duration;

use mailpipe_analytics::privacy::erase;
use mailpipe_core::{
    CampaignId, ClientInfo, EmailAddress, Event, EventType, JobId, Reason, Scope, SendJob, TenantId, Verdict,
    VerdictClass,
};
use mailpipe_store::{DeadLetter, LedgerStatus, Store};
use mailpipe_tests::*;
use sqlx::Connection;

/// As the producer wrote it; erased below in yet another case.
const WRITTEN: &str = "Erase.Me@Example.COM";
const ERASED_AS: &str = "erase.ME@example.com";
/// Every form of it a search must not find, lower-cased.
const FORMS: [&str; 2] = ["erase.me@example.com", "erase.me%40example.com"];
const BYSTANDER: &str = "keep@example.com";

fn ev(kind: EventType, job: &str, disc: &str) -> Event {
    let (t, c, j) =
        (TenantId::parse("acme").unwrap(), CampaignId::parse("spring").unwrap(), JobId::parse(job).unwrap());
    let mut e = Event::for_job(kind, &t, &c, &j, disc);
    e.provider = Some("other".into());
    e
}

fn send_job(i: usize, to: &str) -> SendJob {
    let mut j = job(i, "acme", "spring", "example.com");
    j["to"]["email"] = to.into();
    SendJob::from_json(&serde_json::to_vec(&j).unwrap()).unwrap()
}

/// Everything the platform keeps of a person, through the store's own
/// paths, as an older worker (one that stored replies unredacted) left it:
/// job 1 bounced with a reply echoing the address in upper case, opened and
/// clicked through a link carrying it percent-encoded; job 2 to a bystander;
/// job 3 to the person in lower case, from before the ledger had the hash
/// (the caller clears it); two dead letters, and a rejected complaint
/// report quoting the address.
async fn seed(store: &Store) {
    store.upsert_tenant(&TenantId::parse("acme").unwrap(), "Acme").await.unwrap();
    for (i, to) in [(1, WRITTEN), (2, BYSTANDER), (3, "erase.me@example.com")] {
        claim(store, &send_job(i, to)).await;
    }
    let reply = "550 5.1.1 <ERASE.ME@EXAMPLE.COM>: Recipient address rejected";
    let bounced = ev(EventType::Bounced, "job-00001", "");
    store.finish("acme", "job-00001", LedgerStatus::Bounced, Some(reply), &bounced).await.unwrap();
    let sent = ev(EventType::Sent, "job-00002", "");
    store.finish("acme", "job-00002", LedgerStatus::Sent, Some("250 2.0.0 Ok"), &sent).await.unwrap();
    let mut click = ev(EventType::Click, "job-00001", "k");
    click.url = Some("https://shop.example/welcome?u=Erase.Me%40Example.com".into());
    click.verdict = Some(Verdict { class: VerdictClass::Human, reason: "test".into() });
    click.client = Some(ClientInfo { ip: Some("203.0.113.0/24".into()), ua_family: "chrome".into() });
    let mut open = ev(EventType::Open, "job-00002", "o");
    open.verdict = click.verdict.clone();
    store.insert_events(&[click.clone(), open.clone()]).await.unwrap();
    store.apply_events(&[click, open]).await.unwrap();
    // One dead letter whose JSON escapes the `@` (no plain search finds it),
    // one naming the address in its detail and payload.
    let escaped = br#"{"job_id":"job-00008","tenant_id":"acme","to":{"email":"Erase.Me\u0040example.com"}}"#;
    let plain = br#"{"job_id":"job-00009","tenant_id":"acme","to":{"email":"ERASE.ME@example.com"}}"#;
    for (n, detail, payload) in [
        (8, "header_injection", &escaped[..]),
        (9, "to.email: ERASE.ME@example.com is not allowed", &plain[..]),
    ] {
        let job = format!("job-0000{n}");
        let dl = DeadLetter {
            source: format!("mailpipe.send.v1/0/{n}"),
            reason: "invalid_job".into(),
            detail: detail.into(),
            tenant_id: Some("acme".into()),
            job_id: Some(job.clone()),
            payload: payload.to_vec(),
        };
        store.dead_letter(&dl, &ev(EventType::DeadLettered, &job, "")).await.unwrap();
    }
    let report =
        b"From: fbl@isp.example\r\n\r\nTo: Erase.Me@example.com\r\nX-Mailpipe-Ref: acme/job-00001\r\n";
    store.reject_report("bad_reference", report).await.unwrap();
}

/// `table.column` of every text or binary column holding any of `FORMS`,
/// in any case.
async fn scan_postgres(db: &str) -> Vec<String> {
    let mut conn = platform_connection(db).await;
    let columns: Vec<(String, String, String)> = sqlx::query_as(
        "SELECT table_name::text, column_name::text, data_type::text FROM information_schema.columns
         WHERE table_schema = 'public' AND data_type IN ('text', 'character varying', 'bytea', 'json', 'jsonb')",
    )
    .fetch_all(&mut conn)
    .await
    .unwrap();
    assert!(columns.len() > 30, "the scan sees the schema: {} columns", columns.len());
    let mut found = Vec::new();
    for (table, column, kind) in columns {
        // `escape` keeps printable ASCII as it is.
        let text = if kind == "bytea" {
            format!("encode(\"{column}\", 'escape')")
        } else {
            format!("\"{column}\"::text")
        };
        for form in FORMS {
            let sql = format!("SELECT count(*) FROM \"{table}\" WHERE strpos(lower({text}), $1) > 0");
            let n: i64 = sqlx::query_scalar(&sql).bind(form).fetch_one(&mut conn).await.unwrap();
            if n > 0 {
                found.push(format!("{table}.{column} ({n} rows hold {form})"));
            }
        }
    }
    found
}

async fn scan_sqlite(path: &std::path::Path) -> Vec<String> {
    let mut conn = sqlx::SqliteConnection::connect(&format!("sqlite:{}", path.display())).await.unwrap();
    let columns: Vec<(String, String)> = sqlx::query_as(
        "SELECT m.name, c.name FROM sqlite_master m, pragma_table_info(m.name) c WHERE m.type = 'table'",
    )
    .fetch_all(&mut conn)
    .await
    .unwrap();
    assert!(columns.len() > 30, "the scan sees the schema: {} columns", columns.len());
    let mut found = Vec::new();
    for (table, column) in columns {
        for form in FORMS {
            let sql = format!(
                "SELECT count(*) FROM \"{table}\" WHERE instr(lower(CAST(\"{column}\" AS TEXT)), $1) > 0"
            );
            let n: i64 = sqlx::query_scalar(&sql).bind(form).fetch_one(&mut conn).await.unwrap();
            if n > 0 {
                found.push(format!("{table}.{column} ({n} rows hold {form})"));
            }
        }
    }
    found
}

fn holds_address(bytes: &[u8]) -> bool {
    let text = String::from_utf8_lossy(bytes).to_lowercase();
    FORMS.iter().any(|f| text.contains(f))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn erasure_leaves_the_address_in_no_column_of_any_table_on_postgres_or_sqlite() {
    let address = EmailAddress::parse(ERASED_AS).unwrap();
    let hasher = test_keys().hasher;

    let TestStore { store, db } = fresh_store().await;
    seed(&store).await;
    let mut conn = platform_connection(&db).await;
    sqlx::query("UPDATE send_ledger SET recipient_hash = NULL WHERE job_id = 'job-00003'")
        .execute(&mut conn)
        .await
        .unwrap();
    let before = scan_postgres(&db).await;
    for table in [
        "send_ledger.recipient",
        "send_ledger.last_reply",
        "events.payload",
        "campaign_links.url",
        "dead_letters.detail",
        "dead_letters.payload",
        "rejected_reports.report",
    ] {
        assert!(
            before.iter().any(|f| f.starts_with(table)),
            "the seed puts the address in {table}: {before:?}"
        );
    }
    let r = erase(&store, &hasher, &address, &Scope::Platform).await.unwrap();
    assert_eq!(
        (
            r.ledger_rows_anonymised,
            r.dead_letters_deleted,
            r.campaign_links_deleted,
            r.rejected_reports_deleted
        ),
        (2, 2, 1, 1),
        "{r:?}"
    );
    assert_eq!(scan_postgres(&db).await, Vec::<String>::new(), "no trace left in PostgreSQL");
    // A redelivered job is still recognised, and stores nothing new; a new
    // job for them stores the keyed hash, not the address.
    assert!(claim(&store, &send_job(1, WRITTEN)).await.status.is_terminal());
    claim(&store, &send_job(4, "ERASE.me@Example.com")).await;
    assert_eq!(scan_postgres(&db).await, Vec::<String>::new(), "still none after a redelivery and a new job");
    // Nothing of anyone else's went with it.
    let kept: Vec<(String, String)> = sqlx::query_as(
        "SELECT recipient, coalesce(last_reply, '') FROM send_ledger WHERE job_id = 'job-00002'",
    )
    .fetch_all(&mut conn)
    .await
    .unwrap();
    assert_eq!(kept, [(BYSTANDER.to_owned(), "250 2.0.0 Ok".to_owned())]);
    assert_eq!(
        store.event_counts("acme", "spring").await.unwrap().get("open"),
        Some(&1),
        "the bystander's open stays"
    );
    let s = store
        .suppression(
            &hasher.hash(&address.canonical()),
            &TenantId::parse("globex").unwrap(),
            mailpipe_core::Category::Transactional,
        )
        .await
        .unwrap();
    assert_eq!(s.map(|s| (s.reason, s.scope)), Some((Reason::Erasure, Scope::Platform)));

    let path = std::env::temp_dir().join(format!("{}.db", unique("erasure")));
    let lite = Store::connect(&format!("sqlite:{}", path.display()), 4).await.unwrap();
    lite.migrate().await.unwrap();
    seed(&lite).await;
    let mut conn = sqlx::SqliteConnection::connect(&format!("sqlite:{}", path.display())).await.unwrap();
    sqlx::query("UPDATE send_ledger SET recipient_hash = NULL WHERE job_id = 'job-00003'")
        .execute(&mut conn)
        .await
        .unwrap();
    conn.close().await.unwrap();
    assert!(scan_sqlite(&path).await.len() >= 7, "the seed holds the address");
    let r = erase(&lite, &hasher, &address, &Scope::Platform).await.unwrap();
    assert_eq!(
        (r.ledger_rows_anonymised, r.dead_letters_deleted, r.rejected_reports_deleted),
        (2, 2, 1),
        "{r:?}"
    );
    assert_eq!(scan_sqlite(&path).await, Vec::<String>::new(), "no trace left in SQLite");
    claim(&lite, &send_job(4, "ERASE.me@Example.com")).await;
    assert_eq!(scan_sqlite(&path).await, Vec::<String>::new(), "nor after a new job for them");
    lite.close().await;
    let mut raw = std::fs::read(&path).unwrap();
    raw.extend(std::fs::read(format!("{}-wal", path.display())).unwrap_or_default());
    assert!(!holds_address(&raw), "not even in free pages of the file");
    let _ = std::fs::remove_file(&path);
}

/// A server that echoes the recipient, as Postfix does in `550 5.1.1
/// <jane@x>: Recipient address rejected`.
const ECHO: &str = "550 5.1.1 <ERASE.ME@EXAMPLE.COM>: Recipient address rejected: User unknown";

/// The tracker asks which of a shipping batch's (tenant, job) pairs went to
/// an erased person: exactly those, on PostgreSQL and SQLite, never one
/// tenant's job read as another's (the ledger has both, to both people).
/// On PostgreSQL each distinct pair is one probe of the ledger's key per
/// month. Asked by `tenant_id = ANY(..) AND job_id = ANY(..)`, 100 pairs
/// of 100 tenants are 10,000 combinations: the planner read the month of
/// 20,000 rows whole, or, with a generic plan, probed every combination.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tracker_asks_about_erased_recipients_pair_by_pair() {
    let pg = fresh_store().await;
    let lite = fresh_sqlite_store().await;
    let pair = |t: &str, j: usize| (t.to_owned(), format!("job-{j:05}"));
    for store in [&pg.store, &*lite] {
        for (i, tenant, to) in
            [(1, "acme", WRITTEN), (2, "acme", BYSTANDER), (1, "beta", BYSTANDER), (2, "beta", ERASED_AS)]
        {
            store.upsert_tenant(&TenantId::parse(tenant).unwrap(), tenant).await.unwrap();
            let mut j = job(i, tenant, "spring", "example.com");
            j["to"]["email"] = to.into();
            claim(store, &SendJob::from_json(&serde_json::to_vec(&j).unwrap()).unwrap()).await;
        }
        let address = EmailAddress::parse(ERASED_AS).unwrap();
        store.erase(&address, test_keys().hasher.hash(&address.canonical()), &Scope::Platform).await.unwrap();
        let asked = [
            pair("acme", 1),
            pair("acme", 2),
            pair("beta", 1),
            pair("beta", 2),
            pair("acme", 1),
            pair("gamma", 3),
        ];
        let erased = store.erased_jobs(&asked).await.unwrap();
        assert_eq!(erased, [pair("acme", 1), pair("beta", 2)].into_iter().collect());
    }

    // Probes of the ledger's key, on a database nothing else has read, with
    // a ledger large enough (and analysed) that the planner reads it by its
    // key, as it would in production.
    let probe = fresh_store().await;
    let mut c = platform_connection(&probe.db).await;
    sqlx::query(
        "INSERT INTO send_ledger (tenant_id, job_id, campaign_id, category, recipient, recipient_domain,
                                  status, attempts, created_at, updated_at, recipient_hash, part)
         SELECT 't' || lpad((n % 100)::text, 3, '0'), 'bulk-' || n, 'spring', 'marketing', 'user' || n || '@a.example',
                'a.example', 'sent', 1, 0, 0, md5(n::text), (SELECT part FROM send_ledger_current)
         FROM generate_series(1, 20000) AS n",
    )
    .execute(&mut c)
    .await
    .unwrap();
    sqlx::query("ANALYZE send_ledger").execute(&mut c).await.unwrap();
    // The month holding the rows: read whole, or probed once per pair?
    // (Found in the catalog: a query of the month's rows would count here.)
    let month: String = sqlx::query_scalar(
        "SELECT c.oid::regclass::text FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
         WHERE i.inhparent = 'send_ledger'::regclass AND c.reltuples > 0",
    )
    .fetch_one(&mut c)
    .await
    .unwrap();
    let scans =
        format!("SELECT seq_scan, idx_scan FROM pg_stat_user_tables WHERE relid = '{month}'::regclass");
    let (seq0, idx0): (i64, i64) = sqlx::query_as(&scans).fetch_one(&mut c).await.unwrap();
    let asked: Vec<(String, String)> = (0..100).map(|i| pair(&format!("t{i:03}"), i)).collect();
    assert!(probe.store.erased_jobs(&asked).await.unwrap().is_empty());
    // The store's transaction reports all its counters at once, as it ends.
    let any_scan =
        format!("SELECT seq_scan + idx_scan FROM pg_stat_user_tables WHERE relid = '{month}'::regclass");
    counter_reaches(&mut c, &any_scan, seq0 + idx0 + 1).await;
    let (seq, idx): (i64, i64) = sqlx::query_as(&scans).fetch_one(&mut c).await.unwrap();
    assert_eq!(seq - seq0, 0, "100 pairs read the month of 20,000 rows whole");
    assert!(idx - idx0 <= 200, "100 pairs took {} index scans of the month", idx - idx0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smtp_replies_leave_the_worker_redacted_and_erase_reaches_what_the_pipeline_stored() {
    let mut bounce = job(1, "acme", "spring", "example.com");
    bounce["to"]["email"] = WRITTEN.into();
    // A tenant nobody registered: dead-lettered with the address in its payload.
    let mut ghost = job(2, "ghost", "spring", "example.com");
    ghost["to"]["email"] = "ERASE.ME@example.com".into();
    let (env, worker) =
        TestEnv::setup().sink(&["-f", "RCPT", "-B", ECHO]).sending(&[keyed(&bounce), keyed(&ghost)]).await;
    env.wait_ledger("acme", "spring", "bounced", 1, Duration::from_secs(60)).await;
    eventually("the ghost job dead-lettered", Duration::from_secs(30), || async {
        env.count("SELECT count(*) FROM dead_letters").await == 1
    })
    .await;
    worker.stop().await;

    let mut conn = env.pg().await;
    let last: String = sqlx::query_scalar("SELECT last_reply FROM send_ledger WHERE job_id = 'job-00001'")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(last, "550 5.1.1 <E***@EXAMPLE.COM>: Recipient address rejected: User unknown");
    let events = read_topic(&env.topics.events, 2, Duration::from_secs(20));
    let kinds: Vec<String> = events
        .iter()
        .map(|r| {
            serde_json::from_slice::<serde_json::Value>(&r.payload).unwrap()["type"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert!(
        kinds.contains(&"bounced".to_owned()) && kinds.contains(&"dead_lettered".to_owned()),
        "{kinds:?}"
    );
    for r in &events {
        assert!(
            !holds_address(&r.payload),
            "an event names the address: {}",
            String::from_utf8_lossy(&r.payload)
        );
    }
    let bounced = events
        .iter()
        .map(|r| serde_json::from_slice::<serde_json::Value>(&r.payload).unwrap())
        .find(|e| e["type"] == "bounced")
        .unwrap();
    assert_eq!(bounced["smtp"]["message"], "<E***@EXAMPLE.COM>: Recipient address rejected: User unknown");

    // The person complains (their mail client quotes the address), then asks
    // to be erased, in another case again.
    let reference = test_keys()
        .hasher
        .references()
        .sign(&TenantId::parse("acme").unwrap(), &JobId::parse("job-00001").unwrap());
    let arf = format!(
        "From: fbl@isp.example\r\nTo: fbl@platform.example\r\nSubject: complaint\r\nMIME-Version: 1.0\r\n\
         Content-Type: multipart/report; report-type=feedback-report; boundary=\"b\"\r\n\r\n\
         --b\r\nContent-Type: text/plain\r\n\r\nA complaint about mail to Erase.Me@Example.COM.\r\n\
         --b\r\nContent-Type: message/feedback-report\r\n\r\nFeedback-Type: abuse\r\nVersion: 1\r\nOriginal-Rcpt-To: {WRITTEN}\r\n\r\n\
         --b\r\nContent-Type: text/rfc822-headers\r\n\r\nFrom: news@sender.example\r\nTo: {WRITTEN}\r\nX-Mailpipe-Ref: {reference}\r\n\r\n--b--\r\n"
    );
    let dir = std::env::temp_dir().join(unique("arf"));
    std::fs::create_dir_all(&dir).unwrap();
    let (good, forged) = (dir.join("good.eml"), dir.join("forged.eml"));
    std::fs::write(&good, &arf).unwrap();
    std::fs::write(&forged, arf.replace(&reference, "acme/job-00001")).unwrap();
    let o = env.cli(&["complaint", good.to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(
        !env.cli(&["complaint", forged.to_str().unwrap()]).status.success(),
        "a forged report is refused"
    );
    assert_eq!(env.count("SELECT count(*) FROM rejected_reports").await, 1);
    assert!(!scan_postgres(&env.db).await.is_empty(), "the pipeline stored the address");

    let o = env.cli(&["erase", "--email", "ERASE.me@example.COM"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(scan_postgres(&env.db).await, Vec::<String>::new(), "no trace left");

    // Jobs for them that come later store no address either: one sent to
    // the bouncing sink again, one dead-lettered (its dead letter keeps only
    // the job's ids, in the store and on the dead-letter topic).
    let mut again = job(3, "acme", "spring", "example.com");
    again["to"]["email"] = "erase.me@EXAMPLE.com".into();
    let mut ghost2 = job(4, "ghost", "spring", "example.com");
    ghost2["to"]["email"] = WRITTEN.into();
    let worker = env.start_worker();
    env.enqueue(&[keyed(&again), keyed(&ghost2)]).await;
    env.wait_ledger("acme", "spring", "suppressed", 1, Duration::from_secs(60)).await;
    eventually("the second ghost job dead-lettered", Duration::from_secs(30), || async {
        env.count("SELECT count(*) FROM dead_letters").await == 1
    })
    .await;
    worker.stop().await;
    assert_eq!(scan_postgres(&env.db).await, Vec::<String>::new(), "no trace after later jobs");
    let dlq = read_topic(&env.topics.dlq, 2, Duration::from_secs(20));
    assert_eq!(dlq.len(), 2, "the first dead letter, and the later one");
    assert!(holds_address(&dlq[0].payload), "the first, from before the erasure, ages out with the topic");
    assert!(!holds_address(&dlq[1].payload), "{}", String::from_utf8_lossy(&dlq[1].payload));
    let _ = std::fs::remove_dir_all(dir);
}

/// The topics' records hold personal data: `mailpipe topics` gives each the
/// configured retention, creates one that is missing, and keeps what else
/// an operator set on a topic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topics_keep_records_only_as_long_as_configured() {
    use rdkafka::admin::{AdminClient, AdminOptions, AlterConfig, ResourceSpecifier};
    use rdkafka::client::DefaultClientContext;

    let env = TestEnv::start().await;
    let admin: AdminClient<DefaultClientContext> =
        rdkafka::ClientConfig::new().set("bootstrap.servers", kafka_brokers()).create().unwrap();
    let opts = AdminOptions::new().request_timeout(Some(Duration::from_secs(10)));
    let operators =
        AlterConfig::new(ResourceSpecifier::Topic(&env.topics.events)).set("max.message.bytes", "2000000");
    admin.alter_configs([&operators], &opts).await.unwrap();
    let missing = format!("{}.new", env.topics.dlq);
    let run = || {
        std::process::Command::new(mailpipe_binary())
            .arg("topics")
            .envs(env.process_vars())
            .env("MAILPIPE__QUEUE__KAFKA__DLQ_TOPIC", &missing)
            .env("MAILPIPE__QUEUE__KAFKA__TOPICS__SEND_RETENTION_HOURS", "5")
            .output()
            .unwrap()
    };
    let o = run();
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{out}{}", String::from_utf8_lossy(&o.stderr));
    assert!(out.contains(&format!("updated {}: retention.ms=18000000", env.topics.send)), "{out}");
    assert!(out.contains(&format!("created {missing}: retention.ms=1209600000")), "{out}");
    let config = |topic: String| {
        let admin = &admin;
        let opts = &opts;
        async move {
            let got = admin.describe_configs([&ResourceSpecifier::Topic(&topic)], opts).await.unwrap();
            let c = got.into_iter().next().unwrap().unwrap();
            let get = |k: &str| c.get(k).and_then(|e| e.value.clone()).unwrap_or_default();
            (get("retention.ms"), get("max.message.bytes"), get("segment.ms"))
        }
    };
    assert_eq!(config(env.topics.send.clone()).await.0, "18000000", "5 h, as configured");
    assert_eq!(
        config(env.topics.events.clone()).await,
        ("259200000".to_owned(), "2000000".to_owned(), "3600000".to_owned()),
        "the default 72 h, the operator's own setting kept, segments that roll hourly"
    );
    assert_eq!(
        config(missing.clone()).await.0,
        "1209600000",
        "the created topic has the dead letters' 14 days"
    );
    // Again: nothing to create, the same retention.
    let o = run();
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success() && !out.contains("created"), "{out}");
    assert_eq!(config(missing.clone()).await.0, "1209600000");
    admin.delete_topics(&[&missing], &opts).await.unwrap();
}
