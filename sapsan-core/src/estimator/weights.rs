//! A network's variables to and from safetensors bytes (`model.safetensors`), with errors that
//! name the tensor that is missing or does not fit.
use std::collections::HashMap;

use candle_core::{Device, Tensor};
use candle_nn::VarMap;

use crate::error::{Error, Result};

/// Every variable of `varmap` as safetensors bytes.
pub fn save_varmap(varmap: &VarMap) -> Result<Vec<u8>> {
    let tensors: HashMap<String, Tensor> = varmap
        .data()
        .lock()
        .map_err(|_| Error::Estimator("model weights lock poisoned".into()))?
        .iter()
        .map(|(k, v)| (k.clone(), v.as_tensor().clone()))
        .collect();
    let dir = tempfile::tempdir()
        .map_err(|e| Error::io("creating a temporary directory for", "weights", e))?;
    let path = dir.path().join("model.safetensors");
    candle_core::safetensors::save(&tensors, &path)?;
    std::fs::read(&path).map_err(|e| Error::io("reading", path, e))
}

/// Sets every variable of `varmap` from safetensors `bytes` saved by [`save_varmap`] of a
/// `model` (its name, for the messages) of the same architecture; nothing changes on error.
pub fn load_varmap(varmap: &VarMap, bytes: &[u8], model: &str) -> Result<()> {
    let loaded = candle_core::safetensors::load_buffer(bytes, &Device::Cpu)
        .map_err(|e| Error::Estimator(format!("cannot read the safetensors weights: {e}")))?;
    let vars = varmap
        .data()
        .lock()
        .map_err(|_| Error::Estimator("model weights lock poisoned".into()))?;
    let mut names: Vec<&String> = vars.keys().collect();
    names.sort();
    let mut updates = Vec::with_capacity(names.len());
    for name in names {
        let var = &vars[name];
        let tensor = loaded.get(name).ok_or_else(|| {
            Error::Estimator(format!(
                "the saved weights have no tensor {name:?}; were they saved from a {model}?"
            ))
        })?;
        if tensor.dims() != var.dims() {
            return Err(Error::Estimator(format!(
                "saved tensor {name:?} has shape {:?} but this {model} needs {:?}; build it with \
                 the settings it was trained with",
                tensor.dims(),
                var.dims()
            )));
        }
        updates.push((var, tensor.to_dtype(var.dtype())?));
    }
    for (var, tensor) in updates {
        var.set(&tensor)?;
    }
    Ok(())
}
