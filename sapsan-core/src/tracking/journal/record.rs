//! The journal's records: what one line holds.
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::tracking::{Metric, RunStatus};

/// A run as the journal names it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunRef {
    /// A run created through the journal, by its client-generated key.
    Key(String),
    /// A run that existed before (resumed by its server id).
    Id(String),
}

/// A metric value in JSON: a number, or `"NaN"`, `"Infinity"`, `"-Infinity"`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct JsonF64(pub f64);

impl Serialize for JsonF64 {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        let v = self.0;
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
}

impl<'de> Deserialize<'de> for JsonF64 {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let v = serde_json::Value::deserialize(d)?;
        crate::tracking::validate::decode_f64(&v)
            .map(JsonF64)
            .ok_or_else(|| serde::de::Error::custom(format!("not a metric value: {v}")))
    }
}

/// One metric point in the journal: `[key, value, timestamp_ms, step]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JMetric(pub String, pub JsonF64, pub i64, pub i64);

impl From<&Metric> for JMetric {
    fn from(m: &Metric) -> Self {
        JMetric(m.key.clone(), JsonF64(m.value), m.timestamp_ms, m.step)
    }
}

impl JMetric {
    /// Back to a [`Metric`].
    pub fn to_metric(&self) -> Metric {
        Metric {
            key: self.0.clone(),
            value: self.1.0,
            timestamp_ms: self.2,
            step: self.3,
        }
    }
}

/// One line of the journal.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "snake_case")]
pub enum Record {
    /// A run was started.
    Create {
        /// Client-generated key of the run.
        key: String,
        /// Experiment name.
        experiment: String,
        /// Run name.
        name: String,
        /// Parent run (nesting), if any.
        parent: Option<RunRef>,
        /// Start time, ms since the Unix epoch.
        start_ms: i64,
        /// Tags set at creation (system tags, run name, run key; not the parent id).
        tags: Vec<(String, String)>,
        /// The id the server gave the run, when it was created at once (`None`: created lazily).
        id: Option<String>,
    },
    /// Metrics, params and tags of one run (within the server's log-batch limits).
    Batch {
        /// The run.
        run: RunRef,
        /// Metric points.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        metrics: Vec<JMetric>,
        /// Params (key, value).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        params: Vec<(String, String)>,
        /// Tags (key, value).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        tags: Vec<(String, String)>,
    },
    /// The status of a run changed.
    Status {
        /// The run.
        run: RunRef,
        /// The new status (`"RUNNING"`, `"FINISHED"`, `"FAILED"` or `"KILLED"` in the file).
        status: RunStatus,
        /// End time for a terminal status.
        end_ms: Option<i64>,
    },
    /// An artifact of a run; its bytes are in `file` (relative to the journal directory).
    Artifact {
        /// The run.
        run: RunRef,
        /// Artifact path inside the run (already checked by [`crate::tracking::artifacts::check_name`]).
        name: String,
        /// The file holding the bytes, relative to the journal directory.
        file: String,
    },
}

impl Record {
    /// How many logged items the record stands for (metrics + params + tags; 1 for the others).
    pub fn items(&self) -> usize {
        match self {
            Record::Batch {
                metrics,
                params,
                tags,
                ..
            } => metrics.len() + params.len() + tags.len(),
            _ => 1,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_are_written_with_mlflows_names() {
        let rec = Record::Status {
            run: RunRef::Key("k".into()),
            status: RunStatus::Killed,
            end_ms: Some(3),
        };
        let line = serde_json::to_string(&rec).unwrap();
        assert_eq!(
            line,
            r#"{"t":"status","run":{"key":"k"},"status":"KILLED","end_ms":3}"#
        );
        assert_eq!(serde_json::from_str::<Record>(&line).unwrap(), rec);
        let all = [
            RunStatus::Running,
            RunStatus::Finished,
            RunStatus::Failed,
            RunStatus::Killed,
        ];
        for s in all {
            let json = serde_json::to_value(s).unwrap();
            assert_eq!(json, s.as_str());
            assert_eq!(serde_json::from_value::<RunStatus>(json).unwrap(), s);
        }
        // Not a status MLflow knows: the record does not parse.
        let odd = r#"{"t":"status","run":{"key":"k"},"status":"PAUSED","end_ms":null}"#;
        assert!(serde_json::from_str::<Record>(odd).is_err());
    }
}
