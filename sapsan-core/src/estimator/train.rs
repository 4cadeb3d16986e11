//! The training loop shared by the estimators and its parts: the [`Network`] it drives, its
//! [`FitSettings`], the [`ReduceLrOnPlateau`] schedule, [`EarlyStopping`], per-epoch
//! [`EpochRecord`]s and the [`TrainReport`].
//!
//! One epoch (as Sapsan's Catalyst runner does it): one pass over the training set in mini-batches
//! with an Adam step per batch, one pass over the validation set without gradients, then the
//! schedule steps on the validation loss and early stopping looks at the training loss. Epoch losses
//! are sample-weighted means of the batch losses.
use std::io::IsTerminal;

use candle_core::backprop::GradStore;
use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{Optimizer, ParamsAdamW};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use ndarray::Array5;
use rand::{SeedableRng, rngs::StdRng, seq::SliceRandom};

use super::adam::Adam;
use super::loss::Loss;
use crate::config::PyStr;
use crate::error::{Error, Result};

/// What the training loop needs of a network: a forward pass, the shapes it accepts, and a
/// training step's loss and gradients.
pub trait Network {
    /// Runs the network on a batch `(B, C, D, H, W)`; checks the input shape first.
    fn forward(&self, x: &Tensor) -> Result<Tensor>;
    /// Checks the shape `(N, C, D, H, W)` of a feature batch; the error says what fits.
    fn check_input(&self, dims: &[usize]) -> Result<()>;
    /// The target shape `[Ct, Dt, Ht, Wt]` of one sample whose features have shape
    /// `[C, D, H, W]`.
    fn target_shape_for(&self, input: &[usize]) -> [usize; 4];
    /// The mean `loss` of the prediction for `x` against the targets `y` and the gradient of
    /// every variable the prediction depends on. The default differentiates [`Network::forward`]
    /// with candle's autograd; a network may compute the same by a fused pass of its own.
    fn loss_and_grads(&self, x: &Tensor, y: &Tensor, loss: Loss) -> Result<(f64, GradStore)> {
        let value = loss.compute(&self.forward(x)?, y)?;
        let grads = value.backward()?;
        Ok((value.to_dtype(DType::F64)?.to_scalar::<f64>()?, grads))
    }
}

/// The settings of one training run: epochs, optimizer, schedule, stopping and loss.
#[derive(Debug, Clone, PartialEq)]
pub struct FitSettings {
    /// Maximum number of epochs.
    pub n_epochs: usize,
    /// Initial learning rate of Adam.
    pub lr: f64,
    /// Floor of the learning-rate schedule.
    pub min_lr: f64,
    /// Patience of the schedule and of early stopping.
    pub patience: usize,
    /// Smallest drop of the training loss that counts for early stopping.
    pub min_delta: f64,
    /// PyTorch `Adam`'s `weight_decay`: an L2 penalty added to every gradient as
    /// `weight_decay * p` (0: none; see [`Adam::with_l2_penalty`]).
    pub weight_decay: f64,
    /// The loss minimised and reported.
    pub loss: Loss,
}

impl FitSettings {
    /// Checks the settings every estimator shares before training; `config` names the settings
    /// struct in the message, which says which setting to change and how.
    pub fn validate(&self, config: &str) -> Result<()> {
        let bad = |msg: String| Err(Error::Estimator(format!("invalid {config}: {msg}")));
        if self.n_epochs == 0 {
            return bad("n_epochs is 0; set n_epochs to at least 1".into());
        }
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return bad(format!(
                "lr is {}; set lr to a positive number such as 1e-3",
                self.lr
            ));
        }
        if !(self.min_lr.is_finite() && (0.0..=self.lr).contains(&self.min_lr)) {
            return bad(format!(
                "min_lr is {}; set min_lr between 0 and lr ({}), or leave it unset for lr * 1e-2",
                self.min_lr, self.lr
            ));
        }
        if !(self.min_delta.is_finite() && self.min_delta >= 0.0) {
            return bad(format!(
                "min_delta is {}; set min_delta to a number >= 0 such as 1e-5",
                self.min_delta
            ));
        }
        if !(self.weight_decay.is_finite() && self.weight_decay >= 0.0) {
            return bad(format!(
                "weight_decay is {}; set weight_decay to a number >= 0 such as 1e-5",
                self.weight_decay
            ));
        }
        Ok(())
    }

    /// The loss, optimiser, schedule and early-stopping lines of `model_details.txt`, in
    /// PyTorch's and Catalyst's wording.
    pub fn describe(&self) -> String {
        let a = adam_params(self.lr);
        // PyTorch prints the default `weight_decay=0` as the integer it is.
        let weight_decay = if self.weight_decay == 0.0 {
            "0".to_owned()
        } else {
            self.weight_decay.py_str()
        };
        let es = EarlyStopping::new(self.patience, self.min_delta);
        format!(
            "loss: {}\n\
             optimizer: Adam (\n    lr: {}\n    betas: ({}, {})\n    eps: {}\n    weight_decay: {weight_decay}\n    amsgrad: False\n)\n\
             scheduler: {} on the validation loss\n\
             early stopping: EarlyStoppingCallback(patience={}, metric='loss', loader='train', minimize=True, min_delta={})\n",
            self.loss.describe(),
            a.lr.py_str(),
            a.beta1.py_str(),
            a.beta2.py_str(),
            a.eps.py_str(),
            ReduceLrOnPlateau::new(self.patience, self.min_lr).describe(),
            es.patience,
            es.min_delta.py_str()
        )
    }
}

/// The candle device a config's `device` names; the error says what this build offers.
pub(crate) fn device_named(device: &str) -> Result<Device> {
    match device {
        "cpu" => Ok(Device::Cpu),
        other => Err(Error::Estimator(format!(
            "device {other:?} is not available: this build runs candle on the CPU; set device to \"cpu\""
        ))),
    }
}

/// PyTorch's `ReduceLROnPlateau` in mode `min` with `threshold_mode='rel'`, `threshold=1e-4`,
/// `factor=0.1`, `cooldown=0`, `eps=1e-8`.
///
/// A value counts as better when it is below `best * (1 - threshold)`. After more than `patience`
/// epochs in a row without a better value, the learning rate is multiplied by `factor`, but not
/// below `min_lr` (and not changed at all if the change would be smaller than `eps`).
#[derive(Debug, Clone, PartialEq)]
pub struct ReduceLrOnPlateau {
    /// Multiplier applied to the learning rate on a plateau.
    pub factor: f64,
    /// Epochs without improvement tolerated before reducing.
    pub patience: usize,
    /// Relative improvement needed to count as better.
    pub threshold: f64,
    /// Lower bound of the learning rate.
    pub min_lr: f64,
    /// Smallest change of the learning rate that is applied.
    pub eps: f64,
    best: f64,
    num_bad_epochs: usize,
}

impl ReduceLrOnPlateau {
    /// A schedule with PyTorch's defaults and the given `patience` and `min_lr`.
    pub fn new(patience: usize, min_lr: f64) -> Self {
        Self {
            factor: 0.1,
            patience,
            threshold: 1e-4,
            min_lr,
            eps: 1e-8,
            best: f64::INFINITY,
            num_bad_epochs: 0,
        }
    }

    /// Feeds one epoch's monitored value; returns the learning rate to use from now on (equal to
    /// `lr` unless it was reduced).
    pub fn step(&mut self, value: f64, lr: f64) -> f64 {
        if value < self.best * (1.0 - self.threshold) {
            self.best = value;
            self.num_bad_epochs = 0;
        } else {
            self.num_bad_epochs += 1;
        }
        if self.num_bad_epochs > self.patience {
            self.num_bad_epochs = 0;
            let new_lr = (lr * self.factor).max(self.min_lr);
            if lr - new_lr > self.eps {
                return new_lr;
            }
        }
        lr
    }

    /// PyTorch-style description for the model details.
    pub fn describe(&self) -> String {
        format!(
            "ReduceLROnPlateau(mode='min', factor={}, patience={}, threshold={}, threshold_mode='rel', cooldown=0, min_lr={}, eps={})",
            self.factor.py_str(),
            self.patience,
            self.threshold.py_str(),
            self.min_lr.py_str(),
            self.eps.py_str()
        )
    }
}

/// Early stopping on a minimised metric, as Catalyst's `EarlyStoppingCallback`: a value is an
/// improvement when `value <= best - min_delta` (the first value always is); training stops once
/// `patience` epochs in a row bring no improvement.
#[derive(Debug, Clone, PartialEq)]
pub struct EarlyStopping {
    /// Epochs without improvement before stopping.
    pub patience: usize,
    /// Smallest drop that counts as an improvement.
    pub min_delta: f64,
    best: Option<f64>,
    num_bad_epochs: usize,
}

impl EarlyStopping {
    /// Early stopping with the given `patience` and `min_delta`.
    pub fn new(patience: usize, min_delta: f64) -> Self {
        Self {
            patience,
            min_delta,
            best: None,
            num_bad_epochs: 0,
        }
    }

    /// Feeds one epoch's value; returns `true` when training should stop now.
    pub fn step(&mut self, value: f64) -> bool {
        // A NaN value is never an improvement.
        let improved = match self.best {
            None => true,
            Some(best) => value <= best - self.min_delta,
        };
        if improved {
            self.best = Some(value);
            self.num_bad_epochs = 0;
        } else {
            self.num_bad_epochs += 1;
        }
        self.num_bad_epochs >= self.patience
    }
}

/// Losses and learning rate of one epoch.
#[derive(Debug, Clone, PartialEq)]
pub struct EpochRecord {
    /// Epoch number, starting at 1 (use it as the metric step).
    pub epoch: usize,
    /// Mean loss over the training set during this epoch.
    pub train_loss: f64,
    /// Mean loss over the validation set after this epoch's updates.
    pub valid_loss: f64,
    /// Learning rate used during this epoch.
    pub lr: f64,
}

/// What a training run did.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainReport {
    /// One record per epoch run.
    pub history: Vec<EpochRecord>,
    /// Number of the last epoch run.
    pub final_epoch: usize,
    /// `true` when early stopping ended training before `n_epochs`.
    pub stopped_early: bool,
}

/// Settings of the training loop that are not part of Sapsan's config (so not logged as params).
#[derive(Debug, Clone, PartialEq)]
pub struct TrainOptions {
    /// Samples per optimizer step; `None` (the default) uses the whole training set per step,
    /// which is right for the few large samples Sapsan's sub-cube batching produces. Prediction
    /// uses the same batch size.
    pub batch_size: Option<usize>,
    /// Shuffle the training samples every epoch (default `false`: fixed order).
    pub shuffle: bool,
    /// Seed of the initial weights and of the shuffling (default 0): equal seeds give equal runs.
    pub seed: u64,
    /// Show a progress bar on stderr (default `true`); it is drawn only when stderr is a terminal.
    pub progress: bool,
}

impl Default for TrainOptions {
    fn default() -> Self {
        Self {
            batch_size: None,
            shuffle: false,
            seed: 0,
            progress: true,
        }
    }
}

impl TrainOptions {
    /// The `training:` line of `model_details.txt`; `batch_label` names what a step takes
    /// (`batch_size`, or `points per step` for a pointwise model) and `whole` the default of all.
    pub fn describe(
        &self,
        n_epochs: usize,
        device: &str,
        batch_label: &str,
        whole: &str,
    ) -> String {
        format!(
            "training: n_epochs={n_epochs}, {batch_label}={}, shuffle={}, seed={}, device={device}\n",
            self.batch_size
                .map(|b| b.to_string())
                .unwrap_or_else(|| whole.into()),
            self.shuffle.py_str(),
            self.seed
        )
    }
}

/// Features and targets of one split (training or validation), both `(N, C, D, H, W)`.
#[derive(Debug, Clone, Copy)]
pub struct Samples<'a> {
    /// Inputs `(N, C, D, H, W)`.
    pub features: &'a Array5<f32>,
    /// Targets `(N, Ct, Dt, Ht, Wt)`.
    pub targets: &'a Array5<f32>,
}

impl<'a> Samples<'a> {
    /// Pairs features with targets.
    pub fn new(features: &'a Array5<f32>, targets: &'a Array5<f32>) -> Self {
        Self { features, targets }
    }
}

/// Copies an ndarray into a tensor of the same shape.
pub(crate) fn to_tensor(a: &Array5<f32>, device: &Device) -> Result<Tensor> {
    let values: Vec<f32> = match a.as_slice() {
        Some(s) => s.to_vec(),
        None => a.iter().copied().collect(),
    };
    Ok(Tensor::from_vec(values, a.shape(), device)?)
}

/// Checks one split against the network and turns it into tensors.
fn prepare(
    net: &dyn Network,
    split: &str,
    samples: Samples,
    device: &Device,
) -> Result<(Tensor, Tensor)> {
    let (f, t) = (samples.features, samples.targets);
    let n = f.shape()[0];
    if n == 0 {
        return Err(Error::Estimator(format!(
            "the {split} set is empty; pass at least one sample"
        )));
    }
    if t.shape()[0] != n {
        return Err(Error::Estimator(format!(
            "the {split} set has {n} feature samples but {} target samples; they must match",
            t.shape()[0]
        )));
    }
    net.check_input(f.shape())
        .map_err(|e| Error::Estimator(format!("{split} features: {e}")))?;
    let want = net.target_shape_for(&f.shape()[1..]);
    if t.shape()[1..] != want {
        return Err(Error::Estimator(format!(
            "the {split} targets have shape {:?} per sample but the model was built for {want:?}; build the model with the target shape of the data",
            &t.shape()[1..],
        )));
    }
    Ok((to_tensor(f, device)?, to_tensor(t, device)?))
}

/// Sample-weighted mean loss over `x`/`y` in batches of `batch`, without updating anything.
fn evaluate(net: &dyn Network, loss: Loss, x: &Tensor, y: &Tensor, batch: usize) -> Result<f64> {
    let n = x.dim(0)?;
    let mut total = 0.0;
    for start in (0..n).step_by(batch) {
        let len = batch.min(n - start);
        let pred = net.forward(&x.narrow(0, start, len)?)?.detach();
        let value = loss.compute(&pred, &y.narrow(0, start, len)?)?;
        total += value.to_scalar::<f32>()? as f64 * len as f64;
    }
    Ok(total / n as f64)
}

fn progress_bar(n_epochs: usize, show: bool) -> ProgressBar {
    // indicatif already skips drawing when stderr is not a terminal; deciding here as well keeps
    // logs and CI output free of bar fragments whatever indicatif's detection does.
    let target = if show && std::io::stderr().is_terminal() {
        ProgressDrawTarget::stderr()
    } else {
        ProgressDrawTarget::hidden()
    };
    let bar = ProgressBar::with_draw_target(Some(n_epochs as u64), target);
    if let Ok(style) =
        ProgressStyle::with_template("epoch {pos}/{len} [{bar:30}] {elapsed_precise} {msg}")
    {
        bar.set_style(style.progress_chars("=> "));
    }
    bar
}

/// Trains `net` (whose trainable variables are `vars`) on `train`, validating on `valid`, as
/// described in the module docs; calls `observer` after every epoch (an error from it stops
/// training and is returned). The caller validates its configuration first.
pub fn fit(
    net: &dyn Network,
    vars: Vec<Var>,
    config: &FitSettings,
    options: &TrainOptions,
    train: Samples,
    valid: Samples,
    observer: &mut dyn FnMut(&EpochRecord) -> Result<()>,
) -> Result<TrainReport> {
    if config.n_epochs == 0 {
        return Err(Error::Estimator(
            "n_epochs is 0; set n_epochs to at least 1".into(),
        ));
    }
    if options.batch_size == Some(0) {
        return Err(Error::Estimator(
            "batch_size is 0; set it to at least 1 (or None for the whole set)".into(),
        ));
    }
    super::heap::retain_freed_memory();
    let device = Device::Cpu;
    let (train_x, train_y) = prepare(net, "training", train, &device)?;
    let (valid_x, valid_y) = prepare(net, "validation", valid, &device)?;
    let n_train = train_x.dim(0)?;
    let batch = options.batch_size.unwrap_or(n_train).min(n_train);
    let valid_batch = options.batch_size.unwrap_or(valid_x.dim(0)?);

    let mut optimizer =
        Adam::new(vars, adam_params(config.lr))?.with_l2_penalty(config.weight_decay);
    let mut scheduler = ReduceLrOnPlateau::new(config.patience, config.min_lr);
    let mut stopper = EarlyStopping::new(config.patience, config.min_delta);
    let mut rng = StdRng::seed_from_u64(options.seed);
    let mut order: Vec<u32> = (0..n_train as u32).collect();
    let bar = progress_bar(config.n_epochs, options.progress);
    let mut history = Vec::with_capacity(config.n_epochs);
    let mut stopped_early = false;

    for epoch in 1..=config.n_epochs {
        let lr = optimizer.learning_rate();
        if options.shuffle {
            order.shuffle(&mut rng);
        }
        let mut total = 0.0;
        for start in (0..n_train).step_by(batch) {
            let len = batch.min(n_train - start);
            let (xb, yb) = if options.shuffle {
                let ids = Tensor::from_slice(&order[start..start + len], len, &device)?;
                (
                    train_x.index_select(&ids, 0)?,
                    train_y.index_select(&ids, 0)?,
                )
            } else {
                (
                    train_x.narrow(0, start, len)?,
                    train_y.narrow(0, start, len)?,
                )
            };
            let (loss, grads) = net.loss_and_grads(&xb, &yb, config.loss)?;
            optimizer.step(&grads)?;
            total += loss * len as f64;
        }
        let record = EpochRecord {
            epoch,
            train_loss: total / n_train as f64,
            valid_loss: evaluate(net, config.loss, &valid_x, &valid_y, valid_batch)?,
            lr,
        };
        bar.set_message(format!(
            "train {:.4e} valid {:.4e} lr {:.1e}",
            record.train_loss, record.valid_loss, record.lr
        ));
        bar.inc(1);
        observer(&record)?;
        optimizer.set_learning_rate(scheduler.step(record.valid_loss, lr));
        let stop = stopper.step(record.train_loss);
        history.push(record);
        if stop && epoch < config.n_epochs {
            stopped_early = true;
            break;
        }
    }
    bar.finish();
    Ok(TrainReport {
        final_epoch: history.len(),
        history,
        stopped_early,
    })
}

/// Adam's settings (no weight decay) with PyTorch's Adam defaults.
pub(crate) fn adam_params(lr: f64) -> ParamsAdamW {
    ParamsAdamW {
        lr,
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-8,
        weight_decay: 0.0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plateau_reduces_after_patience_flat_epochs_and_never_below_min_lr() {
        let mut s = ReduceLrOnPlateau::new(2, 1e-4);
        let mut lr = 0.1;
        let mut lrs = vec![];
        // First value improves on +inf; then flat values are bad epochs.
        for _ in 0..12 {
            lr = s.step(1.0, lr);
            lrs.push(lr);
        }
        // PyTorch: reduce when bad epochs exceed patience (3rd flat epoch), counter resets.
        let want = [
            0.1, 0.1, 0.1, 0.01, 0.01, 0.01, 1e-3, 1e-3, 1e-3, 1e-4, 1e-4, 1e-4,
        ];
        for (got, want) in lrs.iter().zip(want) {
            assert!((got - want).abs() < 1e-12, "{lrs:?}");
        }
        assert!(lrs.iter().all(|&l| l >= 1e-4));
        // A relative improvement smaller than the threshold does not count.
        let mut s = ReduceLrOnPlateau::new(0, 0.0);
        assert_eq!(s.step(1.0, 1.0), 1.0);
        assert!((s.step(0.99995, 1.0) - 0.1).abs() < 1e-12);
        assert_eq!(s.step(0.5, 0.1), 0.1);
    }

    #[test]
    fn plateau_drives_the_optimizer_learning_rate() {
        let v = Var::new(&[1.0f32], &Device::Cpu).unwrap();
        let mut opt = Adam::new(vec![v], adam_params(1e-3)).unwrap();
        let mut s = ReduceLrOnPlateau::new(1, 5e-5);
        for loss in [1.0, 1.0, 1.0, 1.0, 1.0] {
            let lr = s.step(loss, opt.learning_rate());
            opt.set_learning_rate(lr);
        }
        // bad epochs 1,2 -> reduce to 1e-4; bad 3,4 -> would be 1e-5, floored at 5e-5.
        assert!(
            (opt.learning_rate() - 5e-5).abs() < 1e-15,
            "{}",
            opt.learning_rate()
        );
    }

    #[test]
    fn early_stopping_follows_catalyst() {
        let mut e = EarlyStopping::new(2, 0.1);
        assert!(!e.step(1.0)); // first value: best
        assert!(!e.step(0.95)); // drop 0.05 < min_delta: bad 1
        assert!(!e.step(0.85)); // 0.85 <= 1.0 - 0.1: improvement
        assert!(!e.step(0.80)); // bad 1
        assert!(e.step(0.79)); // bad 2 -> stop
        let mut e = EarlyStopping::new(1, 0.0);
        assert!(!e.step(1.0));
        assert!(!e.step(1.0)); // equal counts as improvement with min_delta 0 (<=)
        assert!(e.step(1.5));
    }

    #[test]
    fn floats_in_the_details_format_like_python_str() {
        let cases = [
            (1e-5, "1e-05"),
            (0.001, "0.001"),
            (1e-4, "0.0001"),
            (1e-8, "1e-08"),
            (0.1, "0.1"),
            (10.0, "10.0"),
            (1.5e-7, "1.5e-07"),
            (1e16, "1e+16"),
            (0.0, "0.0"),
        ];
        for (v, want) in cases {
            assert_eq!(v.py_str(), want);
        }
    }
}
