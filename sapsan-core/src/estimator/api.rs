//! The [`Estimator`] trait: everything `Train` and `Evaluate` need of a model, so adding an
//! estimator means implementing this trait in its own folder and touching no tracking code.
use ndarray::Array5;

use super::train::{EpochRecord, Samples, TrainReport};
use crate::config::ModelConfig;
use crate::error::Result;

/// A trainable model of Sapsan's shape: feature cubes `(N, C, D, H, W)` in, target cubes
/// `(N, Ct, Dt, Ht, Wt)` out.
///
/// `Train` logs [`Estimator::config`]'s parameters (`model - ...`), calls [`Estimator::fit`] and
/// logs each epoch's record as the observer receives it, then logs [`Estimator::metrics`], the
/// texts [`Estimator::model_details`] / [`Estimator::model_forward`] and the weights of
/// [`Estimator::save_weights`]. `Evaluate` calls [`Estimator::predict`].
pub trait Estimator {
    /// A short name for messages, e.g. `CNN3d`.
    fn name(&self) -> &str;

    /// The configuration whose parameter map is logged as `model - <field>` (kwargs included).
    fn config(&self) -> &dyn ModelConfig;

    /// Trains on `train`, validating on `valid`, and calls `observer` with every epoch's record
    /// as soon as the epoch ends; an error from the observer stops training and is returned.
    fn fit(
        &mut self,
        train: Samples,
        valid: Samples,
        observer: &mut dyn FnMut(&EpochRecord) -> Result<()>,
    ) -> Result<TrainReport>;

    /// Predicts the targets of `features` `(N, C, D, H, W)`.
    fn predict(&self, features: &Array5<f32>) -> Result<Array5<f32>>;

    /// A deterministic description of the model: layers, optimizer, schedule
    /// (`model_details.txt`).
    fn model_details(&self) -> String;

    /// The source text of the model's forward function (`model_forward.txt`).
    fn model_forward(&self) -> String;

    /// The trained state (weights and any fitted statistics) as bytes, e.g. safetensors
    /// (`model.safetensors`).
    fn save_weights(&self) -> Result<Vec<u8>>;

    /// Replaces the trained state with `bytes` from [`Estimator::save_weights`] of a model of the
    /// same architecture; the error names what does not fit.
    fn load_weights(&mut self, bytes: &[u8]) -> Result<()>;

    /// Model metrics logged once after training, as `train - <name>` (Sapsan's
    /// `model.metrics()`); none by default.
    fn metrics(&self) -> Vec<(String, f64)> {
        Vec::new()
    }
}

/// The text between the forward-source markers (`// forward-source` + `:begin` / `:end`) of an
/// estimator's source file, given whole (`include_str!`): what it logs as `model_forward.txt`.
pub(crate) fn forward_source_in(source: &'static str) -> &'static str {
    // The markers are assembled with concat! so these lines do not match themselves.
    const BEGIN: &str = concat!("// forward-source", ":begin");
    const END: &str = concat!("// forward-source", ":end");
    let start = source.find(BEGIN).map_or(0, |i| i + BEGIN.len());
    let end = source[start..]
        .find(END)
        .map_or(source.len(), |i| start + i);
    source[start..end].trim_matches('\n').trim_end()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::config::Kwargs;
    use crate::error::Error;
    use crate::estimator::Cnn3d;

    /// A toy estimator written against the trait alone: predicts the mean of the training
    /// targets (it is what `Train` / `Evaluate` see, and all an estimator has to provide).
    #[derive(Debug, crate::ModelConfig)]
    struct MeanConfig {
        n_epochs: usize,
        #[sapsan(kwargs)]
        kwargs: Kwargs,
    }

    #[derive(Debug)]
    struct MeanEstimator {
        config: MeanConfig,
        mean: f32,
    }

    impl Estimator for MeanEstimator {
        fn name(&self) -> &str {
            "Mean"
        }
        fn config(&self) -> &dyn ModelConfig {
            &self.config
        }
        fn fit(
            &mut self,
            train: Samples,
            valid: Samples,
            observer: &mut dyn FnMut(&EpochRecord) -> Result<()>,
        ) -> Result<TrainReport> {
            self.mean = train.targets.mean().unwrap_or(0.0);
            let mse = |y: &Array5<f32>| {
                y.iter()
                    .map(|v| f64::from(v - self.mean).powi(2))
                    .sum::<f64>()
                    / y.len().max(1) as f64
            };
            let record = EpochRecord {
                epoch: 1,
                train_loss: mse(train.targets),
                valid_loss: mse(valid.targets),
                lr: 0.0,
            };
            observer(&record)?;
            Ok(TrainReport {
                history: vec![record],
                final_epoch: 1,
                stopped_early: false,
            })
        }
        fn predict(&self, features: &Array5<f32>) -> Result<Array5<f32>> {
            let s = features.shape();
            Ok(Array5::from_elem((s[0], 1, s[2], s[3], s[4]), self.mean))
        }
        fn model_details(&self) -> String {
            format!("Mean(value={})", self.mean)
        }
        fn model_forward(&self) -> String {
            "fn forward(x) { mean }".into()
        }
        fn save_weights(&self) -> Result<Vec<u8>> {
            Ok(self.mean.to_le_bytes().to_vec())
        }
        fn load_weights(&mut self, bytes: &[u8]) -> Result<()> {
            let b: [u8; 4] = bytes
                .try_into()
                .map_err(|_| Error::Estimator("a Mean model is 4 bytes".into()))?;
            self.mean = f32::from_le_bytes(b);
            Ok(())
        }
        fn metrics(&self) -> Vec<(String, f64)> {
            vec![("mean".into(), f64::from(self.mean))]
        }
    }

    pub(crate) fn toy() -> impl Estimator {
        MeanEstimator {
            config: MeanConfig {
                n_epochs: 1,
                kwargs: Kwargs::new().with("flag", true),
            },
            mean: 0.0,
        }
    }

    #[test]
    fn a_toy_estimator_fits_predicts_and_round_trips_through_the_trait() {
        let mut m = toy();
        let x = Array5::<f32>::zeros((2, 3, 2, 2, 2));
        let y = Array5::from_shape_fn((2, 1, 2, 2, 2), |(i, ..)| i as f32 * 2.0);
        let mut seen = 0;
        let r = m
            .fit(Samples::new(&x, &y), Samples::new(&x, &y), &mut |_| {
                seen += 1;
                Ok(())
            })
            .unwrap();
        assert_eq!((seen, r.final_epoch), (1, 1));
        assert!((r.history[0].train_loss - 1.0).abs() < 1e-12);
        assert!(m.predict(&x).unwrap().iter().all(|&v| v == 1.0));
        let params = m.config().parameters().unwrap();
        assert_eq!(params.get("model - n_epochs"), Some("1"));
        assert_eq!(params.get("model - flag"), Some("True"));
        let bytes = m.save_weights().unwrap();
        let mut other = toy();
        other.load_weights(&bytes).unwrap();
        assert_eq!(other.predict(&x).unwrap(), m.predict(&x).unwrap());
        assert!(other.load_weights(b"no").is_err());
        assert_eq!(m.metrics(), vec![("mean".to_string(), 1.0)]);
    }

    #[test]
    fn cnn3d_is_an_estimator() {
        fn takes(e: &dyn Estimator) -> (String, String) {
            (e.name().to_owned(), e.model_forward())
        }
        let m = Cnn3d::new(Default::default(), 3, [1, 8, 8, 8]).unwrap();
        let (name, forward) = takes(&m);
        assert_eq!(name, "CNN3d");
        assert!(forward.contains("fn forward_unchecked"));
        assert_eq!(
            m.config().parameters().unwrap().get("model - lr"),
            Some("0.001")
        );
    }
}
