//! `#[tracked]`: what the expansion does, proven with a backend that records every call. The run
//! ids come back with the calls, from the `<fn>_tracked` companions.
mod support;

use std::sync::Arc;

use sapsan_core::config::Kwargs;
use sapsan_core::tracking::scope::{
    self, ERROR_TAG, Mode, Report, RunScope, Tracked, TrackedOutput,
};
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
    let trained = train_tracked(&model(), &data, &b);
    assert_eq!(trained.output.unwrap().loss, [0.5, 0.25]);
    assert_eq!(
        (trained.mode, trained.name.as_str()),
        (Mode::Train, "train")
    );
    assert_eq!(trained.status, RunStatus::Running);
    assert_eq!((trained.error, trained.tracking_error), (None, None));
    let train_id = trained.run_id.unwrap();
    assert_eq!(
        b.created()[0].2,
        train_id,
        "the id of the run the backend created"
    );
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
    let evaluated = evaluate_tracked(&eval_data, &b);
    assert!(evaluated.output.is_ok());
    assert_eq!(evaluated.status, RunStatus::Finished);
    let eval_id = evaluated.run_id.unwrap();
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
    let failed = train_tracked(&cfg, &DataConfig { path: "x".into() }, &b);
    assert!(matches!(failed.output, Err(Error::Estimator(_))));
    assert_eq!(
        (failed.mode, failed.status),
        (Mode::Train, RunStatus::Failed)
    );
    assert_eq!(failed.error.as_deref(), Some("estimator: no epochs"));
    assert_eq!(failed.tracking_error, None);
    let id = failed.run_id.unwrap();
    assert_eq!(b.status(&id), Some(RunStatus::Failed));
    assert_eq!(b.data(&id).tags[ERROR_TAG], "estimator: no epochs");
    assert_eq!(
        b.active_run_id(),
        None,
        "a failed train run is not left open"
    );
    assert_eq!(b.calls().last(), Some(&Call::Flush));

    // The function itself returns the output alone.
    let err = train(&cfg, &DataConfig { path: "x".into() }, &b).unwrap_err();
    assert!(matches!(err, Error::Estimator(_)));
}

#[tracked(train)]
fn explodes(backend: &RecordingBackend) {
    let _ = backend;
    panic!("boom");
}

#[tracked(evaluate)]
fn explodes_with(what: u32, backend: &RecordingBackend) -> Result<(), Error> {
    let _ = backend;
    if what == 0 {
        std::panic::panic_any(what);
    }
    panic!("diverged after {what} epochs");
}

/// Runs `f`, which must panic, and returns the payload and the one run it created.
fn panicking(b: &RecordingBackend, f: impl FnOnce()) -> (Box<dyn std::any::Any + Send>, String) {
    let payload = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_err();
    let created = b.created();
    assert_eq!(created.len(), 1);
    (payload, created[0].2.clone())
}

#[test]
fn panic_marks_failed_with_its_message_and_keeps_unwinding() {
    let b = RecordingBackend::new();
    let (payload, id) = panicking(&b, || explodes(&b));
    assert_eq!(payload.downcast_ref::<&str>(), Some(&"boom"));
    assert_eq!(b.status(&id), Some(RunStatus::Failed));
    assert_eq!(b.data(&id).tags[ERROR_TAG], "panicked: boom");
    assert_eq!(b.active_run_id(), None);
    assert_eq!(
        b.calls().last(),
        Some(&Call::Flush),
        "flushed before unwinding"
    );

    // A formatted message (a `String` payload), through the companion.
    let b = RecordingBackend::new();
    let (payload, id) = panicking(&b, || {
        let _ = explodes_with_tracked(3, &b);
    });
    let text = "diverged after 3 epochs";
    assert_eq!(
        payload.downcast_ref::<String>().map(String::as_str),
        Some(text)
    );
    assert_eq!(b.status(&id), Some(RunStatus::Failed));
    assert_eq!(b.data(&id).tags[ERROR_TAG], format!("panicked: {text}"));

    // Any other payload.
    let b = RecordingBackend::new();
    let (payload, id) = panicking(&b, || {
        let _ = explodes_with(0, &b);
    });
    assert_eq!(payload.downcast_ref::<u32>(), Some(&0));
    assert_eq!(b.data(&id).tags[ERROR_TAG], "panicked (non-string payload)");
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
    let run = eval_under_tracked(&p, b.clone());
    let created = b.created();
    assert_eq!(created[1].1.as_deref(), Some(p.as_str()));
    assert_eq!(run.run_id.as_ref(), Some(&created[1].2));
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
    let run = fit_tracked(&mut ran, &b);
    assert!(
        matches!(run.output, Err(Error::Connection { .. })),
        "{:?}",
        run.output
    );
    assert!(!ran, "the body does not run when the run cannot start");
    assert_eq!((run.run_id, run.status), (None, RunStatus::Failed));
    assert!(run.tracking_error.unwrap().contains("connection refused"));

    // A bad kwarg key is a tracking error too: the run ends FAILED, the error is returned.
    let ok = RecordingBackend::new();
    let mut cfg = model();
    cfg.kwargs.insert("bad@key", 1);
    let run = train_tracked(&cfg, &DataConfig { path: "x".into() }, &ok);
    assert!(
        matches!(run.output, Err(Error::Config { .. })),
        "{:?}",
        run.output
    );
    assert!(run.tracking_error.is_some());
    let id = run.run_id.unwrap();
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
    let run = quiet_tracked(&b);
    assert_eq!(run.output, u8mark(3));
    assert_eq!(run.run_id, None);
    assert!(run.tracking_error.unwrap().contains("connection refused"));
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

    /// An associated function without `self` (reached as `Self::...`), its companion renamed.
    #[tracked(train, backend = backend, params(config), companion = build_with_run)]
    fn build(backend: Arc<B>, config: Cnn3dConfig) -> Self {
        Trainer {
            backend,
            config,
            epochs_run: 0,
        }
    }
}

impl<B: Backend> TrackedOutput for Trainer<B> {}

#[test]
fn methods_generics_and_backend_expressions() {
    let mut t = Trainer {
        backend: Arc::new(RecordingBackend::new()),
        config: model(),
        epochs_run: 0,
    };
    t.run("x").unwrap();
    assert_eq!(t.epochs_run, 2);
    let run = t.run_tracked("y");
    assert_eq!(t.epochs_run, 4);
    let id = run.run_id.unwrap();
    assert_eq!(t.backend.created()[1], ("trainer".into(), None, id.clone()));
    assert_eq!(t.backend.data(&id).params["label"], "y");
    assert_eq!(t.backend.data(&id).params["model - n_epochs"], "2");

    let run: Tracked<Trainer<RecordingBackend>> =
        Trainer::build_with_run(Arc::new(RecordingBackend::new()), model());
    let trainer = run.output;
    assert_eq!(trainer.backend.created()[0].2, run.run_id.unwrap());
    let plain = Trainer::build(Arc::new(FakeBackend::new()), model());
    assert_eq!(plain.epochs_run, 0);
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
    let run = eval_generic_tracked(vec![1, 2, 3], &b);
    assert!(run.output.is_ok());
    assert!(run.run_id.unwrap().starts_with("fake"));
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

#[test]
fn arguments_of_any_pattern_and_explicit_generics_reach_the_companion() {
    /// `T` is named by no argument: the function passes it on explicitly.
    #[tracked(evaluate)]
    fn sized<T, const N: usize>(
        mut count: u32,
        (a, b): (u32, u32),
        backend: &FakeBackend,
    ) -> Result<Report<'static>, Error> {
        count += a + b;
        let mut r = Report::new();
        r.metric("bytes", (std::mem::size_of::<T>() * N) as f64)
            .metric("count", f64::from(count));
        Ok(r)
    }
    let b = FakeBackend::new();
    let r = sized::<u64, 3>(1, (2, 3), &b).unwrap();
    let metrics: Vec<_> = r.metrics().collect();
    assert_eq!(metrics, [("bytes", 24.0, None), ("count", 6.0, None)]);
    let run = sized_tracked::<u16, 1>(0, (0, 0), &b);
    assert!(run.run_id.is_some());
    assert_eq!(
        run.output.unwrap().metrics().next(),
        Some(("bytes", 2.0, None))
    );
}

/// A method of a trait impl cannot have a companion: `companion = false`.
trait Fit {
    fn fit(&self, backend: &RecordingBackend) -> Result<(), Error>;
}

struct Model;

impl Fit for Model {
    #[tracked(train, companion = false)]
    fn fit(&self, backend: &RecordingBackend) -> Result<(), Error> {
        Err(Error::Estimator("not today".into()))
    }
}

#[test]
fn without_a_companion_the_function_is_tracked_alone() {
    let b = RecordingBackend::new();
    assert!(Model.fit(&b).is_err());
    let id = b.created()[0].2.clone();
    assert_eq!(b.data(&id).tags[ERROR_TAG], "estimator: not today");
}

#[test]
fn last_run_is_a_convenience_copy_of_the_returned_record() {
    let b = RecordingBackend::new();
    let run = train_tracked(&model(), &DataConfig { path: "x".into() }, &b);
    let last = scope::last_run().unwrap();
    assert_eq!(last.run_id, run.run_id);
    assert_eq!((last.status, last.error), (run.status, run.error));
    assert_eq!(scope::last_run_id(), run.run_id);
}
