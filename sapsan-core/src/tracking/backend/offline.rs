//! [`OfflineBackend`]: a [`Backend`] for machines with no tracking server. It is the delivery
//! pipeline without an uploader: everything goes to the journal (see
//! [`crate::tracking::journal`]), and `sapsan sync <dir>` uploads it later to any MLflow server,
//! recreating the runs with their nesting, statuses and times.
//!
//! Select it in code with [`OfflineBackend::new`], or by environment through [`backend_from_env`]:
//! `MLFLOW_TRACKING_URI=offline:/some/dir` (journals under that directory) or `SAPSAN_OFFLINE=1`
//! (journals under `SAPSAN_JOURNAL_DIR`, else `./.sapsan-journal`).
use std::path::{Path, PathBuf};

use super::core::Core;
use super::{Backend, DEFAULT_EXPERIMENT, MlflowBackendBuilder};
use crate::error::{Error, Result};
use crate::tracking::inputs::{DatasetInput, LoggedModel};
use crate::tracking::journal::{Journal, SharedJournal};
use crate::tracking::rest::settings::{OFFLINE_SCHEME, Settings};
use crate::tracking::run::RunStack;
use crate::tracking::system_metrics::SystemMetricsOptions;
use crate::tracking::upload::{Limits, Pipeline};
use crate::tracking::{LogItem, RunData, RunStatus};

/// A backend that journals everything to local disk and never talks to a server.
/// See the [backend docs](super).
///
/// SIGINT and SIGTERM (a batch scheduler ending the job) journal KILLED for its open runs before
/// the process dies of the signal, as for [`super::MlflowBackend`] (see
/// [`crate::tracking::run::signals`]).
pub struct OfflineBackend {
    core: Core,
    dir: PathBuf,
}

impl std::fmt::Debug for OfflineBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OfflineBackend")
            .field("experiment", &self.core.experiment())
            .field("journal", &self.dir)
            .field("runs", &self.core.runs)
            .finish()
    }
}

impl OfflineBackend {
    /// Journals runs of experiment `experiment` into a new directory under `root`, with the
    /// SIGINT/SIGTERM handling on.
    pub fn new(experiment: &str, root: &Path) -> Result<Self> {
        Self::with_signals(experiment, root, true)
    }

    /// Like [`OfflineBackend::new`]; `handle_signals: false` leaves SIGINT and SIGTERM alone.
    pub fn with_signals(experiment: &str, root: &Path, handle_signals: bool) -> Result<Self> {
        let s = Settings::default();
        let journal = Journal::create_in(root)?;
        let dir = journal.dir().to_owned();
        let limits = Limits {
            linger: std::time::Duration::from_millis(50),
            queue_capacity: s.queue_capacity,
            flush_timeout: s.flush_timeout,
            exit_grace: std::time::Duration::ZERO,
            request_timeout: std::time::Duration::ZERO,
        };
        let journal = SharedJournal::new(journal, None).with_held_limit(s.held_limit());
        let pipeline = Pipeline::offline(journal, limits)?;
        let core = Core::new(pipeline, experiment, limits.exit_grace, handle_signals)?;
        Ok(OfflineBackend { core, dir })
    }

    /// Logs system metrics to every open run (see [`crate::tracking::system_metrics`]), as
    /// `MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING` does for a backend built from the environment.
    pub fn with_system_metrics(self, opts: SystemMetricsOptions) -> Result<Self> {
        self.core.sample_system(Some(opts))?;
        Ok(self)
    }

    /// The journal directory (give it to `sapsan sync`).
    pub fn journal_dir(&self) -> PathBuf {
        self.dir.clone()
    }

    /// The experiment the runs will be synced to.
    pub fn experiment_name(&self) -> &str {
        self.core.experiment()
    }
}

impl Backend for OfflineBackend {
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
        self.core
            .logged_data(run_id)
            .ok_or_else(|| Error::UnknownRun {
                run_id: run_id.to_owned(),
                url: format!("{OFFLINE_SCHEME}{}", self.dir.display()),
            })
    }

    fn runs(&self) -> &RunStack {
        &self.core.runs
    }
}

/// The backend the settings ask for: [`OfflineBackend`] when [`Settings::offline_root`] is set
/// (`MLFLOW_TRACKING_URI=offline:<dir>` or `SAPSAN_OFFLINE=1`), else an
/// [`super::MlflowBackend`] built from them. The experiment is `MLFLOW_EXPERIMENT_NAME`, else
/// `experiment`.
pub fn backend_from_settings(settings: Settings) -> Result<Box<dyn Backend>> {
    match settings.offline_root.clone() {
        Some(root) => {
            let exp = settings
                .experiment_name
                .clone()
                .unwrap_or_else(|| DEFAULT_EXPERIMENT.into());
            let b = OfflineBackend::new(&exp, &root)?;
            b.core.sample_system(settings.system_metrics.clone())?;
            Ok(Box::new(b))
        }
        None => {
            let b = MlflowBackendBuilder::default().settings(settings.clone());
            let b = match settings.tracking_uri {
                Some(uri) => b.tracking_uri(uri),
                None => b.host_port(super::DEFAULT_HOST, super::DEFAULT_PORT),
            };
            Ok(Box::new(b.build()?))
        }
    }
}

/// [`backend_from_settings`] with [`Settings::from_env`].
pub fn backend_from_env() -> Result<Box<dyn Backend>> {
    backend_from_settings(Settings::from_env()?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tracking::journal::{self, Record};

    #[test]
    fn journals_runs_nesting_and_statuses() {
        let tmp = tempfile::tempdir().unwrap();
        let b = OfflineBackend::new("exp", tmp.path()).unwrap();
        let train = b.start("train", false, None).unwrap();
        b.log_parameter("lr", "0.1").unwrap();
        for s in 0..5 {
            b.log_metric_step("loss", s as f64, s).unwrap();
        }
        assert!(matches!(
            b.log_parameter("lr", "0.2"),
            Err(Error::ParamChanged { .. })
        ));
        let eval = b.start("evaluate", true, None).unwrap();
        b.log_metric("mse", 0.5).unwrap();
        b.end().unwrap();
        assert_eq!(b.run_data(&eval).unwrap().metrics["mse"], 0.5);
        assert_eq!(b.active_run_id().as_deref(), Some(train.as_str()));
        let dir = b.journal_dir();
        drop(b); // ends train as FINISHED
        let recs: Vec<Record> = journal::read_records(&dir, 0, None)
            .unwrap()
            .into_iter()
            .map(|(r, _)| r)
            .collect();
        let creates: Vec<_> = recs
            .iter()
            .filter_map(|r| match r {
                Record::Create {
                    key, parent, name, ..
                } => Some((key.clone(), parent.clone(), name.clone())),
                _ => None,
            })
            .collect();
        assert_eq!(creates.len(), 2);
        assert_eq!(
            creates[1].1,
            Some(journal::RunRef::Key(creates[0].0.clone()))
        );
        let statuses = recs
            .iter()
            .filter(
                |r| matches!(r, Record::Status { status, .. } if *status == RunStatus::Finished),
            )
            .count();
        assert_eq!(statuses, 2);
        let metrics: usize = recs
            .iter()
            .map(|r| match r {
                Record::Batch { metrics, .. } => metrics.len(),
                _ => 0,
            })
            .sum();
        assert_eq!(metrics, 6);
    }
}
