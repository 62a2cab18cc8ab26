//! Sealing DKIM private keys at rest: AES-256-GCM under a key-encryption
//! key (KEK) from the configuration. The sealed form names the KEK that
//! sealed it, so KEKs rotate: every configured KEK opens, only the active
//! one seals, and [`Sealer::reseal`] moves a key to the active KEK.
//!
//! ```text
//! sealed = 0x01 version | kek id u16be | nonce (12 bytes) | ciphertext | tag (16)
//! aad    = "mailpipe/dkim/v1/" domain "/" selector
//! kek    = SHA-256("mailpipe/kek/v1/" || configured secret)
//! ```
//!
//! The associated data binds a sealed key to its domain and selector: a row
//! copied to another domain does not open.

use std::collections::BTreeMap;

use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};
use secrecy::{ExposeSecret, SecretSlice};
use sha2::{Digest, Sha256};

const VERSION: u8 = 1;
const HEADER: usize = 1 + 2 + NONCE_LEN;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    #[error(
        "no key-encryption key is configured (set MAILPIPE__DOMAINS__KEYS__1 to a base64 secret of 32+ bytes)"
    )]
    NoKeys,
    #[error("domains.active_key: key {0} is not in domains.keys")]
    NoActiveKey(u16),
    #[error("a sealed DKIM key is malformed")]
    Malformed,
    #[error("a DKIM key is sealed with key-encryption key {0}, which is not configured")]
    UnknownKey(u16),
    #[error("a sealed DKIM key does not open: wrong key-encryption key, or the row was altered or moved")]
    Open,
    #[error("no randomness for a nonce")]
    Random,
}

/// Seals and opens DKIM private keys.
pub struct Sealer {
    keys: BTreeMap<u16, LessSafeKey>,
    active: u16,
    rng: SystemRandom,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sealer")
            .field("keys", &self.keys.keys().collect::<Vec<_>>())
            .field("active", &self.active)
            .finish()
    }
}

/// What binds a sealed key to its row.
pub fn aad(domain: &str, selector: &str) -> Vec<u8> {
    format!("mailpipe/dkim/v1/{domain}/{selector}").into_bytes()
}

impl Sealer {
    /// `secrets` are the configured KEKs (decoded, 32+ bytes each).
    pub fn new(secrets: &[(u16, SecretSlice<u8>)], active: u16) -> Result<Self, SealError> {
        if secrets.is_empty() {
            return Err(SealError::NoKeys);
        }
        let mut keys = BTreeMap::new();
        for (id, secret) in secrets {
            let mut h = Sha256::new();
            h.update(b"mailpipe/kek/v1/");
            h.update(secret.expose_secret());
            let derived = h.finalize();
            // A 32-byte key always makes an AES-256 key.
            let unbound = UnboundKey::new(&AES_256_GCM, &derived).map_err(|_| SealError::Malformed)?;
            keys.insert(*id, LessSafeKey::new(unbound));
        }
        if !keys.contains_key(&active) {
            return Err(SealError::NoActiveKey(active));
        }
        Ok(Self { keys, active, rng: SystemRandom::new() })
    }

    /// Seals `plaintext` under the active KEK.
    pub fn seal(&self, plaintext: &[u8], aad: &[u8]) -> Result<Vec<u8>, SealError> {
        let mut nonce = [0u8; NONCE_LEN];
        self.rng.fill(&mut nonce).map_err(|_| SealError::Random)?;
        let mut out = Vec::with_capacity(HEADER + plaintext.len() + AES_256_GCM.tag_len());
        out.push(VERSION);
        out.extend_from_slice(&self.active.to_be_bytes());
        out.extend_from_slice(&nonce);
        let mut body = plaintext.to_vec();
        let key = &self.keys[&self.active];
        key.seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::from(aad), &mut body)
            .map_err(|_| SealError::Random)?;
        out.extend_from_slice(&body);
        Ok(out)
    }

    /// Opens what [`Sealer::seal`] made, with the KEK it names.
    pub fn open(&self, sealed: &[u8], aad: &[u8]) -> Result<SecretSlice<u8>, SealError> {
        let (id, nonce, body) = split(sealed)?;
        let key = self.keys.get(&id).ok_or(SealError::UnknownKey(id))?;
        let mut body = body.to_vec();
        let plain = key
            .open_in_place(Nonce::assume_unique_for_key(nonce), Aad::from(aad), &mut body)
            .map_err(|_| SealError::Open)?;
        let plain = plain.to_vec();
        body.fill(0);
        Ok(plain.into())
    }

    /// The same key sealed under the active KEK, or `None` if it is already.
    pub fn reseal(&self, sealed: &[u8], aad: &[u8]) -> Result<Option<Vec<u8>>, SealError> {
        let (id, _, _) = split(sealed)?;
        if id == self.active {
            return Ok(None);
        }
        let plain = self.open(sealed, aad)?;
        self.seal(plain.expose_secret(), aad).map(Some)
    }
}

fn split(sealed: &[u8]) -> Result<(u16, [u8; NONCE_LEN], &[u8]), SealError> {
    if sealed.len() < HEADER + AES_256_GCM.tag_len() || sealed[0] != VERSION {
        return Err(SealError::Malformed);
    }
    let id = u16::from_be_bytes([sealed[1], sealed[2]]);
    let mut nonce = [0u8; NONCE_LEN];
    nonce.copy_from_slice(&sealed[3..HEADER]);
    Ok((id, nonce, &sealed[HEADER..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sealer(ids: &[u16], active: u16) -> Sealer {
        let secrets: Vec<(u16, SecretSlice<u8>)> =
            ids.iter().map(|i| (*i, vec![*i as u8; 32].into())).collect();
        Sealer::new(&secrets, active).unwrap()
    }

    #[test]
    fn a_sealed_key_opens_only_with_its_kek_and_its_own_row() {
        let s = sealer(&[1], 1);
        let aad = aad("acme.example", "s1");
        let sealed = s.seal(b"private key bytes", &aad).unwrap();
        assert!(!sealed.windows(7).any(|w| w == b"private"), "no plaintext in the sealed form");
        assert_eq!(s.open(&sealed, &aad).unwrap().expose_secret(), b"private key bytes");
        assert_eq!(s.open(&sealed, &super::aad("evil.example", "s1")).unwrap_err(), SealError::Open);
        let mut flipped = sealed.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 1;
        assert_eq!(s.open(&flipped, &aad).unwrap_err(), SealError::Open);
        assert_eq!(sealer(&[2], 2).open(&sealed, &aad).unwrap_err(), SealError::UnknownKey(1));
        assert_eq!(s.open(b"short", &aad).unwrap_err(), SealError::Malformed);
    }

    #[test]
    fn keks_rotate_every_kek_opens_and_reseal_moves_to_the_active_one() {
        let aad = aad("acme.example", "s1");
        let old = sealer(&[1], 1).seal(b"k", &aad).unwrap();
        let both = sealer(&[1, 2], 2);
        assert_eq!(both.open(&old, &aad).unwrap().expose_secret(), b"k");
        let moved = both.reseal(&old, &aad).unwrap().unwrap();
        assert_eq!(u16::from_be_bytes([moved[1], moved[2]]), 2);
        assert_eq!(both.reseal(&moved, &aad).unwrap(), None);
        assert_eq!(sealer(&[2], 2).open(&moved, &aad).unwrap().expose_secret(), b"k");
        assert_eq!(Sealer::new(&[], 1).unwrap_err(), SealError::NoKeys);
        assert!(matches!(Sealer::new(&[(1, vec![0u8; 32].into())], 3), Err(SealError::NoActiveKey(3))));
    }
}
