//! Run scopes: the small runtime API behind `#[tracked(train)]` / `#[tracked(evaluate)]`, usable by hand.
//!
//! A [`RunScope`] starts a run, logs parameter groups, and at the end logs what the function's
//! output reports ([`TrackedOutput`]) plus the runtime, or marks the run FAILED:
//!
//! - **train** ([`RunScope::train`]): ends the backend's other open runs (FINISHED), starts a
//!   top-level run and pushes it on the backend's run stack. [`RunScope::finish`] logs
//!   `train - <metric>`s, artifacts and `train - runtime` and leaves the run open so evaluations
//!   nest under it.
//! - **evaluate** ([`RunScope::evaluate`]): starts a run nested under `parent` or, when none is
//!   given, under the backend's active run (a top-level run when there is none), and pushes it.
//!   [`RunScope::finish`] logs `eval - <metric>`s, artifacts and `eval - runtime`, copies the
//!   parent's params (those the evaluation did not log itself) and its `train - ` metrics, and
//!   ends the run FINISHED.
//! - **failure**: [`RunScope::fail`], an output whose [`TrackedOutput::failure`] is set (an `Err`),
//!   or a panic while the scope is alive ends the run FAILED with the error text in the tag
//!   [`ERROR_TAG`] and flushes. A `#[tracked]` function catches its body's panic and records
//!   `panicked: <message>` ([`panic_message`]) before the panic goes on unwinding; a hand-written
//!   scope dropped during a panic (its `Drop`) records `panicked`. A failed train run is removed
//!   from the run stack, so it is never left RUNNING.
//!
//! **The run id comes back with the call.** `#[tracked]` keeps the function as written and adds a
//! companion, `<fn>_tracked`, with the same arguments, that returns [`Tracked`]: the function's
//! output together with its run's id, status and errors. Hand-written scopes return the run id
//! from [`RunScope::finish`]. As a convenience on top, the record of the last scope that ended on
//! this thread is also kept ([`last_run`], [`last_run_id`]); no tracking logic reads it.
use std::any::Any;
use std::ops::Deref;
use std::sync::Arc;
use std::time::Instant;

use crate::config::ModelConfig;
use crate::config::keys::MAX_TAG_VALUE_LEN;
use crate::error::{Error, Result};
use crate::tracking::{Backend, LogItem, Metric, RunData, RunStatus, now_ms};

/// Tag that holds the error text of a FAILED run.
pub const ERROR_TAG: &str = "sapsan.error";

// ---- backends -----------------------------------------------------------------------------

/// A backend a scope holds: borrowed, or shared through an `Arc` (so the scope does not borrow the
/// argument it came from).
#[derive(Clone)]
pub enum BackendHandle<'b> {
    /// A borrowed backend.
    Borrowed(&'b dyn Backend),
    /// A shared backend.
    Shared(Arc<dyn Backend + 'b>),
}

impl<'b> Deref for BackendHandle<'b> {
    type Target = dyn Backend + 'b;
    fn deref(&self) -> &Self::Target {
        match self {
            BackendHandle::Borrowed(b) => *b,
            BackendHandle::Shared(b) => &**b,
        }
    }
}

impl std::fmt::Debug for BackendHandle<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            BackendHandle::Borrowed(_) => "BackendHandle::Borrowed",
            BackendHandle::Shared(_) => "BackendHandle::Shared",
        })
    }
}

/// What can serve as the backend of a scope: `&B`, `&dyn Backend`, `Arc<B>`, `Arc<dyn Backend>`
/// (and references to those) where `B: Backend`.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a tracking backend",
    label = "expected `&B`, `&dyn Backend` or `Arc<B>` with `B: Backend`",
    note = "pass the backend by reference, e.g. `backend: &MlflowBackend`, or name it with `#[tracked(..., backend = <expr>)]`"
)]
pub trait BackendArg<'b> {
    /// A handle on the backend that does not borrow `self`.
    fn backend_handle(&self) -> BackendHandle<'b>;
}

impl<'b, B: Backend + 'b> BackendArg<'b> for &'b B {
    fn backend_handle(&self) -> BackendHandle<'b> {
        BackendHandle::Borrowed(*self)
    }
}

impl<'b> BackendArg<'b> for &'b (dyn Backend + 'b) {
    fn backend_handle(&self) -> BackendHandle<'b> {
        BackendHandle::Borrowed(*self)
    }
}

impl<'b, B: Backend + 'b> BackendArg<'b> for Arc<B> {
    fn backend_handle(&self) -> BackendHandle<'b> {
        BackendHandle::Shared(self.clone())
    }
}

impl<'b> BackendArg<'b> for Arc<dyn Backend + 'b> {
    fn backend_handle(&self) -> BackendHandle<'b> {
        BackendHandle::Shared(self.clone())
    }
}

impl<'b, B: Backend + 'b> BackendArg<'b> for &Arc<B> {
    fn backend_handle(&self) -> BackendHandle<'b> {
        BackendHandle::Shared((*self).clone())
    }
}

impl<'b> BackendArg<'b> for &Arc<dyn Backend + 'b> {
    fn backend_handle(&self) -> BackendHandle<'b> {
        BackendHandle::Shared((*self).clone())
    }
}

impl<'b> BackendArg<'b> for BackendHandle<'b> {
    fn backend_handle(&self) -> BackendHandle<'b> {
        self.clone()
    }
}

pub use super::output::{
    Mode, Report, RunRecord, Tracked, TrackedOutput, last_run, last_run_id, panic_message,
};

// ---- the scope ----------------------------------------------------------------------------

/// One tracked run from start to finish. See the [module documentation](self).
///
/// By hand (what `#[tracked]` writes for you):
/// ```
/// use sapsan_core::tracking::run::scope::{Report, RunScope};
/// use sapsan_core::tracking::{Backend, FakeBackend};
///
/// let backend = FakeBackend::new();
/// let mut train = RunScope::train(&backend, "train")?;
/// // ... log params with `train.log_params(&config)?`, train the model ...
/// let mut report = Report::new();
/// report.final_epoch(50).metric("loss", 0.01);
/// let train_id = train.finish(&report)?; // logs `train - ...`, stays open
///
/// let eval = RunScope::evaluate(&backend, "evaluate", None)?; // nested under `train_id`
/// eval.fail("target cube missing")?; // FAILED, error text in the `sapsan.error` tag
/// assert_eq!(backend.active_run_id(), Some(train_id));
/// # Ok::<(), sapsan_core::Error>(())
/// ```
#[derive(Debug)]
pub struct RunScope<'b> {
    backend: BackendHandle<'b>,
    mode: Mode,
    name: String,
    /// `None` only for the inert scope of a `#[tracked]` function whose run could not be created.
    run_id: Option<String>,
    parent_data: Option<RunData>,
    logged_params: Vec<String>,
    started: Instant,
    tracking_error: Option<Error>,
    start_error: Option<String>,
    done: bool,
}

fn truncate(text: &str, max: usize) -> String {
    text.chars().take(max).collect()
}

impl<'b> RunScope<'b> {
    /// Starts a train run named `name`: ends the backend's other open runs, creates a top-level run
    /// and makes it the active one.
    pub fn train(backend: impl BackendArg<'b>, name: &str) -> Result<Self> {
        Self::start(backend.backend_handle(), Mode::Train, name, None)
    }

    /// Starts an evaluate run named `name`, nested under `parent` or, when `None`, under the
    /// backend's active run (top-level when there is none), copying nothing yet: the parent's
    /// params and `train - ` metrics are copied by [`RunScope::finish`] / [`RunScope::fail`].
    pub fn evaluate(
        backend: impl BackendArg<'b>,
        name: &str,
        parent: Option<&str>,
    ) -> Result<Self> {
        Self::start(
            backend.backend_handle(),
            Mode::Evaluate,
            name,
            parent.map(str::to_owned),
        )
    }

    /// Starts a run of `mode` (`parent` only matters for [`Mode::Evaluate`]).
    pub fn start(
        backend: BackendHandle<'b>,
        mode: Mode,
        name: &str,
        parent: Option<String>,
    ) -> Result<Self> {
        let mut parent_data = None;
        let run_id = match mode {
            Mode::Train => {
                backend.close_active_runs()?;
                backend.create_run(name, None)?
            }
            Mode::Evaluate => {
                let parent = parent.or_else(|| backend.active_run_id());
                if let Some(p) = &parent {
                    parent_data = Some(backend.run_data(p)?);
                }
                backend.create_run(name, parent.as_deref())?
            }
        };
        backend.runs().push(&run_id);
        Ok(Self {
            backend,
            mode,
            name: name.to_owned(),
            run_id: Some(run_id),
            parent_data,
            logged_params: Vec::new(),
            started: Instant::now(),
            tracking_error: None,
            start_error: None,
            done: false,
        })
    }

    /// The run's id (`None` only inside a `#[tracked]` function whose run could not be created).
    pub fn run_id(&self) -> Option<&str> {
        self.run_id.as_deref()
    }

    /// Train or evaluate.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// Logs the parameters of `config` to the run.
    pub fn log_params(&mut self, config: &(impl ModelConfig + ?Sized)) -> Result<()> {
        let params = config.parameters()?;
        let Some(run) = self.run_id.clone() else {
            return Ok(());
        };
        for (key, value) in params {
            self.backend.enqueue(
                &run,
                LogItem::Param {
                    key: key.clone(),
                    value,
                },
            )?;
            self.logged_params.push(key);
        }
        Ok(())
    }

    fn log_metric(&self, run: &str, key: String, value: f64, step: i64) -> Result<()> {
        self.log_model_metric(run, key, value, step, None)
    }

    fn log_model_metric(
        &self,
        run: &str,
        key: String,
        value: f64,
        step: i64,
        model: Option<&str>,
    ) -> Result<()> {
        let mut m = Metric::new(key, value, now_ms(), step);
        m.model_id = model.map(str::to_owned);
        self.backend.enqueue(run, LogItem::Metric(m))
    }

    /// Evaluate runs: the parent's params this run did not log, then its `train - ` metrics.
    fn copy_parent(&mut self, run: &str) -> Result<()> {
        let Some(parent) = self.parent_data.take() else {
            return Ok(());
        };
        for (key, value) in parent.params {
            if !self.logged_params.contains(&key) {
                self.backend.enqueue(run, LogItem::Param { key, value })?;
            }
        }
        for (key, value) in parent.metrics {
            if key.starts_with(Mode::Train.metric_prefix()) {
                self.log_metric(run, key, value, 0)?;
            }
        }
        Ok(())
    }

    /// Marks the scope ended and returns how (also kept as this thread's [`last_run`]).
    fn ended(
        &mut self,
        status: RunStatus,
        error: Option<String>,
        tracking_error: Option<String>,
    ) -> RunRecord {
        self.done = true;
        let record = RunRecord {
            output: (),
            run_id: self.run_id.clone(),
            mode: self.mode,
            name: self.name.clone(),
            status,
            error,
            tracking_error,
        };
        super::output::remember_last(&record);
        record
    }

    fn log_output(&mut self, run: &str, output: &impl TrackedOutput) -> Result<()> {
        let mut report = Report::new();
        output.report(&mut report);
        let prefix = self.mode.metric_prefix();
        for (name, value, step) in report.metrics() {
            let key = format!("{prefix}{name}");
            self.log_model_metric(run, key, value, step.unwrap_or(0), report.model_id())?;
        }
        let runtime = self.started.elapsed().as_secs_f64();
        self.log_metric(run, format!("{prefix}runtime"), runtime, 0)?;
        for (name, bytes) in report.artifacts() {
            self.backend.upload_artifact(run, name, bytes)?;
        }
        self.copy_parent(run)?;
        if self.mode == Mode::Evaluate {
            self.backend.end_run(run, RunStatus::Finished)?;
        }
        self.backend.flush()
    }

    /// Ends the scope with the function's `output`: when it is a failure, as [`RunScope::fail`];
    /// otherwise logs the reported metrics (`train - `/`eval - ` prefixed), `<mode> - runtime` in
    /// seconds and the artifacts, copies the parent's data (evaluate), ends the run FINISHED
    /// (evaluate; a train run stays open) and flushes. A tracking error on the way ends the run
    /// FAILED and is returned. Returns the run id.
    pub fn finish(mut self, output: &impl TrackedOutput) -> Result<String> {
        let run = self.run_id.clone().unwrap_or_default();
        self.end_with(output).1.map(|()| run)
    }

    /// [`RunScope::finish`]: how the run ended, and the first error of the tracking.
    fn end_with(&mut self, output: &impl TrackedOutput) -> (RunRecord, Result<()>) {
        if let Some(message) = output.failure() {
            return self.fail_inner(&message, None);
        }
        let Some(run) = self.run_id.clone() else {
            let start_error = self.start_error.clone();
            return (self.ended(RunStatus::Failed, None, start_error), Ok(()));
        };
        match self.log_output(&run, output) {
            Ok(()) => {
                let status = match self.mode {
                    Mode::Train => RunStatus::Running,
                    Mode::Evaluate => RunStatus::Finished,
                };
                (self.ended(status, None, None), Ok(()))
            }
            Err(e) => {
                let text = format!("tracking failed: {e}");
                // Best effort: the run must not stay RUNNING after a failure.
                let (record, _) = self.fail_inner(&text, Some(e.to_string()));
                (record, Err(e))
            }
        }
    }

    /// Ends the run FAILED with `message` in the tag [`ERROR_TAG`], removes it from the run stack
    /// and flushes.
    pub fn fail(mut self, message: &str) -> Result<()> {
        self.fail_inner(message, None).1
    }

    /// [`RunScope::fail`]: how the run ended, and the first error on the way.
    fn fail_inner(
        &mut self,
        message: &str,
        tracking_error: Option<String>,
    ) -> (RunRecord, Result<()>) {
        let tracking_error = tracking_error.or_else(|| self.start_error.clone());
        let record = self.ended(RunStatus::Failed, Some(message.to_owned()), tracking_error);
        let result = self.fail_run(message);
        (record, result)
    }

    /// Copies the parent's data, tags the error, ends the run FAILED and flushes.
    fn fail_run(&mut self, message: &str) -> Result<()> {
        let Some(run) = self.run_id.clone() else {
            return Ok(());
        };
        let mut first: Option<Error> = None;
        let mut keep = |r: Result<()>| {
            if let Err(e) = r {
                first.get_or_insert(e);
            }
        };
        keep(self.copy_parent(&run));
        keep(self.backend.enqueue(
            &run,
            LogItem::Tag {
                key: ERROR_TAG.to_owned(),
                value: truncate(message, MAX_TAG_VALUE_LEN),
            },
        ));
        keep(self.backend.end_run(&run, RunStatus::Failed));
        keep(self.backend.flush());
        first.map_or(Ok(()), Err)
    }

    // ---- what `#[tracked]` calls ------------------------------------------------------------

    /// Used by `#[tracked]`: starts a run. When that fails, either stops the function with the
    /// error as its output (`Err(tracked)`, for outputs that can hold it) or continues with an inert
    /// scope that logs nothing; the error is written to stderr and kept in
    /// [`Tracked::tracking_error`].
    #[doc(hidden)]
    pub fn start_tracked<R: TrackedOutput>(
        backend: BackendHandle<'b>,
        mode: Mode,
        name: &str,
        parent: Option<String>,
    ) -> std::result::Result<TrackedScope<'b, R>, Tracked<R>> {
        let tracked = |scope| TrackedScope {
            scope,
            finish: RunScope::finish_tracked::<R>,
        };
        match Self::start(backend.clone(), mode, name, parent) {
            Ok(scope) => Ok(tracked(scope)),
            Err(e) => {
                let text = e.to_string();
                let mut inert = Self {
                    backend,
                    mode,
                    name: name.to_owned(),
                    run_id: None,
                    parent_data: None,
                    logged_params: Vec::new(),
                    started: Instant::now(),
                    tracking_error: None,
                    start_error: Some(text.clone()),
                    done: false,
                };
                match R::from_tracking_error(e) {
                    Some(r) => {
                        let record = inert.ended(RunStatus::Failed, None, Some(text));
                        Err(record.with_output(r))
                    }
                    None => {
                        crate::diag::notice(
                            "sapsan::run",
                            &format!("cannot start the {name:?} run, running untracked: {text}"),
                        );
                        Ok(tracked(inert))
                    }
                }
            }
        }
    }

    /// Used by `#[tracked]`: logs the params of `config`, keeping the first error for the end.
    #[doc(hidden)]
    pub fn params_tracked(&mut self, config: &(impl ModelConfig + ?Sized)) {
        if self.tracking_error.is_none()
            && let Err(e) = self.log_params(config)
        {
            self.tracking_error = Some(e);
        }
    }

    /// Used by `#[tracked]`: ends the scope with the function's return value and returns it with
    /// how the run ended (the value is replaced by the tracking's error when the tracking failed
    /// and the value can hold it).
    #[doc(hidden)]
    pub fn finish_tracked<R: TrackedOutput>(mut self, output: R) -> Tracked<R> {
        if output.failure().is_none()
            && let Some(e) = self.tracking_error.take()
        {
            let text = e.to_string();
            let (record, _) = self.fail_inner(&format!("tracking failed: {text}"), Some(text));
            return record.with_output(tracking_error_into(e, output));
        }
        let (record, result) = self.end_with(&output);
        let output = match result {
            Ok(()) => output,
            Err(e) => tracking_error_into(e, output),
        };
        record.with_output(output)
    }

    /// Used by `#[tracked]`: ends the run FAILED with the [`panic_message`] of `payload` (a panic
    /// of the function's body, caught) and flushes; the caller then resumes the unwinding.
    #[doc(hidden)]
    pub fn fail_panicked(mut self, payload: &(dyn Any + Send)) -> RunRecord {
        self.fail_inner(&panic_message(payload), None).0
    }
}

/// Used by `#[tracked]`: a [`RunScope`] for a function returning `R`. Only
/// [`RunScope::start_tracked`] requires `R: TrackedOutput`, so a wrong return type is one error.
#[doc(hidden)]
pub struct TrackedScope<'b, R> {
    scope: RunScope<'b>,
    finish: fn(RunScope<'b>, R) -> Tracked<R>,
}

impl<'b, R> TrackedScope<'b, R> {
    /// Logs the params of `config`, keeping the first error for the end.
    pub fn params_tracked(&mut self, config: &(impl ModelConfig + ?Sized)) {
        self.scope.params_tracked(config);
    }

    /// Ends the scope with what the function's body did, caught with
    /// [`std::panic::catch_unwind`]: its value ([`RunScope::finish_tracked`]), or its panic, which
    /// ends the run FAILED with `panicked: <message>` ([`RunScope::fail_panicked`]) and then
    /// unwinds on to the caller.
    pub fn finish_tracked(self, body: std::thread::Result<R>) -> Tracked<R> {
        match body {
            Ok(output) => (self.finish)(self.scope, output),
            Err(payload) => {
                let _ = self.scope.fail_panicked(&*payload);
                std::panic::resume_unwind(payload)
            }
        }
    }
}

/// The tracking error as the function's value when its type can hold one; else the value itself,
/// with the error on stderr (it is also in [`Tracked::tracking_error`]).
fn tracking_error_into<R: TrackedOutput>(error: Error, output: R) -> R {
    let text = error.to_string();
    match R::from_tracking_error(error) {
        Some(r) => r,
        None => {
            crate::diag::notice("sapsan::run", &format!("tracking failed: {text}"));
            output
        }
    }
}

impl Drop for RunScope<'_> {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let message = if std::thread::panicking() {
            "panicked"
        } else {
            "the run scope was dropped without `finish` or `fail`"
        };
        // Nothing to propagate to from a destructor: failures here are best effort.
        let _ = self.fail_inner(message, None);
    }
}

#[cfg(test)]
mod tests {
    use std::panic::{AssertUnwindSafe, catch_unwind};
    use std::sync::Mutex;

    use super::*;
    use crate::tracked;
    use crate::tracking::{FakeBackend, RunStack};

    /// A [`FakeBackend`] that also keeps the tags it is sent (the fake stores nothing).
    #[derive(Default)]
    struct SpyBackend {
        fake: FakeBackend,
        tags: Mutex<Vec<(String, String, String)>>,
        metrics: Mutex<Vec<(String, Metric)>>,
    }

    impl SpyBackend {
        fn tag(&self, run: &str, key: &str) -> Option<String> {
            let tags = self.tags.lock().unwrap();
            tags.iter()
                .find(|(r, k, _)| r == run && k == key)
                .map(|(_, _, v)| v.clone())
        }
    }

    impl Backend for SpyBackend {
        fn create_run(&self, name: &str, parent: Option<&str>) -> Result<String> {
            self.fake.create_run(name, parent)
        }
        fn enqueue(&self, run: &str, item: LogItem) -> Result<()> {
            if let LogItem::Tag { key, value } = &item {
                let tag = (run.to_owned(), key.clone(), value.clone());
                self.tags.lock().unwrap().push(tag);
            }
            if let LogItem::Metric(m) = &item {
                self.metrics
                    .lock()
                    .unwrap()
                    .push((run.to_owned(), m.clone()));
            }
            self.fake.enqueue(run, item)
        }
        fn upload_artifact(&self, run: &str, name: &str, bytes: &[u8]) -> Result<()> {
            self.fake.upload_artifact(run, name, bytes)
        }
        fn set_status(&self, run: &str, status: RunStatus) -> Result<()> {
            self.fake.set_status(run, status)
        }
        fn flush(&self) -> Result<()> {
            self.fake.flush()
        }
        fn run_data(&self, run: &str) -> Result<RunData> {
            self.fake.run_data(run)
        }
        fn runs(&self) -> &RunStack {
            self.fake.runs()
        }
    }

    #[tracked(train)]
    fn fit(epochs: u32, backend: &FakeBackend) -> Result<Report<'static>, Error> {
        let mut r = Report::new();
        r.final_epoch(u64::from(epochs));
        Ok(r)
    }

    #[tracked(evaluate)]
    fn score(backend: &impl Backend) -> Result<(), Error> {
        Err(Error::Estimator("no target".into()))
    }

    #[test]
    fn the_run_id_comes_back_with_the_output() {
        let b = FakeBackend::new();
        let train = fit_tracked(3, &b);
        assert!(train.output.is_ok());
        assert_eq!((train.mode, train.name.as_str()), (Mode::Train, "fit"));
        assert_eq!(train.status, RunStatus::Running);
        let train_id = train.run_id.expect("a run id");
        assert_eq!(
            b.active_run_id(),
            Some(train_id.clone()),
            "the open train run"
        );

        let eval = score_tracked(&b);
        assert!(eval.output.is_err());
        assert_eq!(
            (eval.status, eval.error.as_deref()),
            (RunStatus::Failed, Some("estimator: no target"))
        );
        let eval_id = eval.run_id.expect("a run id");
        assert_ne!(eval_id, train_id);
        assert_eq!(
            b.active_run_id(),
            Some(train_id),
            "the train run is still open"
        );
    }

    #[tracked(train)]
    fn diverge(lr: f64, backend: &SpyBackend) -> Result<(), Error> {
        if lr > 1.0 {
            panic!("loss is NaN at lr {lr}");
        }
        Ok(())
    }

    #[test]
    fn a_panic_fails_the_run_with_its_message_and_unwinds_on() {
        let b = SpyBackend::default();
        let payload = catch_unwind(AssertUnwindSafe(|| diverge(2.5, &b))).unwrap_err();
        assert_eq!(
            payload.downcast_ref::<String>().map(String::as_str),
            Some("loss is NaN at lr 2.5"),
            "the caller sees the panic itself"
        );
        let run = last_run().unwrap();
        assert_eq!(run.status, RunStatus::Failed);
        assert_eq!(
            run.error.as_deref(),
            Some("panicked: loss is NaN at lr 2.5")
        );
        let id = run.run_id.unwrap();
        let tag = b.tag(&id, ERROR_TAG).unwrap();
        assert!(tag.contains("loss is NaN at lr 2.5"), "{tag}");
        assert_eq!(b.active_run_id(), None, "not left open");
    }

    #[tracked(evaluate)]
    fn measured(backend: &SpyBackend) -> Result<Report<'static>, Error> {
        let mut r = Report::new();
        r.metric("MSE Loss", 0.5).model("m-1234");
        Ok(r)
    }

    #[test]
    fn reported_metrics_name_the_model_they_measure() {
        let b = SpyBackend::default();
        b.start("train", false, None).unwrap();
        let eval = measured_tracked(&b);
        let run = eval.run_id.expect("an evaluate run");
        let metrics = b.metrics.lock().unwrap();
        let find = |k: &str| {
            metrics
                .iter()
                .find(|(r, m)| *r == run && m.key == k)
                .map(|(_, m)| m.model_id.clone())
        };
        assert_eq!(find("eval - MSE Loss"), Some(Some("m-1234".to_owned())));
        // Not a measurement of the model.
        assert_eq!(find("eval - runtime"), Some(None));
    }

    #[test]
    fn panic_messages() {
        let text = |p: Box<dyn Any + Send>| panic_message(&*p);
        assert_eq!(text(Box::new("boom")), "panicked: boom");
        assert_eq!(text(Box::new(String::from("x = 1"))), "panicked: x = 1");
        assert_eq!(text(Box::new(7_u8)), "panicked (non-string payload)");
    }

    #[test]
    fn a_hand_written_scope_still_fails_when_dropped_in_a_panic() {
        let b = SpyBackend::default();
        let run = Mutex::new(String::new());
        let _ = catch_unwind(AssertUnwindSafe(|| {
            let scope = RunScope::train(&b, "manual").unwrap();
            *run.lock().unwrap() = scope.run_id().unwrap().to_owned();
            panic!("inside");
        }));
        let run = run.into_inner().unwrap();
        assert_eq!(b.tag(&run, ERROR_TAG).as_deref(), Some("panicked"));
        assert_eq!(b.active_run_id(), None);
    }
}
