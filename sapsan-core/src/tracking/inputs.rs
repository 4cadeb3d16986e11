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
