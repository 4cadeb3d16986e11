//! [`Picae`]: Sapsan's physics-informed convolutional autoencoder (after Mohan et al. 2020,
//! arXiv:2002.00021), behind the same [`Estimator`] trait as the other estimators.
//!
//! A convolutional encoder compresses a velocity cube, a transposed-convolution decoder expands it
//! into a vector potential `A`, and a fixed layer of periodic central differences returns
//! `curl A`: the predicted velocity is divergence-free by construction (to rounding, about 1e-7
//! of its magnitude in f32). Trained on the mean squared error with Adam and weight decay, the
//! schedule and early stopping of the shared training loop. Features and targets are velocity
//! cubes `(N, 3, D, H, W)` with edges divisible by `2^enc_nlayers`.
//!
//! - [`config`]: [`PicaeConfig`], Sapsan's `PICAEConfig` names and defaults.
//! - [`net`]: the network ([`PicaeNet`]).
//! - [`conv_transpose3d`]: the differentiable 3D transposed convolution candle lacks.
//! - [`curl`]: periodic padding, the central-difference curl and divergence.
pub mod config;
pub mod conv_transpose3d;
pub mod curl;
pub mod net;

use candle_core::{DType, Device};
use candle_nn::VarMap;
use ndarray::Array5;

use self::config::PicaeConfig;
use self::net::PicaeNet;
use super::api::Estimator;
use super::init::seeded_var_builder;
use super::train::{self, EpochRecord, Network, Samples, TrainOptions, TrainReport};
use super::weights;
use crate::config::ModelConfig;
use crate::error::{Error, Result};

/// Name of the model metric holding `max |div u| / max |u|` of the prediction on the validation
/// set after training (logged as `train - max divergence`).
pub const DIVERGENCE_METRIC: &str = "max divergence";

/// The PICAE estimator (see the module docs).
///
/// ```no_run
/// use ndarray::Array5;
/// use sapsan_core::estimator::{Estimator, Picae, PicaeConfig, Samples};
/// # fn main() -> sapsan_core::Result<()> {
/// let u = Array5::<f32>::zeros((4, 3, 16, 16, 16));
/// let mut model = Picae::new(PicaeConfig::default().with_n_epochs(5))?;
/// model.fit(Samples::new(&u, &u), Samples::new(&u, &u), &mut |_| Ok(()))?;
/// let divergence_free = model.predict(&u)?;
/// # Ok(()) }
/// ```
pub struct Picae {
    config: PicaeConfig,
    options: TrainOptions,
    varmap: VarMap,
    net: PicaeNet,
    max_divergence: Option<f64>,
}

impl Picae {
    /// A fresh model with default [`TrainOptions`] (seed 0).
    pub fn new(config: PicaeConfig) -> Result<Self> {
        Self::with_options(config, TrainOptions::default())
    }

    /// Like [`Picae::new`] with explicit training options; `options.seed` seeds the initial
    /// weights, `options.batch_size` counts cubes per optimizer step and per prediction batch.
    pub fn with_options(config: PicaeConfig, options: TrainOptions) -> Result<Self> {
        config.validate()?;
        let varmap = VarMap::new();
        let vb = seeded_var_builder(&varmap, options.seed, DType::F32, &Device::Cpu);
        let net = PicaeNet::new(vb, &config)?;
        Ok(Self {
            config,
            options,
            varmap,
            net,
            max_divergence: None,
        })
    }

    /// The configuration.
    pub fn settings(&self) -> &PicaeConfig {
        &self.config
    }

    /// The network.
    pub fn net(&self) -> &PicaeNet {
        &self.net
    }

    /// `max |div u| / max |u|` of the prediction on the validation set after the last
    /// [`Estimator::fit`]; `None` before.
    pub fn max_divergence(&self) -> Option<f64> {
        self.max_divergence
    }
}

impl Estimator for Picae {
    fn name(&self) -> &str {
        "PICAE"
    }

    fn config(&self) -> &dyn ModelConfig {
        &self.config
    }

    /// Trains (Adam with weight decay, MSE, ReduceLROnPlateau, early stopping), then measures the
    /// divergence of the prediction on the validation set ([`Picae::max_divergence`]).
    fn fit(
        &mut self,
        train: Samples,
        valid: Samples,
        observer: &mut dyn FnMut(&EpochRecord) -> Result<()>,
    ) -> Result<TrainReport> {
        self.config.validate()?;
        let report = train::fit(
            &self.net,
            self.varmap.all_vars(),
            &self.config.fit_settings(),
            &self.options,
            train,
            valid,
            observer,
        )?;
        let divergence = curl::relative_divergence(&self.predict(valid.features)?)?;
        log::debug!("PICAE: max |div u| / max |u| on the validation set: {divergence:e}");
        self.max_divergence = Some(divergence);
        Ok(report)
    }

    fn predict(&self, features: &Array5<f32>) -> Result<Array5<f32>> {
        self.net.check_input(features.shape())?;
        let s = features.shape();
        let (n, c, d, h, w) = (s[0], s[1], s[2], s[3], s[4]);
        if n == 0 {
            return Ok(Array5::zeros((0, c, d, h, w)));
        }
        let x = train::to_tensor(features, &Device::Cpu)?;
        let batch = self.options.batch_size.unwrap_or(n).clamp(1, n);
        let mut values = Vec::with_capacity(n * c * d * h * w);
        for start in (0..n).step_by(batch) {
            let len = batch.min(n - start);
            let y = self.net.forward(&x.narrow(0, start, len)?)?.detach();
            values.extend(y.flatten_all()?.to_vec1::<f32>()?);
        }
        Array5::from_shape_vec((n, c, d, h, w), values)
            .map_err(|e| Error::Estimator(format!("PICAE prediction has an unexpected size: {e}")))
    }

    fn model_details(&self) -> String {
        let c = &self.config;
        let mut out = String::from("PICAE(\n");
        for (name, description, params) in self.net.layers() {
            let count = if params == 0 {
                String::new()
            } else {
                format!("  # {params} parameters")
            };
            out.push_str(&format!("  ({name}): {description}{count}\n"));
        }
        out.push_str(")\n");
        out.push_str(&format!("total parameters: {}\n", self.net.num_params()));
        out.push_str(&format!(
            "input and output: velocity (N, 3, D, H, W), edges divisible by {}\n",
            self.net.divisor()
        ));
        out.push_str(&c.fit_settings().describe());
        out.push_str(
            &self
                .options
                .describe(c.n_epochs, &c.device, "batch_size", "whole set"),
        );
        out
    }

    fn model_forward(&self) -> String {
        net::forward_source().to_owned()
    }

    fn save_weights(&self) -> Result<Vec<u8>> {
        weights::save_varmap(&self.varmap)
    }

    fn load_weights(&mut self, bytes: &[u8]) -> Result<()> {
        weights::load_varmap(&self.varmap, bytes, "PICAE", "settings")
    }

    /// `max divergence` ([`DIVERGENCE_METRIC`]) once trained.
    fn metrics(&self) -> Vec<(String, f64)> {
        self.max_divergence
            .map(|d| vec![(DIVERGENCE_METRIC.to_string(), d)])
            .unwrap_or_default()
    }
}

impl std::fmt::Debug for Picae {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Picae")
            .field("config", &self.config)
            .field("options", &self.options)
            .field("net", &self.net)
            .field("max_divergence", &self.max_divergence)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests;
