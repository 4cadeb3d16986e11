//! [`Cnn3dConfig`]: the settings of the CNN3d estimator, with Sapsan's names, order and defaults.
use std::path::PathBuf;

use super::loss::Loss;
use super::train::FitSettings;
use crate::config::{Kwargs, PyStr};
use crate::error::Result;

/// Settings of the CNN3d estimator, as Sapsan's `CNN3dConfig` has them (same field names, order and
/// defaults), plus `kwargs` for extra user parameters.
///
/// Build it with struct-update syntax or the `with_*` setters:
/// ```
/// use sapsan_core::estimator::Cnn3dConfig;
/// let config = Cnn3dConfig::default().with_n_epochs(5).with_patience(3);
/// assert_eq!(config.min_lr(), 1e-5); // lr * 1e-2 when not given
/// ```
///
/// Its parameter map (`ModelConfig::parameters`) is Sapsan's: `model - n_epochs`, `model - logdir`,
/// `model - patience`, `model - min_delta`, `model - lr`, `model - min_lr` (`lr * 1e-2` when not
/// given), `model - device`, then one `model - <name>` per kwarg.
#[derive(Debug, Clone, PartialEq, crate::ModelConfig)]
pub struct Cnn3dConfig {
    /// Number of training epochs (default 1).
    pub n_epochs: usize,
    /// Directory for training logs (default `./logs/`); kept for parity with Sapsan, which writes
    /// its training logs there.
    pub logdir: PathBuf,
    /// Epochs without improvement before the learning rate is reduced and before training stops
    /// early (default 10).
    pub patience: usize,
    /// Smallest drop of the train loss that counts as an improvement for early stopping
    /// (default 1e-5).
    pub min_delta: f64,
    /// Learning rate of the Adam optimizer (default 1e-3).
    pub lr: f64,
    /// Floor of the learning rate schedule; `None` means `lr * 1e-2` (see [`Cnn3dConfig::min_lr`]).
    #[sapsan(default = self.lr * 1e-2)]
    pub min_lr: Option<f64>,
    /// Device to train on (default `"cpu"`, the only one this build supports).
    pub device: String,
    /// Extra user parameters, logged next to the fields in the order they were added, values
    /// formatted like Python's `str()` (Sapsan's `CNN3dConfig(**kwargs)`).
    #[sapsan(kwargs)]
    pub kwargs: Kwargs,
}

impl Default for Cnn3dConfig {
    fn default() -> Self {
        Self {
            n_epochs: 1,
            logdir: PathBuf::from("./logs/"),
            patience: 10,
            min_delta: 1e-5,
            lr: 1e-3,
            min_lr: None,
            device: "cpu".to_string(),
            kwargs: Kwargs::new(),
        }
    }
}

impl Cnn3dConfig {
    /// The learning-rate floor in effect: `min_lr` if set, else `lr * 1e-2`.
    pub fn min_lr(&self) -> f64 {
        self.min_lr.unwrap_or(self.lr * 1e-2)
    }

    /// Sets `n_epochs`.
    pub fn with_n_epochs(mut self, n_epochs: usize) -> Self {
        self.n_epochs = n_epochs;
        self
    }

    /// Sets `logdir`.
    pub fn with_logdir(mut self, logdir: impl Into<PathBuf>) -> Self {
        self.logdir = logdir.into();
        self
    }

    /// Sets `patience`.
    pub fn with_patience(mut self, patience: usize) -> Self {
        self.patience = patience;
        self
    }

    /// Sets `min_delta`.
    pub fn with_min_delta(mut self, min_delta: f64) -> Self {
        self.min_delta = min_delta;
        self
    }

    /// Sets `lr`.
    pub fn with_lr(mut self, lr: f64) -> Self {
        self.lr = lr;
        self
    }

    /// Sets `min_lr` (the learning-rate floor).
    pub fn with_min_lr(mut self, min_lr: f64) -> Self {
        self.min_lr = Some(min_lr);
        self
    }

    /// Sets `device`.
    pub fn with_device(mut self, device: impl Into<String>) -> Self {
        self.device = device.into();
        self
    }

    /// Adds (or replaces, in place) one extra user parameter, its value formatted like Python's
    /// `str()`: `true` is logged as `True`, `1e-5` as `1e-05`, `None::<T>` as `None`,
    /// `vec![16, 16]` as `[16, 16]`, `(16, 16)` as `(16, 16)`.
    pub fn with_kwarg(mut self, key: impl Into<String>, value: impl PyStr) -> Self {
        self.kwargs.insert(key, value);
        self
    }

    /// The training loop's settings: these, with Sapsan's SmoothL1 loss and no weight decay.
    pub fn fit_settings(&self) -> FitSettings {
        FitSettings {
            n_epochs: self.n_epochs,
            lr: self.lr,
            min_lr: self.min_lr(),
            patience: self.patience,
            min_delta: self.min_delta,
            weight_decay: 0.0,
            loss: Loss::SmoothL1,
        }
    }

    /// Checks the settings before training; the error says which one to change and how.
    pub fn validate(&self) -> Result<()> {
        self.fit_settings().validate("Cnn3dConfig")?;
        crate::estimator::train::device_named(&self.device)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_sapsans() {
        let c = Cnn3dConfig::default();
        assert_eq!(c.n_epochs, 1);
        assert_eq!(c.logdir, PathBuf::from("./logs/"));
        assert_eq!(c.patience, 10);
        assert_eq!(c.min_delta, 1e-5);
        assert_eq!(c.lr, 1e-3);
        assert_eq!(c.min_lr, None);
        assert!((c.min_lr() - 1e-5).abs() < 1e-20);
        assert_eq!(c.device, "cpu");
        assert!(c.kwargs.is_empty());
        assert!(c.validate().is_ok());
    }

    #[test]
    fn setters_set_and_min_lr_resolves() {
        let c = Cnn3dConfig::default()
            .with_n_epochs(3)
            .with_logdir("/tmp/x")
            .with_patience(2)
            .with_min_delta(0.5)
            .with_lr(0.1)
            .with_device("cpu")
            .with_kwarg("batch", 4);
        assert_eq!(
            (c.n_epochs, c.patience, c.min_delta, c.lr),
            (3, 2, 0.5, 0.1)
        );
        assert_eq!(c.logdir, PathBuf::from("/tmp/x"));
        assert!((c.min_lr() - 1e-3).abs() < 1e-15);
        assert_eq!(c.kwargs.get("batch"), Some("4"));
        assert_eq!(c.with_min_lr(0.02).min_lr(), 0.02);
    }

    #[test]
    fn kwargs_are_formatted_like_python_str_in_insertion_order() {
        use crate::config::ModelConfig;
        let c = Cnn3dConfig::default()
            .with_kwarg("flag", true)
            .with_kwarg("tol", 1e-5)
            .with_kwarg("none", None::<i32>)
            .with_kwarg("sizes", vec![16, 16, 16])
            .with_kwarg("shape", (16, 16, 16))
            .with_kwarg("name", "cnn")
            .with_kwarg("ratio", 0.5f32)
            .with_kwarg("flag", false);
        let p = c.parameters().unwrap();
        let extra: Vec<(&str, &str)> = p.iter().skip(7).collect();
        assert_eq!(
            extra,
            [
                ("model - flag", "False"),
                ("model - tol", "1e-05"),
                ("model - none", "None"),
                ("model - sizes", "[16, 16, 16]"),
                ("model - shape", "(16, 16, 16)"),
                ("model - name", "cnn"),
                ("model - ratio", "0.5"),
            ]
        );
    }

    #[test]
    fn validate_names_the_setting_to_fix() {
        let cases: Vec<(Cnn3dConfig, &str)> = vec![
            (Cnn3dConfig::default().with_n_epochs(0), "set n_epochs"),
            (Cnn3dConfig::default().with_lr(0.0), "set lr"),
            (Cnn3dConfig::default().with_lr(f64::NAN), "set lr"),
            (Cnn3dConfig::default().with_min_lr(-1.0), "set min_lr"),
            (
                Cnn3dConfig::default().with_min_lr(1.0),
                "set min_lr between 0 and lr",
            ),
            (Cnn3dConfig::default().with_min_delta(-1.0), "set min_delta"),
            (Cnn3dConfig::default().with_device("cuda"), "set device"),
        ];
        for (c, want) in cases {
            let err = c.validate().unwrap_err();
            assert!(matches!(err, crate::error::Error::Estimator(_)));
            assert!(
                err.to_string().contains(want),
                "{err} should contain {want:?}"
            );
        }
    }
}
