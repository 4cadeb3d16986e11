//! Train / Evaluate: Sapsan's experiment API, written with `#[tracked]`, recording exactly the
//! three tables of Sapsan's MLflow tracking page.
//!
//! ```no_run
//! use sapsan_core::data::{CheckpointConfig, DataConfig, Hdf5Dataset};
//! use sapsan_core::estimator::{Cnn3d, Cnn3dConfig};
//! use sapsan_core::experiment::{Evaluate, Train};
//! use sapsan_core::tracking::MlflowBackend;
//! # fn main() -> sapsan_core::Result<()> {
//! let backend = MlflowBackend::from_env()?;
//! let data = DataConfig::synthetic("data", 32);
//! let chkpnt = CheckpointConfig { time: vec![0, 1, 2, 3], ..CheckpointConfig::default() };
//! let model = Cnn3d::new(Cnn3dConfig::default().with_n_epochs(50), 3, [1, 16, 16, 16])?;
//! let mut train = Train::new(model, Hdf5Dataset::new(data.clone(), chkpnt, 0.75), &backend);
//! train.run()?; // the train run stays open ...
//! let test = CheckpointConfig { time: vec![4], ..CheckpointConfig::default() };
//! let mut eval = Evaluate::new(train.model(), Hdf5Dataset::new(data, test, 1.0), &backend);
//! let cubes = eval.run()?; // ... and the evaluate run nests under it
//! println!("train {:?}, evaluate {:?}, MSE {:?}", train.run_id(), eval.run_id(), cubes.mse);
//! # Ok(()) }
//! ```
//!
//! What lands in MLflow:
//!
//! | | Train | Evaluate |
//! |---|---|---|
//! | params | `model - ...` (with kwargs), `data - ...`, `chkpnt - ...` | the same: its own data and checkpoint params, the model's params; `n_output_channels` |
//! | metrics | `train - loss`, `valid - loss`, `lr` per epoch (step = epoch, logged while training); the estimator's own metrics as `train - <name>`; `train - final epoch`; `train - runtime` | `eval - MSE Loss`, `eval - KS Stat` (-1 without a target); `eval - gradient model MSE` when [`Evaluate::with_gradient_model`] names the filter width; `eval - runtime`; copies of the train run's `train - ...` metrics and of its latest `valid - loss` and `lr` |
//! | artifacts | `model_details.txt`, `model_forward.txt`, `runtime_log.html`, `model.safetensors` | `pdf_cdf.png` (with a target), `slices_plot.png`, `spectrum.png` (spectra of target and prediction, kinetic energy for 3-component data) |
//!
//! Both take any [`Estimator`] (Sapsan's [`Cnn3d`], the main job's [`LocalClosure`](crate::estimator::LocalClosure),
//! Sapsan's kernel ridge regression [`Krr`](crate::estimator::Krr), ...).
//! Every artifact is built in memory; nothing is written to the working directory.
use ndarray::{Array5, ArrayView5, s};

use crate::analysis::{
    self, EpochLoss, GradientModel, KsResult, SlicePanel, SortedSample, Spectrum, ks_2samp_sorted,
    mean_spectrum, pdf_cdf_png_sorted, runtime_log_html, spectrum_png,
};
use crate::data::{CubeLayout, Hdf5Dataset, Loaded, Samples, restore_cube};
use crate::error::{Error, Result};
use crate::estimator::{self, Cnn3d, Cnn3dConfig, Estimator, TrainReport};
use crate::tracked;
use crate::tracking::backend::MODEL_URI_SCHEME;
use crate::tracking::run::scope::{BackendArg, BackendHandle, Report, TrackedOutput};
use crate::tracking::{DataContext, MlflowBackend};

mod logged;
#[cfg(test)]
mod params;
pub mod quickstart;

/// Name of the weights artifact of a train run (safetensors), read by [`load_model_from_run`].
pub const WEIGHTS_ARTIFACT: &str = "model.safetensors";

/// Model metrics logged per epoch by [`Train`] and not prefixed `train - `: [`Evaluate`] copies
/// their latest values from the train run (the run scope copies the `train - ` ones).
pub const UNPREFIXED_MODEL_METRICS: [&str; 2] = ["valid - loss", "lr"];

// ---- train ---------------------------------------------------------------------------------

/// What [`Train::run`] produced; it reports `train - final epoch` and the train artifacts.
#[derive(Debug, Clone)]
pub struct TrainOutput {
    /// Losses and learning rate of every epoch, the final epoch, early stopping.
    pub report: TrainReport,
    /// `model_details.txt`.
    pub details: String,
    /// `model_forward.txt`.
    pub forward: String,
    /// `runtime_log.html`.
    pub runtime_log: String,
    /// `model.safetensors`: the trained weights.
    pub weights: Vec<u8>,
    /// The trained model as an MLflow logged model (`None` when the server took none).
    pub model_id: Option<String>,
    /// The train run's id (`None` only when the run could not be created).
    pub run_id: Option<String>,
}

impl TrackedOutput for TrainOutput {
    fn report<'a>(&'a self, r: &mut Report<'a>) {
        r.final_epoch(self.report.final_epoch as u64)
            .artifact("model_details.txt", self.details.as_bytes())
            .artifact("model_forward.txt", self.forward.as_bytes())
            .artifact("runtime_log.html", self.runtime_log.as_bytes())
            .artifact(WEIGHTS_ARTIFACT, &self.weights);
    }
}

/// Sapsan's `Train(model, data_parameters, backend).run()`: trains an estimator (Sapsan's CNN3d
/// by default) on a dataset in a top-level MLflow run named `train`, which stays open so
/// evaluations nest under it.
#[derive(Debug)]
pub struct Train<'b, E: Estimator = Cnn3d> {
    model: E,
    dataset: Hdf5Dataset,
    loaded: Option<Loaded>,
    backend: BackendHandle<'b>,
    run_id: Option<String>,
}

impl<'b, E: Estimator> Train<'b, E> {
    /// Trains `model` on `dataset` (read when [`Train::run`] runs), tracked on `backend`
    /// (`&backend` or an `Arc`).
    pub fn new(model: E, dataset: Hdf5Dataset, backend: impl BackendArg<'b>) -> Self {
        Self {
            model,
            dataset,
            loaded: None,
            backend: backend.backend_handle(),
            run_id: None,
        }
    }

    /// Trains on samples already read from `dataset` (its [`Hdf5Dataset::load`]) instead of
    /// reading the files again; `dataset` still provides the logged parameters.
    pub fn with_loaded(mut self, loaded: Loaded) -> Self {
        self.loaded = Some(loaded);
        self
    }

    /// Ends the backend's open runs, starts the train run, logs the params, trains (logging each
    /// epoch's losses and learning rate as it ends), then logs `train - final epoch`, the
    /// artifacts and `train - runtime`. An error ends the run FAILED and is returned.
    pub fn run(&mut self) -> Result<TrainOutput> {
        let run = train_run_tracked(
            &mut self.model,
            &self.dataset,
            self.loaded.as_ref(),
            self.backend.clone(),
        );
        self.run_id = run.run_id;
        run.output.map(|mut o| {
            o.run_id = self.run_id.clone();
            o
        })
    }

    /// The train run's id, once [`Train::run`] has started it.
    pub fn run_id(&self) -> Option<&str> {
        self.run_id.as_deref()
    }

    /// The model (trained after [`Train::run`]).
    pub fn model(&self) -> &E {
        &self.model
    }

    /// Takes the model out.
    pub fn into_model(self) -> E {
        self.model
    }
}

fn no_target(dataset: &Hdf5Dataset, what: &str) -> Error {
    Error::Data {
        path: dataset.data.path.clone().into(),
        dataset: None,
        reason: format!(
            "{what} needs a target, but data - target is None; set it (DataConfig::with_target)"
        ),
    }
}

#[tracked(train, name = "train", backend = backend,
          params(*model.config(), dataset.data, dataset.chkpnt))]
fn train_run<E: Estimator + ?Sized>(
    model: &mut E,
    dataset: &Hdf5Dataset,
    loaded: Option<&Loaded>,
    backend: BackendHandle<'_>,
) -> Result<TrainOutput> {
    let read;
    let loaded = match loaded {
        Some(l) => l,
        None => {
            read = dataset.load()?;
            &read
        }
    };
    let train_y = loaded
        .train
        .target
        .as_ref()
        .ok_or_else(|| no_target(dataset, "training"))?;
    // Like Sapsan without a validation split: validate on the training samples.
    let (valid_x, valid_y) = if loaded.valid.is_empty() {
        (&loaded.train.features, train_y)
    } else {
        let y = loaded.valid.target.as_ref();
        (
            &loaded.valid.features,
            y.ok_or_else(|| no_target(dataset, "validation"))?,
        )
    };
    logged::log_dataset(
        &*backend,
        dataset,
        &loaded.train,
        DataContext::Training,
        &[],
    )?;
    let report = model.fit(
        estimator::Samples::new(&loaded.train.features, train_y),
        estimator::Samples::new(valid_x, valid_y),
        // Only enqueues: the epochs never wait for MLflow.
        &mut |r| {
            let step = r.epoch as i64;
            backend.log_metric_step("train - loss", r.train_loss, step)?;
            backend.log_metric_step("valid - loss", r.valid_loss, step)?;
            backend.log_metric_step("lr", r.lr, step)
        },
    )?;
    let history: Vec<EpochLoss> = report
        .history
        .iter()
        .map(|r| EpochLoss {
            epoch: r.epoch,
            train: r.train_loss,
            valid: Some(r.valid_loss),
        })
        .collect();
    for (name, value) in model.metrics() {
        backend.log_metric(&format!("train - {name}"), value)?;
    }
    let weights = model.save_weights()?;
    let model_id = logged::log_trained_model(
        &*backend,
        model,
        &weights,
        loaded.train.features.shape(),
        train_y.shape(),
    )?;
    Ok(TrainOutput {
        details: model.model_details(),
        forward: model.model_forward(),
        runtime_log: runtime_log_html(&history),
        weights,
        model_id,
        report,
        run_id: None,
    })
}

/// `model.safetensors` of a train run (`run_id`), or of a logged model (`models:/<id>`).
fn download_weights(backend: &MlflowBackend, run_id: &str) -> Result<Vec<u8>> {
    if run_id.starts_with(MODEL_URI_SCHEME) {
        backend.download_model_file(run_id, WEIGHTS_ARTIFACT)
    } else {
        backend.download_artifact(run_id, WEIGHTS_ARTIFACT)
    }
}

/// Reads the weights a [`Train`] run logged (`model.safetensors`) back into a model; `run_id` is
/// the train run's id, or its logged model as `models:/<id>` ([`TrainOutput::model_id`]).
/// `config`, `in_channels` and `target_shape` must describe the trained architecture.
pub fn load_model_from_run(
    backend: &MlflowBackend,
    run_id: &str,
    config: Cnn3dConfig,
    in_channels: usize,
    target_shape: [usize; 4],
) -> Result<Cnn3d> {
    let bytes = download_weights(backend, run_id)?;
    Cnn3d::load_safetensors(&bytes, config, in_channels, target_shape)
}

/// Replaces `model`'s trained state with the weights a [`Train`] run logged
/// (`model.safetensors`; `run_id` may be its logged model, `models:/<id>`); `model` must have
/// the trained architecture.
pub fn load_weights_from_run(
    backend: &MlflowBackend,
    run_id: &str,
    model: &mut (impl Estimator + ?Sized),
) -> Result<()> {
    let bytes = download_weights(backend, run_id)?;
    model.load_weights(&bytes)
}

// ---- evaluate ------------------------------------------------------------------------------

/// What [`Evaluate::run`] produced: the restored full cubes, the metrics and the plots.
#[derive(Debug, Clone)]
pub struct EvalOutput {
    /// The target cubes `(checkpoints, C_target, D, H, W)`, when the data has a target.
    pub target: Option<Array5<f32>>,
    /// The predicted cubes, same shape.
    pub prediction: Array5<f32>,
    /// Mean squared error of prediction against target (`eval - MSE Loss`).
    pub mse: Option<f64>,
    /// Kolmogorov-Smirnov test of target against prediction over all values (`eval - KS Stat`).
    pub ks: Option<KsResult>,
    /// Mean squared error of the gradient model against the target (`eval - gradient model
    /// MSE`), when [`Evaluate::with_gradient_model`] set it up and the data has a target.
    pub gradient_model_mse: Option<f64>,
    /// `pdf_cdf.png` (with a target).
    pub pdf_cdf_png: Option<Vec<u8>>,
    /// `slices_plot.png`.
    pub slices_png: Vec<u8>,
    /// Spectrum of the target (mean over its checkpoints), when the data has a target: kinetic
    /// energy for 3-component data, power otherwise.
    pub target_spectrum: Option<Spectrum>,
    /// Spectrum of the prediction, the same way.
    pub prediction_spectrum: Spectrum,
    /// `spectrum.png`: both spectra on log-log axes with a k^(-5/3) reference line.
    pub spectrum_png: Vec<u8>,
    /// The logged model of the train run this evaluation nests under, which its metrics measure.
    pub model_id: Option<String>,
    /// The evaluate run's id (`None` only when the run could not be created).
    pub run_id: Option<String>,
}

impl TrackedOutput for EvalOutput {
    fn report<'a>(&'a self, r: &mut Report<'a>) {
        r.metric("KS Stat", self.ks.map_or(-1.0, |k| k.statistic));
        if let Some(mse) = self.mse {
            r.metric("MSE Loss", mse);
        }
        if let Some(mse) = self.gradient_model_mse {
            r.metric("gradient model MSE", mse);
        }
        if let Some(png) = &self.pdf_cdf_png {
            r.artifact("pdf_cdf.png", png);
        }
        r.artifact("slices_plot.png", &self.slices_png);
        r.artifact("spectrum.png", &self.spectrum_png);
        if let Some(id) = &self.model_id {
            r.model(id.clone());
        }
    }
}

/// Sapsan's `Evaluate(model, data_parameters, backend).run()`: predicts every sample of a
/// dataset, restores the full cubes and compares them with the target, in an MLflow run named
/// `evaluate` nested under the backend's open train run (top-level when there is none) and ended
/// when done.
#[derive(Debug)]
pub struct Evaluate<'m, 'b, E: Estimator + ?Sized = Cnn3d> {
    model: &'m E,
    dataset: Hdf5Dataset,
    samples: Option<(Samples, CubeLayout)>,
    gradient_model: Option<GradientModel>,
    backend: BackendHandle<'b>,
    run_id: Option<String>,
}

impl<'m, 'b, E: Estimator + ?Sized> Evaluate<'m, 'b, E> {
    /// Evaluates `model` on every checkpoint of `dataset` (read when [`Evaluate::run`] runs),
    /// tracked on `backend`.
    pub fn new(model: &'m E, dataset: Hdf5Dataset, backend: impl BackendArg<'b>) -> Self {
        Self {
            model,
            dataset,
            samples: None,
            gradient_model: None,
            backend: backend.backend_handle(),
            run_id: None,
        }
    }

    /// Also computes the gradient model (the features must be the filtered velocity, the target
    /// the stress components `model` names) and logs its MSE as `eval - gradient model MSE`.
    pub fn with_gradient_model(mut self, model: GradientModel) -> Self {
        self.gradient_model = Some(model);
        self
    }

    /// Evaluates samples already read from `dataset` (its [`Hdf5Dataset::load_all`]).
    pub fn with_samples(mut self, samples: Samples, layout: CubeLayout) -> Self {
        self.samples = Some((samples, layout));
        self
    }

    /// Starts the evaluate run, logs the params, predicts all samples, restores the cubes, logs
    /// `eval - KS Stat`, `eval - MSE Loss`, `eval - runtime`, the plots (`spectrum.png`
    /// included) and the copied train metrics, and ends the run. An error ends the run FAILED and is returned.
    pub fn run(&mut self) -> Result<EvalOutput> {
        let run = evaluate_run_tracked(
            self.model,
            &self.dataset,
            self.samples.as_ref().map(|(s, l)| (s, l)),
            self.gradient_model.as_ref(),
            self.backend.clone(),
        );
        self.run_id = run.run_id;
        run.output.map(|mut o| {
            o.run_id = self.run_id.clone();
            o
        })
    }

    /// The evaluate run's id, once [`Evaluate::run`] has started it.
    pub fn run_id(&self) -> Option<&str> {
        self.run_id.as_deref()
    }
}

#[tracked(evaluate, name = "evaluate", backend = backend,
          params(*model.config(), dataset.data, dataset.chkpnt))]
fn evaluate_run<E: Estimator + ?Sized>(
    model: &E,
    dataset: &Hdf5Dataset,
    samples: Option<(&Samples, &CubeLayout)>,
    gradient_model: Option<&GradientModel>,
    backend: BackendHandle<'_>,
) -> Result<EvalOutput> {
    copy_model_metrics(&backend)?;
    let read;
    let (samples, layout) = match samples {
        Some(s) => s,
        None => {
            read = dataset.load_all()?;
            (&read.0, &read.1)
        }
    };
    if !layout.is_complete() {
        let all: usize = layout.blocks.iter().product();
        return Err(Error::Setting {
            name: "chkpnt - batch_num".into(),
            value: dataset.chkpnt.batch_num.to_string(),
            reason: format!(
                "Evaluate restores full cubes, but only {} of the {all} sub-cubes of each cube are \
                 kept; set batch_num to at least {all}",
                layout.per_cube
            ),
        });
    }
    let model_id = logged::parent_model(&*backend);
    logged::log_dataset(
        &*backend,
        dataset,
        samples,
        DataContext::Evaluation,
        model_id.as_slice(),
    )?;
    let prediction = restore(model.predict(&samples.features)?.view(), layout)?;
    backend.log_parameter("n_output_channels", &prediction.shape()[1].to_string())?;
    let target = match &samples.target {
        Some(t) => Some(restore(t.view(), layout)?),
        None => None,
    };
    let gradient_model_mse = match (gradient_model, &target) {
        (Some(g), Some(t)) => {
            let features = restore(samples.features.view(), layout)?;
            Some(gradient_model_mse(g, &features, t)?)
        }
        _ => None,
    };
    let pred_values = values(&prediction);
    let (mut mse, mut ks, mut pdf_cdf_png) = (None, None, None);
    let slices_png = match &target {
        Some(t) => {
            let target_values = values(t);
            mse = Some(analysis::mse(target_values, pred_values)?);
            let (st, sp) = SortedSample::new_pair(target_values, pred_values)?;
            let k = ks_2samp_sorted(&st, &sp);
            pdf_cdf_png = Some(pdf_cdf_png_sorted(&st, &sp, &k)?);
            ks = Some(k);
            analysis::slices_png(
                first_slice(t),
                first_slice(&prediction),
                "Target",
                "Prediction",
            )?
        }
        None => analysis::plots::render_slices(&[SlicePanel {
            title: "Prediction",
            data: first_slice(&prediction),
        }])?,
    };
    let target_spectrum = target
        .as_ref()
        .map(|t| mean_spectrum(t.view()))
        .transpose()?;
    let prediction_spectrum = mean_spectrum(prediction.view())?;
    let spectrum_png = spectrum_png(target_spectrum.as_ref(), &prediction_spectrum)?;
    Ok(EvalOutput {
        target,
        prediction,
        mse,
        ks,
        gradient_model_mse,
        pdf_cdf_png,
        slices_png,
        target_spectrum,
        prediction_spectrum,
        spectrum_png,
        model_id,
        run_id: None,
    })
}

/// MSE of the gradient model computed from the filtered velocity `features` against `target`,
/// both restored cubes `(checkpoints, C, D, H, W)`.
fn gradient_model_mse(
    model: &GradientModel,
    features: &Array5<f32>,
    target: &Array5<f32>,
) -> Result<f64> {
    let channels = target.shape()[1];
    if model.components.len() != channels {
        return Err(Error::Setting {
            name: "gradient model components".into(),
            value: format!("{:?}", model.components),
            reason: format!(
                "the target has {channels} channels; name one stress component [i, j] per channel"
            ),
        });
    }
    let (mut sum, mut n) = (0.0, 0usize);
    for (u, t) in features.outer_iter().zip(target.outer_iter()) {
        for (tau, t) in model.predict(u)?.iter().zip(t.outer_iter()) {
            for (p, t) in tau.iter().zip(t.iter()) {
                sum += (p - f64::from(*t)).powi(2);
                n += 1;
            }
        }
    }
    Ok(sum / n.max(1) as f64)
}

/// Copies the latest [`UNPREFIXED_MODEL_METRICS`] of the parent (train) run into the active
/// evaluate run, so both runs show all model metrics.
fn copy_model_metrics(backend: &BackendHandle<'_>) -> Result<()> {
    let runs = backend.runs().snapshot();
    let Some(parent) = runs.len().checked_sub(2).map(|i| &runs[i]) else {
        return Ok(());
    };
    let data = backend.run_data(parent)?;
    for key in UNPREFIXED_MODEL_METRICS {
        if let Some(v) = data.metrics.get(key) {
            backend.log_metric(key, *v)?;
        }
    }
    Ok(())
}

fn restore(subcubes: ArrayView5<f32>, layout: &CubeLayout) -> Result<Array5<f32>> {
    restore_cube(subcubes, layout.cube_size)
}

/// The values of a cube in standard layout (what [`restore_cube`] returns).
fn values(cube: &Array5<f32>) -> &[f32] {
    cube.as_slice().unwrap_or(&[])
}

/// First checkpoint, first channel, first index along the first spatial axis.
fn first_slice(cube: &Array5<f32>) -> ndarray::ArrayView2<'_, f32> {
    cube.slice(s![0, 0, 0, .., ..])
}

#[cfg(test)]
mod tests;
