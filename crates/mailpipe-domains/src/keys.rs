//! DKIM key pairs: made here (RSA-2048 with the `rsa` crate, Ed25519 with
//! ring), or brought along as PEM. Either way the result is the private key
//! as PKCS#8 DER, held as a secret, and the public key as the DNS record's
//! `p=` wants it: the SubjectPublicKeyInfo for RSA, the raw 32 bytes for
//! Ed25519 (RFC 8463), both base64.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use mailpipe_core::{DkimAlgorithm, Selector};
use ring::signature::{Ed25519KeyPair, KeyPair};
use rsa::pkcs1::DecodeRsaPrivateKey;
use rsa::pkcs8::{DecodePrivateKey, EncodePrivateKey, EncodePublicKey};
use rsa::traits::PublicKeyParts;
use rustls_pki_types::PrivateKeyDer;
use rustls_pki_types::pem::PemObject;
use secrecy::SecretSlice;

/// RSA keys are made, and accepted, at this size or more.
pub const RSA_BITS: usize = 2048;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("not a PEM private key: {0}")]
    NotPem(String),
    #[error("not an {0} key: {1}")]
    WrongKind(DkimAlgorithm, String),
    #[error("an RSA key of {0} bits is too short: receivers want {RSA_BITS} or more")]
    TooShort(usize),
    #[error("key generation failed: {0}")]
    Generate(String),
}

/// A key pair ready to store and publish.
pub struct KeyPairParts {
    pub algorithm: DkimAlgorithm,
    /// PKCS#8 DER. Secret: sealed before it is stored.
    pub private_pkcs8: SecretSlice<u8>,
    /// Base64, as in the DNS record's `p=`.
    pub public_b64: String,
}

/// Makes a new key pair.
pub fn generate(algorithm: DkimAlgorithm) -> Result<KeyPairParts, KeyError> {
    let gen_err = |e: &dyn std::fmt::Display| KeyError::Generate(e.to_string());
    match algorithm {
        DkimAlgorithm::RsaSha256 => {
            let key =
                rsa::RsaPrivateKey::new(&mut rsa::rand_core::OsRng, RSA_BITS).map_err(|e| gen_err(&e))?;
            rsa_parts(&key)
        }
        DkimAlgorithm::Ed25519Sha256 => {
            let rng = ring::rand::SystemRandom::new();
            let doc = Ed25519KeyPair::generate_pkcs8(&rng).map_err(|e| gen_err(&e))?;
            let pair = Ed25519KeyPair::from_pkcs8(doc.as_ref()).map_err(|e| gen_err(&e))?;
            Ok(KeyPairParts {
                algorithm,
                public_b64: STANDARD.encode(pair.public_key().as_ref()),
                private_pkcs8: doc.as_ref().to_vec().into(),
            })
        }
    }
}

/// A key pair from a PEM private key: PKCS#8 (either algorithm) or PKCS#1
/// (RSA).
pub fn from_pem(algorithm: DkimAlgorithm, pem: &[u8]) -> Result<KeyPairParts, KeyError> {
    let der = PrivateKeyDer::from_pem_slice(pem).map_err(|e| KeyError::NotPem(e.to_string()))?;
    let wrong = |e: &dyn std::fmt::Display| KeyError::WrongKind(algorithm, e.to_string());
    match (algorithm, der) {
        (DkimAlgorithm::RsaSha256, PrivateKeyDer::Pkcs8(p8)) => {
            rsa_parts(&rsa::RsaPrivateKey::from_pkcs8_der(p8.secret_pkcs8_der()).map_err(|e| wrong(&e))?)
        }
        (DkimAlgorithm::RsaSha256, PrivateKeyDer::Pkcs1(p1)) => {
            rsa_parts(&rsa::RsaPrivateKey::from_pkcs1_der(p1.secret_pkcs1_der()).map_err(|e| wrong(&e))?)
        }
        (DkimAlgorithm::Ed25519Sha256, PrivateKeyDer::Pkcs8(p8)) => {
            let der = p8.secret_pkcs8_der();
            let pair = Ed25519KeyPair::from_pkcs8_maybe_unchecked(der).map_err(|e| wrong(&e))?;
            Ok(KeyPairParts {
                algorithm,
                public_b64: STANDARD.encode(pair.public_key().as_ref()),
                private_pkcs8: der.to_vec().into(),
            })
        }
        (_, _) => Err(wrong(&"PKCS#8 expected (PKCS#1 is for RSA only)")),
    }
}

fn rsa_parts(key: &rsa::RsaPrivateKey) -> Result<KeyPairParts, KeyError> {
    let bits = key.size() * 8;
    if bits < RSA_BITS {
        return Err(KeyError::TooShort(bits));
    }
    let err = |e: &dyn std::fmt::Display| KeyError::Generate(e.to_string());
    let private = key.to_pkcs8_der().map_err(|e| err(&e))?;
    let public = key.to_public_key().to_public_key_der().map_err(|e| err(&e))?;
    Ok(KeyPairParts {
        algorithm: DkimAlgorithm::RsaSha256,
        private_pkcs8: private.as_bytes().to_vec().into(),
        public_b64: STANDARD.encode(public.as_bytes()),
    })
}

/// A new selector: `mp` and today's date, and four random hex digits so that
/// two rotations on one day differ (`mp20261130-a1b2`).
pub fn new_selector(today: time::Date) -> Selector {
    let mut r = [0u8; 2];
    let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut r);
    let s = format!(
        "mp{:04}{:02}{:02}-{:02x}{:02x}",
        today.year(),
        u8::from(today.month()),
        today.day(),
        r[0],
        r[1]
    );
    Selector::parse(&s).expect("mp, eight digits, '-' and four hex digits make one DNS label")
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::ExposeSecret;

    #[test]
    fn ed25519_keys_are_made_with_a_32_byte_public_key_and_sign() {
        let k = generate(DkimAlgorithm::Ed25519Sha256).unwrap();
        assert_eq!(STANDARD.decode(&k.public_b64).unwrap().len(), 32);
        let key = mailpipe_render::DkimKey::from_pkcs8_der(
            "a.example",
            "s1",
            DkimAlgorithm::Ed25519Sha256,
            k.private_pkcs8.expose_secret(),
        )
        .unwrap();
        assert!(key.sign(b"From: a@a.example\r\n\r\nx\r\n").unwrap().contains("a=ed25519-sha256"));
    }

    #[test]
    fn imported_keys_keep_their_public_half_and_bad_ones_say_why() {
        let fixtures = concat!(env!("CARGO_MANIFEST_DIR"), "/../mailpipe-render/tests/fixtures/");
        let read = |f: &str| std::fs::read(format!("{fixtures}{f}")).unwrap();
        let rsa = from_pem(DkimAlgorithm::RsaSha256, &read("rsa2048.pem")).unwrap();
        assert_eq!(rsa.public_b64, String::from_utf8(read("rsa2048.pub.b64")).unwrap().trim());
        let ed = from_pem(DkimAlgorithm::Ed25519Sha256, &read("ed25519.pem")).unwrap();
        assert_eq!(ed.public_b64, String::from_utf8(read("ed25519.pub.b64")).unwrap().trim());
        assert!(matches!(from_pem(DkimAlgorithm::RsaSha256, b"nope"), Err(KeyError::NotPem(_))));
        assert!(matches!(
            from_pem(DkimAlgorithm::Ed25519Sha256, &read("rsa2048.pem")),
            Err(KeyError::WrongKind(..))
        ));
    }

    #[test]
    fn selectors_carry_the_date_and_differ() {
        let d = time::macros::date!(2026 - 11 - 30);
        let a = new_selector(d);
        assert!(a.as_str().starts_with("mp20261130-"), "{a}");
        assert_eq!(a.as_str().len(), "mp20261130-a1b2".len());
        let distinct: std::collections::HashSet<_> = (0..8).map(|_| new_selector(d)).collect();
        assert!(distinct.len() > 1, "four random hex digits tell same-day rotations apart");
    }
}
