//! `[tracker]`: the tracking endpoint's configuration section itself. The
//! spool, the shipper and the HTTP server each take their part of it.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

pub use mailpipe_core::Cidr;
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
    /// The load balancers and proxies in front of the tracker, as CIDR
    /// blocks. A request from one of them is from the right-most
    /// `X-Forwarded-For` entry that is not one of them: entries further
    /// left were written by the client and prove nothing. Empty: the
    /// connection's peer, and `X-Forwarded-For` is ignored.
    #[serde(default)]
    pub trusted_proxies: Vec<Cidr>,
    /// A click sooner than this after sending is a machine's.
    pub machine_click_secs: i64,
    pub max_path_bytes: usize,
    pub max_header_bytes: usize,
    /// A client must send its whole request head within this time.
    #[serde(rename = "header_read_timeout_secs", deserialize_with = "secs")]
    pub header_read_timeout: Duration,
    /// A request (head, body and answer) must be done within this time.
    #[serde(rename = "request_timeout_secs", deserialize_with = "secs")]
    pub request_timeout: Duration,
    /// Open connections at most; more wait in the kernel's accept queue.
    pub max_connections: usize,
    /// How long a request waits for a full spool to take its event before
    /// it is answered 503 with `Retry-After`, and nothing recorded.
    #[serde(rename = "full_spool_wait_ms", deserialize_with = "millis")]
    pub full_spool_wait: Duration,
    /// Where `/metrics` is served: an admin listener apart from the public
    /// one. Unset: nowhere.
    #[serde(default)]
    pub metrics_listen: Option<SocketAddr>,
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

    /// The public listener's limits.
    pub fn limits(&self) -> mailpipe_http::ServeLimits {
        mailpipe_http::ServeLimits {
            header_read_timeout: self.header_read_timeout,
            request_timeout: self.request_timeout,
            max_connections: self.max_connections,
            shutdown_grace: self.shutdown_grace,
        }
    }

    pub fn ship_policy(&self) -> ShipPolicy {
        ShipPolicy::new(self.ship_idle, self.ship_max_delay)
    }
}
