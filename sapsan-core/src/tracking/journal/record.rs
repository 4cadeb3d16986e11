//! The journal's records and the line format they are written in (see the module docs).
use serde::{Deserialize, Serialize};

use crate::tracking::inputs::DatasetInput;
use crate::tracking::{Metric, RunStatus};

/// A run (or a logged model) as the journal names it.
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
    /// An artifact of a run, or a file of a logged model; its bytes are in `file` (relative to
    /// the journal directory).
    Artifact {
        /// The run, or the logged model.
        run: RunRef,
        /// Artifact path inside the run (already checked by [`crate::tracking::rest::artifacts::check_name`]).
        name: String,
        /// The file holding the bytes, relative to the journal directory.
        file: String,
    },
    /// A logged model was created (MLflow 3). Named by its key like a run; its files follow as
    /// [`Record::Artifact`]s, then [`Record::ModelReady`].
    CreateModel {
        /// Client-generated key of the model.
        key: String,
        /// Experiment name.
        experiment: String,
        /// Model name.
        name: String,
        /// The run that produced it.
        source: Option<RunRef>,
        /// Model type, if any.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        model_type: Option<String>,
        /// Params (key, value).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        params: Vec<(String, String)>,
        /// Tags (key, value), the model key among them.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        tags: Vec<(String, String)>,
        /// The id the server gave the model, when it was created at once.
        id: Option<String>,
    },
    /// A logged model's files are all uploaded: it is finalized READY.
    ModelReady {
        /// The model.
        model: RunRef,
    },
    /// Inputs of a run: datasets it read, models it used.
    Inputs {
        /// The run.
        run: RunRef,
        /// Datasets with their context.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        datasets: Vec<DatasetInput>,
        /// Logged models.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        models: Vec<RunRef>,
    },
    /// A logged model is an output of a run (the runs table's Models column).
    Outputs {
        /// The run.
        run: RunRef,
        /// The model.
        model: RunRef,
        /// Step it was logged at.
        step: i64,
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

/// Bytes before a record's JSON on a line: the checksum in 8 hex digits and a space.
const CHECKSUM_LEN: usize = 9;

/// Appends `rec` to `buf` as one journal line: `<crc32 of the JSON, 8 lowercase hex digits>
/// <JSON>\n`. On an error `buf` is left as it was.
pub(super) fn encode_line(rec: &Record, buf: &mut Vec<u8>) -> serde_json::Result<()> {
    let start = buf.len();
    buf.extend_from_slice(b"00000000 ");
    if let Err(e) = serde_json::to_writer(&mut *buf, rec) {
        buf.truncate(start);
        return Err(e);
    }
    let crc = crc32fast::hash(&buf[start + CHECKSUM_LEN..]);
    buf[start..start + 8].copy_from_slice(format!("{crc:08x}").as_bytes());
    buf.push(b'\n');
    Ok(())
}

/// Reads one journal line (without its newline). A line starting with `{` was written before
/// lines had checksums and is read as JSON alone. The error says what is wrong with the line.
pub(super) fn decode_line(line: &[u8]) -> std::result::Result<Record, String> {
    if line.first() == Some(&b'{') {
        return serde_json::from_slice(line)
            .map_err(|e| format!("bad JSON in a line without checksum: {e}"));
    }
    let stored = match (line.get(..CHECKSUM_LEN - 1), line.get(CHECKSUM_LEN - 1)) {
        (Some(hex), Some(b' ')) if hex.iter().all(u8::is_ascii_hexdigit) => {
            // Eight hex digits always parse.
            u32::from_str_radix(std::str::from_utf8(hex).unwrap_or_default(), 16).ok()
        }
        _ => None,
    };
    let Some(stored) = stored else {
        return Err("no checksum at the start of the line".to_owned());
    };
    let json = &line[CHECKSUM_LEN..];
    let actual = crc32fast::hash(json);
    if actual != stored {
        return Err(format!(
            "checksum mismatch (line says {stored:08x}, its bytes give {actual:08x})"
        ));
    }
    serde_json::from_slice(json).map_err(|e| format!("not a journal record (checksum intact): {e}"))
}

/// The run a damaged line belonged to, when its bytes still say: the `"run"` field of a batch,
/// status or artifact record, or the key of a creation record.
pub(super) fn run_of_damaged(line: &[u8]) -> Option<RunRef> {
    // Each pattern, and whether what follows is a run key (else a server run id).
    let patterns: [(&[u8], bool); 3] = [
        (br#""run":{"key":""#, true),
        (br#""run":{"id":""#, false),
        (br#""t":"create","key":""#, true),
    ];
    patterns.into_iter().find_map(|(pattern, is_key)| {
        let at = line.windows(pattern.len()).position(|w| w == pattern)?;
        let rest = &line[at + pattern.len()..];
        let name = &rest[..rest.iter().position(|&b| b == b'"')?];
        // Keys and run ids are short and plain; anything else is not trusted.
        let plain = |b: &u8| b.is_ascii_alphanumeric() || *b == b'-' || *b == b'_';
        (!name.is_empty() && name.len() <= 64 && name.iter().all(plain)).then(|| {
            let name = String::from_utf8_lossy(name).into_owned();
            if is_key {
                RunRef::Key(name)
            } else {
                RunRef::Id(name)
            }
        })
    })
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
            model_id: None,
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

    fn line(rec: &Record) -> Vec<u8> {
        let mut buf = Vec::new();
        encode_line(rec, &mut buf).unwrap();
        buf
    }

    fn finished(run: RunRef) -> Record {
        Record::Status {
            run,
            status: RunStatus::Finished,
            end_ms: Some(1_732_600_000_000),
        }
    }

    #[test]
    fn a_line_is_the_checksum_then_the_json() {
        let rec = finished(RunRef::Key("k1".into()));
        let l = line(&rec);
        // The example of the module docs.
        let doc = br#"5f3b9332 {"t":"status","run":{"key":"k1"},"status":"FINISHED","end_ms":1732600000000}"#;
        assert_eq!(l, [&doc[..], b"\n"].concat());
        assert_eq!(decode_line(&l[..l.len() - 1]), Ok(rec));
        // Appending to a buffer keeps what is in it.
        let mut buf = b"before\n".to_vec();
        encode_line(&finished(RunRef::Id("r".into())), &mut buf).unwrap();
        assert!(buf.starts_with(b"before\n") && buf.ends_with(b"}\n"));
    }

    #[test]
    fn a_changed_byte_fails_the_checksum_and_the_run_is_still_named() {
        let l = line(&finished(RunRef::Key("k1".into())));
        let body = &l[..l.len() - 1];
        // A flipped bit inside the JSON that still leaves valid JSON: only the checksum sees it.
        let mut changed = body.to_vec();
        let at = changed.windows(4).position(|w| w == b"1732").unwrap();
        changed[at] = b'2';
        let err = decode_line(&changed).unwrap_err();
        assert!(err.starts_with("checksum mismatch"), "{err}");
        assert_eq!(run_of_damaged(&changed), Some(RunRef::Key("k1".into())));
        // A damaged checksum field.
        let mut changed = body.to_vec();
        changed[3] = b'x';
        assert!(decode_line(&changed).unwrap_err().contains("no checksum"));
        // The run of each kind of record.
        let batch = line(&Record::Batch {
            run: RunRef::Id("abc123".into()),
            metrics: vec![],
            params: vec![("run".into(), "x".into())],
            tags: vec![],
        });
        assert_eq!(run_of_damaged(&batch), Some(RunRef::Id("abc123".into())));
        let create = line(&Record::Create {
            key: "k9".into(),
            experiment: "e".into(),
            name: "train".into(),
            parent: Some(RunRef::Key("k0".into())),
            start_ms: 1,
            tags: vec![],
            id: None,
        });
        assert_eq!(run_of_damaged(&create), Some(RunRef::Key("k9".into())));
        assert_eq!(run_of_damaged(b"\x00\x00garbage"), None);
        assert_eq!(run_of_damaged(br#"x "run":{"key":"a b"}"#), None);
    }

    #[test]
    fn bad_json_with_a_good_checksum_is_damage_too() {
        // Framed right (as a newer program's record type would be) but not a record we know.
        for json in [
            &br#"{"t":"rename","run":{"id":"r"}}"#[..],
            b"{\"t\":\"status\",",
            b"",
        ] {
            let l = [format!("{:08x} ", crc32fast::hash(json)).as_bytes(), json].concat();
            let err = decode_line(&l).unwrap_err();
            assert!(err.starts_with("not a journal record"), "{err}");
        }
        assert!(decode_line(b"").unwrap_err().contains("no checksum"));
    }

    #[test]
    fn lines_of_the_previous_format_are_read_as_plain_json() {
        let old =
            br#"{"t":"status","run":{"key":"k1"},"status":"FINISHED","end_ms":1732600000000}"#;
        assert_eq!(decode_line(old), Ok(finished(RunRef::Key("k1".into()))));
        let err = decode_line(br#"{"t":"status","run":{"key":"k1"},"sta"#).unwrap_err();
        assert!(
            err.starts_with("bad JSON in a line without checksum"),
            "{err}"
        );
    }
}
