//! The PICAE network: a convolutional autoencoder whose decoder produces a vector potential, and
//! a fixed layer returning its curl, so the predicted velocity is divergence-free.
//!
//! ```text
//! u (B,3,N,N,N) -> Conv3d(3,f,k,s=2,p=k//2) -> Conv3d(f,f,...) ... (enc_nlayers)   N -> N/2^n
//!   -> ConvTranspose3d(f,f,k,s=2,p=k//2,output_padding=1) ... -> ConvTranspose3d(f,3,...)
//!   -> A (B,3,N,N,N) -> periodic pad 1 -> central differences -> curl A (B,3,N,N,N)
//! ```
//! As in Sapsan's `PICAEModel` there is no activation between the layers. Sapsan pads neither
//! the encoder nor the decoder (a 16^3 cube decodes to 15^3, and its padding then adds a
//! duplicated plane to reach 16^3, which is not periodic); padding `k // 2` with output padding 1
//! halves and doubles the grid exactly, so the curl is taken on the input's own periodic grid,
//! where its divergence vanishes. Cube edges must therefore be divisible by `2^enc_nlayers`.
//! Variable names follow Sapsan's attributes: `encoder_cell_list.0.weight`,
//! `decoder_cell_list.2.bias`, ...
use candle_core::{Module, Tensor};
use candle_nn::VarBuilder;

use super::config::PicaeConfig;
use super::conv_transpose3d::ConvTranspose3d;
use super::curl::curl;
use crate::error::{Error, Result};
use crate::estimator::layers::Conv3d;
use crate::estimator::train::Network;

/// Channels of the velocity and of the vector potential.
pub const VECTOR_CHANNELS: usize = 3;

/// The network of [`Picae`](super::Picae).
#[derive(Debug, Clone)]
pub struct PicaeNet {
    encoder: Vec<Conv3d>,
    decoder: Vec<ConvTranspose3d>,
}

impl PicaeNet {
    /// The network of `config` (validated by the caller) with variables from `vb`.
    pub fn new(vb: VarBuilder, config: &PicaeConfig) -> Result<Self> {
        let (k, f, n) = (config.kernel(), config.nfilters, config.enc_nlayers);
        let enc = vb.pp("encoder_cell_list");
        let encoder = (0..n)
            .map(|i| {
                let cin = if i == 0 { VECTOR_CHANNELS } else { f };
                Conv3d::new(enc.pp(i.to_string()), cin, f, k, 2, k / 2)
            })
            .collect::<candle_core::Result<Vec<_>>>()?;
        let dec = vb.pp("decoder_cell_list");
        let decoder = (0..config.dec_nlayers)
            .map(|i| {
                let cout = if i + 1 == config.dec_nlayers {
                    VECTOR_CHANNELS
                } else {
                    f
                };
                ConvTranspose3d::new(dec.pp(i.to_string()), f, cout, k, [2, k / 2, 1])
            })
            .collect::<candle_core::Result<Vec<_>>>()?;
        Ok(Self { encoder, decoder })
    }

    /// Cube edges must be divisible by this (`2^enc_nlayers`).
    pub fn divisor(&self) -> usize {
        1 << self.encoder.len()
    }

    /// The layers, PyTorch style, with their parameter counts: `(name, description, params)`.
    pub fn layers(&self) -> Vec<(String, String, usize)> {
        let enc = self.encoder.iter().enumerate().map(|(i, l)| {
            (
                format!("encoder_cell_list.{i}"),
                l.to_string(),
                l.num_params(),
            )
        });
        let dec = self.decoder.iter().enumerate().map(|(i, l)| {
            (
                format!("decoder_cell_list.{i}"),
                l.to_string(),
                l.num_params(),
            )
        });
        let physics = [
            (
                "padHITperiodic".to_string(),
                "PeriodicPad3d(1)".to_string(),
                0,
            ),
            (
                "curlConv".to_string(),
                "CentralDifferenceCurl(3 -> 3: six first derivatives d_i A_j, fixed)".to_string(),
                0,
            ),
        ];
        enc.chain(dec).chain(physics).collect()
    }

    /// Total number of trainable parameters.
    pub fn num_params(&self) -> usize {
        self.layers().iter().map(|l| l.2).sum()
    }

    // forward-source:begin
    /// The decoded vector potential `A` of `x` `(B, 3, N, N, N)`: encoder, then decoder, no
    /// activations (as Sapsan's `PICAEModel`).
    pub fn potential(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let mut h = x.clone();
        for layer in &self.encoder {
            h = layer.forward(&h)?;
        }
        for layer in &self.decoder {
            h = layer.forward(&h)?;
        }
        Ok(h)
    }

    fn forward_unchecked(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        // Physics layer: periodic padding and fixed central differences combined into curl A.
        curl(&self.potential(x)?)
    }
    // forward-source:end
}

/// The text between the forward-source markers of this file (`model_forward.txt`).
pub fn forward_source() -> &'static str {
    crate::estimator::api::forward_source_in(include_str!("net.rs"))
}

impl Network for PicaeNet {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.check_input(x.dims())?;
        Ok(self.forward_unchecked(x)?)
    }

    fn check_input(&self, dims: &[usize]) -> Result<()> {
        let m = self.divisor();
        if dims.len() != 5 || dims[1] != VECTOR_CHANNELS {
            return Err(Error::Estimator(format!(
                "PICAE takes velocity cubes (N, 3, D, H, W), got shape {dims:?}; give it the three \
                 velocity components as features"
            )));
        }
        if dims[2..].iter().any(|&n| n == 0 || n % m != 0) {
            return Err(Error::Estimator(format!(
                "PICAE with {} encoder layers needs cube edges divisible by {m}, got {:?}; sample \
                 or cut the cubes to such a size (chkpnt - sample to size / batch_size) or use \
                 fewer layers (enc_nlayers, dec_nlayers)",
                self.encoder.len(),
                &dims[2..]
            )));
        }
        Ok(())
    }

    fn target_shape_for(&self, input: &[usize]) -> [usize; 4] {
        let mut out = [0; 4];
        for (o, i) in out.iter_mut().zip(input) {
            *o = *i;
        }
        out
    }
}
