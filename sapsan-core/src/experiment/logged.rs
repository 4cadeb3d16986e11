//! What Train and Evaluate record beside Sapsan's tables (MLflow 3): the dataset each run read,
//! the trained model as a logged model, and which model an evaluation measured.
use crate::data::{Hdf5Dataset, Samples};
use crate::error::Result;
use crate::estimator::Estimator;
use crate::tracking::inputs::MlModel;
use crate::tracking::{Backend, DataContext, LoggedModel};

use super::WEIGHTS_ARTIFACT;

/// Records `samples`, read from `dataset`, as an input of the active run in `context`.
pub(super) fn log_dataset(
    backend: &dyn Backend,
    dataset: &Hdf5Dataset,
    samples: &Samples,
    context: DataContext,
    models: &[String],
) -> Result<()> {
    let Some(run) = backend.active_run_id() else {
        return Ok(());
    };
    let input = dataset.describe(samples, context)?;
    backend.log_inputs(&run, &[input], models)
}

/// A tensor shape with the batch axis as `-1`.
fn signature(shape: &[usize]) -> Vec<i64> {
    let mut s: Vec<i64> = shape.iter().map(|&d| d as i64).collect();
    if let Some(b) = s.first_mut() {
        *b = -1;
    }
    s
}

/// Logs the trained `model` (its weights, an `MLmodel` file, its `model - ...` params) as a
/// logged model of the active (train) run; its id. A server that does not take logged models
/// (MLflow before 3) costs the model entry only: the run keeps `model.safetensors` and goes on.
pub(super) fn log_trained_model<E: Estimator + ?Sized>(
    backend: &dyn Backend,
    model: &E,
    weights: &[u8],
    input_shape: &[usize],
    output_shape: &[usize],
) -> Result<Option<String>> {
    let Some(run) = backend.active_run_id() else {
        return Ok(None);
    };
    let mlmodel = MlModel {
        flavor: "candle".into(),
        data: WEIGHTS_ARTIFACT.into(),
        format: "safetensors".into(),
        architecture: model.name().to_owned(),
        run_id: run.clone(),
        input_shape: signature(input_shape),
        output_shape: signature(output_shape),
        size_bytes: weights.len(),
    };
    let logged = LoggedModel {
        name: model.name().to_owned(),
        model_type: Some("candle".into()),
        params: model.config().parameters()?.into_iter().collect(),
        tags: Vec::new(),
        files: vec![
            (WEIGHTS_ARTIFACT.to_owned(), weights.to_vec()),
            ("MLmodel".to_owned(), mlmodel.to_yaml().into_bytes()),
        ],
    };
    match backend.log_model(&run, &logged) {
        Ok(id) => Ok(id),
        Err(e) => {
            log::warn!(
                target: "sapsan::experiment",
                "the trained {} was not logged as an MLflow model ({e}); the train run keeps \
                 its {WEIGHTS_ARTIFACT}",
                model.name()
            );
            Ok(None)
        }
    }
}

/// The logged model an evaluation nested under a train run measures: the last one that run
/// logged through this backend.
pub(super) fn parent_model(backend: &dyn Backend) -> Option<String> {
    let stack = backend.runs().snapshot();
    let parent = stack.len().checked_sub(2).map(|i| &stack[i])?;
    backend.logged_models(parent).pop()
}
