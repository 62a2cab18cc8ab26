//! Suppressions: who must not be mailed, by whom, for what, and why.
//!
//! Every part of mailpipe that adds, checks, lists or imports a suppression
//! speaks these types; the strings they are stored and shown as are spelled
//! only in the parsers and `as_str` methods below.
//!
//! The policy the platform promises recipients (docs/privacy.md):
//! * a marketing unsubscribe and a spam complaint stop marketing mail,
//!   never transactional mail;
//! * a hard bounce and an erasure stop every category;
//! * a platform-wide entry stops mail from every tenant, a tenant's entry
//!   only that tenant's.

use std::fmt;
use std::str::FromStr;

use crate::{Category, TenantId};

/// A 16-byte keyed hash of a recipient's canonical address. Suppressions
/// and unsubscribe tokens carry it instead of the address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RecipientRef(pub [u8; 16]);

impl RecipientRef {
    /// 32 lower-case hex digits, as stored and exported.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl fmt::Display for RecipientRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl FromStr for RecipientRef {
    type Err = SuppressionError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut out = [0u8; 16];
        hex::decode_to_slice(s, &mut out).map_err(|_| SuppressionError::RecipientRef(s.to_owned()))?;
        Ok(Self(out))
    }
}

/// Why a string is not a suppression field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SuppressionError {
    #[error("reason {0:?}: expected one of {list}", list = Reason::names(Reason::ALL))]
    Reason(String),
    #[error("reason {0:?}: expected one of {list}", list = Reason::names(Reason::OPERATOR))]
    OperatorReason(String),
    #[error("applies_to {0:?}: expected marketing or all")]
    AppliesTo(String),
    #[error("recipient hash {0:?}: expected 32 hex digits")]
    RecipientRef(String),
    #[error("scope {0:?}: {1}")]
    Scope(String, crate::IdError),
}

/// Why an address is suppressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    /// The recipient unsubscribed (a tracked link, or an operator on their behalf).
    Unsubscribe,
    /// The recipient reported a message as spam (a feedback-loop report).
    Complaint,
    /// The address does not exist: a permanent (5xx) refusal.
    HardBounce,
    /// Added by an operator or a tenant by hand.
    Manual,
    /// Loaded from a list the tenant brought along.
    Import,
    /// The recipient's data was erased on request; only this keyed hash stays.
    Erasure,
}

impl Reason {
    /// Every reason, in the order the docs list them.
    pub const ALL: [Reason; 6] = [
        Reason::Unsubscribe,
        Reason::Complaint,
        Reason::HardBounce,
        Reason::Manual,
        Reason::Import,
        Reason::Erasure,
    ];
    /// The reasons a person may give (the CLI, a CSV line): all but
    /// [`Reason::Erasure`], which only an erasure records, so that the list
    /// never claims an erasure that did not happen.
    pub const OPERATOR: [Reason; 5] =
        [Reason::Unsubscribe, Reason::Complaint, Reason::HardBounce, Reason::Manual, Reason::Import];

    /// Which reason an entry keeps when a second one arrives for the same
    /// scope, recipient and category: the stronger. A recipient's own act
    /// (an erasure, a complaint, an unsubscribe) outranks what the platform
    /// saw (a hard bounce), which outranks what a sender added; so an entry
    /// a sender could lift never hides one it could not.
    pub fn weight(self) -> u8 {
        match self {
            Reason::Erasure => 6,
            Reason::Complaint => 5,
            Reason::Unsubscribe => 4,
            Reason::HardBounce => 3,
            Reason::Import => 2,
            Reason::Manual => 1,
        }
    }

    /// Whether an entry of this reason in `scope` may be removed through the
    /// tenant API or the CLI. A tenant removes only what it added itself
    /// (manual, import) from its own list; the operator may also lift a
    /// platform-wide hard bounce (a mailbox that exists again). What a
    /// recipient asked for or did (an unsubscribe, a complaint, an erasure)
    /// is never removed: the recipient's choice is not the sender's to undo.
    pub fn removable_from(self, scope: &Scope) -> bool {
        match self {
            Reason::Manual | Reason::Import => true,
            Reason::HardBounce => matches!(scope, Scope::Platform),
            Reason::Unsubscribe | Reason::Complaint | Reason::Erasure => false,
        }
    }

    fn names<const N: usize>(of: [Reason; N]) -> String {
        of.map(Reason::as_str).join(", ")
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Unsubscribe => "unsubscribe",
            Reason::Complaint => "complaint",
            Reason::HardBounce => "hard_bounce",
            Reason::Manual => "manual",
            Reason::Import => "import",
            Reason::Erasure => "erasure",
        }
    }

    /// A reason given by a person: one of [`Reason::OPERATOR`].
    pub fn from_operator(s: &str) -> Result<Self, SuppressionError> {
        Reason::OPERATOR
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| SuppressionError::OperatorReason(s.to_owned()))
    }
}

impl FromStr for Reason {
    type Err = SuppressionError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Reason::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| SuppressionError::Reason(s.to_owned()))
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which mail a suppression stops.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AppliesTo {
    /// Marketing mail only; receipts and account notices still go out.
    Marketing,
    /// Every category, transactional included.
    All,
}

impl AppliesTo {
    pub fn as_str(self) -> &'static str {
        match self {
            AppliesTo::Marketing => "marketing",
            AppliesTo::All => "all",
        }
    }

    /// Whether this suppression stops a message of `category`.
    pub fn stops(self, category: Category) -> bool {
        match (self, category) {
            (AppliesTo::All, _) | (AppliesTo::Marketing, Category::Marketing) => true,
            (AppliesTo::Marketing, Category::Transactional) => false,
        }
    }
}

impl FromStr for AppliesTo {
    type Err = SuppressionError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "marketing" => Ok(AppliesTo::Marketing),
            "all" => Ok(AppliesTo::All),
            other => Err(SuppressionError::AppliesTo(other.to_owned())),
        }
    }
}

impl fmt::Display for AppliesTo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Whose mail a suppression stops.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Scope {
    /// Every tenant's.
    Platform,
    /// One tenant's.
    Tenant(TenantId),
}

impl Scope {
    /// `None` is the platform: the shape of a CLI's `--tenant` option.
    pub fn of(tenant: Option<TenantId>) -> Self {
        tenant.map_or(Scope::Platform, Scope::Tenant)
    }

    /// The stored key: empty for the platform, else the tenant id. (The
    /// empty string keeps the unique index usable: NULLs never conflict.)
    pub fn key(&self) -> &str {
        match self {
            Scope::Platform => "",
            Scope::Tenant(t) => t.as_str(),
        }
    }

    /// The inverse of [`Scope::key`].
    pub fn from_key(key: &str) -> Result<Self, SuppressionError> {
        if key.is_empty() {
            return Ok(Scope::Platform);
        }
        TenantId::parse(key).map(Scope::Tenant).map_err(|e| SuppressionError::Scope(key.to_owned(), e))
    }

    pub fn is_platform(&self) -> bool {
        matches!(self, Scope::Platform)
    }

    /// `platform` or `tenant`, without the tenant: for events and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Scope::Platform => "platform",
            Scope::Tenant(_) => "tenant",
        }
    }
}

/// `platform`, or the tenant id: as exported and logged.
impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Scope::Platform => f.write_str(self.kind()),
            Scope::Tenant(t) => f.write_str(t.as_str()),
        }
    }
}

/// One entry of the suppression list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Suppression {
    pub scope: Scope,
    pub recipient: RecipientRef,
    pub reason: Reason,
    pub applies_to: AppliesTo,
    /// The tenant whose mail or request led to it, when there was one.
    pub source_tenant: Option<TenantId>,
    /// Unix ms: when it was stored, for an entry read back. A single entry
    /// is stamped by the store when it is inserted; an import keeps this.
    pub created_at: i64,
}

impl Suppression {
    /// An entry made now.
    pub fn new(scope: Scope, recipient: RecipientRef, reason: Reason, applies_to: AppliesTo) -> Self {
        Self { scope, recipient, reason, applies_to, source_tenant: None, created_at: crate::now_ms() }
    }

    /// A marketing unsubscribe from `tenant`'s mail: platform-wide, as the
    /// platform promises recipients (no tenant's marketing mail reaches them
    /// again); never stops transactional mail.
    pub fn unsubscribe(tenant: &TenantId, recipient: RecipientRef) -> Self {
        Self::new(Scope::Platform, recipient, Reason::Unsubscribe, AppliesTo::Marketing).from_tenant(tenant)
    }

    /// A permanent refusal of `tenant`'s mail: no tenant mails the address again.
    pub fn hard_bounce(tenant: &TenantId, recipient: RecipientRef) -> Self {
        Self::new(Scope::Platform, recipient, Reason::HardBounce, AppliesTo::All).from_tenant(tenant)
    }

    /// A spam complaint about `tenant`'s mail: as an unsubscribe, no tenant
    /// sends the address marketing again; its receipts and account notices
    /// still reach it (a complaint about a newsletter is not a refusal of
    /// a password reset).
    pub fn complaint(tenant: &TenantId, recipient: RecipientRef) -> Self {
        Self::new(Scope::Platform, recipient, Reason::Complaint, AppliesTo::Marketing).from_tenant(tenant)
    }

    /// What an erasure leaves behind: within `scope`, nothing is sent again.
    pub fn erasure(scope: Scope, recipient: RecipientRef) -> Self {
        Self::new(scope, recipient, Reason::Erasure, AppliesTo::All)
    }

    pub fn from_tenant(mut self, tenant: &TenantId) -> Self {
        self.source_tenant = Some(tenant.clone());
        self
    }
}

/// What stopped a send: the matching entry's reason and scope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Suppressed {
    pub reason: Reason,
    pub scope: Scope,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reason_round_trips_and_erasure_is_not_an_operator_choice() {
        for r in Reason::ALL {
            assert_eq!(r.as_str().parse::<Reason>(), Ok(r));
        }
        assert_eq!(Reason::from_operator("manual"), Ok(Reason::Manual));
        let e = Reason::from_operator("erasure").unwrap_err().to_string();
        assert!(e.contains("import") && !e.contains("erasure,") && !e.ends_with("erasure"), "{e}");
        let e = "spam".parse::<Reason>().unwrap_err().to_string();
        assert!(e.contains("hard_bounce") && e.contains("\"spam\""), "{e}");
    }

    #[test]
    fn marketing_entries_never_stop_transactional_mail() {
        assert!(AppliesTo::Marketing.stops(Category::Marketing));
        assert!(!AppliesTo::Marketing.stops(Category::Transactional));
        assert!(AppliesTo::All.stops(Category::Transactional));
        assert_eq!("all".parse(), Ok(AppliesTo::All));
        assert!("transactional".parse::<AppliesTo>().is_err());
    }

    #[test]
    fn scopes_and_recipient_refs_round_trip_through_their_stored_form() {
        let acme = Scope::Tenant(TenantId::parse("acme").unwrap());
        assert_eq!(Scope::from_key(acme.key()), Ok(acme.clone()));
        assert_eq!(Scope::from_key(""), Ok(Scope::Platform));
        assert!(Scope::from_key("no spaces").is_err());
        assert_eq!((acme.to_string(), Scope::Platform.to_string()), ("acme".into(), "platform".into()));
        let r = RecipientRef([0xab; 16]);
        assert_eq!(r.to_hex().parse(), Ok(r));
        assert!("zz".parse::<RecipientRef>().is_err());
    }

    #[test]
    fn only_what_a_sender_added_can_be_removed() {
        let acme = Scope::Tenant(TenantId::parse("acme").unwrap());
        let removable = |scope: &Scope| -> Vec<Reason> {
            Reason::ALL.into_iter().filter(|r| r.removable_from(scope)).collect()
        };
        assert_eq!(removable(&acme), [Reason::Manual, Reason::Import]);
        assert_eq!(removable(&Scope::Platform), [Reason::HardBounce, Reason::Manual, Reason::Import]);
    }

    #[test]
    fn the_workflows_make_the_entries_the_policy_promises() {
        let t = TenantId::parse("acme").unwrap();
        let r = RecipientRef([1; 16]);
        let u = Suppression::unsubscribe(&t, r);
        assert_eq!(
            (u.scope, u.applies_to, u.reason),
            (Scope::Platform, AppliesTo::Marketing, Reason::Unsubscribe)
        );
        let b = Suppression::hard_bounce(&t, r);
        assert_eq!(
            (b.scope, b.applies_to, b.source_tenant),
            (Scope::Platform, AppliesTo::All, Some(t.clone()))
        );
        assert_eq!(Suppression::complaint(&t, r).applies_to, AppliesTo::Marketing);
    }
}
