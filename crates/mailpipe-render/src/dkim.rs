//! DKIM signing with mail-auth: RSA-SHA256 and Ed25519-SHA256, keys per
//! sending domain, and a default key per tenant.

use std::collections::HashMap;

use mail_auth::common::crypto::{Ed25519Key, RsaKey, Sha256};
use mail_auth::common::headers::HeaderWriter;
use mail_auth::dkim::{Canonicalization, DkimSigner, Done};
use rustls_pki_types::PrivateKeyDer;
use rustls_pki_types::pem::PemObject;

/// The headers a signature covers. Listing a header the message lacks is
/// deliberate: it stops anyone adding one later without breaking the signature.
pub const SIGNED_HEADERS: [&str; 11] = [
    "From",
    "To",
    "Subject",
    "Date",
    "Message-ID",
    "MIME-Version",
    "Content-Type",
    "List-Unsubscribe",
    "List-Unsubscribe-Post",
    "Feedback-ID",
    "X-Mailpipe-Ref",
];

/// A signing algorithm, spelled in configuration as in the DKIM `a=` tag.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
pub enum DkimAlgorithm {
    #[serde(rename = "rsa-sha256")]
    RsaSha256,
    #[serde(rename = "ed25519-sha256")]
    Ed25519Sha256,
}

#[derive(Debug, thiserror::Error)]
pub enum DkimError {
    #[error("DKIM key for {domain}: {detail}")]
    BadKey { domain: String, detail: String },
    #[error("tenant {tenant}: no DKIM key for domain {domain}")]
    UnknownDomain { tenant: String, domain: String },
    #[error("signing failed: {0}")]
    Sign(String),
}

enum Signer {
    Rsa(DkimSigner<RsaKey<Sha256>, Done>),
    Ed25519(DkimSigner<Ed25519Key, Done>),
}

/// All signing keys of a deployment.
#[derive(Default)]
pub struct DkimKeys {
    by_domain: HashMap<String, Signer>,
    tenant_default: HashMap<String, String>,
}

impl std::fmt::Debug for DkimKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DkimKeys").field("domains", &self.by_domain.keys().collect::<Vec<_>>()).finish()
    }
}

impl DkimKeys {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn is_empty(&self) -> bool {
        self.by_domain.is_empty()
    }

    /// Adds the key that signs mail from `domain` (d=) with `selector` (s=).
    /// `pem` is PKCS#8 (either algorithm) or PKCS#1 (RSA).
    pub fn add(
        &mut self,
        domain: &str,
        selector: &str,
        alg: DkimAlgorithm,
        pem: &[u8],
    ) -> Result<(), DkimError> {
        let bad = |detail: String| DkimError::BadKey { domain: domain.to_owned(), detail };
        let der =
            PrivateKeyDer::from_pem_slice(pem).map_err(|e| bad(format!("not a PEM private key: {e}")))?;
        let domain = domain.to_ascii_lowercase();
        let signer = match alg {
            DkimAlgorithm::RsaSha256 => {
                let key = RsaKey::<Sha256>::from_key_der(der).map_err(|e| bad(e.to_string()))?;
                Signer::Rsa(finish(
                    DkimSigner::from_key(key)
                        .domain(domain.clone())
                        .selector(selector)
                        .headers(SIGNED_HEADERS),
                ))
            }
            DkimAlgorithm::Ed25519Sha256 => {
                let PrivateKeyDer::Pkcs8(p8) = der else {
                    return Err(bad("Ed25519 keys must be PKCS#8".into()));
                };
                let key = Ed25519Key::from_pkcs8_maybe_unchecked_der(p8.secret_pkcs8_der())
                    .map_err(|e| bad(e.to_string()))?;
                Signer::Ed25519(finish(
                    DkimSigner::from_key(key)
                        .domain(domain.clone())
                        .selector(selector)
                        .headers(SIGNED_HEADERS),
                ))
            }
        };
        self.by_domain.insert(domain, signer);
        Ok(())
    }

    /// Makes `domain`'s key the one for a tenant's mail from domains that
    /// have no key of their own.
    pub fn set_tenant_default(&mut self, tenant: &str, domain: &str) -> Result<(), DkimError> {
        let domain = domain.to_ascii_lowercase();
        if !self.by_domain.contains_key(&domain) {
            return Err(DkimError::UnknownDomain { tenant: tenant.to_owned(), domain });
        }
        self.tenant_default.insert(tenant.to_owned(), domain);
        Ok(())
    }

    /// The `DKIM-Signature` header (with its CRLF) for `message`, or `None`
    /// when no key covers this sender.
    pub fn sign(&self, tenant: &str, from_domain: &str, message: &[u8]) -> Result<Option<String>, DkimError> {
        let signer = self
            .by_domain
            .get(from_domain)
            .or_else(|| self.tenant_default.get(tenant).and_then(|d| self.by_domain.get(d)));
        let sig = match signer {
            None => return Ok(None),
            Some(Signer::Rsa(s)) => s.sign(message),
            Some(Signer::Ed25519(s)) => s.sign(message),
        }
        .map_err(|e| DkimError::Sign(e.to_string()))?;
        Ok(Some(sig.to_header()))
    }
}

fn finish<T: mail_auth::common::crypto::SigningKey>(s: DkimSigner<T, Done>) -> DkimSigner<T, Done> {
    // relaxed/relaxed survives the header re-folding and trailing-space
    // changes that relays make; simple/simple does not.
    s.header_canonicalization(Canonicalization::Relaxed).body_canonicalization(Canonicalization::Relaxed)
}
