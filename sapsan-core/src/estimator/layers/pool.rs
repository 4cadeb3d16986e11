//! [`max_pool3d`]: 3D max pooling as one custom op with a one-pass backward.
//!
//! The forward pass keeps the position of each window's maximum when the input needs a gradient;
//! the backward pass then only scatters the output gradients there (it searches the maxima again
//! only on a second backward pass through the same graph).
use std::sync::Mutex;

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Result, Tensor};

use super::{Elem, contiguous, out_len};

/// Window geometry of a 3D max pooling over a contiguous `(B, C, D, H, W)` input.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PoolGeom {
    pub(crate) kernel: usize,
    pub(crate) stride: usize,
    pub(crate) padding: usize,
}

/// Forward op; `keep`: record each window's maximum position for the backward pass.
struct Pool3d {
    geom: PoolGeom,
    keep: bool,
    argmax: Mutex<Option<Vec<usize>>>,
}

impl Pool3d {
    /// Keeps the maxima positions (when `keep`; dropped otherwise).
    fn store(&self, argmax: Vec<usize>) -> Result<()> {
        if self.keep {
            let mut slot = self.argmax.lock().map_err(|_| {
                candle_core::Error::Msg("max_pool3d: argmax cache lock poisoned".into())
            })?;
            *slot = Some(argmax);
        }
        Ok(())
    }
}

impl PoolGeom {
    /// Input dims, output dims, or an error naming the axis that does not fit.
    pub(crate) fn dims(&self, [b, c, d, h, w]: [usize; 5]) -> Result<([usize; 5], [usize; 3])> {
        if d * h * w > u32::MAX as usize {
            candle_core::bail!(
                "max_pool3d: a plane of {d}x{h}x{w} values is larger than supported (2^32); pool in sub-cubes"
            )
        }
        let mut out = [0; 3];
        for (o, len) in out.iter_mut().zip([d, h, w]) {
            let Some(n) = out_len(len, self.kernel, self.stride, self.padding) else {
                candle_core::bail!(
                    "max_pool3d: kernel {} (stride {}, padding {}) does not fit an axis of length {len}",
                    self.kernel,
                    self.stride,
                    self.padding
                )
            };
            *o = n;
        }
        Ok(([b, c, d, h, w], out))
    }

    /// Writes every output window's maximum of `x` into `y` and the flat input index of its first
    /// maximum (in window order) into `idx`. Padded positions are skipped, as `-inf` padding never
    /// wins; a NaN wins over numbers and stays, as in PyTorch.
    ///
    /// One scan over the input in memory order: each value is offered to the windows that hold it
    /// (one per axis when kernel == stride, as in CNN3d), and a window takes it only when it is
    /// strictly better, so every window keeps its first maximum in (depth, height, width) order.
    /// Planes run in parallel on rayon's pool.
    fn argmax<T: Elem>(
        &self,
        x: &[T],
        [b, c, d, h, w]: [usize; 5],
        [od, oh, ow]: [usize; 3],
        y: &mut [T],
        idx: &mut [usize],
    ) {
        let (in_plane, out_plane) = (d * h * w, od * oh * ow);
        if out_plane == 0 {
            return;
        }
        let axes = [self.axis(d, od), self.axis(h, oh), self.axis(w, ow)];
        let plane = |p: usize, y: &mut [T], idx: &mut [usize]| {
            let x = &x[p * in_plane..(p + 1) * in_plane];
            plane_argmax(x, &axes, [d, h, w], [od, oh, ow], y, idx);
            for i in idx.iter_mut() {
                *i += p * in_plane;
            }
        };
        let parallel = b * c > 1 && rayon::current_num_threads() > 1 && b * c * in_plane >= 1 << 14;
        if parallel {
            use rayon::prelude::*;
            y.par_chunks_mut(out_plane)
                .zip(idx.par_chunks_mut(out_plane))
                .enumerate()
                .for_each(|(p, (y, idx))| plane(p, y, idx));
        } else {
            for (p, (y, idx)) in y
                .chunks_mut(out_plane)
                .zip(idx.chunks_mut(out_plane))
                .enumerate()
            {
                plane(p, y, idx);
            }
        }
    }

    /// Every output window's maximum of `x` and the flat input index of its first maximum (one
    /// per window); see [`PoolGeom::argmax`].
    pub(crate) fn pool<T: Elem>(
        &self,
        x: &[T],
        dims: [usize; 5],
        out: [usize; 3],
    ) -> (Vec<T>, Vec<usize>) {
        let n_out = dims[0] * dims[1] * out.iter().product::<usize>();
        let (mut y, mut argmax) = (vec![T::ZERO; n_out], vec![0; n_out]);
        self.argmax(x, dims, out, &mut y, &mut argmax);
        (y, argmax)
    }

    /// Along one axis of `len` inputs and `out` windows: the first input of every window and, for
    /// every input, the windows `[lo, hi)` that hold it (empty where no window reaches).
    fn axis(&self, len: usize, out: usize) -> Axis {
        let (k, s, p) = (self.kernel, self.stride, self.padding);
        let first: Vec<usize> = (0..out).map(|o| (o * s).saturating_sub(p)).collect();
        let spans = (0..out)
            .map(|o| (first[o], (o * s + k).saturating_sub(p).min(len)))
            .collect();
        let windows = (0..len)
            .map(|i| {
                // Window o holds i when o*s - p <= i < o*s - p + k.
                let lo = (i + p + 1).saturating_sub(k).div_ceil(s);
                let hi = ((i + p) / s + 1).min(out);
                (lo.min(hi), hi)
            })
            .collect();
        Axis {
            first,
            spans,
            pairs: (k == 2 && s == 2).then_some(p),
            windows,
        }
    }
}

/// Window tables of one axis (see [`PoolGeom::axis`]).
struct Axis {
    first: Vec<usize>,
    /// Every window's inputs `[first, end)`.
    spans: Vec<(usize, usize)>,
    /// `Some(padding)` when windows are pairs (kernel 2, stride 2): [`row_pairs`] applies.
    pairs: Option<usize>,
    windows: Vec<(usize, usize)>,
}

/// [`PoolGeom::argmax`] of one plane `x`, with indices inside the plane: [`scan`] with plain
/// `>` when the plane holds no NaN (the common case, and the fast one), NaN-aware otherwise.
#[allow(clippy::eq_op)]
fn plane_argmax<T: Elem>(
    x: &[T],
    axes: &[Axis; 3],
    dims: [usize; 3],
    out: [usize; 3],
    y: &mut [T],
    idx: &mut [usize],
) {
    if x.iter().fold(false, |nan, &v| nan | (v != v)) {
        scan(x, axes, dims, out, y, idx, better);
    } else {
        scan(x, axes, dims, out, y, idx, |v, top| v > top);
    }
}

/// The scan of [`PoolGeom::argmax`] over one plane; `better(v, top)`: `v` replaces `top`.
fn scan<T: Elem>(
    x: &[T],
    [az, ay, ax]: &[Axis; 3],
    [_, h, w]: [usize; 3],
    [od, oh, ow]: [usize; 3],
    y: &mut [T],
    idx: &mut [usize],
    better: impl Fn(T, T) -> bool,
) {
    // Every window starts from its first input (padding <= kernel / 2, so it has one).
    for oz in 0..od {
        for oy in 0..oh {
            let row = (az.first[oz] * h + ay.first[oy]) * w;
            let o = (oz * oh + oy) * ow;
            for (ox, &fx) in ax.first.iter().enumerate() {
                (y[o + ox], idx[o + ox]) = (x[row + fx], row + fx);
            }
        }
    }
    for (z, &(z0, z1)) in az.windows.iter().enumerate() {
        for (yy, &(y0, y1)) in ay.windows.iter().enumerate() {
            let start = (z * h + yy) * w;
            let row = &x[start..start + w];
            for oz in z0..z1 {
                for oy in y0..y1 {
                    let o = (oz * oh + oy) * ow;
                    let (yv, yi) = (&mut y[o..o + ow], &mut idx[o..o + ow]);
                    if let Some(padding) = ax.pairs {
                        row_pairs(row, start, padding, yv, yi, &better);
                    } else {
                        row_spans(row, start, &ax.spans, yv, yi, &better);
                    }
                }
            }
        }
    }
}

/// Offers one input row (flat offset `start`) to a row of windows given by their spans; each
/// window takes the row's best (first of equals) when it is better than what it holds.
fn row_spans<T: Elem>(
    row: &[T],
    start: usize,
    spans: &[(usize, usize)],
    yv: &mut [T],
    yi: &mut [usize],
    better: &impl Fn(T, T) -> bool,
) {
    for (&(xs, xe), (yv, yi)) in spans.iter().zip(yv.iter_mut().zip(yi)) {
        let (mut bv, mut bi) = (row[xs], start + xs);
        for (xx, &v) in (xs..xe).zip(&row[xs..xe]).skip(1) {
            offer(v, start + xx, &mut bv, &mut bi, better);
        }
        offer(bv, bi, yv, yi, better);
    }
}

/// [`row_spans`] for kernel 2, stride 2 (CNN3d's pooling): windows are the pairs of the row
/// after `padding` (0 or 1) lone leading values, so the pair loop has no inner loop at all.
fn row_pairs<T: Elem>(
    row: &[T],
    start: usize,
    padding: usize,
    yv: &mut [T],
    yi: &mut [usize],
    better: &impl Fn(T, T) -> bool,
) {
    let ow = yv.len();
    let mut o = 0;
    if padding == 1 {
        offer(row[0], start, &mut yv[0], &mut yi[0], better);
        o = 1;
    }
    let body = &row[padding..];
    let full = (body.len() / 2).min(ow - o);
    let (pairs, yv_full, yi_full) = (
        &body[..2 * full],
        &mut yv[o..o + full],
        &mut yi[o..o + full],
    );
    for j in 0..full {
        let (a, b) = (pairs[2 * j], pairs[2 * j + 1]);
        let second = better(b, a);
        let v = if second { b } else { a };
        let i = start + padding + 2 * j + usize::from(second);
        offer(v, i, &mut yv_full[j], &mut yi_full[j], better);
    }
    o += full;
    if o < ow {
        // A last window holding one value.
        let i = padding + 2 * full;
        offer(row[i], start + i, &mut yv[o], &mut yi[o], better);
    }
}

/// Window `(yv, yi)` takes value `v` at flat index `i` when `v` is better than what it holds.
#[inline(always)]
fn offer<T: Elem>(v: T, i: usize, yv: &mut T, yi: &mut usize, better: &impl Fn(T, T) -> bool) {
    let take = better(v, *yv);
    // The index by mask, not by branch: which value wins is data, not a pattern a branch
    // predictor could learn.
    let mask = usize::from(take).wrapping_neg();
    *yi = (i & mask) | (*yi & !mask);
    *yv = if take { v } else { *yv };
}

/// Whether `v` replaces the current maximum `top`: larger, or the first NaN.
#[inline(always)]
#[allow(clippy::eq_op)]
fn better<T: PartialOrd>(v: T, top: T) -> bool {
    // `|` and `&`, not `||` and `&&`: no branches.
    (v > top) | ((v != v) & (top == top))
}

impl CustomOp1 for Pool3d {
    fn name(&self) -> &'static str {
        "max-pool3d"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, candle_core::Shape)> {
        let (dims, out) = self.geom.dims(l.shape().dims5()?.into())?;
        let shape = candle_core::Shape::from((dims[0], dims[1], out[0], out[1], out[2]));
        let (storage, argmax) = match s {
            CpuStorage::F32(x) => {
                let (y, argmax) = self.geom.pool(contiguous(x, l, self.name())?, dims, out);
                (CpuStorage::F32(y), argmax)
            }
            CpuStorage::F64(x) => {
                let (y, argmax) = self.geom.pool(contiguous(x, l, self.name())?, dims, out);
                (CpuStorage::F64(y), argmax)
            }
            other => {
                candle_core::bail!("max_pool3d: supports f32 and f64, got {:?}", other.dtype())
            }
        };
        self.store(argmax)?;
        Ok((storage, shape))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        let grad = grad_res.contiguous()?;
        // Taken: a second backward pass through the same graph searches the maxima again.
        let argmax = self.argmax.lock().ok().and_then(|mut a| a.take());
        let op = Pool3dGrad {
            geom: self.geom,
            argmax,
        };
        Ok(Some(arg.apply_op2_no_bwd(&grad, &op)?))
    }
}

/// Backward of [`Pool3d`]: `(input, grad_output) -> grad_input`, each output gradient added to
/// the first maximum of its window (at the kept positions, or found again).
struct Pool3dGrad {
    geom: PoolGeom,
    argmax: Option<Vec<usize>>,
}

impl Pool3dGrad {
    /// Adds `g[o]` onto `dx` at the maximum of window `o` of `x`.
    fn scatter<T: Elem>(&self, x: &[T], g: &[T], dx: &mut [T], dims: [usize; 5], out: [usize; 3]) {
        match &self.argmax {
            Some(argmax) if argmax.len() == g.len() => scatter(argmax, g, dx),
            _ => scatter(&self.geom.pool(x, dims, out).1, g, dx),
        }
    }
}

/// The backward pass of max pooling: adds each output gradient `g[o]` onto `dx` at `argmax[o]`,
/// its window's first maximum (as [`PoolGeom::pool`] found it).
pub(crate) fn scatter<T: Elem>(argmax: &[usize], g: &[T], dx: &mut [T]) {
    for (&i, &v) in argmax.iter().zip(g) {
        dx[i] += v;
    }
}

impl CustomOp2 for Pool3dGrad {
    fn name(&self) -> &'static str {
        "max-pool3d-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, candle_core::Shape)> {
        let (dims, out) = self.geom.dims(l1.shape().dims5()?.into())?;
        let n_in = l1.shape().elem_count();
        let storage = match (s1, s2) {
            (CpuStorage::F32(x), CpuStorage::F32(g)) => {
                let (x, g) = (
                    contiguous(x, l1, self.name())?,
                    contiguous(g, l2, self.name())?,
                );
                let mut dx = vec![0f32; n_in];
                self.scatter(x, g, &mut dx, dims, out);
                CpuStorage::F32(dx)
            }
            (CpuStorage::F64(x), CpuStorage::F64(g)) => {
                let (x, g) = (
                    contiguous(x, l1, self.name())?,
                    contiguous(g, l2, self.name())?,
                );
                let mut dx = vec![0f64; n_in];
                self.scatter(x, g, &mut dx, dims, out);
                CpuStorage::F64(dx)
            }
            (a, b) => candle_core::bail!(
                "max_pool3d backward: supports f32 or f64 of one dtype, got {:?} and {:?}",
                a.dtype(),
                b.dtype()
            ),
        };
        Ok((storage, l1.shape().clone()))
    }
}

/// 3D max pooling of `x` `(B, C, D, H, W)` with a cubic window of `kernel`, `stride` and `padding`
/// on every spatial axis; padding uses `-inf`, like PyTorch's `nn.functional.max_pool3d`.
///
/// PyTorch requires `padding <= kernel / 2`; so does this function. Differentiable: like PyTorch,
/// the gradient of each window goes to its first maximum (in depth, height, width order). Forward
/// and backward are one pass each over the data (`f32` or `f64`).
pub fn max_pool3d(x: &Tensor, kernel: usize, stride: usize, padding: usize) -> Result<Tensor> {
    x.dims5()?;
    if kernel == 0 || stride == 0 {
        candle_core::bail!("max_pool3d: kernel ({kernel}) and stride ({stride}) must be positive")
    }
    if 2 * padding > kernel {
        candle_core::bail!(
            "max_pool3d: padding {padding} must be at most half the kernel size {kernel}"
        )
    }
    x.contiguous()?.apply_op1(Pool3d {
        geom: PoolGeom {
            kernel,
            stride,
            padding,
        },
        keep: x.track_op(),
        argmax: Mutex::new(None),
    })
}
