//! The main job (`examples/quickstart.rs`) as a function, so tests run exactly what users run:
//! synthetic data generated when absent, an estimator trained to predict the subgrid stress `tn`
//! (tau_11) from the filtered velocity `u` (the [`LocalClosure`] by default; Sapsan's CNN3d
//! example with [`QuickstartModel::Cnn3d`]), and evaluations nested under the train run, each
//! with the gradient model as the physical baseline.
use std::path::PathBuf;
use std::time::Instant;

use crate::analysis::GradientModel;
use crate::data::{CheckpointConfig, DataConfig, Hdf5Dataset, synthetic};
use crate::error::{Error, Result};
use crate::estimator::{
    Cnn3d, Cnn3dConfig, Estimator, LocalClosure, LocalClosureConfig, TrainOptions,
};
use crate::tracking::run::scope::BackendArg;

use super::{Evaluate, Train};

#[cfg(test)]
#[test]
fn variance_is_the_mse_of_the_mean() {
    assert_eq!(variance([1.0f32, 3.0].iter()), 1.0);
    assert_eq!(variance([2.0f32; 4].iter()), 0.0);
    assert!(variance([].iter()).is_nan());
}

/// The estimator the main job trains.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum QuickstartModel {
    /// [`LocalClosure`]: predicts each point's stress from its neighbourhood; it learns the
    /// closure (R^2 >= 0.5 on held-out checkpoints). The default.
    #[default]
    LocalClosure,
    /// Sapsan's CNN3d example as Sapsan runs it: one dense map from the whole cube to the whole
    /// target cube. With a handful of cubes it does not learn a pointwise field (R^2 < 0).
    Cnn3d,
}

/// Settings of the main job. [`Quickstart::default`] is what `cargo run --example quickstart`
/// runs.
#[derive(Debug, Clone, PartialEq)]
pub struct Quickstart {
    /// Where the synthetic data lives (generated there when missing).
    pub data_dir: PathBuf,
    /// Grid points per axis of the files (Sapsan's example: 32).
    pub grid: usize,
    /// Size each cube is sampled to (Sapsan's example: 16).
    pub sample_to: usize,
    /// Checkpoints trained on (the last quarter of their sub-cubes validates).
    pub train_checkpoints: Vec<usize>,
    /// One evaluation per entry, each on its own checkpoints.
    pub evaluations: Vec<Vec<usize>>,
    /// Training epochs.
    pub n_epochs: usize,
    /// Seed of the synthetic data.
    pub seed: u64,
    /// The estimator trained.
    pub model: QuickstartModel,
}

impl Default for Quickstart {
    /// `./data`, whole 32^3 cubes (a local closure needs the resolved gradients at full
    /// resolution), the local closure trained on checkpoints 0-3 (three train, one validates)
    /// for up to 12 epochs (1024 grid points per Adam step), evaluated on checkpoint 4 and on checkpoint 5.
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("data"),
            grid: 32,
            sample_to: 32,
            train_checkpoints: vec![0, 1, 2, 3],
            evaluations: vec![vec![4], vec![5]],
            n_epochs: 12,
            seed: 0,
            model: QuickstartModel::LocalClosure,
        }
    }
}

/// One evaluation of the main job.
#[derive(Debug, Clone, PartialEq)]
pub struct EvalSummary {
    /// The evaluate run's id.
    pub run_id: String,
    /// Checkpoints evaluated.
    pub checkpoints: Vec<usize>,
    /// `eval - MSE Loss`.
    pub mse: f64,
    /// `eval - KS Stat`.
    pub ks: f64,
    /// Variance of the target values: the MSE of always predicting their mean, the baseline the
    /// MSE is to be read against.
    pub target_variance: f64,
    /// `eval - gradient model MSE`: the gradient model's MSE on the same data.
    pub gradient_model_mse: f64,
}

impl EvalSummary {
    /// Coefficient of determination of the prediction, `1 - MSE / target variance`.
    pub fn r2(&self) -> f64 {
        1.0 - self.mse / self.target_variance
    }

    /// The same for the gradient model.
    pub fn gradient_model_r2(&self) -> f64 {
        1.0 - self.gradient_model_mse / self.target_variance
    }
}

/// What the main job did.
#[derive(Debug, Clone, PartialEq)]
pub struct QuickstartRun {
    /// The train run's id.
    pub train_run_id: String,
    /// The trained model as an MLflow logged model (`None` when the server took none).
    pub model_id: Option<String>,
    /// Epochs trained.
    pub final_epoch: usize,
    /// Train and validation loss of the last epoch.
    pub final_loss: (f64, f64),
    /// The evaluations, nested under the train run.
    pub evaluations: Vec<EvalSummary>,
}

impl Quickstart {
    /// The data settings of the job.
    pub fn data(&self) -> DataConfig {
        DataConfig::synthetic(&self.data_dir, self.grid)
    }

    /// The checkpoint settings for `time`: the whole sampled cube as one sub-cube.
    pub fn checkpoints(&self, time: &[usize]) -> CheckpointConfig {
        let s = self.sample_to;
        CheckpointConfig {
            time: time.to_vec(),
            initial_size: [self.grid; 3],
            sample_to_size: Some([s; 3]),
            time_granularity: 1.0,
            batch_size: [s; 3],
            batch_num: 1,
        }
    }

    /// The gradient model of the evaluated data: tau_11 with the synthetic data's box-filter
    /// width, in cells of the sampled grid.
    pub fn gradient_model(&self) -> GradientModel {
        GradientModel::tau_11(
            synthetic::FILTER_WIDTH as f64 * self.sample_to as f64 / self.grid as f64,
        )
    }

    /// Runs the job on `backend`, telling `progress` what it does.
    pub fn run<'b>(
        &self,
        backend: impl BackendArg<'b>,
        progress: &mut dyn FnMut(&str),
    ) -> Result<QuickstartRun> {
        let backend = backend.backend_handle();
        let mut all: Vec<usize> = self.train_checkpoints.clone();
        all.extend(self.evaluations.iter().flatten());
        all.sort_unstable();
        all.dedup();
        let t = Instant::now();
        let generated = synthetic::generate(&self.data_dir, self.grid, &all, self.seed)?;
        progress(&if generated.written.is_empty() {
            format!(
                "data: {} files present in {}",
                generated.skipped.len(),
                self.data_dir.display()
            )
        } else {
            format!(
                "data: wrote {} synthetic turbulence files to {} in {:.1} s",
                generated.written.len(),
                self.data_dir.display(),
                t.elapsed().as_secs_f64()
            )
        });

        let s = self.sample_to;
        match self.model {
            QuickstartModel::LocalClosure => {
                let config = LocalClosureConfig::default()
                    .with_n_epochs(self.n_epochs)
                    .with_lr(3e-3)
                    .with_patience(5);
                let options = TrainOptions {
                    batch_size: Some(1024),
                    shuffle: true,
                    ..TrainOptions::default()
                };
                let model = LocalClosure::with_options(config, 3, 1, options)?;
                let what = format!("LocalClosure ({} parameters)", model.num_params());
                self.train_and_evaluate(model, &what, backend, progress)
            }
            QuickstartModel::Cnn3d => {
                let config = Cnn3dConfig::default().with_n_epochs(self.n_epochs);
                let model = Cnn3d::new(config, 3, [1, s, s, s])?;
                let what = format!("CNN3d ({} parameters)", model.num_params());
                self.train_and_evaluate(model, &what, backend, progress)
            }
        }
    }

    fn train_and_evaluate<'b, E: Estimator>(
        &self,
        model: E,
        what: &str,
        backend: crate::tracking::run::scope::BackendHandle<'b>,
        progress: &mut dyn FnMut(&str),
    ) -> Result<QuickstartRun> {
        let s = self.sample_to;
        let dataset =
            Hdf5Dataset::new(self.data(), self.checkpoints(&self.train_checkpoints), 0.75);
        progress(&format!(
            "train: {what} on checkpoints {:?}, {}^3 sampled to {s}^3, {} epochs",
            self.train_checkpoints, self.grid, self.n_epochs
        ));
        let t = Instant::now();
        let mut train = Train::new(model, dataset, backend.clone());
        let out = train.run()?;
        let train_run_id = out.run_id.clone().ok_or_else(no_run)?;
        if let Some(id) = &out.model_id {
            progress(&format!(
                "train: logged model {id} (load it as models:/{id})"
            ));
        }
        let last = out.report.history.last();
        let final_loss = last.map_or((f64::NAN, f64::NAN), |r| (r.train_loss, r.valid_loss));
        progress(&format!(
            "train: {} epochs in {:.1} s, loss {:.4e} (validation {:.4e}), run {train_run_id}",
            out.report.final_epoch,
            t.elapsed().as_secs_f64(),
            final_loss.0,
            final_loss.1
        ));

        let mut evaluations = Vec::new();
        for time in &self.evaluations {
            let t = Instant::now();
            let dataset = Hdf5Dataset::new(self.data(), self.checkpoints(time), 1.0);
            let mut eval = Evaluate::new(train.model(), dataset, backend.clone())
                .with_gradient_model(self.gradient_model());
            let cubes = eval.run()?;
            let summary = EvalSummary {
                run_id: cubes.run_id.clone().ok_or_else(no_run)?,
                checkpoints: time.clone(),
                mse: cubes.mse.unwrap_or(f64::NAN),
                ks: cubes.ks.map_or(-1.0, |k| k.statistic),
                target_variance: cubes
                    .target
                    .as_ref()
                    .map_or(f64::NAN, |t| variance(t.iter())),
                gradient_model_mse: cubes.gradient_model_mse.unwrap_or(f64::NAN),
            };
            progress(&format!(
                "evaluate: checkpoints {time:?} in {:.1} s, MSE {:.4e} (target variance {:.4e}, \
                 R^2 {:.3}), KS {:.4}, run {}",
                t.elapsed().as_secs_f64(),
                summary.mse,
                summary.target_variance,
                summary.r2(),
                summary.ks,
                summary.run_id
            ));
            progress(&format!(
                "evaluate: gradient model MSE {:.4e} (R^2 {:.3}) on the same data",
                summary.gradient_model_mse,
                summary.gradient_model_r2()
            ));
            evaluations.push(summary);
        }
        Ok(QuickstartRun {
            train_run_id,
            model_id: out.model_id.clone(),
            final_epoch: out.report.final_epoch,
            final_loss,
            evaluations,
        })
    }
}

/// Population variance of `values`, accumulated in `f64` (NaN when empty).
fn variance<'a>(values: impl Iterator<Item = &'a f32> + Clone) -> f64 {
    let (n, sum) = values
        .clone()
        .fold((0usize, 0.0f64), |(n, s), &v| (n + 1, s + f64::from(v)));
    let mean = sum / n as f64;
    values.map(|&v| (f64::from(v) - mean).powi(2)).sum::<f64>() / n as f64
}

fn no_run() -> Error {
    Error::NoActiveRun
}
