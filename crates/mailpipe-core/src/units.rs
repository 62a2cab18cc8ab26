//! Durations in configuration are whole numbers in the unit their key names
//! (`retry_base_ms`, `grace_period_secs`). Settings types read them straight
//! into [`Duration`] with these, so no caller converts units by hand:
//!
//! ```
//! # use std::time::Duration;
//! #[derive(serde::Deserialize)]
//! struct Example {
//!     #[serde(rename = "poll_ms", deserialize_with = "mailpipe_core::units::millis")]
//!     poll: Duration,
//! }
//! ```

use std::time::Duration;

use serde::{Deserialize, Deserializer};

pub fn millis<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    u64::deserialize(d).map(Duration::from_millis)
}

pub fn secs<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    u64::deserialize(d).map(Duration::from_secs)
}
