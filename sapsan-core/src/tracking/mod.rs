//! Tracking: runs, params, metrics and artifacts on an MLflow server, delivered through one
//! pipeline that never loses what was logged.
//!
//! ```text
//! Backend::enqueue ──> upload::queue ──> store ──> upload::Uploader ──> rest ──> MLflow
//!  (validate, record)   (bounded, in     (journal    (one retry policy,
//!                        memory)          file, or    one fan-out; the only
//!                                         memory)     sender of runs/create,
//!                                                     log-batch, statuses,
//!                                                     artifacts)
//! ```
//!
//! Where each concept lives:
//! - [`backend`]: the [`Backend`] trait (the seed's API: `start`, `resume`, `log_metric`,
//!   `log_parameter`, `log_artifact`, `end`, ...) and its implementations: [`MlflowBackend`],
//!   [`OfflineBackend`] (the store without an uploader), [`FakeBackend`] (in memory, for tests).
//! - [`run`]: the run scope the `#[tracked]` macro calls, each backend's run stack, and the
//!   SIGINT/SIGTERM path.
//! - [`upload`]: the log queue, the uploader that replays stored records to a server, and
//!   `sapsan sync` for journals left on disk.
//! - [`inputs`]: MLflow 3's dataset inputs and logged models.
//! - [`journal`]: the record format and the journal file (rotation, compaction, writer origin).
//! - [`rest`]: the one HTTP client, its settings (auth, TLS, timeouts, retries), the wire types
//!   and artifact transfer.
//! - [`server`]: probing a port and starting a local MLflow server.
//! - [`system_metrics`]: CPU, memory, disk and network samples under MLflow's `system/` names.
//! - [`validate`]: MLflow's key and value rules, shared with the derive macro.
//!
//! A backend owns its run stack: there is no process-global run state.
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub mod backend;
pub mod inputs;
pub mod journal;
pub mod rest;
pub mod run;
pub mod server;
pub mod system_metrics;
pub mod upload;
pub mod validate;

pub use backend::{
    ArtifactFile, Backend, FakeBackend, MlflowBackend, MlflowBackendBuilder, OfflineBackend,
    RunInfo, backend_from_env,
};
pub use inputs::{DataContext, Dataset, DatasetInput, LoggedModel};
pub use rest::{Auth, Settings};
pub use run::RunStack;
pub use server::{MlflowServer, ServerOptions, ensure_server};

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
    /// The logged model the value measures (MLflow 3: the model page lists it), if any: its id
    /// as the backend handed it out (see [`Backend::log_model`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_id: Option<String>,
}

impl Metric {
    /// A point of `key` at `step`, measuring no model.
    pub fn new(key: impl Into<String>, value: f64, timestamp_ms: i64, step: i64) -> Self {
        Metric {
            key: key.into(),
            value,
            timestamp_ms,
            step,
            model_id: None,
        }
    }
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
