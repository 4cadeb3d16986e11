//! A small complex FFT for the synthetic turbulence generator: iterative radix-2 for powers of
//! two, a plain DFT otherwise (fine for the grid sizes used here, N <= 64). Unnormalised in both
//! directions, like FFTW: forward then inverse multiplies by N.

/// A complex number (`re`, `im`).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub(crate) struct C64 {
    pub re: f64,
    pub im: f64,
}

impl C64 {
    pub const fn new(re: f64, im: f64) -> Self {
        C64 { re, im }
    }
    #[cfg(test)]
    fn mul(self, o: C64) -> C64 {
        C64::new(
            self.re * o.re - self.im * o.im,
            self.re * o.im + self.im * o.re,
        )
    }
    #[cfg(test)]
    fn add(self, o: C64) -> C64 {
        C64::new(self.re + o.re, self.im + o.im)
    }
    pub fn conj(self) -> C64 {
        C64::new(self.re, -self.im)
    }
    pub fn norm_sqr(self) -> f64 {
        self.re * self.re + self.im * self.im
    }
}

/// A 1D transform plan of length `n`.
pub(crate) struct Fft1 {
    n: usize,
    /// `exp(-2 pi i k / n)` for k in 0..n (forward), and their conjugates (inverse).
    forward: Vec<C64>,
    inverse: Vec<C64>,
}

impl Fft1 {
    pub fn new(n: usize) -> Self {
        let forward: Vec<C64> = (0..n)
            .map(|k| {
                let a = -2.0 * std::f64::consts::PI * k as f64 / n as f64;
                C64::new(a.cos(), a.sin())
            })
            .collect();
        let inverse = forward.iter().map(|t| t.conj()).collect();
        Fft1 {
            n,
            forward,
            inverse,
        }
    }

    /// Transforms `data` (length n) in place; `scratch` must have length n.
    // The butterflies are spelled out on plain f64s: this crate is built without optimisation
    // in tests and small helper calls would dominate.
    pub fn run(&self, data: &mut [C64], scratch: &mut [C64], inverse: bool) {
        let n = self.n;
        debug_assert_eq!(data.len(), n);
        if n <= 1 {
            return;
        }
        let tw = if inverse {
            &self.inverse
        } else {
            &self.forward
        };
        if n.is_power_of_two() {
            // Bit-reversal permutation, then butterflies.
            let bits = n.trailing_zeros();
            for i in 0..n {
                let j = i.reverse_bits() >> (usize::BITS - bits);
                if j > i {
                    data.swap(i, j);
                }
            }
            let mut len = 2;
            while len <= n {
                let half = len / 2;
                let step = n / len;
                let mut start = 0;
                while start < n {
                    for k in 0..half {
                        let w = tw[k * step];
                        let a = data[start + k];
                        let b = data[start + k + half];
                        let br = b.re * w.re - b.im * w.im;
                        let bi = b.re * w.im + b.im * w.re;
                        data[start + k] = C64::new(a.re + br, a.im + bi);
                        data[start + k + half] = C64::new(a.re - br, a.im - bi);
                    }
                    start += len;
                }
                len *= 2;
            }
        } else {
            for (k, out) in scratch.iter_mut().enumerate().take(n) {
                let (mut re, mut im) = (0.0, 0.0);
                for (j, x) in data.iter().enumerate() {
                    let w = tw[(j * k) % n];
                    re += x.re * w.re - x.im * w.im;
                    im += x.re * w.im + x.im * w.re;
                }
                *out = C64::new(re, im);
            }
            data.copy_from_slice(&scratch[..n]);
        }
    }
}

/// Transforms an `n^3` array stored row-major (`(i * n + j) * n + k`) in place along all three
/// axes.
pub(crate) fn fft3(data: &mut [C64], n: usize, inverse: bool) {
    fft3d(data, [n, n, n], inverse);
}

/// Transforms a `d x h x w` array stored row-major (`(i * h + j) * w + k`) in place along all
/// three axes.
pub(crate) fn fft3d(data: &mut [C64], [d, h, w]: [usize; 3], inverse: bool) {
    debug_assert_eq!(data.len(), d * h * w);
    if data.is_empty() {
        return;
    }
    // Last axis: contiguous lines.
    let plan = Fft1::new(w);
    let mut scratch = vec![C64::default(); w];
    for chunk in data.chunks_exact_mut(w) {
        plan.run(chunk, &mut scratch, inverse);
    }
    // Middle and first axes: gather, transform, scatter. A line along an axis of `len` points
    // `stride` apart starts at an offset below `stride` in each block of `len * stride` values.
    for (len, stride) in [(h, w), (d, h * w)] {
        let plan = Fft1::new(len);
        let mut line = vec![C64::default(); len];
        let mut scratch = vec![C64::default(); len];
        let block = len * stride;
        for start in (0..data.len()).step_by(block).flat_map(|b| b..b + stride) {
            for (t, v) in line.iter_mut().enumerate() {
                *v = data[start + t * stride];
            }
            plan.run(&mut line, &mut scratch, inverse);
            for (t, v) in line.iter().enumerate() {
                data[start + t * stride] = *v;
            }
        }
    }
}

/// Signed frequency of index `i` on an `n`-point grid: 0, 1, ..., n/2 - 1, -n/2, ..., -1.
pub(crate) fn freq(i: usize, n: usize) -> i64 {
    if i < n.div_ceil(2) {
        i as i64
    } else {
        i as i64 - n as i64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(x: &[C64], inverse: bool) -> Vec<C64> {
        let n = x.len();
        let s = if inverse { 1.0 } else { -1.0 };
        (0..n)
            .map(|k| {
                x.iter().enumerate().fold(C64::default(), |acc, (j, &v)| {
                    let a = s * 2.0 * std::f64::consts::PI * (j * k) as f64 / n as f64;
                    acc.add(v.mul(C64::new(a.cos(), a.sin())))
                })
            })
            .collect()
    }

    fn sample(n: usize) -> Vec<C64> {
        (0..n)
            .map(|i| {
                C64::new(
                    (i as f64 * 0.7).sin() + 0.1 * i as f64,
                    (i as f64 * 1.3).cos(),
                )
            })
            .collect()
    }

    #[test]
    fn fft1_matches_naive_dft() {
        for n in [1, 2, 4, 8, 16, 32, 6, 12] {
            let x = sample(n);
            for inverse in [false, true] {
                let mut y = x.clone();
                let mut s = vec![C64::default(); n];
                Fft1::new(n).run(&mut y, &mut s, inverse);
                for (a, b) in y.iter().zip(naive(&x, inverse)) {
                    assert!(
                        (a.re - b.re).abs() < 1e-9 && (a.im - b.im).abs() < 1e-9,
                        "n={n}"
                    );
                }
            }
        }
    }

    #[test]
    fn fft3_single_mode_and_round_trip() {
        // exp(i (2 k0 x0 + 1 k1 x1 - 3 k2 x2)) transforms to n^3 at index (2, 1, n - 3).
        for n in [8usize, 6] {
            let mut d = vec![C64::default(); n * n * n];
            let (a, b, c) = (2.0, 1.0, -3.0);
            for i in 0..n {
                for j in 0..n {
                    for k in 0..n {
                        let ph = 2.0
                            * std::f64::consts::PI
                            * (a * i as f64 + b * j as f64 + c * k as f64)
                            / n as f64;
                        d[(i * n + j) * n + k] = C64::new(ph.cos(), ph.sin());
                    }
                }
            }
            let orig = d.clone();
            fft3(&mut d, n, false);
            let peak = (2 * n + 1) * n + (n - 3);
            for (idx, v) in d.iter().enumerate() {
                let want = if idx == peak { (n * n * n) as f64 } else { 0.0 };
                assert!(
                    (v.re - want).abs() < 1e-8 && v.im.abs() < 1e-8,
                    "n={n} idx={idx} {v:?}"
                );
            }
            fft3(&mut d, n, true);
            let scale = (n * n * n) as f64;
            for (v, o) in d.iter().zip(&orig) {
                assert!((v.re / scale - o.re).abs() < 1e-10 && (v.im / scale - o.im).abs() < 1e-10);
            }
        }
    }

    #[test]
    fn fft3d_matches_axis_by_axis_naive_dft_on_a_box() {
        let dims = [3usize, 4, 6];
        let [d, h, w] = dims;
        let x = sample(d * h * w);
        let mut y = x.clone();
        fft3d(&mut y, dims, false);
        // The 3D DFT as a direct triple sum.
        for (idx, got) in y.iter().enumerate() {
            let (a, b, c) = (idx / (h * w), (idx / w) % h, idx % w);
            let mut want = C64::default();
            for (jdx, v) in x.iter().enumerate() {
                let (i, j, k) = (jdx / (h * w), (jdx / w) % h, jdx % w);
                let ph = -2.0
                    * std::f64::consts::PI
                    * ((a * i) as f64 / d as f64
                        + (b * j) as f64 / h as f64
                        + (c * k) as f64 / w as f64);
                want = want.add(v.mul(C64::new(ph.cos(), ph.sin())));
            }
            assert!(
                (got.re - want.re).abs() < 1e-9 && (got.im - want.im).abs() < 1e-9,
                "idx={idx} {got:?} {want:?}"
            );
        }
    }

    #[test]
    fn signed_frequencies() {
        let f: Vec<i64> = (0..8).map(|i| freq(i, 8)).collect();
        assert_eq!(f, [0, 1, 2, 3, -4, -3, -2, -1]);
        let f: Vec<i64> = (0..5).map(|i| freq(i, 5)).collect();
        assert_eq!(f, [0, 1, 2, -2, -1]);
    }
}
