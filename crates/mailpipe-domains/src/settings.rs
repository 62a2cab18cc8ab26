//! `[domains]`: the configuration section itself.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use mailpipe_core::DkimAlgorithm;
use mailpipe_core::units::{millis, secs};
use secrecy::SecretString;
use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
pub struct DomainSettings {
    /// The key-encryption key that seals new DKIM keys.
    pub active_key: u16,
    /// Key-encryption keys, id → base64 secret (32+ bytes). Every one opens
    /// what it sealed; only the active one seals. Secrets.
    #[serde(default)]
    pub keys: BTreeMap<String, SecretString>,
    /// The algorithm of keys made without `--algorithm`.
    pub default_algorithm: DkimAlgorithm,
    /// DNS servers the preflight asks (`"192.0.2.53:53"`); none: the
    /// system's (`/etc/resolv.conf`).
    #[serde(default)]
    pub nameservers: Vec<SocketAddr>,
    /// How long one DNS query may take.
    #[serde(rename = "dns_timeout_ms", deserialize_with = "millis")]
    pub dns_timeout: Duration,
    /// What a sending domain's SPF record must include for the platform's
    /// relays (`include:<this>`), if the platform publishes one.
    #[serde(default)]
    pub spf_include: Option<String>,
    /// The relays' addresses as SPF mechanisms (`ip4:192.0.2.0/24`), for a
    /// platform without an include.
    #[serde(default)]
    pub spf_addresses: Vec<String>,
    /// Where the suggested DMARC record sends aggregate reports (`rua=`).
    #[serde(default)]
    pub dmarc_rua: Option<String>,
    /// The host bounces come back to. When set, each sending domain gets a
    /// return-path name, `<return_path_label>.<domain>`, as a CNAME to it.
    #[serde(default)]
    pub return_path: Option<String>,
    pub return_path_label: String,
    /// How often `mailpipe analytics` checks each domain's DNS again.
    #[serde(rename = "check_interval_secs", deserialize_with = "secs")]
    pub check_interval: Duration,
    /// How long a domain that stopped verifying may go on sending
    /// (`failing`) before it is `disabled`.
    #[serde(rename = "failing_grace_secs", deserialize_with = "secs")]
    pub failing_grace: Duration,
    /// How long a tenant's claim to a domain that has never verified holds it
    /// against other tenants; after that another tenant may claim it, so
    /// that adding a domain one does not control blocks its owner only so
    /// long.
    #[serde(rename = "claim_expiry_secs", deserialize_with = "secs")]
    pub claim_expiry: Duration,
    /// How many domains one tenant may hold (claimed or verified): each
    /// costs a key pair and DNS checks.
    pub tenant_domain_limit: usize,
    /// How often a worker looks for new, rotated and disabled domains.
    #[serde(rename = "refresh_ms", deserialize_with = "millis")]
    pub refresh: Duration,
    /// Whether a tenant's new domain starts on the warm-up ramp (`[warmup]`).
    pub warm_up: bool,
}
