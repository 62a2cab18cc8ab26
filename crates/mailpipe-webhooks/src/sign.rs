//! Signatures as the Standard Webhooks convention makes them
//! (<https://www.standardwebhooks.com>): three headers, `webhook-id` (the
//! message id, stable across retries), `webhook-timestamp` (unix seconds of
//! this attempt) and `webhook-signature`, a space-separated list of
//! `v1,<base64 HMAC-SHA256(secret, "{id}.{timestamp}.{body}")>`, one per
//! secret in force (two while a rotation overlaps). Secrets are 32 random
//! bytes, shown to the tenant once as `whsec_<base64>`.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use secrecy::{ExposeSecret, SecretSlice};
use sha2::Sha256;

/// The prefix of a secret as a tenant sees it.
pub const SECRET_PREFIX: &str = "whsec_";

/// An endpoint's signing secret.
pub struct Secret(SecretSlice<u8>);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

impl Secret {
    /// 32 bytes from the operating system's generator.
    pub fn generate() -> Self {
        let mut bytes = vec![0u8; 32];
        rand::Rng::fill(&mut rand::rng(), bytes.as_mut_slice());
        Self(bytes.into())
    }

    pub fn from_bytes(bytes: SecretSlice<u8>) -> Self {
        Self(bytes)
    }

    pub fn bytes(&self) -> &[u8] {
        self.0.expose_secret()
    }

    /// `whsec_<base64>`: what the tenant stores to verify with.
    pub fn to_whsec(&self) -> String {
        format!("{SECRET_PREFIX}{}", STANDARD.encode(self.bytes()))
    }

    /// A `whsec_...` secret back (for receivers and tests).
    pub fn parse_whsec(s: &str) -> Option<Self> {
        let b = STANDARD.decode(s.strip_prefix(SECRET_PREFIX)?).ok()?;
        (b.len() >= 24).then(|| Self(b.into()))
    }

    /// `v1,<base64>` for one message.
    pub fn sign(&self, id: &str, timestamp: i64, body: &[u8]) -> String {
        format!("v1,{}", STANDARD.encode(self.mac(id, timestamp, body)))
    }

    fn mac(&self, id: &str, timestamp: i64, body: &[u8]) -> Vec<u8> {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(self.bytes()).expect("HMAC takes any key length");
        mac.update(id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        mac.finalize().into_bytes().to_vec()
    }

    /// Whether `header` (a `webhook-signature` value) holds this secret's
    /// signature of the message; compared in constant time. What a
    /// receiver does, besides refusing a timestamp far from its clock.
    pub fn verifies(&self, header: &str, id: &str, timestamp: i64, body: &[u8]) -> bool {
        let want = self.mac(id, timestamp, body);
        header.split(' ').filter_map(|s| s.strip_prefix("v1,")).any(|sig| {
            STANDARD
                .decode(sig)
                .is_ok_and(|got| subtle::ConstantTimeEq::ct_eq(got.as_slice(), want.as_slice()).into())
        })
    }
}

/// The `webhook-signature` value under every secret in `secrets`.
pub fn signature_header(secrets: &[Secret], id: &str, timestamp: i64, body: &[u8]) -> String {
    secrets.iter().map(|s| s.sign(id, timestamp, body)).collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_the_standard_webhooks_reference_vector() {
        // The test vector of the Standard Webhooks reference libraries.
        let secret = Secret::parse_whsec("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let body = br#"{"test": 2432232314}"#;
        let sig = secret.sign("msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body);
        assert_eq!(sig, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
        assert!(secret.verifies(
            &format!("v1,bm90IGl0 {sig}"),
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1614265330,
            body
        ));
        assert!(!secret.verifies(&sig, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265331, body));
        assert!(!secret.verifies(&sig, "msg_other", 1614265330, body));
    }

    #[test]
    fn secrets_round_trip_and_never_show_in_debug() {
        let s = Secret::generate();
        let w = s.to_whsec();
        assert!(w.starts_with("whsec_"));
        assert_eq!(Secret::parse_whsec(&w).unwrap().bytes(), s.bytes());
        assert_eq!(format!("{s:?}"), "Secret(..)");
        assert!(Secret::parse_whsec("whsec_c2hvcnQ=").is_none(), "too short");
        assert!(Secret::parse_whsec("nope").is_none());
    }
}
