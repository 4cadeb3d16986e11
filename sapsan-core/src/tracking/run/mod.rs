//! Runs as the user sees them: the run scope that `#[tracked]` functions and
//! `Train`/`Evaluate` use ([`scope`]), each backend's stack of open runs ([`RunStack`]), and
//! what happens to open runs on SIGINT/SIGTERM ([`signals`]).
mod output;
pub mod scope;
pub mod signals;
mod stack;

pub use stack::RunStack;
