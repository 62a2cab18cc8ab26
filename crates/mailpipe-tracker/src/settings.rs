//! `[tracker]`: the tracking endpoint's configuration section itself. The
//! spool, the shipper and the HTTP server each take their part of it.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use mailpipe_core::units::{millis, secs};
use mailpipe_throttle::RateSpec;
use serde::Deserialize;

use crate::{IpMode, ShipPolicy, SpoolOptions};

#[derive(Debug, Clone, Deserialize)]
pub struct TrackerSettings {
    pub listen: SocketAddr,
    /// The public base URL that links in messages point to;
    /// `{public_url}/hp` is the honeypot link.
    pub public_url: String,
    /// A `mailto:` unsubscribe address for `List-Unsubscribe`, besides the URL.
    #[serde(default)]
    pub unsubscribe_mailto: Option<String>,
    /// Events waiting for the spool writer; a full queue makes requests wait.
    pub event_queue: usize,
    /// Where events wait, durably, until the store and Kafka have them.
    pub spool_dir: PathBuf,
    pub spool_max_mb: u64,
    /// Batches are written before their requests are answered and synced
    /// this often; zero syncs every batch before answering.
    #[serde(rename = "spool_sync_ms", deserialize_with = "millis")]
    pub spool_sync: Duration,
    /// While requests keep arriving, the longest an event waits to be shipped.
    #[serde(rename = "ship_max_delay_secs", deserialize_with = "secs")]
    pub ship_max_delay: Duration,
    /// A pause this long between batches counts as quiet: shipping goes ahead.
    #[serde(rename = "ship_idle_ms", deserialize_with = "millis")]
    pub ship_idle: Duration,
    /// How client addresses are kept.
    pub ip: IpMode,
    /// Take the client address from the first `X-Forwarded-For` entry (only
    /// behind a load balancer that sets it).
    pub trust_forwarded_for: bool,
    /// A click sooner than this after sending is a machine's.
    pub machine_click_secs: i64,
    pub max_path_bytes: usize,
    pub max_header_bytes: usize,
    /// A client must send its whole request head within this time.
    #[serde(rename = "header_read_timeout_secs", deserialize_with = "secs")]
    pub header_read_timeout: Duration,
    /// Requests per client address, if limited.
    #[serde(default)]
    pub per_ip_rate: Option<RateSpec>,
    /// How long shutdown waits for requests in flight, and then for the
    /// event writer to drain.
    #[serde(rename = "shutdown_grace_secs", deserialize_with = "secs")]
    pub shutdown_grace: Duration,
}

impl TrackerSettings {
    pub fn spool_options(&self) -> SpoolOptions {
        SpoolOptions::new(
            self.spool_max_mb.saturating_mul(1 << 20),
            (!self.spool_sync.is_zero()).then_some(self.spool_sync),
        )
    }

    pub fn ship_policy(&self) -> ShipPolicy {
        ShipPolicy::new(self.ship_idle, self.ship_max_delay)
    }
}
