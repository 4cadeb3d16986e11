//! The `sapsan` command: upload journals (`sync`), show an experiment's runs as a tree (`runs`),
//! start or find the local MLflow UI (`ui`), and make a new project (`new`).
//!
//! `MLFLOW_TRACKING_URI` (or `--tracking-uri`), the credential variables
//! (`MLFLOW_TRACKING_USERNAME`/`PASSWORD`, `MLFLOW_TRACKING_TOKEN`), the TLS ones
//! (`MLFLOW_TRACKING_INSECURE_TLS`, `MLFLOW_TRACKING_SERVER_CERT_PATH`) and the request timeout
//! and retries apply to every subcommand that talks to a server.
//!
//! One concern a file: `cli.rs` the arguments, `env.rs` the server settings, `error.rs` the
//! error type, then one file per subcommand.
use std::process::ExitCode;

use clap::Parser;

mod cli;
mod env;
mod error;
mod new;
mod runs;
mod sync;
mod ui;

use cli::{Cli, Command};

fn main() -> ExitCode {
    // `--help`, `--version` and usage errors end here (exit 0 or 2) with clap's message.
    let cli = Cli::parse();
    sapsan::diag::init_logger();
    let result = match &cli.command {
        Command::Sync(args) => sync::run(args),
        Command::Runs(args) => runs::run(args),
        Command::Ui(args) => ui::run(args),
        Command::New(args) => new::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sapsan {}: {e}", cli.command.name());
            ExitCode::FAILURE
        }
    }
}
