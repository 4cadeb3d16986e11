//! [`conv3d`]: a 3D convolution as im2col + one matrix product per sample, in one custom op whose
//! backward pass produces the weight, bias and input gradients together.
//!
//! Forward, per sample `n`: the input windows are laid out as the columns of a
//! `(Cin*kD*kH*kW, P)` matrix (`P` output positions; zero where a window reaches into the padding),
//! and `y_n = W * col + b` is one `gemm` call with `W` the `(Cout, Cin*kD*kH*kW)` weight. The result is
//! already in `(Cout, Do, Ho, Wo)` order: no permutes, no padded copy of the input.
//!
//! Backward, per sample: the columns the forward pass kept (it keeps them when some argument
//! needs a gradient; rebuilt otherwise), then
//! `dW += g_n * col^T`, `db += sum(g_n)` and, only when the input needs a gradient (not for the
//! network's input), `dcol = W^T * g_n` scattered back onto the input positions (col2im). One node
//! in candle's graph instead of a dozen, so backprop allocates and adds three gradients, not one
//! per intermediate tensor.
//!
//! Samples run in parallel on rayon's pool (each worker with its own column buffer and partial
//! weight gradient, summed at the end); a single sample, or a single thread, runs the samples in
//! turn and lets `gemm` use the pool instead.
use std::mem::MaybeUninit;
use std::sync::Mutex;

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};
use gemm::Parallelism;
use rayon::prelude::*;

use super::{Elem, contiguous, fill, matmul, out_len, unpack_grads};

/// Sizes of one convolution call.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Geom {
    batch: usize,
    cin: usize,
    cout: usize,
    /// Input spatial size (D, H, W).
    input: [usize; 3],
    /// Output spatial size.
    out: [usize; 3],
    /// Kernel size (kD, kH, kW).
    kernel: [usize; 3],
    stride: usize,
    padding: usize,
}

impl Geom {
    /// The geometry of a convolution of a `(B, Cin, D, H, W)` input with a `(Cout, Cin, kD, kH,
    /// kW)` weight, or an error saying what does not fit.
    pub(crate) fn new(
        [batch, cin, d, h, w]: [usize; 5],
        [cout, wcin, kd, kh, kw]: [usize; 5],
        stride: usize,
        padding: usize,
    ) -> Result<Self> {
        if wcin != cin {
            candle_core::bail!(
                "conv3d: input has {cin} channels but the weight expects {wcin} (weight shape {:?})",
                [cout, wcin, kd, kh, kw]
            )
        }
        let (Some(dout), Some(hout), Some(wout)) = (
            out_len(d, kd, stride, padding),
            out_len(h, kh, stride, padding),
            out_len(w, kw, stride, padding),
        ) else {
            candle_core::bail!(
                "conv3d: kernel {kd}x{kh}x{kw} (stride {stride}, padding {padding}) does not fit input {d}x{h}x{w}"
            )
        };
        Ok(Geom {
            batch,
            cin,
            cout,
            input: [d, h, w],
            out: [dout, hout, wout],
            kernel: [kd, kh, kw],
            stride,
            padding,
        })
    }

    /// Output shape `(B, Cout, Do, Ho, Wo)`.
    pub(crate) fn output(&self) -> [usize; 5] {
        let [d, h, w] = self.out;
        [self.batch, self.cout, d, h, w]
    }

    /// Values per input sample: `Cin*D*H*W`.
    fn in_len(&self) -> usize {
        self.cin * self.input.iter().product::<usize>()
    }

    /// Output positions per channel: `Do*Ho*Wo`.
    fn positions(&self) -> usize {
        self.out.iter().product()
    }

    /// Rows of the column matrix: `Cin*kD*kH*kW`.
    fn rows(&self) -> usize {
        self.cin * self.kernel.iter().product::<usize>()
    }

    /// Whether samples run in parallel (more than one sample and more than one thread).
    fn parallel(&self) -> bool {
        self.batch > 1 && rayon::current_num_threads() > 1
    }

    /// `gemm`'s own parallelism when samples run one after the other.
    fn gemm_parallelism(&self) -> Parallelism {
        if !self.parallel() && rayon::current_num_threads() > 1 {
            Parallelism::Rayon(0)
        } else {
            Parallelism::None
        }
    }

    /// Calls `f(col, x, n)` for every run of consecutive output positions along W that reads
    /// inside the input: column entries `col..col+n` take the input values `x, x+s, .., x+(n-1)s`
    /// (`s` the stride). Entries never visited belong to windows over the zero padding.
    fn for_each_run(&self, mut f: impl FnMut(usize, usize, usize)) {
        let ([kd, kh, kw], s, p) = (self.kernel, self.stride, self.padding);
        let [d, h, w] = self.input;
        let [od, oh, ow] = self.out;
        let positions = self.positions();
        let mut row = 0;
        for ci in 0..self.cin {
            let plane = ci * d * h * w;
            for kz in 0..kd {
                let (z0, z1) = valid(od, d, kz, s, p);
                for ky in 0..kh {
                    let (y0, y1) = valid(oh, h, ky, s, p);
                    for kx in 0..kw {
                        let (x0, x1) = valid(ow, w, kx, s, p);
                        let base = row * positions;
                        row += 1;
                        if x0 == x1 {
                            continue;
                        }
                        let ix0 = x0 * s + kx - p;
                        for oz in z0..z1 {
                            let iz = oz * s + kz - p;
                            for oy in y0..y1 {
                                let iy = oy * s + ky - p;
                                f(
                                    base + (oz * oh + oy) * ow + x0,
                                    plane + (iz * h + iy) * w + ix0,
                                    x1 - x0,
                                );
                            }
                        }
                    }
                }
            }
        }
    }

    /// Writes every entry of `col` `(Cin*kD*kH*kW, P)`: the input windows of one sample `x`, and
    /// zeros where a window reaches into the padding. `col` needs no initialisation (nor a zero
    /// fill first): each entry is written exactly once, in memory order.
    fn im2col<'c, T: Elem>(&self, x: &[T], col: &'c mut [MaybeUninit<T>]) -> &'c mut [T] {
        let s = self.stride;
        // Runs arrive in increasing column order; what lies between them is padding.
        let mut done = 0;
        self.for_each_run(|c, i, n| {
            fill(&mut col[done..c], T::ZERO);
            done = c + n;
            let (dst, src) = (&mut col[c..c + n], &x[i..i + (n - 1) * s + 1]);
            match s {
                1 => {
                    dst.write_copy_of_slice(src);
                }
                2 => {
                    // The even elements of the window row: a shuffle the compiler vectorises.
                    let (pairs, last) = src.split_at(2 * (n - 1));
                    for (v, pair) in dst.iter_mut().zip(pairs.chunks_exact(2)) {
                        v.write(pair[0]);
                    }
                    dst[n - 1].write(last[0]);
                }
                _ => {
                    for (v, &u) in dst.iter_mut().zip(src.iter().step_by(s)) {
                        v.write(u);
                    }
                }
            }
        });
        let len = col.len();
        fill(&mut col[done..len], T::ZERO);
        // SAFETY: every entry up to `done` was written by a run or a gap fill, and the rest now.
        unsafe { col.assume_init_mut() }
    }

    /// Adds the column gradients `dcol` onto the input positions they came from (`dx`, one sample).
    fn col2im<T: Elem>(&self, dcol: &[T], dx: &mut [T]) {
        let s = self.stride;
        self.for_each_run(|c, i, n| {
            let dst = &mut dx[i..i + (n - 1) * s + 1];
            for (u, &v) in dst.iter_mut().step_by(s).zip(&dcol[c..c + n]) {
                *u += v;
            }
        });
    }
}

/// Output positions `o` in `0..out` whose input index `o*s + kk - p` lies in `0..len`, as `[lo, hi)`.
fn valid(out: usize, len: usize, kk: usize, s: usize, p: usize) -> (usize, usize) {
    let lo = if kk >= p { 0 } else { (p - kk).div_ceil(s) };
    let hi = if len + p > kk {
        ((len + p - kk - 1) / s + 1).min(out)
    } else {
        0
    };
    (lo.min(hi), hi)
}

/// Forward: `(B, Cout, Do*Ho*Wo)` values of the convolution of `x` with weight `w` and bias `b`,
/// and, when `keep`, every sample's columns (for the backward pass; empty otherwise).
///
/// Both buffers are written once, sample by sample on the workers (bias rows, then the columns,
/// then `gemm` adds the products): no zero fill on the calling thread first.
pub(crate) fn forward<T: Elem>(
    g: &Geom,
    x: &[T],
    w: &[T],
    b: &[T],
    keep: bool,
) -> (Vec<T>, Vec<T>) {
    let (positions, rows, in_len) = (g.positions(), g.rows(), g.in_len());
    let (out_len, cols_len) = (g.cout * positions, rows * positions);
    if out_len == 0 || in_len == 0 {
        return (vec![T::ZERO; g.batch * out_len], Vec::new());
    }
    // Every sample and every bias row present: the loops below then write every entry.
    assert!(
        x.len() == g.batch * in_len && b.len() == g.cout,
        "conv3d: input or bias too short"
    );
    let mut y = Vec::with_capacity(g.batch * out_len);
    let mut kept = Vec::with_capacity(if keep { g.batch * cols_len } else { 0 });
    let sample = |col: &mut [MaybeUninit<T>], xn: &[T], yn: &mut [MaybeUninit<T>], parallelism| {
        // Every output row starts as its channel's bias.
        for (row, &bias) in yn.chunks_mut(positions).zip(b) {
            fill(row, bias);
        }
        // SAFETY: the loop above wrote every row of `yn` (`Cout` rows of `P`).
        let yn = unsafe { yn.assume_init_mut() };
        let col = g.im2col(xn, col);
        let shape = [g.cout, positions, rows];
        matmul(
            shape,
            yn,
            true,
            (w, rows, 1),
            (col, positions, 1),
            parallelism,
        );
    };
    let ys = &mut y.spare_capacity_mut()[..g.batch * out_len];
    match (g.parallel(), keep) {
        (true, true) => ys
            .par_chunks_mut(out_len)
            .zip(x.par_chunks(in_len))
            .zip(kept.spare_capacity_mut()[..g.batch * cols_len].par_chunks_mut(cols_len))
            .for_each(|((yn, xn), col)| sample(col, xn, yn, Parallelism::None)),
        (true, false) => ys
            .par_chunks_mut(out_len)
            .zip(x.par_chunks(in_len))
            .for_each_init(
                || Vec::with_capacity(cols_len),
                |col: &mut Vec<T>, (yn, xn)| {
                    let col = &mut col.spare_capacity_mut()[..cols_len];
                    sample(col, xn, yn, Parallelism::None)
                },
            ),
        (false, true) => {
            let samples = ys.chunks_mut(out_len).zip(x.chunks(in_len));
            let cols = kept.spare_capacity_mut()[..g.batch * cols_len].chunks_mut(cols_len);
            for ((yn, xn), col) in samples.zip(cols) {
                sample(col, xn, yn, g.gemm_parallelism());
            }
        }
        (false, false) => {
            let mut col = Vec::with_capacity(cols_len);
            let col = &mut col.spare_capacity_mut()[..cols_len];
            for (yn, xn) in ys.chunks_mut(out_len).zip(x.chunks(in_len)) {
                sample(col, xn, yn, g.gemm_parallelism());
            }
        }
    }
    // SAFETY: every sample's output (and, when kept, its columns) was written above; `x` holds
    // `batch` samples (a contiguous `(B, Cin, D, H, W)` input).
    unsafe {
        y.set_len(g.batch * out_len);
        if keep {
            kept.set_len(g.batch * cols_len);
        }
    }
    (y, kept)
}

/// One worker's buffers and partial sums in the backward pass.
struct Scratch<T> {
    dw: Vec<T>,
    db: Vec<T>,
    col: Vec<T>,
    dcol: Vec<T>,
}

impl<T: Elem> Scratch<T> {
    fn new(g: &Geom, need_dx: bool, need_col: bool) -> Self {
        let cols = g.rows() * g.positions();
        Scratch {
            dw: vec![T::ZERO; g.cout * g.rows()],
            db: vec![T::ZERO; g.cout],
            col: Vec::with_capacity(if need_col { cols } else { 0 }),
            dcol: vec![T::ZERO; if need_dx { cols } else { 0 }],
        }
    }

    /// Adds another worker's partial gradients to these.
    fn merge(mut self, other: Self) -> Self {
        for (a, b) in self.dw.iter_mut().zip(&other.dw) {
            *a += *b;
        }
        for (a, b) in self.db.iter_mut().zip(&other.db) {
            *a += *b;
        }
        self
    }
}

/// Backward: `dW`, `db` and (when `need_dx`) `dx`, packed one after the other in a flat vector.
/// `kept`: the forward pass's columns of every sample, if it kept them; else they are rebuilt.
pub(crate) fn backward<T: Elem>(
    g: &Geom,
    x: &[T],
    w: &[T],
    gy: &[T],
    need_dx: bool,
    kept: Option<&[T]>,
) -> Vec<T> {
    let (positions, rows, in_len) = (g.positions(), g.rows(), g.in_len());
    let (out_len, cols_len) = (g.cout * positions, rows * positions);
    let kept = kept.filter(|k| k.len() == g.batch * cols_len);
    let need_col = kept.is_none();
    assert!(
        x.len() == g.batch * in_len && gy.len() == g.batch * out_len,
        "conv3d backward: input or gradient too short"
    );
    // `[dW, db, dx]`: the samples write `dx` in place, the summed `dW` and `db` go in front.
    let (nw, nb) = (g.cout * rows, g.cout);
    let dx_len = if need_dx { g.batch * in_len } else { 0 };
    let mut packed = Vec::with_capacity(nw + nb + dx_len);
    let (front, dx) = packed.spare_capacity_mut()[..nw + nb + dx_len].split_at_mut(nw + nb);
    let sample = |s: &mut Scratch<T>, n: usize, dxn: Option<&mut [MaybeUninit<T>]>, parallelism| {
        let (xn, gn) = (
            &x[n * in_len..(n + 1) * in_len],
            &gy[n * out_len..(n + 1) * out_len],
        );
        let col = match kept {
            Some(k) => &k[n * cols_len..(n + 1) * cols_len],
            None => &*g.im2col(xn, &mut s.col.spare_capacity_mut()[..cols_len]),
        };
        // dW (Cout x rows) += g_n (Cout x P) * col^T (P x rows)
        let shape = [g.cout, rows, positions];
        let (gn_op, col_t) = ((gn, positions, 1), (col, 1, positions));
        matmul(shape, &mut s.dw, true, gn_op, col_t, parallelism);
        for (db, row) in s.db.iter_mut().zip(gn.chunks(positions)) {
            *db = row.iter().fold(*db, |acc, &v| acc + v);
        }
        if let Some(dxn) = dxn {
            // dcol (rows x P) = W^T (rows x Cout) * g_n (Cout x P)
            let shape = [rows, positions, g.cout];
            matmul(shape, &mut s.dcol, false, (w, 1, rows), gn_op, parallelism);
            g.col2im(&s.dcol, fill(dxn, T::ZERO));
        }
    };
    let mut parts: Vec<Option<&mut [MaybeUninit<T>]>> = if need_dx && in_len > 0 {
        dx.chunks_mut(in_len).map(Some).collect()
    } else {
        (0..g.batch).map(|_| None).collect()
    };
    let total = if out_len == 0 || in_len == 0 {
        // No output: the input gradient is zero.
        for dxn in parts.iter_mut().flatten() {
            fill(dxn, T::ZERO);
        }
        Scratch::new(g, false, false)
    } else if g.parallel() {
        parts
            .into_par_iter()
            .enumerate()
            .fold(
                || Scratch::new(g, need_dx, need_col),
                |mut s, (n, dxn)| {
                    sample(&mut s, n, dxn, Parallelism::None);
                    s
                },
            )
            .reduce_with(Scratch::merge)
            .unwrap_or_else(|| Scratch::new(g, false, false))
    } else {
        let mut s = Scratch::new(g, need_dx, need_col);
        for (n, dxn) in parts.into_iter().enumerate() {
            sample(&mut s, n, dxn, g.gemm_parallelism());
        }
        s
    };
    let (dw, db) = front.split_at_mut(nw);
    dw.write_copy_of_slice(&total.dw);
    db.write_copy_of_slice(&total.db);
    // SAFETY: `dW` and `db` were just written; `dx` (when needed) sample by sample above, each
    // sample's part zero-filled before its columns were added (or zero-filled when no output).
    unsafe { packed.set_len(nw + nb + dx_len) };
    packed
}

/// The columns a forward pass kept for its backward pass.
enum Cols {
    F32(Vec<f32>),
    F64(Vec<f64>),
}

/// Forward op: `(x, weight, bias) -> y`. When `keep` (some argument needs a gradient) it keeps
/// the columns it built, and its backward pass takes them instead of rebuilding them.
struct Conv3dOp {
    geom: Geom,
    keep: bool,
    cols: Mutex<Option<Cols>>,
}

impl CustomOp3 for Conv3dOp {
    fn name(&self) -> &'static str {
        "conv3d"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let g = &self.geom;
        let [od, oh, ow] = g.out;
        let shape = Shape::from((g.batch, g.cout, od, oh, ow));
        let name = self.name();
        let storage = match (s1, s2, s3) {
            (CpuStorage::F32(x), CpuStorage::F32(w), CpuStorage::F32(b)) => {
                let (x, w, b) = (
                    contiguous(x, l1, name)?,
                    contiguous(w, l2, name)?,
                    contiguous(b, l3, name)?,
                );
                let (y, cols) = forward(g, x, w, b, self.keep);
                self.store(Cols::F32(cols))?;
                CpuStorage::F32(y)
            }
            (CpuStorage::F64(x), CpuStorage::F64(w), CpuStorage::F64(b)) => {
                let (x, w, b) = (
                    contiguous(x, l1, name)?,
                    contiguous(w, l2, name)?,
                    contiguous(b, l3, name)?,
                );
                let (y, cols) = forward(g, x, w, b, self.keep);
                self.store(Cols::F64(cols))?;
                CpuStorage::F64(y)
            }
            (a, b, c) => candle_core::bail!(
                "conv3d: input, weight and bias must be all f32 or all f64, got {:?}, {:?}, {:?}",
                a.dtype(),
                b.dtype(),
                c.dtype()
            ),
        };
        Ok((storage, shape))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        // The network's input is not a variable and depends on none: no gradient to compute.
        let need_dx = x.track_op();
        let grad = grad.contiguous()?;
        // Taken: a second backward pass through the same graph rebuilds the columns.
        let cols = self.cols.lock().ok().and_then(|mut c| c.take());
        let op = Conv3dGrad {
            geom: self.geom,
            need_dx,
            cols,
        };
        let packed = x.apply_op3_no_bwd(w, &grad, &op)?;
        unpack_grads(&packed, x, w, b, need_dx)
    }
}

impl Conv3dOp {
    /// Keeps the forward pass's columns (when `keep`).
    fn store(&self, cols: Cols) -> Result<()> {
        if self.keep {
            let mut slot = self.cols.lock().map_err(|_| {
                candle_core::Error::Msg("conv3d: column cache lock poisoned".into())
            })?;
            *slot = Some(cols);
        }
        Ok(())
    }
}

/// Backward op: `(x, weight, grad_y) -> [dW, db, dx]` flattened (see [`backward`]).
struct Conv3dGrad {
    geom: Geom,
    need_dx: bool,
    cols: Option<Cols>,
}

impl CustomOp3 for Conv3dGrad {
    fn name(&self) -> &'static str {
        "conv3d-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (g, name) = (&self.geom, self.name());
        let storage = match (s1, s2, s3) {
            (CpuStorage::F32(x), CpuStorage::F32(w), CpuStorage::F32(gy)) => {
                let (x, w, gy) = (
                    contiguous(x, l1, name)?,
                    contiguous(w, l2, name)?,
                    contiguous(gy, l3, name)?,
                );
                let kept = match &self.cols {
                    Some(Cols::F32(c)) => Some(&c[..]),
                    _ => None,
                };
                CpuStorage::F32(backward(g, x, w, gy, self.need_dx, kept))
            }
            (CpuStorage::F64(x), CpuStorage::F64(w), CpuStorage::F64(gy)) => {
                let (x, w, gy) = (
                    contiguous(x, l1, name)?,
                    contiguous(w, l2, name)?,
                    contiguous(gy, l3, name)?,
                );
                let kept = match &self.cols {
                    Some(Cols::F64(c)) => Some(&c[..]),
                    _ => None,
                };
                CpuStorage::F64(backward(g, x, w, gy, self.need_dx, kept))
            }
            (a, b, c) => candle_core::bail!(
                "conv3d backward: input, weight and gradient must be all f32 or all f64, got \
                 {:?}, {:?}, {:?}",
                a.dtype(),
                b.dtype(),
                c.dtype()
            ),
        };
        let len = match &storage {
            CpuStorage::F32(v) => v.len(),
            CpuStorage::F64(v) => v.len(),
            _ => 0,
        };
        Ok((storage, Shape::from(len)))
    }
}

/// 3D convolution of `x` `(B, Cin, D, H, W)` with `weight` `(Cout, Cin, kD, kH, kW)`,
/// an optional `bias` `(Cout,)`, the same `stride` and zero `padding` on every spatial axis.
///
/// Returns `(B, Cout, Do, Ho, Wo)` with `Do = (D + 2*padding - kD) / stride + 1` (likewise for H, W),
/// the same numbers as PyTorch's `nn.functional.conv3d`. Differentiable in `x`, `weight` and `bias`;
/// f32 or f64 on the CPU. See the module documentation for how.
pub fn conv3d(
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    stride: usize,
    padding: usize,
) -> Result<Tensor> {
    let geom = Geom::new(x.dims5()?.into(), weight.dims5()?.into(), stride, padding)?;
    let cout = geom.cout;
    let bias = match bias {
        Some(b) if b.dims() != [cout] => candle_core::bail!(
            "conv3d: the bias must have shape ({cout},) for {cout} output channels, got {:?}",
            b.dims()
        ),
        Some(b) => b.contiguous()?,
        None => Tensor::zeros(cout, x.dtype(), x.device())?,
    };
    let op = Conv3dOp {
        geom,
        keep: x.track_op() || weight.track_op() || bias.track_op(),
        cols: Mutex::new(None),
    };
    x.contiguous()?.apply_op3(&weight.contiguous()?, &bias, op)
}
