//! Signed tokens for tracked links: open pixels, click redirects and unsubscribes.
//!
//! # Format (version 1)
//!
//! ```text
//! token = base64url-nopad( body || tag )
//! body  = 0x01 version | kind u8 | key id u16be
//!       | tenant (u8 len + bytes) | campaign (u8 len + bytes) | job (u8 len + bytes)
//!       | category u8 | sent_at u32be (unix seconds)
//!       | action payload: click: url (u16be len + bytes); unsubscribe: recipient ref (16 bytes)
//! tag   = HMAC-SHA256(tenant_key(key id, tenant), body), first 16 bytes
//! tenant_key(k, t) = HMAC-SHA256(master secret k, "mailpipe/token/v1/tenant/" || t)
//! ```
//!
//! * The tenant is inside the MAC'd body *and* in the key, so a token minted
//!   for one tenant never verifies for another, even with a copied body.
//! * The key id lets keys rotate: every key in the [`Keyring`] verifies, only
//!   the active one signs, and removing a key retires its tokens at once. A
//!   key marked retired ([`Keyring::retire`]) keeps verifying unsubscribe
//!   links only, for [`Ageing::unsubscribe_grace_secs`] after it was retired:
//!   old mail stays in inboxes, and its unsubscribe link must keep working.
//! * Click links may expire ([`Ageing::click_ttl_secs`] after sending).
//! * One tenant's links can be revoked without touching the others': each
//!   tenant has a link generation ([`LinkGenerations`]); a token carries the
//!   generation it was signed in, and one from an older generation verifies
//!   only as an unsubscribe. Generation 0 signs the version 1 format above;
//!   later ones version 2, which carries `generation u16be` after the key id.
//! * The tag is compared in constant time before any field past the key
//!   selector is parsed.
#![forbid(unsafe_code)]

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use mailpipe_core::{CampaignId, Category, JobId, TenantId};
use secrecy::{ExposeSecret, SecretSlice};
use sha2::Sha256;
use subtle::ConstantTimeEq;

type HmacSha256 = Hmac<Sha256>;

const VERSION: u8 = 1;
/// With a link generation after the key id.
const VERSION_GENERATIONS: u8 = 2;
const TAG_LEN: usize = 16;
/// Longest token accepted, in characters. Checked before decoding anything.
pub const MAX_TOKEN_CHARS: usize = 4096;
/// Longest URL a click token may carry.
pub const MAX_URL_LEN: usize = 2048;

pub use mailpipe_core::RecipientRef;

/// Hashes canonical addresses into [`RecipientRef`]s with a platform secret
/// of its own. It is deliberately separate from the token keys: those rotate,
/// and a rotation must not change the key of every suppression.
#[derive(Clone)]
pub struct RecipientHasher {
    mac: HmacSha256,
}

impl std::fmt::Debug for RecipientHasher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RecipientHasher(..)")
    }
}

impl RecipientHasher {
    pub fn new(secret: &SecretSlice<u8>) -> Result<Self, KeyringError> {
        if secret.expose_secret().len() < 32 {
            return Err(KeyringError::RecipientKeyTooShort);
        }
        let mac = HmacSha256::new_from_slice(secret.expose_secret())
            .map_err(|_| KeyringError::RecipientKeyTooShort)?;
        Ok(Self { mac })
    }

    /// The reference of a canonical (lower-cased) address.
    pub fn hash(&self, canonical_address: &str) -> RecipientRef {
        let mut m = self.mac.clone();
        m.update(b"mailpipe/recipient/v1/");
        m.update(canonical_address.as_bytes());
        let out = m.finalize().into_bytes();
        let mut r = [0u8; 16];
        r.copy_from_slice(&out[..16]);
        RecipientRef(r)
    }
}

impl RecipientHasher {
    /// The signer of message references, with a key of its own derived
    /// from this one (never the same key for two purposes).
    pub fn references(&self) -> References {
        let mut m = self.mac.clone();
        m.update(b"mailpipe/reference-key/v1");
        let key = m.finalize().into_bytes();
        References { mac: HmacSha256::new_from_slice(&key).expect("HMAC takes any key length") }
    }
}

/// Signs and checks the `X-Mailpipe-Ref` of a message: `tenant/job/tag`,
/// the tag a MAC over tenant and job. A bounce or complaint that quotes the
/// header maps to the send it names, and nobody without the platform's key
/// can make one up that maps to any send.
#[derive(Clone)]
pub struct References {
    mac: HmacSha256,
}

impl std::fmt::Debug for References {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("References(..)")
    }
}

/// Why a reference names no send of ours.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReferenceError {
    #[error("not tenant/job/tag")]
    Malformed,
    #[error("its tag does not check out")]
    Forged,
}

impl References {
    fn tag(&self, tenant: &str, job: &str) -> [u8; TAG_LEN] {
        let mut m = self.mac.clone();
        m.update(b"mailpipe/reference/v1/");
        m.update(tenant.as_bytes());
        m.update(b"/");
        m.update(job.as_bytes());
        let out = m.finalize().into_bytes();
        let mut t = [0u8; TAG_LEN];
        t.copy_from_slice(&out[..TAG_LEN]);
        t
    }

    pub fn sign(&self, tenant: &TenantId, job: &JobId) -> String {
        let tag = URL_SAFE_NO_PAD.encode(self.tag(tenant.as_str(), job.as_str()));
        format!("{tenant}/{job}/{tag}")
    }

    /// The tenant and job a reference names, if its tag checks out
    /// (compared in constant time).
    pub fn verify(&self, value: &str) -> Result<(TenantId, JobId), ReferenceError> {
        let mut it = value.trim().splitn(3, '/');
        let (Some(t), Some(j), Some(tag)) = (it.next(), it.next(), it.next()) else {
            return Err(ReferenceError::Malformed);
        };
        let tenant = TenantId::parse(t).map_err(|_| ReferenceError::Malformed)?;
        let job = JobId::parse(j).map_err(|_| ReferenceError::Malformed)?;
        let given = URL_SAFE_NO_PAD.decode(tag).map_err(|_| ReferenceError::Malformed)?;
        if given.len() != TAG_LEN {
            return Err(ReferenceError::Malformed);
        }
        if !bool::from(given.ct_eq(&self.tag(tenant.as_str(), job.as_str()))) {
            return Err(ReferenceError::Forged);
        }
        Ok((tenant, job))
    }
}

/// The reference a return path carries: `b-<tag>@<bounce domain>`, the tag
/// 16 characters of lower-case base32: 80 random bits drawn when the job is
/// first claimed and stored with it in the ledger, which every attempt of
/// the job sends with. A bounce to it maps back to that one send; a made-up
/// tag maps to none (guessing one is a 1 in 2^80 chance per try); and a
/// reused job id, after the ledger forgot the first, gets a new tag. Lower
/// case survives the mail systems that fold local parts.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ReturnTag(String);

/// The alphabet of [`ReturnTag`] (RFC 4648 base32, lower case).
const BASE32: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz234567";

impl ReturnTag {
    /// The local part's prefix before the tag.
    pub const PREFIX: &'static str = "b-";

    /// The tag of a return path's local part (`b-<tag>`, any case), if it
    /// has the shape of one. Whether it names a send is the ledger's to say.
    pub fn from_local_part(local: &str) -> Option<Self> {
        let local = local.to_ascii_lowercase();
        let tag = local.strip_prefix(Self::PREFIX)?;
        (tag.len() == 16 && tag.bytes().all(|b| BASE32.contains(&b))).then(|| Self(tag.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// `b-<tag>`.
    pub fn local_part(&self) -> String {
        format!("{}{}", Self::PREFIX, self.0)
    }

    /// A new, unguessable tag.
    pub fn random() -> Self {
        let bytes: [u8; 10] = rand::random();
        let bits = bytes.iter().fold(0u128, |acc, b| (acc << 8) | u128::from(*b));
        Self((0..16).rev().map(|i| BASE32[((bits >> (i * 5)) & 31) as usize] as char).collect())
    }

    /// A tag as the ledger stored it.
    pub fn parse(stored: &str) -> Option<Self> {
        Self::from_local_part(&format!("{}{stored}", Self::PREFIX))
    }
}

impl std::fmt::Display for ReturnTag {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// What the token lets its bearer do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Open,
    Click { url: String },
    Unsubscribe { recipient: RecipientRef },
}

impl Action {
    fn kind(&self) -> u8 {
        match self {
            Action::Open => 1,
            Action::Click { .. } => 2,
            Action::Unsubscribe { .. } => 3,
        }
    }
}

/// The facts a token binds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claims {
    pub tenant_id: TenantId,
    pub campaign_id: CampaignId,
    pub job_id: JobId,
    pub category: Category,
    /// When the message was rendered, unix seconds. Lets the tracker spot
    /// clicks that come too soon after delivery to be human.
    pub sent_at: u32,
    pub action: Action,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("token is longer than {MAX_TOKEN_CHARS} characters")]
    TooLong,
    #[error("token is not base64url")]
    Encoding,
    #[error("token is truncated")]
    Truncated,
    #[error("token version is not supported")]
    Version,
    #[error("token was signed with an unknown or retired key")]
    UnknownKey,
    #[error("token signature does not match")]
    BadSignature,
    #[error("token body is malformed")]
    Malformed,
    #[error("url is longer than {MAX_URL_LEN} bytes")]
    UrlTooLong,
    #[error("token was signed with a retired key, and is not an unsubscribe within its grace")]
    Retired,
    #[error("link has expired")]
    Expired,
    #[error("the tenant's links of this generation were revoked")]
    Revoked,
}

/// Each tenant's current link generation (absent: 0), shared by a keyring
/// and whatever keeps it current from the store. Raising a tenant's
/// generation revokes its older opens and clicks.
#[derive(Debug, Default)]
pub struct LinkGenerations(std::sync::RwLock<std::collections::HashMap<String, u16>>);

impl LinkGenerations {
    pub fn get(&self, tenant: &str) -> u16 {
        self.0.read().unwrap_or_else(|p| p.into_inner()).get(tenant).copied().unwrap_or(0)
    }

    /// Replaces every tenant's generation with `all` (tenants not in it: 0).
    pub fn set_all(&self, all: std::collections::HashMap<String, u16>) {
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = all;
    }
}

/// How tokens age: the lifetimes in `[tokens]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ageing {
    /// How long a retired key's unsubscribe links keep working.
    pub unsubscribe_grace_secs: u64,
    /// How long after sending a click link works; `None`: for ever.
    pub click_ttl_secs: Option<u64>,
}

impl Default for Ageing {
    /// 60 days of grace; click links that never expire.
    fn default() -> Self {
        Self { unsubscribe_grace_secs: 60 * 86_400, click_ttl_secs: None }
    }
}

/// A signing key: an id that travels in the token, and a master secret.
pub struct SigningKey {
    pub id: u16,
    pub secret: SecretSlice<u8>,
}

/// The keys a deployment knows. All verify (a retired one, only
/// unsubscribes within the grace); `active` signs.
pub struct Keyring {
    keys: Vec<(u16, HmacSha256)>,
    active: u16,
    /// Key id → when it was retired, unix seconds.
    retired: Vec<(u16, u64)>,
    ageing: Ageing,
    generations: std::sync::Arc<LinkGenerations>,
}

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ids: Vec<u16> = self.keys.iter().map(|(id, _)| *id).collect();
        f.debug_struct("Keyring")
            .field("key_ids", &ids)
            .field("active", &self.active)
            .field("retired", &self.retired)
            .field("ageing", &self.ageing)
            .finish()
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KeyringError {
    #[error("no token keys are configured")]
    Empty,
    #[error("active key id {0} is not among the configured keys")]
    ActiveMissing(u16),
    #[error("key id {0} appears twice")]
    Duplicate(u16),
    #[error("key {0} is shorter than 32 bytes")]
    TooShort(u16),
    #[error("the recipient hash key is shorter than 32 bytes")]
    RecipientKeyTooShort,
    #[error("key id {0} is retired, so it cannot be the active key")]
    RetiredActive(u16),
    #[error("retired key id {0} is not among the configured keys")]
    RetiredMissing(u16),
}

impl Keyring {
    pub fn new(keys: Vec<SigningKey>, active: u16) -> Result<Self, KeyringError> {
        if keys.is_empty() {
            return Err(KeyringError::Empty);
        }
        let mut out: Vec<(u16, HmacSha256)> = Vec::with_capacity(keys.len());
        for k in keys {
            if out.iter().any(|(id, _)| *id == k.id) {
                return Err(KeyringError::Duplicate(k.id));
            }
            if k.secret.expose_secret().len() < 32 {
                return Err(KeyringError::TooShort(k.id));
            }
            let mac = HmacSha256::new_from_slice(k.secret.expose_secret())
                .map_err(|_| KeyringError::TooShort(k.id))?;
            out.push((k.id, mac));
        }
        if !out.iter().any(|(id, _)| *id == active) {
            return Err(KeyringError::ActiveMissing(active));
        }
        Ok(Self {
            keys: out,
            active,
            retired: Vec::new(),
            ageing: Ageing::default(),
            generations: Default::default(),
        })
    }

    /// Marks key `id` retired at `at` (unix seconds): from then on it
    /// verifies only unsubscribe links, and those only until the grace of
    /// [`Keyring::with_ageing`] has passed.
    pub fn retire(mut self, id: u16, at: u64) -> Result<Self, KeyringError> {
        if id == self.active {
            return Err(KeyringError::RetiredActive(id));
        }
        if self.master(id).is_none() {
            return Err(KeyringError::RetiredMissing(id));
        }
        self.retired.retain(|(k, _)| *k != id);
        self.retired.push((id, at));
        Ok(self)
    }

    pub fn with_ageing(mut self, ageing: Ageing) -> Self {
        self.ageing = ageing;
        self
    }

    /// Signs in, and verifies against, these tenants' link generations.
    pub fn with_generations(mut self, generations: std::sync::Arc<LinkGenerations>) -> Self {
        self.generations = generations;
        self
    }

    /// The generations this keyring follows, for whoever keeps them current.
    pub fn generations(&self) -> &std::sync::Arc<LinkGenerations> {
        &self.generations
    }

    fn master(&self, id: u16) -> Option<&HmacSha256> {
        self.keys.iter().find(|(k, _)| *k == id).map(|(_, m)| m)
    }

    fn tenant_mac(master: &HmacSha256, tenant: &[u8]) -> HmacSha256 {
        let mut m = master.clone();
        m.update(b"mailpipe/token/v1/tenant/");
        m.update(tenant);
        let tenant_key = m.finalize().into_bytes();
        // A 32-byte key is always accepted by HMAC.
        HmacSha256::new_from_slice(&tenant_key).expect("32-byte HMAC key")
    }

    /// Signs `claims` with the active key, in the tenant's link generation.
    pub fn sign(&self, claims: &Claims) -> Result<String, TokenError> {
        let generation = self.generations.get(claims.tenant_id.as_str());
        let mut body = Vec::with_capacity(96);
        body.push(if generation == 0 { VERSION } else { VERSION_GENERATIONS });
        body.push(claims.action.kind());
        body.extend_from_slice(&self.active.to_be_bytes());
        if generation > 0 {
            body.extend_from_slice(&generation.to_be_bytes());
        }
        for s in [claims.tenant_id.as_str(), claims.campaign_id.as_str(), claims.job_id.as_str()] {
            // Ids are at most 64 bytes, so the length fits in a u8.
            body.push(s.len() as u8);
            body.extend_from_slice(s.as_bytes());
        }
        body.push(match claims.category {
            Category::Marketing => 0,
            Category::Transactional => 1,
        });
        body.extend_from_slice(&claims.sent_at.to_be_bytes());
        match &claims.action {
            Action::Open => {}
            Action::Click { url } => {
                if url.len() > MAX_URL_LEN {
                    return Err(TokenError::UrlTooLong);
                }
                body.extend_from_slice(&(url.len() as u16).to_be_bytes());
                body.extend_from_slice(url.as_bytes());
            }
            Action::Unsubscribe { recipient } => body.extend_from_slice(&recipient.0),
        }
        let master = self.master(self.active).expect("active key exists");
        let mut mac = Self::tenant_mac(master, claims.tenant_id.as_bytes_for_mac());
        mac.update(&body);
        let tag = mac.finalize().into_bytes();
        body.extend_from_slice(&tag[..TAG_LEN]);
        Ok(URL_SAFE_NO_PAD.encode(body))
    }

    /// Verifies a token, now, and returns what it binds.
    pub fn verify(&self, token: &str) -> Result<Claims, TokenError> {
        let now =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        self.verify_at(token, now)
    }

    /// Verifies a token as of `now` (unix seconds): its tag, then its age.
    ///
    /// The only work done before the constant-time tag comparison is decoding
    /// and reading the key id and tenant, which select the key.
    pub fn verify_at(&self, token: &str, now: u64) -> Result<Claims, TokenError> {
        if token.len() > MAX_TOKEN_CHARS {
            return Err(TokenError::TooLong);
        }
        let raw = URL_SAFE_NO_PAD.decode(token).map_err(|_| TokenError::Encoding)?;
        if raw.len() < 5 + TAG_LEN {
            return Err(TokenError::Truncated);
        }
        let (body, tag) = raw.split_at(raw.len() - TAG_LEN);
        // Where the tenant starts: after the generation, if there is one.
        let at = match body[0] {
            VERSION => 4,
            VERSION_GENERATIONS => 6,
            _ => return Err(TokenError::Version),
        };
        let kid = u16::from_be_bytes([body[2], body[3]]);
        let master = self.master(kid).ok_or(TokenError::UnknownKey)?;
        let tlen = *body.get(at).ok_or(TokenError::Truncated)? as usize;
        let tenant = body.get(at + 1..at + 1 + tlen).ok_or(TokenError::Truncated)?;
        let mut mac = Self::tenant_mac(master, tenant);
        mac.update(body);
        let expected = mac.finalize().into_bytes();
        if !bool::from(expected[..TAG_LEN].ct_eq(tag)) {
            return Err(TokenError::BadSignature);
        }
        let (generation, claims) = parse_body(body)?;
        self.check_age(kid, &claims, now)?;
        // Revoked: an older generation's opens and clicks. Its unsubscribes
        // still count: they only ever stop mail.
        if generation < self.generations.get(claims.tenant_id.as_str())
            && !matches!(claims.action, Action::Unsubscribe { .. })
        {
            return Err(TokenError::Revoked);
        }
        Ok(claims)
    }

    fn check_age(&self, kid: u16, claims: &Claims, now: u64) -> Result<(), TokenError> {
        if let Some(&(_, retired_at)) = self.retired.iter().find(|(k, _)| *k == kid)
            && now >= retired_at
        {
            let within_grace = now < retired_at.saturating_add(self.ageing.unsubscribe_grace_secs);
            if !(matches!(claims.action, Action::Unsubscribe { .. }) && within_grace) {
                return Err(TokenError::Retired);
            }
        }
        if let (Action::Click { .. }, Some(ttl)) = (&claims.action, self.ageing.click_ttl_secs)
            && now >= u64::from(claims.sent_at).saturating_add(ttl)
        {
            return Err(TokenError::Expired);
        }
        Ok(())
    }
}

trait MacBytes {
    fn as_bytes_for_mac(&self) -> &[u8];
}
impl MacBytes for TenantId {
    fn as_bytes_for_mac(&self) -> &[u8] {
        self.as_str().as_bytes()
    }
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], TokenError> {
        if self.0.len() < n {
            return Err(TokenError::Malformed);
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Ok(a)
    }
    fn u8(&mut self) -> Result<u8, TokenError> {
        Ok(self.take(1)?[0])
    }
    fn short_str(&mut self) -> Result<&'a str, TokenError> {
        let n = self.u8()? as usize;
        std::str::from_utf8(self.take(n)?).map_err(|_| TokenError::Malformed)
    }
}

/// The token's link generation and claims.
fn parse_body(body: &[u8]) -> Result<(u16, Claims), TokenError> {
    let mut r = Reader(body);
    let version = r.u8()?;
    let kind = r.u8()?;
    let _kid = r.take(2)?;
    let generation = if version == VERSION_GENERATIONS {
        let g = r.take(2)?;
        u16::from_be_bytes([g[0], g[1]])
    } else {
        0
    };
    let tenant_id = TenantId::parse(r.short_str()?).map_err(|_| TokenError::Malformed)?;
    let campaign_id = CampaignId::parse(r.short_str()?).map_err(|_| TokenError::Malformed)?;
    let job_id = JobId::parse(r.short_str()?).map_err(|_| TokenError::Malformed)?;
    let category = match r.u8()? {
        0 => Category::Marketing,
        1 => Category::Transactional,
        _ => return Err(TokenError::Malformed),
    };
    let s = r.take(4)?;
    let sent_at = u32::from_be_bytes([s[0], s[1], s[2], s[3]]);
    let action = match kind {
        1 => Action::Open,
        2 => {
            let l = r.take(2)?;
            let n = u16::from_be_bytes([l[0], l[1]]) as usize;
            let url = std::str::from_utf8(r.take(n)?).map_err(|_| TokenError::Malformed)?;
            Action::Click { url: url.to_owned() }
        }
        3 => {
            let mut rr = [0u8; 16];
            rr.copy_from_slice(r.take(16)?);
            Action::Unsubscribe { recipient: RecipientRef(rr) }
        }
        _ => return Err(TokenError::Malformed),
    };
    if !r.0.is_empty() {
        return Err(TokenError::Malformed);
    }
    Ok((generation, Claims { tenant_id, campaign_id, job_id, category, sent_at, action }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(id: u16, fill: u8) -> SigningKey {
        SigningKey { id, secret: vec![fill; 32].into() }
    }

    fn claims(action: Action) -> Claims {
        Claims {
            tenant_id: TenantId::parse("acme").unwrap(),
            campaign_id: CampaignId::parse("spring").unwrap(),
            job_id: JobId::parse("job-42").unwrap(),
            category: Category::Marketing,
            sent_at: 1_790_000_000,
            action,
        }
    }

    #[test]
    fn references_name_their_send_and_cannot_be_made_up() {
        let refs = RecipientHasher::new(&vec![9u8; 32].into()).unwrap().references();
        let (acme, job) = (TenantId::parse("acme").unwrap(), JobId::parse("job-42").unwrap());
        let signed = refs.sign(&acme, &job);
        assert_eq!(refs.verify(&signed), Ok((acme.clone(), job.clone())));
        assert_eq!(refs.verify(&format!(" {signed}\r\n")), Ok((acme, job)), "header whitespace");
        let tag = signed.rsplit('/').next().unwrap();
        assert_eq!(refs.verify(&format!("globex/job-42/{tag}")), Err(ReferenceError::Forged));
        assert_eq!(refs.verify("acme/job-42"), Err(ReferenceError::Malformed), "the old, unsigned form");
        assert_eq!(refs.verify("acme/job-42/AAAAAAAAAAAAAAAAAAAAAA"), Err(ReferenceError::Forged));
        let other = RecipientHasher::new(&vec![8u8; 32].into()).unwrap().references();
        assert_eq!(other.verify(&signed), Err(ReferenceError::Forged), "another platform's key");
    }

    #[test]
    fn return_tags_are_short_case_proof_and_unguessable() {
        let tag = ReturnTag::random();
        assert_eq!(tag.as_str().len(), 16);
        assert_ne!(tag, ReturnTag::random(), "drawn afresh each time");
        assert_eq!(ReturnTag::parse(tag.as_str()), Some(tag.clone()), "as stored");
        let local = tag.local_part();
        assert_eq!(ReturnTag::from_local_part(&local.to_ascii_uppercase()), Some(tag.clone()));
        for bad in ["b-short", "x-abcdefghijklmnop", "b-abcdefghijklmno1", "b-abcdefghijklmnopq", ""] {
            assert_eq!(ReturnTag::from_local_part(bad), None, "{bad}");
        }
    }

    #[test]
    fn round_trips_every_action() {
        let ring = Keyring::new(vec![key(1, 7)], 1).unwrap();
        let rr = RecipientHasher::new(&vec![5u8; 32].into()).unwrap().hash("jane@example.com");
        for action in [
            Action::Open,
            Action::Click { url: "https://acme.example/p?a=1&b=2#x".into() },
            Action::Unsubscribe { recipient: rr },
        ] {
            let c = claims(action);
            let t = ring.sign(&c).unwrap();
            assert!(t.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
            assert_eq!(ring.verify(&t).unwrap(), c);
        }
    }

    #[test]
    fn every_flipped_bit_is_rejected() {
        let ring = Keyring::new(vec![key(1, 7)], 1).unwrap();
        let t = ring.sign(&claims(Action::Click { url: "https://a.example/".into() })).unwrap();
        let raw = URL_SAFE_NO_PAD.decode(&t).unwrap();
        for i in 0..raw.len() {
            for bit in 0..8 {
                let mut m = raw.clone();
                m[i] ^= 1 << bit;
                let forged = URL_SAFE_NO_PAD.encode(&m);
                assert!(ring.verify(&forged).is_err(), "byte {i} bit {bit} verified");
            }
        }
    }

    /// A stable-toolchain fuzz pass (cargo-fuzz needs nightly): random
    /// strings at `verify`, and random bodies straight at the parser that
    /// sits behind the MAC, must be refused without a panic.
    #[test]
    fn random_tokens_and_bodies_never_panic() {
        let ring = Keyring::new(vec![key(1, 1)], 1).unwrap();
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_=+/.%";
        let valid = ring.sign(&claims(Action::Click { url: "https://x.example/".into() })).unwrap();
        for _ in 0..100_000 {
            let len = (next() % 300) as usize;
            let s: String =
                (0..len).map(|_| alphabet[(next() % alphabet.len() as u64) as usize] as char).collect();
            assert!(ring.verify(&s).is_err());
            let body: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            let _ = parse_body(&body);
            // Splices of a valid token with noise.
            let cut = (next() as usize) % valid.len();
            let spliced = format!("{}{}", &valid[..cut], &s[..s.len().min(8)]);
            if spliced != valid {
                assert!(ring.verify(&spliced).is_err(), "{spliced}");
            }
        }
    }

    #[test]
    fn truncation_and_garbage_are_rejected() {
        let ring = Keyring::new(vec![key(1, 7)], 1).unwrap();
        let t = ring.sign(&claims(Action::Open)).unwrap();
        for n in 0..t.len() {
            assert!(ring.verify(&t[..n]).is_err(), "prefix {n} verified");
        }
        assert_eq!(ring.verify("!!!"), Err(TokenError::Encoding));
        assert_eq!(ring.verify(&"A".repeat(MAX_TOKEN_CHARS + 1)), Err(TokenError::TooLong));
    }

    #[test]
    fn a_token_for_one_tenant_never_verifies_as_another() {
        let ring = Keyring::new(vec![key(1, 7)], 1).unwrap();
        let t = ring.sign(&claims(Action::Open)).unwrap();
        // Rewrite the tenant in the body, keeping the length, and keep the tag.
        let mut raw = URL_SAFE_NO_PAD.decode(&t).unwrap();
        raw[5..9].copy_from_slice(b"evil");
        assert_eq!(ring.verify(&URL_SAFE_NO_PAD.encode(&raw)), Err(TokenError::BadSignature));
        // And a token signed properly for another tenant carries that tenant.
        let mut other = claims(Action::Open);
        other.tenant_id = TenantId::parse("globex").unwrap();
        let t2 = ring.sign(&other).unwrap();
        assert_eq!(ring.verify(&t2).unwrap().tenant_id.as_str(), "globex");
    }

    #[test]
    fn keys_rotate_and_retire() {
        let old = Keyring::new(vec![key(1, 7)], 1).unwrap();
        let t_old = old.sign(&claims(Action::Open)).unwrap();
        // Rotation: key 2 signs, key 1 still verifies.
        let rotated = Keyring::new(vec![key(1, 7), key(2, 9)], 2).unwrap();
        assert!(rotated.verify(&t_old).is_ok());
        let t_new = rotated.sign(&claims(Action::Open)).unwrap();
        assert!(rotated.verify(&t_new).is_ok());
        // Retirement: key 1 removed, its tokens stop verifying.
        let retired = Keyring::new(vec![key(2, 9)], 2).unwrap();
        assert_eq!(retired.verify(&t_old), Err(TokenError::UnknownKey));
        assert!(retired.verify(&t_new).is_ok());
        // Same id, different secret: a bad signature, not a pass.
        let swapped = Keyring::new(vec![key(1, 8)], 1).unwrap();
        assert_eq!(swapped.verify(&t_old), Err(TokenError::BadSignature));
    }

    #[test]
    fn a_retired_key_keeps_only_unsubscribes_for_the_grace_and_clicks_may_expire() {
        let old = Keyring::new(vec![key(1, 7)], 1).unwrap();
        let sent = 1_790_000_000_u64;
        let unsub = old.sign(&claims(Action::Unsubscribe { recipient: RecipientRef([3; 16]) })).unwrap();
        let open = old.sign(&claims(Action::Open)).unwrap();
        let click = old.sign(&claims(Action::Click { url: "https://shop.example/".into() })).unwrap();
        let day = 86_400;
        let retired_at = sent + 10 * day;
        let ring = Keyring::new(vec![key(1, 7), key(2, 8)], 2)
            .unwrap()
            .retire(1, retired_at)
            .unwrap()
            .with_ageing(Ageing { unsubscribe_grace_secs: 60 * day, click_ttl_secs: Some(30 * day) });
        // Before the retirement, everything verifies.
        assert!(ring.verify_at(&open, retired_at - 1).is_ok());
        assert!(ring.verify_at(&click, retired_at - 1).is_ok());
        assert_eq!(ring.verify_at(&click, retired_at), Err(TokenError::Retired));
        // After: only the unsubscribe, and only within the grace.
        assert!(ring.verify_at(&unsub, retired_at + 59 * day).is_ok());
        assert_eq!(ring.verify_at(&unsub, retired_at + 60 * day), Err(TokenError::Retired));
        assert_eq!(ring.verify_at(&open, retired_at + 1), Err(TokenError::Retired));
        // A click by a live key expires on its own.
        let fresh = Keyring::new(vec![key(2, 8)], 2)
            .unwrap()
            .with_ageing(Ageing { unsubscribe_grace_secs: 0, click_ttl_secs: Some(30 * day) });
        let click2 = fresh.sign(&claims(Action::Click { url: "https://shop.example/".into() })).unwrap();
        assert!(fresh.verify_at(&click2, sent + 29 * day).is_ok());
        assert_eq!(fresh.verify_at(&click2, sent + 30 * day), Err(TokenError::Expired));
        assert!(
            fresh.verify_at(&fresh.sign(&claims(Action::Open)).unwrap(), sent + 3650 * day).is_ok(),
            "opens do not expire"
        );
        // The active key cannot be retired, nor an unknown one.
        assert_eq!(
            Keyring::new(vec![key(2, 8)], 2).unwrap().retire(2, 0).unwrap_err(),
            KeyringError::RetiredActive(2)
        );
        assert_eq!(
            Keyring::new(vec![key(2, 8)], 2).unwrap().retire(5, 0).unwrap_err(),
            KeyringError::RetiredMissing(5)
        );
    }

    #[test]
    fn raising_a_tenants_link_generation_revokes_its_opens_and_clicks_only() {
        let generations = std::sync::Arc::new(LinkGenerations::default());
        let ring = Keyring::new(vec![key(1, 7)], 1).unwrap().with_generations(generations.clone());
        let globex = |a| Claims { tenant_id: TenantId::parse("globex").unwrap(), ..claims(a) };
        let old_click = ring.sign(&claims(Action::Click { url: "https://shop.example/".into() })).unwrap();
        let old_unsub = ring.sign(&claims(Action::Unsubscribe { recipient: RecipientRef([1; 16]) })).unwrap();
        let other = ring.sign(&globex(Action::Open)).unwrap();
        generations.set_all([("acme".to_owned(), 1)].into());
        assert_eq!(ring.verify(&old_click), Err(TokenError::Revoked));
        assert!(ring.verify(&old_unsub).is_ok(), "an old unsubscribe still counts");
        assert!(ring.verify(&other).is_ok(), "another tenant's links are untouched");
        let new_click = ring.sign(&claims(Action::Click { url: "https://shop.example/".into() })).unwrap();
        assert_eq!(
            ring.verify(&new_click).unwrap(),
            claims(Action::Click { url: "https://shop.example/".into() })
        );
        // The generation is under the MAC: lowering it breaks the tag.
        let mut raw = URL_SAFE_NO_PAD.decode(&new_click).unwrap();
        assert_eq!((raw[0], raw[4], raw[5]), (VERSION_GENERATIONS, 0, 1));
        raw[5] = 2;
        assert_eq!(ring.verify(&URL_SAFE_NO_PAD.encode(&raw)), Err(TokenError::BadSignature));
        // A keyring that has not heard of the revocation yet still takes both.
        let stale = Keyring::new(vec![key(1, 7)], 1).unwrap();
        assert!(stale.verify(&old_click).is_ok() && stale.verify(&new_click).is_ok());
    }

    #[test]
    fn keyring_rejects_bad_configuration() {
        assert_eq!(Keyring::new(vec![], 1).unwrap_err(), KeyringError::Empty);
        assert_eq!(Keyring::new(vec![key(1, 1)], 2).unwrap_err(), KeyringError::ActiveMissing(2));
        assert_eq!(Keyring::new(vec![key(1, 1), key(1, 2)], 1).unwrap_err(), KeyringError::Duplicate(1));
        let short = SigningKey { id: 3, secret: vec![1u8; 8].into() };
        assert_eq!(Keyring::new(vec![short], 3).unwrap_err(), KeyringError::TooShort(3));
    }

    #[test]
    fn recipient_hashes_are_keyed_and_stable() {
        let a = RecipientHasher::new(&vec![5u8; 32].into()).unwrap();
        let b = RecipientHasher::new(&vec![6u8; 32].into()).unwrap();
        assert_eq!(a.hash("x@y.example"), a.hash("x@y.example"));
        assert_ne!(a.hash("x@y.example"), a.hash("z@y.example"));
        assert_ne!(a.hash("x@y.example"), b.hash("x@y.example"));
        assert_eq!(a.hash("x@y.example").to_hex().len(), 32);
        assert_eq!(
            RecipientHasher::new(&vec![1u8; 31].into()).unwrap_err(),
            KeyringError::RecipientKeyTooShort
        );
    }

    #[test]
    fn overlong_urls_are_refused_at_signing() {
        let ring = Keyring::new(vec![key(1, 7)], 1).unwrap();
        let c = claims(Action::Click { url: format!("https://a.example/{}", "x".repeat(MAX_URL_LEN)) });
        assert_eq!(ring.sign(&c), Err(TokenError::UrlTooLong));
    }
}
