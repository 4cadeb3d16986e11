//! The linear algebra of kernel ridge regression: the RBF kernel matrix and the solution of
//! `(K + alpha I) c = y` by a Cholesky factorisation (`K + alpha I` is symmetric positive
//! definite for `alpha > 0`). Dense, row-major `f64`; sizes of a few thousand points.
use crate::error::{Error, Result};

/// Row-major points: `n` rows of `dim` coordinates.
#[derive(Debug, Clone, PartialEq)]
pub struct Points {
    /// `n * dim` values, point after point.
    pub values: Vec<f64>,
    /// Coordinates per point.
    pub dim: usize,
}

impl Points {
    /// Number of points.
    pub fn len(&self) -> usize {
        self.values.len().checked_div(self.dim).unwrap_or(0)
    }

    /// No points.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Point `i`.
    pub fn row(&self, i: usize) -> &[f64] {
        &self.values[i * self.dim..(i + 1) * self.dim]
    }
}

/// `exp(-gamma |a - b|^2)`.
pub fn rbf(a: &[f64], b: &[f64], gamma: f64) -> f64 {
    let d2: f64 = a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum();
    (-gamma * d2).exp()
}

/// The kernel matrix `K[i][j] = rbf(a_i, b_j)`, row-major `a.len() x b.len()`.
pub fn kernel_matrix(a: &Points, b: &Points, gamma: f64) -> Vec<f64> {
    let mut k = Vec::with_capacity(a.len() * b.len());
    for i in 0..a.len() {
        let ai = a.row(i);
        k.extend((0..b.len()).map(|j| rbf(ai, b.row(j), gamma)));
    }
    k
}

/// Solves `(K + alpha I) C = Y` for the dual coefficients `C` (`n x outputs`, row-major), with
/// `K` the `n x n` kernel matrix and `Y` the `n x outputs` targets. Fails when the matrix is not
/// positive definite (an `alpha` of 0 with repeated points, or non-finite values).
pub fn solve_ridge(mut k: Vec<f64>, n: usize, alpha: f64, y: &[f64]) -> Result<Vec<f64>> {
    let outputs = y.len().checked_div(n).unwrap_or(0);
    debug_assert_eq!(k.len(), n * n);
    debug_assert_eq!(y.len(), n * outputs);
    for i in 0..n {
        k[i * n + i] += alpha;
    }
    cholesky_in_place(&mut k, n)?;
    let mut c = y.to_vec();
    let mut column = vec![0.0; n];
    for o in 0..outputs {
        for (i, v) in column.iter_mut().enumerate() {
            *v = c[i * outputs + o];
        }
        // L z = y, then L^T c = z.
        for i in 0..n {
            let row = &k[i * n..i * n + i];
            let s: f64 = row.iter().zip(&column[..i]).map(|(l, z)| l * z).sum();
            column[i] = (column[i] - s) / k[i * n + i];
        }
        for i in (0..n).rev() {
            let mut s = 0.0;
            for (j, z) in column.iter().enumerate().skip(i + 1) {
                s += k[j * n + i] * z;
            }
            column[i] = (column[i] - s) / k[i * n + i];
        }
        for (i, v) in column.iter().enumerate() {
            c[i * outputs + o] = *v;
        }
    }
    Ok(c)
}

/// Replaces the lower triangle of the symmetric `n x n` matrix `a` by its Cholesky factor `L`
/// (`a = L L^T`); the upper triangle is left as it was.
fn cholesky_in_place(a: &mut [f64], n: usize) -> Result<()> {
    for j in 0..n {
        let row_j = &mut a[j * n..(j + 1) * n];
        // Row j of L left of the diagonal is already final; the diagonal comes from it.
        let d = row_j[j] - row_j[..j].iter().map(|v| v * v).sum::<f64>();
        if !(d > 0.0 && d.is_finite()) {
            return Err(Error::Estimator(format!(
                "the kernel matrix plus alpha is not positive definite (pivot {j} is {d}); \
                 set alpha to a positive value such as 1e-3, or remove repeated points"
            )));
        }
        let djj = d.sqrt();
        row_j[j] = djj;
        // Column j below the diagonal: L[i][j] = (a[i][j] - sum_k L[i][k] L[j][k]) / L[j][j].
        let (upto_j, below) = a.split_at_mut((j + 1) * n);
        let lj = &upto_j[j * n..j * n + j];
        for i in 0..n - j - 1 {
            let row_i = &mut below[i * n..(i + 1) * n];
            let s: f64 = row_i[..j].iter().zip(lj).map(|(x, y)| x * y).sum();
            row_i[j] = (row_i[j] - s) / djj;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cholesky_solves_a_known_system() {
        // A = [[4, 2, 0.4], [2, 2, 0.5], [0.4, 0.5, 3]] (K + 1 * I with K = A - I),
        // x = [1, -2, 0.5]: y = A x.
        let a = [4.0, 2.0, 0.4, 2.0, 2.0, 0.5, 0.4, 0.5, 3.0];
        let x = [1.0, -2.0, 0.5];
        let y: Vec<f64> = (0..3)
            .map(|i| (0..3).map(|j| a[i * 3 + j] * x[j]).sum())
            .collect();
        let k: Vec<f64> = a
            .iter()
            .enumerate()
            .map(|(i, v)| if i % 4 == 0 { v - 1.0 } else { *v })
            .collect();
        let c = solve_ridge(k, 3, 1.0, &y).unwrap();
        for (g, w) in c.iter().zip(x) {
            assert!((g - w).abs() < 1e-12, "{c:?}");
        }
        // Two right-hand sides at once.
        let y2: Vec<f64> = y.iter().flat_map(|v| [*v, 2.0 * v]).collect();
        let k: Vec<f64> = a.iter().map(|v| v / 2.0).collect();
        let c = solve_ridge(k, 3, 0.0, &y2).unwrap();
        for i in 0..3 {
            assert!((c[2 * i] - 2.0 * x[i]).abs() < 1e-12);
            assert!((c[2 * i + 1] - 4.0 * x[i]).abs() < 1e-12);
        }
    }

    #[test]
    fn singular_matrices_are_errors_that_name_alpha() {
        // Two equal points and alpha = 0: K = [[1, 1], [1, 1]] is singular.
        let p = Points {
            values: vec![0.5, 0.5],
            dim: 1,
        };
        let k = kernel_matrix(&p, &p, 2.0);
        assert_eq!(k, vec![1.0; 4]);
        let err = solve_ridge(k, 2, 0.0, &[1.0, 2.0]).unwrap_err();
        assert!(err.to_string().contains("alpha"), "{err}");
    }

    #[test]
    fn rbf_is_the_gaussian_of_the_distance() {
        let g = 0.7;
        let v = rbf(&[1.0, 2.0], &[0.0, 4.0], g);
        assert!((v - (-g * 5.0f64).exp()).abs() < 1e-15);
        assert_eq!(rbf(&[3.0], &[3.0], g), 1.0);
    }
}
