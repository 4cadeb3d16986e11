//! `#[tracked]`: what the expansion does, proven with a backend that records every call.
mod support;

use std::sync::Arc;

use sapsan_core::config::Kwargs;
use sapsan_core::tracking::run::scope::{self, ERROR_TAG, Mode, Report, RunScope, TrackedOutput};
use sapsan_core::tracking::{Backend, FakeBackend, RunStatus};
use sapsan_core::{Error, ModelConfig, tracked};
use support::{Call, RecordingBackend};

#[derive(ModelConfig)]
struct Cnn3dConfig {
    n_epochs: u32,
    lr: f64,
    #[sapsan(default = self.lr * 1e-2)]
    min_lr: Option<f64>,
    #[sapsan(kwargs)]
    kwargs: Kwargs,
}

#[derive(ModelConfig)]
#[sapsan(prefix = "data")]
struct DataConfig {
    path: String,
}

fn model() -> Cnn3dConfig {
    Cnn3dConfig {
        n_epochs: 2,
        lr: 1e-3,
        min_lr: None,
        kwargs: Kwargs::new().with("extra", 7),
    }
}

#[derive(Debug)]
struct TrainOut {
    loss: Vec<f64>,
    details: String,
}

impl TrackedOutput for TrainOut {
    fn report<'a>(&'a self, r: &mut Report<'a>) {
        r.final_epoch(self.loss.len() as u64);
        for (i, l) in self.loss.iter().enumerate() {
            r.metric_at("loss", *l, i as i64);
        }
        r.artifact("model_details.txt", self.details.as_bytes());
    }
}

/// Doc comments and other attributes survive.
#[tracked(train, params(config, data))]
#[must_use]
fn train(
    config: &Cnn3dConfig,
    data: &DataConfig,
    backend: &impl Backend,
) -> Result<TrainOut, Error> {
    assert!(
        backend.active_run_id().is_some(),
        "the train run is active in the body"
    );
    if config.n_epochs == 0 {
        return Err(Error::Estimator("no epochs".into())); // early return
    }
    let _ = &data.path;
    Ok(TrainOut {
        loss: vec![0.5, 0.25],
        details: "layers".into(),
    })
}

#[tracked(evaluate, name = "evaluate", params(data))]
fn evaluate(data: &DataConfig, backend: &dyn Backend) -> Result<Report<'static>, Error> {
    backend.log_metric("eval - live", 1.0)?; // the evaluate run is the active one
    let mut r = Report::new();
    r.metric("MSE Loss", 0.125)
        .artifact_owned("pdf_cdf.png", vec![1, 2, 3]);
    Ok(r)
}

fn metrics_of(calls: &[Call], run: &str) -> Vec<(String, f64, i64)> {
    calls
        .iter()
        .filter_map(|c| match c {
            Call::Metric {
                run: r,
                key,
                value,
                step,
            } if r == run => Some((key.clone(), *value, *step)),
            _ => None,
        })
        .collect()
}

#[test]
fn train_then_evaluate_nests_logs_and_copies() {
    let b = RecordingBackend::new();
    let data = DataConfig {
        path: "train.h5".into(),
    };
    train(&model(), &data, &b).unwrap();
    let train_id = scope::last_run_id().unwrap();
    assert_eq!(
        b.active_run_id().as_deref(),
        Some(train_id.as_str()),
        "train run stays open"
    );
    assert_eq!(b.status(&train_id), None, "train run was not ended");
    assert_eq!(
        b.param_order(&train_id),
        [
            ("model - n_epochs", "2"),
            ("model - lr", "0.001"),
            ("model - min_lr", "1e-05"),
            ("model - extra", "7"),
            ("data - path", "train.h5"),
        ]
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
    );
    let calls = b.calls();
    let m = metrics_of(&calls, &train_id);
    assert_eq!(m[0], ("train - final epoch".into(), 2.0, 0));
    assert_eq!(m[1], ("train - loss".into(), 0.5, 0));
    assert_eq!(m[2], ("train - loss".into(), 0.25, 1));
    assert_eq!(m[3].0, "train - runtime");
    assert!(m[3].1 >= 0.0 && m[3].1 < 5.0);
    assert!(calls.contains(&Call::Artifact {
        run: train_id.clone(),
        name: "model_details.txt".into(),
        bytes: b"layers".to_vec()
    }));

    let eval_data = DataConfig {
        path: "eval.h5".into(),
    };
    evaluate(&eval_data, &b).unwrap();
    let eval_id = scope::last_run_id().unwrap();
    assert_ne!(eval_id, train_id);
    assert_eq!(
        b.created(),
        [
            ("train".into(), None, train_id.clone()),
            ("evaluate".into(), Some(train_id.clone()), eval_id.clone())
        ]
    );
    assert_eq!(b.status(&eval_id), Some(RunStatus::Finished));
    assert_eq!(
        b.active_run_id(),
        Some(train_id.clone()),
        "parent stays open"
    );
    let d = b.data(&eval_id);
    // Its own data path wins over the copied one; the model params are copied.
    assert_eq!(d.params["data - path"], "eval.h5");
    assert_eq!(d.params["model - min_lr"], "1e-05");
    assert_eq!(d.params["model - extra"], "7");
    assert_eq!(d.metrics["train - final epoch"], 2.0);
    assert_eq!(d.metrics["train - loss"], 0.25);
    assert!(d.metrics.contains_key("train - runtime"));
    assert_eq!(d.metrics["eval - MSE Loss"], 0.125);
    assert_eq!(d.metrics["eval - live"], 1.0);
    assert!(d.metrics.contains_key("eval - runtime"));
    assert!(!d.metrics.contains_key("eval - final epoch"));

    // A second train ends the open runs first.
    train(&model(), &data, &b).unwrap();
    assert_eq!(b.status(&train_id), Some(RunStatus::Finished));
}

#[test]
fn err_marks_failed_with_the_error_text() {
    let b = RecordingBackend::new();
    let mut cfg = model();
    cfg.n_epochs = 0;
    let err = train(&cfg, &DataConfig { path: "x".into() }, &b).unwrap_err();
    assert!(matches!(err, Error::Estimator(_)));
    let id = scope::last_run_id().unwrap();
    assert_eq!(b.status(&id), Some(RunStatus::Failed));
    assert_eq!(b.data(&id).tags[ERROR_TAG], "estimator: no epochs");
    assert_eq!(
        b.active_run_id(),
        None,
        "a failed train run is not left open"
    );
    assert_eq!(b.calls().last(), Some(&Call::Flush));
    let rec = scope::last_run().unwrap();
    assert_eq!((rec.mode, rec.status), (Mode::Train, RunStatus::Failed));
    assert_eq!(rec.error.as_deref(), Some("estimator: no epochs"));
}

#[tracked(train)]
fn explodes(backend: &RecordingBackend) {
    let _ = backend;
    panic!("boom");
}

#[test]
fn panic_marks_failed_and_keeps_unwinding() {
    let b = RecordingBackend::new();
    let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| explodes(&b)));
    let payload = caught.unwrap_err();
    assert_eq!(payload.downcast_ref::<&str>(), Some(&"boom"));
    let id = scope::last_run_id().unwrap();
    assert_eq!(b.status(&id), Some(RunStatus::Failed));
    assert_eq!(b.data(&id).tags[ERROR_TAG], "panicked");
    assert_eq!(b.active_run_id(), None);
}

#[test]
fn parent_option_and_arc_backend() {
    #[tracked(evaluate, parent = parent)]
    fn eval_under(parent: &str, backend: Arc<RecordingBackend>) -> Result<(), Error> {
        drop(backend); // the scope holds its own handle
        Ok(())
    }
    let b = Arc::new(RecordingBackend::new());
    let p = b.start("manual", false, None).unwrap();
    b.end().unwrap();
    eval_under(&p, b.clone()).unwrap();
    let created = b.created();
    assert_eq!(created[1].1.as_deref(), Some(p.as_str()));
}

#[test]
fn tracking_error_becomes_the_result() {
    let b = RecordingBackend::refusing();
    let mut ran = false;
    #[tracked(train)]
    fn fit(ran: &mut bool, backend: &RecordingBackend) -> Result<(), Error> {
        *ran = true;
        Ok(())
    }
    let err = fit(&mut ran, &b).unwrap_err();
    assert!(matches!(err, Error::Connection { .. }), "{err}");
    assert!(!ran, "the body does not run when the run cannot start");

    // A bad kwarg key is a tracking error too: the run ends FAILED, the error is returned.
    let ok = RecordingBackend::new();
    let mut cfg = model();
    cfg.kwargs.insert("bad@key", 1);
    let err = train(&cfg, &DataConfig { path: "x".into() }, &ok).unwrap_err();
    assert!(matches!(err, Error::Config { .. }), "{err}");
    let id = scope::last_run_id().unwrap();
    assert_eq!(ok.status(&id), Some(RunStatus::Failed));
    assert!(ok.data(&id).tags[ERROR_TAG].starts_with("tracking failed: config Cnn3dConfig"));
}

#[test]
fn unit_output_keeps_its_value_on_tracking_errors() {
    #[tracked(train)]
    fn quiet(backend: &RecordingBackend) -> u8mark {
        u8mark(3)
    }
    #[derive(Debug, PartialEq)]
    #[allow(non_camel_case_types)]
    struct u8mark(u8);
    impl TrackedOutput for u8mark {}
    let b = RecordingBackend::refusing();
    assert_eq!(quiet(&b), u8mark(3));
    let rec = scope::last_run().unwrap();
    assert_eq!(rec.run_id, None);
    assert!(rec.tracking_error.unwrap().contains("connection refused"));
}

struct Trainer<B> {
    backend: Arc<B>,
    config: Cnn3dConfig,
    epochs_run: u32,
}

impl<B: Backend + 'static> Trainer<B> {
    /// A `&mut self` method with a generic backend field, `?` and a lifetime in the signature.
    #[tracked(train, backend = self.backend, params(self.config), name = "trainer")]
    fn run<'a>(&mut self, label: &'a str) -> Result<(), Error> {
        self.epochs_run += self.config.n_epochs;
        self.backend.log_parameter("label", label)?;
        Ok(())
    }
}

#[test]
fn methods_generics_and_backend_expressions() {
    let mut t = Trainer {
        backend: Arc::new(RecordingBackend::new()),
        config: model(),
        epochs_run: 0,
    };
    t.run("x").unwrap();
    assert_eq!(t.epochs_run, 2);
    let id = scope::last_run_id().unwrap();
    assert_eq!(t.backend.created()[0].0, "trainer");
    assert_eq!(t.backend.data(&id).params["label"], "x");
    assert_eq!(t.backend.data(&id).params["model - n_epochs"], "2");
}

#[test]
fn generic_backend_and_impl_trait_args() {
    #[tracked(evaluate)]
    fn eval_generic<B: Backend>(
        items: impl IntoIterator<Item = u32>,
        b: &B,
    ) -> Result<Report<'static>, Error> {
        let mut r = Report::new();
        r.metric("sum", items.into_iter().sum::<u32>() as f64);
        Ok(r)
    }
    let b = FakeBackend::new();
    eval_generic(vec![1, 2, 3], &b).unwrap();
    assert!(scope::last_run_id().unwrap().starts_with("fake"));
    assert_eq!(
        b.active_run_id(),
        None,
        "an evaluate run without a parent is top-level and ended"
    );
}

#[test]
fn run_scope_by_hand() {
    let b = RecordingBackend::new();
    let mut s = RunScope::train(&b, "manual").unwrap();
    s.log_params(&model()).unwrap();
    let id = s.finish(&()).unwrap();
    assert_eq!(b.active_run_id(), Some(id.clone()));
    let e = RunScope::evaluate(&b, "e", None).unwrap();
    let eid = e.run_id().unwrap().to_owned();
    drop(e); // dropped without finish: FAILED, never left RUNNING
    assert_eq!(b.status(&eid), Some(RunStatus::Failed));
}
