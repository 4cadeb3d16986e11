//! A user-written config and a train/evaluate pair with `#[tracked]`, tracked in MLflow.
//!
//! Run: `PATH=$PWD/.venv/bin:$PATH cargo run --example custom_tracked [PORT]`.
//!
//! - With `MLFLOW_TRACKING_URI` set, that server is used as is (with the other `MLFLOW_*`
//!   settings, e.g. `MLFLOW_EXPERIMENT_NAME`).
//! - Otherwise the MLflow server on `127.0.0.1:PORT` (default: the seed's 5000) is used, and
//!   started there when the port is free (needs `mlflow` on `PATH`). As in Sapsan, a server started
//!   this way keeps running after the example ends, so the UI stays up; stop it with
//!   `kill -- -$(ps -o pgid= -p <pid>)`, `<pid>` being what `ss -ltnp 'sport = :PORT'` shows.
//!
//! It prints the run ids and where to see them in the MLflow UI.
use std::process::ExitCode;

use sapsan::config::Kwargs;
use sapsan::tracking::run::scope::{self, Report, TrackedOutput};
use sapsan::tracking::{Backend, MlflowBackend};
use sapsan::{Error, ModelConfig, tracked};

/// The seed's default port.
const DEFAULT_PORT: u16 = 5000;

/// The model's settings; each field is logged as `model - <field>`, then each kwarg.
#[derive(ModelConfig)]
struct FitConfig {
    n_epochs: u32,
    lr: f64,
    /// `lr * 1e-2` unless given, like Sapsan's CNN3d.
    #[sapsan(default = self.lr * 1e-2)]
    min_lr: Option<f64>,
    /// Logged as `model - initial weight`.
    #[sapsan(rename = "initial weight")]
    w0: f64,
    /// Extra parameters, Python's `ModelConfig(new_parameter=value)`: `model - <name>`.
    #[sapsan(kwargs)]
    kwargs: Kwargs,
}

/// What training produced, and what it reports to its run.
struct Model {
    weight: f64,
    losses: Vec<f64>,
}

impl TrackedOutput for Model {
    fn report<'a>(&'a self, r: &mut Report<'a>) {
        r.final_epoch(self.losses.len() as u64);
        for (epoch, loss) in self.losses.iter().enumerate() {
            r.metric_at("loss", *loss, epoch as i64);
        }
        r.artifact_owned(
            "model_details.txt",
            format!("y = w * x with w = {}\n", self.weight).into_bytes(),
        );
    }
}

/// Fits `y = 2x` by gradient descent on 32 points of `[0, 1)`: a train run with `model - ...`
/// params, `train - loss` per epoch, `train - final epoch`, `train - runtime` and an artifact,
/// left open for evaluations.
#[tracked(train, params(config))]
fn train(config: &FitConfig, backend: &dyn Backend) -> Result<Model, Error> {
    if config.n_epochs == 0 {
        return Err(Error::Estimator("n_epochs must be at least 1".into()));
    }
    let xs: Vec<f64> = (0..32).map(|i| f64::from(i) / 32.0).collect();
    let mse = |w: f64| xs.iter().map(|x| ((w - 2.0) * x).powi(2)).sum::<f64>() / xs.len() as f64;
    let mut w = config.w0;
    let mut losses = Vec::new();
    for _ in 0..config.n_epochs {
        let grad = xs.iter().map(|x| 2.0 * (w - 2.0) * x * x).sum::<f64>() / xs.len() as f64;
        w -= config.lr * grad;
        losses.push(mse(w));
    }
    Ok(Model { weight: w, losses })
}

/// Scores the model on new points `x = 1..=8`: an evaluate run nested under the train run, with
/// the train run's params and `train - ` metrics copied in, `eval - MSE Loss` and `eval - runtime`.
#[tracked(evaluate, name = "evaluate")]
fn evaluate(model: &Model, backend: &dyn Backend) -> Result<Report<'static>, Error> {
    let mse = (1..=8)
        .map(|i| ((model.weight - 2.0) * f64::from(i)).powi(2))
        .sum::<f64>()
        / 8.0;
    let mut r = Report::new();
    r.metric("MSE Loss", mse);
    Ok(r)
}

/// `MLFLOW_TRACKING_URI`'s server when set, else the one on `127.0.0.1:<port>` (started if free).
fn backend() -> Result<MlflowBackend, Error> {
    if std::env::var_os("MLFLOW_TRACKING_URI").is_some_and(|v| !v.is_empty()) {
        return MlflowBackend::from_env();
    }
    let port = match std::env::args().nth(1) {
        None => DEFAULT_PORT,
        Some(arg) => arg.parse().map_err(|_| Error::Setting {
            name: "PORT".into(),
            value: arg.clone(),
            reason: "the first argument must be a TCP port (1-65535), e.g. 5000".into(),
        })?,
    };
    MlflowBackend::new("custom_tracked", "127.0.0.1", port)
}

fn main() -> ExitCode {
    sapsan::diag::init_logger();
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("custom_tracked: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<(), Error> {
    let backend = backend()?;
    let config = FitConfig {
        n_epochs: 20,
        lr: 1.0,
        min_lr: None,
        w0: 0.0,
        kwargs: Kwargs::new()
            .with("new_parameter", (8, 8, 8))
            .with("optimizer", "sgd")
            .with("nesterov", false),
    };
    let model = train(&config, &backend)?;
    // The run id of the call that just returned (the train run is also the active run).
    let train_id = scope::last_run_id().unwrap_or_default();
    let eval_id = {
        evaluate(&model, &backend)?;
        scope::last_run_id().unwrap_or_default()
    };

    // The seed's "after training or evaluation": resume the evaluate run, log more, end it.
    backend.resume(&eval_id)?;
    backend.log_metric("eval - weight error", (model.weight - 2.0).abs())?;
    backend.end()?;

    let ui = format!(
        "{}/#/experiments/{}",
        backend.tracking_uri(),
        backend.experiment_id()?
    );
    let experiment = backend.experiment_name().to_owned();
    // Delivers everything queued and ends the open train run FINISHED.
    drop(backend);

    println!("fitted w = {:.6} (target 2)", model.weight);
    println!("experiment   {experiment:?}: {ui}");
    println!("train run    {train_id}: {ui}/runs/{train_id}");
    println!("evaluate run {eval_id} (nested under the train run): {ui}/runs/{eval_id}");
    Ok(())
}
