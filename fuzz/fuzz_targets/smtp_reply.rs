//! Any server reply: lettre's parser, our enhanced-code split, and the
//! classifier in every phase. Never a panic.
#![no_main]
use std::str::FromStr;

use libfuzzer_sys::fuzz_target;
use mailpipe_smtp::{DeliveryError, Phase, Reply, classify};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let _ = lettre::transport::smtp::response::Response::from_str(text);
    let code = data.first().map_or(0, |b| u16::from(*b) * 4);
    let reply = Reply::new(code, text);
    for phase in [Phase::Connect, Phase::Greeting, Phase::Tls, Phase::Auth, Phase::MailFrom, Phase::RcptTo, Phase::Data, Phase::Message] {
        let _ = classify(&Err(DeliveryError::Rejected { phase, reply: reply.clone() }));
    }
    let _ = classify(&Ok(reply));
});
