//! Tracking: the [`Backend`] trait, its run stack, and the backends ([`FakeBackend`]; the MLflow one).
//!
//! A backend owns its run stack: there is no process-global run state. The seed's API
//! (`start`, `resume`, `log_metric`, `log_parameter`, `log_artifact`, `end`, `close_active_runs`,
//! `active_run_id`) is provided on top of a handful of explicit, run-id based primitives that each
//! backend implements. Logging calls only enqueue; [`Backend::flush`] waits for delivery.
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

pub mod artifacts;
pub mod client;
mod fake;
pub mod journal;
pub mod mlflow;
pub mod offline;
pub mod queue;
pub mod scope;
pub mod server;
pub mod settings;
pub mod signals;
pub mod sync;
pub mod validate;
pub use fake::FakeBackend;
pub use mlflow::{ArtifactFile, MlflowBackend, MlflowBackendBuilder, RunInfo};
pub use offline::{OfflineBackend, backend_from_env};
pub use server::{MlflowServer, ServerOptions, ensure_server};
pub use settings::{Auth, Settings};

/// Status of a run, as MLflow names it (serialized as MLflow's names: `"RUNNING"`, ...).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum RunStatus {
    /// Open.
    Running,
    /// Ended normally.
    Finished,
    /// Ended by an error or a panic.
    Failed,
    /// Ended by a signal.
    Killed,
}

impl RunStatus {
    /// MLflow's wire name (`RUNNING`, `FINISHED`, `FAILED`, `KILLED`).
    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Running => "RUNNING",
            RunStatus::Finished => "FINISHED",
            RunStatus::Failed => "FAILED",
            RunStatus::Killed => "KILLED",
        }
    }
}

/// One metric point, the same from the logging call through the journal to the log-batch
/// request. Serialized with MLflow's field names, `{"key", "value", "timestamp", "step"}`, the
/// value a JSON number or `"NaN"`, `"Infinity"`, `"-Infinity"` (bare NaN is not JSON). Read back
/// from that, from the strings [`validate::decode_f64`] accepts, and from the older journal
/// form `[key, value, timestamp, step]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Metric {
    /// Key (checked against MLflow's key rules).
    pub key: String,
    /// Value; NaN and +-inf are allowed.
    #[serde(with = "json_f64")]
    pub value: f64,
    /// Milliseconds since the Unix epoch.
    #[serde(rename = "timestamp")]
    pub timestamp_ms: i64,
    /// Step (epoch, iteration); 0 when not given.
    #[serde(default)]
    pub step: i64,
}

/// Serde adapter for metric values: a number, or MLflow's strings for NaN and +-inf.
mod json_f64 {
    use serde::{Deserializer, Serializer, de};

    pub fn serialize<S: Serializer>(v: &f64, s: S) -> Result<S::Ok, S::Error> {
        let v = *v;
        if v.is_finite() {
            s.serialize_f64(v)
        } else if v.is_nan() {
            s.serialize_str("NaN")
        } else if v > 0.0 {
            s.serialize_str("Infinity")
        } else {
            s.serialize_str("-Infinity")
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
        d.deserialize_any(Value)
    }

    /// Numbers as they are; strings as [`super::validate::decode_f64`] reads them.
    struct Value;

    impl de::Visitor<'_> for Value {
        type Value = f64;

        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a number, \"NaN\", \"Infinity\" or \"-Infinity\"")
        }

        fn visit_f64<E: de::Error>(self, v: f64) -> Result<f64, E> {
            Ok(v)
        }

        fn visit_i64<E: de::Error>(self, v: i64) -> Result<f64, E> {
            Ok(v as f64)
        }

        fn visit_u64<E: de::Error>(self, v: u64) -> Result<f64, E> {
            Ok(v as f64)
        }

        fn visit_str<E: de::Error>(self, v: &str) -> Result<f64, E> {
            super::validate::decode_f64(&serde_json::Value::from(v))
                .ok_or_else(|| E::invalid_value(de::Unexpected::Str(v), &self))
        }
    }
}

/// One item of the log queue.
#[derive(Debug, Clone, PartialEq)]
pub enum LogItem {
    /// A metric point.
    Metric(Metric),
    /// A param (write-once).
    Param {
        /// Key.
        key: String,
        /// Value, already formatted.
        value: String,
    },
    /// A tag (may be overwritten).
    Tag {
        /// Key.
        key: String,
        /// Value.
        value: String,
    },
}

/// What a run holds, as read back for copying into a nested run.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RunData {
    /// Params by key.
    pub params: BTreeMap<String, String>,
    /// Latest value of each metric by key.
    pub metrics: BTreeMap<String, f64>,
    /// Tags by key.
    pub tags: BTreeMap<String, String>,
}

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// The stack of runs a backend has started or resumed and not yet ended (innermost last).
#[derive(Debug, Default)]
pub struct RunStack(Mutex<Vec<String>>);

impl RunStack {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<String>> {
        // A panic while holding this lock cannot leave the Vec inconsistent.
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
    /// Pushes a run on top.
    pub fn push(&self, run_id: &str) {
        self.lock().push(run_id.to_owned());
    }
    /// The innermost open run.
    pub fn top(&self) -> Option<String> {
        self.lock().last().cloned()
    }
    /// Removes `run_id` wherever it is (ending a nested run never ends its parent).
    pub fn remove(&self, run_id: &str) {
        self.lock().retain(|r| r != run_id);
    }
    /// Takes all runs, innermost first.
    pub fn drain(&self) -> Vec<String> {
        let mut v = std::mem::take(&mut *self.lock());
        v.reverse();
        v
    }
    /// Whether `run_id` is open on this stack.
    pub fn contains(&self, run_id: &str) -> bool {
        self.lock().iter().any(|r| r == run_id)
    }
    /// Snapshot, outermost first.
    pub fn snapshot(&self) -> Vec<String> {
        self.lock().clone()
    }
}

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
    /// Sets the status of `run_id`; a terminal status also sets the end time. Everything queued for
    /// the run is delivered first.
    fn set_status(&self, run_id: &str, status: RunStatus) -> Result<()>;
    /// Waits until everything queued so far is delivered; returns the first delivery error.
    fn flush(&self) -> Result<()>;
    /// Params, latest metrics and tags of `run_id` (what this backend logged, or read back).
    fn run_data(&self, run_id: &str) -> Result<RunData>;
    /// This backend's run stack.
    fn runs(&self) -> &RunStack;

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
        let m = Metric {
            key: key.to_owned(),
            value,
            timestamp_ms: now_ms(),
            step,
        };
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
        let bytes = std::fs::read(path).map_err(|e| Error::io("reading artifact", path, e))?;
        self.upload_artifact(&run, name, &bytes)
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
