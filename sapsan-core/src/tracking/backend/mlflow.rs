//! [`MlflowBackend`]: the [`Backend`] that tracks runs on an MLflow server.
//!
//! Logging calls validate, record, enqueue and return in microseconds. Everything, run creations
//! and status changes included, goes through the one delivery pipeline
//! ([`crate::tracking::upload::Pipeline`]): to the journal on disk by default (memory with the
//! journal off), and from there to the server by the uploader, which retries while the server is
//! away. A run started while the server is away gets a local id (`local-...`) and is created on
//! the server later, exactly once. Each backend has its own run stack and its own view of the
//! runs it logged to. Reads (runs, metric histories, artifacts) go to the server directly (see
//! `read.rs`).
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use super::Backend;
use super::core::Core;
use crate::error::{Error, Result};
use crate::tracking::inputs::{DatasetInput, LoggedModel};
use crate::tracking::rest::client::HttpClient;
use crate::tracking::rest::wire::map_unknown_run;
use crate::tracking::run::RunStack;
use crate::tracking::server::MlflowServer;
use crate::tracking::{LogItem, RunData, RunStatus, validate};

/// The MLflow tracking backend. See the [backend docs](super).
///
/// Dropping it ends the runs it left open as FINISHED, waits (bounded: the exit grace while the
/// server is away, plus one request timeout) for delivery, and stops a server it owns.
/// SIGINT or SIGTERM while it is alive end its open runs as KILLED before the process dies of
/// the signal (see [`crate::tracking::run::signals`]; opt out with
/// [`super::MlflowBackendBuilder::handle_signals`]). Create and drop it outside any async
/// runtime (it uses a blocking HTTP client).
pub struct MlflowBackend {
    pub(super) core: Core,
    /// The client of the read API.
    pub(super) http: Arc<HttpClient>,
    /// Known once the server answered.
    pub(super) experiment_id: OnceLock<String>,
    pub(super) server: Option<MlflowServer>,
    /// The S3 client for artifacts in a bucket (built on first use).
    pub(super) s3: crate::tracking::rest::s3::S3Slot,
}

impl std::fmt::Debug for MlflowBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MlflowBackend")
            .field("tracking_uri", &self.http.base())
            .field("experiment_name", &self.core.experiment())
            .field("experiment_id", &self.experiment_id.get())
            .field("runs", &self.core.runs)
            .field("server", &self.server)
            .finish()
    }
}

impl MlflowBackend {
    /// HTTP requests this backend has sent so far (every attempt, retries included; the
    /// uploader's too).
    pub fn http_requests(&self) -> u64 {
        self.http.requests() + self.core.pipeline.requests()
    }

    /// The tracking URI (never with credentials).
    pub fn tracking_uri(&self) -> &str {
        self.http.base()
    }

    /// Name of the experiment runs go to.
    pub fn experiment_name(&self) -> &str {
        self.core.experiment()
    }

    /// Id of the experiment runs go to: known since the build when the server answered then,
    /// else looked up (created when missing) now.
    pub fn experiment_id(&self) -> Result<String> {
        if let Some(id) = self.experiment_id.get() {
            return Ok(id.clone());
        }
        let id = crate::tracking::rest::wire::get_or_create_experiment(
            &self.http,
            self.core.experiment(),
        )?;
        Ok(self.experiment_id.get_or_init(|| id).clone())
    }

    /// The server this backend started and owns, if any.
    pub fn server(&self) -> Option<&MlflowServer> {
        self.server.as_ref()
    }

    pub(super) fn unknown_run(&self, run_id: &str, e: Error) -> Error {
        map_unknown_run(e, run_id, self.http.base())
    }

    /// Waits up to `timeout` until everything logged so far is on the server (asking the
    /// uploader to try at once, as when the server just came back); whether it all landed.
    /// Unlike [`Backend::flush`], which is content with the journal on disk while the server is
    /// away, this waits for the server (before shutting a machine down, or after an outage).
    pub fn wait_delivered(&self, timeout: Duration) -> Result<bool> {
        self.core.pipeline.wait_delivered(timeout)
    }

    /// How far the uploader is: bytes of the journal (or memory store) delivered to the server,
    /// of those stored (`None` for a backend without an uploader). A slow server still makes
    /// `delivered` grow; one that takes nothing does not.
    ///
    /// ```no_run
    /// # fn main() -> sapsan_core::Result<()> {
    /// use sapsan_core::tracking::MlflowBackend;
    /// let backend = MlflowBackend::builder().tracking_uri("http://127.0.0.1:5000").build()?;
    /// if let Some(b) = backend.backlog() {
    ///     println!("uploaded {} of {} bytes", b.delivered, b.stored);
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub fn backlog(&self) -> Option<crate::tracking::upload::Backlog> {
        self.core.pipeline.backlog()
    }

    /// The id the server knows run `run_id` by: `run_id` itself, or for a run started while the
    /// server was away (`local-...`) the id it was created with later (asking the uploader to
    /// try the server at once, and waiting at most one request timeout).
    /// [`Error::RunNotUploaded`] while it is not on the server yet.
    pub fn server_run_id(&self, run_id: &str) -> Result<String> {
        self.core.pipeline.server_id_now(run_id)
    }

    /// Sets tag `key` of `run_id` and waits for it as a flush does.
    pub fn set_run_tag(&self, run_id: &str, key: &str, value: &str) -> Result<()> {
        validate::key(key)?;
        validate::tag_value(key, value)?;
        self.core.enqueue(
            run_id,
            LogItem::Tag {
                key: key.to_owned(),
                value: value.to_owned(),
            },
        )?;
        self.core.flush()
    }

    /// The journal directory of this backend (`None` with the journal off). It is removed when
    /// the backend is dropped with everything delivered.
    pub fn journal_dir(&self) -> Option<PathBuf> {
        self.core.pipeline.journal_dir()
    }
}

impl Backend for MlflowBackend {
    fn create_run(&self, run_name: &str, parent: Option<&str>) -> Result<String> {
        self.core.create_run(run_name, parent)
    }

    fn enqueue(&self, run_id: &str, item: LogItem) -> Result<()> {
        self.core.enqueue(run_id, item)
    }

    fn upload_artifact(&self, run_id: &str, name: &str, bytes: &[u8]) -> Result<()> {
        self.core.upload_artifact(run_id, name, bytes)
    }

    fn upload_artifact_file(&self, run_id: &str, name: &str, path: &std::path::Path) -> Result<()> {
        self.core.upload_artifact_file(run_id, name, path)
    }

    fn set_status(&self, run_id: &str, status: RunStatus) -> Result<()> {
        self.core.set_status(run_id, status)
    }

    fn log_model(&self, run_id: &str, model: &LoggedModel) -> Result<Option<String>> {
        self.core.log_model(run_id, model).map(Some)
    }

    fn logged_models(&self, run_id: &str) -> Vec<String> {
        self.core.logged_models(run_id)
    }

    fn log_inputs(&self, run_id: &str, datasets: &[DatasetInput], models: &[String]) -> Result<()> {
        self.core.log_inputs(run_id, datasets, models)
    }

    fn flush(&self) -> Result<()> {
        self.core.flush()
    }

    fn run_data(&self, run_id: &str) -> Result<RunData> {
        if let Some(d) = self.core.created_data(run_id) {
            return Ok(d);
        }
        let mut data = self.get_run(run_id)?.data;
        if let Some(mine) = self.core.logged_data(run_id) {
            data.params.extend(mine.params);
            data.metrics.extend(mine.metrics);
            data.tags.extend(mine.tags);
        }
        Ok(data)
    }

    fn runs(&self) -> &RunStack {
        &self.core.runs
    }
}

impl Drop for MlflowBackend {
    /// The core ends the open runs and delivers (bounded); then an owned server is stopped.
    fn drop(&mut self) {
        self.core.finish();
        if let Some(s) = self.server.take()
            && let Err(e) = s.stop()
        {
            log::warn!(target: "sapsan::server", "could not stop the MLflow server: {e}");
        }
    }
}
