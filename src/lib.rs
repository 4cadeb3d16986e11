//! **sapsan**: train machine-learned turbulence models and track every run in
//! [MLflow](https://mlflow.org), from Rust.
//!
//! This facade is the crate to depend on (`cargo add sapsan`): it re-exports the runtime,
//! [`sapsan_core`] (tracking, config, data, estimators, analysis, `Train` / `Evaluate`), and the
//! two macros of [`sapsan_derive`], so `use sapsan::...` is all a user writes. The package also
//! installs the `sapsan` command (`new`, `runs`, `ui`, `sync`).
//!
//! - [`ModelConfig`] (derive): a config struct becomes the MLflow parameters `model - <field>`,
//!   values formatted like Python's `str()`; keys MLflow would reject are compile errors.
//! - [`tracked`] (attribute): a train or evaluate function runs inside an MLflow run (parameters,
//!   timing, metrics, artifacts, FAILED on `Err` or panic); `<fn>_tracked` also returns the run id.
//! - [`tracking::MlflowBackend`]: the MLflow client. Logging only enqueues; a background sender
//!   delivers through an on-disk journal, so a server that is away loses nothing.
//!
//! # Example
//!
//! A tracked train/evaluate pair. [`tracking::FakeBackend`] keeps this example free of a server;
//! with `MlflowBackend::new("my_experiment", "localhost", 5000)?` (or [`tracking::backend_from_env`],
//! which reads `MLFLOW_TRACKING_URI`) the same code records the runs in MLflow.
//!
//! ```
//! use sapsan::config::Kwargs;
//! use sapsan::tracking::run::scope::Report;
//! use sapsan::tracking::{Backend, FakeBackend, RunStatus};
//! use sapsan::{ModelConfig, tracked};
//!
//! #[derive(ModelConfig)]
//! struct MyConfig {
//!     n_epochs: u32,
//!     lr: f64,
//!     /// Extra parameters, logged as `model - <name>` each.
//!     #[sapsan(kwargs)]
//!     kwargs: Kwargs,
//! }
//!
//! /// A Train run: `model - ...` parameters, `train - loss` per epoch, `train - final epoch`.
//! #[tracked(train, params(config))]
//! fn train(backend: &impl Backend, config: &MyConfig) -> sapsan::Result<Report<'static>> {
//!     let mut report = Report::new();
//!     for epoch in 1..=config.n_epochs {
//!         report.metric_at("loss", config.lr / f64::from(epoch), i64::from(epoch));
//!     }
//!     report.final_epoch(u64::from(config.n_epochs));
//!     Ok(report)
//! }
//!
//! /// An Evaluate run, nested under the open Train run.
//! #[tracked(evaluate)]
//! fn evaluate(backend: &impl Backend) -> sapsan::Result<Report<'static>> {
//!     let mut report = Report::new();
//!     report.metric("MSE Loss", 0.01);
//!     Ok(report)
//! }
//!
//! fn main() -> sapsan::Result<()> {
//!     let backend = FakeBackend::new();
//!     let config = MyConfig { n_epochs: 3, lr: 1e-3, kwargs: Kwargs::new().with("seed", 7) };
//!     let trained = train_tracked(&backend, &config);
//!     trained.output?;
//!     let evaluated = evaluate_tracked(&backend);
//!     assert_eq!(evaluated.status, RunStatus::Finished);
//!     assert_ne!(evaluated.run_id, trained.run_id);
//!     Ok(())
//! }
//! ```
//!
//! The main job of the project (synthetic turbulence, a learned closure, `Train` / `Evaluate`)
//! is `examples/quickstart.rs`; [`experiment`] tracks any [`estimator::Estimator`] with no
//! tracking code to write.
//!
//! # Cargo features
//!
//! - `nvml`: GPU system metrics (`system/gpu_<i>_...`) through NVML, loaded at run time: builds
//!   without CUDA and logs no GPU metrics where no NVIDIA driver is installed. Off by default;
//!   turns on `sapsan-core/nvml`.
//!
//! The turbulence pipeline (`sapsan-core`'s default feature `pipeline`) is always on through this
//! crate; it needs the HDF5 C library (`libhdf5-dev` on Debian/Ubuntu). For tracking alone,
//! depend on `sapsan-core` with `default-features = false`.
//!
//! # Crates
//!
//! `sapsan` (this facade and the command) re-exports `sapsan-core` (the runtime) and
//! `sapsan-derive` (the macros, whose generated code calls `sapsan-core`'s public API);
//! `sapsan-keys` holds MLflow's key rules, which both check.
#![warn(missing_docs)]

pub use sapsan_core::*;
pub use sapsan_derive::{ModelConfig, tracked};

/// The code samples of the project README compile (and run where they need no server).
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
