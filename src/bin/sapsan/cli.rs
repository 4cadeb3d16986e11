//! The command line: subcommands and their arguments (clap derive); `--help` on each.
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// Track machine-learned turbulence models in MLflow: upload journals, browse runs, open the UI,
/// start a project.
#[derive(Debug, Parser)]
#[command(name = "sapsan", version, propagate_version = true)]
#[command(
    after_help = "sync, runs and ui find the MLflow server in --tracking-uri or \
    MLFLOW_TRACKING_URI; \
    credentials from MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD, or \
    MLFLOW_TRACKING_TOKEN; TLS from MLFLOW_TRACKING_INSECURE_TLS or \
    MLFLOW_TRACKING_SERVER_CERT_PATH; timeouts from MLFLOW_HTTP_REQUEST_TIMEOUT and \
    MLFLOW_HTTP_REQUEST_MAX_RETRIES."
)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Where the MLflow server is, for the subcommands that talk to one.
#[derive(Debug, Args)]
pub struct Server {
    /// The MLflow server (http(s)://host:port); default: MLFLOW_TRACKING_URI.
    #[arg(long, value_name = "URI")]
    pub tracking_uri: Option<String>,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Upload journals left on disk (server away at the end of a program, offline mode) to an
    /// MLflow server. Running it twice changes nothing on the server.
    Sync(SyncArgs),
    /// Show an experiment's runs as a tree: each train run with its evaluate runs under it,
    /// with status, duration and key metrics.
    Runs(RunsArgs),
    /// Start a local MLflow server (or find the one already there) and print the UI's address.
    Ui(UiArgs),
    /// Make a new project: a Cargo.toml depending on sapsan, a config with
    /// #[derive(ModelConfig)], a #[tracked] train/evaluate pair on candle, a README.
    New(NewArgs),
}

impl Command {
    /// The subcommand's name, for messages.
    pub fn name(&self) -> &'static str {
        match self {
            Command::Sync(_) => "sync",
            Command::Runs(_) => "runs",
            Command::Ui(_) => "ui",
            Command::New(_) => "new",
        }
    }
}

/// `sapsan sync`.
#[derive(Debug, Args)]
#[command(
    after_help = "Exits non-zero when the server refused a record for good or a journal \
    line was damaged (each is named on stderr; everything else is delivered). A journal \
    delivered completely gets a synced.json and is skipped by later syncs to the same server \
    while unchanged (--resend sends it again); a sync cut short (killed, server gone) resumes \
    when run again."
)]
pub struct SyncArgs {
    /// A journal directory (holding journal.jsonl), or a root holding several (such as
    /// .sapsan-journal).
    #[arg(value_name = "JOURNAL_DIR")]
    pub dir: PathBuf,
    /// The server.
    #[command(flatten)]
    pub server: Server,
    /// End the runs a journal leaves open KILLED in any case (a journal copied from another
    /// machine). Without it they are ended only when their program ran here and is gone.
    #[arg(long)]
    pub end_open: bool,
    /// Say what would be sent (runs, counts of params, metrics, tags and artifacts, statuses)
    /// and send nothing; needs no server.
    #[arg(long)]
    pub dry_run: bool,
    /// Journals uploaded at once (each journal's records in order; one line per journal as it
    /// finishes).
    #[arg(long, short = 'j', value_name = "N", default_value_t = sapsan::tracking::upload::DEFAULT_SYNC_JOBS,
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=256))]
    pub jobs: usize,
    /// Send journals again even when their synced.json says this server has them (a server whose
    /// store was restored from an older backup); nothing lands twice.
    #[arg(long)]
    pub resend: bool,
}

/// When to colour the output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ColorWhen {
    /// On a terminal, unless NO_COLOR is set.
    Auto,
    /// Always.
    Always,
    /// Never.
    Never,
}

/// `sapsan runs`.
#[derive(Debug, Args)]
#[command(
    after_help = "Without --tracking-uri or MLFLOW_TRACKING_URI the runs are read from the \
    seed's http://localhost:5000, as a program's backend would log them there."
)]
pub struct RunsArgs {
    /// The server; without one, the seed's http://localhost:5000 (as a program's backend).
    #[command(flatten)]
    pub server: Server,
    /// The experiment; default: MLFLOW_EXPERIMENT_NAME, else "experiment" (as the backend).
    #[arg(long, short, value_name = "NAME")]
    pub experiment: Option<String>,
    /// Show the newest N top-level (train) runs, each with all its nested runs; 0: all.
    #[arg(long, short = 'n', value_name = "N", default_value_t = 20)]
    pub limit: usize,
    /// Colour the output.
    #[arg(long, value_enum, value_name = "WHEN", default_value_t = ColorWhen::Auto)]
    pub color: ColorWhen,
}

/// `sapsan ui`.
#[derive(Debug, Args)]
#[command(
    after_help = "A server this command starts keeps running after it ends (as one a \
    program starts does); the command prints how to stop it. With MLFLOW_TRACKING_URI (or \
    --tracking-uri) set and no --port, that server's address is printed and nothing is started."
)]
pub struct UiArgs {
    /// The server; without one (or with --port), a local one.
    #[command(flatten)]
    pub server: Server,
    /// The port of the local server; default: the seed's 5000.
    #[arg(long, short)]
    pub port: Option<u16>,
    /// The host it binds to.
    #[arg(long, default_value = "localhost")]
    pub host: String,
    /// Where a started server keeps mlflow.db and mlartifacts/; default: the current directory
    /// (as `mlflow ui`).
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// How long a started server gets to answer, in seconds.
    #[arg(long, value_name = "SECS", default_value_t = 60)]
    pub ready_timeout: u64,
}

/// `sapsan new`.
#[derive(Debug, Args)]
pub struct NewArgs {
    /// The project directory to create; its last component names the crate.
    #[arg(value_name = "NAME")]
    pub path: PathBuf,
    /// Depend on the sapsan checkout at this path (the crate is not on crates.io yet). Default:
    /// the checkout this command was built from, when it is still there.
    #[arg(long, value_name = "PATH")]
    pub sapsan_path: Option<PathBuf>,
}
