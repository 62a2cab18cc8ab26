//! Apache Kafka for tests: fresh topics per test, deleted by a later run once
//! the process that made them is gone, and readers for what services wrote.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};

use crate::{START_HINT, finished_run, unique};

pub fn kafka_brokers() -> String {
    std::env::var("MAILPIPE_TEST_KAFKA_BROKERS").unwrap_or_else(|_| "127.0.0.1:59092".into())
}

/// The three topics of wire contract v1, with a unique suffix.
pub struct Topics {
    pub send: String,
    pub events: String,
    pub dlq: String,
}

pub async fn fresh_topics(partitions: i32) -> Topics {
    let brokers = kafka_brokers();
    let admin: AdminClient<DefaultClientContext> =
        ClientConfig::new().set("bootstrap.servers", &brokers).create().expect("admin client");
    prune_topics_of_finished_runs(&admin).await;
    let suffix = unique("t");
    let t = Topics {
        send: format!("mailpipe.send.v1.{suffix}"),
        events: format!("mailpipe.events.v1.{suffix}"),
        dlq: format!("mailpipe.send.dlq.v1.{suffix}"),
    };
    let new: Vec<NewTopic<'_>> = [&t.send, &t.events, &t.dlq]
        .iter()
        .map(|n| NewTopic::new(n, partitions, TopicReplication::Fixed(1)))
        .collect();
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(15)));
    let res = tokio::time::timeout(Duration::from_secs(20), admin.create_topics(&new, &opts))
        .await
        .unwrap_or_else(|_| panic!("Kafka at {brokers} did not answer within 20s\n{START_HINT}"))
        .unwrap_or_else(|e| panic!("Kafka at {brokers} refused to create topics: {e}\n{START_HINT}"));
    for r in res {
        if let Err((name, e)) = r {
            panic!("creating topic {name}: {e}\n{START_HINT}");
        }
    }
    // A broker answers metadata for a topic it has just created with "no
    // leader" for a moment; a service started on it then finds no topic and
    // refuses to start. Hand the topics over only once every partition has
    // a leader.
    let names = [t.send.clone(), t.events.clone(), t.dlq.clone()];
    let ready = tokio::task::spawn_blocking(move || {
        let c: BaseConsumer = ClientConfig::new().set("bootstrap.servers", kafka_brokers()).create().ok()?;
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            let led = |name: &String| {
                c.fetch_metadata(Some(name), Duration::from_secs(5)).is_ok_and(|md| {
                    md.topics().iter().any(|m| {
                        m.error().is_none()
                            && m.partitions().len() == partitions as usize
                            && m.partitions().iter().all(|p| p.error().is_none() && p.leader() >= 0)
                    })
                })
            };
            if names.iter().all(led) {
                return Some(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    });
    assert!(
        matches!(ready.await, Ok(Some(()))),
        "Kafka at {brokers} created the topics but gave them no leader within 20s\n{START_HINT}"
    );
    t
}

/// Deletes the topics that earlier test processes made, once per process.
/// Each test's topics are named after its process (`unique`); those of a
/// process that is gone can go. Without this a developer's broker collects
/// thousands of partitions over many runs, then starts slowly and times out
/// creating topics. Best effort: nothing here fails a test.
async fn prune_topics_of_finished_runs(admin: &AdminClient<DefaultClientContext>) {
    static PRUNED: tokio::sync::OnceCell<()> = tokio::sync::OnceCell::const_new();
    PRUNED
        .get_or_init(|| async {
            let listed = tokio::task::spawn_blocking(|| {
                let c: BaseConsumer =
                    ClientConfig::new().set("bootstrap.servers", kafka_brokers()).create().ok()?;
                let md = c.fetch_metadata(None, Duration::from_secs(10)).ok()?;
                Some(md.topics().iter().map(|t| t.name().to_owned()).collect::<Vec<_>>())
            });
            let Ok(Some(names)) = listed.await else { return };
            let stale: Vec<String> = names
                .into_iter()
                .filter(|name| {
                    finished_run(name).is_some_and(|h| h.starts_with("mailpipe.") && h.ends_with(".t"))
                })
                .collect();
            // Wait for the controller to finish each batch: a broker busy
            // deleting hundreds of topics is slow to show a new one, and the
            // test's first produce would race that.
            let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
            for chunk in stale.chunks(200) {
                let names: Vec<&str> = chunk.iter().map(String::as_str).collect();
                let _ =
                    tokio::time::timeout(Duration::from_secs(40), admin.delete_topics(&names, &opts)).await;
            }
        })
        .await;
}

/// A record read back from a topic.
#[derive(Debug)]
pub struct Record {
    pub key: Option<String>,
    pub payload: Vec<u8>,
    pub headers: HashMap<String, String>,
}

/// A consumer of `topic` from its beginning, in a group of its own.
fn reader(topic: &str) -> BaseConsumer {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", kafka_brokers())
        .set("group.id", unique("reader"))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .expect("reader");
    consumer.subscribe(&[topic]).expect("subscribe");
    consumer
}

/// Reads `topic` from the beginning until `want` records arrived or `timeout`.
pub fn read_topic(topic: &str, want: usize, timeout: Duration) -> Vec<Record> {
    let consumer = reader(topic);
    let mut out = Vec::new();
    let deadline = Instant::now() + timeout;
    while out.len() < want && Instant::now() < deadline {
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(200)) {
            let mut headers = HashMap::new();
            if let Some(h) = m.headers() {
                for hd in h.iter() {
                    headers.insert(
                        hd.key.to_owned(),
                        String::from_utf8_lossy(hd.value.unwrap_or_default()).into_owned(),
                    );
                }
            }
            out.push(Record {
                key: m.key().map(|k| String::from_utf8_lossy(k).into_owned()),
                payload: m.payload().unwrap_or_default().to_vec(),
                headers,
            });
        }
    }
    out
}

/// The distinct `event_id`s on `topic`, read until `want` of them arrived or
/// `timeout`: events are at least once, so a record may repeat.
pub fn read_event_ids(topic: &str, want: usize, timeout: Duration) -> std::collections::HashSet<String> {
    let consumer = reader(topic);
    let mut ids = std::collections::HashSet::new();
    let deadline = Instant::now() + timeout;
    while ids.len() < want && Instant::now() < deadline {
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(200))
            && let Ok(v) = serde_json::from_slice::<serde_json::Value>(m.payload().unwrap_or_default())
        {
            ids.insert(v["event_id"].as_str().unwrap_or_default().to_owned());
        }
    }
    ids
}

/// The group's committed positions, by partition.
pub fn committed(group: &str, topic: &str, partitions: i32) -> HashMap<i32, i64> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", kafka_brokers())
        .set("group.id", group)
        .create()
        .expect("offset reader");
    let mut tpl = rdkafka::TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition(topic, p);
    }
    let got = consumer.committed_offsets(tpl, Duration::from_secs(10)).expect("committed offsets");
    got.elements()
        .iter()
        .filter_map(|e| match e.offset() {
            rdkafka::Offset::Offset(o) => Some((e.partition(), o)),
            _ => None,
        })
        .collect()
}

/// Waits until `group` has committed `total` offsets of `topic` in all (a
/// group that read every record of a topic holding `total`). On timeout it
/// fails with what was committed against each partition's end.
pub async fn wait_committed(
    what: &str,
    group: &str,
    topic: &str,
    partitions: i32,
    total: i64,
    timeout: Duration,
) {
    let deadline = Instant::now() + timeout;
    loop {
        let at = committed(group, topic, partitions);
        if at.values().sum::<i64>() >= total {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for: {what} ({total} offsets committed); \
             committed {at:?}, partition ends {:?}",
            end_offsets(topic, partitions)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Each partition's end (high watermark), for messages about lag.
pub fn end_offsets(topic: &str, partitions: i32) -> HashMap<i32, i64> {
    let consumer: BaseConsumer =
        ClientConfig::new().set("bootstrap.servers", kafka_brokers()).create().expect("watermark reader");
    (0..partitions)
        .map(|p| {
            let (_, high) = consumer.fetch_watermarks(topic, p, Duration::from_secs(10)).expect("watermarks");
            (p, high)
        })
        .collect()
}

/// How many consumers are members of `group` right now.
pub fn group_members(group: &str) -> usize {
    let consumer: BaseConsumer =
        ClientConfig::new().set("bootstrap.servers", kafka_brokers()).create().expect("admin consumer");
    let list = consumer.fetch_group_list(Some(group), Duration::from_secs(10)).expect("group list");
    list.groups().iter().find(|g| g.name() == group).map_or(0, |g| g.members().len())
}
