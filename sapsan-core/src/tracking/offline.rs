//! [`OfflineBackend`]: a [`Backend`] for machines with no tracking server. It only writes the
//! journal (see [`super::journal`]); `sapsan sync <dir>` uploads it later to any MLflow server,
//! recreating the runs with their nesting, statuses and times.
//!
//! Select it in code with [`OfflineBackend::new`], or by environment through [`backend_from_env`]:
//! `MLFLOW_TRACKING_URI=offline:/some/dir` (journals under that directory) or `SAPSAN_OFFLINE=1`
//! (journals under `SAPSAN_JOURNAL_DIR`, else `./.sapsan-journal`).
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use super::journal::{self, Journal, JournalSink, Record, SharedJournal};
use super::mlflow::{DEFAULT_EXPERIMENT, LOCAL_RUN_PREFIX, MlflowBackend, RunState, system_tags};
use super::queue::LogQueue;
use super::signals::{self, SignalTarget};
use super::{Backend, LogItem, RunData, RunStack, RunStatus, now_ms, validate};
use crate::error::{Error, Result};

/// Environment variable that selects offline mode when set to `1` or `true`.
pub const OFFLINE_ENV: &str = "SAPSAN_OFFLINE";
/// Tracking-URI scheme that selects offline mode: `offline:/journal/root`.
pub const OFFLINE_SCHEME: &str = "offline:";

/// A backend that journals everything to local disk and never talks to a server.
/// See the [module docs](self).
///
/// SIGINT and SIGTERM (a batch scheduler ending the job) journal KILLED for its open runs before
/// the process dies of the signal, as for [`MlflowBackend`] (see [`super::signals`]).
pub struct OfflineBackend {
    experiment: String,
    system_tags: Vec<(String, String)>,
    journal: Arc<SharedJournal>,
    queue: Arc<LogQueue>,
    runs: RunStack,
    state: Arc<Mutex<HashMap<String, RunState>>>,
    /// What the SIGINT/SIGTERM path reaches through a weak reference.
    _signal_hook: Option<Arc<dyn SignalTarget>>,
}

impl std::fmt::Debug for OfflineBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OfflineBackend")
            .field("experiment", &self.experiment)
            .field("journal", &self.journal.dir())
            .field("runs", &self.runs)
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
        let journal = Arc::new(SharedJournal::new(Journal::create_in(root)?, None));
        let queue = Arc::new(LogQueue::start(
            JournalSink(journal.clone()),
            Duration::from_millis(50),
        )?);
        let state = Arc::new(Mutex::new(HashMap::new()));
        let signal_hook = if handle_signals {
            let hook: Arc<dyn SignalTarget> = Arc::new(OfflineSignalHook {
                journal: journal.clone(),
                queue: queue.clone(),
                state: state.clone(),
            });
            signals::register(&hook)?;
            Some(hook)
        } else {
            None
        };
        Ok(OfflineBackend {
            experiment: experiment.to_owned(),
            system_tags: system_tags(),
            journal,
            queue,
            runs: RunStack::default(),
            state,
            _signal_hook: signal_hook,
        })
    }

    /// The journal directory (give it to `sapsan sync`).
    pub fn journal_dir(&self) -> PathBuf {
        self.journal.dir()
    }

    /// The experiment the runs will be synced to.
    pub fn experiment_name(&self) -> &str {
        &self.experiment
    }

    fn state(&self) -> MutexGuard<'_, HashMap<String, RunState>> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The parts of an offline backend the signal path needs.
struct OfflineSignalHook {
    journal: Arc<SharedJournal>,
    queue: Arc<LogQueue>,
    state: Arc<Mutex<HashMap<String, RunState>>>,
}

impl SignalTarget for OfflineSignalHook {
    fn kill_open_runs(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if let Err(e) = self.queue.flush() {
            problems.push(format!("could not journal everything: {e}"));
        }
        let open = close_open_runs(&self.state);
        if let Err(e) =
            self.journal
                .append(&status_records(&self.journal, &open, RunStatus::Killed))
        {
            problems.push(format!("could not journal the KILLED status: {e}"));
        }
        print_upload_hint(&self.journal);
        problems
    }
}

/// Marks the open runs in `state` closed; their ids.
fn close_open_runs(state: &Mutex<HashMap<String, RunState>>) -> Vec<String> {
    let mut st = state.lock().unwrap_or_else(|e| e.into_inner());
    st.iter_mut()
        .filter(|(_, r)| r.open)
        .map(|(id, r)| {
            r.open = false;
            id.clone()
        })
        .collect()
}

/// `status` records, ending now, for `runs`.
fn status_records(journal: &SharedJournal, runs: &[String], status: RunStatus) -> Vec<Record> {
    let end_ms = Some(now_ms());
    runs.iter()
        .map(|r| Record::Status {
            run: journal.run_ref(r),
            status,
            end_ms,
        })
        .collect()
}

/// Says on stderr where the journal is and how to upload it.
fn print_upload_hint(journal: &SharedJournal) {
    let dir = journal.dir();
    let items = journal::read_records(&dir, 0, None)
        .map(|r| r.iter().map(|(r, _)| r.items()).sum::<usize>())
        .unwrap_or(0);
    eprintln!(
        "sapsan: offline mode: {items} logged items are kept in {}. Upload them with:\n    \
         sapsan sync {} --tracking-uri <http://mlflow-server:port>",
        dir.display(),
        dir.display()
    );
}

impl Backend for OfflineBackend {
    fn create_run(&self, run_name: &str, parent: Option<&str>) -> Result<String> {
        let key = journal::fresh_key();
        let mut tags = vec![("mlflow.runName".to_owned(), run_name.to_owned())];
        tags.extend(self.system_tags.iter().cloned());
        tags.push((journal::RUN_KEY_TAG.to_owned(), key.clone()));
        for (k, v) in &tags {
            validate::tag_value(k, v)?;
        }
        let run_id = format!("{LOCAL_RUN_PREFIX}{key}");
        self.journal.append(&[Record::Create {
            key: key.clone(),
            experiment: self.experiment.clone(),
            name: run_name.to_owned(),
            parent: parent.map(|p| self.journal.run_ref(p)),
            start_ms: now_ms(),
            tags: tags.clone(),
            id: None,
        }])?;
        self.journal.set_key(&run_id, &key);
        let parent_tag = parent.map(|p| ("mlflow.parentRunId".to_owned(), p.to_owned()));
        let run = RunState::created(tags.into_iter().chain(parent_tag));
        self.state().insert(run_id.clone(), run);
        Ok(run_id)
    }

    fn enqueue(&self, run_id: &str, item: LogItem) -> Result<()> {
        validate::item(&item)?;
        if !self
            .state()
            .entry(run_id.to_owned())
            .or_default()
            .record(run_id, &item)?
        {
            return Ok(());
        }
        self.queue.push(run_id, item);
        Ok(())
    }

    fn upload_artifact(&self, run_id: &str, name: &str, bytes: &[u8]) -> Result<()> {
        // Queued items first, so the journal keeps the order of logging.
        self.queue.flush()?;
        self.journal.append_artifact(run_id, name, bytes)
    }

    fn set_status(&self, run_id: &str, status: RunStatus) -> Result<()> {
        let flushed = self.queue.flush();
        let journaled = self.journal.append(&[Record::Status {
            run: self.journal.run_ref(run_id),
            status,
            end_ms: (status != RunStatus::Running).then(now_ms),
        }]);
        self.state().entry(run_id.to_owned()).or_default().open = status == RunStatus::Running;
        flushed.and(journaled)
    }

    fn flush(&self) -> Result<()> {
        self.queue.flush()
    }

    fn run_data(&self, run_id: &str) -> Result<RunData> {
        self.state()
            .get(run_id)
            .map(RunState::data)
            .ok_or_else(|| Error::UnknownRun {
                run_id: run_id.to_owned(),
                url: format!("{OFFLINE_SCHEME}{}", self.journal.dir().display()),
            })
    }

    fn runs(&self) -> &RunStack {
        &self.runs
    }
}

impl Drop for OfflineBackend {
    /// Journals what is queued, ends the runs left open as FINISHED, and says where the journal is.
    fn drop(&mut self) {
        if let Err(e) = self.queue.flush() {
            eprintln!("sapsan: could not journal everything: {e}");
        }
        let open = close_open_runs(&self.state);
        let recs = status_records(&self.journal, &open, RunStatus::Finished);
        if let Err(e) = self.journal.append(&recs) {
            eprintln!("sapsan: could not journal the end of the open runs: {e}");
        }
        self.runs.drain();
        print_upload_hint(&self.journal);
    }
}

/// Where offline mode is asked for by the environment: the journal root, or `None` for online.
/// `lookup` reads a variable (`std::env::var` in [`backend_from_env`]).
pub fn offline_root(lookup: impl Fn(&str) -> Option<String>) -> Option<PathBuf> {
    if let Some(uri) = lookup("MLFLOW_TRACKING_URI")
        && let Some(path) = uri.strip_prefix(OFFLINE_SCHEME)
    {
        let p = path.trim_start_matches("//");
        return Some(if p.is_empty() {
            journal::journal_root()
        } else {
            PathBuf::from(p)
        });
    }
    match lookup(OFFLINE_ENV).as_deref().map(str::to_ascii_lowercase) {
        Some(v) if v == "1" || v == "true" || v == "yes" => Some(journal::journal_root()),
        _ => None,
    }
}

/// The backend the environment asks for: [`OfflineBackend`] with `MLFLOW_TRACKING_URI=offline:<dir>`
/// or `SAPSAN_OFFLINE=1`, else [`MlflowBackend::from_env`]. The experiment is
/// `MLFLOW_EXPERIMENT_NAME`, else `experiment`.
pub fn backend_from_env() -> Result<Box<dyn Backend>> {
    let get = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    match offline_root(get) {
        Some(root) => {
            let exp = get("MLFLOW_EXPERIMENT_NAME").unwrap_or_else(|| DEFAULT_EXPERIMENT.into());
            Ok(Box::new(OfflineBackend::new(&exp, &root)?))
        }
        None => Ok(Box::new(MlflowBackend::from_env()?)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn environment_selects_offline_mode() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |k: &str| {
                pairs
                    .iter()
                    .find(|(n, _)| *n == k)
                    .map(|(_, v)| v.to_string())
            }
        };
        assert_eq!(
            offline_root(env(&[("MLFLOW_TRACKING_URI", "offline:/tmp/j")])),
            Some(PathBuf::from("/tmp/j"))
        );
        assert!(offline_root(env(&[("SAPSAN_OFFLINE", "1")])).is_some());
        assert_eq!(
            offline_root(env(&[("MLFLOW_TRACKING_URI", "http://h:5000")])),
            None
        );
        assert_eq!(offline_root(env(&[("SAPSAN_OFFLINE", "0")])), None);
    }

    #[test]
    fn journals_runs_nesting_and_statuses() {
        let tmp = tempfile::tempdir().unwrap();
        // Out of the signal path: the signals tests run `kill_all` in this same process, which
        // would journal KILLED for these runs halfway through.
        let b = OfflineBackend::with_signals("exp", tmp.path(), false).unwrap();
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
