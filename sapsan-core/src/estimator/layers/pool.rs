//! [`max_pool3d`]: 3D max pooling as one custom op with a one-pass backward.
//!
//! The forward pass keeps the position of each window's maximum when the input needs a gradient;
//! the backward pass then only scatters the output gradients there (it searches the maxima again
//! only on a second backward pass through the same graph).
use std::sync::Mutex;

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Result, Tensor};

use super::{contiguous, out_len};

/// Window geometry of a 3D max pooling over a contiguous `(B, C, D, H, W)` input.
#[derive(Debug, Clone, Copy)]
struct PoolGeom {
    kernel: usize,
    stride: usize,
    padding: usize,
}

/// Forward op; `keep`: record each window's maximum position for the backward pass.
struct Pool3d {
    geom: PoolGeom,
    keep: bool,
    argmax: Mutex<Option<Vec<usize>>>,
}

impl Pool3d {
    /// Keeps the maxima positions (when `keep`).
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
    fn dims(&self, shape: &candle_core::Shape) -> Result<([usize; 5], [usize; 3])> {
        let (b, c, d, h, w) = shape.dims5()?;
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

    /// Calls `f(out_index, in_index)` with the flat index of the first maximum (in window order)
    /// of every output window of `x`; padded positions are skipped, as `-inf` padding never wins.
    fn for_each_argmax<T: Copy + PartialOrd>(
        &self,
        x: &[T],
        [b, c, d, h, w]: [usize; 5],
        [od, oh, ow]: [usize; 3],
        mut f: impl FnMut(usize, usize),
    ) {
        let (k, s, p) = (self.kernel, self.stride, self.padding);
        // Input range [lo, hi) covered by window `o` along an axis of length `len`.
        let range = |o: usize, len: usize| {
            let start = o * s;
            (
                start.saturating_sub(p),
                (start + k).saturating_sub(p).min(len),
            )
        };
        let mut out = 0;
        for plane in 0..b * c {
            let base = plane * d * h * w;
            for z in 0..od {
                let (z0, z1) = range(z, d);
                for y in 0..oh {
                    let (y0, y1) = range(y, h);
                    for xo in 0..ow {
                        let (x0, x1) = range(xo, w);
                        let mut best = base + (z0 * h + y0) * w + x0;
                        let mut top = x[best];
                        // NaN propagates like PyTorch: a NaN is taken as the maximum (and stays).
                        let mut top_nan = top.partial_cmp(&top).is_none();
                        for iz in z0..z1 {
                            for iy in y0..y1 {
                                let row = base + (iz * h + iy) * w;
                                for (i, &v) in x[row + x0..row + x1].iter().enumerate() {
                                    let v_nan = v.partial_cmp(&v).is_none();
                                    if v > top || (v_nan && !top_nan) {
                                        (best, top, top_nan) = (row + x0 + i, v, v_nan);
                                    }
                                }
                            }
                        }
                        f(out, best);
                        out += 1;
                    }
                }
            }
        }
    }
}

impl CustomOp1 for Pool3d {
    fn name(&self) -> &'static str {
        "max-pool3d"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, candle_core::Shape)> {
        let (dims, out) = self.geom.dims(l.shape())?;
        let n_out = dims[0] * dims[1] * out.iter().product::<usize>();
        let shape = candle_core::Shape::from((dims[0], dims[1], out[0], out[1], out[2]));
        let mut argmax = vec![0usize; if self.keep { n_out } else { 0 }];
        let keep = self.keep;
        let storage = match s {
            CpuStorage::F32(x) => {
                let x = contiguous(x, l, self.name())?;
                let mut y = vec![0f32; n_out];
                self.geom.for_each_argmax(x, dims, out, |o, i| {
                    y[o] = x[i];
                    if keep {
                        argmax[o] = i;
                    }
                });
                CpuStorage::F32(y)
            }
            CpuStorage::F64(x) => {
                let x = contiguous(x, l, self.name())?;
                let mut y = vec![0f64; n_out];
                self.geom.for_each_argmax(x, dims, out, |o, i| {
                    y[o] = x[i];
                    if keep {
                        argmax[o] = i;
                    }
                });
                CpuStorage::F64(y)
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
    fn scatter<T: Copy + PartialOrd + std::ops::AddAssign>(
        &self,
        x: &[T],
        g: &[T],
        dx: &mut [T],
        dims: [usize; 5],
        out: [usize; 3],
    ) {
        match &self.argmax {
            Some(argmax) if argmax.len() == g.len() => {
                for (&i, &v) in argmax.iter().zip(g) {
                    dx[i] += v;
                }
            }
            _ => self
                .geom
                .for_each_argmax(x, dims, out, |o, i| dx[i] += g[o]),
        }
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
        let (dims, out) = self.geom.dims(l1.shape())?;
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
