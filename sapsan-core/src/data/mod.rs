//! See the crate-level module map.
