//! Value formatters for parameters whose Python `str()` is not the plain [`PyStr`] of the Rust
//! field, used through `#[sapsan(with = ...)]` (Sapsan's `data - ...` and `chkpnt - ...` groups).
use super::PyStr;

/// `["u", "b"]` as Sapsan logs `data - features`: `str(list)[1:-1]` without quotes, `u, b`.
pub fn joined(items: &[String]) -> String {
    items.join(", ")
}

/// [`joined`], or `None` when there is no list (Sapsan's default target `["None"]` prints so).
pub fn joined_or_none(items: &Option<Vec<String>>) -> String {
    items.as_deref().map_or_else(|| "None".to_owned(), joined)
}

/// A size as Python prints a shape tuple, `(16, 16, 16)`, or `None`.
pub fn tuple_or_none(size: &Option<[usize; 3]>) -> String {
    match size {
        Some([d, h, w]) => (*d, *h, *w).py_str(),
        None => "None".to_owned(),
    }
}

/// A number as Python prints what the user most likely wrote: a whole number as an int (`1`,
/// Sapsan's default `time_granularity`), anything else as a float (`0.01`).
pub fn number(value: &f64) -> String {
    if value.is_finite() && value.fract() == 0.0 && value.abs() < 1e15 {
        format!("{}", *value as i64)
    } else {
        value.py_str()
    }
}
