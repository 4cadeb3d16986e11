//! The one error type of `sapsan-core`. Every message names the offending key, file, URL or run and,
//! where there is one, the fix.
use std::path::PathBuf;

/// Result alias used across `sapsan-core`.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in `sapsan-core`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    // ---- tracking: the MLflow server answered with an error -------------------------------
    /// The MLflow server answered with an error status.
    #[error("MLflow {method} {url} failed: HTTP {status} {error_code}: {message}")]
    Mlflow {
        /// HTTP method of the request.
        method: String,
        /// URL of the request (never contains credentials).
        url: String,
        /// HTTP status code.
        status: u16,
        /// MLflow's `error_code` (`INVALID_PARAMETER_VALUE`, ...), or `HTTP_ERROR` for non-JSON bodies.
        error_code: String,
        /// MLflow's message, or the start of the non-JSON body.
        message: String,
    },
    /// The server could not be reached at all (after retries).
    #[error(
        "cannot reach the MLflow server at {url}: {reason} (is it running? start one with `mlflow server` or let sapsan start it)"
    )]
    Connection {
        /// URL that was tried.
        url: String,
        /// What failed (connect refused, timeout, ...).
        reason: String,
    },
    /// A wait ran out of time (a flush, the end of the program); what was waited for is kept.
    #[error("{what} did not finish within {after:?}")]
    Timeout {
        /// What was waited for.
        what: String,
        /// How long it was waited for.
        after: std::time::Duration,
    },
    /// A failure inside the library itself (a thread that could not start, a body that could not
    /// be encoded): never retried as if the server were away.
    #[error("sapsan internal error while {what}: {reason}")]
    Internal {
        /// What the library was doing.
        what: String,
        /// What failed.
        reason: String,
    },
    // ---- tracking: client-side validation ------------------------------------------------
    /// A metric/param/tag key that MLflow would reject.
    #[error("invalid MLflow key {key:?}: {rule}")]
    InvalidKey {
        /// The key as given.
        key: String,
        /// The rule it breaks, in words.
        rule: String,
    },
    /// A value longer than MLflow accepts.
    #[error(
        "value of {key:?} is {len} characters; MLflow accepts at most {max} for a {kind} (shorten it)"
    )]
    ValueTooLong {
        /// Key of the value.
        key: String,
        /// `param` or `tag`.
        kind: &'static str,
        /// Length of the value in characters.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A param logged again with a different value.
    #[error(
        "param {key:?} of run {run_id} is already {old:?}; MLflow does not allow changing it to {new:?} (log it under a new key)"
    )]
    ParamChanged {
        /// Run the param belongs to.
        run_id: String,
        /// Param key.
        key: String,
        /// Value already logged.
        old: String,
        /// Value that was refused.
        new: String,
    },
    /// A seed-style call (`log_metric`, `end`, ...) with no run started or resumed.
    #[error("no active run: call `start(...)` or `resume(run_id)` on the backend first")]
    NoActiveRun,
    /// A run id the server does not know.
    #[error(
        "run {run_id:?} does not exist on {url} (check the id; runs of deleted experiments are gone too)"
    )]
    UnknownRun {
        /// The run id.
        run_id: String,
        /// Tracking URI.
        url: String,
    },
    /// A run started while the server was away (`local-...` id) that is not on the server yet.
    #[error(
        "run {run_id:?} was started while the MLflow server at {url} was away and is not on it yet; its data is kept in {kept}; it is created there as soon as the server answers again{hint}"
    )]
    RunNotUploaded {
        /// The local run id.
        run_id: String,
        /// Tracking URI.
        url: String,
        /// Where its data is kept: `the journal <dir>`, or memory.
        kept: String,
        /// How to send it by hand, when it can be (` (or upload it with `sapsan sync ...`)`).
        hint: String,
    },
    /// The run exists but is deleted (in the trash).
    #[error(
        "run {run_id:?} on {url} is deleted; restore it with `mlflow runs restore --run-id {run_id}` (or in the MLflow UI) or start a new run"
    )]
    DeletedRun {
        /// The run id.
        run_id: String,
        /// Tracking URI.
        url: String,
    },
    /// The experiment exists but is deleted.
    #[error(
        "experiment {name:?} on {url} is deleted; restore it in the MLflow UI (or `mlflow experiments restore`) or choose another name"
    )]
    DeletedExperiment {
        /// Experiment name.
        name: String,
        /// Tracking URI.
        url: String,
    },
    /// An artifact the client cannot store (unsupported URI, bad name, ...).
    #[error("artifact {name:?}: {reason}")]
    Artifact {
        /// Artifact name or path.
        name: String,
        /// What is wrong and what to do.
        reason: String,
    },
    /// The object store (S3) holding a run's artifacts refused or failed a request. The message
    /// names the object and the setting to check; never a credential.
    #[error("object store {operation} s3://{bucket}/{key} failed: {reason}")]
    ObjectStore {
        /// What was done (`PUT`, `GET`, `multipart upload`, `list`, ...).
        operation: String,
        /// The bucket.
        bucket: String,
        /// The object key (or prefix).
        key: String,
        /// The HTTP status of the store's answer; `None` when it could not be reached.
        status: Option<u16>,
        /// What the store said and what to check.
        reason: String,
    },
    // ---- tracking: the server process ----------------------------------------------------
    /// The `mlflow` executable is not available.
    #[error(
        "cannot start the MLflow server: `{program}` was not found ({reason}). Install it with `bash scripts/setup.sh` (a venv with mlflow==3.17.2 in .venv) or `pip install mlflow==3.17.2`, or point SAPSAN_MLFLOW_BIN at the executable"
    )]
    MlflowNotInstalled {
        /// The program that was looked up.
        program: String,
        /// Why it failed.
        reason: String,
    },
    /// The port is taken by something that is not MLflow.
    #[error(
        "port {port} on {host} is in use by something that is not an MLflow server ({answered}); stop it or choose another port"
    )]
    PortBusyNotMlflow {
        /// Host.
        host: String,
        /// Port.
        port: u16,
        /// What answered (or did not).
        answered: String,
    },
    /// The server was started but did not become ready in time.
    #[error(
        "MLflow server at {url} did not become ready within {seconds} s (raise the ready timeout if the machine is slow); its log is {log}; last lines:\n{tail}"
    )]
    ServerTimeout {
        /// URL polled.
        url: String,
        /// Timeout.
        seconds: u64,
        /// Where the server's output went.
        log: String,
        /// The last lines of that log.
        tail: String,
    },
    /// The server process exited before it became ready (port taken meanwhile, bad store, ...).
    #[error(
        "MLflow server for {url} exited during start-up ({status}) before answering /health; its log is {log}; last lines:\n{tail}"
    )]
    ServerExited {
        /// URL it was to serve.
        url: String,
        /// How it exited (exit code or signal).
        status: String,
        /// Where the server's output went.
        log: String,
        /// The last lines of that log.
        tail: String,
    },
    /// A configuration value read from the environment or given to a builder is wrong.
    #[error("invalid setting {name}={value:?}: {reason}")]
    Setting {
        /// Variable or option name.
        name: String,
        /// Its value (credentials are never put here).
        value: String,
        /// What is wrong and what to do.
        reason: String,
    },
    // ---- config ---------------------------------------------------------------------------
    /// A parameter map could not be built (bad kwarg key, kwarg shadowing a field, ...).
    #[error("config {config}: {reason}")]
    Config {
        /// Config type name.
        config: String,
        /// What is wrong and what to do.
        reason: String,
    },
    // ---- data ----------------------------------------------------------------------------
    /// A data file or dataset problem.
    #[error("data file {path}{}: {reason}", dataset.as_ref().map(|d| format!(" (dataset {d:?})")).unwrap_or_default())]
    Data {
        /// The file.
        path: PathBuf,
        /// The dataset inside it, when known.
        dataset: Option<String>,
        /// What is wrong and what to do.
        reason: String,
    },
    // ---- estimator / experiment / analysis ------------------------------------------------
    /// A model or training problem (shapes, settings).
    #[error("estimator: {0}")]
    Estimator(String),
    /// An error from the tensor library.
    #[cfg(feature = "pipeline")]
    #[error("tensor computation failed: {0}")]
    Tensor(#[from] candle_core::Error),
    /// A plot or report could not be produced.
    #[error("analysis: {0}")]
    Analysis(String),
    // ---- I/O ----------------------------------------------------------------------------
    /// An I/O error on a named path.
    #[error("{action} {path}: {source}")]
    Io {
        /// What was being done (`reading`, `writing`, ...).
        action: &'static str,
        /// The path.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
}

impl Error {
    /// Builds an [`Error::Io`] for `path`.
    pub fn io(action: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            action,
            path: path.into(),
            source,
        }
    }

    /// MLflow's `error_code` when the server answered with one.
    pub fn mlflow_error_code(&self) -> Option<&str> {
        match self {
            Error::Mlflow { error_code, .. } => Some(error_code),
            _ => None,
        }
    }
}
