//! [`PicaeConfig`]: the settings of PICAE, named, ordered and defaulted as Sapsan's `PICAEConfig`
//! (`nfilters`, `kernel_size`, `enc_nlayers`, `dec_nlayers`, `n_epochs`, `logdir`, `patience`,
//! `min_delta`, `weight_decay`, `lr`, `min_lr`), then `device` as the other estimators log it.
use std::path::PathBuf;

use crate::config::Kwargs;
use crate::error::{Error, Result};
use crate::estimator::{FitSettings, Loss};

/// Settings of [`Picae`](super::Picae). Its parameter map: `model - nfilters`,
/// `model - kernel_size`, `model - enc_nlayers`, `model - dec_nlayers`, `model - n_epochs`,
/// `model - logdir`, `model - patience`, `model - min_delta`, `model - weight_decay`,
/// `model - lr`, `model - min_lr` (`lr * 1e-2` when not given), `model - device`, then one
/// `model - <name>` per kwarg; values formatted like Python's `str()`.
///
/// ```
/// use sapsan_core::config::ModelConfig;
/// use sapsan_core::estimator::PicaeConfig;
/// let p = PicaeConfig::default().parameters().unwrap();
/// assert_eq!(p.get("model - kernel_size"), Some("(3, 3, 3)"));
/// // lr * 1e-2 in floating point, printed as Python prints it (Sapsan logs the same).
/// assert_eq!(p.get("model - min_lr"), Some("1.0000000000000002e-06"));
/// ```
#[derive(Debug, Clone, PartialEq, crate::ModelConfig)]
pub struct PicaeConfig {
    /// Channels of every hidden layer of the encoder and decoder (default 6).
    pub nfilters: usize,
    /// Convolution kernel `(kD, kH, kW)` (default `(3, 3, 3)`); this implementation needs an odd
    /// cubic kernel (see [`PicaeConfig::kernel`]).
    pub kernel_size: (usize, usize, usize),
    /// Number of stride-2 `Conv3d` layers of the encoder (default 3).
    pub enc_nlayers: usize,
    /// Number of stride-2 `ConvTranspose3d` layers of the decoder (default 3); must equal
    /// `enc_nlayers` so the decoded field has the input's size.
    pub dec_nlayers: usize,
    /// Number of training epochs (default 1).
    pub n_epochs: usize,
    /// Directory for training logs (default `./logs/`), as in Sapsan's configs.
    pub logdir: PathBuf,
    /// Epochs without improvement before the learning rate is reduced and before training stops
    /// early (default 10).
    pub patience: usize,
    /// Smallest drop of the train loss that counts as an improvement (default 1e-5).
    pub min_delta: f64,
    /// PyTorch `Adam`'s `weight_decay`, an L2 penalty on the weights (default 1e-5).
    pub weight_decay: f64,
    /// Learning rate of the Adam optimizer (default 1e-4).
    pub lr: f64,
    /// Floor of the learning rate schedule; `None` means `lr * 1e-2`.
    #[sapsan(default = self.lr * 1e-2)]
    pub min_lr: Option<f64>,
    /// Device to train on (default `"cpu"`, the only one this build supports).
    pub device: String,
    /// Extra user parameters, logged next to the fields.
    #[sapsan(kwargs)]
    pub kwargs: Kwargs,
}

impl Default for PicaeConfig {
    fn default() -> Self {
        Self {
            nfilters: 6,
            kernel_size: (3, 3, 3),
            enc_nlayers: 3,
            dec_nlayers: 3,
            n_epochs: 1,
            logdir: PathBuf::from("./logs/"),
            patience: 10,
            min_delta: 1e-5,
            weight_decay: 1e-5,
            lr: 1e-4,
            min_lr: None,
            device: "cpu".to_string(),
            kwargs: Kwargs::new(),
        }
    }
}

impl PicaeConfig {
    /// The learning-rate floor in effect: `min_lr` if set, else `lr * 1e-2`.
    pub fn min_lr(&self) -> f64 {
        self.min_lr.unwrap_or(self.lr * 1e-2)
    }

    /// The edge of the cubic kernel (`kernel_size.0`; [`PicaeConfig::validate`] checks the
    /// kernel is cubic and odd).
    pub fn kernel(&self) -> usize {
        self.kernel_size.0
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

    /// Sets `nfilters`.
    pub fn with_nfilters(mut self, nfilters: usize) -> Self {
        self.nfilters = nfilters;
        self
    }

    /// Sets `enc_nlayers` and `dec_nlayers` (they must be equal).
    pub fn with_nlayers(mut self, nlayers: usize) -> Self {
        self.enc_nlayers = nlayers;
        self.dec_nlayers = nlayers;
        self
    }

    /// Sets `weight_decay`.
    pub fn with_weight_decay(mut self, weight_decay: f64) -> Self {
        self.weight_decay = weight_decay;
        self
    }

    /// Sets `patience`.
    pub fn with_patience(mut self, patience: usize) -> Self {
        self.patience = patience;
        self
    }

    /// Adds (or replaces) one extra user parameter, formatted like Python's `str()`.
    pub fn with_kwarg(mut self, key: impl Into<String>, value: impl crate::config::PyStr) -> Self {
        self.kwargs.insert(key, value);
        self
    }

    /// The training loop's settings: these, with the mean squared error (Sapsan's `MSELoss`).
    pub fn fit_settings(&self) -> FitSettings {
        FitSettings {
            n_epochs: self.n_epochs,
            lr: self.lr,
            min_lr: self.min_lr(),
            patience: self.patience,
            min_delta: self.min_delta,
            weight_decay: self.weight_decay,
            loss: Loss::Mse,
        }
    }

    /// Checks the settings; the error says which one to change and how.
    pub fn validate(&self) -> Result<()> {
        let bad = |msg: String| Err(Error::Estimator(format!("invalid PicaeConfig: {msg}")));
        self.fit_settings().validate("PicaeConfig")?;
        crate::estimator::train::device_named(&self.device)?;
        let (kd, kh, kw) = self.kernel_size;
        if self.nfilters == 0 {
            return bad("nfilters is 0; set nfilters to at least 1, such as 6".into());
        }
        if kd != kh || kh != kw || kd % 2 == 0 {
            return bad(format!(
                "kernel_size is ({kd}, {kh}, {kw}); set kernel_size to an odd cubic kernel such as \
                 (3, 3, 3) (padding k // 2 then halves and doubles the grid exactly)"
            ));
        }
        if self.enc_nlayers == 0 {
            return bad("enc_nlayers is 0; set enc_nlayers to at least 1, such as 3".into());
        }
        if self.dec_nlayers != self.enc_nlayers {
            return bad(format!(
                "dec_nlayers ({}) differs from enc_nlayers ({}); set both to the same number so \
                 the decoder restores the input's size",
                self.dec_nlayers, self.enc_nlayers
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ModelConfig;

    #[test]
    fn parameters_follow_sapsans_picae_config() {
        let c = PicaeConfig::default().with_kwarg("sampled", (16, 16, 16));
        let p = c.parameters().unwrap();
        let rows: Vec<(&str, &str)> = p.iter().collect();
        assert_eq!(
            rows,
            [
                ("model - nfilters", "6"),
                ("model - kernel_size", "(3, 3, 3)"),
                ("model - enc_nlayers", "3"),
                ("model - dec_nlayers", "3"),
                ("model - n_epochs", "1"),
                ("model - logdir", "./logs/"),
                ("model - patience", "10"),
                ("model - min_delta", "1e-05"),
                ("model - weight_decay", "1e-05"),
                ("model - lr", "0.0001"),
                // 1e-4 * 1e-2 is 1.0000000000000002e-06 in Python too: Sapsan logs this.
                ("model - min_lr", "1.0000000000000002e-06"),
                ("model - device", "cpu"),
                ("model - sampled", "(16, 16, 16)"),
            ]
        );
        let s = PicaeConfig::default().with_weight_decay(0.5).fit_settings();
        assert_eq!(
            (s.weight_decay, s.loss, s.min_lr),
            (0.5, Loss::Mse, 1e-4 * 1e-2)
        );
    }

    #[test]
    fn validate_names_the_setting_to_fix() {
        let with = |f: fn(&mut PicaeConfig)| {
            let mut c = PicaeConfig::default();
            f(&mut c);
            c
        };
        for (c, want) in [
            (PicaeConfig::default().with_n_epochs(0), "set n_epochs"),
            (PicaeConfig::default().with_nfilters(0), "set nfilters"),
            (with(|c| c.kernel_size = (3, 3, 5)), "set kernel_size"),
            (with(|c| c.kernel_size = (2, 2, 2)), "set kernel_size"),
            (PicaeConfig::default().with_nlayers(0), "set enc_nlayers"),
            (with(|c| c.dec_nlayers = 2), "set both"),
            (PicaeConfig::default().with_lr(0.0), "set lr"),
            (with(|c| c.min_lr = Some(1.0)), "set min_lr"),
            (with(|c| c.min_delta = -1.0), "set min_delta"),
            (
                PicaeConfig::default().with_weight_decay(-1.0),
                "set weight_decay",
            ),
            (with(|c| c.device = "cuda".into()), "set device"),
        ] {
            let e = c.validate().unwrap_err().to_string();
            assert!(e.contains(want), "{e} should contain {want:?}");
        }
        assert!(PicaeConfig::default().validate().is_ok());
    }
}
