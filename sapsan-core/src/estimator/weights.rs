//! A network's variables to and from safetensors bytes (`model.safetensors`), with errors that
//! name the tensor that is missing or does not fit. Every estimator saves and loads through here.
use std::collections::HashMap;

use candle_core::{Device, Tensor};
use candle_nn::VarMap;

use crate::error::{Error, Result};

/// Every variable of `varmap` by name (the tensors share the variables' storage).
pub fn varmap_tensors(varmap: &VarMap) -> Result<HashMap<String, Tensor>> {
    Ok(varmap
        .data()
        .lock()
        .map_err(|_| Error::Estimator("model weights lock poisoned".into()))?
        .iter()
        .map(|(k, v)| (k.clone(), v.as_tensor().clone()))
        .collect())
}

/// `tensors` as safetensors bytes.
pub fn to_safetensors(tensors: &HashMap<String, Tensor>) -> Result<Vec<u8>> {
    let dir = tempfile::tempdir()
        .map_err(|e| Error::io("creating a temporary directory for", "weights", e))?;
    let path = dir.path().join("model.safetensors");
    candle_core::safetensors::save(tensors, &path)?;
    std::fs::read(&path).map_err(|e| Error::io("reading", path, e))
}

/// The tensors in safetensors `bytes`, on the CPU.
pub fn from_safetensors(bytes: &[u8]) -> Result<HashMap<String, Tensor>> {
    candle_core::safetensors::load_buffer(bytes, &Device::Cpu)
        .map_err(|e| Error::Estimator(format!("cannot read the safetensors weights: {e}")))
}

/// Every variable of `varmap` as safetensors bytes.
pub fn save_varmap(varmap: &VarMap) -> Result<Vec<u8>> {
    to_safetensors(&varmap_tensors(varmap)?)
}

/// Sets every variable of `varmap` from safetensors `bytes` saved by [`save_varmap`] of a
/// `model` of the same architecture; nothing changes on error. `model` and `settings` are for
/// the messages (see [`set_varmap`]).
pub fn load_varmap(varmap: &VarMap, bytes: &[u8], model: &str, settings: &str) -> Result<()> {
    set_varmap(varmap, &from_safetensors(bytes)?, model, settings)
}

/// Sets every variable of `varmap` from the tensor of the same name in `loaded` (which may hold
/// more); checks every name and shape first, so nothing changes on error. For the messages,
/// `model` describes the network the weights should come from and `settings` what fixes its
/// architecture (a shape mismatch says "build it with the {settings} it was trained with").
pub fn set_varmap(
    varmap: &VarMap,
    loaded: &HashMap<String, Tensor>,
    model: &str,
    settings: &str,
) -> Result<()> {
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
                 the {settings} it was trained with",
                tensor.dims(),
                var.dims()
            )));
        }
        updates.push((var, tensor.to_device(var.device())?.to_dtype(var.dtype())?));
    }
    for (var, tensor) in updates {
        var.set(&tensor)?;
    }
    Ok(())
}
