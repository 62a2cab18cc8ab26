//! mailpipe's integration tests, one binary, a module per area, against the
//! real services (`scripts/services.sh up`). Every test starts from
//! [`mailpipe_tests::TestEnv`] or the service it needs from the harness.

#![allow(clippy::unwrap_used)] // Tests fail loudly on purpose.

mod analytics;
mod bounces;
mod breaker;
mod browser;
mod campaign;
mod crash;
mod demo;
mod domains;
mod duplicates;
mod erasure;
mod idn;
mod kafka_auth;
mod least_privilege;
mod ledger_batch;
mod metrics;
mod partitions;
mod pipeline;
mod policy;
mod relay;
mod replies;
mod retries;
mod send_api;
mod send_outage;
mod single_node;
mod store;
mod suppression_filter;
mod templates;
mod throttle;
mod tracker;
mod tracker_crash;
mod tracker_outage;
mod unsubscribe;
mod warmup;
mod webhooks;
