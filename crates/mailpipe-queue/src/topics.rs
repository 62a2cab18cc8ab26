//! The topics' own settings: `mailpipe topics` creates the send, events and
//! dead-letter topics if they are missing, and gives each the retention the
//! configuration names. Every record of these topics carries personal data
//! (a job names its recipient; a dead letter is the job), so how long the
//! broker keeps them is part of the privacy promise (docs/privacy.md), not
//! the broker's default of a week applied by accident.

use rdkafka::admin::{
    AdminClient, AdminOptions, AlterConfig, ConfigSource, NewTopic, ResourceSpecifier, TopicReplication,
};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::RDKafkaErrorCode;

use crate::QueueError;
use crate::kafka::KafkaSettings;

/// The `[queue.kafka.topics]` section: how the topics are made and how long
/// they keep records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
pub struct TopicSettings {
    /// Partitions of a topic `mailpipe topics` creates (an existing topic
    /// keeps its own).
    pub partitions: i32,
    pub replication_factor: i32,
    pub send_retention_hours: u64,
    pub events_retention_hours: u64,
    pub dlq_retention_hours: u64,
}

/// Kafka deletes only closed segments, and closes one after `segment.ms`
/// (a week by default): a quiet topic would keep a record for a week past
/// its retention. Segments here roll at least hourly, or at the retention
/// if that is shorter, so a record is gone within its retention plus that.
const MAX_SEGMENT_MS: u64 = 3_600_000;

impl TopicSettings {
    /// What is wrong with these settings, if anything: a zero retention
    /// would delete jobs before a worker reads them.
    pub fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        for (key, hours) in [
            ("send_retention_hours", self.send_retention_hours),
            ("events_retention_hours", self.events_retention_hours),
            ("dlq_retention_hours", self.dlq_retention_hours),
        ] {
            if !(1..=87_600).contains(&hours) {
                out.push(format!("queue.kafka.topics.{key}: from 1 hour to 10 years"));
            }
        }
        if self.partitions < 1 || self.replication_factor < 1 {
            out.push("queue.kafka.topics.partitions, replication_factor: at least 1".into());
        }
        out
    }
}

/// What `ensure` did to one topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicReport {
    pub topic: String,
    pub created: bool,
    pub retention_ms: u64,
}

impl std::fmt::Display for TopicReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let verb = if self.created { "created" } else { "updated" };
        write!(
            f,
            "{verb} {}: retention.ms={} ({} h)",
            self.topic,
            self.retention_ms,
            self.retention_ms / 3_600_000
        )
    }
}

/// Creates each of the three topics that is missing, and sets every one's
/// `retention.ms`. Other settings an operator gave a topic are kept: Kafka's
/// AlterConfigs replaces a topic's whole set, so the dynamic ones are read
/// first and written back.
pub async fn ensure(kafka: &KafkaSettings) -> Result<Vec<TopicReport>, QueueError> {
    let topics = &kafka.topics;
    let admin: AdminClient<DefaultClientContext> = kafka.client_config(&[]).create()?;
    let opts = AdminOptions::new()
        .operation_timeout(Some(kafka.connect_timeout))
        .request_timeout(Some(kafka.connect_timeout));
    let wanted = [
        (&kafka.send_topic, topics.send_retention_hours),
        (&kafka.events_topic, topics.events_retention_hours),
        (&kafka.dlq_topic, topics.dlq_retention_hours),
    ];
    let mut out = Vec::new();
    for (topic, hours) in wanted {
        let retention_ms = hours.saturating_mul(3_600_000);
        let ms = retention_ms.to_string();
        let segment_ms = retention_ms.min(MAX_SEGMENT_MS).to_string();
        let new = NewTopic::new(topic, topics.partitions, TopicReplication::Fixed(topics.replication_factor))
            .set("retention.ms", &ms)
            .set("segment.ms", &segment_ms);
        let created = match first(admin.create_topics([&new], &opts).await?) {
            Ok(()) => true,
            Err(RDKafkaErrorCode::TopicAlreadyExists) => false,
            Err(e) => return Err(refused(topic, "create", e)),
        };
        if !created {
            let spec = ResourceSpecifier::Topic(topic);
            let described = admin.describe_configs([&spec], &opts).await?;
            let current = match described.into_iter().next() {
                Some(Ok(c)) => c,
                Some(Err(e)) => return Err(refused(topic, "describe", e)),
                None => return Err(kafka.unreachable("no answer to describe_configs")),
            };
            let kept: Vec<(String, String)> = current
                .entries
                .into_iter()
                .filter(|e| {
                    e.source == ConfigSource::DynamicTopic
                        && !matches!(e.name.as_str(), "retention.ms" | "segment.ms")
                        && !e.is_sensitive
                })
                .filter_map(|e| Some((e.name, e.value?)))
                .collect();
            let mut alter = AlterConfig::new(ResourceSpecifier::Topic(topic))
                .set("retention.ms", &ms)
                .set("segment.ms", &segment_ms);
            for (k, v) in &kept {
                alter = alter.set(k, v);
            }
            let done = admin.alter_configs([&alter], &opts).await?;
            if let Some(Err((_, e))) = done.into_iter().next() {
                return Err(refused(topic, "alter", e));
            }
        }
        out.push(TopicReport { topic: topic.clone(), created, retention_ms });
    }
    Ok(out)
}

fn first(results: Vec<rdkafka::admin::TopicResult>) -> Result<(), RDKafkaErrorCode> {
    match results.into_iter().next() {
        Some(Err((_, e))) => Err(e),
        _ => Ok(()),
    }
}

fn refused(topic: &str, action: &str, code: RDKafkaErrorCode) -> QueueError {
    QueueError::Refused { action: format!("{action} topic {topic}"), code }
}
