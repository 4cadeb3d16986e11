//! Parameter maps: `model - <field>` (and `data - ...`, `chkpnt - ...`), Python `str()`-style value
//! formatting, and MLflow's key rules.
//!
//! - [`ModelConfig`]: a group of parameters; usually derived with `#[derive(ModelConfig)]`.
//! - [`Params`]: the ordered `(key, value)` map a config reports and a run logs.
//! - [`PyStr`]: formats values like Python's `str()` (`True`, `1e-05`, `[16, 16, 16]`, `None`).
//! - [`Kwargs`] / [`KwargsMap`]: extra parameters, the Rust form of Python's `**kwargs`.
//! - [`keys`]: MLflow's key rules, shared with the derive macro, which checks keys at compile time.
pub mod formatters;
pub mod keys;
mod params;
mod pystr;

pub use params::{
    Kwargs, KwargsMap, ModelConfig, OptionalField, Params, ParamsBuilder, format_or_default,
};
pub use pystr::PyStr;
