//! `#[derive(ModelConfig)]`.
mod attr;
mod expand;

pub use expand::expand;
