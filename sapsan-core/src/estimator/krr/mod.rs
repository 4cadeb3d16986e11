//! [`Krr`]: kernel ridge regression with an RBF kernel, Sapsan's `KRR` estimator (scikit-learn's
//! `KernelRidge(kernel='rbf', alpha, gamma)`), behind the same [`Estimator`] trait as the
//! networks.
//!
//! As in Sapsan, every grid point is one sample: its feature vector is the feature channels at
//! that point, its target the target channels there (Sapsan's example uses 2D slices, 128^2
//! sampled to 64^2). Fitting solves `(K + alpha I) c = y` exactly (one "epoch"); a prediction is
//! `sum_i c_i exp(-gamma |x - x_i|^2)` over the training points.
//!
//! - [`config`]: [`KrrConfig`], Sapsan's `alpha`, `gamma`, `kernel`.
//! - [`solve`]: the kernel matrix and its Cholesky solve.
pub mod config;
pub mod solve;

use std::collections::HashMap;

use candle_core::{Device, Tensor};
use ndarray::{Array5, ArrayView5, Axis};

use self::config::KrrConfig;
use self::solve::{Points, kernel_matrix, rbf, solve_ridge};
use super::api::Estimator;
use super::train::{EpochRecord, Samples, TrainReport};
use crate::config::ModelConfig;
use crate::config::PyStr;
use crate::error::{Error, Result};

/// Most training points [`Krr::fit`] accepts: the kernel matrix is dense (`n^2` doubles, 800 MB
/// at this size) and its factorisation costs `n^3 / 3` operations.
pub const MAX_POINTS: usize = 10_000;

/// What fitting produced: the training points, their dual coefficients and the kernel width.
#[derive(Debug, Clone, PartialEq)]
struct Fitted {
    points: Points,
    /// `n x out_channels`, row-major.
    dual: Vec<f64>,
    gamma: f64,
}

/// Kernel ridge regression on grid points (see the module docs).
///
/// ```
/// use ndarray::Array5;
/// use sapsan_core::estimator::{Estimator, Krr, KrrConfig, Samples};
/// # fn main() -> sapsan_core::Result<()> {
/// // Two 2D slices (N, C, 1, H, W) of three feature channels and one target channel.
/// let x = Array5::from_shape_fn((2, 3, 1, 4, 4), |(n, c, _, i, j)| (n + c + i * j) as f32 / 8.0);
/// let y = x.sum_axis(ndarray::Axis(1)).insert_axis(ndarray::Axis(1));
/// let mut model = Krr::new(KrrConfig::default().with_alpha(1e-3).with_gamma(1.0), 3, 1)?;
/// model.fit(Samples::new(&x, &y), Samples::new(&x, &y), &mut |_| Ok(()))?;
/// assert_eq!(model.predict(&x)?.shape(), y.shape());
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct Krr {
    config: KrrConfig,
    in_channels: usize,
    out_channels: usize,
    fitted: Option<Fitted>,
}

impl Krr {
    /// An unfitted model for `in_channels` feature channels and `out_channels` target channels.
    pub fn new(config: KrrConfig, in_channels: usize, out_channels: usize) -> Result<Self> {
        config.validate()?;
        if in_channels == 0 || out_channels == 0 {
            return Err(Error::Estimator(format!(
                "KRR needs at least one feature and one target channel, got {in_channels} and \
                 {out_channels}; build it with the channels of the data"
            )));
        }
        Ok(Self {
            config,
            in_channels,
            out_channels,
            fitted: None,
        })
    }

    /// The configuration.
    pub fn settings(&self) -> &KrrConfig {
        &self.config
    }

    /// Number of training points once fitted.
    pub fn training_points(&self) -> Option<usize> {
        self.fitted.as_ref().map(|f| f.points.len())
    }

    /// The kernel width in effect (`gamma`, or 1 / feature channels).
    pub fn gamma(&self) -> f64 {
        self.config.gamma_for(self.in_channels)
    }

    fn check(&self, what: &str, shape: &[usize], channels: usize) -> Result<()> {
        if shape.len() != 5 || shape[1] != channels {
            return Err(Error::Estimator(format!(
                "KRR {what} have shape {shape:?}; it needs (N, {channels}, D, H, W): build the \
                 model with the channels of the data"
            )));
        }
        Ok(())
    }

    fn fitted(&self) -> Result<&Fitted> {
        self.fitted.as_ref().ok_or_else(|| {
            Error::Estimator(
                "KRR has not been fitted; train it (Train::run or Estimator::fit) or load the \
                 weights of a train run first"
                    .into(),
            )
        })
    }
}

/// Every grid point of `cubes` `(N, C, D, H, W)` as a point of `C` coordinates, in row-major
/// order of `(N, D, H, W)`.
fn to_points(cubes: ArrayView5<'_, f32>) -> Points {
    let c = cubes.len_of(Axis(1));
    let moved = cubes.permuted_axes([0, 2, 3, 4, 1]);
    Points {
        values: moved.iter().map(|&v| f64::from(v)).collect(),
        dim: c,
    }
}

// forward-source:begin
/// The prediction at each point: the kernel-weighted sum of the training points' dual
/// coefficients.
fn predict_points(fitted: &Fitted, x: &Points, outputs: usize) -> Vec<f64> {
    let mut out = vec![0.0; x.len() * outputs];
    for (i, y) in out.chunks_exact_mut(outputs).enumerate() {
        let xi = x.row(i);
        for (j, c) in fitted.dual.chunks_exact(outputs).enumerate() {
            let k = rbf(xi, fitted.points.row(j), fitted.gamma);
            y.iter_mut().zip(c).for_each(|(y, c)| *y += k * c);
        }
    }
    out
}
// forward-source:end

/// Points back to cubes `(N, outputs, D, H, W)` of the spatial shape of `like`.
fn to_cubes(values: Vec<f64>, like: &[usize], outputs: usize) -> Result<Array5<f32>> {
    let (n, d, h, w) = (like[0], like[2], like[3], like[4]);
    let a = Array5::from_shape_vec((n, d, h, w, outputs), values)
        .map_err(|e| Error::Estimator(format!("KRR prediction has an unexpected size: {e}")))?;
    let a = a.mapv(|v| v as f32).permuted_axes([0, 4, 1, 2, 3]);
    Ok(a.as_standard_layout().into_owned())
}

fn mse(a: &[f64], b: &[f64]) -> f64 {
    let sum: f64 = a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum();
    sum / a.len().max(1) as f64
}

impl Estimator for Krr {
    fn name(&self) -> &str {
        "KRR"
    }

    fn config(&self) -> &dyn ModelConfig {
        &self.config
    }

    /// Solves for the dual coefficients on every training point and reports one epoch: the
    /// mean squared errors on the training and validation points (`lr` is 0: there is none).
    fn fit(
        &mut self,
        train: Samples,
        valid: Samples,
        observer: &mut dyn FnMut(&EpochRecord) -> Result<()>,
    ) -> Result<TrainReport> {
        self.config.validate()?;
        for (what, s) in [("training", &train), ("validation", &valid)] {
            self.check(
                &format!("{what} features"),
                s.features.shape(),
                self.in_channels,
            )?;
            self.check(
                &format!("{what} targets"),
                s.targets.shape(),
                self.out_channels,
            )?;
            if s.features.shape()[2..] != s.targets.shape()[2..]
                || s.features.shape()[0] != s.targets.shape()[0]
            {
                return Err(Error::Estimator(format!(
                    "KRR predicts point by point, so {what} features and targets need the same \
                     samples and grid, got {:?} and {:?}",
                    s.features.shape(),
                    s.targets.shape()
                )));
            }
        }
        let x = to_points(train.features.view());
        let y = to_points(train.targets.view());
        let n = x.len();
        if n == 0 || n > MAX_POINTS {
            return Err(Error::Estimator(format!(
                "KRR needs 1 to {MAX_POINTS} training points (grid points of the training \
                 samples), got {n}; sample the data smaller (chkpnt - sample to size) or train on \
                 fewer checkpoints"
            )));
        }
        let gamma = self.gamma();
        log::debug!("KRR: solving for {n} training points (gamma {gamma})");
        let dual = solve_ridge(
            kernel_matrix(&x, &x, gamma),
            n,
            self.config.alpha,
            &y.values,
        )?;
        // (K + alpha I) c = y, so the fit on the training points is K c = y - alpha c.
        let fit: Vec<f64> = y
            .values
            .iter()
            .zip(&dual)
            .map(|(y, c)| y - self.config.alpha * c)
            .collect();
        let fitted = Fitted {
            points: x,
            dual,
            gamma,
        };
        let vx = to_points(valid.features.view());
        let vy = to_points(valid.targets.view());
        let record = EpochRecord {
            epoch: 1,
            train_loss: mse(&fit, &y.values),
            valid_loss: mse(&predict_points(&fitted, &vx, self.out_channels), &vy.values),
            lr: 0.0,
        };
        self.fitted = Some(fitted);
        observer(&record)?;
        Ok(TrainReport {
            history: vec![record],
            final_epoch: 1,
            stopped_early: false,
        })
    }

    fn predict(&self, features: &Array5<f32>) -> Result<Array5<f32>> {
        self.check("features", features.shape(), self.in_channels)?;
        let fitted = self.fitted()?;
        let values = predict_points(fitted, &to_points(features.view()), self.out_channels);
        to_cubes(values, features.shape(), self.out_channels)
    }

    fn model_details(&self) -> String {
        let c = &self.config;
        let gamma = self.fitted.as_ref().map_or(self.gamma(), |f| f.gamma);
        let mut out = format!(
            "KernelRidge(alpha={}, kernel='{}', gamma={})\n",
            c.alpha.py_str(),
            c.kernel,
            gamma.py_str()
        );
        out.push_str(&format!(
            "features: {} channels per grid point; targets: {} channels\n",
            self.in_channels, self.out_channels
        ));
        match self.training_points() {
            Some(n) => out.push_str(&format!("training points: {n}\n")),
            None => out.push_str("training points: none (not fitted)\n"),
        }
        out.push_str("solver: Cholesky factorisation of K + alpha I, float64\n");
        out
    }

    fn model_forward(&self) -> String {
        super::api::forward_source_in(include_str!("mod.rs")).to_owned()
    }

    /// Training points, dual coefficients and gamma as safetensors (`points`, `dual`, `gamma`,
    /// float64).
    fn save_weights(&self) -> Result<Vec<u8>> {
        let f = self.fitted()?;
        let n = f.points.len();
        let tensors: HashMap<String, Tensor> = [
            (
                "points",
                Tensor::from_vec(f.points.values.clone(), (n, self.in_channels), &Device::Cpu)?,
            ),
            (
                "dual",
                Tensor::from_vec(f.dual.clone(), (n, self.out_channels), &Device::Cpu)?,
            ),
            ("gamma", Tensor::from_vec(vec![f.gamma], 1, &Device::Cpu)?),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        let dir = tempfile::tempdir()
            .map_err(|e| Error::io("creating a temporary directory for", "weights", e))?;
        let path = dir.path().join("model.safetensors");
        candle_core::safetensors::save(&tensors, &path)?;
        std::fs::read(&path).map_err(|e| Error::io("reading", path, e))
    }

    fn load_weights(&mut self, bytes: &[u8]) -> Result<()> {
        let loaded = candle_core::safetensors::load_buffer(bytes, &Device::Cpu)
            .map_err(|e| Error::Estimator(format!("cannot read the safetensors weights: {e}")))?;
        let get = |name: &str| -> Result<Vec<f64>> {
            let t = loaded.get(name).ok_or_else(|| {
                Error::Estimator(format!(
                    "the saved weights have no tensor {name:?}; were they saved from a KRR?"
                ))
            })?;
            Ok(t.flatten_all()?.to_vec1::<f64>()?)
        };
        let (points, dual, gamma) = (get("points")?, get("dual")?, get("gamma")?);
        let n = points.len() / self.in_channels;
        if points.len() != n * self.in_channels || dual.len() != n * self.out_channels {
            return Err(Error::Estimator(format!(
                "the saved KRR has {} point values and {} coefficients, which do not fit {} \
                 feature and {} target channels; build the model with the channels it was \
                 trained with",
                points.len(),
                dual.len(),
                self.in_channels,
                self.out_channels
            )));
        }
        let gamma = gamma
            .first()
            .copied()
            .ok_or_else(|| Error::Estimator("the saved KRR weights hold an empty gamma".into()))?;
        self.fitted = Some(Fitted {
            points: Points {
                values: points,
                dim: self.in_channels,
            },
            dual,
            gamma,
        });
        Ok(())
    }

    /// `gamma` (the kernel width used) and `training points`.
    fn metrics(&self) -> Vec<(String, f64)> {
        match &self.fitted {
            Some(f) => vec![
                ("gamma".into(), f.gamma),
                ("training points".into(), f.points.len() as f64),
            ],
            None => Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests;
