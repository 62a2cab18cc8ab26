//! The `mailpipe` binary's library half: configuration and the wiring that
//! turns it into running services. `main.rs` only parses the command line.
//! Tests drive these functions directly.

pub mod analytics;
pub mod app;
pub mod config;
pub mod demo;
pub mod telemetry;

pub use config::{Config, ConfigErrors};
