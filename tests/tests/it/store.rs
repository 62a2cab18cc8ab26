//! The store behaves the same on PostgreSQL and SQLite: one scenario, both backends.

use mailpipe_core::{
    AppliesTo, Category, Event, EventType, Reason, RecipientRef, Scope, SendJob, Suppression, TenantId,
};
use mailpipe_store::{LedgerStatus, Store, SuppressionFilter, Verdict};
use mailpipe_tests::{claim, fresh_database, fresh_sqlite_store, fresh_store, job};

/// On a migrated store.
async fn scenario(store: &Store) {
    let j = SendJob::from_json(&serde_json::to_vec(&job(1, "acme", "c", "a.example")).unwrap()).unwrap();

    // Claiming is idempotent and starts pending.
    let c = claim(store, &j).await;
    assert_eq!((c.status, c.attempts), (LedgerStatus::Pending, 0));
    assert_eq!(claim(store, &j).await.status, LedgerStatus::Pending);

    // Two attempts from the same claim (two records of the job): the first
    // to the commit point marks it sending, the second is fenced off.
    let first = claim(store, &j).await;
    let second = claim(store, &j).await;
    assert!(store.mark_sending("acme", "job-00001", "mid@x", &first).await.unwrap());
    assert!(!store.mark_sending("acme", "job-00001", "mid@y", &second).await.unwrap());
    // sending is visible to a second claim: that is how "in doubt" is detected.
    let c = claim(store, &j).await;
    assert_eq!((c.status, c.attempts, c.message_id.as_deref()), (LedgerStatus::Sending, 1, Some("mid@x")));

    // The outcome and its event land together; the event is idempotent.
    let mut ev = Event::for_job(EventType::Sent, &j.tenant_id, &j.campaign_id, &j.job_id, "");
    ev.message_id = Some("mid@x".into());
    store.finish("acme", "job-00001", LedgerStatus::Sent, Some("250 ok"), &ev).await.unwrap();
    store.insert_events(std::slice::from_ref(&ev)).await.unwrap();
    assert_eq!(claim(store, &j).await.status, LedgerStatus::Sent);
    let back = store.terminal_event("acme", "job-00001").await.unwrap().unwrap();
    assert_eq!(back.event_id, ev.event_id);
    assert_eq!(store.event_counts("acme", "c").await.unwrap().get("sent"), Some(&1));
    // A batch shipped again (its first answer lost), with new events among
    // the stored ones and one event twice: each is stored once, none lost.
    let opens: Vec<Event> = (0..3)
        .map(|i| {
            Event::for_job(EventType::Open, &j.tenant_id, &j.campaign_id, &j.job_id, &format!("open-{i}"))
        })
        .collect();
    store.insert_events(&opens[..2]).await.unwrap();
    let again = [opens[1].clone(), ev.clone(), opens[2].clone(), opens[0].clone(), opens[2].clone()];
    store.insert_events(&again).await.unwrap();
    let counts = store.event_counts("acme", "c").await.unwrap();
    assert_eq!((counts.get("sent"), counts.get("open")), (Some(&1), Some(&3)), "{counts:?}");

    // Suppression scopes.
    let (acme, globex) = (TenantId::parse("acme").unwrap(), TenantId::parse("globex").unwrap());
    let h: RecipientRef = "00112233445566778899aabbccddeeff".parse().unwrap();
    assert_eq!(store.suppression(&h, &acme, Category::Marketing).await.unwrap(), None);
    // A marketing unsubscribe via tenant globex applies platform-wide, to marketing only.
    let unsubscribe = Suppression::unsubscribe(&globex, h);
    store.add_suppression(&unsubscribe).await.unwrap();
    let s = store.suppression(&h, &acme, Category::Marketing).await.unwrap().unwrap();
    assert_eq!((s.reason, s.scope), (Reason::Unsubscribe, Scope::Platform));
    assert_eq!(
        store.suppression(&h, &acme, Category::Transactional).await.unwrap(),
        None,
        "transactional mail is exempt"
    );
    // A tenant-scoped entry binds only that tenant.
    let h2: RecipientRef = "ffeeddccbbaa99887766554433221100".parse().unwrap();
    let manual = Suppression::new(Scope::Tenant(acme.clone()), h2, Reason::Manual, AppliesTo::All);
    store.add_suppression(&manual).await.unwrap();
    assert!(store.suppression(&h2, &acme, Category::Transactional).await.unwrap().is_some());
    assert_eq!(store.suppression(&h2, &globex, Category::Marketing).await.unwrap(), None);
    // A hard bounce (applies to all) stops transactional mail too.
    store.add_suppression(&Suppression::hard_bounce(&acme, h)).await.unwrap();
    assert_eq!(
        store.suppression(&h, &acme, Category::Transactional).await.unwrap().unwrap().reason,
        Reason::HardBounce
    );
    // Adding the same entry again is a no-op, and each reads back as written.
    store.add_suppression(&Suppression::hard_bounce(&acme, h)).await.unwrap();
    let listed = store.list_suppressions(&Scope::Platform).await.unwrap();
    assert_eq!(listed.len(), 2, "{listed:?}");
    assert!(listed.iter().any(|s| s.reason == Reason::HardBounce && s.source_tenant.as_ref() == Some(&acme)));
    assert_eq!(
        store.list_suppressions(&Scope::Tenant(acme.clone())).await.unwrap(),
        std::slice::from_ref(&manual)
    );
    // A stronger reason for the same entry replaces a weaker one, never the
    // other way: an erasure is not hidden under a manual entry the tenant
    // could lift.
    let erasure = Suppression::new(Scope::Tenant(acme.clone()), h2, Reason::Erasure, AppliesTo::All);
    store.add_suppression(&erasure).await.unwrap();
    store.add_suppression(&manual).await.unwrap();
    let r = store.remove_suppression(&Scope::Tenant(acme.clone()), &h2).await.unwrap();
    assert_eq!((r.removed, r.kept), (0, vec![Reason::Erasure]));
    assert!(store.suppression(&h2, &acme, Category::Transactional).await.unwrap().is_some());

    // The filter follows the table by the store's cursor: an entry written
    // after its load is seen by the next poll, and a poll with nothing new
    // reads nothing (or, on PostgreSQL, only what is past the horizon).
    let filter = SuppressionFilter::new(1000);
    assert_eq!(filter.poll(store).await.unwrap(), 3, "the first poll loads the table");
    let h3: RecipientRef = "0123456789abcdef0123456789abcdef".parse().unwrap();
    assert_eq!(filter.check(&h3), Verdict::Absent);
    store.add_suppression(&Suppression::hard_bounce(&acme, h3)).await.unwrap();
    assert!(filter.poll(store).await.unwrap() >= 1);
    assert_eq!(filter.check(&h3), Verdict::Lookup, "seen by the next poll");
    assert_eq!(filter.rebuild(store).await.unwrap(), 4);
    assert_eq!(filter.check(&h3), Verdict::Lookup, "and kept by a rebuild");
}

#[tokio::test]
async fn postgres() {
    let pg = fresh_store().await;
    scenario(&pg.store).await;
}

#[tokio::test]
async fn sqlite() {
    let lite = fresh_sqlite_store().await;
    scenario(&lite.store).await;
}

/// Redelivery during a rebalance can claim one job from two workers at
/// once. The one-round-trip claim must give every caller the one row.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_claims_of_one_job_all_see_the_same_row() {
    let db = fresh_database().await;
    let store = Store::connect(&db, 16).await.unwrap();
    store.migrate().await.unwrap();
    for n in 0..20 {
        let j = SendJob::from_json(&serde_json::to_vec(&job(n, "acme", "c", "a.example")).unwrap()).unwrap();
        let claims: Vec<_> = (0..16)
            .map(|_| {
                let (store, j) = (store.clone(), j.clone());
                tokio::spawn(async move { claim(&store, &j).await })
            })
            .collect();
        let mut created = std::collections::HashSet::new();
        for c in claims {
            let c = c.await.unwrap();
            assert_eq!((c.status, c.attempts), (LedgerStatus::Pending, 0));
            created.insert(c.created_at_ms);
        }
        assert_eq!(created.len(), 1, "job {n}: every claim read the same row");
    }
}
