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
