//! Procedural macros of [sapsan](https://docs.rs/sapsan): `#[derive(ModelConfig)]` and
//! `#[tracked]`.
//!
//! This crate only turns tokens into code: the generated code calls the public runtime API of
//! `sapsan-core` (`config::ParamsBuilder`, `tracking::run::scope::RunScope`), and keys are checked
//! at compile time with `sapsan-keys`, the rules the runtime uses too. Use the macros through the
//! `sapsan` facade (`use sapsan::{ModelConfig, tracked};`) or `sapsan-core`: the expansion names
//! `::sapsan` when the calling crate depends on the facade, else `::sapsan_core`
//! (`#[sapsan(crate = path)]` / `crate = path` for re-exports).
//!
//! ```
//! use sapsan_core::config::ModelConfig as _;
//! use sapsan_core::tracking::{Backend, FakeBackend};
//! use sapsan_core::{ModelConfig, tracked};
//!
//! #[derive(ModelConfig)]
//! #[sapsan(prefix = "data")]
//! struct DataConfig {
//!     checkpoints: Vec<u32>,
//!     #[sapsan(skip)]
//!     cache: bool,
//! }
//!
//! #[tracked(evaluate, params(data))]
//! fn evaluate(data: &DataConfig, backend: &impl Backend) -> sapsan_core::Result<()> {
//!     backend.log_metric("eval - checkpoints", data.checkpoints.len() as f64)
//! }
//!
//! let data = DataConfig { checkpoints: vec![0, 10], cache: true };
//! let params = data.parameters().unwrap();
//! assert_eq!(params.iter().collect::<Vec<_>>(), [("data - checkpoints", "[0, 10]")]);
//! let backend = FakeBackend::new();
//! backend.start("train", false, None).unwrap(); // the evaluate run nests under it
//! evaluate(&data, &backend).unwrap();
//! ```
//!
//! A key MLflow would reject is a compile error, pointing at the field:
//!
//! ```compile_fail
//! #[derive(sapsan_core::ModelConfig)]
//! struct Config {
//!     #[sapsan(rename = "acc@1")]
//!     accuracy: f64,
//! }
//! ```
//!
//! No cargo features.
#![warn(missing_docs)]
use proc_macro::TokenStream;

mod common;
/// MLflow's key rules: the crate the runtime uses too, so compile-time and run-time checks agree.
use sapsan_keys as keys;
mod model_config;
mod tracked;

/// Derives `ModelConfig` for a struct with named fields: `parameters()` returns the ordered map
/// `<prefix> - <field>` = the field's value formatted like Python's `str()` (trait `PyStr`), one
/// entry per field in declaration order, then one per entry of the kwargs field.
///
/// Keys are checked against MLflow's rules at compile time (a `/` at either end, `//`, characters
/// such as `@ , (`, more than 250 characters, two fields with the same key are compile errors);
/// kwargs keys are checked when `parameters()` runs, and a kwarg may not replace a field's key.
///
/// Struct options, `#[sapsan(...)]`:
/// - `prefix = "data"`: keys are `data - <field>` (default `model`).
/// - `crate = path`: path of the runtime crate, for re-exports (default: `::sapsan` when the
///   crate depends on the facade, else `::sapsan_core`).
///
/// Field options, `#[sapsan(...)]`:
/// - `rename = "initial size"`: the key is `<prefix> - initial size`.
/// - `skip`: the field is not logged.
/// - `kwargs`: the field is a map (`Kwargs`, `BTreeMap`, `HashMap`, `Vec<(K, V)>`; trait
///   `KwargsMap`) whose entries are logged as `<prefix> - <name>` after the fields. At most one.
/// - `with = path`: format with `path`, a `fn(&FieldType) -> String`, instead of `PyStr`.
/// - `default = expr`: for an `Option<T>` field: when it is `None`, log `expr` instead (evaluated
///   in `parameters(&self)`, so `self` is in scope). Sapsan's CNN3d `min_lr` is
///   `#[sapsan(default = self.lr * 1e-2)] min_lr: Option<f64>`.
///
/// ```
/// use sapsan_core::ModelConfig;
/// use sapsan_core::config::{Kwargs, ModelConfig as _};
///
/// #[derive(ModelConfig)]
/// struct Cnn3dConfig {
///     n_epochs: u32,
///     logdir: String,
///     patience: u32,
///     min_delta: f64,
///     lr: f64,
///     #[sapsan(default = self.lr * 1e-2)]
///     min_lr: Option<f64>,
///     #[sapsan(kwargs)]
///     kwargs: Kwargs,
/// }
///
/// let cfg = Cnn3dConfig {
///     n_epochs: 1, logdir: "./logs/".into(), patience: 10, min_delta: 1e-5, lr: 1e-3,
///     min_lr: None, kwargs: Kwargs::new().with("new_parameter", true),
/// };
/// let p = cfg.parameters().unwrap();
/// assert_eq!(p.iter().collect::<Vec<_>>(), [
///     ("model - n_epochs", "1"), ("model - logdir", "./logs/"), ("model - patience", "10"),
///     ("model - min_delta", "1e-05"), ("model - lr", "0.001"), ("model - min_lr", "1e-05"),
///     ("model - new_parameter", "True"),
/// ]);
/// ```
#[proc_macro_derive(ModelConfig, attributes(sapsan))]
pub fn derive_model_config(input: TokenStream) -> TokenStream {
    model_config::expand(input.into()).into()
}

/// Wraps a train or evaluate function in MLflow run bookkeeping; its signature stays as written,
/// and a companion `<fn>_tracked` with the same arguments returns the output together with the
/// run id: `sapsan::tracking::run::scope::Tracked { output, run_id, status, error, .. }`.
///
/// The expansion, in plain words:
/// 1. Start a run on the backend argument. `train`: end the backend's other open runs, start a
///    top-level run. `evaluate`: start a run nested under `parent = <run id>` or, without it, under
///    the backend's active run (the open train run). The run is named `name = "..."` or after the
///    function, and becomes the backend's active run, so `backend.log_metric(...)` in the body
///    logs to it.
/// 2. Log the parameters of each argument in `params(a, b)` (types implementing `ModelConfig`).
/// 3. Run the body (in a closure with the function's return type, so `return` and `?` work as
///    before, under `catch_unwind`) and time it.
/// 4. If the value is an `Err`: end the run FAILED with the error text in the tag `sapsan.error`,
///    flush, and return the `Err`. If the body panics: the same with `panicked: <message>`, then
///    the panic goes on unwinding to the caller.
/// 5. Otherwise log what the value reports (trait `TrackedOutput`: metrics with optional steps, the
///    final epoch, artifacts), prefixed `train - ` or `eval - `, plus `train - runtime` /
///    `eval - runtime` in seconds. `evaluate` also copies the parent's params (those it did not log
///    itself) and `train - ` metrics, then ends its run FINISHED; `train` leaves its run open.
///
/// The run id comes back with the call: `fit(a, b)` returns the function's value as written;
/// `fit_tracked(a, b)` runs the very same code and returns `Tracked<R>`, the value in `.output`
/// beside `.run_id` (`None` only when the run could not be created), `.status`, `.error` (the
/// failure text) and `.tracking_error`. Resume a run with `backend.resume(&id)`, log more,
/// `backend.end()`. For a method the companion is a method too (`self.fit_tracked(..)`).
/// (`scope::last_run_id()` remains as a convenience: this thread's last tracked run.)
///
/// If the tracking itself fails (server down, invalid metric key) and the function returns
/// `Result<T, E>` with `E: From<sapsan::Error>`, that error is returned (before the body runs when
/// the run cannot be started); other return types get their value back and the error goes to
/// stderr and `Tracked::tracking_error`.
///
/// Options: `train` | `evaluate` (required), `name = "..."`, `params(arg, ...)` (arguments or
/// expressions such as `self.config`), `backend = <expr>` (default: the one argument whose type is a
/// backend: `&B` with `B: Backend`, `&dyn Backend`, `&impl Backend`, `&MlflowBackend`,
/// `&FakeBackend`, `Arc<...>`), `parent = <expr>` (evaluate only; a `&str`/`String` run id),
/// `companion = name` (name the companion other than `<fn>_tracked`) or `companion = false` (no
/// companion: needed for a method of a trait impl, which cannot gain one), `crate = path`.
/// Generics, lifetimes, `impl Trait` arguments, `self` methods, doc comments and other attributes
/// are kept. `async fn`, `const fn` and `impl Trait` return types are rejected. The companion of an
/// associated function is reached as `Self::<fn>_tracked` when the function takes `self` or names
/// `Self`, else as a free function. The function itself is marked `#[allow(dead_code)]`, so code
/// that calls only the companion gets no warning.
///
/// ```
/// use sapsan_core::tracking::{Backend, FakeBackend, RunStatus};
/// use sapsan_core::tracking::run::scope::{Report, TrackedOutput};
/// use sapsan_core::{Error, ModelConfig, tracked};
///
/// #[derive(ModelConfig)]
/// struct Config { lr: f64 }
///
/// struct Trained { loss: f64 }
/// impl TrackedOutput for Trained {
///     fn report<'a>(&'a self, r: &mut Report<'a>) {
///         r.final_epoch(1).metric("loss", self.loss);
///     }
/// }
///
/// #[tracked(train, params(config))]
/// fn train(config: &Config, backend: &impl Backend) -> Result<Trained, Error> {
///     Ok(Trained { loss: config.lr * 10.0 })
/// }
///
/// #[tracked(evaluate, name = "evaluate")]
/// fn evaluate(model: &Trained, backend: &impl Backend) -> Result<(), Error> {
///     backend.log_metric("eval - extra", model.loss)?; // the evaluate run is the active one
///     Ok(())
/// }
///
/// let backend = FakeBackend::new();
/// let trained = train_tracked(&Config { lr: 1e-3 }, &backend); // `train` with its run
/// let (model, train_id) = (trained.output.unwrap(), trained.run_id.unwrap());
/// assert_eq!(backend.active_run_id(), Some(train_id.clone())); // the train run stays open
///
/// let evaluated = evaluate_tracked(&model, &backend);
/// assert_eq!(evaluated.status, RunStatus::Finished);
/// assert_ne!(evaluated.run_id, Some(train_id));
/// evaluate(&model, &backend).unwrap(); // the function as written: its output alone
/// ```
#[proc_macro_attribute]
pub fn tracked(args: TokenStream, item: TokenStream) -> TokenStream {
    tracked::expand(args.into(), item.into()).into()
}
