//! MLflow's rules for metric, param and tag keys: the one source of truth, the crate
//! [`sapsan_keys`], which `sapsan-derive` also uses to check keys at compile time, so the
//! derive, the runtime and the server agree exactly.
pub use sapsan_keys::*;
