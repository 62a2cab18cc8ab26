//! Any HTML at link rewriting, the pixel, and the text derivation.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(html) = std::str::from_utf8(data) {
        mailpipe_render::fuzzing::rewrite_everything(html);
    }
});
