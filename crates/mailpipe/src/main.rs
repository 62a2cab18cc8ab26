//! `mailpipe`: parses the command line, loads the configuration, starts
//! tracing once, and hands the command to `mailpipe::commands`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use mailpipe::commands::Command;
use mailpipe::config::Config;
use mailpipe::{ConfigErrors, telemetry};

// mimalloc: the tracker spends a tenth of its time in malloc and free under
// load, and the worker allocates per message; see docs/benchmarks.md.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mailpipe: send marketing and transactional email for many tenants, and
/// track opens, clicks and unsubscribes.
#[derive(Parser)]
#[command(version, about, long_about = None)]
struct Cli {
    /// A TOML file layered over the built-in defaults (config/default.toml).
    /// Environment variables MAILPIPE__SECTION__KEY override both.
    #[arg(long, short, global = true, value_name = "FILE", env = "MAILPIPE_CONFIG")]
    config: Option<PathBuf>,

    #[command(subcommand)]
    command: Command,
}

fn main() -> ExitCode {
    // A render sandbox the worker started (mailpipe_render::sandbox): no
    // configuration, no runtime, no tracing; its pipes are its whole world.
    if std::env::args_os().nth(1).is_some_and(|a| a == mailpipe_render::sandbox::SUBCOMMAND) {
        return match mailpipe_render::sandbox::serve() {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("render sandbox: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let cli = Cli::parse();
    let cfg = match Config::load(cli.config.as_deref(), std::env::vars()) {
        Ok(c) => c,
        Err(e) => {
            eprint!("{e}");
            return ExitCode::from(2);
        }
    };
    telemetry::init_tracing(&cfg.log, cli.command.owns_terminal());
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(cli.command.run(&cfg)) {
        Ok(code) => code,
        Err(e) => {
            if let Some(c) = e.downcast_ref::<ConfigErrors>() {
                eprint!("{c}");
                return ExitCode::from(2);
            }
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
