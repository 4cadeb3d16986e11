//! The journal's records: what one line holds.
use serde::{Deserialize, Serialize};

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
        metrics: Vec<Metric>,
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

    #[test]
    fn metrics_keep_nan_and_infinities_through_the_journal() {
        let m = |value: f64, step: i64| Metric {
            key: "loss".into(),
            value,
            timestamp_ms: 7,
            step,
        };
        let rec = Record::Batch {
            run: RunRef::Id("r".into()),
            metrics: vec![
                m(f64::NAN, 0),
                m(f64::INFINITY, 1),
                m(f64::NEG_INFINITY, 2),
                m(-0.5, 3),
            ],
            params: vec![],
            tags: vec![],
        };
        let line = serde_json::to_string(&rec).unwrap();
        assert_eq!(
            line,
            r#"{"t":"batch","run":{"id":"r"},"metrics":[{"key":"loss","value":"NaN","timestamp":7,"step":0},{"key":"loss","value":"Infinity","timestamp":7,"step":1},{"key":"loss","value":"-Infinity","timestamp":7,"step":2},{"key":"loss","value":-0.5,"timestamp":7,"step":3}]}"#
        );
        let Record::Batch { metrics, .. } = serde_json::from_str(&line).unwrap() else {
            panic!("not a batch")
        };
        assert!(metrics[0].value.is_nan());
        assert_eq!(
            metrics[1..],
            [m(f64::INFINITY, 1), m(f64::NEG_INFINITY, 2), m(-0.5, 3)]
        );
    }

    #[test]
    fn metrics_of_older_journals_and_mlflow_spellings_are_read() {
        // Before metrics were `Metric`, the journal wrote `[key, value, timestamp, step]`.
        let old = r#"{"t":"batch","run":{"key":"k"},"metrics":[["a","NaN",5,1],["b",2,5,2],["c","-Infinity",5,3]]}"#;
        let Record::Batch { metrics, .. } = serde_json::from_str(old).unwrap() else {
            panic!("not a batch")
        };
        assert_eq!(metrics.len(), 3);
        assert!(metrics[0].value.is_nan() && metrics[0].key == "a" && metrics[0].step == 1);
        assert_eq!((metrics[1].value, metrics[1].timestamp_ms), (2.0, 5));
        assert_eq!(metrics[2].value, f64::NEG_INFINITY);
        // What `validate::decode_f64` reads (MLflow's SQL store's stand-in for inf, `inf`, a
        // number in a string), and a missing step (MLflow's default, 0).
        let m: Vec<Metric> = serde_json::from_str(
            r#"[{"key":"x","value":1.7976931348623157e308,"timestamp":1},
                {"key":"x","value":"inf","timestamp":1},{"key":"x","value":"-inf","timestamp":1},
                {"key":"x","value":"0.25","timestamp":1,"step":4}]"#,
        )
        .unwrap();
        let values: Vec<f64> = m.iter().map(|m| m.value).collect();
        assert_eq!(values, [f64::MAX, f64::INFINITY, f64::NEG_INFINITY, 0.25]);
        assert_eq!((m[0].step, m[3].step), (0, 4));
        assert!(
            serde_json::from_str::<Metric>(r#"{"key":"x","value":"big","timestamp":1}"#).is_err()
        );
        assert!(
            serde_json::from_str::<Metric>(r#"{"key":"x","value":null,"timestamp":1}"#).is_err()
        );
    }
}
