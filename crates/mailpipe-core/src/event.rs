//! The event, topic `mailpipe.events.v1`. See docs/schemas.md and
//! docs/schemas/event.v1.json.
//!
//! Consumers must ignore fields they do not know: new optional fields may be
//! added within v1. Events carry no recipient address; `job_id` joins them to
//! the send ledger, which is where personal data lives (and is erased).

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::id::{CampaignId, JobId, TenantId};
use crate::job::Category;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventType {
    Sent,
    Deferred,
    Bounced,
    Suppressed,
    Failed,
    DeadLettered,
    Open,
    Click,
    Unsubscribe,
    Complaint,
    /// A tenant's marketing stream was paused by the reputation breaker.
    StreamPaused,
    /// A paused stream was resumed.
    StreamResumed,
    /// A tenant's webhook endpoint was disabled after failing every attempt
    /// of a delivery's retry schedule.
    WebhookDisabled,
}

impl EventType {
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Sent => "sent",
            EventType::Deferred => "deferred",
            EventType::Bounced => "bounced",
            EventType::Suppressed => "suppressed",
            EventType::Failed => "failed",
            EventType::DeadLettered => "dead_lettered",
            EventType::Open => "open",
            EventType::Click => "click",
            EventType::Unsubscribe => "unsubscribe",
            EventType::Complaint => "complaint",
            EventType::StreamPaused => "stream_paused",
            EventType::StreamResumed => "stream_resumed",
            EventType::WebhookDisabled => "webhook_disabled",
        }
    }

    /// Whether this event ends a job. Each job has exactly one terminal event.
    pub fn is_terminal(self) -> bool {
        match self {
            EventType::Sent
            | EventType::Bounced
            | EventType::Suppressed
            | EventType::Failed
            | EventType::DeadLettered => true,
            EventType::Deferred
            | EventType::Open
            | EventType::Click
            | EventType::Unsubscribe
            | EventType::Complaint
            | EventType::StreamPaused
            | EventType::StreamResumed
            | EventType::WebhookDisabled => false,
        }
    }
}

/// An SMTP reply as seen by the worker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SmtpReply {
    pub code: u16,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enhanced: Option<String>,
    pub message: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VerdictClass {
    Human,
    Machine,
    Unknown,
}

/// The tracker's opinion of who opened or clicked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Verdict {
    pub class: VerdictClass,
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Stable across retries of the same fact: consumers deduplicate on it.
    pub event_id: String,
    #[serde(rename = "type")]
    pub kind: EventType,
    /// Absent only on `dead_lettered` events for jobs too broken to name their tenant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant_id: Option<TenantId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub campaign_id: Option<CampaignId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_id: Option<JobId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message_id: Option<String>,
    #[serde(with = "time::serde::rfc3339")]
    pub occurred_at: OffsetDateTime,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub category: Option<Category>,
    /// Provider group of the recipient's domain (`google`, `microsoft`, `other`...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider: Option<String>,
    /// The domain the job was sent as (its From address's), on the events
    /// of a send: what the breaker's per-domain figures and the daily
    /// volume per From domain count.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sender_domain: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempt: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub smtp: Option<SmtpReply>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verdict: Option<Verdict>,
    /// Keyed hash of the recipient's address (32 hex digits), never the
    /// address itself: on `unsubscribe`, `complaint` and hard `bounced` events,
    /// so that consumers can act on the recipient without holding their data.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recipient_ref: Option<String>,
    /// A reason code: why a job was dead-lettered, failed or suppressed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Human-readable detail for `reason`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// Who fetched a tracked link, reduced for privacy (docs/tracker.md):
    /// absent when the client asked not to be tracked (`Sec-GPC`, `DNT`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client: Option<ClientInfo>,
}

/// The requesting client of an open or click, after privacy reduction.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientInfo {
    /// Truncated (`/24`, `/48`) or keyed-hashed, per `tracker.ip`; absent with `ip = "drop"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip: Option<String>,
    /// The user agent's family (`chrome`, `outlook`, `apple_mail_proxy`...), never the string.
    pub ua_family: String,
}

impl Event {
    /// A new event for a job, with every optional field empty. `discriminator`
    /// makes the event id unique among events of the same type for the job
    /// (an attempt number, a click's URL, a request id); use "" when there is
    /// only ever one.
    /// A new event about a tenant rather than a job (a stream paused or
    /// resumed); `discriminator` as for [`Event::for_job`].
    pub fn for_tenant(kind: EventType, tenant_id: &TenantId, discriminator: &str) -> Self {
        let mut e = Self::bare(kind, [tenant_id.as_str(), "-"], discriminator);
        e.tenant_id = Some(tenant_id.clone());
        e
    }

    pub fn for_job(
        kind: EventType,
        tenant_id: &TenantId,
        campaign_id: &CampaignId,
        job_id: &JobId,
        discriminator: &str,
    ) -> Self {
        let mut e = Self::bare(kind, [tenant_id.as_str(), job_id.as_str()], discriminator);
        e.tenant_id = Some(tenant_id.clone());
        e.campaign_id = Some(campaign_id.clone());
        e.job_id = Some(job_id.clone());
        e
    }

    /// An event for a record too broken to name its tenant or job (a
    /// dead letter of unparseable bytes). `discriminator` is the record id.
    pub fn unattributed(kind: EventType, discriminator: &str) -> Self {
        Self::bare(kind, ["unknown", "unknown"], discriminator)
    }

    fn bare(kind: EventType, [tenant, job]: [&str; 2], discriminator: &str) -> Self {
        Event {
            event_id: crate::stable_digest(&[tenant, job, kind.as_str(), discriminator]),
            kind,
            tenant_id: None,
            campaign_id: None,
            job_id: None,
            message_id: None,
            occurred_at: OffsetDateTime::now_utc(),
            category: None,
            provider: None,
            sender_domain: None,
            attempt: None,
            smtp: None,
            url: None,
            verdict: None,
            recipient_ref: None,
            reason: None,
            detail: None,
            client: None,
        }
    }

    pub fn to_json(&self) -> Vec<u8> {
        // Serialising a struct of strings and numbers cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }
}

/// An event with its JSON encoding, made once and used as it is by every
/// sink: the tracker's spool, the store's `payload` column and the Kafka
/// record. The two always agree: the fields are read-only, and
/// [`EncodedEvent::update`] encodes again.
#[derive(Debug, Clone, PartialEq)]
pub struct EncodedEvent {
    event: Event,
    json: Vec<u8>,
}

impl EncodedEvent {
    pub fn new(event: Event) -> Self {
        let json = event.to_json();
        Self { event, json }
    }

    /// Parses a JSON event, keeping the bytes as its encoding.
    pub fn decode(json: &[u8]) -> Result<Self, serde_json::Error> {
        Ok(Self { event: serde_json::from_slice(json)?, json: json.to_vec() })
    }

    pub fn event(&self) -> &Event {
        &self.event
    }

    pub fn json(&self) -> &[u8] {
        &self.json
    }

    /// Changes the event and encodes it again.
    pub fn update(&mut self, change: impl FnOnce(&mut Event)) {
        change(&mut self.event);
        self.json = self.event.to_json();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_encoded_event_keeps_its_bytes_in_step_with_its_fields() {
        let e = Event::for_job(
            EventType::Click,
            &TenantId::parse("acme").unwrap(),
            &CampaignId::parse("c1").unwrap(),
            &JobId::parse("j1").unwrap(),
            "r1",
        );
        let mut enc = EncodedEvent::new(e.clone());
        assert_eq!(enc.json(), e.to_json());
        let back = EncodedEvent::decode(enc.json()).unwrap();
        assert_eq!(back, enc, "decoding keeps both the event and its bytes");
        enc.update(|e| e.url = Some("https://shop.example/".into()));
        assert_eq!(enc.event().url.as_deref(), Some("https://shop.example/"));
        assert_eq!(EncodedEvent::decode(enc.json()).unwrap().event(), enc.event(), "re-encoded on change");
        assert!(EncodedEvent::decode(b"{not json").is_err());
    }

    #[test]
    fn event_ids_are_stable_and_distinct() {
        let t = TenantId::parse("acme").unwrap();
        let c = CampaignId::parse("c").unwrap();
        let j = JobId::parse("j").unwrap();
        let a = Event::for_job(EventType::Sent, &t, &c, &j, "");
        let b = Event::for_job(EventType::Sent, &t, &c, &j, "");
        let d = Event::for_job(EventType::Deferred, &t, &c, &j, "1");
        assert_eq!(a.event_id, b.event_id);
        assert_ne!(a.event_id, d.event_id);
        let other_tenant = TenantId::parse("globex").unwrap();
        assert_ne!(a.event_id, Event::for_job(EventType::Sent, &other_tenant, &c, &j, "").event_id);
    }

    #[test]
    fn json_round_trip_uses_the_wire_names() {
        let t = TenantId::parse("acme").unwrap();
        let c = CampaignId::parse("c").unwrap();
        let j = JobId::parse("j").unwrap();
        let mut e = Event::for_job(EventType::DeadLettered, &t, &c, &j, "");
        e.reason = Some("malformed".into());
        let v: serde_json::Value = serde_json::from_slice(&e.to_json()).unwrap();
        assert_eq!(v["type"], "dead_lettered");
        assert!(v.get("url").is_none());
        let back: Event = serde_json::from_value(v).unwrap();
        assert_eq!(back.event_id, e.event_id);
        assert_eq!(back.kind, EventType::DeadLettered);
    }

    #[test]
    fn unattributed_events_are_keyed_by_the_record_and_name_no_tenant() {
        let e = Event::unattributed(EventType::DeadLettered, "topic/0/7");
        assert_eq!(e.event_id, crate::stable_digest(&["unknown", "unknown", "dead_lettered", "topic/0/7"]));
        assert_eq!((e.tenant_id, e.campaign_id, e.job_id), (None, None, None));
        assert_ne!(e.event_id, Event::unattributed(EventType::DeadLettered, "topic/0/8").event_id);
    }

    #[test]
    fn exactly_five_types_are_terminal() {
        use EventType::*;
        let all =
            [Sent, Deferred, Bounced, Suppressed, Failed, DeadLettered, Open, Click, Unsubscribe, Complaint];
        assert_eq!(all.iter().filter(|t| t.is_terminal()).count(), 5);
    }
}
