//! [`LocalClosureConfig`]: the settings of the local-closure estimator, named as Sapsan names the
//! CNN3d ones (so both fill the same rows of Sapsan's tracking tables), plus the network width.
use std::path::PathBuf;

use crate::config::Kwargs;
use crate::error::{Error, Result};
use crate::estimator::FitSettings;
use crate::estimator::Loss;

/// Settings of [`LocalClosure`](super::LocalClosure). Its parameter map: `model - n_epochs`,
/// `model - logdir`, `model - patience`, `model - min_delta`, `model - lr`, `model - min_lr`
/// (`lr * 1e-2` when not given), `model - device`, `model - hidden`, then one
/// `model - <name>` per kwarg.
///
/// ```
/// use sapsan_core::estimator::LocalClosureConfig;
/// let config = LocalClosureConfig::default().with_n_epochs(100);
/// assert_eq!(config.min_lr(), 1e-5);
/// ```
#[derive(Debug, Clone, PartialEq, crate::ModelConfig)]
pub struct LocalClosureConfig {
    /// Number of training epochs (default 1).
    pub n_epochs: usize,
    /// Directory for training logs (default `./logs/`), as in Sapsan's configs.
    pub logdir: PathBuf,
    /// Epochs without improvement before the learning rate is reduced and before training stops
    /// early (default 10).
    pub patience: usize,
    /// Smallest drop of the train loss that counts as an improvement (default 1e-5).
    pub min_delta: f64,
    /// Learning rate of the Adam optimizer (default 1e-3).
    pub lr: f64,
    /// Floor of the learning rate schedule; `None` means `lr * 1e-2`.
    #[sapsan(default = self.lr * 1e-2)]
    pub min_lr: Option<f64>,
    /// Device to train on (default `"cpu"`, the only one this build supports).
    pub device: String,
    /// Width of the two hidden layers of the pointwise network (default 32).
    pub hidden: usize,
    /// Extra user parameters, logged next to the fields.
    #[sapsan(kwargs)]
    pub kwargs: Kwargs,
}

impl Default for LocalClosureConfig {
    fn default() -> Self {
        Self {
            n_epochs: 1,
            logdir: PathBuf::from("./logs/"),
            patience: 10,
            min_delta: 1e-5,
            lr: 1e-3,
            min_lr: None,
            device: "cpu".to_string(),
            hidden: 32,
            kwargs: Kwargs::new(),
        }
    }
}

impl LocalClosureConfig {
    /// The learning-rate floor in effect: `min_lr` if set, else `lr * 1e-2`.
    pub fn min_lr(&self) -> f64 {
        self.min_lr.unwrap_or(self.lr * 1e-2)
    }

    /// Sets `n_epochs`.
    pub fn with_n_epochs(mut self, n_epochs: usize) -> Self {
        self.n_epochs = n_epochs;
        self
    }

    /// Sets `lr`.
    pub fn with_lr(mut self, lr: f64) -> Self {
        self.lr = lr;
        self
    }

    /// Sets `patience`.
    pub fn with_patience(mut self, patience: usize) -> Self {
        self.patience = patience;
        self
    }

    /// Sets `hidden`.
    pub fn with_hidden(mut self, hidden: usize) -> Self {
        self.hidden = hidden;
        self
    }

    /// Adds (or replaces) one extra user parameter, formatted like Python's `str()`.
    pub fn with_kwarg(mut self, key: impl Into<String>, value: impl crate::config::PyStr) -> Self {
        self.kwargs.insert(key, value);
        self
    }

    /// The training loop's settings: these, with the mean squared error as the loss.
    pub fn fit_settings(&self) -> FitSettings {
        FitSettings {
            n_epochs: self.n_epochs,
            lr: self.lr,
            min_lr: self.min_lr(),
            patience: self.patience,
            min_delta: self.min_delta,
            weight_decay: 0.0,
            loss: Loss::Mse,
        }
    }

    /// Checks the settings before training; the error says which one to change and how.
    pub fn validate(&self) -> Result<()> {
        let bad = |msg: String| {
            Err(Error::Estimator(format!(
                "invalid LocalClosureConfig: {msg}"
            )))
        };
        self.fit_settings().validate("LocalClosureConfig")?;
        crate::estimator::train::device_named(&self.device)?;
        if self.hidden == 0 {
            return bad("hidden is 0; set hidden to at least 1, such as 32".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ModelConfig;

    #[test]
    fn parameters_fill_sapsans_rows_and_format_like_python() {
        let c = LocalClosureConfig::default()
            .with_n_epochs(3)
            .with_kwarg("periodic", true)
            .with_kwarg("tol", 1e-5);
        let p = c.parameters().unwrap();
        let keys: Vec<&str> = p.keys().collect();
        assert_eq!(
            keys,
            [
                "model - n_epochs",
                "model - logdir",
                "model - patience",
                "model - min_delta",
                "model - lr",
                "model - min_lr",
                "model - device",
                "model - hidden",
                "model - periodic",
                "model - tol"
            ]
        );
        assert_eq!(p.get("model - min_lr"), Some("1e-05"));
        assert_eq!(p.get("model - periodic"), Some("True"));
        assert_eq!(p.get("model - tol"), Some("1e-05"));
        assert_eq!(c.fit_settings().loss, Loss::Mse);
    }

    #[test]
    fn validate_names_the_setting_to_fix() {
        for (c, want) in [
            (
                LocalClosureConfig::default().with_n_epochs(0),
                "set n_epochs",
            ),
            (LocalClosureConfig::default().with_hidden(0), "set hidden"),
            (LocalClosureConfig::default().with_lr(-1.0), "set lr"),
            (
                LocalClosureConfig {
                    device: "cuda".into(),
                    ..Default::default()
                },
                "set device",
            ),
        ] {
            let e = c.validate().unwrap_err().to_string();
            assert!(e.contains(want), "{e}");
        }
        assert!(LocalClosureConfig::default().validate().is_ok());
    }
}
