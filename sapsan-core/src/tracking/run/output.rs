//! What a tracked run reports and how it ended: [`Report`] and [`TrackedOutput`] (what a
//! function's return value logs), [`Tracked`] (the value a `#[tracked]` call returns with its
//! run's id, status and errors), and the per-thread convenience record of the last run.
use std::any::Any;
use std::borrow::Cow;
use std::cell::RefCell;
use std::fmt::Display;

use crate::error::Error;
use crate::tracking::RunStatus;

/// Which kind of run a scope is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Mode {
    /// A top-level training run that stays open for evaluations.
    Train,
    /// An evaluation run nested under a training run, ended when the scope finishes.
    Evaluate,
}

impl Mode {
    /// Prefix of the metrics this mode logs: `train - ` or `eval - `.
    pub fn metric_prefix(self) -> &'static str {
        match self {
            Mode::Train => "train - ",
            Mode::Evaluate => "eval - ",
        }
    }
}

// ---- outputs ------------------------------------------------------------------------------

/// What a tracked function's output reports: metrics (optionally per step) and artifacts. Metric
/// names are given without the mode prefix; the scope adds `train - ` or `eval - `.
#[derive(Debug, Default, Clone)]
pub struct Report<'a> {
    metrics: Vec<(String, f64, Option<i64>)>,
    artifacts: Vec<(String, Cow<'a, [u8]>)>,
    model: Option<String>,
}

impl<'a> Report<'a> {
    /// An empty report.
    pub fn new() -> Self {
        Self::default()
    }
    /// A metric without a step (logged at step 0).
    pub fn metric(&mut self, name: impl Into<String>, value: f64) -> &mut Self {
        self.metrics.push((name.into(), value, None));
        self
    }
    /// A metric at `step` (an epoch, an iteration).
    pub fn metric_at(&mut self, name: impl Into<String>, value: f64, step: i64) -> &mut Self {
        self.metrics.push((name.into(), value, Some(step)));
        self
    }
    /// The final training epoch, logged as the metric `final epoch` (Sapsan's `train - final epoch`).
    pub fn final_epoch(&mut self, epoch: u64) -> &mut Self {
        self.metric("final epoch", epoch as f64)
    }
    /// An artifact `name` (a relative path such as `pdf_cdf.png`) with borrowed contents.
    pub fn artifact(&mut self, name: impl Into<String>, bytes: &'a [u8]) -> &mut Self {
        self.artifacts.push((name.into(), Cow::Borrowed(bytes)));
        self
    }
    /// An artifact `name` with owned contents.
    pub fn artifact_owned(&mut self, name: impl Into<String>, bytes: Vec<u8>) -> &mut Self {
        self.artifacts.push((name.into(), Cow::Owned(bytes)));
        self
    }
    /// The logged model (its id from [`crate::tracking::Backend::log_model`]) the reported
    /// metrics measure: MLflow 3 lists them on the model's page.
    pub fn model(&mut self, model_id: impl Into<String>) -> &mut Self {
        self.model = Some(model_id.into());
        self
    }
    /// The model the metrics measure, if any.
    pub fn model_id(&self) -> Option<&str> {
        self.model.as_deref()
    }
    /// The metrics in order: `(name, value, step)`.
    pub fn metrics(&self) -> impl Iterator<Item = (&str, f64, Option<i64>)> {
        self.metrics.iter().map(|(n, v, s)| (n.as_str(), *v, *s))
    }
    /// The artifacts in order: `(name, bytes)`.
    pub fn artifacts(&self) -> impl Iterator<Item = (&str, &[u8])> {
        self.artifacts.iter().map(|(n, b)| (n.as_str(), &**b))
    }
}

/// The return type of a `#[tracked]` function: what it reports to its run.
///
/// Implemented for `()` (nothing to report), for [`Report`] (return one directly), and for
/// `Result<T, E>` where `T: TrackedOutput` and `E: Display + From<sapsan::Error>`: `Ok` reports
/// what `T` reports; `Err` marks the run FAILED with the error's text; and an error of the tracking
/// itself (the server cannot create the run, a metric key is invalid, ...) becomes an `Err` too.
/// For other types a tracking error is kept in [`Tracked::tracking_error`] and written to stderr
/// once, and the function's value is returned unchanged.
///
/// ```
/// use sapsan_core::tracking::run::scope::{Report, TrackedOutput};
/// struct TrainOutput { loss: Vec<f64>, details: String }
/// impl TrackedOutput for TrainOutput {
///     fn report<'a>(&'a self, r: &mut Report<'a>) {
///         r.final_epoch(self.loss.len() as u64);
///         for (epoch, l) in self.loss.iter().enumerate() {
///             r.metric_at("loss", *l, epoch as i64);
///         }
///         r.artifact("model_details.txt", self.details.as_bytes());
///     }
/// }
/// ```
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be the return type of a `#[tracked]` function",
    label = "does not implement `TrackedOutput`",
    note = "return `()`, a `sapsan::tracking::run::scope::Report`, your own type implementing `TrackedOutput`, \
            or `Result<T, E>` with `T: TrackedOutput` and `E: Display + From<sapsan::Error>` \
            (e.g. `sapsan::Error`, `Box<dyn std::error::Error>`, `anyhow::Error`)"
)]
pub trait TrackedOutput {
    /// Adds the metrics and artifacts this value reports.
    fn report<'a>(&'a self, report: &mut Report<'a>) {
        let _ = report;
    }
    /// The failure this value stands for (an `Err`'s text), if any.
    fn failure(&self) -> Option<String> {
        None
    }
    /// Turns an error of the tracking itself into a value of this type, when it can hold one.
    fn from_tracking_error(error: Error) -> Option<Self>
    where
        Self: Sized,
    {
        let _ = error;
        None
    }
}

impl TrackedOutput for () {}

impl TrackedOutput for Report<'_> {
    fn report<'a>(&'a self, report: &mut Report<'a>) {
        report.metrics.extend(self.metrics.iter().cloned());
        report.artifacts.extend(
            self.artifacts
                .iter()
                .map(|(n, b)| (n.clone(), Cow::Borrowed(&**b))),
        );
        if self.model.is_some() {
            report.model = self.model.clone();
        }
    }
}

impl<T: TrackedOutput, E: Display + From<Error>> TrackedOutput for Result<T, E> {
    fn report<'a>(&'a self, report: &mut Report<'a>) {
        if let Ok(v) = self {
            v.report(report);
        }
    }
    fn failure(&self) -> Option<String> {
        self.as_ref().err().map(|e| e.to_string())
    }
    fn from_tracking_error(error: Error) -> Option<Self> {
        Some(Err(E::from(error)))
    }
}

// ---- how a run ended ------------------------------------------------------------------------

/// What a tracked call returns: the function's output with how its run ended. `#[tracked]`
/// generates `<fn>_tracked`, which returns this (the function itself returns `output` alone).
///
/// ```
/// use sapsan_core::tracking::{Backend, FakeBackend, RunStatus};
/// use sapsan_core::{Error, tracked};
///
/// #[tracked(train)]
/// fn fit(epochs: u32, backend: &impl Backend) -> Result<(), Error> {
///     backend.log_metric("lr", 1e-3 * f64::from(epochs))?;
///     Ok(())
/// }
///
/// let backend = FakeBackend::new();
/// let run = fit_tracked(10, &backend); // what `fit(10, &backend)` does, and its run
/// assert!(run.output.is_ok());
/// assert_eq!(run.run_id, backend.active_run_id()); // the train run stays open
/// assert_eq!(run.status, RunStatus::Running);
/// ```
#[derive(Debug, Clone, PartialEq)]
#[must_use = "a tracked call's output is in `.output`; its run id in `.run_id`"]
pub struct Tracked<R> {
    /// What the function returned (or, when the tracking failed and the output type can hold
    /// that error, the error: see [`TrackedOutput`]).
    pub output: R,
    /// The run's id; `None` when the run could not be created.
    pub run_id: Option<String>,
    /// Train or evaluate.
    pub mode: Mode,
    /// The run's name.
    pub name: String,
    /// RUNNING (a finished train run stays open), FINISHED or FAILED.
    pub status: RunStatus,
    /// Why the run FAILED, also the text of its [`ERROR_TAG`](super::scope::ERROR_TAG) tag: the `Err` text,
    /// `tracking failed: ...`, or `panicked: <message>` (seen in [`last_run`] only: a call that
    /// panics returns nothing).
    pub error: Option<String>,
    /// The first error of the tracking itself, when there was one.
    pub tracking_error: Option<String>,
}

/// How a run scope ended, without the output: what [`last_run`] keeps.
pub type RunRecord = Tracked<()>;

impl RunRecord {
    pub(super) fn with_output<R>(self, output: R) -> Tracked<R> {
        Tracked {
            output,
            run_id: self.run_id,
            mode: self.mode,
            name: self.name,
            status: self.status,
            error: self.error,
            tracking_error: self.tracking_error,
        }
    }
}

/// The error text a panic leaves on its run: `panicked: <message>` for a `&str` or `String`
/// payload (what `panic!` makes), `panicked (non-string payload)` otherwise.
pub fn panic_message(payload: &(dyn Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        format!("panicked: {s}")
    } else if let Some(s) = payload.downcast_ref::<String>() {
        format!("panicked: {s}")
    } else {
        "panicked (non-string payload)".to_owned()
    }
}

// ---- convenience: the last run of this thread ----------------------------------------------

thread_local! {
    static LAST_RUN: RefCell<Option<RunRecord>> = const { RefCell::new(None) };
}

/// Keeps `record` as this thread's last run (see [`last_run`]).
pub(super) fn remember_last(record: &RunRecord) {
    LAST_RUN.with(|r| *r.borrow_mut() = Some(record.clone()));
}

/// How the last run scope that ended on this thread ended (for a `#[tracked]` function: the call
/// that just returned or panicked).
///
/// A convenience kept beside the value each call returns: prefer `<fn>_tracked` (see
/// [`Tracked`]), which hands the same record back with the output and cannot be confused by
/// another call in between.
pub fn last_run() -> Option<RunRecord> {
    LAST_RUN.with(|r| r.borrow().clone())
}

/// The id of the run of the last scope that ended on this thread, e.g. right after a `#[tracked]`
/// function returns (to `resume` it and log more).
///
/// A convenience, like [`last_run`]: `<fn>_tracked(...).run_id` returns the id with the call.
pub fn last_run_id() -> Option<String> {
    LAST_RUN.with(|r| r.borrow().as_ref().and_then(|r| r.run_id.clone()))
}
