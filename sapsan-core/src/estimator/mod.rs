//! The CNN3d estimator on candle: 3D layers, the network, its configuration, the training loop.
//!
//! - [`layers`]: differentiable [`conv3d`](layers::conv3d) and [`max_pool3d`](layers::max_pool3d).
//! - [`cnn3d`]: the network ([`Cnn3dNet`]) and its forward source text.
//! - [`config`]: [`Cnn3dConfig`], Sapsan's settings and defaults.
//! - [`init`]: seeded parameter initialisation (reproducible weights on the CPU).
pub mod cnn3d;
pub mod config;
pub mod init;
pub mod layers;

pub use cnn3d::Cnn3dNet;
pub use config::Cnn3dConfig;
