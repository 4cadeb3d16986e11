//! The estimators on candle: the [`Estimator`] trait, Sapsan's CNN3d (3D layers, the network, its
//! configuration), the [`LocalClosure`] the main job trains, and the shared training loop.
//!
//! - [`api`]: the [`Estimator`] trait `Train` / `Evaluate` are written against.
//! - [`closure`]: [`LocalClosure`], a learned local subgrid closure (its own folder).
//! - [`krr`]: [`Krr`], Sapsan's kernel ridge regression with an RBF kernel (its own folder).
//! - [`picae`]: [`Picae`], Sapsan's physics-informed convolutional autoencoder with a
//!   divergence-free output (its own folder).
//! - [`layers`]: differentiable [`conv3d`](layers::conv3d) and [`max_pool3d`](layers::max_pool3d).
//! - [`cnn3d`]: the network ([`Cnn3dNet`]) and its forward source text.
//! - [`config`]: [`Cnn3dConfig`], Sapsan's settings and defaults.
//! - [`model`]: [`Cnn3d`], the estimator: train, predict, save/load, details.
//! - [`train`]: the training loop, learning-rate schedule, early stopping.
//! - [`loss`]: SmoothL1 (Sapsan's CNN3d) and MSE losses.
//! - [`adam`]: [`Adam`](adam::Adam), the optimizer, updating parameters in place.
//! - [`heap`]: keeps freed gradient-sized blocks for the next training step (glibc thresholds).
//! - [`init`]: seeded parameter initialisation (reproducible weights on the CPU).
//! - [`weights`]: a network's variables to and from safetensors bytes.
pub mod adam;
pub mod api;
pub mod closure;
pub mod cnn3d;
pub mod config;
#[cfg(test)]
pub(crate) mod gradcheck;
pub mod heap;
pub mod init;
pub mod krr;
pub mod layers;
pub mod loss;
pub mod model;
pub mod picae;
pub mod train;
pub mod weights;

pub use api::Estimator;
pub use closure::LocalClosure;
pub use closure::config::LocalClosureConfig;
pub use cnn3d::Cnn3dNet;
pub use config::Cnn3dConfig;
pub use krr::Krr;
pub use krr::config::KrrConfig;
pub use loss::Loss;
pub use model::Cnn3d;
pub use picae::Picae;
pub use picae::config::PicaeConfig;
pub use train::{EpochRecord, FitSettings, Network, Samples, TrainOptions, TrainReport};
