//! The macros used through the `sapsan` facade: generated code finds `::sapsan`, and a
//! train/evaluate pair behaves as the seed describes (with `FakeBackend`, no server).
use sapsan::config::{Kwargs, ModelConfig as _};
use sapsan::tracking::run::scope::{self, Report, TrackedOutput};
use sapsan::tracking::{Backend, FakeBackend};
use sapsan::{Error, ModelConfig, tracked};

#[derive(ModelConfig)]
struct Cnn3dConfig {
    n_epochs: u32,
    logdir: String,
    patience: u32,
    min_delta: f64,
    lr: f64,
    #[sapsan(default = self.lr * 1e-2)]
    min_lr: Option<f64>,
    #[sapsan(kwargs)]
    kwargs: Kwargs,
}

struct Trained(f64);

impl TrackedOutput for Trained {
    fn report<'a>(&'a self, r: &mut Report<'a>) {
        r.final_epoch(1).metric("loss", self.0);
    }
}

#[tracked(train, params(config))]
fn train(config: &Cnn3dConfig, backend: &dyn Backend) -> Result<Trained, Error> {
    Ok(Trained(config.lr))
}

#[tracked(evaluate)]
fn evaluate(model: &Trained, backend: &dyn Backend) -> Result<(), Error> {
    backend.log_metric("eval - loss", model.0)
}

#[test]
fn facade_paths_and_seed_flow() {
    let config = Cnn3dConfig {
        n_epochs: 1,
        logdir: "./logs/".into(),
        patience: 10,
        min_delta: 1e-5,
        lr: 1e-3,
        min_lr: None,
        kwargs: Kwargs::new().with("new_parameter", (8, 8, 8)),
    };
    let keys: Vec<(String, String)> = config.parameters().unwrap().into_vec();
    assert_eq!(
        keys.last().unwrap(),
        &("model - new_parameter".to_owned(), "(8, 8, 8)".to_owned())
    );
    assert_eq!(keys[5], ("model - min_lr".to_owned(), "1e-05".to_owned()));

    let backend = FakeBackend::new();
    let model = train(&config, &backend).unwrap();
    let train_id = scope::last_run_id().unwrap();
    assert_eq!(backend.active_run_id(), Some(train_id.clone()));
    evaluate(&model, &backend).unwrap();
    let eval_id = scope::last_run_id().unwrap();
    assert_ne!(eval_id, train_id);
    // The seed's "after training or evaluation" flow: resume, log more, end.
    backend.resume(&eval_id).unwrap();
    backend.log_metric("new_metric", 1.0).unwrap();
    backend.end().unwrap();
    assert_eq!(backend.active_run_id(), Some(train_id));
}
