//! [`LocalClosure`]: a learned local subgrid closure, the estimator the main job trains.
//!
//! Sapsan's CNN3d maps a whole cube through a dense layer to a whole target cube: with a few
//! cubes to learn from it cannot learn a field that varies point by point (the subgrid stress).
//! This estimator predicts each point from its 3x3x3 neighbourhood ([`net`]), with inputs and
//! targets standardised per channel ([`standardise`]), trained on the mean squared error: every
//! grid point of every cube is a training example.
//!
//! - [`config`]: [`LocalClosureConfig`], Sapsan's setting names plus the network width.
//! - [`net`]: the network: fixed periodic central differences, then a pointwise network.
//! - [`standardise`]: per-channel means and standard deviations, fitted on the training set.
pub mod config;
pub mod net;
pub mod standardise;

use candle_core::{DType, Device};
use candle_nn::VarMap;
use ndarray::Array5;

use self::config::LocalClosureConfig;
use self::net::ClosureNet;
use self::standardise::Standardiser;
use super::api::Estimator;
use super::init::seeded_var_builder;
use super::train::{self, EpochRecord, Network, Samples, TrainOptions, TrainReport};
use super::weights;
use crate::config::ModelConfig;
use crate::error::{Error, Result};

/// The local-closure estimator: [`ClosureNet`] with standardised inputs and targets.
///
/// Its [`TrainOptions::batch_size`] counts grid points per optimizer step (`None`: all);
/// prediction runs cube by cube.
///
/// ```no_run
/// use ndarray::Array5;
/// use sapsan_core::estimator::{Estimator, LocalClosure, LocalClosureConfig, Samples};
/// # fn main() -> sapsan_core::Result<()> {
/// let x = Array5::<f32>::zeros((4, 3, 16, 16, 16));
/// let y = Array5::<f32>::zeros((4, 1, 16, 16, 16));
/// let mut model = LocalClosure::new(LocalClosureConfig::default().with_n_epochs(5), 3, 1)?;
/// model.fit(Samples::new(&x, &y), Samples::new(&x, &y), &mut |_| Ok(()))?;
/// let prediction = model.predict(&x)?;
/// # Ok(()) }
/// ```
pub struct LocalClosure {
    config: LocalClosureConfig,
    options: TrainOptions,
    varmap: VarMap,
    net: ClosureNet,
    scale: Standardiser,
}

impl LocalClosure {
    /// A fresh model for `in_channels` feature channels and `out_channels` target channels,
    /// with default [`TrainOptions`] (seed 0).
    pub fn new(
        config: LocalClosureConfig,
        in_channels: usize,
        out_channels: usize,
    ) -> Result<Self> {
        Self::with_options(config, in_channels, out_channels, TrainOptions::default())
    }

    /// Like [`LocalClosure::new`] with explicit training options; `options.seed` seeds the
    /// initial weights.
    pub fn with_options(
        config: LocalClosureConfig,
        in_channels: usize,
        out_channels: usize,
        options: TrainOptions,
    ) -> Result<Self> {
        config.validate()?;
        let varmap = VarMap::new();
        let vb = seeded_var_builder(&varmap, options.seed, DType::F32, &Device::Cpu);
        let net = ClosureNet::new(vb, in_channels, out_channels, config.hidden)?;
        Ok(Self {
            config,
            options,
            varmap,
            net,
            scale: Standardiser::identity(in_channels, out_channels),
        })
    }

    /// The configuration.
    pub fn settings(&self) -> &LocalClosureConfig {
        &self.config
    }

    /// The fitted standardisation of inputs and targets.
    pub fn standardiser(&self) -> &Standardiser {
        &self.scale
    }

    /// Total number of trainable parameters.
    pub fn num_params(&self) -> usize {
        self.net.layers().iter().map(|l| l.num_params).sum()
    }
}

impl Estimator for LocalClosure {
    fn name(&self) -> &str {
        "LocalClosure"
    }

    fn config(&self) -> &dyn ModelConfig {
        &self.config
    }

    /// Fits the standardisation on the training set, then trains (Adam, MSE on the standardised
    /// targets, so `train - loss` / `valid - loss` read as fractions of the training targets'
    /// variance, ReduceLROnPlateau and early stopping as in CNN3d).
    fn fit(
        &mut self,
        train: Samples,
        valid: Samples,
        observer: &mut dyn FnMut(&EpochRecord) -> Result<()>,
    ) -> Result<TrainReport> {
        self.config.validate()?;
        self.net.check_input(train.features.shape())?;
        if train.targets.shape().get(1) != Some(&self.net.out_channels()) {
            return Err(Error::Estimator(format!(
                "the training targets have shape {:?} but the model was built for {} target \
                 channels; build it with the target channels of the data",
                train.targets.shape(),
                self.net.out_channels()
            )));
        }
        self.scale = Standardiser::fit(train.features, train.targets);
        // The first layer is fixed, so its output is computed once; training then runs on
        // mini-batches of grid points (`options.batch_size` points per Adam step).
        let tx = self
            .net
            .point_features(&self.scale.features(train.features))?;
        let ty = ClosureNet::to_points(&self.scale.targets(train.targets));
        let vx = self
            .net
            .point_features(&self.scale.features(valid.features))?;
        let vy = ClosureNet::to_points(&self.scale.targets(valid.targets));
        train::fit(
            &self.net.points_network(),
            self.varmap.all_vars(),
            &self.config.fit_settings(),
            &self.options,
            Samples::new(&tx, &ty),
            Samples::new(&vx, &vy),
            observer,
        )
    }

    fn predict(&self, features: &Array5<f32>) -> Result<Array5<f32>> {
        self.net.check_input(features.shape())?;
        let s = features.shape();
        let (n, d, h, w) = (s[0], s[2], s[3], s[4]);
        let ct = self.net.out_channels();
        let x = train::to_tensor(&self.scale.features(features), &Device::Cpu)?;
        let mut values = Vec::with_capacity(n * ct * d * h * w);
        for i in 0..n {
            let y = self.net.forward(&x.narrow(0, i, 1)?)?.detach();
            values.extend(y.flatten_all()?.to_vec1::<f32>()?);
        }
        let y = Array5::from_shape_vec((n, ct, d, h, w), values)
            .map_err(|e| Error::Estimator(format!("prediction has an unexpected size: {e}")))?;
        Ok(self.scale.restore_targets(y))
    }

    fn model_details(&self) -> String {
        let c = &self.config;
        let mut out = String::from("LocalClosure(\n");
        for layer in self.net.layers() {
            let shapes = if layer.num_params == 0 {
                String::new()
            } else {
                format!("  # {} parameters", layer.num_params)
            };
            out.push_str(&format!(
                "  ({}): {}{shapes}\n",
                layer.name, layer.description
            ));
        }
        out.push_str(")\n");
        out.push_str(&format!("total parameters: {}\n", self.num_params()));
        out.push_str(&format!("standardisation: {}\n", self.scale.describe()));
        out.push_str(&c.fit_settings().describe());
        out.push_str(
            &self
                .options
                .describe(c.n_epochs, &c.device, "points per step", "all"),
        );
        out
    }

    fn model_forward(&self) -> String {
        net::forward_source().to_owned()
    }

    fn save_weights(&self) -> Result<Vec<u8>> {
        let mut tensors = weights::varmap_tensors(&self.varmap)?;
        tensors.extend(self.scale.to_tensors()?);
        weights::to_safetensors(&tensors)
    }

    fn load_weights(&mut self, bytes: &[u8]) -> Result<()> {
        let loaded = weights::from_safetensors(bytes)?;
        let scale =
            Standardiser::from_tensors(&loaded, self.net.in_channels(), self.net.out_channels())?;
        weights::set_varmap(
            &self.varmap,
            &loaded,
            "LocalClosure",
            "channels and hidden width",
        )?;
        self.scale = scale;
        Ok(())
    }
}

impl std::fmt::Debug for LocalClosure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalClosure")
            .field("config", &self.config)
            .field("options", &self.options)
            .field("net", &self.net)
            .field("scale", &self.scale)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests;
