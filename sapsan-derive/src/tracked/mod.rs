//! `#[tracked(train | evaluate, ...)]`.
mod attr;
mod expand;

pub use expand::expand;
