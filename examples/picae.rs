//! Sapsan's PICAE example: the physics-informed convolutional autoencoder reconstructs velocity
//! cubes with a divergence-free output, tracked in MLflow through the same `Train` / `Evaluate`
//! as the other estimators.
//!
//! `cargo run --example picae`:
//! 1. writes the synthetic data (32^3 filtered velocity `u`) into `./data` unless it is there
//!    (`SAPSAN_DATA_DIR` picks another directory);
//! 2. samples each cube to 16^3 and trains PICAE (Sapsan's layers and defaults, but `n_epochs` 30
//!    and `lr` 1e-2) on checkpoints 0-3 (three train, one validates), the velocity being both the
//!    features and the target (Sapsan's example feeds random normal data instead);
//! 3. evaluates it on checkpoint 4 in a run nested under the train run and prints the MSE and
//!    `max |div u| / max |u|` of the prediction next to that of the target, then
//!    `train run: <id>` and `evaluate run: <id>`.
//!
//! What to expect: the prediction's divergence is rounding (about 1e-7) whatever the training
//! did; the target's, with the same central differences, is of order 0.1 (the decimated
//! velocity is divergence-free only in the continuum). The train run logs it as
//! `train - max divergence` (on the validation cube), which the evaluate run copies. With three
//! independent cubes to learn from, the 48-number bottleneck fits the training cubes and does
//! not generalise (measured: train MSE 0.66 -> 0.39 in 30 epochs, validation and checkpoint 4
//! MSE 0.66, the target's variance; prediction divergence 6.5e-8, target 6.2e-2). The example
//! shows the estimator and its tracking; about 20 s in a debug build on two busy cores.
//!
//! Tracking: `MLFLOW_TRACKING_URI` / `MLFLOW_EXPERIMENT_NAME` when set, else a local MLflow
//! server on localhost:5000 (started when none runs there).
use std::path::PathBuf;

use sapsan::data::{CheckpointConfig, DataConfig, Hdf5Dataset, synthetic};
use sapsan::estimator::picae::curl::relative_divergence;
use sapsan::estimator::{Picae, PicaeConfig, TrainOptions};
use sapsan::experiment::{Evaluate, Train};
use sapsan::tracking::Backend;
use sapsan::tracking::backend::MlflowBackendBuilder;

/// Grid of the synthetic files (the quickstart's).
const GRID: usize = 32;
/// Edge of the sampled cubes.
const CUBE: usize = 16;

fn main() {
    sapsan::diag::init_logger();
    if let Err(e) = run() {
        eprintln!("picae failed: {e}");
        std::process::exit(1);
    }
}

/// Each checkpoint's velocity cube sampled to `CUBE`^3, as one sample.
fn cubes(time: Vec<usize>) -> CheckpointConfig {
    CheckpointConfig {
        time,
        initial_size: [GRID; 3],
        sample_to_size: Some([CUBE; 3]),
        time_granularity: 1.0,
        batch_size: [CUBE; 3],
        batch_num: 1,
    }
}

fn run() -> sapsan::Result<()> {
    let dir =
        std::env::var_os("SAPSAN_DATA_DIR").map_or_else(|| PathBuf::from("data"), PathBuf::from);
    synthetic::generate(&dir, GRID, &[0, 1, 2, 3, 4], 0)?;
    // The velocity is both input and target: an autoencoder.
    let files = DataConfig::synthetic(&dir, GRID).path;
    let data = DataConfig::new(files, [synthetic::FEATURE]).with_target([synthetic::FEATURE]);

    let backend = MlflowBackendBuilder::from_env()?.build()?;
    println!(
        "[picae] MLflow at {}, experiment {:?}",
        backend.tracking_uri(),
        backend.experiment_name()
    );
    let config = PicaeConfig::default()
        .with_n_epochs(30)
        .with_lr(1e-2)
        .with_kwarg("sampled", (CUBE, CUBE, CUBE));
    let model = Picae::with_options(
        config,
        TrainOptions {
            progress: false,
            ..TrainOptions::default()
        },
    )?;
    let mut train = Train::new(
        model,
        Hdf5Dataset::new(data.clone(), cubes(vec![0, 1, 2, 3]), 0.75),
        &backend,
    );
    let trained = train.run()?;
    let (first, last) = (
        trained.report.history.first(),
        trained.report.history.last(),
    );
    println!(
        "[picae] {} epochs: train MSE {:.4e} -> {:.4e}, validation MSE {:.4e} -> {:.4e}",
        trained.report.final_epoch,
        first.map_or(f64::NAN, |r| r.train_loss),
        last.map_or(f64::NAN, |r| r.train_loss),
        first.map_or(f64::NAN, |r| r.valid_loss),
        last.map_or(f64::NAN, |r| r.valid_loss),
    );
    let mut eval = Evaluate::new(
        train.model(),
        Hdf5Dataset::new(data, cubes(vec![4]), 1.0),
        &backend,
    );
    let out = eval.run()?;
    if let Some(mse) = out.mse {
        println!("[picae] checkpoint 4: MSE {mse:.4e}");
    }
    println!(
        "[picae] max |div u| / max |u|: prediction {:.3e}, target {}",
        relative_divergence(&out.prediction)?,
        match &out.target {
            Some(t) => format!("{:.3e}", relative_divergence(t)?),
            None => "-".into(),
        }
    );
    backend.close_active_runs()?;
    backend.flush()?;
    println!();
    println!("  train run:     {}", train.run_id().unwrap_or("-"));
    println!("  evaluate run:  {}", eval.run_id().unwrap_or("-"));
    Ok(())
}
