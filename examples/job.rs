//! One batch job of a job array, as a group launches many at once against a shared team server:
//! a tracked train run (its config as params, a loss point per step, an artifact) with evaluate
//! runs nested under it, everything through the public API.
//!
//! Run: `MLFLOW_TRACKING_URI=http://server:5000 MLFLOW_EXPERIMENT_NAME=array cargo run --example
//! job -- <index>`; `MLFLOW_TRACKING_URI=offline:/some/dir` journals it for `sapsan sync`.
//!
//! - `<index>` (default 0): the job's index in the array (`$SLURM_ARRAY_TASK_ID`); it names the
//!   runs (`train <index>`, `evaluate <index>.<k>`) and offsets the values.
//! - `SAPSAN_JOB_METRICS` (default 10,000): loss points logged by the train run, one per step;
//!   point `i` has value [`loss`]`(index, i)`, so a reader can check every one.
//! - `SAPSAN_JOB_EVALS` (default 2): evaluate runs nested under the train run.
//!
//! It prints `train run: <id>` and one `evaluate run: <id>` line each (ids as the backend knows
//! them: server ids, or journal keys offline). Used by `tests/many_jobs.rs` (8 at once) and
//! `examples/bench_many_jobs.rs`.
use std::process::ExitCode;

use sapsan::tracking::Backend;
use sapsan::tracking::backend_from_env;
use sapsan::tracking::run::scope::{Report, TrackedOutput};
use sapsan::{Error, ModelConfig, tracked};

/// The job's settings, logged as `model - <field>`.
#[derive(ModelConfig)]
struct JobConfig {
    /// Index in the job array.
    index: u32,
    /// Loss points to log.
    steps: u32,
    /// A setting a real job would have.
    lr: f64,
}

/// The value of loss point `step` of job `index`: every job's and step's value differs.
pub fn loss(index: u32, step: u32) -> f64 {
    1.0 / (1.0 + f64::from(step)) + f64::from(index) * 1e-3
}

/// What training produced.
struct Trained {
    index: u32,
    last_loss: f64,
}

impl TrackedOutput for Trained {
    fn report<'a>(&'a self, r: &mut Report<'a>) {
        r.metric("last loss", self.last_loss);
        r.artifact_owned(
            "weights.txt",
            format!("job {} last loss {}\n", self.index, self.last_loss).into_bytes(),
        );
    }
}

/// The train run: one `train - step loss` point per step, as a training loop logs them.
#[tracked(train, params(config))]
fn train(config: &JobConfig, backend: &dyn Backend) -> Result<Trained, Error> {
    for step in 0..config.steps {
        backend.log_metric_step(
            "train - step loss",
            loss(config.index, step),
            i64::from(step),
        )?;
    }
    Ok(Trained {
        index: config.index,
        last_loss: loss(config.index, config.steps.saturating_sub(1)),
    })
}

/// An evaluate run nested under the train run.
#[tracked(evaluate)]
fn evaluate(model: &Trained, k: u32, backend: &dyn Backend) -> Result<Report<'static>, Error> {
    let mut r = Report::new();
    r.metric("MSE Loss", model.last_loss * f64::from(k + 1));
    Ok(r)
}

/// A non-negative integer from variable `name`, else `default`.
fn env_u32(name: &str, default: u32) -> Result<u32, Error> {
    match std::env::var(name) {
        Err(_) => Ok(default),
        Ok(v) => v.trim().parse().map_err(|_| Error::Setting {
            name: name.into(),
            value: v.clone(),
            reason: "must be a whole number, e.g. 10000".into(),
        }),
    }
}

fn run() -> Result<(), Error> {
    let index = match std::env::args().nth(1) {
        None => 0,
        Some(a) => a.parse().map_err(|_| Error::Setting {
            name: "INDEX".into(),
            value: a.clone(),
            reason: "the first argument is the job's index in the array, e.g. 3".into(),
        })?,
    };
    let config = JobConfig {
        index,
        steps: env_u32("SAPSAN_JOB_METRICS", 10_000)?,
        lr: 1e-3,
    };
    let evals = env_u32("SAPSAN_JOB_EVALS", 2)?;
    let backend = backend_from_env()?;
    let trained = train_tracked(&config, &*backend);
    let model = trained.output?;
    println!("train run: {}", trained.run_id.unwrap_or_default());
    for k in 0..evals {
        let e = evaluate_tracked(&model, k, &*backend);
        e.output?;
        println!("evaluate run: {}", e.run_id.unwrap_or_default());
    }
    // Delivers everything (or journals it) and ends the train run FINISHED.
    drop(backend);
    Ok(())
}

fn main() -> ExitCode {
    sapsan::diag::init_logger();
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("job: {e}");
            ExitCode::FAILURE
        }
    }
}
