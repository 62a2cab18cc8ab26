//! Sending domains: the vocabulary of a tenant's right to send as a domain
//! and of the DKIM keys that sign for it. The records, the checks and the
//! keys themselves live in `mailpipe-domains`; the store and the API speak
//! these types.

use std::fmt;
use std::str::FromStr;

/// Why a string is not a sending-domain field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SendingError {
    #[error("domain status {0:?}: expected pending, verified, failing or disabled")]
    Status(String),
    #[error("key state {0:?}: expected pending, active or previous")]
    KeyState(String),
    #[error("DKIM algorithm {0:?}: expected rsa-sha256 or ed25519-sha256")]
    Algorithm(String),
    #[error(
        "selector {0:?}: 1 to 63 letters, digits and '-', not starting or ending with '-' (one DNS label)"
    )]
    Selector(String),
}

/// Where a sending domain stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DomainStatus {
    /// Added; its DKIM record has not been seen in DNS yet. Nothing is sent.
    Pending,
    /// Its DKIM record matches the key: its tenants may send as it.
    Verified,
    /// It verified before and the last check did not: mail still goes out
    /// until the grace period ends, so that a DNS blip stops no campaign.
    Failing,
    /// It failed for longer than the grace period. Nothing is sent.
    Disabled,
}

impl DomainStatus {
    pub const ALL: [DomainStatus; 4] =
        [DomainStatus::Pending, DomainStatus::Verified, DomainStatus::Failing, DomainStatus::Disabled];

    pub fn as_str(self) -> &'static str {
        match self {
            DomainStatus::Pending => "pending",
            DomainStatus::Verified => "verified",
            DomainStatus::Failing => "failing",
            DomainStatus::Disabled => "disabled",
        }
    }

    /// Whether mail may be sent as a domain in this state.
    pub fn may_send(self) -> bool {
        match self {
            DomainStatus::Verified | DomainStatus::Failing => true,
            DomainStatus::Pending | DomainStatus::Disabled => false,
        }
    }
}

impl FromStr for DomainStatus {
    type Err = SendingError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        DomainStatus::ALL
            .into_iter()
            .find(|d| d.as_str() == s)
            .ok_or_else(|| SendingError::Status(s.to_owned()))
    }
}

impl fmt::Display for DomainStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where one DKIM key of a domain stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KeyState {
    /// Made by a rotation; signs once DNS shows its record.
    Pending,
    /// Signs the domain's mail.
    Active,
    /// Replaced by a rotation; its record should stay published until the
    /// mail it signed has been delivered, then it is retired (deleted).
    Previous,
}

impl KeyState {
    pub const ALL: [KeyState; 3] = [KeyState::Pending, KeyState::Active, KeyState::Previous];

    pub fn as_str(self) -> &'static str {
        match self {
            KeyState::Pending => "pending",
            KeyState::Active => "active",
            KeyState::Previous => "previous",
        }
    }
}

impl FromStr for KeyState {
    type Err = SendingError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        KeyState::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| SendingError::KeyState(s.to_owned()))
    }
}

impl fmt::Display for KeyState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A DKIM signing algorithm, spelled as in the signature's `a=` tag.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Deserialize, serde::Serialize)]
pub enum DkimAlgorithm {
    #[serde(rename = "rsa-sha256")]
    RsaSha256,
    #[serde(rename = "ed25519-sha256")]
    Ed25519Sha256,
}

impl DkimAlgorithm {
    pub fn as_str(self) -> &'static str {
        match self {
            DkimAlgorithm::RsaSha256 => "rsa-sha256",
            DkimAlgorithm::Ed25519Sha256 => "ed25519-sha256",
        }
    }

    /// The key type of the DNS record's `k=` tag.
    pub fn key_type(self) -> &'static str {
        match self {
            DkimAlgorithm::RsaSha256 => "rsa",
            DkimAlgorithm::Ed25519Sha256 => "ed25519",
        }
    }
}

impl FromStr for DkimAlgorithm {
    type Err = SendingError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "rsa-sha256" => Ok(DkimAlgorithm::RsaSha256),
            "ed25519-sha256" => Ok(DkimAlgorithm::Ed25519Sha256),
            other => Err(SendingError::Algorithm(other.to_owned())),
        }
    }
}

impl fmt::Display for DkimAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A DKIM selector: one DNS label, so that `<selector>._domainkey.<domain>`
/// is a name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Selector(String);

impl Selector {
    pub fn parse(s: &str) -> Result<Self, SendingError> {
        let ok = !s.is_empty()
            && s.len() <= 63
            && !s.starts_with('-')
            && !s.ends_with('-')
            && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
        if ok { Ok(Self(s.to_ascii_lowercase())) } else { Err(SendingError::Selector(s.to_owned())) }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_state_round_trips_and_only_verified_or_failing_domains_send() {
        for s in DomainStatus::ALL {
            assert_eq!(s.as_str().parse::<DomainStatus>(), Ok(s));
        }
        for k in KeyState::ALL {
            assert_eq!(k.as_str().parse::<KeyState>(), Ok(k));
        }
        let sending: Vec<_> = DomainStatus::ALL.into_iter().filter(|s| s.may_send()).collect();
        assert_eq!(sending, [DomainStatus::Verified, DomainStatus::Failing]);
        assert!("active".parse::<DomainStatus>().is_err());
    }

    #[test]
    fn selectors_are_one_dns_label() {
        assert_eq!(Selector::parse("MP2026-a1").unwrap().as_str(), "mp2026-a1");
        for bad in ["", "-a", "a-", "a.b", "a b", "a_b", &"x".repeat(64)] {
            assert!(Selector::parse(bad).is_err(), "{bad:?}");
        }
        assert_eq!("ed25519-sha256".parse(), Ok(DkimAlgorithm::Ed25519Sha256));
        assert!("rsa-sha1".parse::<DkimAlgorithm>().is_err());
    }
}
