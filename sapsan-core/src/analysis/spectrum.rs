//! Spectra of periodic 3D fields, binned in spherical wavenumber shells: the kinetic energy
//! spectrum E(k) of a velocity (3 components), the power spectrum of any other field (Sapsan's
//! `PowerSpectrum`, with the whole complex amplitude instead of its real part and normalised so
//! the shells add up to the field's mean square).
//!
//! Wavenumbers are in units of 2 pi / L, with L the longest side of the box (grid spacing 1 on
//! every axis), so on an `n^3` cube they are the integer frequency vectors. Shell `k` holds the
//! wavevectors with `round(|k|) = k`, for `k = 0..=n_max / 2`: the shells up to the Nyquist
//! wavenumber, which lie whole inside the grid; the corners beyond it are left out.
use ndarray::{ArrayView4, ArrayView5, Axis};

use crate::data::fft::{C64, fft3d, freq};
use crate::error::{Error, Result};

/// What a [`Spectrum`] measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpectrumKind {
    /// Kinetic energy of a 3-component velocity: shell sum of `|u_hat|^2 / 2` over the three
    /// components; the shells add up to `mean(|u|^2) / 2`.
    KineticEnergy,
    /// Power of a field of any other number of channels: shell sum of `|f_hat|^2` over the
    /// channels; the shells add up to `mean(f^2)` (summed over channels).
    Power,
}

impl SpectrumKind {
    /// The kind for a field of `channels` components: 3 is a velocity, anything else a field.
    pub fn for_channels(channels: usize) -> Self {
        if channels == 3 {
            SpectrumKind::KineticEnergy
        } else {
            SpectrumKind::Power
        }
    }

    /// The y-axis label: `E(k)` or `P(k)`.
    pub fn label(self) -> &'static str {
        match self {
            SpectrumKind::KineticEnergy => "E(k)",
            SpectrumKind::Power => "P(k)",
        }
    }
}

/// A shell-binned spectrum: `shells[k]` is the energy (or power) in the shell of wavenumber `k`.
#[derive(Debug, Clone, PartialEq)]
pub struct Spectrum {
    /// Kinetic energy or power.
    pub kind: SpectrumKind,
    /// Energy per shell, for `k = 0..=n_max / 2`.
    pub shells: Vec<f64>,
}

impl Spectrum {
    /// The `(k, E(k))` points with `k >= 1` (what a log-log plot can show).
    pub fn points(&self) -> impl Iterator<Item = (f64, f64)> + '_ {
        self.shells
            .iter()
            .enumerate()
            .skip(1)
            .map(|(k, &e)| (k as f64, e))
    }

    /// Sum over all shells.
    pub fn total(&self) -> f64 {
        self.shells.iter().sum()
    }

    /// The level `A` of the reference line `A k^(-5/3)` that best fits this spectrum on a log
    /// scale (mean of `ln E(k) + 5/3 ln k` over the shells `k >= 1` with energy), so the line
    /// runs through the data; `None` when no such shell has energy.
    pub fn kolmogorov_level(&self) -> Option<f64> {
        let logs: Vec<f64> = self
            .points()
            .filter(|&(_, e)| e > 0.0 && e.is_finite())
            .map(|(k, e)| e.ln() + 5.0 / 3.0 * k.ln())
            .collect();
        (!logs.is_empty()).then(|| (logs.iter().sum::<f64>() / logs.len() as f64).exp())
    }
}

/// The spectrum of one periodic field `(C, D, H, W)`: kinetic energy when C = 3, power otherwise
/// (see [`SpectrumKind`]). Fails on an empty field or a non-finite value.
pub fn field_spectrum<T: Copy + Into<f64>>(field: ArrayView4<'_, T>) -> Result<Spectrum> {
    let (channels, d, h, w) = field.dim();
    if channels == 0 || d * h * w == 0 {
        return Err(Error::Analysis(format!(
            "a spectrum needs a non-empty field (C, D, H, W), got shape {:?}",
            field.shape()
        )));
    }
    let kind = SpectrumKind::for_channels(channels);
    let dims = [d, h, w];
    let longest = d.max(h).max(w);
    let shell_of = shell_index(dims);
    let mut shells = vec![0.0; longest / 2 + 1];
    let total = (d * h * w) as f64;
    let factor = match kind {
        SpectrumKind::KineticEnergy => 0.5,
        SpectrumKind::Power => 1.0,
    } / (total * total);
    let mut hat = vec![C64::default(); d * h * w];
    for (c, comp) in field.outer_iter().enumerate() {
        for (slot, &v) in hat.iter_mut().zip(comp.iter()) {
            let v: f64 = v.into();
            if !v.is_finite() {
                return Err(Error::Analysis(format!(
                    "a spectrum needs finite values; channel {c} holds {v}"
                )));
            }
            *slot = C64::new(v, 0.0);
        }
        fft3d(&mut hat, dims, false);
        for (idx, coef) in hat.iter().enumerate() {
            if let Some(slot) = shells.get_mut(shell_of(idx)) {
                *slot += factor * coef.norm_sqr();
            }
        }
    }
    Ok(Spectrum { kind, shells })
}

/// The mean spectrum of the checkpoints of restored cubes `(checkpoints, C, D, H, W)` (what
/// [`crate::experiment::Evaluate`] compares).
pub fn mean_spectrum(cubes: ArrayView5<'_, f32>) -> Result<Spectrum> {
    let n = cubes.len_of(Axis(0));
    let mut mean: Option<Spectrum> = None;
    for cube in cubes.outer_iter() {
        let s = field_spectrum(cube)?;
        match &mut mean {
            None => mean = Some(s),
            Some(m) => m
                .shells
                .iter_mut()
                .zip(&s.shells)
                .for_each(|(a, b)| *a += b),
        }
    }
    let mut mean = mean.ok_or_else(|| {
        Error::Analysis(format!(
            "a spectrum needs at least one cube, got shape {:?}",
            cubes.shape()
        ))
    })?;
    mean.shells.iter_mut().for_each(|v| *v /= n as f64);
    Ok(mean)
}

/// Maps a row-major index of a `dims` grid to its shell `round(|k|)` (wavenumbers in units of
/// 2 pi / longest side).
fn shell_index(dims: [usize; 3]) -> impl Fn(usize) -> usize {
    let [d, h, w] = dims;
    let longest = d.max(h).max(w) as f64;
    let scaled = move |i: usize, n: usize| freq(i, n) as f64 * longest / n as f64;
    move |idx| {
        let k = [
            scaled(idx / (h * w), d),
            scaled((idx / w) % h, h),
            scaled(idx % w, w),
        ];
        let norm = (k[0] * k[0] + k[1] * k[1] + k[2] * k[2]).sqrt();
        norm.round() as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::fft::fft3;
    use ndarray::{Array4, Array5};
    use std::f64::consts::PI;

    fn assert_close(got: &[f64], want: &[f64], tol: f64) {
        assert_eq!(got.len(), want.len(), "{got:?} vs {want:?}");
        for (k, (g, w)) in got.iter().zip(want).enumerate() {
            assert!((g - w).abs() <= tol, "shell {k}: {g} vs {w} (all: {got:?})");
        }
    }

    fn only(len: usize, k: usize, v: f64) -> Vec<f64> {
        let mut e = vec![0.0; len];
        e[k] = v;
        e
    }

    #[test]
    fn a_single_oblique_mode_lands_in_its_shell() {
        // cos(2 pi (3 i + 4 j) / n): |k| = 5, mean square 1/2.
        let n = 16;
        let f = Array4::from_shape_fn((1, n, n, n), |(_, i, j, _)| {
            (2.0 * PI * (3 * i + 4 * j) as f64 / n as f64).cos()
        });
        let s = field_spectrum(f.view()).unwrap();
        assert_eq!(s.kind, SpectrumKind::Power);
        assert_close(&s.shells, &only(n / 2 + 1, 5, 0.5), 1e-12);
    }

    #[test]
    fn a_single_velocity_mode_has_half_its_mean_square_as_energy() {
        // u = (0, 0, cos(3 x0)) in f32: E(3) = mean(|u|^2) / 2 = 1/4.
        let n = 16;
        let u = Array4::from_shape_fn((3, n, n, n), |(c, i, _, _)| {
            if c == 2 {
                (3.0 * 2.0 * PI * i as f64 / n as f64).cos() as f32
            } else {
                0.0
            }
        });
        let s = field_spectrum(u.view()).unwrap();
        assert_eq!(s.kind, SpectrumKind::KineticEnergy);
        assert_eq!(s.kind.label(), "E(k)");
        assert_close(&s.shells, &only(n / 2 + 1, 3, 0.25), 1e-7);
    }

    #[test]
    fn a_box_measures_wavenumbers_against_its_longest_side() {
        // On an 8 x 16 x 16 box, one period along the short axis is two along the long ones.
        let f = Array4::from_shape_fn((1, 8, 16, 16), |(_, i, _, l)| {
            (2.0 * PI * i as f64 / 8.0).sin() + (2.0 * PI * 3.0 * l as f64 / 16.0).cos()
        });
        let s = field_spectrum(f.view()).unwrap();
        let mut want = only(9, 2, 0.5);
        want[3] = 0.5;
        assert_close(&s.shells, &want, 1e-12);
    }

    /// A real scalar field on an `n^3` grid whose shells `1..n/2` hold exactly `e(k)`: every
    /// wavevector of a shell gets the same amplitude and a pseudo-random phase, with
    /// `f_hat(-k) = conj(f_hat(k))` so the field is real.
    fn field_with_spectrum(n: usize, e: impl Fn(usize) -> f64) -> Array4<f64> {
        let shell = shell_index([n; 3]);
        let canonical = |idx: usize| {
            let k = [idx / (n * n), (idx / n) % n, idx % n].map(|i| freq(i, n));
            k[0] > 0 || (k[0] == 0 && (k[1] > 0 || (k[1] == 0 && k[2] > 0)))
        };
        let keep = |idx: usize| canonical(idx) && (1..n / 2).contains(&shell(idx));
        let mut count = vec![0usize; n / 2];
        for idx in (0..n * n * n).filter(|&i| keep(i)) {
            count[shell(idx)] += 1;
        }
        let mut hat = vec![C64::default(); n * n * n];
        let mut seed = 7u64;
        for idx in (0..n * n * n).filter(|&i| keep(i)) {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let phase = 2.0 * PI * (seed >> 11) as f64 / (1u64 << 53) as f64;
            let s = shell(idx);
            // k and -k share the shell's energy: 2 |a|^2 per pair.
            let a = (e(s) / (2.0 * count[s] as f64)).sqrt();
            let (i, j, l) = (idx / (n * n), (idx / n) % n, idx % n);
            let neg = (((n - i) % n) * n + (n - j) % n) * n + (n - l) % n;
            hat[idx] = C64::new(a * phase.cos(), a * phase.sin());
            hat[neg] = hat[idx].conj();
        }
        // The unnormalised inverse gives f = sum_k f_hat(k) e^(i k x): mean(f^2) = sum |f_hat|^2.
        fft3(&mut hat, n, true);
        let imag = hat.iter().map(|c| c.im.abs()).fold(0.0, f64::max);
        assert!(imag < 1e-12, "the field is real: {imag}");
        Array4::from_shape_vec((1, n, n, n), hat.iter().map(|c| c.re).collect()).unwrap()
    }

    #[test]
    fn a_field_built_with_a_kolmogorov_spectrum_gives_it_back() {
        let n = 32;
        let f = field_with_spectrum(n, |k| (k as f64).powf(-5.0 / 3.0));
        let s = field_spectrum(f.view()).unwrap();
        let mut want: Vec<f64> = (0..=n / 2).map(|k| (k as f64).powf(-5.0 / 3.0)).collect();
        want[0] = 0.0;
        want[n / 2] = 0.0;
        assert_close(&s.shells, &want, 1e-12);
        // Parseval: the shells add up to the mean square.
        let mean_sq = f.iter().map(|v| v * v).sum::<f64>() / f.len() as f64;
        assert!(
            (s.total() - mean_sq).abs() < 1e-12,
            "{} {mean_sq}",
            s.total()
        );
        // The reference line through it is k^(-5/3) itself, up to the empty Nyquist shell.
        let only_inner = Spectrum {
            shells: s.shells[..n / 2].to_vec(),
            ..s.clone()
        };
        let level = only_inner.kolmogorov_level().unwrap();
        assert!((level - 1.0).abs() < 1e-12, "level {level}");
    }

    #[test]
    fn velocity_spectrum_adds_the_components() {
        // Three components with spectra e, 2e and 3e: kinetic energy (e + 2e + 3e) / 2 = 3e.
        let n = 16;
        let e = |k: usize| 1.0 / (1.0 + k as f64);
        let mut u = Array4::<f64>::zeros((3, n, n, n));
        for c in 0..3 {
            let f = field_with_spectrum(n, |k| (c + 1) as f64 * e(k));
            u.index_axis_mut(Axis(0), c)
                .assign(&f.index_axis(Axis(0), 0));
        }
        let s = field_spectrum(u.view()).unwrap();
        for k in 1..n / 2 {
            assert!((s.shells[k] - 3.0 * e(k)).abs() < 1e-12, "shell {k}");
        }
    }

    #[test]
    fn mean_spectrum_averages_checkpoints() {
        let n = 8;
        let cubes = Array5::from_shape_fn((2, 1, n, n, n), |(t, _, i, _, _)| {
            // Checkpoint 0: amplitude 1 at k = 1; checkpoint 1: amplitude 2 at k = 2.
            let (a, k) = if t == 0 { (1.0, 1.0) } else { (2.0, 2.0) };
            (a * (2.0 * PI * k * i as f64 / n as f64).cos()) as f32
        });
        let s = mean_spectrum(cubes.view()).unwrap();
        assert_close(&s.shells, &[0.0, 0.25, 1.0, 0.0, 0.0], 1e-6);
    }

    #[test]
    fn empty_or_non_finite_fields_are_errors() {
        let empty = Array4::<f32>::zeros((1, 0, 4, 4));
        assert!(field_spectrum(empty.view()).is_err());
        let mut f = Array4::<f32>::zeros((1, 4, 4, 4));
        f[[0, 1, 2, 3]] = f32::NAN;
        let err = field_spectrum(f.view()).unwrap_err();
        assert!(err.to_string().contains("finite"), "{err}");
        assert!(mean_spectrum(Array5::<f32>::zeros((0, 1, 4, 4, 4)).view()).is_err());
        let flat = Spectrum {
            kind: SpectrumKind::Power,
            shells: vec![1.0, 0.0, 0.0],
        };
        assert_eq!(flat.kolmogorov_level(), None);
    }
}
