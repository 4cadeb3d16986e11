//! The CNN3d estimator on candle: 3D layers, the network, its configuration, the training loop.
//!
//! - [`layers`]: differentiable [`conv3d`](layers::conv3d) and [`max_pool3d`](layers::max_pool3d).
//! - [`cnn3d`]: the network ([`Cnn3dNet`]) and its forward source text.
//! - [`config`]: [`Cnn3dConfig`], Sapsan's settings and defaults.
//! - [`model`]: [`Cnn3d`], the estimator: train, predict, save/load, details.
//! - [`train`]: the training loop, loss, learning-rate schedule, early stopping.
//! - [`adam`]: [`Adam`](adam::Adam), the optimizer, updating parameters in place.
//! - [`init`]: seeded parameter initialisation (reproducible weights on the CPU).
pub mod adam;
pub mod cnn3d;
pub mod config;
pub mod init;
pub mod layers;
pub mod model;
pub mod train;

pub use cnn3d::Cnn3dNet;
pub use config::Cnn3dConfig;
pub use model::Cnn3d;
pub use train::{EpochRecord, Samples, TrainOptions, TrainReport};
