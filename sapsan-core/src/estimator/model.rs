//! [`Cnn3d`]: the CNN3d estimator as one value: configuration, weights, training, prediction,
//! saving and loading, and the texts Sapsan logs as artifacts.
use candle_core::{DType, Device};
use candle_nn::VarMap;
use ndarray::Array5;

use super::api::Estimator;
use super::cnn3d::{self, Cnn3dNet};
use super::config::Cnn3dConfig;
use super::init::seeded_var_builder;
use super::train::{self, EpochRecord, Samples, TrainOptions, TrainReport};
use super::weights;
use crate::error::{Error, Result};

/// Sapsan's CNN3d estimator: a 3D convolutional network that maps feature cubes
/// `(N, C, D, H, W)` to target cubes `(N, Ct, Dt, Ht, Wt)`.
///
/// ```no_run
/// use ndarray::Array5;
/// use sapsan_core::estimator::{Cnn3d, Cnn3dConfig, Samples};
/// # fn main() -> sapsan_core::Result<()> {
/// let x = Array5::<f32>::zeros((8, 3, 16, 16, 16));
/// let y = Array5::<f32>::zeros((8, 1, 16, 16, 16));
/// let mut model = Cnn3d::new(Cnn3dConfig::default().with_n_epochs(5), 3, [1, 16, 16, 16])?;
/// let report = model.train(Samples::new(&x, &y), Samples::new(&x, &y))?;
/// let prediction = model.predict(&x)?;
/// # Ok(()) }
/// ```
pub struct Cnn3d {
    config: Cnn3dConfig,
    options: TrainOptions,
    varmap: VarMap,
    net: Cnn3dNet,
    device: Device,
}

impl Cnn3d {
    /// A fresh model for `in_channels` feature channels and targets of shape
    /// `[channels, depth, height, width]`, with default [`TrainOptions`] (seed 0).
    pub fn new(config: Cnn3dConfig, in_channels: usize, target_shape: [usize; 4]) -> Result<Self> {
        Self::with_options(config, in_channels, target_shape, TrainOptions::default())
    }

    /// Like [`Cnn3d::new`] with explicit training options; `options.seed` seeds the initial weights.
    pub fn with_options(
        config: Cnn3dConfig,
        in_channels: usize,
        target_shape: [usize; 4],
        options: TrainOptions,
    ) -> Result<Self> {
        let device = train::device_named(&config.device)?;
        let varmap = VarMap::new();
        let vb = seeded_var_builder(&varmap, options.seed, DType::F32, &device);
        let net = Cnn3dNet::new(vb, in_channels, target_shape)?;
        Ok(Self {
            config,
            options,
            varmap,
            net,
            device,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &Cnn3dConfig {
        &self.config
    }

    /// The training options.
    pub fn options(&self) -> &TrainOptions {
        &self.options
    }

    /// Replaces the training options (the seed then only affects shuffling; weights stay).
    pub fn set_options(&mut self, options: TrainOptions) {
        self.options = options;
    }

    /// The network.
    pub fn net(&self) -> &Cnn3dNet {
        &self.net
    }

    /// Total number of trainable parameters.
    pub fn num_params(&self) -> usize {
        self.net.layers().iter().map(|l| l.num_params).sum()
    }

    /// Trains on `train`, validating on `valid`; see [`Cnn3d::train_with_observer`].
    pub fn train(&mut self, train: Samples, valid: Samples) -> Result<TrainReport> {
        self.train_with_observer(train, valid, &mut |_| Ok(()))
    }

    /// Trains for up to `config.n_epochs` epochs (Adam, SmoothL1 loss, ReduceLROnPlateau on the
    /// validation loss, early stopping on the training loss) and calls `observer` with every
    /// epoch's record as soon as the epoch ends, e.g. to log metrics with `step = epoch`. An error
    /// returned by the observer stops training and is returned. Settings are validated first.
    pub fn train_with_observer(
        &mut self,
        train: Samples,
        valid: Samples,
        observer: &mut dyn FnMut(&EpochRecord) -> Result<()>,
    ) -> Result<TrainReport> {
        self.config.validate()?;
        let vars = self.varmap.all_vars();
        train::fit(
            &self.net,
            vars,
            &self.config.fit_settings(),
            &self.options,
            train,
            valid,
            observer,
        )
    }

    /// Predicts targets `(N, Ct, Dt, Ht, Wt)` for `features` `(N, C, D, H, W)`, in batches of
    /// `options.batch_size` (whole set when `None`).
    pub fn predict(&self, features: &Array5<f32>) -> Result<Array5<f32>> {
        self.net.check_input(features.shape())?;
        let n = features.shape()[0];
        let [ct, d, h, w] = self.net.target_shape();
        if n == 0 {
            return Ok(Array5::zeros((0, ct, d, h, w)));
        }
        let x = train::to_tensor(features, &self.device)?;
        let batch = self.options.batch_size.unwrap_or(n).clamp(1, n);
        let mut values = Vec::with_capacity(n * ct * d * h * w);
        for start in (0..n).step_by(batch) {
            let len = batch.min(n - start);
            let y = self.net.forward(&x.narrow(0, start, len)?)?.detach();
            values.extend(y.flatten_all()?.to_vec1::<f32>()?);
        }
        Array5::from_shape_vec((n, ct, d, h, w), values)
            .map_err(|e| Error::Estimator(format!("prediction has an unexpected size: {e}")))
    }

    /// The weights in the safetensors format (tensor names as in Sapsan's model: `conv3d.weight`,
    /// `linear2.bias`, ...).
    pub fn save_safetensors(&self) -> Result<Vec<u8>> {
        weights::save_varmap(&self.varmap)
    }

    /// A model with the weights in `bytes` (from [`Cnn3d::save_safetensors`]); `config`,
    /// `in_channels` and `target_shape` must describe the same architecture.
    pub fn load_safetensors(
        bytes: &[u8],
        config: Cnn3dConfig,
        in_channels: usize,
        target_shape: [usize; 4],
    ) -> Result<Self> {
        let model = Self::new(config, in_channels, target_shape)?;
        model.set_weights(bytes)?;
        Ok(model)
    }

    /// Replaces the weights with those in `bytes` (from [`Cnn3d::save_safetensors`] of a model
    /// of the same architecture).
    pub fn set_weights(&self, bytes: &[u8]) -> Result<()> {
        let model = format!("CNN3d with {} input channels", self.net.in_channels());
        weights::load_varmap(
            &self.varmap,
            bytes,
            &model,
            "input channels and target shape",
        )
    }

    /// A deterministic description of the model (Sapsan's `model_details.txt`): layers with
    /// parameter shapes and counts, total parameters, loss, optimizer, schedule, early stopping and
    /// training options.
    pub fn details(&self) -> String {
        let c = &self.config;
        let [ct, d, h, w] = self.net.target_shape();
        let mut out = String::new();
        out.push_str("CNN3d(\n");
        for layer in self.net.layers() {
            let shapes = if layer.param_shapes.is_empty() {
                String::new()
            } else {
                let s: Vec<String> = ["weight", "bias"]
                    .iter()
                    .zip(&layer.param_shapes)
                    .map(|(n, s)| format!("{n} {}", py_tuple(s)))
                    .collect();
                format!("  # {}; {} parameters", s.join(", "), layer.num_params)
            };
            out.push_str(&format!(
                "  ({}): {}{shapes}\n",
                layer.name, layer.description
            ));
        }
        out.push_str(")\n");
        out.push_str(&format!(
            "input channels: {}\ntarget shape: ({ct}, {d}, {h}, {w}), D_out = {}\n",
            self.net.in_channels(),
            ct * d * h * w
        ));
        out.push_str(&format!("total parameters: {}\n", self.num_params()));
        out.push_str(&c.fit_settings().describe());
        out.push_str(
            &self
                .options
                .describe(c.n_epochs, &c.device, "batch_size", "whole set"),
        );
        out
    }

    /// The source text of the network's forward function (Sapsan's `model_forward.txt`).
    pub fn forward_source() -> &'static str {
        cnn3d::forward_source()
    }
}

impl Estimator for Cnn3d {
    fn name(&self) -> &str {
        "CNN3d"
    }
    fn config(&self) -> &dyn crate::config::ModelConfig {
        &self.config
    }
    fn fit(
        &mut self,
        train: Samples,
        valid: Samples,
        observer: &mut dyn FnMut(&EpochRecord) -> Result<()>,
    ) -> Result<TrainReport> {
        self.train_with_observer(train, valid, observer)
    }
    fn predict(&self, features: &Array5<f32>) -> Result<Array5<f32>> {
        Cnn3d::predict(self, features)
    }
    fn model_details(&self) -> String {
        self.details()
    }
    fn model_forward(&self) -> String {
        Self::forward_source().to_owned()
    }
    fn save_weights(&self) -> Result<Vec<u8>> {
        self.save_safetensors()
    }
    fn load_weights(&mut self, bytes: &[u8]) -> Result<()> {
        self.set_weights(bytes)
    }
}

impl std::fmt::Debug for Cnn3d {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cnn3d")
            .field("config", &self.config)
            .field("options", &self.options)
            .field("net", &self.net)
            .finish_non_exhaustive()
    }
}

/// `(6, 3, 2, 2, 2)` / `(6,)`, as Python prints tuples.
fn py_tuple(dims: &[usize]) -> String {
    let items: Vec<String> = dims.iter().map(|d| d.to_string()).collect();
    if items.len() == 1 {
        format!("({},)", items[0])
    } else {
        format!("({})", items.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::Array5;
    use rand::{RngExt, SeedableRng, rngs::StdRng};

    /// A learnable toy problem on 8^3 cubes: features are `s + noise`, targets `s * pattern`, with a
    /// per-sample amplitude `s`; the network has to read `s` off the input.
    fn toy(n: usize, seed: u64) -> (Array5<f32>, Array5<f32>) {
        let mut rng = StdRng::seed_from_u64(seed);
        let pattern: Vec<f32> = (0..8).map(|i| (i as f32 - 3.5) / 3.5).collect();
        let amps: Vec<f32> = (0..n).map(|_| rng.random::<f32>() * 2.0 - 1.0).collect();
        let x = Array5::from_shape_fn((n, 2, 8, 8, 8), |(i, c, _, _, _)| {
            amps[i] * if c == 0 { 1.0 } else { -1.0 } + 0.05 * (rng.random::<f32>() - 0.5)
        });
        let y = Array5::from_shape_fn((n, 1, 2, 2, 2), |(i, _, a, b, c)| {
            amps[i] * pattern[a * 4 + b * 2 + c]
        });
        (x, y)
    }

    fn quiet(batch_size: Option<usize>) -> TrainOptions {
        TrainOptions {
            batch_size,
            progress: false,
            ..TrainOptions::default()
        }
    }

    fn model(config: Cnn3dConfig, options: TrainOptions) -> Cnn3d {
        Cnn3d::with_options(config, 2, [1, 2, 2, 2], options).unwrap()
    }

    #[test]
    fn training_learns_a_toy_problem_and_reports_every_epoch() {
        let (x, y) = toy(16, 1);
        let (vx, vy) = toy(8, 2);
        let config = Cnn3dConfig::default().with_n_epochs(60).with_lr(1e-2);
        let mut m = model(config, quiet(Some(4)));
        let mut seen = vec![];
        let report = m
            .train_with_observer(Samples::new(&x, &y), Samples::new(&vx, &vy), &mut |r| {
                seen.push(r.clone());
                Ok(())
            })
            .unwrap();
        assert_eq!(seen, report.history);
        assert_eq!(
            report.history.iter().map(|r| r.epoch).collect::<Vec<_>>(),
            (1..=report.final_epoch).collect::<Vec<_>>()
        );
        let first = &report.history[0];
        let last = report.history.last().unwrap();
        assert!(
            last.train_loss < first.train_loss / 10.0,
            "train loss {} -> {}",
            first.train_loss,
            last.train_loss
        );
        assert!(
            last.valid_loss < first.valid_loss / 5.0,
            "valid loss {} -> {}",
            first.valid_loss,
            last.valid_loss
        );
        // The reported loss is the loss of the predictions.
        let pred = m.predict(&vx).unwrap();
        let mean_sl1 = pred
            .iter()
            .zip(vy.iter())
            .map(|(p, t)| {
                let d = (p - t).abs() as f64;
                if d < 1.0 { 0.5 * d * d } else { d - 0.5 }
            })
            .sum::<f64>()
            / vy.len() as f64;
        assert!((mean_sl1 - last.valid_loss).abs() < 1e-6 + 1e-3 * mean_sl1);
    }

    #[test]
    fn training_is_deterministic_for_a_seed() {
        let (x, y) = toy(6, 3);
        let run = |seed| {
            let options = TrainOptions {
                shuffle: true,
                seed,
                ..quiet(Some(2))
            };
            let mut m = model(Cnn3dConfig::default().with_n_epochs(3), options);
            let r = m.train(Samples::new(&x, &y), Samples::new(&x, &y)).unwrap();
            (r, m.predict(&x).unwrap())
        };
        let (a, pa) = run(11);
        let (b, pb) = run(11);
        assert_eq!(a, b);
        assert_eq!(pa, pb);
        let (c, _) = run(12);
        assert_ne!(a.history, c.history);
    }

    #[test]
    fn lr_is_reduced_on_a_flat_validation_loss_and_floored_at_min_lr() {
        // The validation target is huge, so the validation loss is flat to 1e-6 relative while the
        // training loss keeps improving (no early stop).
        let (x, y) = toy(8, 4);
        let (vx, mut vy) = toy(1, 5);
        vy.fill(1e6);
        let config = Cnn3dConfig::default()
            .with_n_epochs(10)
            .with_lr(1e-2)
            .with_min_lr(2e-4)
            .with_patience(2)
            .with_min_delta(0.0);
        let mut m = model(config, quiet(None));
        let r = m
            .train(Samples::new(&x, &y), Samples::new(&vx, &vy))
            .unwrap();
        assert!(!r.stopped_early, "{r:?}");
        let lrs: Vec<f64> = r.history.iter().map(|h| h.lr).collect();
        let want = [1e-2, 1e-2, 1e-2, 1e-2, 1e-3, 1e-3, 1e-3, 2e-4, 2e-4, 2e-4];
        assert_eq!(lrs.len(), want.len());
        for (got, want) in lrs.iter().zip(want) {
            assert!((got - want).abs() < 1e-12, "lrs {lrs:?}");
        }
    }

    #[test]
    fn early_stopping_ends_training_on_a_flat_train_loss() {
        let (x, y) = toy(4, 6);
        // No drop is ever as large as min_delta: epochs 2 and 3 are bad, patience 2 stops at 3.
        let config = Cnn3dConfig::default()
            .with_n_epochs(10)
            .with_patience(2)
            .with_min_delta(1e9);
        let mut m = model(config, quiet(None));
        let r = m.train(Samples::new(&x, &y), Samples::new(&x, &y)).unwrap();
        assert!(r.stopped_early);
        assert_eq!(r.final_epoch, 3);
        assert_eq!(r.history.len(), 3);
        // Running all epochs is not an early stop.
        let mut m = model(Cnn3dConfig::default().with_n_epochs(2), quiet(None));
        let r = m.train(Samples::new(&x, &y), Samples::new(&x, &y)).unwrap();
        assert_eq!((r.final_epoch, r.stopped_early), (2, false));
    }

    #[test]
    fn observer_errors_stop_training() {
        let (x, y) = toy(2, 7);
        let mut m = model(Cnn3dConfig::default().with_n_epochs(5), quiet(None));
        let mut calls = 0;
        let err = m
            .train_with_observer(Samples::new(&x, &y), Samples::new(&x, &y), &mut |_| {
                calls += 1;
                Err(Error::Estimator("logging failed".into()))
            })
            .unwrap_err();
        assert_eq!(calls, 1);
        assert!(err.to_string().contains("logging failed"));
    }

    #[test]
    fn bad_settings_and_shapes_are_clear_errors() {
        let (x, y) = toy(2, 8);
        let mut m = model(Cnn3dConfig::default().with_n_epochs(0), quiet(None));
        let err = m
            .train(Samples::new(&x, &y), Samples::new(&x, &y))
            .unwrap_err();
        assert!(err.to_string().contains("set n_epochs"), "{err}");

        let mut m = model(Cnn3dConfig::default(), quiet(Some(0)));
        let err = m
            .train(Samples::new(&x, &y), Samples::new(&x, &y))
            .unwrap_err();
        assert!(err.to_string().contains("batch_size"), "{err}");

        let mut m = model(Cnn3dConfig::default(), quiet(None));
        let wrong_y = Array5::<f32>::zeros((2, 1, 4, 4, 4));
        let err = m
            .train(Samples::new(&x, &wrong_y), Samples::new(&x, &y))
            .unwrap_err();
        assert!(
            err.to_string().contains("training targets have shape"),
            "{err}"
        );
        let err = m
            .train(
                Samples::new(&x, &y),
                Samples::new(&x.slice(ndarray::s![..1, .., .., .., ..]).to_owned(), &y),
            )
            .unwrap_err();
        assert!(
            err.to_string()
                .contains("validation set has 1 feature samples but 2"),
            "{err}"
        );

        let big = Array5::<f32>::zeros((1, 2, 128, 128, 128));
        let err = m.predict(&big).unwrap_err();
        assert!(matches!(err, Error::Estimator(_)));
        assert!(err.to_string().contains("128x128x128"), "{err}");

        let err =
            Cnn3d::new(Cnn3dConfig::default().with_device("cuda"), 2, [1, 2, 2, 2]).unwrap_err();
        assert!(err.to_string().contains("set device to \"cpu\""), "{err}");
    }

    #[test]
    fn save_and_load_round_trip_gives_identical_predictions() {
        let (x, y) = toy(4, 9);
        let mut m = model(Cnn3dConfig::default().with_n_epochs(2), quiet(Some(3)));
        m.train(Samples::new(&x, &y), Samples::new(&x, &y)).unwrap();
        let bytes = m.save_safetensors().unwrap();
        let loaded =
            Cnn3d::load_safetensors(&bytes, Cnn3dConfig::default(), 2, [1, 2, 2, 2]).unwrap();
        assert_eq!(m.predict(&x).unwrap(), loaded.predict(&x).unwrap());
        // A fresh model with another seed predicts differently, so the weights really came from bytes.
        let other = Cnn3d::with_options(
            Cnn3dConfig::default(),
            2,
            [1, 2, 2, 2],
            TrainOptions {
                seed: 5,
                ..TrainOptions::default()
            },
        )
        .unwrap();
        assert_ne!(m.predict(&x).unwrap(), other.predict(&x).unwrap());
        // Wrong architecture: a clear error naming the tensor.
        let err =
            Cnn3d::load_safetensors(&bytes, Cnn3dConfig::default(), 3, [1, 2, 2, 2]).unwrap_err();
        assert!(err.to_string().contains("conv3d"), "{err}");
        assert!(
            Cnn3d::load_safetensors(b"not safetensors", Cnn3dConfig::default(), 2, [1, 2, 2, 2])
                .is_err()
        );
    }

    #[test]
    fn details_are_deterministic_and_name_every_layer() {
        let a = Cnn3d::new(Cnn3dConfig::default(), 3, [1, 16, 16, 16]).unwrap();
        let b = Cnn3d::with_options(
            Cnn3dConfig::default(),
            3,
            [1, 16, 16, 16],
            TrainOptions {
                seed: 0,
                ..TrainOptions::default()
            },
        )
        .unwrap();
        let text = a.details();
        assert_eq!(text, b.details());
        for name in [
            "(conv3d)",
            "(conv3d2)",
            "(conv3d3)",
            "(pooling)",
            "(pooling2)",
            "(pooling3)",
            "(relu)",
            "(flatten)",
            "(linear)",
            "(linear2)",
        ] {
            assert!(text.contains(name), "{name} missing from\n{text}");
        }
        assert!(
            text.contains(
                "Conv3d(3, 6, kernel_size=(2, 2, 2), stride=(2, 2, 2), padding=(1, 1, 1))"
            )
        );
        assert!(text.contains("Linear(in_features=24, out_features=4096, bias=True)"));
        assert!(text.contains("total parameters: 103744"), "{text}");
        assert_eq!(a.num_params(), 103744);
        assert!(text.contains("lr: 0.001"));
        assert!(text.contains("min_lr=1e-05"));
        assert!(text.contains("patience=10"));
        assert!(!text.contains("0x"), "no addresses:\n{text}");
        assert!(Cnn3d::forward_source().contains("fn forward_unchecked"));
    }
}
