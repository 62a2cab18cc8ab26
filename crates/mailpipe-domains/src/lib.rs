//! Sending domains: a tenant sends only as a domain it has proven it holds,
//! and every message is signed `d=` that domain with that domain's own key.
//!
//! * [`onboard`]: add a domain (a key pair made or brought along, sealed,
//!   stored), rotate its key, retire the old one, remove it; and the DNS
//!   records to publish ([`records`]).
//! * [`check`]: the preflight against real DNS ([`dns`]), judged by
//!   [`preflight`], and the status it leads to: `pending` until the DKIM
//!   record matches, `verified`, `failing` when it stops matching, and
//!   `disabled` once the grace period is over. Run on a schedule by
//!   `mailpipe analytics`.
//! * [`registry`]: what a worker may sign for: (tenant, domain) → key, kept
//!   current without a restart.
//! * [`seal`]: private keys at rest, AES-256-GCM under a key-encryption key.
//! * [`keys`]: key pairs, RSA-2048 or Ed25519.
//! * [`providers`]: a recipient domain's mailbox provider, from its MX
//!   hosts (cached for their TTL), for pacing and counting.
#![forbid(unsafe_code)]

pub mod check;
pub mod dns;
pub mod keys;
pub mod onboard;
pub mod preflight;
pub mod providers;
pub mod records;
pub mod registry;
pub mod seal;
mod settings;

use mailpipe_core::{Domain, Selector};
use mailpipe_store::StoreError;

pub use check::{Checked, DkimVerdict, check, run_checks};
pub use dns::{Answer, Dns};
pub use onboard::KeySource;
pub use preflight::{Finding, Outcome};
pub use providers::{ProviderSettings, Providers};
pub use records::Record;
pub use registry::{Permit, Senders};
pub use seal::{SealError, Sealer};
pub use settings::DomainSettings;

#[derive(Debug, thiserror::Error)]
pub enum DomainError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Seal(#[from] SealError),
    #[error(transparent)]
    Key(#[from] keys::KeyError),
    #[error(transparent)]
    Dkim(#[from] mailpipe_render::DkimError),
    #[error(transparent)]
    Dns(#[from] dns::DnsError),
    #[error("{0} is held by another tenant")]
    HeldByAnother(Domain),
    #[error("no sending domain {0}")]
    NotFound(Domain),
    #[error("a rotation is under way: selector {0} waits for its DNS record")]
    RotationInProgress(Selector),
    #[error("selector {0} is not a previous key of the domain (only a replaced key can be retired)")]
    NotPrevious(Selector),
    #[error("a tenant may hold at most {0} sending domains (domains.tenant_domain_limit)")]
    TooMany(usize),
    #[error("{0} was removed or taken over while it was checked; check it again")]
    Changed(Domain),
    #[error("only a platform-owned domain can be attested")]
    AttestedNeedsPlatform,
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// The settings the unit tests judge by.
    pub(crate) fn settings() -> DomainSettings {
        DomainSettings {
            active_key: 1,
            keys: Default::default(),
            default_algorithm: mailpipe_core::DkimAlgorithm::RsaSha256,
            nameservers: Vec::new(),
            dns_timeout: std::time::Duration::from_secs(1),
            spf_include: Some("_spf.mailpipe.test".into()),
            spf_addresses: Vec::new(),
            dmarc_rua: Some("dmarc@mailpipe.test".into()),
            return_path: Some("bounces.mailpipe.test".into()),
            return_path_label: "bounces".into(),
            check_interval: std::time::Duration::from_secs(3600),
            failing_grace: std::time::Duration::from_secs(3600),
            claim_expiry: std::time::Duration::from_secs(72 * 3600),
            tenant_domain_limit: 100,
            refresh: std::time::Duration::from_secs(5),
            warm_up: true,
        }
    }
}
