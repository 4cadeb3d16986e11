//! Backends: where a run's data goes. [`Backend`] is the seed's API (`start`, `resume`,
//! `log_metric`, `log_parameter`, `log_artifact`, `end`, `close_active_runs`,
//! `active_run_id`), provided on top of a handful of explicit, run-id based primitives that
//! each backend implements. Logging calls only enqueue; [`Backend::flush`] waits for delivery.
//!
//! - [`MlflowBackend`]: an MLflow server, through the journal (or the in-memory store) and the
//!   uploader.
//! - [`OfflineBackend`]: the journal alone, uploaded later with `sapsan sync`.
//! - [`FakeBackend`]: in memory, for tests.
use std::path::Path;

use super::inputs::{DatasetInput, LoggedModel};
use super::run::RunStack;
use super::{LogItem, Metric, RunData, RunStatus, now_ms};
use crate::error::{Error, Result};

mod browse;
mod builder;
mod core;
mod fake;
mod mlflow;
mod offline;
mod read;
mod state;
mod system;

pub use crate::tracking::upload::LOCAL_RUN_PREFIX;
pub use browse::{PARENT_RUN_TAG, RunBrowser, RunNode, parent_of, run_tree};
pub use builder::{DEFAULT_EXPERIMENT, DEFAULT_HOST, DEFAULT_PORT, MlflowBackendBuilder};
pub use fake::FakeBackend;
pub use mlflow::MlflowBackend;
pub use offline::{OfflineBackend, backend_from_env, backend_from_settings};
pub use read::{ArtifactFile, MODEL_URI_SCHEME, RunInfo};
pub(crate) use state::RunState;
pub(crate) use system::system_tags;

/// A tracking backend. Implementors provide the explicit, run-id based primitives; the seed's
/// API is provided on top of them and works on the backend's own [`RunStack`].
pub trait Backend: Send + Sync {
    // ---- primitives ------------------------------------------------------------------------
    /// Creates a run named `run_name`, nested under `parent` when given (tag `mlflow.parentRunId`),
    /// with the system tags, status RUNNING. Does not touch the run stack. Returns the run id.
    fn create_run(&self, run_name: &str, parent: Option<&str>) -> Result<String>;
    /// Queues `item` for `run_id`. Validates it first (key rules, lengths, param immutability);
    /// never waits on the network.
    fn enqueue(&self, run_id: &str, item: LogItem) -> Result<()>;
    /// Stores `bytes` as artifact `name` (a relative path, no `..`) of `run_id`.
    fn upload_artifact(&self, run_id: &str, name: &str, bytes: &[u8]) -> Result<()>;
    /// Stores the file at `path` as artifact `name` of `run_id`. The default reads it and calls
    /// [`Backend::upload_artifact`]; the MLflow and offline backends copy it into the journal
    /// and send it from there, never holding it whole in memory on the way to S3.
    fn upload_artifact_file(&self, run_id: &str, name: &str, path: &Path) -> Result<()> {
        let bytes = std::fs::read(path).map_err(|e| Error::io("reading artifact", path, e))?;
        self.upload_artifact(run_id, name, &bytes)
    }
    /// Sets the status of `run_id`; a terminal status also sets the end time. Everything queued for
    /// the run is delivered first.
    fn set_status(&self, run_id: &str, status: RunStatus) -> Result<()>;
    /// Waits until everything queued so far is delivered; returns the first delivery error.
    fn flush(&self) -> Result<()>;
    /// Params, latest metrics and tags of `run_id` (what this backend logged, or read back).
    fn run_data(&self, run_id: &str) -> Result<RunData>;
    /// This backend's run stack.
    fn runs(&self) -> &RunStack;

    /// Logs `model` as an MLflow 3 logged model produced by `run_id` (its files under the
    /// model's own artifact location, finalized READY, an output of the run); returns the
    /// model's id, which [`Metric::model_id`] and [`Backend::log_inputs`] may name. `None`: the
    /// backend keeps no models (the default, for fakes).
    fn log_model(&self, run_id: &str, model: &LoggedModel) -> Result<Option<String>> {
        let _ = (run_id, model);
        Ok(None)
    }
    /// The logged models `run_id` produced through this backend ([`Backend::log_model`]), oldest
    /// first. The default (for backends that keep nothing) knows none.
    fn logged_models(&self, run_id: &str) -> Vec<String> {
        let _ = run_id;
        Vec::new()
    }
    /// Records what `run_id` read: `datasets` with their context, and logged `models` by the ids
    /// [`Backend::log_model`] returned. The default (for backends that keep nothing) does
    /// nothing.
    fn log_inputs(&self, run_id: &str, datasets: &[DatasetInput], models: &[String]) -> Result<()> {
        let _ = (run_id, datasets, models);
        Ok(())
    }

    // ---- the seed's API --------------------------------------------------------------------
    /// Starts a run and makes it the active one. `run_id` given: resumes that run instead.
    /// `nested`: the new run's parent is the active run (an error when there is none).
    fn start(&self, run_name: &str, nested: bool, run_id: Option<&str>) -> Result<String> {
        if let Some(id) = run_id {
            self.resume(id)?;
            return Ok(id.to_owned());
        }
        let parent = if nested {
            Some(self.runs().top().ok_or(Error::NoActiveRun)?)
        } else {
            None
        };
        let id = self.create_run(run_name, parent.as_deref())?;
        self.runs().push(&id);
        Ok(id)
    }
    /// Re-opens an ended run (status RUNNING) and makes it the active one.
    fn resume(&self, run_id: &str) -> Result<()> {
        self.set_status(run_id, RunStatus::Running)?;
        if !self.runs().contains(run_id) {
            self.runs().push(run_id);
        }
        Ok(())
    }
    /// The innermost open run of this backend.
    fn active_run_id(&self) -> Option<String> {
        self.runs().top()
    }
    /// Logs a metric (step 0) to the active run.
    fn log_metric(&self, key: &str, value: f64) -> Result<()> {
        self.log_metric_step(key, value, 0)
    }
    /// Logs a metric at `step` to the active run.
    fn log_metric_step(&self, key: &str, value: f64, step: i64) -> Result<()> {
        let run = self.active_run_id().ok_or(Error::NoActiveRun)?;
        let m = Metric::new(key, value, now_ms(), step);
        self.enqueue(&run, LogItem::Metric(m))
    }
    /// Logs a param to the active run.
    fn log_parameter(&self, key: &str, value: &str) -> Result<()> {
        let run = self.active_run_id().ok_or(Error::NoActiveRun)?;
        self.enqueue(
            &run,
            LogItem::Param {
                key: key.to_owned(),
                value: value.to_owned(),
            },
        )
    }
    /// Sets a tag on the active run.
    fn set_tag(&self, key: &str, value: &str) -> Result<()> {
        let run = self.active_run_id().ok_or(Error::NoActiveRun)?;
        self.enqueue(
            &run,
            LogItem::Tag {
                key: key.to_owned(),
                value: value.to_owned(),
            },
        )
    }
    /// Uploads the file at `path` as an artifact (named after the file) of the active run.
    fn log_artifact(&self, path: &Path) -> Result<()> {
        let run = self.active_run_id().ok_or(Error::NoActiveRun)?;
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .ok_or_else(|| Error::Artifact {
                name: path.display().to_string(),
                reason: "the path has no UTF-8 file name".into(),
            })?;
        self.upload_artifact_file(&run, name, path)
    }
    /// Ends the active run as FINISHED (its parent stays open).
    fn end(&self) -> Result<()> {
        let run = self.active_run_id().ok_or(Error::NoActiveRun)?;
        self.end_run(&run, RunStatus::Finished)
    }
    /// Ends `run_id` with `status` and removes it from the run stack.
    fn end_run(&self, run_id: &str, status: RunStatus) -> Result<()> {
        let r = self.set_status(run_id, status);
        self.runs().remove(run_id);
        r
    }
    /// Ends every open run of this backend (innermost first) as FINISHED.
    fn close_active_runs(&self) -> Result<()> {
        let mut first_err = None;
        for run in self.runs().drain() {
            if let Err(e) = self.set_status(&run, RunStatus::Finished) {
                first_err.get_or_insert(e);
            }
        }
        first_err.map_or(Ok(()), Err)
    }
}
