//! 3D layers that candle lacks: a differentiable [`conv3d`] and [`max_pool3d`], and their modules
//! [`Conv3d`] and [`MaxPool3d`] in the style of candle-nn.
//!
//! Both work on `(batch, channels, depth, height, width)` tensors and train with `backward()`.
//! The convolution is built from candle ops with exact gradients (`index_select`, `reshape`,
//! `permute`, `matmul`, `conv2d`); the pooling is a custom op with its own one-pass forward and
//! backward. candle's own `max_pool2d` is avoided on purpose: its backward pass scales gradients by
//! `1/(k*k)`.
use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Module, Result, Tensor};
use candle_nn::{Init, VarBuilder};

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

/// Indices `o*stride + k` for `o` in `0..out`, `k` in `0..kernel` (window-major), as a `u32` tensor.
fn window_indices(out: usize, kernel: usize, stride: usize, x: &Tensor) -> Result<Tensor> {
    let ids: Vec<u32> = (0..out)
        .flat_map(|o| (0..kernel).map(move |k| (o * stride + k) as u32))
        .collect();
    Tensor::from_vec(ids, out * kernel, x.device())
}

/// 3D convolution of `x` `(B, Cin, D, H, W)` with `weight` `(Cout, Cin, kD, kH, kW)`, an optional
/// `bias` `(Cout,)`, the same `stride` and zero `padding` on every spatial axis.
///
/// Returns `(B, Cout, Do, Ho, Wo)` with `Do = (D + 2*padding - kD) / stride + 1` (likewise for H, W),
/// the same numbers as PyTorch's `nn.functional.conv3d`. Differentiable in `x`, `weight` and `bias`.
///
/// How: the input is zero-padded. When `kernel == stride` on every axis (the CNN3d case) the
/// windows do not overlap and the convolution is one matrix product over `k^3` patches. Otherwise
/// the depth windows are gathered with `index_select` and folded into the channel axis, so one 2D
/// convolution over `(B*Do, Cin*kD, H', W')` with a `(Cout, Cin*kD, kH, kW)` kernel does the work.
pub fn conv3d(
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    stride: usize,
    padding: usize,
) -> Result<Tensor> {
    let (_, cin, d, h, w) = x.dims5()?;
    let (cout, wcin, kd, kh, kw) = weight.dims5()?;
    if wcin != cin {
        candle_core::bail!(
            "conv3d: input has {cin} channels but the weight expects {wcin} (weight shape {:?})",
            weight.dims()
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
    // Pad all three axes here and crop height and width to the part the windows cover, so the 2D
    // convolution runs with padding 0 on an exact fit. candle's conv2d backward derives the
    // transposed convolution's output padding from the height alone and fails (shape mismatch)
    // when height and width leave different remainders; an exact fit avoids that case.
    let xp = if padding > 0 {
        x.pad_with_zeros(2, padding, padding)?
            .pad_with_zeros(3, padding, padding)?
            .pad_with_zeros(4, padding, padding)?
    } else {
        x.clone()
    };
    let y = if kd == stride && kh == stride && kw == stride {
        conv3d_patches(&xp, weight, [dout, hout, wout])?
    } else {
        conv3d_windows(&xp, weight, stride, [dout, hout, wout])?
    };
    match bias {
        Some(bias) => y.broadcast_add(&bias.reshape((1, cout, 1, 1, 1))?),
        None => Ok(y),
    }
}

/// The general case: depth windows folded into channels, then one `conv2d` (padding 0, exact fit).
fn conv3d_windows(
    xp: &Tensor,
    weight: &Tensor,
    stride: usize,
    [dout, hout, wout]: [usize; 3],
) -> Result<Tensor> {
    let (b, cin, _, _, _) = xp.dims5()?;
    let (cout, _, kd, kh, kw) = weight.dims5()?;
    let (hp, wp) = ((hout - 1) * stride + kh, (wout - 1) * stride + kw);
    let xp = xp.narrow(3, 0, hp)?.narrow(4, 0, wp)?.contiguous()?;
    let ids = window_indices(dout, kd, stride, &xp)?;
    let windows = xp
        .index_select(&ids, 2)? // (B, Cin, Do*kD, Hp, Wp)
        .reshape((b, cin, dout, kd, hp, wp))?
        .permute((0, 2, 1, 3, 4, 5))? // (B, Do, Cin, kD, Hp, Wp)
        .contiguous()?
        .reshape((b * dout, cin * kd, hp, wp))?;
    let kernel = weight.reshape((cout, cin * kd, kh, kw))?;
    windows
        .conv2d(&kernel, 0, stride, 1, 1)? // (B*Do, Cout, Ho, Wo)
        .reshape((b, dout, cout, hout, wout))?
        .permute((0, 2, 1, 3, 4))?
        .contiguous()
}

/// The case `kernel == stride` (every CNN3d convolution): windows do not overlap, so the padded
/// input `xp` is cut into `k^3` patches and the convolution is one matrix product, several times
/// faster than the conv2d route (whose backward pass runs a slow transposed convolution).
fn conv3d_patches(xp: &Tensor, weight: &Tensor, [dout, hout, wout]: [usize; 3]) -> Result<Tensor> {
    let (b, cin, _, _, _) = xp.dims5()?;
    let (cout, _, k, _, _) = weight.dims5()?;
    let patches = xp
        .narrow(2, 0, dout * k)?
        .narrow(3, 0, hout * k)?
        .narrow(4, 0, wout * k)?
        .contiguous()?
        .reshape(vec![b, cin, dout, k, hout, k, wout, k])?
        .permute([0, 2, 4, 6, 1, 3, 5, 7])? // (B, Do, Ho, Wo, Cin, k, k, k)
        .contiguous()?
        .reshape((b * dout * hout * wout, cin * k * k * k))?;
    let kernel = weight.reshape((cout, cin * k * k * k))?;
    patches
        .matmul(&kernel.t()?)? // (B*Do*Ho*Wo, Cout)
        .reshape((b, dout, hout, wout, cout))?
        .permute((0, 4, 1, 2, 3))?
        .contiguous()
}

/// Window geometry of a 3D max pooling over a contiguous `(B, C, D, H, W)` input.
#[derive(Debug, Clone, Copy)]
struct Pool3d {
    kernel: usize,
    stride: usize,
    padding: usize,
}

impl Pool3d {
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
                        for iz in z0..z1 {
                            for iy in y0..y1 {
                                let row = base + (iz * h + iy) * w;
                                for i in row + x0..row + x1 {
                                    // NaN propagates like PyTorch: a NaN is taken as the maximum.
                                    let (v, top) = (x[i], x[best]);
                                    let (v_nan, top_nan) = (
                                        v.partial_cmp(&v).is_none(),
                                        top.partial_cmp(&top).is_none(),
                                    );
                                    if v > top || (v_nan && !top_nan) {
                                        best = i;
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

/// The contiguous data of `s` under `l`, or an error.
fn contiguous<'a, T>(data: &'a [T], l: &Layout, name: &str) -> Result<&'a [T]> {
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&data[a..b]),
        None => candle_core::bail!("{name}: input must be contiguous"),
    }
}

impl CustomOp1 for Pool3d {
    fn name(&self) -> &'static str {
        "max-pool3d"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, candle_core::Shape)> {
        let (dims, out) = self.dims(l.shape())?;
        let n_out = dims[0] * dims[1] * out.iter().product::<usize>();
        let shape = candle_core::Shape::from((dims[0], dims[1], out[0], out[1], out[2]));
        let storage = match s {
            CpuStorage::F32(x) => {
                let x = contiguous(x, l, self.name())?;
                let mut y = vec![0f32; n_out];
                self.for_each_argmax(x, dims, out, |o, i| y[o] = x[i]);
                CpuStorage::F32(y)
            }
            CpuStorage::F64(x) => {
                let x = contiguous(x, l, self.name())?;
                let mut y = vec![0f64; n_out];
                self.for_each_argmax(x, dims, out, |o, i| y[o] = x[i]);
                CpuStorage::F64(y)
            }
            other => {
                candle_core::bail!("max_pool3d: supports f32 and f64, got {:?}", other.dtype())
            }
        };
        Ok((storage, shape))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        let grad = grad_res.contiguous()?;
        Ok(Some(arg.apply_op2_no_bwd(&grad, &Pool3dGrad(*self))?))
    }
}

/// Backward of [`Pool3d`]: `(input, grad_output) -> grad_input`, each output gradient added to
/// the first maximum of its window.
struct Pool3dGrad(Pool3d);

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
        let (dims, out) = self.0.dims(l1.shape())?;
        let n_in = l1.shape().elem_count();
        let storage = match (s1, s2) {
            (CpuStorage::F32(x), CpuStorage::F32(g)) => {
                let (x, g) = (
                    contiguous(x, l1, self.name())?,
                    contiguous(g, l2, self.name())?,
                );
                let mut dx = vec![0f32; n_in];
                self.0.for_each_argmax(x, dims, out, |o, i| dx[i] += g[o]);
                CpuStorage::F32(dx)
            }
            (CpuStorage::F64(x), CpuStorage::F64(g)) => {
                let (x, g) = (
                    contiguous(x, l1, self.name())?,
                    contiguous(g, l2, self.name())?,
                );
                let mut dx = vec![0f64; n_in];
                self.0.for_each_argmax(x, dims, out, |o, i| dx[i] += g[o]);
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
        kernel,
        stride,
        padding,
    })
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
        let fan_in = (in_channels * kernel * kernel * kernel) as f64;
        let bound = 1.0 / fan_in.sqrt();
        let init = Init::Uniform {
            lo: -bound,
            up: bound,
        };
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

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device, Var};
    use rand::{RngExt, SeedableRng, rngs::StdRng};

    fn random(rng: &mut StdRng, n: usize) -> Vec<f64> {
        (0..n).map(|_| rng.random::<f64>() * 2.0 - 1.0).collect()
    }

    fn values(x: &Tensor) -> Vec<f64> {
        x.to_dtype(DType::F64)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap()
    }

    /// Plain nested loops: PyTorch's definition of conv3d.
    #[allow(clippy::too_many_arguments)]
    fn naive_conv3d(
        x: &[f64],
        [b, cin, d, h, w]: [usize; 5],
        wt: &[f64],
        [cout, k]: [usize; 2],
        bias: &[f64],
        s: usize,
        p: usize,
    ) -> (Vec<f64>, [usize; 5]) {
        let (od, oh, ow) = (
            out_len(d, k, s, p).unwrap(),
            out_len(h, k, s, p).unwrap(),
            out_len(w, k, s, p).unwrap(),
        );
        let mut y = vec![0.0; b * cout * od * oh * ow];
        for n in 0..b {
            for co in 0..cout {
                for z in 0..od {
                    for yy in 0..oh {
                        for xx in 0..ow {
                            let mut acc = bias[co];
                            for ci in 0..cin {
                                for kz in 0..k {
                                    for ky in 0..k {
                                        for kx in 0..k {
                                            let iz = (z * s + kz) as isize - p as isize;
                                            let iy = (yy * s + ky) as isize - p as isize;
                                            let ix = (xx * s + kx) as isize - p as isize;
                                            if iz < 0 || iy < 0 || ix < 0 {
                                                continue;
                                            }
                                            let (iz, iy, ix) =
                                                (iz as usize, iy as usize, ix as usize);
                                            if iz >= d || iy >= h || ix >= w {
                                                continue;
                                            }
                                            acc += x[(((n * cin + ci) * d + iz) * h + iy) * w + ix]
                                                * wt[(((co * cin + ci) * k + kz) * k + ky) * k
                                                    + kx];
                                        }
                                    }
                                }
                            }
                            y[(((n * cout + co) * od + z) * oh + yy) * ow + xx] = acc;
                        }
                    }
                }
            }
        }
        (y, [b, cout, od, oh, ow])
    }

    /// Plain nested loops: PyTorch's definition of max_pool3d (padding counts as -inf).
    fn naive_max_pool3d(
        x: &[f64],
        [b, c, d, h, w]: [usize; 5],
        k: usize,
        s: usize,
        p: usize,
    ) -> (Vec<f64>, [usize; 5]) {
        let (od, oh, ow) = (
            out_len(d, k, s, p).unwrap(),
            out_len(h, k, s, p).unwrap(),
            out_len(w, k, s, p).unwrap(),
        );
        let mut y = vec![f64::NEG_INFINITY; b * c * od * oh * ow];
        for n in 0..b * c {
            for z in 0..od {
                for yy in 0..oh {
                    for xx in 0..ow {
                        let mut m = f64::NEG_INFINITY;
                        for kz in 0..k {
                            for ky in 0..k {
                                for kx in 0..k {
                                    let iz = (z * s + kz) as isize - p as isize;
                                    let iy = (yy * s + ky) as isize - p as isize;
                                    let ix = (xx * s + kx) as isize - p as isize;
                                    if iz < 0 || iy < 0 || ix < 0 {
                                        continue;
                                    }
                                    let (iz, iy, ix) = (iz as usize, iy as usize, ix as usize);
                                    if iz >= d || iy >= h || ix >= w {
                                        continue;
                                    }
                                    m = m.max(x[((n * d + iz) * h + iy) * w + ix]);
                                }
                            }
                        }
                        y[((n * od + z) * oh + yy) * ow + xx] = m;
                    }
                }
            }
        }
        (y, [b, c, od, oh, ow])
    }

    fn max_abs_diff(a: &[f64], b: &[f64]) -> f64 {
        assert_eq!(a.len(), b.len());
        a.iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f64::max)
    }

    #[test]
    fn conv3d_forward_matches_naive_loops() {
        let mut rng = StdRng::seed_from_u64(1);
        let dev = Device::Cpu;
        // (input dims, cout, k, stride, padding): includes stride 2 / padding 1 and uneven sizes.
        let cases = [
            ([2, 3, 5, 6, 4], 4, 2, 1, 0),
            ([1, 2, 7, 5, 6], 3, 3, 1, 1),
            ([2, 3, 16, 16, 16], 6, 2, 2, 1),
            ([1, 2, 9, 8, 7], 2, 3, 2, 1),
            ([1, 1, 5, 5, 5], 2, 2, 3, 1),
            ([1, 2, 7, 8, 9], 3, 3, 3, 1),
            ([2, 2, 6, 6, 6], 2, 2, 2, 0),
        ];
        for (dims, cout, k, s, p) in cases {
            let n: usize = dims.iter().product();
            let x = random(&mut rng, n);
            let wt = random(&mut rng, cout * dims[1] * k * k * k);
            let bias = random(&mut rng, cout);
            let (want, want_dims) = naive_conv3d(&x, dims, &wt, [cout, k], &bias, s, p);
            for dtype in [DType::F32, DType::F64] {
                let xt = Tensor::from_vec(x.clone(), dims.to_vec(), &dev)
                    .unwrap()
                    .to_dtype(dtype)
                    .unwrap();
                let wtt = Tensor::from_vec(wt.clone(), (cout, dims[1], k, k, k), &dev)
                    .unwrap()
                    .to_dtype(dtype)
                    .unwrap();
                let bt = Tensor::from_vec(bias.clone(), cout, &dev)
                    .unwrap()
                    .to_dtype(dtype)
                    .unwrap();
                let y = conv3d(&xt, &wtt, Some(&bt), s, p).unwrap();
                assert_eq!(y.dims(), &want_dims[..], "case {dims:?} k{k} s{s} p{p}");
                let err = max_abs_diff(&values(&y), &want);
                assert!(
                    err < 1e-4,
                    "case {dims:?} k{k} s{s} p{p} {dtype:?}: max err {err}"
                );
            }
        }
    }

    #[test]
    fn max_pool3d_forward_matches_naive_loops() {
        let mut rng = StdRng::seed_from_u64(2);
        let dev = Device::Cpu;
        let cases = [
            ([2, 3, 9, 9, 9], 2, 2, 1),
            ([1, 2, 5, 6, 7], 2, 2, 1),
            ([2, 2, 2, 2, 2], 2, 2, 0),
            ([1, 3, 8, 7, 6], 3, 2, 1),
            ([1, 1, 6, 5, 4], 3, 1, 0),
            ([1, 2, 7, 7, 7], 2, 2, 0),
        ];
        for (dims, k, s, p) in cases {
            let n: usize = dims.iter().product();
            let x = random(&mut rng, n);
            let (want, want_dims) = naive_max_pool3d(&x, dims, k, s, p);
            let xt = Tensor::from_vec(x, dims.to_vec(), &dev)
                .unwrap()
                .to_dtype(DType::F32)
                .unwrap();
            let y = max_pool3d(&xt, k, s, p).unwrap();
            assert_eq!(y.dims(), &want_dims[..], "case {dims:?} k{k} s{s} p{p}");
            let err = max_abs_diff(&values(&y), &want);
            assert!(err < 1e-6, "case {dims:?} k{k} s{s} p{p}: max err {err}");
        }
    }

    /// Checks the gradient of `sum(f(inputs) * r)` with respect to every input against central
    /// finite differences, on f64 tensors. Returns the largest relative error seen.
    fn check_gradients(inputs: &[(Vec<f64>, Vec<usize>)], f: &dyn Fn(&[Tensor]) -> Tensor) -> f64 {
        let dev = Device::Cpu;
        let vars: Vec<Var> = inputs
            .iter()
            .map(|(v, s)| {
                Var::from_tensor(&Tensor::from_vec(v.clone(), s.clone(), &dev).unwrap()).unwrap()
            })
            .collect();
        let tensors: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
        let y = f(&tensors);
        let mut rng = StdRng::seed_from_u64(99);
        let r = Tensor::from_vec(random(&mut rng, y.elem_count()), y.dims(), &dev).unwrap();
        let loss = (&y * &r).unwrap().sum_all().unwrap();
        let grads = loss.backward().unwrap();
        let scalar = |ts: &[Tensor]| -> f64 {
            (&f(ts) * &r)
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f64>()
                .unwrap()
        };
        let eps = 1e-6;
        let mut worst: f64 = 0.0;
        for (i, (v, s)) in inputs.iter().enumerate() {
            let analytic = values(grads.get(vars[i].as_tensor()).expect("gradient present"));
            assert_eq!(analytic.len(), v.len());
            for j in 0..v.len() {
                let mut ts = tensors.clone();
                let mut plus = v.clone();
                plus[j] += eps;
                ts[i] = Tensor::from_vec(plus, s.clone(), &dev).unwrap();
                let fp = scalar(&ts);
                let mut minus = v.clone();
                minus[j] -= eps;
                ts[i] = Tensor::from_vec(minus, s.clone(), &dev).unwrap();
                let fm = scalar(&ts);
                let numeric = (fp - fm) / (2.0 * eps);
                let rel =
                    (numeric - analytic[j]).abs() / (1e-3 + numeric.abs().max(analytic[j].abs()));
                worst = worst.max(rel);
                assert!(
                    rel < 1e-5,
                    "input {i} element {j}: analytic {} vs numeric {numeric}",
                    analytic[j]
                );
            }
        }
        worst
    }

    #[test]
    fn conv3d_gradients_match_finite_differences() {
        let mut rng = StdRng::seed_from_u64(3);
        // k == s (matrix-product path, uneven crop), general path with and without stride.
        for (dims, cout, k, s, p) in [
            ([2, 2, 5, 4, 5], 3, 2, 2, 1),
            ([1, 2, 7, 5, 6], 2, 3, 3, 1),
            ([1, 2, 4, 5, 3], 2, 3, 1, 1),
            ([1, 2, 5, 4, 6], 2, 2, 3, 1),
            ([1, 1, 6, 5, 4], 2, 3, 2, 1),
        ] {
            let n: usize = dims.iter().product();
            let inputs = vec![
                (random(&mut rng, n), dims.to_vec()),
                (
                    random(&mut rng, cout * dims[1] * k * k * k),
                    vec![cout, dims[1], k, k, k],
                ),
                (random(&mut rng, cout), vec![cout]),
            ];
            let worst = check_gradients(&inputs, &|t| {
                conv3d(&t[0], &t[1], Some(&t[2]), s, p).unwrap()
            });
            assert!(worst < 1e-5);
        }
    }

    #[test]
    fn max_pool3d_gradients_match_finite_differences() {
        // Kernel 2 with padding 1 (as in CNN3d), kernel 2 without padding, and overlapping windows
        // (kernel 3, stride 2) where one input can be the max of two windows.
        let mut rng = StdRng::seed_from_u64(4);
        for (dims, k, s, p) in [
            ([2, 2, 5, 4, 3], 2, 2, 1),
            ([1, 2, 4, 4, 4], 2, 2, 0),
            ([1, 1, 5, 5, 5], 3, 2, 1),
        ] {
            let n: usize = dims.iter().product();
            let inputs = vec![(random(&mut rng, n), dims.to_vec())];
            let worst = check_gradients(&inputs, &|t| max_pool3d(&t[0], k, s, p).unwrap());
            assert!(worst < 1e-5);
        }
    }

    #[test]
    fn max_pool3d_gradient_is_not_scaled() {
        // A direct check of the 1/(k*k) bug: every window max gets gradient exactly 1.
        let dev = Device::Cpu;
        let x = Var::from_tensor(
            &Tensor::arange(0f32, 64.0, &dev)
                .unwrap()
                .reshape((1, 1, 4, 4, 4))
                .unwrap(),
        )
        .unwrap();
        let y = max_pool3d(x.as_tensor(), 2, 2, 0).unwrap();
        let g = y.sum_all().unwrap().backward().unwrap();
        let g = values(g.get(x.as_tensor()).unwrap());
        assert_eq!(g.iter().sum::<f64>(), 8.0);
        assert!(g.iter().all(|&v| v == 0.0 || v == 1.0));
    }

    #[test]
    fn modules_init_like_pytorch_and_describe_themselves() {
        let varmap = candle_nn::VarMap::new();
        let vb = crate::estimator::init::seeded_var_builder(&varmap, 5, DType::F32, &Device::Cpu);
        let conv = Conv3d::new(vb.pp("c"), 3, 6, 2, 2, 1).unwrap();
        let bound = 1.0 / (24f64).sqrt();
        for t in [conv.weight(), conv.bias()] {
            assert!(values(t).iter().all(|v| v.abs() <= bound));
        }
        assert_eq!(conv.num_params(), 6 * 3 * 8 + 6);
        assert_eq!(conv.out_dims([16, 16, 16]), Some([9, 9, 9]));
        assert_eq!(
            conv.to_string(),
            "Conv3d(3, 6, kernel_size=(2, 2, 2), stride=(2, 2, 2), padding=(1, 1, 1))"
        );
        let pool = MaxPool3d::new(2, 1);
        assert_eq!(pool.out_dims([9, 9, 9]), Some([5, 5, 5]));
        let x = Tensor::zeros((1, 3, 16, 16, 16), DType::F32, &Device::Cpu).unwrap();
        assert_eq!(
            pool.forward(&conv.forward(&x).unwrap()).unwrap().dims(),
            &[1, 6, 5, 5, 5]
        );
        assert!(max_pool3d(&x, 2, 2, 2).is_err());
    }
}
