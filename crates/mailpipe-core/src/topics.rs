//! Topic names of wire contract v1. See docs/schemas.md.

/// Send jobs, keyed by the recipient's domain.
pub const SEND: &str = "mailpipe.send.v1";
/// Outcome, engagement and unsubscribe events, keyed by tenant id.
pub const EVENTS: &str = "mailpipe.events.v1";
/// Send jobs the worker could not accept, with the reason in headers.
pub const SEND_DLQ: &str = "mailpipe.send.dlq.v1";

/// Every topic the services need, for set-up scripts and tests.
pub const ALL: [&str; 3] = [SEND, EVENTS, SEND_DLQ];
