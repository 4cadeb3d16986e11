//! The local-closure network: a fixed layer of periodic central differences (the resolved
//! velocity and its gradient, what the gradient model reads), then a pointwise network (three
//! 1x1x1 convolutions, written as linear layers over the grid points).
//!
//! ```text
//! x (B,C,D,H,W) -> [x, d0 x, d1 x, d2 x] (B,4C,D,H,W) -> per point: Linear(4C,h) -> GELU
//!   -> Linear(h,h) -> GELU -> Linear(h,Ct) -> (B,Ct,D,H,W)
//! ```
//! Every output point sees only its own 3x3x3 neighbourhood: a local closure, as the subgrid
//! stress of filtered turbulence is (to leading order) a function of the local resolved gradients.
//! The cube is treated as periodic, which is exact for whole periodic cubes (Sapsan's
//! turbulence boxes) and an approximation on the faces of sub-cubes.
use candle_core::{Module, Tensor};
use candle_nn::{Linear, VarBuilder};
use ndarray::Array5;

use crate::error::{Error, Result};
use crate::estimator::cnn3d::{LayerInfo, linear};
use crate::estimator::train::Network;

/// The network of [`LocalClosure`](super::LocalClosure). Variable names: `linear.weight`, ...
#[derive(Debug, Clone)]
pub struct ClosureNet {
    linear: Linear,
    linear2: Linear,
    linear3: Linear,
    in_channels: usize,
    out_channels: usize,
    hidden: usize,
}

/// `(x[i + 1] - x[i - 1]) / 2` along dimension `dim` of `x`, periodic. Built from `narrow` and
/// `cat`, so its gradient is candle's (checked against finite differences in the tests).
pub fn periodic_central_difference(x: &Tensor, dim: usize) -> candle_core::Result<Tensor> {
    let n = x.dim(dim)?;
    let next = Tensor::cat(&[x.narrow(dim, 1, n - 1)?, x.narrow(dim, 0, 1)?], dim)?;
    let prev = Tensor::cat(&[x.narrow(dim, n - 1, 1)?, x.narrow(dim, 0, n - 1)?], dim)?;
    (next - prev)? * 0.5
}

impl ClosureNet {
    /// The network for `in_channels` feature channels, `out_channels` target channels and
    /// `hidden` units per hidden layer, with variables from `vb`.
    pub fn new(
        vb: VarBuilder,
        in_channels: usize,
        out_channels: usize,
        hidden: usize,
    ) -> Result<Self> {
        if in_channels == 0 || out_channels == 0 || hidden == 0 {
            return Err(Error::Estimator(format!(
                "LocalClosure needs at least one input channel, one target channel and one hidden \
                 unit, got {in_channels}, {out_channels} and {hidden}"
            )));
        }
        let features = 4 * in_channels;
        Ok(Self {
            linear: linear(vb.pp("linear"), features, hidden)?,
            linear2: linear(vb.pp("linear2"), hidden, hidden)?,
            linear3: linear(vb.pp("linear3"), hidden, out_channels)?,
            in_channels,
            out_channels,
            hidden,
        })
    }

    /// Number of feature channels.
    pub fn in_channels(&self) -> usize {
        self.in_channels
    }

    /// Number of target channels.
    pub fn out_channels(&self) -> usize {
        self.out_channels
    }

    /// The layers, PyTorch style, with parameter shapes and counts.
    pub fn layers(&self) -> Vec<LayerInfo> {
        let c = self.in_channels;
        let lin = |name: &'static str, i: usize, o: usize| LayerInfo {
            name,
            description: format!(
                "Conv3d({i}, {o}, kernel_size=(1, 1, 1)) as Linear(in_features={i}, out_features={o}, bias=True)"
            ),
            param_shapes: vec![vec![o, i], vec![o]],
            num_params: o * i + o,
        };
        let gelu = || LayerInfo {
            name: "gelu",
            description: "GELU(approximate='tanh')".into(),
            param_shapes: vec![],
            num_params: 0,
        };
        vec![
            LayerInfo {
                name: "gradient",
                description: format!(
                    "PeriodicCentralDifference({c} -> {}: x, d0 x, d1 x, d2 x; fixed)",
                    4 * c
                ),
                param_shapes: vec![],
                num_params: 0,
            },
            lin("linear", 4 * c, self.hidden),
            gelu(),
            lin("linear2", self.hidden, self.hidden),
            gelu(),
            lin("linear3", self.hidden, self.out_channels),
        ]
    }

    // forward-source:begin
    /// The fixed first layer: `[x, d0 x, d1 x, d2 x]` `(B, 4C, D, H, W)`, periodic.
    pub fn gradient_features(x: &Tensor) -> candle_core::Result<Tensor> {
        Tensor::cat(
            &[
                x.clone(),
                periodic_central_difference(x, 2)?,
                periodic_central_difference(x, 3)?,
                periodic_central_difference(x, 4)?,
            ],
            1,
        )
    }

    /// The pointwise network on point features `(P, 4C)`, giving `(P, Ct)`.
    pub fn pointwise(&self, points: &Tensor) -> candle_core::Result<Tensor> {
        let h1 = self.linear.forward(points)?.gelu()?;
        let h2 = self.linear2.forward(&h1)?.gelu()?;
        self.linear3.forward(&h2)
    }

    fn forward_unchecked(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let (b, _, d, h, w) = x.dims5()?;
        let g = Self::gradient_features(x)?;
        let points = g
            .permute((0, 2, 3, 4, 1))?
            .contiguous()?
            .reshape((b * d * h * w, 4 * self.in_channels))?;
        let out = self.pointwise(&points)?;
        out.reshape((b, d, h, w, self.out_channels))?
            .permute((0, 4, 1, 2, 3))?
            .contiguous()
    }
    // forward-source:end

    /// Cubes `(N, C, D, H, W)` as points `(N*D*H*W, C, 1, 1, 1)`, one per grid point, in the
    /// order (cube, depth, height, width).
    pub fn to_points(a: &Array5<f32>) -> Array5<f32> {
        let (n, c, d, h, w) = a.dim();
        let p = a.view().permuted_axes([0, 2, 3, 4, 1]);
        let values: Vec<f32> = p.iter().copied().collect();
        Array5::from_shape_vec((n * d * h * w, c, 1, 1, 1), values)
            .unwrap_or_else(|_| Array5::zeros((0, c, 1, 1, 1)))
    }

    /// The point features `(N*D*H*W, 4C, 1, 1, 1)` of cubes `(N, C, D, H, W)`: what the
    /// pointwise network sees at each grid point.
    pub fn point_features(&self, x: &Array5<f32>) -> Result<Array5<f32>> {
        self.check_input(x.shape())?;
        let g = Self::gradient_features(&crate::estimator::train::to_tensor(
            x,
            &candle_core::Device::Cpu,
        )?)?;
        let dims = g.dims().to_vec();
        let values: Vec<f32> = g.flatten_all()?.to_vec1()?;
        let cube = Array5::from_shape_vec((dims[0], dims[1], dims[2], dims[3], dims[4]), values)
            .map_err(|e| Error::Estimator(format!("gradient features: {e}")))?;
        Ok(Self::to_points(&cube))
    }

    /// The pointwise stage alone, as a [`Network`] on points `(P, 4C, 1, 1, 1)`: the
    /// training loop drives it on mini-batches of grid points.
    pub fn points_network(&self) -> PointsNetwork<'_> {
        PointsNetwork(self)
    }
}

/// See [`ClosureNet::points_network`].
#[derive(Debug, Clone, Copy)]
pub struct PointsNetwork<'a>(&'a ClosureNet);

impl Network for PointsNetwork<'_> {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.check_input(x.dims())?;
        let p = x.dim(0)?;
        let out = self.0.pointwise(&x.reshape((p, 4 * self.0.in_channels))?)?;
        Ok(out.reshape((p, self.0.out_channels, 1, 1, 1))?)
    }

    fn check_input(&self, dims: &[usize]) -> Result<()> {
        if dims.len() != 5 || dims[1] != 4 * self.0.in_channels || dims[2..] != [1, 1, 1] {
            return Err(Error::Estimator(format!(
                "the pointwise network takes points (P, {}, 1, 1, 1), got {dims:?}",
                4 * self.0.in_channels
            )));
        }
        Ok(())
    }

    fn target_shape_for(&self, _input: &[usize]) -> [usize; 4] {
        [self.0.out_channels, 1, 1, 1]
    }
}

impl Network for ClosureNet {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.check_input(x.dims())?;
        Ok(self.forward_unchecked(x)?)
    }

    fn check_input(&self, dims: &[usize]) -> Result<()> {
        if dims.len() != 5 || dims[1] != self.in_channels || dims[2..].iter().any(|&n| n < 3) {
            return Err(Error::Estimator(format!(
                "LocalClosure takes features (N, {}, D, H, W) with D, H, W >= 3, got {dims:?}; \
                 build it with the number of feature channels of the data",
                self.in_channels
            )));
        }
        Ok(())
    }

    fn target_shape_for(&self, input: &[usize]) -> [usize; 4] {
        let at = |i: usize| input.get(i).copied().unwrap_or(0);
        [self.out_channels, at(1), at(2), at(3)]
    }
}

/// The source text of the network's forward function (`model_forward.txt`).
pub fn forward_source() -> &'static str {
    crate::estimator::api::forward_source_in(include_str!("net.rs"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device, Var};
    use std::f64::consts::PI;

    #[test]
    fn central_difference_of_a_sine_is_exact_and_periodic() {
        let n = 8;
        let a = 2.0 * PI * 2.0 / n as f64;
        let v: Vec<f64> = (0..n).map(|i| (a * i as f64).sin()).collect();
        let x = Tensor::from_vec(v, (1, 1, n, 1, 1), &Device::Cpu).unwrap();
        let d: Vec<f64> = periodic_central_difference(&x, 2)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        for (i, got) in d.iter().enumerate() {
            let want = (a * i as f64).cos() * a.sin();
            assert!((got - want).abs() < 1e-12, "{i}: {got} vs {want}");
        }
    }

    #[test]
    fn central_difference_gradient_matches_finite_differences() {
        // f(x) = sum(w * D x) for a fixed w: df/dx = D^T w, checked numerically per entry.
        let dev = Device::Cpu;
        let shape = (1, 2, 3, 4, 3);
        let n: usize = 2 * 3 * 4 * 3;
        let x0: Vec<f64> = (0..n).map(|i| ((i * 7 % 11) as f64 - 5.0) / 3.0).collect();
        let w = Tensor::from_vec(
            (0..n)
                .map(|i| ((i * 5 % 13) as f64) / 7.0)
                .collect::<Vec<_>>(),
            shape,
            &dev,
        )
        .unwrap();
        for dim in 2..5 {
            let f = |x: &Tensor| -> Tensor {
                (periodic_central_difference(x, dim).unwrap() * &w)
                    .unwrap()
                    .sum_all()
                    .unwrap()
            };
            let x = Var::from_tensor(&Tensor::from_vec(x0.clone(), shape, &dev).unwrap()).unwrap();
            let g: Vec<f64> = f(x.as_tensor())
                .backward()
                .unwrap()
                .get(x.as_tensor())
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            let h = 1e-6;
            for i in 0..n {
                let (mut p, mut m) = (x0.clone(), x0.clone());
                p[i] += h;
                m[i] -= h;
                let value = |v: Vec<f64>| {
                    f(&Tensor::from_vec(v, shape, &dev).unwrap())
                        .to_scalar::<f64>()
                        .unwrap()
                };
                let fd = (value(p) - value(m)) / (2.0 * h);
                assert!(
                    (fd - g[i]).abs() < 1e-6,
                    "dim {dim} entry {i}: {fd} vs {}",
                    g[i]
                );
            }
        }
    }

    #[test]
    fn shapes_layers_and_input_checks() {
        let varmap = candle_nn::VarMap::new();
        let vb = crate::estimator::init::seeded_var_builder(&varmap, 0, DType::F32, &Device::Cpu);
        let net = ClosureNet::new(vb, 3, 1, 8).unwrap();
        let x = Tensor::zeros((2, 3, 4, 5, 6), DType::F32, &Device::Cpu).unwrap();
        assert_eq!(net.forward(&x).unwrap().dims(), &[2, 1, 4, 5, 6]);
        assert_eq!(net.target_shape_for(&[3, 4, 5, 6]), [1, 4, 5, 6]);
        let params: usize = net.layers().iter().map(|l| l.num_params).sum();
        assert_eq!(params, (12 * 8 + 8) + (8 * 8 + 8) + (8 + 1));
        assert_eq!(varmap.all_vars().len(), 6);
        let bad = Tensor::zeros((1, 2, 4, 4, 4), DType::F32, &Device::Cpu).unwrap();
        assert!(
            net.forward(&bad)
                .unwrap_err()
                .to_string()
                .contains("(N, 3, D, H, W)")
        );
        assert!(
            ClosureNet::new(
                crate::estimator::init::seeded_var_builder(
                    &candle_nn::VarMap::new(),
                    0,
                    DType::F32,
                    &Device::Cpu
                ),
                3,
                1,
                0
            )
            .is_err()
        );
        let src = forward_source();
        for f in [
            "fn gradient_features",
            "fn pointwise",
            "fn forward_unchecked",
        ] {
            assert!(src.contains(f), "{f} in {src}");
        }
        assert!(!src.contains("forward-source"));
        // The pointwise stage on point features gives the same values as the whole network.
        let x = Array5::from_shape_fn((2, 3, 4, 5, 6), |(n, c, i, j, k)| {
            ((n * 7 + c * 5 + i * 3 + j * 2 + k) % 11) as f32 / 5.0 - 1.0
        });
        let t = crate::estimator::train::to_tensor(&x, &Device::Cpu).unwrap();
        let whole: Vec<f32> = net
            .forward(&t)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let pts = net.point_features(&x).unwrap();
        assert_eq!(pts.dim(), (240, 12, 1, 1, 1));
        let p = crate::estimator::train::to_tensor(&pts, &Device::Cpu).unwrap();
        let points = net.points_network().forward(&p).unwrap();
        let mut y = vec![0.0f32; 240];
        y.copy_from_slice(&points.flatten_all().unwrap().to_vec1::<f32>().unwrap());
        let ycube = ClosureNet::to_points(&Array5::from_shape_vec((2, 1, 4, 5, 6), whole).unwrap());
        for (a, b) in ycube.iter().zip(&y) {
            assert!((a - b).abs() < 1e-5, "{a} vs {b}");
        }
    }
}
