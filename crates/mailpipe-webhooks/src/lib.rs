//! Signed webhooks: a tenant's events, POSTed to the endpoints it
//! registered (docs/api.md, "Webhooks").
//!
//! * [`sign`]: the Standard Webhooks signature (`webhook-id`,
//!   `webhook-timestamp`, `webhook-signature`), secrets as `whsec_...`.
//! * [`guard`]: a URL parsed once, and the addresses a delivery may
//!   connect to (public unicast only, unless the operator allows more).
//! * [`client`]: one POST under one deadline, to a vetted address.
//! * [`dispatch`]: the task that takes due deliveries from the store and
//!   records each attempt, with retries on the schedule, per-endpoint and
//!   per-tenant caps so that no endpoint slows another tenant's, and an
//!   endpoint disabled after persistent failure.
//!
//! Deliveries are made when analytics counts an event (the store's
//! `apply_events`), in the same transaction: at least once, with the
//! event's id as the message id on every attempt.
#![forbid(unsafe_code)]

pub mod client;
pub mod dispatch;
pub mod guard;
pub mod sign;

use std::time::Duration;

use serde::Deserialize;

pub use dispatch::run;
pub use guard::{Policy, UrlError, WebhookUrl};
pub use sign::{Secret, signature_header};

/// The `[webhooks]` section.
#[derive(Debug, Clone, Deserialize)]
pub struct WebhookSettings {
    /// Whether analytics delivers webhooks (and the API manages them).
    pub enabled: bool,
    /// One attempt, connect to answer.
    #[serde(rename = "timeout_secs", deserialize_with = "mailpipe_core::units::secs")]
    pub timeout: Duration,
    /// Attempts in flight at once, over every endpoint.
    pub max_in_flight: usize,
    /// Attempts in flight at once to one endpoint, and to one tenant's
    /// endpoints together: what a slow or hanging receiver can hold.
    pub per_endpoint_in_flight: usize,
    pub per_tenant_in_flight: usize,
    pub max_endpoints_per_tenant: usize,
    /// After the first attempt, the waits before each retry, in seconds.
    /// When the last retry fails too, the delivery has failed.
    pub retry_schedule_secs: Vec<u64>,
    /// How long a rotated secret keeps signing beside the new one.
    pub secret_overlap_hours: u64,
    /// Non-public address blocks endpoints may resolve to all the same
    /// (`["10.20.0.0/16"]`): only for receivers on the platform's own
    /// network. Link-local addresses are never allowed.
    pub allowed_networks: Vec<mailpipe_core::Cidr>,
    /// Let endpoints use plain `http://`.
    pub allow_http: bool,
    /// How often the dispatcher looks for due deliveries.
    #[serde(rename = "poll_ms", deserialize_with = "mailpipe_core::units::millis")]
    pub poll: Duration,
}

impl WebhookSettings {
    pub fn policy(&self) -> Policy {
        Policy { allow_http: self.allow_http, allowed: self.allowed_networks.clone() }
    }

    /// The span of the retry schedule: how long a failing delivery is tried.
    pub fn retry_span(&self) -> Duration {
        Duration::from_secs(self.retry_schedule_secs.iter().sum())
    }

    /// What is wrong with the values, each naming its key.
    pub fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        if self.timeout.is_zero() || self.timeout > Duration::from_secs(60) {
            p.push("webhooks.timeout_secs: from 1 to 60".into());
        }
        for (key, v) in [
            ("max_in_flight", self.max_in_flight),
            ("per_endpoint_in_flight", self.per_endpoint_in_flight),
            ("per_tenant_in_flight", self.per_tenant_in_flight),
            ("max_endpoints_per_tenant", self.max_endpoints_per_tenant),
        ] {
            if v == 0 {
                p.push(format!("webhooks.{key}: must be at least 1"));
            }
        }
        if self.retry_schedule_secs.is_empty()
            || self.retry_schedule_secs.contains(&0)
            || self.retry_schedule_secs.len() > 30
        {
            p.push("webhooks.retry_schedule_secs: 1 to 30 waits, each at least 1 second".into());
        }
        if self.poll.is_zero() {
            p.push("webhooks.poll_ms: must be at least 1".into());
        }
        p
    }
}

/// The associated data a secret is sealed under: bound to its endpoint, so
/// a sealed secret copied to another row does not open.
pub fn sealing_context(endpoint_id: &str) -> Vec<u8> {
    format!("mailpipe webhook secret\0{endpoint_id}").into_bytes()
}
