//! How much of the main job's target can a local closure predict at all?
//!
//! `cargo run --example closure_ceiling` reads (or writes) the main job's synthetic data, then on
//! the held-out checkpoints 4 and 5 reports R^2 = 1 - MSE / variance of tau_11 for:
//!
//! - the best *quadratic* local model: least squares of tau_11 on 1, the 12 resolved quantities at
//!   a point (filtered velocity and its central-difference gradient) and their 78 products,
//!   fitted on checkpoints 0-3. It is a lower bound of what a local closure can reach (the
//!   `LocalClosure` sees the same 12 quantities through a nonlinear network);
//! - the gradient model with its textbook coefficient Delta^2 / 12 (the baseline Evaluate logs),
//!   the same model with its coefficient fitted by least squares on checkpoints 0-3, and with a
//!   coefficient and an offset fitted (how much of the target the gradient model's *shape*
//!   explains once its missing mean, the unresolved sub-filter energy, is added).
// Dense linear algebra reads best with explicit indices.
#![allow(clippy::needless_range_loop)]

use std::path::PathBuf;

use ndarray::{Array3, Array4, Axis};
use sapsan::analysis::GradientModel;
use sapsan::analysis::gradient_model::central_difference;
use sapsan::data::{read_cube, synthetic};
use sapsan::experiment::quickstart::Quickstart;

fn main() {
    if let Err(e) = run() {
        eprintln!("closure_ceiling failed: {e}");
        std::process::exit(1);
    }
}

/// The 12 resolved quantities at every point of a velocity cube `(3, n, n, n)`:
/// `u_c` and `d_k u_c`, as rows of `(n^3, 12)`.
fn point_features(u: &Array4<f32>) -> Vec<[f64; 12]> {
    let mut cols: Vec<Array3<f64>> = Vec::with_capacity(12);
    for c in u.outer_iter() {
        cols.push(c.mapv(f64::from));
    }
    for c in u.outer_iter() {
        for k in 0..3 {
            cols.push(central_difference(c, k));
        }
    }
    let n = cols[0].len();
    let flat: Vec<&[f64]> = cols.iter().map(|c| c.as_slice().unwrap_or(&[])).collect();
    (0..n)
        .map(|p| std::array::from_fn(|f| flat[f].get(p).copied().unwrap_or(0.0)))
        .collect()
}

/// 1, the 12 quantities and their 78 products.
fn quadratic(x: &[f64; 12]) -> Vec<f64> {
    let mut b = Vec::with_capacity(91);
    b.push(1.0);
    b.extend_from_slice(x);
    for i in 0..12 {
        for j in i..12 {
            b.push(x[i] * x[j]);
        }
    }
    b
}

/// Solves the symmetric positive definite `a x = b` by Cholesky (a tiny ridge keeps it stable).
fn solve_spd(mut a: Vec<Vec<f64>>, b: Vec<f64>) -> Vec<f64> {
    let n = b.len();
    let ridge = 1e-10 * (0..n).map(|i| a[i][i]).sum::<f64>() / n as f64;
    for (i, row) in a.iter_mut().enumerate() {
        row[i] += ridge;
    }
    // a = l l^T, l stored in the lower triangle of a.
    for j in 0..n {
        let mut d = a[j][j];
        for k in 0..j {
            d -= a[j][k] * a[j][k];
        }
        let d = d.max(f64::MIN_POSITIVE).sqrt();
        a[j][j] = d;
        for i in j + 1..n {
            let mut s = a[i][j];
            for k in 0..j {
                s -= a[i][k] * a[j][k];
            }
            a[i][j] = s / d;
        }
    }
    let mut y = b;
    for i in 0..n {
        for k in 0..i {
            y[i] -= a[i][k] * y[k];
        }
        y[i] /= a[i][i];
    }
    for i in (0..n).rev() {
        for k in i + 1..n {
            y[i] -= a[k][i] * y[k];
        }
        y[i] /= a[i][i];
    }
    y
}

fn r2(target: &[f64], prediction: &[f64]) -> f64 {
    let n = target.len() as f64;
    let mean = target.iter().sum::<f64>() / n;
    let var = target.iter().map(|t| (t - mean).powi(2)).sum::<f64>() / n;
    let mse = target
        .iter()
        .zip(prediction)
        .map(|(t, p)| (t - p).powi(2))
        .sum::<f64>()
        / n;
    1.0 - mse / var
}

struct Checkpoint {
    features: Vec<[f64; 12]>,
    gradient_model: Vec<f64>,
    tau: Vec<f64>,
}

fn run() -> sapsan::Result<()> {
    let mut job = Quickstart::default();
    if let Some(dir) = std::env::var_os("SAPSAN_DATA_DIR") {
        job.data_dir = PathBuf::from(dir);
    }
    synthetic::generate(&job.data_dir, job.grid, &[0, 1, 2, 3, 4, 5], job.seed)?;
    let model = job.gradient_model();
    println!(
        "data: {}, {}^3, box filter {} cells; gradient model Delta = {} cells",
        job.data_dir.display(),
        job.grid,
        synthetic::FILTER_WIDTH,
        model.filter_width
    );
    let load = |t: usize| -> sapsan::Result<Checkpoint> {
        let path = |f: &str| synthetic::file_path(&job.data_dir, job.grid, t, f);
        let u = read_cube(&path(synthetic::FEATURE), None)?;
        let tau = read_cube(&path(synthetic::TARGET), None)?;
        let gm = GradientModel::predict(&model, u.view())?;
        Ok(Checkpoint {
            features: point_features(&u),
            gradient_model: gm[0].iter().copied().collect(),
            tau: tau
                .index_axis(Axis(0), 0)
                .iter()
                .map(|&v| f64::from(v))
                .collect(),
        })
    };
    let train: Vec<Checkpoint> = (0..4).map(load).collect::<sapsan::Result<_>>()?;
    let test: Vec<(usize, Checkpoint)> = [4, 5]
        .into_iter()
        .map(|t| Ok((t, load(t)?)))
        .collect::<sapsan::Result<_>>()?;

    // Normal equations of the quadratic model, and the gradient model's best coefficient.
    let m = 91;
    let mut ata = vec![vec![0.0; m]; m];
    let mut atb = vec![0.0; m];
    let (mut gg, mut gt, mut gs, mut ts, mut count) = (0.0, 0.0, 0.0, 0.0, 0.0);
    for c in &train {
        for ((x, &t), &g) in c.features.iter().zip(&c.tau).zip(&c.gradient_model) {
            let b = quadratic(x);
            for i in 0..m {
                atb[i] += b[i] * t;
                for j in 0..=i {
                    ata[i][j] += b[i] * b[j];
                }
            }
            gg += g * g;
            gt += g * t;
            gs += g;
            ts += t;
            count += 1.0;
        }
    }
    for i in 0..m {
        for j in 0..i {
            ata[j][i] = ata[i][j];
        }
    }
    let coef = solve_spd(ata, atb);
    let scale = gt / gg;
    // tau ~ a + b g: the 2x2 normal equations.
    let b = (count * gt - gs * ts) / (count * gg - gs * gs);
    let a = (ts - b * gs) / count;
    println!(
        "gradient model: least-squares coefficient {scale:.3} x (Delta^2 / 12) on checkpoints 0-3; \
         with an offset: {a:.4} + {b:.3} x model"
    );
    for (t, c) in &test {
        let quad: Vec<f64> = c
            .features
            .iter()
            .map(|x| quadratic(x).iter().zip(&coef).map(|(b, w)| b * w).sum())
            .collect();
        let fitted: Vec<f64> = c.gradient_model.iter().map(|g| g * scale).collect();
        let affine: Vec<f64> = c.gradient_model.iter().map(|g| a + b * g).collect();
        println!(
            "checkpoint {t}: R^2 local quadratic model {:.3}, gradient model {:.3} \
             (coefficient fitted: {:.3}; coefficient and offset fitted: {:.3})",
            r2(&c.tau, &quad),
            r2(&c.tau, &c.gradient_model),
            r2(&c.tau, &fitted),
            r2(&c.tau, &affine)
        );
    }
    Ok(())
}
