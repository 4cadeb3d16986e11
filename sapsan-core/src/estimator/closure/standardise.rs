//! [`Standardiser`]: per-channel standardisation of features and targets, fitted on the training
//! set and saved with the weights, so a network sees inputs and targets of unit scale whatever
//! the units of the data.
use std::collections::HashMap;

use candle_core::{Device, Tensor};
use ndarray::{Array5, Axis};

use crate::error::{Error, Result};

/// Means and standard deviations, one per channel, of the features and of the targets.
#[derive(Debug, Clone, PartialEq)]
pub struct Standardiser {
    /// Mean of each feature channel.
    pub feature_mean: Vec<f32>,
    /// Standard deviation of each feature channel (1 where a channel is constant).
    pub feature_std: Vec<f32>,
    /// Mean of each target channel.
    pub target_mean: Vec<f32>,
    /// Standard deviation of each target channel (1 where a channel is constant).
    pub target_std: Vec<f32>,
}

const NAMES: [&str; 4] = [
    "standardise.feature_mean",
    "standardise.feature_std",
    "standardise.target_mean",
    "standardise.target_std",
];

/// Mean and standard deviation of each channel (axis 1) of `a`, accumulated in `f64`.
fn channel_stats(a: &Array5<f32>) -> (Vec<f32>, Vec<f32>) {
    a.axis_iter(Axis(1))
        .map(|c| {
            let n = c.len().max(1) as f64;
            let mean = c.iter().map(|&v| f64::from(v)).sum::<f64>() / n;
            let var = c
                .iter()
                .map(|&v| (f64::from(v) - mean).powi(2))
                .sum::<f64>()
                / n;
            let std = var.sqrt();
            (
                mean as f32,
                if std > 0.0 && std.is_finite() {
                    std as f32
                } else {
                    1.0
                },
            )
        })
        .unzip()
}

fn apply(a: &Array5<f32>, mean: &[f32], std: &[f32], forward: bool) -> Array5<f32> {
    let mut out = a.clone();
    for (c, mut ch) in out.axis_iter_mut(Axis(1)).enumerate() {
        let (m, s) = (mean[c], std[c]);
        if forward {
            ch.mapv_inplace(|v| (v - m) / s);
        } else {
            ch.mapv_inplace(|v| v * s + m);
        }
    }
    out
}

impl Standardiser {
    /// No change: means 0, standard deviations 1.
    pub fn identity(features: usize, targets: usize) -> Self {
        Self {
            feature_mean: vec![0.0; features],
            feature_std: vec![1.0; features],
            target_mean: vec![0.0; targets],
            target_std: vec![1.0; targets],
        }
    }

    /// Fitted on training features and targets `(N, C, D, H, W)`.
    pub fn fit(features: &Array5<f32>, targets: &Array5<f32>) -> Self {
        let (feature_mean, feature_std) = channel_stats(features);
        let (target_mean, target_std) = channel_stats(targets);
        Self {
            feature_mean,
            feature_std,
            target_mean,
            target_std,
        }
    }

    /// `(x - mean) / std` per feature channel.
    pub fn features(&self, x: &Array5<f32>) -> Array5<f32> {
        apply(x, &self.feature_mean, &self.feature_std, true)
    }

    /// `(y - mean) / std` per target channel.
    pub fn targets(&self, y: &Array5<f32>) -> Array5<f32> {
        apply(y, &self.target_mean, &self.target_std, true)
    }

    /// `y * std + mean` per target channel: back to the units of the data.
    pub fn restore_targets(&self, y: Array5<f32>) -> Array5<f32> {
        apply(&y, &self.target_mean, &self.target_std, false)
    }

    /// One line for the model details.
    pub fn describe(&self) -> String {
        format!(
            "per channel, fitted on the training set: features mean {:?} std {:?}, targets mean {:?} std {:?}",
            self.feature_mean, self.feature_std, self.target_mean, self.target_std
        )
    }

    /// The four vectors as named tensors, to be saved with the weights.
    pub fn to_tensors(&self) -> Result<Vec<(String, Tensor)>> {
        let vecs = [
            &self.feature_mean,
            &self.feature_std,
            &self.target_mean,
            &self.target_std,
        ];
        NAMES
            .iter()
            .zip(vecs)
            .map(|(name, v)| {
                Ok((
                    (*name).to_owned(),
                    Tensor::from_slice(v, v.len(), &Device::Cpu)?,
                ))
            })
            .collect()
    }

    /// Reads the vectors back from saved tensors, checking their lengths.
    pub fn from_tensors(
        tensors: &HashMap<String, Tensor>,
        features: usize,
        targets: usize,
    ) -> Result<Self> {
        let mut vecs = Vec::with_capacity(4);
        for (i, name) in NAMES.iter().enumerate() {
            let want = if i < 2 { features } else { targets };
            let t = tensors.get(*name).ok_or_else(|| {
                Error::Estimator(format!(
                    "the saved weights have no tensor {name:?}; were they saved from a LocalClosure?"
                ))
            })?;
            let v: Vec<f32> = t
                .flatten_all()?
                .to_dtype(candle_core::DType::F32)?
                .to_vec1()?;
            if v.len() != want {
                return Err(Error::Estimator(format!(
                    "saved tensor {name:?} has {} entries but this model has {want} channels; \
                     build it with the channels it was trained with",
                    v.len()
                )));
            }
            vecs.push(v);
        }
        let mut it = vecs.into_iter();
        let mut next = || it.next().unwrap_or_default();
        Ok(Self {
            feature_mean: next(),
            feature_std: next(),
            target_mean: next(),
            target_std: next(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn standardises_per_channel_and_restores() {
        let x = Array5::from_shape_fn((2, 2, 2, 2, 2), |(n, c, i, _, _)| {
            if c == 0 { (n * 2 + i) as f32 } else { 5.0 }
        });
        let s = Standardiser::fit(&x, &x);
        assert_eq!(s.feature_mean, vec![1.5, 5.0]);
        assert!((s.feature_std[0] - 1.25f32.sqrt()).abs() < 1e-6);
        assert_eq!(s.feature_std[1], 1.0, "a constant channel keeps std 1");
        let z = s.features(&x);
        let c0: Vec<f32> = z.index_axis(Axis(1), 0).iter().copied().collect();
        let mean = c0.iter().sum::<f32>() / c0.len() as f32;
        let var = c0.iter().map(|v| (v - mean).powi(2)).sum::<f32>() / c0.len() as f32;
        assert!(mean.abs() < 1e-6 && (var - 1.0).abs() < 1e-5);
        let back = s.restore_targets(s.targets(&x));
        assert!(back.iter().zip(x.iter()).all(|(a, b)| (a - b).abs() < 1e-5));

        let tensors: HashMap<String, Tensor> = s.to_tensors().unwrap().into_iter().collect();
        assert_eq!(Standardiser::from_tensors(&tensors, 2, 2).unwrap(), s);
        let e = Standardiser::from_tensors(&tensors, 3, 2).unwrap_err();
        assert!(e.to_string().contains("channels"), "{e}");
    }
}
