//! [`linear`] and its module [`Linear`]: `y = x W^T + b` as one custom op with a fused backward.
//!
//! candle-nn's `Linear` is `matmul` on the transposed weight plus a broadcast add: its backward
//! pass builds the weight gradient transposed, adds it onto a zero tensor, transposes it back
//! with a strided copy and adds it onto another zero tensor; for CNN3d's last layer (`8C x
//! Ct*D*H*W` weights, 6.3 million at 64^3) those copies cost more than the arithmetic. Here the
//! backward pass writes `dW = g^T x` in the weight's own layout in one `gemm` call, the bias
//! gradient in the same pass, and `dx = g W` only when the input needs a gradient.
use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp3, Layout, Module, Result, Shape, Tensor};
use candle_nn::VarBuilder;

use crate::estimator::init::fan_in_uniform;
use gemm::Parallelism;

use std::mem::MaybeUninit;

use rayon::prelude::*;

use super::{Elem, contiguous, fill, matmul, matmul_into, unpack_grads};

/// Sizes of one call: `batch` rows of `inputs` features to `outputs` features.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Dims {
    pub(crate) batch: usize,
    pub(crate) inputs: usize,
    pub(crate) outputs: usize,
}

impl Dims {
    /// `gemm` on rayon's pool when there is more than one thread.
    fn parallelism(&self) -> Parallelism {
        if rayon::current_num_threads() > 1 && self.batch * self.inputs * self.outputs > 1 << 16 {
            Parallelism::Rayon(0)
        } else {
            Parallelism::None
        }
    }
}

pub(crate) fn forward<T: Elem>(d: &Dims, x: &[T], w: &[T], b: &[T]) -> Vec<T> {
    let Dims {
        batch,
        inputs,
        outputs,
    } = *d;
    let mut y = Vec::with_capacity(batch * outputs);
    for _ in 0..batch {
        y.extend_from_slice(b);
    }
    // y (B x out) += x (B x in) * W^T (in x out)
    let shape = [batch, outputs, inputs];
    matmul(
        shape,
        &mut y,
        true,
        (x, inputs, 1),
        (w, 1, inputs),
        d.parallelism(),
    );
    y
}

/// Output features per block of `dx`'s partial sums: fixed, so the sum does not depend on the
/// thread count.
const DX_BLOCK: usize = 8192;

/// `[dW, db, dx]` flattened; `dx` only when `need_dx`. Written once each: no zero fill first.
pub(crate) fn backward<T: Elem>(d: &Dims, x: &[T], w: &[T], g: &[T], need_dx: bool) -> Vec<T> {
    let Dims {
        batch,
        inputs,
        outputs,
    } = *d;
    let (nw, nb) = (outputs * inputs, outputs);
    let nx = if need_dx { batch * inputs } else { 0 };
    let mut out = Vec::with_capacity(nw + nb + nx);
    let (dw, rest) = out.spare_capacity_mut()[..nw + nb + nx].split_at_mut(nw);
    let (db, dx) = rest.split_at_mut(nb);
    // dW (out x in) = g^T (out x B) * x (B x in)
    let shape = [outputs, inputs, batch];
    matmul_into(shape, dw, (g, 1, outputs), (x, inputs, 1), d.parallelism());
    let db = fill(db, T::ZERO);
    for row in g.chunks(outputs.max(1)) {
        for (s, &v) in db.iter_mut().zip(row) {
            *s += v;
        }
    }
    if need_dx {
        dx_into(d, w, g, dx);
    }
    // SAFETY: `dW` was written by `matmul_into`, `db` filled, `dx` (when present) by `dx_into`.
    unsafe { out.set_len(nw + nb + nx) };
    out
}

/// `dx (B x in) = g (B x out) * W (out x in)`, a sum over the outputs, which `gemm` runs on one
/// thread however many there are. With many outputs (CNN3d's last layer) it runs in blocks of
/// [`DX_BLOCK`] outputs on rayon's threads, and the blocks' sums are added in order.
fn dx_into<T: Elem>(d: &Dims, w: &[T], g: &[T], dx: &mut [MaybeUninit<T>]) {
    let Dims {
        batch,
        inputs,
        outputs,
    } = *d;
    let blocks = outputs.div_ceil(DX_BLOCK);
    if blocks <= 1 {
        let shape = [batch, inputs, outputs];
        matmul_into(shape, dx, (g, outputs, 1), (w, inputs, 1), d.parallelism());
        return;
    }
    let block = |k: usize| {
        let (o0, len) = (k * DX_BLOCK, DX_BLOCK.min(outputs - k * DX_BLOCK));
        let mut part = vec![T::ZERO; batch * inputs];
        let (gk, wk) = ((&g[o0..], outputs, 1), (&w[o0 * inputs..], inputs, 1));
        matmul(
            [batch, inputs, len],
            &mut part,
            false,
            gk,
            wk,
            Parallelism::None,
        );
        part
    };
    let parts: Vec<Vec<T>> = if rayon::current_num_threads() > 1 {
        (0..blocks).into_par_iter().map(block).collect()
    } else {
        (0..blocks).map(block).collect()
    };
    let dx = fill(dx, T::ZERO);
    for part in &parts {
        for (s, &v) in dx.iter_mut().zip(part) {
            *s += v;
        }
    }
}

/// Forward op: `(x, weight, bias) -> y`.
struct LinearOp(Dims);

/// Backward op: `(x, weight, grad_y) -> [dW, db, dx]` flattened.
struct LinearGrad {
    dims: Dims,
    need_dx: bool,
}

/// The three contiguous f32 or f64 slices of a ternary op, passed to `f32_op` or `f64_op`.
#[allow(clippy::too_many_arguments)]
fn dispatch(
    name: &str,
    (s1, l1): (&CpuStorage, &Layout),
    (s2, l2): (&CpuStorage, &Layout),
    (s3, l3): (&CpuStorage, &Layout),
    f32_op: impl FnOnce(&[f32], &[f32], &[f32]) -> Vec<f32>,
    f64_op: impl FnOnce(&[f64], &[f64], &[f64]) -> Vec<f64>,
) -> Result<CpuStorage> {
    Ok(match (s1, s2, s3) {
        (CpuStorage::F32(a), CpuStorage::F32(b), CpuStorage::F32(c)) => CpuStorage::F32(f32_op(
            contiguous(a, l1, name)?,
            contiguous(b, l2, name)?,
            contiguous(c, l3, name)?,
        )),
        (CpuStorage::F64(a), CpuStorage::F64(b), CpuStorage::F64(c)) => CpuStorage::F64(f64_op(
            contiguous(a, l1, name)?,
            contiguous(b, l2, name)?,
            contiguous(c, l3, name)?,
        )),
        (a, b, c) => candle_core::bail!(
            "{name}: all three tensors must be f32 or all f64, got {:?}, {:?}, {:?}",
            a.dtype(),
            b.dtype(),
            c.dtype()
        ),
    })
}

impl CustomOp3 for LinearOp {
    fn name(&self) -> &'static str {
        "linear"
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
        let d = &self.0;
        let storage = dispatch(
            self.name(),
            (s1, l1),
            (s2, l2),
            (s3, l3),
            |x, w, b| forward(d, x, w, b),
            |x, w, b| forward(d, x, w, b),
        )?;
        Ok((storage, Shape::from((d.batch, d.outputs))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let need_dx = x.track_op();
        let grad = grad.contiguous()?;
        let op = LinearGrad {
            dims: self.0,
            need_dx,
        };
        let packed = x.apply_op3_no_bwd(w, &grad, &op)?;
        unpack_grads(&packed, x, w, b, need_dx)
    }
}

impl CustomOp3 for LinearGrad {
    fn name(&self) -> &'static str {
        "linear-grad"
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
        let (d, need_dx) = (&self.dims, self.need_dx);
        let storage = dispatch(
            self.name(),
            (s1, l1),
            (s2, l2),
            (s3, l3),
            |x, w, g| backward(d, x, w, g, need_dx),
            |x, w, g| backward(d, x, w, g, need_dx),
        )?;
        let len = d.outputs * d.inputs + d.outputs + if need_dx { d.batch * d.inputs } else { 0 };
        Ok((storage, Shape::from(len)))
    }
}

/// `x W^T + b` for `x` `(B, in)`, `weight` `(out, in)` and `bias` `(out,)`: PyTorch's
/// `nn.functional.linear` on two-dimensional input, f32 or f64 on the CPU. Differentiable in all
/// three.
pub fn linear(x: &Tensor, weight: &Tensor, bias: &Tensor) -> Result<Tensor> {
    let (batch, inputs) = x.dims2()?;
    let (outputs, w_inputs) = weight.dims2()?;
    if w_inputs != inputs || bias.dims() != [outputs] {
        candle_core::bail!(
            "linear: input {:?}, weight {:?} and bias {:?} do not fit; expected (B, in), \
             (out, in) and (out,)",
            x.dims(),
            weight.dims(),
            bias.dims()
        )
    }
    let dims = Dims {
        batch,
        inputs,
        outputs,
    };
    x.contiguous()?
        .apply_op3(&weight.contiguous()?, &bias.contiguous()?, LinearOp(dims))
}

/// A linear layer on `(B, in)` input with weight `(out, in)` and bias `(out,)`, running
/// [`linear`].
#[derive(Debug, Clone)]
pub struct Linear {
    weight: Tensor,
    bias: Tensor,
}

impl Linear {
    /// Creates (or fetches from `vb`) the variables `weight` and `bias`, initialised like
    /// PyTorch's `nn.Linear`: uniform in `±1/sqrt(in_features)`.
    pub fn new(vb: VarBuilder, in_features: usize, out_features: usize) -> Result<Self> {
        let init = fan_in_uniform(in_features);
        let weight = vb.get_with_hints((out_features, in_features), "weight", init)?;
        let bias = vb.get_with_hints(out_features, "bias", init)?;
        Ok(Self { weight, bias })
    }

    /// The weight `(out, in)`.
    pub fn weight(&self) -> &Tensor {
        &self.weight
    }

    /// The bias `(out,)`.
    pub fn bias(&self) -> &Tensor {
        &self.bias
    }
}

impl Module for Linear {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        linear(xs, &self.weight, &self.bias)
    }
}
