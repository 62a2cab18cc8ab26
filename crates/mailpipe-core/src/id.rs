//! Identifier newtypes. All share one grammar: 1 to 64 characters of
//! `[A-Za-z0-9._:-]`. That keeps them safe in URLs, Kafka keys, header values
//! and log lines without escaping.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Why a string is not a valid identifier.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("{kind} is empty")]
    Empty { kind: &'static str },
    #[error("{kind} is longer than 64 characters")]
    TooLong { kind: &'static str },
    #[error("{kind} contains {ch:?}; allowed are letters, digits and . _ : -")]
    BadChar { kind: &'static str, ch: char },
}

pub(crate) const MAX_ID_LEN: usize = 64;

fn check_id(kind: &'static str, s: &str) -> Result<(), IdError> {
    if s.is_empty() {
        return Err(IdError::Empty { kind });
    }
    if s.len() > MAX_ID_LEN {
        return Err(IdError::TooLong { kind });
    }
    if let Some(ch) = s.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '-'))) {
        return Err(IdError::BadChar { kind, ch });
    }
    Ok(())
}

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident, $kind:literal) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            /// Parses an identifier, rejecting anything outside the id grammar.
            pub fn parse(s: impl Into<String>) -> Result<Self, IdError> {
                let s = s.into();
                check_id($kind, &s)?;
                Ok(Self(s))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $name {
            type Error = IdError;
            fn try_from(s: String) -> Result<Self, IdError> {
                Self::parse(s)
            }
        }

        impl From<$name> for String {
            fn from(v: $name) -> String {
                v.0
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({:?})", stringify!($name), self.0)
            }
        }
    };
}

id_type!(
    /// A business customer of the platform. Every row, event and token is bound to one.
    TenantId,
    "tenant_id"
);
id_type!(
    /// A campaign of one tenant.
    CampaignId,
    "campaign_id"
);
id_type!(
    /// The idempotency key of a send job, unique within its tenant.
    JobId,
    "job_id"
);
id_type!(
    /// A template registered for a campaign.
    TemplateId,
    "template_id"
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_the_grammar() {
        assert_eq!(TenantId::parse("acme-01.eu:x_y").unwrap().as_str(), "acme-01.eu:x_y");
    }

    #[test]
    fn rejects_empty_long_and_odd_characters() {
        assert_eq!(TenantId::parse(""), Err(IdError::Empty { kind: "tenant_id" }));
        assert_eq!(JobId::parse("x".repeat(65)), Err(IdError::TooLong { kind: "job_id" }));
        assert_eq!(CampaignId::parse("a b"), Err(IdError::BadChar { kind: "campaign_id", ch: ' ' }));
        assert!(JobId::parse("a\r\nb").is_err());
        assert!(JobId::parse("a/b").is_err());
    }

    #[test]
    fn deserializes_through_the_parser() {
        let ok: TenantId = serde_json::from_str("\"acme\"").unwrap();
        assert_eq!(ok.as_str(), "acme");
        assert!(serde_json::from_str::<TenantId>("\"a%b\"").is_err());
    }
}
