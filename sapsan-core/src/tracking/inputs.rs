//! What MLflow 3 records beside params and metrics: the datasets a run read
//! ([`DatasetInput`], `runs/log-inputs`) and the models it produced ([`LoggedModel`],
//! `logged-models` plus `runs/outputs`). Both go through the one pipeline like everything else:
//! journaled, replayed by the uploader, carried by offline journals and `sapsan sync`.
use serde::{Deserialize, Serialize};

/// Tag on a dataset input saying what the run used it for (MLflow's name).
pub const CONTEXT_TAG: &str = "mlflow.data.context";

/// A dataset as MLflow stores it. `source`, `schema` and `profile` are JSON texts (MLflow keeps
/// them as strings; the UI parses them).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dataset {
    /// Name shown in the runs table's Dataset column.
    pub name: String,
    /// Content digest, 8-10 characters, the same for the same data.
    pub digest: String,
    /// Kind of source (`"local"` for files on this machine).
    pub source_type: String,
    /// Where the data came from, as JSON (for files: `{"uri": ...}` plus anything useful).
    pub source: String,
    /// Its columns or tensors with shapes and types, as JSON.
    pub schema: String,
    /// Summary statistics (sample count), as JSON.
    pub profile: String,
}

/// What a run used a dataset for: the value of its [`CONTEXT_TAG`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DataContext {
    /// Read to train a model (`"training"`).
    Training,
    /// Read to evaluate one (`"evaluation"`).
    Evaluation,
}

impl DataContext {
    /// The tag value MLflow's UI shows.
    pub fn as_str(self) -> &'static str {
        match self {
            DataContext::Training => "training",
            DataContext::Evaluation => "evaluation",
        }
    }
}

/// A dataset a run read, with what it read it for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DatasetInput {
    /// The dataset.
    pub dataset: Dataset,
    /// Training or evaluation.
    pub context: DataContext,
}

/// A model to log as an MLflow 3 logged model (see [`crate::tracking::Backend::log_model`]):
/// created with its source run, params and tags, its files uploaded under the model's own
/// artifact location, then finalized READY and recorded as an output of the run.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LoggedModel {
    /// Name shown in the runs table's Models column.
    pub name: String,
    /// Free-form model type (for example `"candle"`).
    pub model_type: Option<String>,
    /// Params (key, value), for example the run's `model - ...` params.
    pub params: Vec<(String, String)>,
    /// Tags (key, value).
    pub tags: Vec<(String, String)>,
    /// Files (path inside the model, bytes), for example the weights and an `MLmodel` file.
    pub files: Vec<(String, Vec<u8>)>,
}

/// An `MLmodel` file: MLflow's description of a model directory (flavor, weights file, source
/// run, tensor signature), so MLflow's tools and UI can read what the directory holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MlModel {
    /// Flavor name (for example `"candle"`).
    pub flavor: String,
    /// The weights file inside the model directory.
    pub data: String,
    /// Its format (for example `"safetensors"`).
    pub format: String,
    /// The architecture (for example `"CNN3d"`).
    pub architecture: String,
    /// The run that produced it.
    pub run_id: String,
    /// Input tensor shape, `-1` for the batch axis.
    pub input_shape: Vec<i64>,
    /// Output tensor shape, `-1` for the batch axis.
    pub output_shape: Vec<i64>,
    /// Size of the model's files in bytes.
    pub size_bytes: usize,
}

impl MlModel {
    /// The file's text (YAML, as MLflow writes it).
    pub fn to_yaml(&self) -> String {
        let spec = |shape: &[i64]| {
            serde_json::json!([{"type": "tensor", "tensor-spec": {"dtype": "float32", "shape": shape}}])
                .to_string()
        };
        let created = chrono_like_utc(crate::tracking::now_ms());
        let q = |s: &str| serde_json::Value::from(s).to_string();
        format!(
            "artifact_path: model\n\
             flavors:\n  {flavor}:\n    architecture: {arch}\n    data: {data}\n    format: {format}\n    sapsan_version: {version}\n\
             model_size_bytes: {size}\n\
             model_uuid: {uuid}\n\
             run_id: {run}\n\
             signature:\n  inputs: '{inputs}'\n  outputs: '{outputs}'\n  params: null\n\
             utc_time_created: '{created}'\n",
            flavor = self.flavor,
            arch = q(&self.architecture),
            data = q(&self.data),
            format = q(&self.format),
            version = q(env!("CARGO_PKG_VERSION")),
            size = self.size_bytes,
            uuid = model_uuid(),
            run = q(&self.run_id),
            inputs = spec(&self.input_shape),
            outputs = spec(&self.output_shape),
        )
    }
}

/// 32 hex digits, different for every call in every process (time, process id, a counter).
fn model_uuid() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let n = N.fetch_add(1, Ordering::Relaxed);
    let mix = crc32fast::hash(&[nanos.to_le_bytes(), n.to_le_bytes()].concat());
    format!("{nanos:016x}{:08x}{mix:08x}", std::process::id())
}

/// `YYYY-MM-DD HH:MM:SS.ffffff` in UTC for `ms` since the Unix epoch (MLflow's format).
pub(crate) fn chrono_like_utc(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}.{:06}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        ms.rem_euclid(1000) * 1000
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_times_are_formatted_like_mlflow() {
        assert_eq!(chrono_like_utc(0), "1970-01-01 00:00:00.000000");
        // 2026-12-01 17:50:00.123 UTC
        assert_eq!(
            chrono_like_utc(1_796_147_400_123),
            "2026-12-01 17:50:00.123000"
        );
        assert_eq!(
            chrono_like_utc(951_782_400_000),
            "2000-02-29 00:00:00.000000"
        );
    }

    #[test]
    fn an_mlmodel_file_names_flavor_weights_run_and_signature() {
        let m = MlModel {
            flavor: "candle".into(),
            data: "model.safetensors".into(),
            format: "safetensors".into(),
            architecture: "CNN3d".into(),
            run_id: "abc".into(),
            input_shape: vec![-1, 3, 8, 8, 8],
            output_shape: vec![-1, 1, 8, 8, 8],
            size_bytes: 1234,
        };
        let y = m.to_yaml();
        assert!(
            y.starts_with("artifact_path: model\nflavors:\n  candle:\n"),
            "{y}"
        );
        assert!(y.contains("    data: \"model.safetensors\"\n"), "{y}");
        assert!(y.contains("run_id: \"abc\"\n"), "{y}");
        assert!(
            y.contains(r#"  inputs: '[{"tensor-spec":{"dtype":"float32","shape":[-1,3,8,8,8]},"type":"tensor"}]'"#),
            "{y}"
        );
        assert!(y.contains("model_size_bytes: 1234\n"), "{y}");
    }
}
