//! A differentiable 3D transposed convolution, which candle lacks: [`conv_transpose3d`] and its
//! layer [`ConvTranspose3d`] (PyTorch's `nn.ConvTranspose3d` with one stride, padding and output
//! padding on every axis, dilation 1, groups 1).
//!
//! The operation is a custom op on `x` and `weight` with its own backward pass: every input voxel
//! scatters `x * weight` into a `k^3` block of the output at `stride` spacing, and the gradients
//! walk the same (input voxel, kernel offset, output voxel) triples:
//!
//! ```text
//! y[b, o, s*i + k - p]  += x[b, c, i] * w[c, o, k]
//! dx[b, c, i]           += dy[b, o, s*i + k - p] * w[c, o, k]
//! dw[c, o, k]           += x[b, c, i] * dy[b, o, s*i + k - p]
//! ```
//! (`i`, `k` run over the three spatial axes; output positions outside `[0, out)` are dropped.)
//! The bias is added with candle's broadcast, so its gradient is candle's. The tests check the
//! forward pass against PyTorch's definition written as plain loops and all three gradients
//! against central finite differences.
use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp2, Layout, Module, Result, Shape, Tensor};
use candle_nn::VarBuilder;

use crate::estimator::init::fan_in_uniform;

/// Output length of a transposed convolution along one axis (PyTorch's formula):
/// `(len - 1) * stride - 2 * padding + kernel + output_padding`; `None` when it is not positive
/// or the settings are not valid (`stride` 0, `output_padding >= stride`).
pub fn out_len_transposed(
    len: usize,
    kernel: usize,
    stride: usize,
    padding: usize,
    output_padding: usize,
) -> Option<usize> {
    if stride == 0 || kernel == 0 || len == 0 || output_padding >= stride {
        return None;
    }
    ((len - 1) * stride + kernel + output_padding)
        .checked_sub(2 * padding)
        .filter(|&n| n > 0)
}

/// The geometry of one transposed convolution: shapes, stride and padding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Geometry {
    batch: usize,
    cin: usize,
    cout: usize,
    input: [usize; 3],
    kernel: [usize; 3],
    output: [usize; 3],
    stride: usize,
    padding: usize,
}

impl Geometry {
    /// Reads the geometry off `x` `(B, Cin, D, H, W)` and `weight` `(Cin, Cout, kD, kH, kW)`.
    fn new(
        x: &Shape,
        weight: &Shape,
        stride: usize,
        padding: usize,
        output_padding: usize,
    ) -> Result<Self> {
        let (batch, cin, d, h, w) = x.dims5()?;
        let (wcin, cout, kd, kh, kw) = weight.dims5()?;
        if wcin != cin {
            candle_core::bail!(
                "conv_transpose3d: input has {cin} channels but the weight (in, out, kD, kH, kW) \
                 expects {wcin} (weight shape {weight:?})"
            )
        }
        let out = |n, k| out_len_transposed(n, k, stride, padding, output_padding);
        let (Some(od), Some(oh), Some(ow)) = (out(d, kd), out(h, kh), out(w, kw)) else {
            candle_core::bail!(
                "conv_transpose3d: kernel {kd}x{kh}x{kw}, stride {stride}, padding {padding}, \
                 output padding {output_padding} give no output for input {d}x{h}x{w} (the \
                 output padding must be below the stride)"
            )
        };
        Ok(Self {
            batch,
            cin,
            cout,
            input: [d, h, w],
            kernel: [kd, kh, kw],
            output: [od, oh, ow],
            stride,
            padding,
        })
    }

    fn output_shape(&self) -> Shape {
        let [d, h, w] = self.output;
        Shape::from((self.batch, self.cout, d, h, w))
    }

    /// The output index along one axis of input index `i` and kernel offset `k`, if inside.
    fn target(&self, axis: usize, i: usize, k: usize) -> Option<usize> {
        (i * self.stride + k)
            .checked_sub(self.padding)
            .filter(|&o| o < self.output[axis])
    }

    /// Calls `f(x_index, w_index, y_index)` for every input element, output channel and kernel
    /// offset whose output position lies inside the output, with row-major indices into
    /// contiguous `x`, `weight` and `y`.
    fn for_each(&self, mut f: impl FnMut(usize, usize, usize)) {
        let [d, h, w] = self.input;
        let [kd, kh, kw] = self.kernel;
        let [od, oh, ow] = self.output;
        let k3 = kd * kh * kw;
        let out_plane = od * oh * ow;
        for b in 0..self.batch {
            for c in 0..self.cin {
                let x_base = (b * self.cin + c) * d * h * w;
                let w_base = c * self.cout * k3;
                let y_base = b * self.cout * out_plane;
                for (i, ki, oi) in self.pairs(0, d, kd) {
                    for (j, kj, oj) in self.pairs(1, h, kh) {
                        for (l, kl, ol) in self.pairs(2, w, kw) {
                            let xi = x_base + (i * h + j) * w + l;
                            let wk = (ki * kh + kj) * kw + kl;
                            let yo = (oi * oh + oj) * ow + ol;
                            for o in 0..self.cout {
                                f(xi, w_base + o * k3 + wk, y_base + o * out_plane + yo);
                            }
                        }
                    }
                }
            }
        }
    }

    /// The (input index, kernel offset, output index) triples along `axis` that land inside.
    fn pairs(&self, axis: usize, len: usize, kernel: usize) -> Vec<(usize, usize, usize)> {
        (0..len)
            .flat_map(|i| (0..kernel).map(move |k| (i, k)))
            .filter_map(|(i, k)| self.target(axis, i, k).map(|o| (i, k, o)))
            .collect()
    }
}

/// The contiguous slice behind a storage, or an error naming the op.
fn contiguous<'a, T>(data: &'a [T], l: &Layout, name: &str) -> Result<&'a [T]> {
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&data[a..b]),
        None => candle_core::bail!("{name}: inputs must be contiguous"),
    }
}

/// Which of the three products a [`ConvT3dOp`] computes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Product {
    /// `y` from `(x, weight)`.
    Forward,
    /// `dx` from `(dy, weight)`.
    GradInput,
    /// `dw` from `(x, dy)`.
    GradWeight,
}

/// One of the three loops of the module docs as a candle op on two tensors.
#[derive(Debug, Clone, Copy)]
struct ConvT3dOp {
    geometry: Geometry,
    product: Product,
}

impl ConvT3dOp {
    fn run<T>(&self, a: &[T], b: &[T]) -> Vec<T>
    where
        T: Copy + Default + std::ops::AddAssign + std::ops::Mul<Output = T>,
    {
        let g = &self.geometry;
        let [d, h, w] = g.input;
        let [kd, kh, kw] = g.kernel;
        match self.product {
            Product::Forward => {
                let mut y = vec![T::default(); g.output_shape().elem_count()];
                g.for_each(|xi, wi, yi| y[yi] += a[xi] * b[wi]);
                y
            }
            Product::GradInput => {
                let mut dx = vec![T::default(); g.batch * g.cin * d * h * w];
                g.for_each(|xi, wi, yi| dx[xi] += a[yi] * b[wi]);
                dx
            }
            Product::GradWeight => {
                let mut dw = vec![T::default(); g.cin * g.cout * kd * kh * kw];
                g.for_each(|xi, wi, yi| dw[wi] += a[xi] * b[yi]);
                dw
            }
        }
    }

    fn shape(&self) -> Shape {
        let g = &self.geometry;
        let [d, h, w] = g.input;
        let [kd, kh, kw] = g.kernel;
        match self.product {
            Product::Forward => g.output_shape(),
            Product::GradInput => Shape::from((g.batch, g.cin, d, h, w)),
            Product::GradWeight => Shape::from((g.cin, g.cout, kd, kh, kw)),
        }
    }
}

impl CustomOp2 for ConvT3dOp {
    fn name(&self) -> &'static str {
        match self.product {
            Product::Forward => "conv-transpose3d",
            Product::GradInput => "conv-transpose3d-grad-input",
            Product::GradWeight => "conv-transpose3d-grad-weight",
        }
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let name = self.name();
        let storage = match (s1, s2) {
            (CpuStorage::F32(a), CpuStorage::F32(b)) => {
                CpuStorage::F32(self.run(contiguous(a, l1, name)?, contiguous(b, l2, name)?))
            }
            (CpuStorage::F64(a), CpuStorage::F64(b)) => {
                CpuStorage::F64(self.run(contiguous(a, l1, name)?, contiguous(b, l2, name)?))
            }
            (a, b) => candle_core::bail!(
                "{name}: supports f32 and f64 tensors of one type, got {:?} and {:?}",
                a.dtype(),
                b.dtype()
            ),
        };
        Ok((storage, self.shape()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        weight: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        if self.product != Product::Forward {
            candle_core::bail!("{}: second derivatives are not implemented", self.name())
        }
        let dy = grad_res.contiguous()?;
        let with = |product| ConvT3dOp { product, ..*self };
        let dx = dy.apply_op2_no_bwd(weight, &with(Product::GradInput))?;
        let dw = x.apply_op2_no_bwd(&dy, &with(Product::GradWeight))?;
        Ok((Some(dx), Some(dw)))
    }
}

/// 3D transposed convolution of `x` `(B, Cin, D, H, W)` with `weight` `(Cin, Cout, kD, kH, kW)`
/// (PyTorch's layout for transposed convolutions), an optional `bias` `(Cout,)`, and the same
/// `stride`, `padding` and `output_padding` on every spatial axis.
///
/// Returns `(B, Cout, Do, Ho, Wo)` with `Do = (D - 1) * stride - 2 * padding + kD +
/// output_padding` (likewise for H, W), the numbers of PyTorch's
/// `nn.functional.conv_transpose3d`. Differentiable in `x`, `weight` and `bias` (f32 or f64, CPU).
pub fn conv_transpose3d(
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    stride: usize,
    padding: usize,
    output_padding: usize,
) -> Result<Tensor> {
    let geometry = Geometry::new(x.shape(), weight.shape(), stride, padding, output_padding)?;
    let op = ConvT3dOp {
        geometry,
        product: Product::Forward,
    };
    let y = x.contiguous()?.apply_op2(&weight.contiguous()?, op)?;
    match bias {
        Some(bias) => y.broadcast_add(&bias.reshape((1, geometry.cout, 1, 1, 1))?),
        None => Ok(y),
    }
}

/// A 3D transposed convolution layer with weight `(in, out, k, k, k)` and bias `(out,)`.
///
/// Initialised like PyTorch's `nn.ConvTranspose3d`: weight and bias uniform in
/// `±1/sqrt(fan_in)`, where PyTorch takes `fan_in = out * k^3` from the weight's second axis.
#[derive(Debug, Clone)]
pub struct ConvTranspose3d {
    weight: Tensor,
    bias: Tensor,
    in_channels: usize,
    out_channels: usize,
    kernel: usize,
    stride: usize,
    padding: usize,
    output_padding: usize,
}

impl ConvTranspose3d {
    /// Creates (or fetches from `vb`) the variables `weight` and `bias` of a transposed
    /// convolution from `in_channels` to `out_channels` with a cubic `kernel`, `stride`,
    /// `padding` and `output_padding` (below `stride`).
    pub fn new(
        vb: VarBuilder,
        in_channels: usize,
        out_channels: usize,
        kernel: usize,
        [stride, padding, output_padding]: [usize; 3],
    ) -> Result<Self> {
        if output_padding >= stride.max(1) {
            candle_core::bail!(
                "ConvTranspose3d: output padding {output_padding} must be below the stride {stride}"
            )
        }
        let init = fan_in_uniform(out_channels * kernel * kernel * kernel);
        let weight = vb.get_with_hints(
            (in_channels, out_channels, kernel, kernel, kernel),
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
            output_padding,
        })
    }

    /// The weight `(in, out, k, k, k)`.
    pub fn weight(&self) -> &Tensor {
        &self.weight
    }

    /// Output spatial size for an input of spatial size `dhw`, or `None` if there is none.
    pub fn out_dims(&self, dhw: [usize; 3]) -> Option<[usize; 3]> {
        let f = |n| {
            out_len_transposed(
                n,
                self.kernel,
                self.stride,
                self.padding,
                self.output_padding,
            )
        };
        Some([f(dhw[0])?, f(dhw[1])?, f(dhw[2])?])
    }

    /// Number of trainable parameters.
    pub fn num_params(&self) -> usize {
        self.weight.elem_count() + self.bias.elem_count()
    }
}

impl std::fmt::Display for ConvTranspose3d {
    /// PyTorch-style description, e.g. `ConvTranspose3d(6, 3, kernel_size=(3, 3, 3),
    /// stride=(2, 2, 2), padding=(1, 1, 1), output_padding=(1, 1, 1))`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (k, s, p, o) = (self.kernel, self.stride, self.padding, self.output_padding);
        write!(
            f,
            "ConvTranspose3d({}, {}, kernel_size=({k}, {k}, {k}), stride=({s}, {s}, {s}), \
             padding=({p}, {p}, {p}), output_padding=({o}, {o}, {o}))",
            self.in_channels, self.out_channels
        )
    }
}

impl Module for ConvTranspose3d {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        conv_transpose3d(
            xs,
            &self.weight,
            Some(&self.bias),
            self.stride,
            self.padding,
            self.output_padding,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::estimator::gradcheck::{check_gradients, max_abs_diff, random, values};
    use candle_core::Device;
    use rand::{SeedableRng, rngs::StdRng};

    /// PyTorch's definition of conv_transpose3d as plain loops over output positions: `y[o]`
    /// sums `x[i] * w[k]` over every `i`, `k` with `o = s*i + k - p` on each axis.
    #[allow(clippy::too_many_arguments)]
    fn naive(
        x: &[f64],
        [b, cin, d, h, w]: [usize; 5],
        wt: &[f64],
        [cout, k]: [usize; 2],
        bias: &[f64],
        [s, p, op]: [usize; 3],
    ) -> (Vec<f64>, [usize; 5]) {
        let out = |n: usize| (n - 1) * s + k + op - 2 * p;
        let (od, oh, ow) = (out(d), out(h), out(w));
        let mut y = vec![0.0; b * cout * od * oh * ow];
        // For output o and offset kk, the input index is (o + p - kk) / s when that divides.
        let src = |o: usize, kk: usize, n: usize| -> Option<usize> {
            let t = (o + p).checked_sub(kk)?;
            (t % s == 0 && t / s < n).then_some(t / s)
        };
        for bb in 0..b {
            for o in 0..cout {
                for zd in 0..od {
                    for zh in 0..oh {
                        for zw in 0..ow {
                            let mut acc = bias[o];
                            for c in 0..cin {
                                for a in 0..k {
                                    for e in 0..k {
                                        for f in 0..k {
                                            let (Some(i), Some(j), Some(l)) =
                                                (src(zd, a, d), src(zh, e, h), src(zw, f, w))
                                            else {
                                                continue;
                                            };
                                            acc += x[(((bb * cin + c) * d + i) * h + j) * w + l]
                                                * wt[(((c * cout + o) * k + a) * k + e) * k + f];
                                        }
                                    }
                                }
                            }
                            y[(((bb * cout + o) * od + zd) * oh + zh) * ow + zw] = acc;
                        }
                    }
                }
            }
        }
        (y, [b, cout, od, oh, ow])
    }

    const CASES: [([usize; 5], usize, usize, [usize; 3]); 5] = [
        // PICAE's decoder layer: k3 s2 p1 op1 doubles the size.
        ([2, 2, 2, 3, 2], 3, 3, [2, 1, 1]),
        // Sapsan's literal settings: k3 s2 p0 op0.
        ([1, 2, 3, 2, 3], 2, 3, [2, 0, 0]),
        // stride 1 with padding, stride 3 with output padding, kernel below the stride.
        ([1, 1, 3, 4, 2], 2, 3, [1, 1, 0]),
        ([1, 2, 2, 2, 3], 1, 2, [3, 0, 2]),
        ([2, 1, 2, 3, 2], 2, 1, [2, 0, 1]),
    ];

    #[test]
    fn forward_matches_pytorchs_definition() {
        let mut rng = StdRng::seed_from_u64(1);
        let dev = Device::Cpu;
        for (dims, cout, k, [s, p, op]) in CASES {
            let n: usize = dims.iter().product();
            let (x, w, b) = (
                random(&mut rng, n),
                random(&mut rng, dims[1] * cout * k * k * k),
                random(&mut rng, cout),
            );
            let (want, want_dims) = naive(&x, dims, &w, [cout, k], &b, [s, p, op]);
            let xt = Tensor::from_vec(x, dims.to_vec(), &dev).unwrap();
            let wt = Tensor::from_vec(w, (dims[1], cout, k, k, k), &dev).unwrap();
            let bt = Tensor::from_vec(b, cout, &dev).unwrap();
            let y = conv_transpose3d(&xt, &wt, Some(&bt), s, p, op).unwrap();
            assert_eq!(y.dims(), &want_dims[..], "{dims:?} k{k} s{s} p{p} op{op}");
            let err = max_abs_diff(&values(&y), &want);
            assert!(err < 1e-12, "{dims:?} k{k} s{s} p{p} op{op}: max err {err}");
            // f32 gives the same numbers to float precision.
            let y32 = conv_transpose3d(
                &xt.to_dtype(candle_core::DType::F32).unwrap(),
                &wt.to_dtype(candle_core::DType::F32).unwrap(),
                Some(&bt.to_dtype(candle_core::DType::F32).unwrap()),
                s,
                p,
                op,
            )
            .unwrap();
            assert!(max_abs_diff(&values(&y32), &want) < 1e-5);
        }
    }

    #[test]
    fn gradients_match_finite_differences() {
        let mut rng = StdRng::seed_from_u64(2);
        for (dims, cout, k, [s, p, op]) in CASES {
            let n: usize = dims.iter().product();
            let inputs = vec![
                (random(&mut rng, n), dims.to_vec()),
                (
                    random(&mut rng, dims[1] * cout * k * k * k),
                    vec![dims[1], cout, k, k, k],
                ),
                (random(&mut rng, cout), vec![cout]),
            ];
            let worst = check_gradients(&inputs, &|t| {
                conv_transpose3d(&t[0], &t[1], Some(&t[2]), s, p, op).unwrap()
            });
            assert!(worst < 1e-5, "{dims:?} k{k} s{s} p{p} op{op}: {worst}");
        }
    }

    #[test]
    fn sizes_follow_pytorch_and_bad_settings_are_named() {
        assert_eq!(out_len_transposed(8, 3, 2, 1, 1), Some(16));
        assert_eq!(out_len_transposed(7, 3, 2, 0, 0), Some(15));
        assert_eq!(out_len_transposed(4, 3, 2, 1, 2), None);
        assert_eq!(out_len_transposed(1, 1, 1, 1, 0), None);
        let dev = Device::Cpu;
        let x = Tensor::zeros((1, 2, 2, 2, 2), candle_core::DType::F32, &dev).unwrap();
        let w = Tensor::zeros((3, 1, 3, 3, 3), candle_core::DType::F32, &dev).unwrap();
        let e = conv_transpose3d(&x, &w, None, 2, 1, 1).unwrap_err();
        assert!(e.to_string().contains("expects 3"), "{e}");
        let w = Tensor::zeros((2, 1, 3, 3, 3), candle_core::DType::F32, &dev).unwrap();
        let e = conv_transpose3d(&x, &w, None, 2, 1, 2).unwrap_err();
        assert!(e.to_string().contains("below the stride"), "{e}");
    }

    #[test]
    fn layer_inits_like_pytorch_and_describes_itself() {
        let varmap = candle_nn::VarMap::new();
        let vb = crate::estimator::init::seeded_var_builder(
            &varmap,
            0,
            candle_core::DType::F32,
            &Device::Cpu,
        );
        let layer = ConvTranspose3d::new(vb, 6, 3, 3, [2, 1, 1]).unwrap();
        assert_eq!(layer.weight().dims(), &[6, 3, 3, 3, 3]);
        assert_eq!(layer.num_params(), 6 * 3 * 27 + 3);
        let bound = 1.0 / (3.0f64 * 27.0).sqrt();
        assert!(values(layer.weight()).iter().all(|v| v.abs() <= bound));
        assert_eq!(layer.out_dims([2, 4, 8]), Some([4, 8, 16]));
        assert_eq!(
            layer.to_string(),
            "ConvTranspose3d(6, 3, kernel_size=(3, 3, 3), stride=(2, 2, 2), padding=(1, 1, 1), \
             output_padding=(1, 1, 1))"
        );
        let x = Tensor::ones((1, 6, 2, 2, 2), candle_core::DType::F32, &Device::Cpu).unwrap();
        assert_eq!(layer.forward(&x).unwrap().dims(), &[1, 3, 4, 4, 4]);
    }
}
