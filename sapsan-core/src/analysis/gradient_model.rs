//! The gradient (Clark) model of the subgrid stress, the physical baseline a learned closure is
//! read against (Sapsan's `utils/physics.py` `GradientModel`):
//!
//! ```text
//! tau_ij = Delta^2 / 12 * sum_k (d u_i / d x_k) (d u_j / d x_k)
//! ```
//!
//! computed from the *filtered* velocity with the filter width `Delta` of that data. Derivatives
//! are second-order central differences on the periodic grid, lengths in grid cells (so `Delta`
//! is given in cells of the grid the velocity is on).
use ndarray::{Array3, ArrayView3, ArrayView4};

use crate::error::{Error, Result};

/// The gradient model's settings for one dataset.
#[derive(Debug, Clone, PartialEq)]
pub struct GradientModel {
    /// Filter width `Delta` of the data, in cells of the evaluated grid (the box filter of
    /// the synthetic data is 4 cells at 32^3, so 2 cells after sampling to 16^3).
    pub filter_width: f64,
    /// The component `(i, j)` of tau each target channel holds; `[[0, 0]]` for tau_11.
    pub components: Vec<[usize; 2]>,
}

impl GradientModel {
    /// The model for a target holding tau_11 only.
    pub fn tau_11(filter_width: f64) -> Self {
        Self {
            filter_width,
            components: vec![[0, 0]],
        }
    }

    /// The modelled stress of every configured component for one filtered velocity cube
    /// `(3, D, H, W)`: one `(D, H, W)` cube per target channel.
    pub fn predict(&self, velocity: ArrayView4<f32>) -> Result<Vec<Array3<f64>>> {
        let c = velocity.shape()[0];
        if c != 3 {
            return Err(Error::Setting {
                name: "gradient model".into(),
                value: format!("{c} feature channels"),
                reason: "the gradient model needs the three filtered velocity components as the \
                         features; evaluate it only on velocity data"
                    .into(),
            });
        }
        if let Some(bad) = self.components.iter().find(|ij| ij[0] > 2 || ij[1] > 2) {
            return Err(Error::Setting {
                name: "gradient model components".into(),
                value: format!("{bad:?}"),
                reason: "components are [i, j] with i, j in 0..=2".into(),
            });
        }
        // d u_i / d x_k for every i, k.
        let grads: Vec<[Array3<f64>; 3]> = velocity
            .outer_iter()
            .map(|u| std::array::from_fn(|k| central_difference(u, k)))
            .collect();
        let scale = self.filter_width * self.filter_width / 12.0;
        Ok(self
            .components
            .iter()
            .map(|&[i, j]| {
                let mut tau = Array3::<f64>::zeros(grads[0][0].raw_dim());
                for (gi, gj) in grads[i].iter().zip(&grads[j]) {
                    tau.zip_mut_with(&(gi * gj), |t, g| *t += g);
                }
                tau * scale
            })
            .collect())
    }
}

/// `(f(x + 1) - f(x - 1)) / 2` along `axis`, periodic, in `f64`.
pub fn central_difference(f: ArrayView3<f32>, axis: usize) -> Array3<f64> {
    let dims = f.dim();
    let n = [dims.0, dims.1, dims.2][axis];
    Array3::from_shape_fn(dims, |(a, b, c)| {
        let mut p = [a, b, c];
        let mut m = [a, b, c];
        p[axis] = (p[axis] + 1) % n;
        m[axis] = (m[axis] + n - 1) % n;
        0.5 * (f64::from(f[p]) - f64::from(f[m]))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::Array4;
    use std::f64::consts::PI;

    #[test]
    fn central_difference_of_a_sine_is_exact() {
        // d/dx of sin(a x) by central differences is cos(a x) sin(a), exactly.
        let n = 16;
        let a = 2.0 * PI * 3.0 / n as f64;
        let f = Array3::from_shape_fn((n, 4, 5), |(i, _, _)| (a * i as f64).sin() as f32);
        let d = central_difference(f.view(), 0);
        for ((i, _, _), v) in d.indexed_iter() {
            assert!((v - (a * i as f64).cos() * a.sin()).abs() < 1e-6, "{i}");
        }
        assert!(
            central_difference(f.view(), 1)
                .iter()
                .all(|v| v.abs() < 1e-12)
        );
    }

    #[test]
    fn gradient_model_known_answer() {
        // u = (sin(a x0) + x-independent shear in x1, 0, cos(b x2)).
        let n = 8;
        let (a, b) = (2.0 * PI / n as f64, 2.0 * PI * 2.0 / n as f64);
        let u = Array4::from_shape_fn((3, n, n, n), |(c, i, j, k)| match c {
            0 => ((a * i as f64).sin() + (b * j as f64).cos()) as f32,
            2 => (b * k as f64).cos() as f32,
            _ => 0.0,
        });
        let m = GradientModel {
            filter_width: 4.0,
            components: vec![[0, 0], [0, 2], [2, 2], [1, 1]],
        };
        let out = m.predict(u.view()).unwrap();
        let s = 16.0 / 12.0;
        for ((i, j, k), v) in out[0].indexed_iter() {
            let d0 = (a * i as f64).cos() * a.sin();
            let d1 = -(b * j as f64).sin() * b.sin();
            assert!((v - s * (d0 * d0 + d1 * d1)).abs() < 1e-5, "{i} {j} {k}");
            // tau_13: u1 and u3 vary along different axes, so no common derivative.
            assert!(out[1][[i, j, k]].abs() < 1e-12);
            let d2 = -(b * k as f64).sin() * b.sin();
            assert!((out[2][[i, j, k]] - s * d2 * d2).abs() < 1e-5);
            assert_eq!(out[3][[i, j, k]], 0.0);
        }
        // Not velocity, or a bad component: clear errors.
        let e = m
            .predict(u.slice(ndarray::s![..2, .., .., ..]))
            .unwrap_err();
        assert!(e.to_string().contains("three filtered velocity"), "{e}");
        let bad = GradientModel {
            filter_width: 1.0,
            components: vec![[0, 3]],
        };
        assert!(bad.predict(u.view()).is_err());
    }
}
