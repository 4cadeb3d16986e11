//! Seeded parameter initialisation: a [`VarBuilder`] backend that creates trainable variables in a
//! [`VarMap`] from its own seeded random number generator.
//!
//! candle cannot seed its CPU generator, so models built through [`candle_nn::VarMap`] alone get
//! different weights on every run. [`seeded_var_builder`] gives a builder whose new variables are
//! drawn, in creation order, from a `StdRng` seeded by the caller: the same seed and the same model
//! code give bit-identical initial weights.
use std::sync::Mutex;

use candle_core::{DType, Device, Shape, Tensor, Var};
use candle_nn::{Init, VarBuilder, VarMap, var_builder::SimpleBackend};
use rand::{RngExt, SeedableRng, rngs::StdRng};

/// The backend behind [`seeded_var_builder`]: a [`VarMap`] plus a seeded generator.
struct SeededVarMap {
    varmap: VarMap,
    rng: Mutex<StdRng>,
}

impl SeededVarMap {
    fn draw(&self, shape: &Shape, init: Init) -> candle_core::Result<Vec<f64>> {
        let n = shape.elem_count();
        match init {
            Init::Const(c) => Ok(vec![c; n]),
            Init::Uniform { lo, up } => {
                let mut rng = self
                    .rng
                    .lock()
                    .map_err(|_| candle_core::Error::Msg("parameter rng lock poisoned".into()))?;
                Ok((0..n)
                    .map(|_| lo + (up - lo) * rng.random::<f64>())
                    .collect())
            }
            other => candle_core::bail!(
                "seeded initialisation supports Init::Const and Init::Uniform only, got {other:?}"
            ),
        }
    }
}

impl SimpleBackend for SeededVarMap {
    fn get(
        &self,
        s: Shape,
        name: &str,
        h: Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        {
            let data = self
                .varmap
                .data()
                .lock()
                .map_err(|_| candle_core::Error::Msg("VarMap lock poisoned".into()))?;
            if let Some(var) = data.get(name) {
                if var.shape() != &s {
                    candle_core::bail!(
                        "shape mismatch on {name}: asked for {s:?}, stored {:?}",
                        var.shape()
                    )
                }
                return Ok(var.as_tensor().clone());
            }
        }
        let values = self.draw(&s, h)?;
        let tensor = Tensor::from_vec(values, s, dev)?.to_dtype(dtype)?;
        let var = Var::from_tensor(&tensor)?;
        let out = var.as_tensor().clone();
        self.varmap
            .data()
            .lock()
            .map_err(|_| candle_core::Error::Msg("VarMap lock poisoned".into()))?
            .insert(name.to_string(), var);
        Ok(out)
    }

    fn get_unchecked(
        &self,
        name: &str,
        _dtype: DType,
        _dev: &Device,
    ) -> candle_core::Result<Tensor> {
        let data = self
            .varmap
            .data()
            .lock()
            .map_err(|_| candle_core::Error::Msg("VarMap lock poisoned".into()))?;
        match data.get(name) {
            Some(var) => Ok(var.as_tensor().clone()),
            None => candle_core::bail!("no variable named {name} in the VarMap"),
        }
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.varmap
            .data()
            .lock()
            .map(|d| d.contains_key(name))
            .unwrap_or(false)
    }
}

/// PyTorch's default initialisation of a layer's weight and bias (`nn.Linear`, `nn.Conv3d`,
/// `nn.ConvTranspose3d`): uniform in `±1/sqrt(fan_in)`.
pub fn fan_in_uniform(fan_in: usize) -> Init {
    let bound = 1.0 / (fan_in as f64).sqrt();
    Init::Uniform {
        lo: -bound,
        up: bound,
    }
}

/// A [`VarBuilder`] that stores new variables in `varmap` and draws their initial values from a
/// generator seeded with `seed` (supports `Init::Uniform` and `Init::Const`).
///
/// Variables already in `varmap` are returned as they are, so a model can be rebuilt on top of
/// loaded weights.
pub fn seeded_var_builder(
    varmap: &VarMap,
    seed: u64,
    dtype: DType,
    device: &Device,
) -> VarBuilder<'static> {
    let backend = SeededVarMap {
        varmap: varmap.clone(),
        rng: Mutex::new(StdRng::seed_from_u64(seed)),
    };
    VarBuilder::from_backend(Box::new(backend), dtype, device.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn draw(seed: u64) -> Vec<f32> {
        let varmap = VarMap::new();
        let vb = seeded_var_builder(&varmap, seed, DType::F32, &Device::Cpu);
        vb.get_with_hints((3, 4), "w", Init::Uniform { lo: -0.5, up: 0.5 })
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap()
    }

    #[test]
    fn same_seed_same_values_and_bounds_hold() {
        let a = draw(7);
        assert_eq!(a, draw(7));
        assert_ne!(a, draw(8));
        assert!(a.iter().all(|v| (-0.5..0.5).contains(v)));
        // Not all equal: it is really random.
        assert!(a.iter().any(|v| (v - a[0]).abs() > 1e-6));
    }

    #[test]
    fn existing_variables_are_reused_and_trainable() {
        let varmap = VarMap::new();
        let vb = seeded_var_builder(&varmap, 1, DType::F32, &Device::Cpu);
        let w1 = vb.get_with_hints(2, "b", Init::Const(0.25)).unwrap();
        let w2 = vb.get_with_hints(2, "b", Init::Const(9.0)).unwrap();
        assert_eq!(w1.to_vec1::<f32>().unwrap(), w2.to_vec1::<f32>().unwrap());
        assert_eq!(varmap.all_vars().len(), 1);
        assert!(vb.get_with_hints(3, "b", Init::Const(0.0)).is_err());
    }
}
