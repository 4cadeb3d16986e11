//! [`Core`]: what the MLflow and offline backends share: the delivery [`Pipeline`], what they know
//! of each run ([`RunState`]), their run stack, and the SIGINT/SIGTERM hook. Every logging call
//! of both goes through here: validate, record, hand to the pipeline.
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use super::RunState;
use crate::error::Result;
use crate::shared::Shared;
use crate::tracking::inputs::{DatasetInput, LoggedModel};
use crate::tracking::journal::Blob;
use crate::tracking::run::RunStack;
use crate::tracking::run::signals::{self, KILL_GRACE, SignalTarget};
use crate::tracking::system_metrics::{Sampler, Sink, SystemMetricsOptions};
use crate::tracking::upload::pipeline::{Pipeline, RunRequest};
use crate::tracking::{LogItem, RunData, RunStatus, now_ms, validate};

/// The runs a backend knows, by the id it handed out.
type Runs = Shared<HashMap<String, RunState>>;

/// What the MLflow and offline backends share. See the [module docs](self).
#[derive(Debug)]
pub(crate) struct Core {
    pub(crate) pipeline: Arc<Pipeline>,
    state: Arc<Runs>,
    pub(crate) runs: RunStack,
    experiment: String,
    system_tags: Vec<(String, String)>,
    /// How long the end of the program waits for an away server.
    exit_grace: Duration,
    /// What the SIGINT/SIGTERM path reaches through a weak reference.
    _signal_hook: Option<Arc<dyn SignalTarget>>,
    /// System metrics of the open runs, when on.
    sampler: Shared<Option<Sampler>>,
}

/// The parts of a backend the signal path needs; held strongly by the backend only.
#[derive(Debug)]
struct Hook {
    pipeline: Arc<Pipeline>,
    state: Arc<Runs>,
    grace: Duration,
}

impl SignalTarget for Hook {
    fn kill_open_runs(&self) -> Vec<String> {
        let open = close_open(&self.state);
        // KILLED goes behind everything logged; the journal is kept (and the program says so)
        // when the server does not take it within the grace.
        self.pipeline.finish(&open, RunStatus::Killed, self.grace);
        Vec::new()
    }
}

/// Marks every open run closed; their ids.
fn close_open(state: &Runs) -> Vec<String> {
    state
        .lock()
        .iter_mut()
        .filter(|(_, r)| r.open)
        .map(|(id, r)| {
            r.open = false;
            id.clone()
        })
        .collect()
}

impl Core {
    /// A backend core on `pipeline`, for runs of `experiment`; `handle_signals`: SIGINT/SIGTERM
    /// end its open runs KILLED.
    pub(crate) fn new(
        pipeline: Pipeline,
        experiment: &str,
        exit_grace: Duration,
        handle_signals: bool,
    ) -> Result<Self> {
        let pipeline = Arc::new(pipeline);
        let state = Arc::new(Runs::default());
        let signal_hook = if handle_signals {
            let hook: Arc<dyn SignalTarget> = Arc::new(Hook {
                pipeline: pipeline.clone(),
                state: state.clone(),
                grace: exit_grace.min(KILL_GRACE / 5),
            });
            signals::register(&hook)?;
            Some(hook)
        } else {
            None
        };
        Ok(Core {
            pipeline,
            state,
            runs: RunStack::default(),
            experiment: experiment.to_owned(),
            system_tags: super::system_tags(),
            exit_grace,
            _signal_hook: signal_hook,
            sampler: Shared::new(None),
        })
    }

    /// Logs system metrics to every open run from now on (see [`crate::tracking::system_metrics`]).
    pub(crate) fn sample_system(&self, opts: Option<SystemMetricsOptions>) -> Result<()> {
        if let Some(o) = opts {
            let pipeline = self.pipeline.clone();
            let sink: Sink = Arc::new(move |run: &str, item| pipeline.push(run, item));
            *self.sampler.lock() = Some(Sampler::start(sink, o)?);
        }
        Ok(())
    }

    /// The experiment runs go to.
    pub(crate) fn experiment(&self) -> &str {
        &self.experiment
    }

    /// Creates a run (see [`Pipeline::create_run`]) and records it as open.
    pub(crate) fn create_run(&self, run_name: &str, parent: Option<&str>) -> Result<String> {
        let mut tags: Vec<(String, String)> = Vec::with_capacity(self.system_tags.len() + 3);
        tags.push(("mlflow.runName".into(), run_name.to_owned()));
        tags.extend(self.system_tags.iter().cloned());
        let run = self.pipeline.create_run(RunRequest {
            experiment: &self.experiment,
            name: run_name,
            parent,
            start_ms: now_ms(),
            tags: &tags,
        })?;
        let mut state = RunState::created(run.tags.into_iter());
        state.artifact_uri = run.artifact_uri;
        self.state.lock().insert(run.id.clone(), state);
        if let Some(s) = &*self.sampler.lock() {
            s.watch(&run.id);
        }
        Ok(run.id)
    }

    /// Validates and records `item`, then queues it (a param logged again with the same value
    /// is not sent again; a changed one is an error).
    pub(crate) fn enqueue(&self, run_id: &str, item: LogItem) -> Result<()> {
        validate::item(&item)?;
        let send = self
            .state
            .lock()
            .entry(run_id.to_owned())
            .or_default()
            .record(run_id, &item)?;
        if send {
            self.pipeline.push(run_id, item);
        }
        Ok(())
    }

    /// Stores an artifact behind everything logged to the run.
    pub(crate) fn upload_artifact(&self, run_id: &str, name: &str, bytes: &[u8]) -> Result<()> {
        self.pipeline.artifact(run_id, name, Blob::Bytes(bytes))
    }

    /// See [`Pipeline::artifact`]: the file at `path`, copied into the journal.
    pub(crate) fn upload_artifact_file(&self, run_id: &str, name: &str, path: &Path) -> Result<()> {
        self.pipeline.artifact(run_id, name, Blob::File(path))
    }

    /// See [`Pipeline::log_model`] (in this backend's experiment).
    pub(crate) fn log_model(&self, run_id: &str, model: &LoggedModel) -> Result<String> {
        let id = self.pipeline.log_model(&self.experiment, run_id, model)?;
        self.state
            .lock()
            .entry(run_id.to_owned())
            .or_default()
            .models
            .push(id.clone());
        Ok(id)
    }

    /// The logged models `run_id` produced through this backend.
    pub(crate) fn logged_models(&self, run_id: &str) -> Vec<String> {
        self.state
            .lock()
            .get(run_id)
            .map(|s| s.models.clone())
            .unwrap_or_default()
    }

    /// See [`Pipeline::log_inputs`].
    pub(crate) fn log_inputs(
        &self,
        run_id: &str,
        datasets: &[DatasetInput],
        models: &[String],
    ) -> Result<()> {
        self.pipeline.log_inputs(run_id, datasets, models)
    }

    /// Stores a status change behind everything logged to the run.
    pub(crate) fn set_status(&self, run_id: &str, status: RunStatus) -> Result<()> {
        let open = status == RunStatus::Running;
        self.state.lock().entry(run_id.to_owned()).or_default().open = open;
        if let Some(s) = &*self.sampler.lock() {
            if open {
                s.watch(run_id);
            } else {
                s.unwatch(run_id);
            }
        }
        self.pipeline.set_status(run_id, status)
    }

    /// See [`Pipeline::flush`].
    pub(crate) fn flush(&self) -> Result<()> {
        self.pipeline.flush()
    }

    /// What this backend logged to `run_id`, when it created the run (so it knows all of it).
    pub(crate) fn created_data(&self, run_id: &str) -> Option<RunData> {
        self.state
            .lock()
            .get(run_id)
            .filter(|s| s.created_here)
            .map(RunState::data)
    }

    /// What this backend logged to `run_id` (`None` when it logged nothing to it).
    pub(crate) fn logged_data(&self, run_id: &str) -> Option<RunData> {
        self.state.lock().get(run_id).map(RunState::data)
    }

    /// The artifact root of `run_id`, when known.
    pub(crate) fn artifact_uri(&self, run_id: &str) -> Option<String> {
        self.state
            .lock()
            .get(run_id)
            .and_then(|s| s.artifact_uri.clone())
    }

    /// Remembers the artifact root of `run_id`.
    pub(crate) fn remember_artifact_uri(&self, run_id: &str, uri: &str) {
        self.state
            .lock()
            .entry(run_id.to_owned())
            .or_default()
            .artifact_uri = Some(uri.to_owned());
    }
}

impl Core {
    /// The end of the backend: ends the runs left open as FINISHED, waits (bounded) for
    /// delivery, and removes the delivered journal or says where the rest is kept. Runs once.
    pub(crate) fn finish(&self) {
        // The sampler stops first: nothing is logged after the runs end.
        drop(self.sampler.lock().take());
        let open = close_open(&self.state);
        self.pipeline
            .finish(&open, RunStatus::Finished, self.exit_grace);
        self.runs.drain();
    }
}

impl Drop for Core {
    fn drop(&mut self) {
        self.finish();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tracking::Metric;
    use crate::tracking::journal::{Journal, SharedJournal};
    use crate::tracking::upload::Limits;

    fn core(dir: &std::path::Path) -> Core {
        let limits = Limits {
            linger: Duration::from_millis(1),
            queue_capacity: 1000,
            flush_timeout: Duration::from_secs(10),
            exit_grace: Duration::ZERO,
            request_timeout: Duration::ZERO,
        };
        let j = SharedJournal::new(Journal::create_in(dir).unwrap(), None);
        Core::new(
            Pipeline::offline(j, limits).unwrap(),
            "e",
            Duration::ZERO,
            false,
        )
        .unwrap()
    }

    #[test]
    fn logging_to_a_run_this_backend_never_saw_returns_at_once() {
        // It used to keep the state lock of its first look-up while taking it again: a deadlock.
        let tmp = tempfile::tempdir().unwrap();
        let c = Arc::new(core(tmp.path()));
        let (tx, rx) = std::sync::mpsc::channel();
        let c2 = c.clone();
        std::thread::spawn(move || {
            let m = LogItem::Metric(Metric {
                key: "loss".into(),
                value: 1.0,
                timestamp_ms: 1,
                step: 0,
                model_id: None,
            });
            let r = c2.enqueue("run-from-elsewhere", m);
            let _ = tx.send(r.is_ok());
        });
        let ok = rx
            .recv_timeout(Duration::from_secs(10))
            .expect("enqueue to an unknown run did not return (deadlock)");
        assert!(ok);
        assert_eq!(
            c.logged_data("run-from-elsewhere").unwrap().metrics["loss"],
            1.0
        );
    }
}
