#![doc = include_str!("../README.md")]
//!
//! This facade re-exports the runtime ([`sapsan_core`]) and the macros ([`sapsan_derive`]),
//! so `use sapsan::...` is all a user writes.
pub use sapsan_core::*;
pub use sapsan_derive::{ModelConfig, tracked};
