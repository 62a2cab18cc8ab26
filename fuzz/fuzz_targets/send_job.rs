//! Any bytes at the send-job decoder: a job or a classified error, never a
//! panic; and a decoded job survives a round trip through its wire form.
#![no_main]
use libfuzzer_sys::fuzz_target;
use mailpipe_core::SendJob;

fuzz_target!(|data: &[u8]| {
    match SendJob::from_json(data) {
        Ok(job) => {
            let again = SendJob::try_from(job.to_wire()).expect("a valid job's wire form is valid");
            assert_eq!(again, job);
        }
        Err(e) => {
            let _ = e.reason();
        }
    }
});
