//! DKIM signing with mail-auth: RSA-SHA256 and Ed25519-SHA256, one key
//! per domain and selector.

use mail_auth::common::crypto::{Ed25519Key, RsaKey, Sha256};
use mail_auth::common::headers::HeaderWriter;
use mail_auth::dkim::{Canonicalization, DkimSigner, Done};
use rustls_pki_types::PrivateKeyDer;
use rustls_pki_types::pem::PemObject;

/// The headers a signature covers. A header listed once more than the
/// message has it ("over-signed") signs its absence too: nobody can add a
/// second From, To, Subject, Date, Message-ID or List-Unsubscribe above
/// the signed one (which a client may show instead) without breaking the
/// signature. Listing a header the message lacks is likewise deliberate:
/// it stops anyone adding one later (a Reply-To, a Cc). mail-auth signs
/// every instance present of a listed header and lists a repeat it cannot
/// find as absent, which is exactly over-signing.
pub const SIGNED_HEADERS: [&str; 20] = [
    "From",
    "From",
    "To",
    "To",
    "Subject",
    "Subject",
    "Date",
    "Date",
    "Message-ID",
    "Message-ID",
    "Reply-To",
    "Cc",
    "MIME-Version",
    "Content-Type",
    "List-Unsubscribe",
    "List-Unsubscribe",
    "List-Unsubscribe-Post",
    "List-Unsubscribe-Post",
    "Feedback-ID",
    "X-Mailpipe-Ref",
];

pub use mailpipe_core::DkimAlgorithm;

#[derive(Debug, thiserror::Error)]
pub enum DkimError {
    #[error("DKIM key for {domain}: {detail}")]
    BadKey { domain: String, detail: String },
    #[error("signing failed: {0}")]
    Sign(String),
}

enum Signer {
    Rsa(DkimSigner<RsaKey<Sha256>, Done>),
    Ed25519(DkimSigner<Ed25519Key, Done>),
}

/// One signing key: it signs as one domain (`d=`) with one selector (`s=`).
/// Which key signs which tenant's mail is decided by whoever holds them
/// (the worker's sender registry), never here.
pub struct DkimKey {
    domain: String,
    selector: String,
    signer: Signer,
}

impl std::fmt::Debug for DkimKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DkimKey").field("domain", &self.domain).field("selector", &self.selector).finish()
    }
}

impl DkimKey {
    /// A key from its PKCS#8 DER (either algorithm).
    pub fn from_pkcs8_der(
        domain: &str,
        selector: &str,
        alg: DkimAlgorithm,
        der: &[u8],
    ) -> Result<Self, DkimError> {
        let bad = |detail: String| DkimError::BadKey { domain: domain.to_owned(), detail };
        let domain = domain.to_ascii_lowercase();
        let signer = match alg {
            DkimAlgorithm::RsaSha256 => {
                let der = PrivateKeyDer::Pkcs8(der.to_vec().into());
                let key = RsaKey::<Sha256>::from_key_der(der).map_err(|e| bad(e.to_string()))?;
                Signer::Rsa(finish(
                    DkimSigner::from_key(key)
                        .domain(domain.clone())
                        .selector(selector)
                        .headers(SIGNED_HEADERS),
                ))
            }
            DkimAlgorithm::Ed25519Sha256 => {
                let key = Ed25519Key::from_pkcs8_maybe_unchecked_der(der).map_err(|e| bad(e.to_string()))?;
                Signer::Ed25519(finish(
                    DkimSigner::from_key(key)
                        .domain(domain.clone())
                        .selector(selector)
                        .headers(SIGNED_HEADERS),
                ))
            }
        };
        Ok(Self { domain, selector: selector.to_owned(), signer })
    }

    /// A key from PEM: PKCS#8 (either algorithm) or PKCS#1 (RSA).
    pub fn from_pem(domain: &str, selector: &str, alg: DkimAlgorithm, pem: &[u8]) -> Result<Self, DkimError> {
        let bad = |detail: String| DkimError::BadKey { domain: domain.to_owned(), detail };
        match PrivateKeyDer::from_pem_slice(pem).map_err(|e| bad(format!("not a PEM private key: {e}")))? {
            PrivateKeyDer::Pkcs8(p8) => Self::from_pkcs8_der(domain, selector, alg, p8.secret_pkcs8_der()),
            der @ PrivateKeyDer::Pkcs1(_) if alg == DkimAlgorithm::RsaSha256 => {
                let key = RsaKey::<Sha256>::from_key_der(der).map_err(|e| bad(e.to_string()))?;
                let domain = domain.to_ascii_lowercase();
                let signer = Signer::Rsa(finish(
                    DkimSigner::from_key(key)
                        .domain(domain.clone())
                        .selector(selector)
                        .headers(SIGNED_HEADERS),
                ));
                Ok(Self { domain, selector: selector.to_owned(), signer })
            }
            _ => Err(bad(format!("{alg} keys must be PKCS#8"))),
        }
    }

    /// The `d=` this key signs as.
    pub fn domain(&self) -> &str {
        &self.domain
    }

    pub fn selector(&self) -> &str {
        &self.selector
    }

    /// The `DKIM-Signature` header (with its CRLF) for `message`.
    pub fn sign(&self, message: &[u8]) -> Result<String, DkimError> {
        let sig = match &self.signer {
            Signer::Rsa(s) => s.sign(message),
            Signer::Ed25519(s) => s.sign(message),
        }
        .map_err(|e| DkimError::Sign(e.to_string()))?;
        Ok(sig.to_header())
    }
}

fn finish<T: mail_auth::common::crypto::SigningKey>(s: DkimSigner<T, Done>) -> DkimSigner<T, Done> {
    // relaxed/relaxed survives the header re-folding and trailing-space
    // changes that relays make; simple/simple does not.
    s.header_canonicalization(Canonicalization::Relaxed).body_canonicalization(Canonicalization::Relaxed)
}
