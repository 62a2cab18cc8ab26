//! The `mailpipe` binary's library half: the configuration, the wiring that
//! turns it into running services, and one module per subcommand.
//! `main.rs` only parses the command line. Tests drive these directly.

pub mod app;
pub mod commands;
pub mod config;
pub mod telemetry;

pub use config::{Config, ConfigErrors};
