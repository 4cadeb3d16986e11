//! Parameter maps: `model - <field>` (and `data - ...`, `chkpnt - ...`), Python `str()`-style value
//! formatting, and MLflow's key rules.
pub mod keys;
