//! The CNN3d network: Sapsan's `CNN3dModel` on candle.
//!
//! ```text
//! Conv3d(C,2C,k=2,s=2,p=1) -> MaxPool3d(2,p=1) -> ReLU -> Conv3d(2C,2C,2,2,1) -> MaxPool3d(2,p=1) -> ReLU
//! -> Conv3d(2C,4C,2,2,1) -> MaxPool3d(2) -> flatten -> Linear(4C,8C) -> ReLU -> Linear(8C, D_out)
//! ```
//! `C` is the number of input channels and `D_out = Ct*D*H*W` the flattened target cube; the output
//! is reshaped back to `(B, Ct, D, H, W)`. The conv/pool stack must shrink the input to `1x1x1`, which
//! holds for every edge length from 2 to 65 (16 -> 9 -> 5 -> 3 -> 2 -> 2 -> 1; 32 -> 17 -> 9 -> 5 -> 3
//! -> 2 -> 1). Larger inputs such as 128^3 are refused with [`Error::Estimator`].
use candle_core::{Module, Tensor};
use candle_nn::VarBuilder;

use super::layers::{Conv3d, Linear, MaxPool3d};
use crate::error::{Error, Result};

mod step;

/// A candle-nn linear layer initialised like PyTorch's `nn.Linear` (as [`Linear::new`]): weight
/// `(out, in)` and bias `(out,)` uniform in `±1/sqrt(in)`. CNN3d itself uses the fused
/// [`Linear`]; this is for networks that apply linear layers to input of any rank.
pub fn linear(
    vb: VarBuilder,
    in_features: usize,
    out_features: usize,
) -> candle_core::Result<candle_nn::Linear> {
    let l = Linear::new(vb, in_features, out_features)?;
    Ok(candle_nn::Linear::new(
        l.weight().clone(),
        Some(l.bias().clone()),
    ))
}

/// One row of the layer listing: name, PyTorch-style description, parameter shapes and count.
#[derive(Debug, Clone, PartialEq)]
pub struct LayerInfo {
    /// Attribute name, as in Sapsan's model (`conv3d`, `pooling`, `linear2`, ...).
    pub name: &'static str,
    /// PyTorch-style description, e.g. `Linear(in_features=12, out_features=24, bias=True)`.
    pub description: String,
    /// Shapes of the layer's parameters, in `weight`, `bias` order.
    pub param_shapes: Vec<Vec<usize>>,
    /// Number of trainable parameters.
    pub num_params: usize,
}

/// The CNN3d network. Variable names follow Sapsan's attribute names (`conv3d.weight`, ...).
#[derive(Debug, Clone)]
pub struct Cnn3dNet {
    conv3d: Conv3d,
    conv3d2: Conv3d,
    conv3d3: Conv3d,
    pooling: MaxPool3d,
    pooling2: MaxPool3d,
    pooling3: MaxPool3d,
    linear: Linear,
    linear2: Linear,
    in_channels: usize,
    target_shape: [usize; 4],
}

impl Cnn3dNet {
    /// Builds the network for `in_channels` input channels and a target of shape
    /// `[channels, depth, height, width]`, taking its variables from `vb`.
    pub fn new(vb: VarBuilder, in_channels: usize, target_shape: [usize; 4]) -> Result<Self> {
        let c = in_channels;
        if c == 0 || target_shape.contains(&0) {
            return Err(Error::Estimator(format!(
                "CNN3d needs at least one input channel and a non-empty target, got {c} input channels and target shape {target_shape:?}"
            )));
        }
        let d_out: usize = target_shape.iter().product();
        Ok(Self {
            conv3d: Conv3d::new(vb.pp("conv3d"), c, 2 * c, 2, 2, 1)?,
            conv3d2: Conv3d::new(vb.pp("conv3d2"), 2 * c, 2 * c, 2, 2, 1)?,
            conv3d3: Conv3d::new(vb.pp("conv3d3"), 2 * c, 4 * c, 2, 2, 1)?,
            pooling: MaxPool3d::new(2, 1),
            pooling2: MaxPool3d::new(2, 1),
            pooling3: MaxPool3d::new(2, 0),
            linear: Linear::new(vb.pp("linear"), 4 * c, 8 * c)?,
            linear2: Linear::new(vb.pp("linear2"), 8 * c, d_out)?,
            in_channels: c,
            target_shape,
        })
    }

    /// Number of input channels `C`.
    pub fn in_channels(&self) -> usize {
        self.in_channels
    }

    /// Target shape `[channels, depth, height, width]`.
    pub fn target_shape(&self) -> [usize; 4] {
        self.target_shape
    }

    /// Spatial size after each conv/pool stage for an input of spatial size `dhw`, starting with the
    /// input itself; stops early (shorter list) where a kernel no longer fits.
    pub fn spatial_trace(&self, dhw: [usize; 3]) -> Vec<[usize; 3]> {
        let mut trace = vec![dhw];
        let stages: [&dyn Fn([usize; 3]) -> Option<[usize; 3]>; 6] = [
            &|s| self.conv3d.out_dims(s),
            &|s| self.pooling.out_dims(s),
            &|s| self.conv3d2.out_dims(s),
            &|s| self.pooling2.out_dims(s),
            &|s| self.conv3d3.out_dims(s),
            &|s| self.pooling3.out_dims(s),
        ];
        let mut cur = dhw;
        for stage in stages {
            match stage(cur) {
                Some(next) => {
                    trace.push(next);
                    cur = next;
                }
                None => break,
            }
        }
        trace
    }

    /// Checks that an input of shape `(B, C, D, H, W)` fits: `C` input channels and a spatial size
    /// that the conv/pool stack shrinks to `1x1x1` (the first Linear takes `4C` features).
    pub fn check_input(&self, dims: &[usize]) -> Result<()> {
        let &[_, c, d, h, w] = dims else {
            return Err(Error::Estimator(format!(
                "CNN3d expects input of shape (batch, channels, depth, height, width), got {dims:?}"
            )));
        };
        if c != self.in_channels {
            return Err(Error::Estimator(format!(
                "CNN3d was built for {} input channels but the features have {c}",
                self.in_channels
            )));
        }
        let trace = self.spatial_trace([d, h, w]);
        if trace.len() == 7 && trace[6] == [1, 1, 1] {
            return Ok(());
        }
        let steps = trace
            .iter()
            .map(|s| format!("{}x{}x{}", s[0], s[1], s[2]))
            .collect::<Vec<_>>()
            .join(" -> ");
        Err(Error::Estimator(format!(
            "CNN3d cannot take input of size {d}x{h}x{w}: its conv/pool stack shrinks it as {steps} \
             but must reach 1x1x1 so that the first Linear gets {} features; use an input edge \
             between 2 and 65, e.g. 16 or 32 (sample the data down to a smaller size)",
            4 * self.in_channels
        )))
    }

    /// The layers in forward order with their descriptions and parameter counts.
    pub fn layers(&self) -> Vec<LayerInfo> {
        let conv = |name, l: &Conv3d| LayerInfo {
            name,
            description: l.to_string(),
            param_shapes: vec![l.weight().dims().to_vec(), l.bias().dims().to_vec()],
            num_params: l.num_params(),
        };
        let pool = |name, l: &MaxPool3d| LayerInfo {
            name,
            description: l.to_string(),
            param_shapes: vec![],
            num_params: 0,
        };
        let relu = || LayerInfo {
            name: "relu",
            description: "ReLU()".to_string(),
            param_shapes: vec![],
            num_params: 0,
        };
        let lin = |name, l: &Linear| {
            let w = l.weight().dims().to_vec();
            let b = l.bias().dims().to_vec();
            LayerInfo {
                name,
                description: format!(
                    "Linear(in_features={}, out_features={}, bias=True)",
                    w[1], w[0]
                ),
                num_params: w.iter().product::<usize>() + b.iter().product::<usize>(),
                param_shapes: vec![w, b],
            }
        };
        vec![
            conv("conv3d", &self.conv3d),
            pool("pooling", &self.pooling),
            relu(),
            conv("conv3d2", &self.conv3d2),
            pool("pooling2", &self.pooling2),
            relu(),
            conv("conv3d3", &self.conv3d3),
            pool("pooling3", &self.pooling3),
            LayerInfo {
                name: "flatten",
                description: "Flatten(start_dim=1)".to_string(),
                param_shapes: vec![],
                num_params: 0,
            },
            lin("linear", &self.linear),
            relu(),
            lin("linear2", &self.linear2),
        ]
    }

    /// Runs the network on `x` `(B, C, D, H, W)` and returns `(B, Ct, Dt, Ht, Wt)`; checks the input
    /// shape first (see [`Cnn3dNet::check_input`]).
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.check_input(x.dims())?;
        Ok(self.forward_unchecked(x)?)
    }

    // forward-source:begin
    fn forward_unchecked(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let c1 = self.conv3d.forward(x)?;
        let p1 = self.pooling.forward(&c1)?;
        let c2 = self.conv3d2.forward(&p1.relu()?)?;
        let p2 = self.pooling2.forward(&c2)?;
        let c3 = self.conv3d3.forward(&p2.relu()?)?;
        let p3 = self.pooling3.forward(&c3)?;
        let v1 = p3.flatten_from(1)?;
        let l1 = self.linear.forward(&v1)?.relu()?;
        let l2 = self.linear2.forward(&l1)?;
        let [ct, d, h, w] = self.target_shape;
        l2.reshape((x.dim(0)?, ct, d, h, w))
    }
    // forward-source:end
}

impl super::train::Network for Cnn3dNet {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Cnn3dNet::forward(self, x)
    }
    fn check_input(&self, dims: &[usize]) -> Result<()> {
        Cnn3dNet::check_input(self, dims)
    }
    fn target_shape_for(&self, _input: &[usize]) -> [usize; 4] {
        self.target_shape
    }
    fn loss_and_grads(
        &self,
        x: &Tensor,
        y: &Tensor,
        loss: super::Loss,
    ) -> Result<(f64, candle_core::backprop::GradStore)> {
        Cnn3dNet::loss_and_grads(self, x, y, loss)
    }
}

/// The source text of the network's forward function, captured from this file at compile time
/// (Sapsan logs it as `model_forward.txt`).
pub fn forward_source() -> &'static str {
    super::api::forward_source_in(include_str!("mod.rs"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::estimator::init::seeded_var_builder;
    use candle_core::{DType, Device};
    use candle_nn::VarMap;

    fn net(c: usize, target: [usize; 4]) -> Cnn3dNet {
        let varmap = VarMap::new();
        let vb = seeded_var_builder(&varmap, 0, DType::F32, &Device::Cpu);
        Cnn3dNet::new(vb, c, target).unwrap()
    }

    #[test]
    fn spatial_sizes_reduce_to_one_for_16_and_32() {
        let n = net(3, [1, 4, 4, 4]);
        let edges = |e: usize| {
            n.spatial_trace([e; 3])
                .iter()
                .map(|s| s[0])
                .collect::<Vec<_>>()
        };
        assert_eq!(edges(16), vec![16, 9, 5, 3, 2, 2, 1]);
        assert_eq!(edges(32), vec![32, 17, 9, 5, 3, 2, 1]);
        assert_eq!(edges(128), vec![128, 65, 33, 17, 9, 5, 2]);
    }

    #[test]
    fn shapes_through_the_net_for_16_and_32() {
        for (edge, target) in [(16, [1, 16, 16, 16]), (32, [2, 8, 8, 8])] {
            let n = net(3, target);
            let x = Tensor::zeros((2, 3, edge, edge, edge), DType::F32, &Device::Cpu).unwrap();
            let y = n.forward(&x).unwrap();
            let mut want = vec![2];
            want.extend(target);
            assert_eq!(y.dims(), &want[..]);
        }
    }

    #[test]
    fn too_large_input_is_a_clear_error() {
        let n = net(3, [1, 4, 4, 4]);
        let err = n.check_input(&[1, 3, 128, 128, 128]).unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, Error::Estimator(_)));
        assert!(msg.contains("128x128x128"), "{msg}");
        assert!(msg.contains("2x2x2"), "{msg}");
        let err = n.check_input(&[1, 2, 16, 16, 16]).unwrap_err();
        assert!(err.to_string().contains("3 input channels"), "{err}");
        assert!(n.check_input(&[1, 3, 1, 16, 16]).is_err());
        assert!(n.check_input(&[3, 16, 16, 16]).is_err());
        assert!(n.check_input(&[1, 3, 65, 2, 40]).is_ok());
        assert!(n.check_input(&[1, 3, 66, 16, 16]).is_err());
    }

    #[test]
    fn layers_are_listed_with_parameter_counts() {
        let n = net(3, [1, 16, 16, 16]);
        let layers = n.layers();
        let names: Vec<_> = layers.iter().map(|l| l.name).collect();
        assert_eq!(
            names,
            [
                "conv3d", "pooling", "relu", "conv3d2", "pooling2", "relu", "conv3d3", "pooling3",
                "flatten", "linear", "relu", "linear2"
            ]
        );
        let counts: Vec<_> = layers.iter().map(|l| l.num_params).collect();
        // conv3d: 6*3*8+6, conv3d2: 6*6*8+6, conv3d3: 12*6*8+12, linear: 24*12+24, linear2: 4096*24+4096
        assert_eq!(counts, [150, 0, 0, 294, 0, 0, 588, 0, 0, 312, 0, 102400]);
    }

    #[test]
    fn forward_source_is_the_forward_function() {
        let src = forward_source();
        assert!(
            src.trim_start().starts_with("fn forward_unchecked"),
            "{src}"
        );
        assert!(src.trim_end().ends_with('}'));
        assert!(src.contains("self.linear2.forward"));
        assert!(!src.contains("forward-source"));
    }
}
