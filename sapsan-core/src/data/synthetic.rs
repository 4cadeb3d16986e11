//! Synthetic turbulence in Sapsan's file layout, so the whole pipeline runs without downloads.
//!
//! The velocity is a random, periodic, divergence-free field on an N^3 grid over [0, 2 pi)^3:
//!
//! - every wavevector k (integer components, 0 < |k| < N/2) gets an amplitude with
//!   |u_hat(k)|^2 proportional to |k|^(-11/3), so the shell-summed energy spectrum follows
//!   Kolmogorov's E(k) ~ k^(-5/3);
//! - its direction is a random complex Gaussian vector projected onto the plane perpendicular to k
//!   (so k . u_hat(k) = 0: the field is divergence-free), with random phases;
//! - u_hat(-k) = conj(u_hat(k)), so the inverse FFT is real; the field is scaled to an RMS of 1 per
//!   component.
//!
//! The *features* are the box-filtered velocity (filter width [`FILTER_WIDTH`] cells); the
//! *target* is the subgrid stress tau_11 = filter(u1 u1) - filter(u1)^2, computed from the
//! unfiltered field (u1 is component 0, the velocity along the first spatial axis). Each
//! checkpoint is an independent realisation (a different seed), not a time series.
//!
//! Files, as Sapsan's example data (`t{checkpoint:1.0f}/{feature}_dim32_fm15.h5`):
//!
//! - `dir/t{checkpoint}/u_dim{N}_fm15.h5`, dataset `u00000`, float32, shape (3, N, N, N);
//! - `dir/t{checkpoint}/tn_dim{N}_fm15.h5`, dataset `tn00000`, float32, shape (1, N, N, N).
use std::path::{Path, PathBuf};

use ndarray::{Array3, Array4, ArrayView3, ArrayView4, Axis, Zip};
use rand::rngs::Xoshiro256PlusPlus;
use rand::{RngExt, SeedableRng};

use super::config::DataConfig;
use super::fft::{C64, fft3, freq};
use super::read::read_cube;
use crate::{Error, Result};

/// Box-filter width, in cells, used by [`generate`].
pub const FILTER_WIDTH: usize = 4;
/// Feature name of the filtered velocity.
pub const FEATURE: &str = "u";
/// Feature name of the subgrid stress tau_11.
pub const TARGET: &str = "tn";
/// Dataset name of the filtered velocity inside its file.
pub const FEATURE_DATASET: &str = "u00000";
/// Dataset name of tau_11 inside its file.
pub const TARGET_DATASET: &str = "tn00000";

/// The path template, relative to the output directory, of the files for grid size `n`:
/// `t{checkpoint:1.0f}/{feature}_dim{n}_fm15.h5`.
pub fn path_template(n: usize) -> String {
    format!("t{{checkpoint:1.0f}}/{{feature}}_dim{n}_fm15.h5")
}

impl DataConfig {
    /// Settings for the files [`generate`] writes into `dir` for grid size `n`: feature `u`
    /// (filtered velocity), target `tn` (subgrid stress tau_11).
    ///
    /// Defined here, beside the layout it names, so the settings module needs nothing from the
    /// generator.
    pub fn synthetic(dir: impl AsRef<Path>, n: usize) -> Self {
        let path = dir
            .as_ref()
            .join(path_template(n))
            .to_string_lossy()
            .into_owned();
        DataConfig::new(path, [FEATURE]).with_target([TARGET])
    }
}

/// The file of `feature` at `checkpoint` for grid size `n` under `dir`:
/// `dir/t{checkpoint}/{feature}_dim{n}_fm15.h5`.
pub fn file_path(dir: &Path, n: usize, checkpoint: usize, feature: &str) -> PathBuf {
    dir.join(format!("t{checkpoint}"))
        .join(format!("{feature}_dim{n}_fm15.h5"))
}

/// What [`generate`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Generated {
    /// Files written (they were missing or invalid).
    pub written: Vec<PathBuf>,
    /// Files left alone because they already held valid data.
    pub skipped: Vec<PathBuf>,
}

/// Settings of the generator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Synthetic {
    /// Grid points per axis (at least 8; powers of two are fastest).
    pub n: usize,
    /// Box-filter width in cells (at least 1, less than `n`).
    pub filter_width: usize,
    /// Base seed; checkpoint `t` uses a seed derived from it and `t`.
    pub seed: u64,
}

/// Writes filtered velocity `u` and subgrid stress `tn` for each checkpoint into `dir` on an
/// `n`^3 grid (see the module docs for the layout). Files that already exist and hold valid
/// data of the right shape are kept, so calling it again is cheap.
pub fn generate(dir: &Path, n: usize, checkpoints: &[usize], seed: u64) -> Result<Generated> {
    Synthetic::new(n, seed).write(dir, checkpoints)
}

impl Synthetic {
    /// Grid size `n`, seed `seed`, filter width [`FILTER_WIDTH`].
    pub fn new(n: usize, seed: u64) -> Self {
        Synthetic {
            n,
            filter_width: FILTER_WIDTH,
            seed,
        }
    }

    fn check(&self) -> Result<()> {
        if !(8..=256).contains(&self.n) {
            return Err(Error::Setting {
                name: "synthetic n".into(),
                value: self.n.to_string(),
                reason: "grid size must be between 8 and 256".into(),
            });
        }
        if self.filter_width == 0 || self.filter_width >= self.n {
            return Err(Error::Setting {
                name: "synthetic filter_width".into(),
                value: self.filter_width.to_string(),
                reason: format!("must be at least 1 and less than the grid size {}", self.n),
            });
        }
        Ok(())
    }

    /// The seed used for `checkpoint`.
    fn checkpoint_seed(&self, checkpoint: usize) -> u64 {
        splitmix64(self.seed ^ splitmix64(checkpoint as u64))
    }

    /// The unfiltered velocity of `checkpoint`, shape (3, n, n, n).
    pub fn velocity(&self, checkpoint: usize) -> Result<Array4<f64>> {
        self.check()?;
        Ok(velocity_field(self.n, self.checkpoint_seed(checkpoint)))
    }

    /// The filtered velocity (3, n, n, n) and tau_11 (1, n, n, n) of `checkpoint`, as float32.
    pub fn fields(&self, checkpoint: usize) -> Result<(Array4<f32>, Array4<f32>)> {
        let u = self.velocity(checkpoint)?;
        let n = self.n;
        let mut filtered = Array4::<f32>::zeros((3, n, n, n));
        let mut tau = Array4::<f32>::zeros((1, n, n, n));
        for (c, comp) in u.outer_iter().enumerate() {
            let f = box_filter(comp, self.filter_width);
            if c == 0 {
                // tau_11 = filter(u1^2) - filter(u1)^2, in f64 (a small difference of O(1) terms).
                let sq = box_filter(comp.mapv(|v| v * v).view(), self.filter_width);
                Zip::from(tau.index_axis_mut(Axis(0), 0))
                    .and(&sq)
                    .and(&f)
                    .for_each(|t, &sq, &f| *t = (sq - f * f) as f32);
            }
            Zip::from(filtered.index_axis_mut(Axis(0), c))
                .and(&f)
                .for_each(|d, &v| *d = v as f32);
        }
        Ok((filtered, tau))
    }

    /// Writes the files of every checkpoint into `dir`, keeping valid existing ones.
    pub fn write(&self, dir: &Path, checkpoints: &[usize]) -> Result<Generated> {
        self.check()?;
        let n = self.n;
        let mut report = Generated::default();
        for &t in checkpoints {
            let u_path = file_path(dir, n, t, FEATURE);
            let tn_path = file_path(dir, n, t, TARGET);
            let u_ok = is_valid(&u_path, FEATURE_DATASET, [3, n, n, n]);
            let tn_ok = is_valid(&tn_path, TARGET_DATASET, [1, n, n, n]);
            if u_ok && tn_ok {
                report.skipped.extend([u_path, tn_path]);
                continue;
            }
            let (u, tau) = self.fields(t)?;
            for (ok, path, name, data) in [
                (u_ok, u_path, FEATURE_DATASET, u),
                (tn_ok, tn_path, TARGET_DATASET, tau),
            ] {
                if ok {
                    report.skipped.push(path);
                } else {
                    write_h5(&path, name, &data)?;
                    report.written.push(path);
                }
            }
        }
        Ok(report)
    }
}

fn is_valid(path: &Path, dataset: &str, shape: [usize; 4]) -> bool {
    read_cube(path, Some(dataset)).is_ok_and(|a| a.shape() == shape)
}

/// Writes `data` as dataset `name` of a new file at `path`, through a temporary file renamed
/// into place so a crash never leaves a half-written file under the final name.
fn write_h5(path: &Path, name: &str, data: &Array4<f32>) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| Error::io("creating directory", dir, e))?;
    let tmp = path.with_extension(format!("h5.tmp{}", std::process::id()));
    let h5err = |e: hdf5::Error| Error::Data {
        path: tmp.clone(),
        dataset: Some(name.to_string()),
        reason: format!("cannot write ({e}); check free space and permissions"),
    };
    let written = hdf5::File::create(&tmp).and_then(|file| {
        file.new_dataset_builder().with_data(data).create(name)?;
        file.close()
    });
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp); // best effort: the error below is what matters
        return Err(h5err(e));
    }
    std::fs::rename(&tmp, path).map_err(|e| Error::io("renaming into place", path, e))
}

/// A random divergence-free periodic velocity field (3, n, n, n) with a k^(-5/3) energy spectrum
/// and RMS 1 per component, fully determined by `n` and `seed` (see the module docs); zero for
/// `n` < 2.
pub fn velocity_field(n: usize, seed: u64) -> Array4<f64> {
    if n < 2 {
        return Array4::zeros((3, n, n, n));
    }
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed);
    let total = n * n * n;
    let mut hat: [Vec<C64>; 3] = std::array::from_fn(|_| vec![C64::default(); total]);
    let cutoff = (n / 2) as i64 * (n / 2) as i64;
    for i in 0..n {
        for j in 0..n {
            for l in 0..n {
                let k = [freq(i, n), freq(j, n), freq(l, n)];
                let k2 = k[0] * k[0] + k[1] * k[1] + k[2] * k[2];
                // One of each pair (k, -k); the other is its conjugate.
                let canonical = k[0] > 0 || (k[0] == 0 && (k[1] > 0 || (k[1] == 0 && k[2] > 0)));
                if !canonical || k2 >= cutoff {
                    continue;
                }
                let kf = k.map(|v| v as f64);
                let k2f = k2 as f64;
                // Random complex Gaussian vector, minus its component along k.
                let mut v = [C64::default(); 3];
                for c in &mut v {
                    *c = C64::new(gaussian(&mut rng), gaussian(&mut rng));
                }
                let dot = C64::new(
                    (0..3).map(|a| kf[a] * v[a].re).sum::<f64>() / k2f,
                    (0..3).map(|a| kf[a] * v[a].im).sum::<f64>() / k2f,
                );
                for a in 0..3 {
                    v[a] = C64::new(v[a].re - dot.re * kf[a], v[a].im - dot.im * kf[a]);
                }
                let norm = v.iter().map(|c| c.norm_sqr()).sum::<f64>().sqrt();
                if norm == 0.0 {
                    continue;
                }
                let amplitude = k2f.powf(-11.0 / 12.0) / norm; // |k|^(-11/6)
                let idx = (i * n + j) * n + l;
                let neg = (((n - i) % n) * n + (n - j) % n) * n + (n - l) % n;
                for a in 0..3 {
                    let c = C64::new(v[a].re * amplitude, v[a].im * amplitude);
                    hat[a][idx] = c;
                    hat[a][neg] = c.conj();
                }
            }
        }
    }
    // Components 0 and 1 are real, so one inverse transform of hat0 + i hat1 gives u0 in the
    // real part and u1 in the imaginary part.
    let [h0, h1, mut h2] = hat;
    let mut packed: Vec<C64> = h0
        .iter()
        .zip(&h1)
        .map(|(a, b)| C64::new(a.re - b.im, a.im + b.re))
        .collect();
    fft3(&mut packed, n, true);
    fft3(&mut h2, n, true);
    let mut flat = Vec::with_capacity(3 * total);
    flat.extend(packed.iter().map(|c| c.re));
    flat.extend(packed.iter().map(|c| c.im));
    flat.extend(h2.iter().map(|c| c.re));
    let rms = (flat.iter().map(|v| v * v).sum::<f64>() / (3 * total) as f64).sqrt();
    if rms > 0.0 {
        flat.iter_mut().for_each(|v| *v /= rms);
    }
    Array4::from_shape_vec((3, n, n, n), flat).unwrap_or_else(|_| Array4::zeros((3, n, n, n)))
}

/// Periodic box (top-hat) filter of `width` cells applied along all three axes. An odd width
/// averages `width` cells centred on each point; an even width averages `width + 1` cells with
/// half weight on the two end cells (the centred box of that width on a grid).
pub fn box_filter(field: ArrayView3<f64>, width: usize) -> Array3<f64> {
    let weights = box_weights(width);
    let (d, h, w) = field.dim();
    let mut cur: Vec<f64> = field.iter().copied().collect();
    let mut next = vec![0.0; cur.len()];
    // (length, stride, number of blocks) of the lines along each axis, row-major.
    for (len, stride) in [(d, h * w), (h, w), (w, 1)] {
        if len == 0 {
            break;
        }
        // For each position on the line, the (neighbour, weight) pairs, wrapped periodically.
        let taps: Vec<Vec<(usize, f64)>> = (0..len)
            .map(|x| {
                weights
                    .iter()
                    .map(|&(off, wt)| ((x as isize + off).rem_euclid(len as isize) as usize, wt))
                    .collect()
            })
            .collect();
        let block = len * stride;
        for start in (0..cur.len()).step_by(block) {
            for inner in 0..stride {
                let base = start + inner;
                for (x, tap) in taps.iter().enumerate() {
                    let mut acc = 0.0;
                    for &(y, wt) in tap {
                        acc += wt * cur[base + y * stride];
                    }
                    next[base + x * stride] = acc;
                }
            }
        }
        std::mem::swap(&mut cur, &mut next);
    }
    Array3::from_shape_vec((d, h, w), cur).unwrap_or_else(|_| Array3::zeros((d, h, w)))
}

fn box_weights(width: usize) -> Vec<(isize, f64)> {
    let w = width.max(1);
    let half = (w / 2) as isize;
    let inv = 1.0 / w as f64;
    (-half..=half)
        .map(|o| {
            let end = w.is_multiple_of(2) && o.abs() == half;
            (o, if end { 0.5 * inv } else { inv })
        })
        .collect()
}

/// Subgrid stress tau_11 = filter(u1 u1) - filter(u1)^2 of a velocity field (3, n, n, n), with
/// u1 = component 0 and the box filter of `width` cells.
pub fn subgrid_stress_11(u: ArrayView4<f64>, width: usize) -> Array3<f64> {
    let u1 = u.index_axis(Axis(0), 0);
    let sq = u1.mapv(|v| v * v);
    let filtered_sq = box_filter(sq.view(), width);
    let filtered = box_filter(u1, width);
    filtered_sq - filtered.mapv(|v| v * v)
}

fn gaussian(rng: &mut Xoshiro256PlusPlus) -> f64 {
    // Box-Muller; 1 - x keeps the logarithm finite.
    let u1: f64 = 1.0 - rng.random::<f64>();
    let u2: f64 = rng.random::<f64>();
    (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
}

fn splitmix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Shell-summed kinetic energy spectrum (the analysis module's, checked against known
    /// fields there).
    fn energy_spectrum(u: ArrayView4<f64>) -> Vec<f64> {
        crate::analysis::field_spectrum(u).unwrap().shells
    }

    /// ||div u|| / ||d u0 / dx0||, both computed spectrally (Parseval).
    #[allow(clippy::needless_range_loop)] // idx picks the wavevector and the coefficient
    fn relative_divergence(u: ArrayView4<f64>) -> f64 {
        let (_, n, _, _) = u.dim();
        let hats: Vec<Vec<C64>> = u
            .outer_iter()
            .map(|c| {
                let mut h: Vec<C64> = c.iter().map(|&v| C64::new(v, 0.0)).collect();
                fft3(&mut h, n, false);
                h
            })
            .collect();
        let (mut div, mut grad) = (0.0, 0.0);
        for idx in 0..n * n * n {
            let k = [idx / (n * n), (idx / n) % n, idx % n].map(|i| freq(i, n) as f64);
            let (mut re, mut im) = (0.0, 0.0);
            for a in 0..3 {
                re += k[a] * hats[a][idx].re;
                im += k[a] * hats[a][idx].im;
            }
            div += re * re + im * im;
            grad += k[0] * k[0] * hats[0][idx].norm_sqr();
        }
        (div / grad).sqrt()
    }

    /// Least-squares slope of log E against log k for k in `range`.
    fn slope(e: &[f64], range: std::ops::RangeInclusive<usize>) -> f64 {
        let pts: Vec<(f64, f64)> = range.map(|k| ((k as f64).ln(), e[k].ln())).collect();
        let m = pts.len() as f64;
        let (sx, sy) = pts.iter().fold((0.0, 0.0), |(a, b), p| (a + p.0, b + p.1));
        let (mx, my) = (sx / m, sy / m);
        let num: f64 = pts.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
        let den: f64 = pts.iter().map(|p| (p.0 - mx).powi(2)).sum();
        num / den
    }

    #[test]
    fn velocity_is_divergence_free() {
        let u = velocity_field(32, 7);
        let rel = relative_divergence(u.view());
        assert!(rel < 1e-12, "relative divergence {rel}");
        // Sanity check of the measure: a field that is not divergence-free scores high.
        let mut v = u.clone();
        v.index_axis_mut(Axis(0), 1)
            .assign(&u.index_axis(Axis(0), 0));
        assert!(relative_divergence(v.view()) > 0.1);
        // Non-power-of-two grids use the plain DFT path.
        assert!(relative_divergence(velocity_field(12, 3).view()) < 1e-12);
    }

    #[test]
    fn filtered_float32_field_stays_divergence_free() {
        let (u, _) = Synthetic::new(16, 2).fields(0).unwrap();
        let rel = relative_divergence(u.mapv(f64::from).view());
        assert!(rel < 1e-5, "relative divergence {rel}");
    }

    #[test]
    fn spectrum_follows_kolmogorov() {
        let u = velocity_field(32, 11);
        let e = energy_spectrum(u.view());
        let s = slope(&e, 2..=14);
        assert!((s + 5.0 / 3.0).abs() < 0.3, "slope {s}, spectrum {e:?}");
        // Nothing at k = 0 and the shells hold (almost) all the energy: mean |u|^2 / 2 = 1.5.
        assert!(e[0] < 1e-20);
        let total: f64 = e.iter().sum();
        assert!((total - 1.5).abs() < 0.05, "total {total}");
        // Box filtering removes small-scale energy: the high shells drop far more than the low.
        let mut f = Array4::<f64>::zeros(u.dim());
        for c in 0..3 {
            f.index_axis_mut(Axis(0), c)
                .assign(&box_filter(u.index_axis(Axis(0), c), 4));
        }
        let ef = energy_spectrum(f.view());
        assert!(
            ef[2] / e[2] > 0.7 && ef[12] / e[12] < 0.1,
            "{} {}",
            ef[2] / e[2],
            ef[12] / e[12]
        );
    }

    #[test]
    fn box_filter_known_answers() {
        let n = 16;
        let theta = 2.0 * std::f64::consts::PI * 2.0 / n as f64; // mode 2 along axis 1
        let f = Array3::from_shape_fn((n, n, n), |(_, j, _)| (theta * j as f64).cos());
        // Odd width 3: factor (1 + 2 cos t) / 3. Even width 4: (1 + 2 cos t + cos 2t) / 4.
        for (w, factor) in [
            (3, (1.0 + 2.0 * theta.cos()) / 3.0),
            (4, (1.0 + 2.0 * theta.cos() + (2.0 * theta).cos()) / 4.0),
            (1, 1.0),
        ] {
            let g = box_filter(f.view(), w);
            for ((i, j, k), v) in g.indexed_iter() {
                assert!(
                    (v - factor * f[[i, j, k]]).abs() < 1e-12,
                    "width {w} at {i},{j},{k}"
                );
            }
        }
        let c = Array3::from_elem((8, 8, 8), 2.5);
        assert!(
            box_filter(c.view(), 4)
                .iter()
                .all(|v| (v - 2.5).abs() < 1e-12)
        );
    }

    #[test]
    fn subgrid_stress_matches_direct_sum_and_is_nonnegative() {
        let u = velocity_field(16, 5);
        let tau = subgrid_stress_11(u.view(), 3);
        assert!(
            tau.iter().all(|&v| v > -1e-12),
            "a variance cannot be negative"
        );
        // Direct: variance of u1 over the 3x3x3 box around (0, 5, 15), periodic.
        let n = 16isize;
        let (mut m1, mut m2) = (0.0, 0.0);
        for a in -1..=1isize {
            for b in -1..=1isize {
                for c in -1..=1isize {
                    let v = u[[
                        0,
                        a.rem_euclid(n) as usize,
                        (5 + b).rem_euclid(n) as usize,
                        (15 + c).rem_euclid(n) as usize,
                    ]];
                    m1 += v / 27.0;
                    m2 += v * v / 27.0;
                }
            }
        }
        assert!((tau[[0, 5, 15]] - (m2 - m1 * m1)).abs() < 1e-12);
        // A constant field has no subgrid stress.
        let c = Array4::from_elem((3, 8, 8, 8), 1.0);
        assert!(
            subgrid_stress_11(c.view(), 4)
                .iter()
                .all(|v| v.abs() < 1e-12)
        );
    }

    #[test]
    fn deterministic_for_a_seed() {
        let a = Synthetic::new(16, 42);
        assert_eq!(a.fields(3).unwrap(), a.fields(3).unwrap());
        assert_ne!(a.velocity(3).unwrap(), a.velocity(4).unwrap());
        assert_ne!(
            a.velocity(3).unwrap(),
            Synthetic::new(16, 43).velocity(3).unwrap()
        );
        // Pinned value: changes to the generator show up here.
        let v = velocity_field(8, 1);
        let rms = (v.iter().map(|x| x * x).sum::<f64>() / v.len() as f64).sqrt();
        assert!((rms - 1.0).abs() < 1e-12);
        // (tolerance covers last-bit differences of libm between platforms)
        assert!(
            (v[[1, 2, 3, 4]] - 1.161385443863599).abs() < 1e-9,
            "{}",
            v[[1, 2, 3, 4]]
        );
    }

    #[test]
    fn bad_settings_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let e = generate(dir.path(), 4, &[0], 1).unwrap_err().to_string();
        assert!(e.contains("synthetic n"), "{e}");
        let s = Synthetic {
            filter_width: 16,
            ..Synthetic::new(16, 1)
        };
        let e = s.write(dir.path(), &[0]).unwrap_err().to_string();
        assert!(e.contains("filter_width"), "{e}");
    }
}
