//! Procedural macros of sapsan. This crate only turns tokens into code: the generated code calls
//! the public runtime API of `sapsan-core`.
use proc_macro::TokenStream;

/// Derives `sapsan_core::config::ModelConfig` (skeleton; filled in by the DSL work).
#[proc_macro_derive(ModelConfig, attributes(config))]
pub fn derive_model_config(_input: TokenStream) -> TokenStream {
    TokenStream::new()
}

/// Wraps a train/evaluate function in MLflow run bookkeeping (skeleton).
#[proc_macro_attribute]
pub fn tracked(_args: TokenStream, item: TokenStream) -> TokenStream {
    item
}
