//! Wire contract v1 and the domain newtypes of mailpipe.
//!
//! This crate is pure: no I/O, no async. Everything that crosses a boundary
//! (a Kafka message, a config value, a URL token) is parsed into these types
//! once, at the edge, and the rest of the code trusts them.
//!
//! * [`address`]: [`EmailAddress`] and [`Domain`], IDN-aware.
//! * [`id`]: [`TenantId`], [`CampaignId`], [`JobId`], [`TemplateId`].
//! * [`job`]: the send job (`mailpipe.send.v1`) and its parser.
//! * [`event`]: the event (`mailpipe.events.v1`).
//! * [`suppression`]: the suppression list's vocabulary: [`Reason`],
//!   [`AppliesTo`], [`Scope`] and the [`Suppression`] entry.
//! * [`sending`]: sending domains and their DKIM keys: [`DomainStatus`],
//!   [`KeyState`], [`DkimAlgorithm`], [`Selector`].
//! * [`status`]: what a delivery status means ([`status::classify`]), for
//!   SMTP replies and bounces alike.
//! * [`backoff`]: [`Backoff`], the shape of every retry.
//! * [`units`]: durations in settings, read in the unit their key names.
//! * [`warmup`]: the arithmetic of a new sending domain's warm-up ramp.
#![forbid(unsafe_code)]

pub mod address;
pub mod backoff;
pub mod event;
pub mod id;
pub mod job;
pub mod net;
pub mod sending;
pub mod status;
pub mod suppression;
pub mod units;
pub mod warmup;

pub use address::{AddressError, Domain, EmailAddress, organizational, redact_addresses};
pub use backoff::Backoff;
pub use event::{ClientInfo, EncodedEvent, Event, EventType, SmtpReply, Verdict, VerdictClass};
pub use id::{CampaignId, IdError, JobId, TemplateId, TenantId};
pub use job::{Category, Content, Mailbox, SendJob, SendJobError};
pub use net::Cidr;
pub use sending::{DkimAlgorithm, DomainStatus, KeyState, Selector, SendingError};
pub use suppression::{AppliesTo, Reason, RecipientRef, Scope, Suppressed, Suppression, SuppressionError};
pub use warmup::WarmupSettings;

/// Current time as unix milliseconds: the one timestamp representation used
/// in the stores, so that PostgreSQL and SQLite agree.
pub fn now_ms() -> i64 {
    (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64
}

/// A short, stable, hex digest of `parts`, joined by a separator that cannot
/// appear in an id. Used for event ids and Message-IDs, so that a redelivered
/// job produces the same identifiers as its first attempt.
pub fn stable_digest(parts: &[&str]) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    for p in parts {
        h.update(p.as_bytes());
        h.update([0u8]);
    }
    hex::encode(&h.finalize()[..16])
}
