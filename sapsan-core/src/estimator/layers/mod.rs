//! 3D layers that candle lacks: a differentiable [`conv3d`] and [`max_pool3d`], and their modules
//! [`Conv3d`] and [`MaxPool3d`] in the style of candle-nn; and a fused [`linear`] ([`Linear`]).
//!
//! The 3D ones work on `(batch, channels, depth, height, width)` tensors; all train with `backward()`.
//! Each is one custom op with its own forward and fused backward pass (f32 or f64, CPU):
//! - `conv`: the convolution as im2col + one matrix product (the `gemm` crate candle itself
//!   uses) per sample, backward recomputing the columns and producing the weight, bias and (only
//!   when needed) input gradients in one pass; samples run in parallel on rayon's pool.
//! - `linear`: `x W^T + b` on `(B, in)` input, whose backward pass writes the weight gradient in
//!   the weight's own layout (candle-nn's `Linear` transposes and copies it twice).
//! - `pool`: max pooling with a one-pass backward (gradient to the first maximum of each window).
//!   candle's own `max_pool2d` is avoided on purpose: its backward pass scales gradients by
//!   `1/(k*k)`.
use std::mem::MaybeUninit;

use candle_core::{Layout, Module, Result, Tensor};
use candle_nn::VarBuilder;

use crate::estimator::init::fan_in_uniform;
use gemm::Parallelism;

pub(crate) mod conv;
pub(crate) mod linear;
pub(crate) mod pool;
#[cfg(test)]
mod tests;

pub use conv::conv3d;
pub use linear::{Linear, linear};
pub use pool::max_pool3d;

/// Element types the custom ops compute in: `f32` and `f64`.
pub(crate) trait Elem:
    candle_core::WithDType
    + Copy
    + Send
    + Sync
    + PartialOrd
    + std::ops::Add<Output = Self>
    + std::ops::AddAssign
    + std::ops::Mul<Output = Self>
    + 'static
{
    /// Additive identity.
    const ZERO: Self;
    /// Multiplicative identity.
    const ONE: Self;
}

impl Elem for f32 {
    const ZERO: Self = 0.0;
    const ONE: Self = 1.0;
}

impl Elem for f64 {
    const ZERO: Self = 0.0;
    const ONE: Self = 1.0;
}

/// The contiguous data of a storage slice under `l`, or an error naming the op.
fn contiguous<'a, T>(data: &'a [T], l: &Layout, name: &str) -> Result<&'a [T]> {
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&data[a..b]),
        None => candle_core::bail!("{name}: input must be contiguous"),
    }
}

/// The contiguous CPU data of a tensor's storage (as `storage_and_layout` lends it) as `T`.
pub(crate) fn cpu_data<'a, T: Elem>(
    storage: &'a candle_core::Storage,
    layout: &Layout,
) -> Result<&'a [T]> {
    let candle_core::Storage::Cpu(cpu) = storage else {
        candle_core::bail!("this network computes on the CPU only")
    };
    contiguous(cpu.as_slice::<T>()?, layout, "tensor data")
}

/// Writes `value` into every entry of `dst` and returns it, now initialised.
pub(crate) fn fill<T: Copy>(dst: &mut [MaybeUninit<T>], value: T) -> &mut [T] {
    for v in dst.iter_mut() {
        v.write(value);
    }
    // SAFETY: the loop wrote every entry.
    unsafe { dst.assume_init_mut() }
}

/// A matrix operand: data, row stride, column stride.
pub(crate) type Operand<'a, T> = (&'a [T], usize, usize);

/// The gradients of `(x, w, b)` from the one flat tensor a fused backward op returns, laid out
/// as `[dW, db, dx]` (`dx` present only when `need_dx`).
pub(crate) fn unpack_grads(
    packed: &Tensor,
    x: &Tensor,
    w: &Tensor,
    b: &Tensor,
    need_dx: bool,
) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
    let (nw, nb) = (w.elem_count(), b.elem_count());
    let dw = packed.narrow(0, 0, nw)?.reshape(w.shape())?;
    let db = packed.narrow(0, nw, nb)?;
    let dx = if need_dx {
        Some(
            packed
                .narrow(0, nw + nb, x.elem_count())?
                .reshape(x.shape())?,
        )
    } else {
        None
    };
    Ok((dx, Some(dw), Some(db)))
}

/// `dst (m x n, row-major) = [dst +] lhs (m x k) * rhs (k x n)` through the `gemm` crate.
pub(crate) fn matmul<T: Elem>(
    shape: [usize; 3],
    dst: &mut [T],
    accumulate: bool,
    a: Operand<T>,
    b: Operand<T>,
    parallelism: Parallelism,
) {
    let [m, n, _] = shape;
    assert!(dst.len() >= m * n, "matmul: destination too small");
    // SAFETY: `dst` is initialised, so reading it (when accumulating) is sound.
    unsafe { gemm_raw(shape, dst.as_mut_ptr(), accumulate, a, b, parallelism) }
}

/// [`matmul`] without accumulating, into a destination that needs no initialisation: `gemm`
/// writes every entry of `dst[..m * n]`, which is returned initialised.
pub(crate) fn matmul_into<'d, T: Elem>(
    shape: [usize; 3],
    dst: &'d mut [MaybeUninit<T>],
    a: Operand<T>,
    b: Operand<T>,
    parallelism: Parallelism,
) -> &'d mut [T] {
    let [m, n, _] = shape;
    let dst = &mut dst[..m * n];
    // SAFETY: without accumulating, gemm_raw only writes `dst` (every entry of it: gemm's
    // product, or zeros when `k` is 0), never reads it; `MaybeUninit<T>` has `T`'s layout.
    unsafe {
        gemm_raw(shape, dst.as_mut_ptr().cast(), false, a, b, parallelism);
        dst.assume_init_mut()
    }
}

/// The product behind [`matmul`] and [`matmul_into`].
///
/// # Safety
/// `dst` must point to `m * n` writable values that do not overlap `a` or `b`, initialised
/// when `accumulate` (they are read then).
unsafe fn gemm_raw<T: Elem>(
    [m, n, k]: [usize; 3],
    dst: *mut T,
    accumulate: bool,
    (a, a_rs, a_cs): Operand<T>,
    (b, b_rs, b_cs): Operand<T>,
    parallelism: Parallelism,
) {
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            for i in 0..m * n {
                // SAFETY: `i < m * n`, inside `dst` (the caller's promise).
                unsafe { dst.add(i).write(T::ZERO) };
            }
        }
        return;
    }
    assert!(
        a.len() > (m - 1) * a_rs + (k - 1) * a_cs && b.len() > (k - 1) * b_rs + (n - 1) * b_cs,
        "matmul: operand too small"
    );
    // SAFETY: the assert above keeps every index gemm forms, `i*rs + j*cs` for `i < rows` and
    // `j < cols` of each matrix, inside its slice; `dst` holds `m * n` values and aliases
    // neither (the caller's promise).
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst,
            1,
            n as isize,
            accumulate,
            a.as_ptr(),
            a_cs as isize,
            a_rs as isize,
            b.as_ptr(),
            b_cs as isize,
            b_rs as isize,
            T::ONE,
            T::ONE,
            false,
            false,
            false,
            parallelism,
        )
    }
}

/// Output length of a convolution or pooling along one axis (PyTorch's formula, `ceil_mode=False`).
///
/// Returns `None` when the kernel does not fit into the padded input.
pub fn out_len(len: usize, kernel: usize, stride: usize, padding: usize) -> Option<usize> {
    let padded = len + 2 * padding;
    if stride == 0 || kernel == 0 || padded < kernel {
        return None;
    }
    Some((padded - kernel) / stride + 1)
}

/// A 3D convolution layer with weight `(out, in, k, k, k)` and bias `(out,)`.
///
/// Initialised like PyTorch's `nn.Conv3d`: weight and bias uniform in `±1/sqrt(fan_in)` with
/// `fan_in = in * k^3`.
#[derive(Debug, Clone)]
pub struct Conv3d {
    weight: Tensor,
    bias: Tensor,
    in_channels: usize,
    out_channels: usize,
    kernel: usize,
    stride: usize,
    padding: usize,
}

impl Conv3d {
    /// Creates (or fetches from `vb`) the variables `weight` and `bias` of a convolution from
    /// `in_channels` to `out_channels` with a cubic `kernel`, `stride` and zero `padding`.
    pub fn new(
        vb: VarBuilder,
        in_channels: usize,
        out_channels: usize,
        kernel: usize,
        stride: usize,
        padding: usize,
    ) -> Result<Self> {
        let init = fan_in_uniform(in_channels * kernel * kernel * kernel);
        let weight = vb.get_with_hints(
            (out_channels, in_channels, kernel, kernel, kernel),
            "weight",
            init,
        )?;
        let bias = vb.get_with_hints(out_channels, "bias", init)?;
        Ok(Self {
            weight,
            bias,
            in_channels,
            out_channels,
            kernel,
            stride,
            padding,
        })
    }

    /// The weight `(out, in, k, k, k)`.
    pub fn weight(&self) -> &Tensor {
        &self.weight
    }

    /// The bias `(out,)`.
    pub fn bias(&self) -> &Tensor {
        &self.bias
    }

    /// Output shape `(C, D, H, W)` for an input of spatial size `dhw`, or `None` if it does not fit.
    pub fn out_dims(&self, dhw: [usize; 3]) -> Option<[usize; 3]> {
        let f = |n| out_len(n, self.kernel, self.stride, self.padding);
        Some([f(dhw[0])?, f(dhw[1])?, f(dhw[2])?])
    }

    /// Number of trainable parameters.
    pub fn num_params(&self) -> usize {
        self.weight.elem_count() + self.bias.elem_count()
    }

    /// The kernels' geometry for an input of shape `(B, Cin, D, H, W)`.
    pub(crate) fn geom(&self, input: [usize; 5]) -> Result<conv::Geom> {
        conv::Geom::new(
            input,
            self.weight.dims5()?.into(),
            self.stride,
            self.padding,
        )
    }
}

impl std::fmt::Display for Conv3d {
    /// PyTorch-style description, e.g. `Conv3d(3, 6, kernel_size=(2, 2, 2), stride=(2, 2, 2), padding=(1, 1, 1))`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (k, s, p) = (self.kernel, self.stride, self.padding);
        write!(
            f,
            "Conv3d({}, {}, kernel_size=({k}, {k}, {k}), stride=({s}, {s}, {s}), padding=({p}, {p}, {p}))",
            self.in_channels, self.out_channels
        )
    }
}

impl Module for Conv3d {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        conv3d(
            xs,
            &self.weight,
            Some(&self.bias),
            self.stride,
            self.padding,
        )
    }
}

/// A 3D max-pooling layer (no parameters); stride defaults to the kernel size, as in PyTorch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MaxPool3d {
    /// Window edge length.
    pub kernel: usize,
    /// Step between windows.
    pub stride: usize,
    /// `-inf` padding on each side of every spatial axis.
    pub padding: usize,
}

impl MaxPool3d {
    /// Pooling with window `kernel`, stride `kernel` and `padding`.
    pub fn new(kernel: usize, padding: usize) -> Self {
        Self {
            kernel,
            stride: kernel,
            padding,
        }
    }

    /// Output spatial size for an input of spatial size `dhw`, or `None` if it does not fit.
    pub fn out_dims(&self, dhw: [usize; 3]) -> Option<[usize; 3]> {
        let f = |n| out_len(n, self.kernel, self.stride, self.padding);
        Some([f(dhw[0])?, f(dhw[1])?, f(dhw[2])?])
    }

    /// The kernels' geometry.
    pub(crate) fn geom(&self) -> pool::PoolGeom {
        pool::PoolGeom {
            kernel: self.kernel,
            stride: self.stride,
            padding: self.padding,
        }
    }
}

impl std::fmt::Display for MaxPool3d {
    /// PyTorch-style description, e.g. `MaxPool3d(kernel_size=2, stride=2, padding=1, dilation=1, ceil_mode=False)`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "MaxPool3d(kernel_size={}, stride={}, padding={}, dilation=1, ceil_mode=False)",
            self.kernel, self.stride, self.padding
        )
    }
}

impl Module for MaxPool3d {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        max_pool3d(xs, self.kernel, self.stride, self.padding)
    }
}
