//! The CNN3d estimator on candle: 3D layers, the network, its configuration, the training loop.
//!
//! - [`layers`]: differentiable [`conv3d`](layers::conv3d) and [`max_pool3d`](layers::max_pool3d).
//! - [`init`]: seeded parameter initialisation (reproducible weights on the CPU).
pub mod init;
pub mod layers;
