//! Runtime of **sapsan**: train machine-learned turbulence models and track every run in MLflow.
//!
//! Module map (data flows top to bottom, never back up):
//! - [`config`]: parameter maps (`model - <field>`), Python `str()`-style value formatting, MLflow key rules.
//! - [`experiment`]: `Train` / `Evaluate`, built on the same run API the macros call.
//! - [`estimator`]: the `Estimator` trait; 3D layers on candle, CNN3d, the local closure; training loop, optimizer, schedule, stopping.
//! - [`data`]: HDF5 datasets in Sapsan's layout, samplers, sub-cube batching, synthetic turbulence.
//! - [`analysis`]: MSE, Kolmogorov-Smirnov, the gradient-model baseline, histograms/CDFs, PNG plots, the HTML training report.
//! - [`tracking`]: the `Backend` trait, the MLflow REST client, server start-up, run stack, log queue.
//!
//! - [`diag`]: how the library reports what it does (the `log` facade) and a small stderr logger.
//!
//! `tracking` knows nothing of tensors; `estimator` knows nothing of MLflow; `experiment` joins them.
//!
//! Most users depend on the facade crate [sapsan](https://docs.rs/sapsan), which re-exports this
//! crate and the macros `#[derive(ModelConfig)]` and `#[tracked]` (crate `sapsan-derive`, whose
//! generated code calls this crate's public API). MLflow's key rules live in `sapsan-keys`, which
//! the macros check at compile time and [`config::keys`] re-exports for run time.
//!
//! # Example
//!
//! Parameters of a config and a tracked function, on a [`tracking::FakeBackend`] (no server).
//! `MlflowBackend::new("my_experiment", "localhost", 5000)` or [`tracking::backend_from_env`]
//! records the same runs in MLflow.
//!
//! ```
//! use sapsan_core::config::ModelConfig as _;
//! use sapsan_core::tracking::run::scope::Report;
//! use sapsan_core::tracking::{Backend, FakeBackend, RunStatus};
//! use sapsan_core::{ModelConfig, tracked};
//!
//! #[derive(ModelConfig)]
//! struct Config {
//!     lr: f64,
//!     #[sapsan(rename = "batch size")]
//!     batch_size: usize,
//! }
//!
//! #[tracked(train, params(config))]
//! fn train(config: &Config, backend: &impl Backend) -> sapsan_core::Result<Report<'static>> {
//!     let mut report = Report::new();
//!     report.final_epoch(1).metric("loss", config.lr * 10.0);
//!     Ok(report)
//! }
//!
//! let config = Config { lr: 1e-3, batch_size: 64 };
//! let params = config.parameters()?;
//! assert_eq!(
//!     params.iter().collect::<Vec<_>>(),
//!     [("model - lr", "0.001"), ("model - batch size", "64")]
//! );
//! let backend = FakeBackend::new();
//! let run = train_tracked(&config, &backend);
//! assert_eq!(run.status, RunStatus::Running); // a train run stays open for its evaluations
//! backend.end()?;
//! # Ok::<(), sapsan_core::Error>(())
//! ```
//!
//! # Cargo features
//!
//! - `pipeline` (default): the turbulence pipeline, modules [`data`], [`estimator`], [`analysis`]
//!   and [`experiment`] (HDF5 through the `hdf5` crate, which needs the HDF5 C library,
//!   `libhdf5-dev` on Debian/Ubuntu; candle; plots). Off, the crate is tracking and config only.
//! - `nvml`: GPU system metrics (`system/gpu_<i>_...`) through NVML, loaded at run time: builds
//!   without CUDA and logs no GPU metrics where no NVIDIA driver is installed.
#![warn(missing_docs)]

// Lets this crate use its own derive macros, which name `sapsan_core`.
extern crate self as sapsan_core;

pub mod config;
pub mod diag;
pub mod error;
mod shared;
pub mod tracking;

#[cfg(feature = "pipeline")]
pub mod analysis;
#[cfg(feature = "pipeline")]
pub mod data;
#[cfg(feature = "pipeline")]
pub mod estimator;
#[cfg(feature = "pipeline")]
pub mod experiment;

pub use error::{Error, Result};
pub use sapsan_derive::{ModelConfig, tracked};
