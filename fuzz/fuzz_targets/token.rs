//! Any string at the token verifier: refused or accepted, never a panic;
//! and whatever verifies must re-sign to the same claims.
#![no_main]
use libfuzzer_sys::fuzz_target;
use mailpipe_token::{Keyring, SigningKey};

fuzz_target!(|data: &[u8]| {
    let ring = Keyring::new(vec![SigningKey { id: 1, secret: vec![1u8; 32].into() }], 1).expect("keyring");
    if let Ok(s) = std::str::from_utf8(data)
        && let Ok(claims) = ring.verify(s)
    {
        let again = ring.sign(&claims).expect("re-sign");
        assert_eq!(ring.verify(&again).expect("verify re-signed"), claims);
    }
});
