//! The command's errors: each says what failed, where, and what to do.
use std::path::PathBuf;

/// Why a subcommand failed.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The library failed (its message names the key, file or URL).
    #[error(transparent)]
    Sapsan(#[from] sapsan::Error),
    /// A subcommand that must reach a server has none.
    #[error(
        "no MLflow server to {what}: pass --tracking-uri http://host:port or set MLFLOW_TRACKING_URI"
    )]
    NoServer {
        /// What the server was needed for.
        what: &'static str,
    },
    /// `MLFLOW_TRACKING_URI` selects offline mode: there is no server to read from.
    #[error(
        "MLFLOW_TRACKING_URI={uri} is offline mode: runs are in journals, not on a server; \
         upload them with `sapsan sync`, then pass --tracking-uri http://host:port"
    )]
    Offline {
        /// The `offline:` URI.
        uri: String,
    },
    /// The experiment is not on the server.
    #[error(
        "no experiment {name:?} on the MLflow server at {url}; name one with --experiment or \
         MLFLOW_EXPERIMENT_NAME (the MLflow UI lists them)"
    )]
    UnknownExperiment {
        /// The experiment name.
        name: String,
        /// The server.
        url: String,
    },
    /// The server does not answer.
    #[error(
        "the MLflow server at {url} does not answer ({reason}); start a local one with \
         `sapsan ui`, or set MLFLOW_TRACKING_URI to a running server"
    )]
    Unreachable {
        /// The server.
        url: String,
        /// What failed.
        reason: String,
    },
    /// `sapsan sync` delivered what it could but not everything.
    #[error("{0}")]
    SyncIncomplete(String),
    /// `sapsan new` cannot make the project.
    #[error("cannot create the project {path}: {reason}")]
    New {
        /// The project directory.
        path: PathBuf,
        /// Why, and what to do.
        reason: String,
    },
    /// A file could not be read or written.
    #[error("{action} {path}: {source}")]
    Io {
        /// What was done.
        action: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
}

impl CliError {
    /// An I/O error on `path`.
    pub fn io(action: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        CliError::Io {
            action,
            path: path.into(),
            source,
        }
    }
}

/// The result of a subcommand.
pub type Result<T> = std::result::Result<T, CliError>;
