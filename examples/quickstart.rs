//! The main job: learn the subgrid stress of synthetic turbulence and track everything in MLflow.
//!
//! `bash scripts/quickstart.sh` (or `cargo run --example quickstart`):
//! 1. writes the synthetic data (3-channel 32^3 velocity `u`, subgrid stress `tn`) into `./data`
//!    unless it is there (`SAPSAN_DATA_DIR` picks another directory);
//! 2. trains the local closure (`LocalClosure`: the stress at each point from the filtered
//!    velocity around it) on the whole 32^3 cubes of checkpoints 0-3 (`SAPSAN_EPOCHS`, default
//!    12; `SAPSAN_MODEL=cnn3d` trains Sapsan's CNN3d example instead, 16^3 cubes, 200 epochs);
//! 3. evaluates it on checkpoint 4 and on checkpoint 5, two runs nested under the train run,
//!    each printing `MSE <a> (target variance <b>, R^2 <c>)` and the gradient model's MSE;
//! 4. prints where to look.
//!
//! Tracking: `MLFLOW_TRACKING_URI` / `MLFLOW_EXPERIMENT_NAME` when set (a team server), else a
//! local MLflow server on localhost:5000, started when none runs there (it keeps running after
//! the job, as in Sapsan, so the UI stays up). On a machine with no server, `SAPSAN_OFFLINE=1`
//! (or `MLFLOW_TRACKING_URI=offline:/some/dir`) journals the runs, artifacts included, for
//! `sapsan sync <dir> --tracking-uri http://host:port` later.
use std::path::PathBuf;
use std::time::Instant;

use sapsan::experiment::quickstart::{Quickstart, QuickstartModel, QuickstartRun};
use sapsan::tracking::backend::{DEFAULT_EXPERIMENT, MlflowBackendBuilder};
use sapsan::tracking::{Backend, OfflineBackend, Settings};

fn main() {
    // The library reports through the `log` facade: show its messages as `sapsan: ...` lines.
    sapsan::diag::init_logger();
    if let Err(e) = run() {
        eprintln!("quickstart failed: {e}");
        std::process::exit(1);
    }
}

fn run() -> sapsan::Result<()> {
    let started = Instant::now();
    let mut job = Quickstart::default();
    if let Some(dir) = std::env::var_os("SAPSAN_DATA_DIR") {
        job.data_dir = PathBuf::from(dir);
    }
    if let Ok(name) = std::env::var("SAPSAN_MODEL") {
        job.model = match name.as_str() {
            "local_closure" => QuickstartModel::LocalClosure,
            "cnn3d" => {
                // Sapsan's example: cubes sampled to 16^3; 200 epochs (early stopping ends them
                // after about 150).
                job.sample_to = 16;
                job.n_epochs = 200;
                QuickstartModel::Cnn3d
            }
            _ => {
                return Err(sapsan::Error::Setting {
                    name: "SAPSAN_MODEL".into(),
                    value: name.clone(),
                    reason: "give local_closure (the default) or cnn3d".into(),
                });
            }
        };
    }
    if let Ok(text) = std::env::var("SAPSAN_EPOCHS") {
        job.n_epochs = text.parse().map_err(|e| sapsan::Error::Setting {
            name: "SAPSAN_EPOCHS".into(),
            value: text.clone(),
            reason: format!("{e}; give a whole number of epochs such as 50"),
        })?;
    }

    let settings = Settings::from_env()?;
    if let Some(root) = &settings.offline_root {
        // A compute node without a server: journal everything, upload later with `sapsan sync`.
        let experiment = settings
            .experiment_name
            .clone()
            .unwrap_or_else(|| DEFAULT_EXPERIMENT.into());
        let backend = OfflineBackend::new(&experiment, root)?;
        println!(
            "[quickstart] offline mode: experiment {experiment:?} journaled in {}",
            backend.journal_dir().display()
        );
        let result = job.run(&backend, &mut |line| println!("[quickstart] {line}"))?;
        backend.close_active_runs()?;
        backend.flush()?;
        summary(started, &format!("{experiment} (offline)"), &result);
        let dir = backend.journal_dir();
        println!(
            "  upload with:   sapsan sync {} --tracking-uri http://<mlflow-host>:<port>",
            dir.display()
        );
        return Ok(());
    }

    println!("[quickstart] connecting to MLflow (MLFLOW_TRACKING_URI, else localhost:5000) ...");
    let backend = MlflowBackendBuilder::from_env()?.build()?;
    let experiment_id = backend.experiment_id()?;
    println!(
        "[quickstart] MLflow at {}, experiment {:?} (id {experiment_id})",
        backend.tracking_uri(),
        backend.experiment_name(),
    );
    let result = job.run(&backend, &mut |line| println!("[quickstart] {line}"))?;
    // The train run stays open for more evaluations, as in Sapsan; the job ends it here.
    backend.close_active_runs()?;
    backend.flush()?;

    let experiment = format!("{} (id {experiment_id})", backend.experiment_name());
    summary(started, &experiment, &result);
    println!(
        "  MLflow UI:     {}/#/experiments/{}/runs/{}",
        backend.tracking_uri().trim_end_matches('/'),
        experiment_id,
        result.train_run_id
    );
    Ok(())
}

/// What the job did and where its runs are.
fn summary(started: Instant, experiment: &str, result: &QuickstartRun) {
    println!();
    println!("done in {:.1} s", started.elapsed().as_secs_f64());
    println!("  experiment:    {experiment}");
    println!("  train run:     {}", result.train_run_id);
    for e in &result.evaluations {
        println!(
            "  evaluate run:  {} (checkpoints {:?}, MSE {:.4e}, R^2 {:.3}, gradient model MSE {:.4e}, KS {:.4})",
            e.run_id,
            e.checkpoints,
            e.mse,
            e.r2(),
            e.gradient_model_mse,
            e.ks
        );
    }
}
