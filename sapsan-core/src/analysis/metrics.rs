//! Numbers compared between a target cube and a prediction: mean squared error, the two-sample
//! Kolmogorov-Smirnov test (statistic, p-value, where the largest gap is), histograms normalised
//! as densities and empirical CDFs.
//!
//! The KS statistic and its position are computed exactly as `scipy.stats.ks_2samp` does them;
//! the p-value is what `ks_2samp(..., method='asymp')` returns (scipy 1.17): the survival
//! function of the Kolmogorov distribution of the two-sided one-sample statistic for
//! `n = round(m * n / (m + n))` samples (scipy's `kstwo.sf`), computed with the same algorithms
//! (Simard & L'Ecuyer 2011). For `n` above a few thousand this agrees with the limiting
//! Kolmogorov distribution `K(sqrt(n) * D)` to three or more digits.
use crate::error::{Error, Result};

/// Mean of the squared differences of `a` and `b`, accumulated in `f64`.
///
/// The two slices must have the same, non-zero length. A NaN in either slice makes the result NaN.
pub fn mse(a: &[f32], b: &[f32]) -> Result<f64> {
    if a.len() != b.len() {
        return Err(Error::Analysis(format!(
            "MSE needs arrays of equal length, got {} target values and {} predicted values \
             (compare the restored cubes of the same shape)",
            a.len(),
            b.len()
        )));
    }
    if a.is_empty() {
        return Err(Error::Analysis(
            "MSE of empty arrays is undefined (no values to compare)".into(),
        ));
    }
    let sum: f64 = a
        .iter()
        .zip(b)
        .map(|(&x, &y)| {
            let d = f64::from(x) - f64::from(y);
            d * d
        })
        .sum();
    Ok(sum / a.len() as f64)
}

/// A sample sorted ascending, with no NaN: the input of the KS test and of the empirical CDF.
///
/// Sorting is the expensive part of the analysis; build it once and reuse it for
/// [`ks_2samp_sorted`], the CDF curves and the plots.
#[derive(Debug, Clone, PartialEq)]
pub struct SortedSample {
    values: Vec<f32>,
}

impl SortedSample {
    /// Copies and sorts `data`. Fails on an empty slice or on NaN values (which have no place in
    /// an ordering); infinities are kept.
    pub fn new(data: &[f32]) -> Result<Self> {
        if data.is_empty() {
            return Err(Error::Analysis(
                "cannot sort an empty sample (the target or prediction has no values)".into(),
            ));
        }
        let nans = data.iter().filter(|v| v.is_nan()).count();
        if nans > 0 {
            return Err(Error::Analysis(format!(
                "{nans} of {} values are NaN; the KS test and the CDF need ordered values \
                 (check the model output for NaN)",
                data.len()
            )));
        }
        let mut values = data.to_vec();
        values.sort_unstable_by(f32::total_cmp);
        Ok(Self { values })
    }

    /// Sorts two samples, on two threads when they are large.
    pub fn new_pair(a: &[f32], b: &[f32]) -> Result<(Self, Self)> {
        const PARALLEL_FROM: usize = 1 << 16;
        if a.len() + b.len() < PARALLEL_FROM {
            return Ok((Self::new(a)?, Self::new(b)?));
        }
        std::thread::scope(|s| {
            let hb = s.spawn(|| Self::new(b));
            let sa = Self::new(a);
            let sb = hb
                .join()
                .map_err(|_| Error::Analysis("sorting thread panicked".into()))?;
            Ok((sa?, sb?))
        })
    }

    /// The sorted values.
    pub fn values(&self) -> &[f32] {
        &self.values
    }

    /// Number of values.
    pub fn len(&self) -> usize {
        self.values.len()
    }

    /// Always false: a `SortedSample` holds at least one value.
    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    /// Smallest value.
    pub fn min(&self) -> f32 {
        self.values[0]
    }

    /// Largest value.
    pub fn max(&self) -> f32 {
        self.values[self.values.len() - 1]
    }

    /// Empirical CDF at `x`: the fraction of values `<= x` (numpy's `searchsorted(side='right')`).
    pub fn cdf(&self, x: f64) -> f64 {
        let below = self.values.partition_point(|&v| f64::from(v) <= x);
        below as f64 / self.values.len() as f64
    }

    /// The empirical CDF at `points` evenly spaced positions from `lo` to `hi` (inclusive), as
    /// `(x, F(x))` pairs: a curve for plotting that costs one pass over the values.
    pub fn cdf_curve(&self, lo: f64, hi: f64, points: usize) -> Vec<(f64, f64)> {
        let points = points.max(2);
        let n = self.values.len() as f64;
        let step = (hi - lo) / (points - 1) as f64;
        let mut below = 0usize;
        (0..points)
            .map(|k| {
                let x = if k + 1 == points {
                    hi
                } else {
                    lo + step * k as f64
                };
                while below < self.values.len() && f64::from(self.values[below]) <= x {
                    below += 1;
                }
                (x, below as f64 / n)
            })
            .collect()
    }
}

/// Result of the two-sided two-sample Kolmogorov-Smirnov test.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct KsResult {
    /// The statistic D: the largest absolute gap between the two empirical CDFs (0 ..= 1).
    pub statistic: f64,
    /// Two-sided p-value, as scipy's `ks_2samp(..., method='asymp')`.
    pub pvalue: f64,
    /// The value at which the largest gap occurs (scipy's `statistic_location`).
    pub position: f64,
    /// `+1` when the first sample's CDF is above the second's at `position`, `-1` when below
    /// (scipy's `statistic_sign`).
    pub sign: i8,
}

/// Two-sided two-sample Kolmogorov-Smirnov test of `a` against `b` (for Sapsan: target against
/// prediction). Fails on empty inputs or NaN values.
pub fn ks_2samp(a: &[f32], b: &[f32]) -> Result<KsResult> {
    let (sa, sb) = SortedSample::new_pair(a, b)?;
    Ok(ks_2samp_sorted(&sa, &sb))
}

/// [`ks_2samp`] on samples that are already sorted.
pub fn ks_2samp_sorted(a: &SortedSample, b: &SortedSample) -> KsResult {
    let (xa, xb) = (a.values(), b.values());
    let (n1, n2) = (xa.len(), xb.len());
    let (f1, f2) = (n1 as f64, n2 as f64);
    // Extremes of cdf1 - cdf2 over the distinct values, each evaluated after all tied values
    // (scipy: searchsorted(side='right')). scipy takes the first arg-extreme in
    // concat(sorted a, sorted b), i.e. the smallest value present in `a` if one attains the
    // extreme, else the smallest value of `b` that does.
    let mut max = Extreme::new();
    let mut min = Extreme::new();
    let (mut i, mut j) = (0usize, 0usize);
    while i < n1 || j < n2 {
        let v = match (xa.get(i), xb.get(j)) {
            (Some(&p), Some(&q)) => {
                if p <= q {
                    p
                } else {
                    q
                }
            }
            (Some(&p), None) => p,
            (None, Some(&q)) => q,
            (None, None) => unreachable!("loop condition"),
        };
        let in_a = i < n1 && xa[i] == v;
        while i < n1 && xa[i] == v {
            i += 1;
        }
        while j < n2 && xb[j] == v {
            j += 1;
        }
        let diff = i as f64 / f1 - j as f64 / f2;
        max.offer(diff, v, in_a);
        min.offer(-diff, v, in_a);
    }
    let max_s = max.value;
    let min_s = min.value.clamp(0.0, 1.0);
    let (statistic, position, sign) = if min_s > max_s {
        (min_s, min.position, -1)
    } else {
        (max_s, max.position, 1)
    };
    let (m, n) = if f1 >= f2 { (f1, f2) } else { (f2, f1) };
    let en = m * n / (m + n);
    let pvalue = kolmogorov_sf(en.round_ties_even() as u64, statistic);
    KsResult {
        statistic,
        pvalue,
        position: f64::from(position),
        sign,
    }
}

/// Running arg-max with scipy's tie rule (see [`ks_2samp_sorted`]).
struct Extreme {
    value: f64,
    position: f32,
    in_a: bool,
}

impl Extreme {
    fn new() -> Self {
        Self {
            value: f64::NEG_INFINITY,
            position: f32::NAN,
            in_a: false,
        }
    }

    fn offer(&mut self, value: f64, at: f32, in_a: bool) {
        if value > self.value || (value == self.value && in_a && !self.in_a) {
            self.value = value;
            self.position = at;
            self.in_a = in_a;
        }
    }
}

/// Survival function `P(D_n > x)` of the two-sided one-sample Kolmogorov-Smirnov statistic for
/// `n` samples: scipy's `kstwo.sf(x, n)`, with the same choice of method by region (Ruben-Gambino
/// closed forms, twice the exact one-sided Smirnov tail, the Durbin matrix of Marsaglia-Tsang-Wang,
/// Pelz-Good). Where scipy uses Pomeranz's recursion (n <= 140) this uses the Durbin matrix,
/// which is also exact. Returns NaN for `n == 0` or NaN `x`.
pub fn kolmogorov_sf(n: u64, x: f64) -> f64 {
    if n == 0 || x.is_nan() {
        return f64::NAN;
    }
    if x >= 1.0 {
        return 0.0;
    }
    if x <= 0.0 {
        return 1.0;
    }
    let nf = n as f64;
    let t = nf * x;
    if t <= 1.0 {
        // Ruben-Gambino: 1/2n <= x <= 1/n.
        if t <= 0.5 {
            return 1.0;
        }
        let cdf = if n <= 140 {
            let mut p = 1.0;
            for i in 1..=n {
                p *= i as f64 * (1.0 / nf) * (2.0 * t - 1.0);
            }
            p
        } else {
            (log_nfactorial_div_n_pow_n(nf) + nf * (2.0 * t - 1.0).ln()).exp()
        };
        return clip(1.0 - cdf);
    }
    if t >= nf - 1.0 {
        return clip(2.0 * (1.0 - x).powf(nf));
    }
    if x >= 0.5 {
        return clip(2.0 * smirnov_sf(n, x));
    }
    let nxsquared = t * x;
    if n <= 140 {
        if nxsquared <= 4.0 {
            return clip(1.0 - durbin_cdf(n, x));
        }
        return clip(2.0 * smirnov_sf(n, x));
    }
    if nxsquared >= 370.0 {
        return 0.0;
    }
    if nxsquared >= 2.2 {
        return clip(2.0 * smirnov_sf(n, x));
    }
    let cdf = if n <= 100_000 && nf * x.powf(1.5) <= 1.4 {
        durbin_cdf(n, x)
    } else {
        pelz_good_cdf(n, x)
    };
    clip(1.0 - cdf)
}

fn clip(p: f64) -> f64 {
    p.clamp(0.0, 1.0)
}

/// `ln(n! / n^n)` by Stirling's series (scipy's `_log_nfactorial_div_n_pow_n`).
fn log_nfactorial_div_n_pow_n(n: f64) -> f64 {
    // B_2k / (2k (2k - 1)) for k = 8 down to 1.
    const COEFFS: [f64; 8] = [
        -3617.0 / 122400.0,
        1.0 / 156.0,
        -691.0 / 360360.0,
        1.0 / 1188.0,
        -1.0 / 1680.0,
        1.0 / 1260.0,
        -1.0 / 360.0,
        1.0 / 12.0,
    ];
    let rn = 1.0 / n;
    let z = rn / n;
    let poly = COEFFS.iter().fold(0.0, |acc, &c| acc * z + c);
    n.ln() / 2.0 - n + (2.0 * std::f64::consts::PI).ln() / 2.0 + rn * poly
}

/// Exact one-sided Smirnov tail `P(D+_n >= x)` (Birnbaum & Tingey 1951), summed in log space:
/// `x * sum_{j=0}^{floor(n(1-x))} C(n,j) (1-x-j/n)^(n-j) (x+j/n)^(j-1)`. All terms are positive,
/// so the sum keeps full relative precision; it costs `O(n)`.
pub(crate) fn smirnov_sf(n: u64, x: f64) -> f64 {
    if x <= 0.0 {
        return 1.0;
    }
    if x >= 1.0 {
        return 0.0;
    }
    let nf = n as f64;
    let nx = nf * x;
    let last = (nf * (1.0 - x)).floor() as u64;
    // ln C(n, j) by the running product C(n, j) = C(n, j-1) (n-j+1)/j, summed with Neumaier's
    // compensation: over 10^5 steps plain summation loses about 1e-9 (relative) of the result.
    let mut log_binom = 0.0f64;
    let mut log_binom_c = 0.0f64;
    let mut run_max = f64::NEG_INFINITY;
    let mut run_sum = 0.0f64;
    for j in 0..=last.min(n) {
        let jf = j as f64;
        let base = (nf - jf - nx) / nf;
        if j > 0 {
            let inc = ((nf - jf + 1.0) / jf).ln();
            let t = log_binom + inc;
            log_binom_c += if log_binom.abs() >= inc.abs() {
                (log_binom - t) + inc
            } else {
                (inc - t) + log_binom
            };
            log_binom = t;
        }
        if base > 0.0 || j == n {
            let mut lt = (log_binom + log_binom_c) + (jf - 1.0) * ((nx + jf) / nf).ln();
            if j < n {
                lt += (nf - jf) * base.ln();
            }
            if lt > run_max {
                run_sum = run_sum * (run_max - lt).exp() + 1.0;
                run_max = lt;
            } else {
                run_sum += (lt - run_max).exp();
            }
        }
    }
    if run_sum == 0.0 {
        return 0.0;
    }
    clip(x * run_sum * run_max.exp())
}

const E128: i32 = 128;
const EP128: f64 = 3.402_823_669_209_385e38; // 2^128
const EM128: f64 = 2.938_735_877_055_719e-39; // 2^-128

/// `P(D_n <= d)` by the Durbin matrix (Marsaglia, Tsang & Wang 2003), with the exponent
/// bookkeeping of scipy's `_kolmogn_DMTW`. The matrix has side `2 * ceil(n d) - 1`.
fn durbin_cdf(n: u64, d: f64) -> f64 {
    if d >= 1.0 {
        return 1.0;
    }
    let nf = n as f64;
    let nd = nf * d;
    if nd <= 0.5 {
        return 0.0;
    }
    let k = nd.ceil() as usize;
    let h = k as f64 - nd;
    let m = 2 * k - 1;
    let mut v: Vec<f64> = (1..=m).map(|i| 1.0 - h.powi(i as i32)).collect();
    let mut w = vec![0.0; m];
    let mut fac = 1.0;
    for j in 1..=m {
        w[j - 1] = fac;
        fac /= j as f64;
        v[j - 1] *= fac;
    }
    let tt = (2.0 * h - 1.0).max(0.0).powi(m as i32) - 2.0 * h.powi(m as i32);
    v[m - 1] = (1.0 + tt) * fac;
    // H[i][j], row-major.
    let mut hm = vec![0.0; m * m];
    for col in 1..m {
        for row in (col - 1)..m {
            hm[row * m + col] = w[row - (col - 1)];
        }
    }
    for row in 0..m {
        hm[row * m] = v[row];
    }
    for col in 0..m {
        hm[(m - 1) * m + col] = v[m - 1 - col];
    }
    let mut pw = vec![0.0; m * m];
    for i in 0..m {
        pw[i * m + i] = 1.0;
    }
    let mut nn = n;
    let mut expnt: i32 = 0;
    let mut hexpnt: i32 = 0;
    let mut scratch = vec![0.0; m * m];
    while nn > 0 {
        if nn % 2 == 1 {
            matmul(&pw, &hm, &mut scratch, m);
            std::mem::swap(&mut pw, &mut scratch);
            expnt += hexpnt;
        }
        matmul(&hm, &hm, &mut scratch, m);
        std::mem::swap(&mut hm, &mut scratch);
        hexpnt *= 2;
        if hm[(k - 1) * m + (k - 1)].abs() > EP128 {
            for x in &mut hm {
                *x /= EP128;
            }
            hexpnt += E128;
        }
        nn /= 2;
    }
    let mut p = pw[(k - 1) * m + (k - 1)];
    for i in 1..=n {
        p = i as f64 * p / nf;
        if p.abs() < EM128 {
            p *= EP128;
            expnt -= E128;
        }
    }
    if expnt != 0 {
        p *= 2f64.powi(expnt);
    }
    clip(p)
}

/// `out = a * b` for `m x m` row-major matrices.
fn matmul(a: &[f64], b: &[f64], out: &mut [f64], m: usize) {
    out.fill(0.0);
    for i in 0..m {
        let row = &mut out[i * m..(i + 1) * m];
        for k in 0..m {
            let aik = a[i * m + k];
            if aik == 0.0 {
                continue;
            }
            let brow = &b[k * m..(k + 1) * m];
            for (o, &bkj) in row.iter_mut().zip(brow) {
                *o += aik * bkj;
            }
        }
    }
}

/// Pelz-Good asymptotic series for `P(D_n <= x)` (scipy's `_kolmogn_PelzGood`).
fn pelz_good_cdf(n: u64, x: f64) -> f64 {
    use std::f64::consts::PI;
    if x <= 0.0 {
        return 0.0;
    }
    if x >= 1.0 {
        return 1.0;
    }
    let nf = n as f64;
    let sqrt2pi = (2.0 * PI).sqrt();
    let (pi2, pi4, pi6) = (PI * PI, PI.powi(4), PI.powi(6));
    let z = nf.sqrt() * x;
    let (z2, z3, z4, z6) = (z * z, z.powi(3), z.powi(4), z.powi(6));
    let qlog = -pi2 / 8.0 / z2;
    if qlog < -708.0 {
        return 0.0;
    }
    let q = qlog.exp();
    let k1a = -z2;
    let k1b = pi2 / 4.0;
    let k2a = 6.0 * z6 + 2.0 * z4;
    let k2b = (2.0 * z4 - 5.0 * z2) * pi2 / 4.0;
    let k2c = pi4 * (1.0 - 2.0 * z2) / 16.0;
    let k3d = pi6 * (5.0 - 30.0 * z2) / 64.0;
    let k3c = pi4 * (-60.0 * z2 + 212.0 * z4) / 16.0;
    let k3b = pi2 * (135.0 * z4 - 96.0 * z6) / 4.0;
    let k3a = -30.0 * z6 - 90.0 * z.powi(8);
    let mut kk = [0.0f64; 4];
    let maxk = (16.0 * z / PI).ceil() as i64;
    for k in (1..=maxk).rev() {
        let m = (2 * k - 1) as f64;
        let (m2, m4, m6) = (m * m, m.powi(4), m.powi(6));
        let qpower = q.powf(8.0 * k as f64);
        let coeffs = [
            1.0,
            k1a + k1b * m2,
            k2a + k2b * m2 + k2c * m4,
            k3a + k3b * m2 + k3c * m4 + k3d * m6,
        ];
        for (acc, c) in kk.iter_mut().zip(coeffs) {
            *acc = *acc * qpower + c;
        }
    }
    let div = [z, 6.0 * z4, 72.0 * z.powi(7), 6480.0 * z.powi(10)];
    for (acc, d) in kk.iter_mut().zip(div) {
        *acc = *acc * q * sqrt2pi / d;
    }
    let q = (-pi2 / 2.0 / z2).exp();
    let sqrt3z = 3f64.sqrt() * z;
    let mut k2extra = 0.0;
    let mut k3extra = 0.0;
    for k in (1..=maxk).rev() {
        let kf = k as f64;
        let ks2 = kf * kf;
        let qp = q.powf(ks2);
        k2extra += ks2 * qp;
        let kspi = PI * kf;
        k3extra += (sqrt3z + kspi) * (sqrt3z - kspi) * ks2 * qp;
    }
    kk[2] += k2extra * pi2 * sqrt2pi / (-36.0 * z3);
    kk[3] += k3extra * pi2 * sqrt2pi / (216.0 * z6);
    let mut sum = 0.0;
    for (i, acc) in kk.iter().enumerate() {
        sum += acc / nf.powf(i as f64 / 2.0);
    }
    sum
}

/// A histogram with equal-width bins over `[lo, hi]` (the last bin includes `hi`), as numpy's
/// `histogram`. Values outside the range, infinities and NaN are not counted.
#[derive(Debug, Clone, PartialEq)]
pub struct Histogram {
    /// Left edge of the first bin.
    pub lo: f64,
    /// Right edge of the last bin.
    pub hi: f64,
    /// Number of values in each bin.
    pub counts: Vec<u64>,
}

impl Histogram {
    /// Counts `data` into `bins` equal bins over `[lo, hi]`. Fails when `bins` is zero or the
    /// range is empty or not finite.
    pub fn new(data: &[f32], lo: f64, hi: f64, bins: usize) -> Result<Self> {
        if bins == 0 || !(lo.is_finite() && hi.is_finite() && hi > lo) {
            return Err(Error::Analysis(format!(
                "histogram needs at least one bin and a finite range lo < hi, got {bins} bins over [{lo}, {hi}]"
            )));
        }
        let mut counts = vec![0u64; bins];
        let scale = bins as f64 / (hi - lo);
        for &v in data {
            let v = f64::from(v);
            if !(v >= lo && v <= hi) {
                continue;
            }
            let idx = (((v - lo) * scale) as usize).min(bins - 1);
            counts[idx] += 1;
        }
        Ok(Self { lo, hi, counts })
    }

    /// Number of bins.
    pub fn bins(&self) -> usize {
        self.counts.len()
    }

    /// Width of every bin.
    pub fn width(&self) -> f64 {
        (self.hi - self.lo) / self.counts.len() as f64
    }

    /// The `bins + 1` bin edges.
    pub fn edges(&self) -> Vec<f64> {
        let w = self.width();
        let n = self.counts.len();
        (0..=n)
            .map(|i| {
                if i == n {
                    self.hi
                } else {
                    self.lo + w * i as f64
                }
            })
            .collect()
    }

    /// Number of values counted (inside the range).
    pub fn total(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// Counts normalised so that the histogram integrates to 1 (numpy's `density=True`); all
    /// zeros when nothing was counted.
    pub fn density(&self) -> Vec<f64> {
        let total = self.total();
        if total == 0 {
            return vec![0.0; self.counts.len()];
        }
        let norm = 1.0 / (total as f64 * self.width());
        self.counts.iter().map(|&c| c as f64 * norm).collect()
    }
}

/// The joint range `[min, max]` of the finite values of `a` and `b`, widened by 0.5 on each side
/// when all values are equal (numpy's rule). Fails when there is no finite value.
pub fn joint_range(a: &[f32], b: &[f32]) -> Result<(f64, f64)> {
    let mut lo = f32::INFINITY;
    let mut hi = f32::NEG_INFINITY;
    for &v in a.iter().chain(b) {
        if v.is_finite() {
            lo = lo.min(v);
            hi = hi.max(v);
        }
    }
    if lo > hi {
        return Err(Error::Analysis(
            "no finite values in the target or the prediction: nothing to histogram".into(),
        ));
    }
    let (lo, hi) = (f64::from(lo), f64::from(hi));
    Ok(if lo == hi {
        (lo - 0.5, hi + 0.5)
    } else {
        (lo, hi)
    })
}

/// Histograms of `a` and `b` with the same `bins` bins over their [`joint_range`], so the two
/// densities can be compared bin by bin.
pub fn density_pair(a: &[f32], b: &[f32], bins: usize) -> Result<(Histogram, Histogram)> {
    let (lo, hi) = joint_range(a, b)?;
    Ok((
        Histogram::new(a, lo, hi, bins)?,
        Histogram::new(b, lo, hi, bins)?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The generator the scipy reference script used: 64-bit LCG, top 24 bits as a fraction,
    /// `f32(fraction * scale + shift)` rounded once from f64.
    fn lcg(seed: u64, n: usize, shift: f64, scale: f64) -> Vec<f32> {
        let mut s = seed;
        (0..n)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((s >> 40) as f64 / (1u64 << 24) as f64 * scale + shift) as f32
            })
            .collect()
    }

    fn check(a: &[f32], b: &[f32], d: f64, p: f64, pos: f64, sign: i8) {
        let r = ks_2samp(a, b).unwrap();
        assert!((r.statistic - d).abs() < 1e-12, "D {} vs {d}", r.statistic);
        assert!((r.pvalue - p).abs() < 1e-6, "p {} vs {p}", r.pvalue);
        assert_eq!(r.position, pos);
        assert_eq!(r.sign, sign);
    }

    // Reference values: scipy 1.17.1, `stats.ks_2samp(a, b, method='asymp')` on float32 arrays.
    #[test]
    fn ks_matches_scipy_small_with_ties() {
        let a = [1., 2., 2., 3., 4., 5., 5., 6.];
        let b = [2., 3., 3., 4., 7., 8., 9.];
        check(&a, &b, 0.4285714285714286, 0.35089546022490614, 6.0, 1);
    }

    #[test]
    fn ks_disjoint_ranges_give_one() {
        check(&[1., 2., 3.], &[4., 5., 6., 7.], 1.0, 0.0, 3.0, 1);
    }

    #[test]
    fn ks_identical_samples_give_zero() {
        let a = [0.5, 1.5, 1.5, 2.5];
        check(&a, &a, 0.0, 1.0, 0.5, 1);
    }

    #[test]
    fn ks_equal_extremes_pick_the_positive_side_like_scipy() {
        let a = [3., 4., 5., 6., 7., 8.];
        let b = [1., 2., 3., 4., 5., 9., 10.];
        check(&a, &b, 0.2857142857142857, 0.9190152251376742, 8.0, 1);
        check(&[5., 6., 7., 8.], &[1., 2., 9., 10.], 0.5, 0.5, 8.0, 1);
    }

    #[test]
    fn ks_negative_side() {
        let a = lcg(7, 500, 0.05, 1.0);
        let b = lcg(8, 400, 0.0, 1.0);
        check(&a, &b, 0.088, 0.0604175553727061, 0.1499972939491272, -1);
    }

    #[test]
    fn ks_medium_samples() {
        let a = lcg(1, 3000, 0.0, 1.0);
        let b = lcg(2, 2000, 0.03, 1.0);
        check(
            &a,
            &b,
            0.04100000000000001,
            0.0344115359399324,
            0.1349439024925232,
            1,
        );
    }

    #[test]
    fn ks_large_samples() {
        let a = lcg(3, 300_000, 0.0, 1.0);
        let b = lcg(4, 250_000, 0.0, 1.003);
        check(
            &a,
            &b,
            0.0033199999999999896,
            0.09873595722000639,
            0.9966835379600525,
            1,
        );
        let a = lcg(5, 300_000, 0.0, 1.0);
        let b = lcg(6, 250_000, 0.004, 1.0);
        check(
            &a,
            &b,
            0.007179333333333315,
            1.5629283080372816e-06,
            0.7565861940383911,
            1,
        );
    }

    #[test]
    fn ks_rejects_nan_and_empty() {
        let e = ks_2samp(&[1.0, f32::NAN], &[1.0]).unwrap_err().to_string();
        assert!(e.contains("1 of 2 values are NaN"), "{e}");
        assert!(ks_2samp(&[], &[1.0]).is_err());
    }

    /// scipy 1.17.1 `stats.kstwo.sf(x, n)`, one pair per branch of the method choice.
    #[test]
    fn kolmogorov_sf_matches_scipy_kstwo() {
        let cases: [(u64, f64, f64); 18] = [
            (10, 0.07, 0.9999999619492741),         // Ruben-Gambino, small n
            (500, 0.0015, 1.0),                     // Ruben-Gambino, large n
            (10, 0.95, 1.9531250000000172e-13),     // t >= n - 1
            (10, 0.6, 0.0005681672000000003),       // x >= 0.5: 2 * Smirnov
            (50, 0.1, 0.6623112704658186),          // Durbin
            (50, 0.2, 0.03143877776953241),         // scipy: Pomeranz; here Durbin
            (50, 0.35, 5.573523514803185e-06),      // 2 * Smirnov
            (1000, 0.05, 0.013012074781090332),     // 2 * Smirnov
            (1000, 0.03, 0.3226902143914636),       // Pelz-Good
            (1000, 0.012, 0.9984464668620097),      // Durbin
            (393216, 0.003, 0.0016837177561438898), // 2 * Smirnov, n of a 3x64^3 pair
            (393216, 0.002, 0.08594956920586472),   // Pelz-Good
            (393216, 0.04, 0.0),                    // far tail
            (100000, 0.0025, 0.5586954140357887),   // Pelz-Good
            (100000, 0.00055, 1.0),                 // Durbin, side 109
            (140, 0.05, 0.8576480297656114),        // Durbin
            (5000, 0.02, 0.03613941395325637),      // Pelz-Good
            (3, 0.4, 0.5946666666666665),           // Durbin, tiny n
        ];
        for (n, x, want) in cases {
            let got = kolmogorov_sf(n, x);
            assert!((got - want).abs() < 1e-6, "n={n} x={x}: {got} vs {want}");
        }
    }

    /// scipy 1.17.1 `special.smirnov(n, x)`, checked to relative 1e-9.
    #[test]
    fn smirnov_matches_scipy() {
        let cases = [
            (10, 0.6, 0.0002840836000000002),
            (393216, 0.003, 0.0008418588780719449),
            (1000, 0.05, 0.006506037390545166),
            (50, 0.35, 2.7867617574015925e-06),
        ];
        for (n, x, want) in cases {
            let got = smirnov_sf(n, x);
            assert!(
                ((got - want) / want).abs() < 1e-9,
                "n={n} x={x}: {got} vs {want}"
            );
        }
    }

    #[test]
    fn mse_known_value_and_length_mismatch() {
        assert_eq!(mse(&[1.0, 2.0, 3.0], &[1.0, 0.0, 6.0]).unwrap(), 13.0 / 3.0);
        let e = mse(&[1.0], &[1.0, 2.0]).unwrap_err().to_string();
        assert!(e.contains("1 target values and 2 predicted values"), "{e}");
        assert!(mse(&[], &[]).is_err());
    }

    #[test]
    fn density_integrates_to_one_and_matches_counts() {
        let a = lcg(11, 10_000, 0.0, 1.0);
        let b = lcg(12, 7_000, 0.5, 2.0);
        let (ha, hb) = density_pair(&a, &b, 100).unwrap();
        assert_eq!(ha.edges(), hb.edges());
        assert_eq!(ha.bins(), 100);
        assert_eq!(ha.total(), 10_000);
        assert_eq!(hb.total(), 7_000);
        for h in [&ha, &hb] {
            let integral: f64 = h.density().iter().map(|d| d * h.width()).sum();
            assert!((integral - 1.0).abs() < 1e-12, "{integral}");
        }
        // `a` lies in [0, 1) of the joint range [0, 2.5): the upper bins are empty.
        assert!(ha.counts[45..].iter().all(|&c| c == 0));
        // The maximum lands in the last bin, not past it.
        let h = Histogram::new(&[0.0, 1.0, 1.0], 0.0, 1.0, 4).unwrap();
        assert_eq!(h.counts, vec![1, 0, 0, 2]);
        assert_eq!(h.density(), vec![4.0 / 3.0, 0.0, 0.0, 8.0 / 3.0]);
    }

    #[test]
    fn constant_data_gets_a_unit_range() {
        assert_eq!(joint_range(&[2.0], &[2.0, f32::NAN]).unwrap(), (1.5, 2.5));
        assert!(joint_range(&[f32::INFINITY], &[]).is_err());
        assert!(Histogram::new(&[1.0], 1.0, 1.0, 10).is_err());
    }

    #[test]
    fn empirical_cdf_counts_ties_and_curve_is_exact_on_the_grid() {
        let s = SortedSample::new(&[3.0, 1.0, 2.0, 2.0]).unwrap();
        assert_eq!(s.values(), &[1.0, 2.0, 2.0, 3.0]);
        assert_eq!(s.cdf(0.5), 0.0);
        assert_eq!(s.cdf(2.0), 0.75);
        assert_eq!(s.cdf(3.0), 1.0);
        let curve = s.cdf_curve(0.0, 4.0, 9);
        assert_eq!(curve.len(), 9);
        for &(x, f) in &curve {
            assert_eq!(f, s.cdf(x), "x={x}");
        }
    }
}
