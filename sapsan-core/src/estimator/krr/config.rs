//! [`KrrConfig`]: the settings of kernel ridge regression, named and ordered as Sapsan's
//! `KRRConfig` (`alpha`, `gamma`, `kernel`, then the kwargs).
use crate::config::Kwargs;
use crate::error::{Error, Result};

/// The one kernel this estimator implements.
pub const RBF: &str = "rbf";

/// Settings of [`Krr`](super::Krr). Its parameter map: `model - alpha`, `model - gamma`
/// (`None` when not given: 1 / number of feature channels, as scikit-learn), `model - kernel`,
/// then one `model - <name>` per kwarg.
///
/// ```
/// use sapsan_core::config::ModelConfig;
/// use sapsan_core::estimator::KrrConfig;
/// let config = KrrConfig::default().with_alpha(1e-3).with_gamma(1.778);
/// let p = config.parameters().unwrap();
/// assert_eq!(p.get("model - alpha"), Some("0.001"));
/// assert_eq!(p.get("model - kernel"), Some("rbf"));
/// ```
#[derive(Debug, Clone, PartialEq, crate::ModelConfig)]
pub struct KrrConfig {
    /// Ridge regularisation added to the kernel matrix's diagonal (default 1.0, as Sapsan and
    /// scikit-learn).
    pub alpha: f64,
    /// Width of the RBF kernel `exp(-gamma |x - y|^2)`; `None`: 1 / number of features.
    pub gamma: Option<f64>,
    /// The kernel; only `"rbf"` (the default) is implemented.
    pub kernel: String,
    /// Extra user parameters, logged next to the fields.
    #[sapsan(kwargs)]
    pub kwargs: Kwargs,
}

impl Default for KrrConfig {
    fn default() -> Self {
        Self {
            alpha: 1.0,
            gamma: None,
            kernel: RBF.to_string(),
            kwargs: Kwargs::new(),
        }
    }
}

impl KrrConfig {
    /// Sets `alpha`.
    pub fn with_alpha(mut self, alpha: f64) -> Self {
        self.alpha = alpha;
        self
    }

    /// Sets `gamma`.
    pub fn with_gamma(mut self, gamma: f64) -> Self {
        self.gamma = Some(gamma);
        self
    }

    /// Adds (or replaces) one extra user parameter, formatted like Python's `str()`.
    pub fn with_kwarg(mut self, key: impl Into<String>, value: impl crate::config::PyStr) -> Self {
        self.kwargs.insert(key, value);
        self
    }

    /// The kernel width in effect for `features` input channels: `gamma`, or 1 / `features`.
    pub fn gamma_for(&self, features: usize) -> f64 {
        self.gamma.unwrap_or(1.0 / features.max(1) as f64)
    }

    /// Checks the settings; the error says which one to change and how.
    pub fn validate(&self) -> Result<()> {
        let bad = |msg: String| Err(Error::Estimator(format!("invalid KrrConfig: {msg}")));
        if !(self.alpha.is_finite() && self.alpha >= 0.0) {
            return bad(format!(
                "alpha is {}; set alpha to a number >= 0 such as 1.0",
                self.alpha
            ));
        }
        if let Some(g) = self.gamma
            && !(g.is_finite() && g > 0.0)
        {
            return bad(format!(
                "gamma is {g}; set gamma to a positive number, or None for 1 / features"
            ));
        }
        if self.kernel != RBF {
            return bad(format!(
                "kernel {:?} is not implemented; set kernel to \"rbf\"",
                self.kernel
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
    fn parameters_follow_sapsans_krr_config() {
        let c = KrrConfig::default().with_kwarg("slices", (64, 64));
        let p = c.parameters().unwrap();
        let rows: Vec<(&str, &str)> = p.iter().collect();
        assert_eq!(
            rows,
            [
                ("model - alpha", "1.0"),
                ("model - gamma", "None"),
                ("model - kernel", "rbf"),
                ("model - slices", "(64, 64)"),
            ]
        );
        let p = KrrConfig::default()
            .with_alpha(1e-5)
            .with_gamma(2.0)
            .parameters()
            .unwrap();
        assert_eq!(p.get("model - alpha"), Some("1e-05"));
        assert_eq!(p.get("model - gamma"), Some("2.0"));
        assert_eq!(KrrConfig::default().gamma_for(4), 0.25);
    }

    #[test]
    fn validate_names_the_setting_to_fix() {
        for (c, want) in [
            (KrrConfig::default().with_alpha(-1.0), "set alpha"),
            (KrrConfig::default().with_gamma(0.0), "set gamma"),
            (
                KrrConfig {
                    kernel: "laplacian".into(),
                    ..Default::default()
                },
                "set kernel",
            ),
        ] {
            let e = c.validate().unwrap_err().to_string();
            assert!(e.contains(want), "{e}");
        }
        assert!(KrrConfig::default().validate().is_ok());
    }
}
