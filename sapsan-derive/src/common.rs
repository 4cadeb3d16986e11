//! Helpers shared by both macros: the runtime crate's path, error collection, "did you mean".
use proc_macro2::TokenStream;
use quote::quote;

/// Collects several errors so the user sees all of them at once.
#[derive(Default)]
pub struct Errors(Option<syn::Error>);

impl Errors {
    /// Adds one error.
    pub fn push(&mut self, e: syn::Error) {
        match &mut self.0 {
            Some(all) => all.combine(e),
            None => self.0 = Some(e),
        }
    }
    /// Adds an error at the span of `tokens`.
    pub fn spanned(&mut self, tokens: impl quote::ToTokens, msg: impl std::fmt::Display) {
        self.push(syn::Error::new_spanned(tokens, msg));
    }
    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.0.is_none()
    }
    /// All errors as `compile_error!`s (empty when none).
    pub fn into_compile_errors(self) -> TokenStream {
        self.0.map(|e| e.to_compile_error()).unwrap_or_default()
    }
}

/// Path of the runtime crate in the user's crate: `::sapsan` when it depends on the facade,
/// `::sapsan_core` when it depends on (or is) `sapsan-core`. `override_path` (`crate = path`) wins.
pub fn runtime_path(override_path: Option<&syn::Path>) -> TokenStream {
    if let Some(p) = override_path {
        return quote!(#p);
    }
    use proc_macro_crate::{FoundCrate, crate_name};
    // `Itself` for `sapsan` means an example of the facade package: it still reaches itself as
    // `::sapsan`. `sapsan-core` reaches itself as `::sapsan_core` (`extern crate self as sapsan_core`).
    match crate_name("sapsan") {
        Ok(FoundCrate::Name(n)) => return ident_path(&n),
        Ok(FoundCrate::Itself) => return quote!(::sapsan),
        Err(_) => {}
    }
    match crate_name("sapsan-core") {
        Ok(FoundCrate::Name(n)) => ident_path(&n),
        Ok(FoundCrate::Itself) | Err(_) => quote!(::sapsan_core),
    }
}

fn ident_path(name: &str) -> TokenStream {
    let id = syn::Ident::new(name, proc_macro2::Span::call_site());
    quote!(::#id)
}

/// Edit distance between two short words.
fn distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != *cb);
            cur.push(sub.min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}

/// ` (did you mean `x`?)` for the closest of `known`, or nothing when none is close.
pub fn did_you_mean(word: &str, known: &[&str]) -> String {
    known
        .iter()
        .map(|k| (distance(word, k), *k))
        .filter(|(d, k)| *d <= 2.max(k.len() / 3))
        .min()
        .map(|(_, k)| format!(" (did you mean `{k}`?)"))
        .unwrap_or_default()
}

/// `a`, `b` and `c` for messages.
pub fn list(words: &[&str]) -> String {
    words
        .iter()
        .map(|w| format!("`{w}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Skips the value of an attribute option we reported as wrong (`= expr` or `(...)`).
pub fn skip_value(meta: &syn::meta::ParseNestedMeta) -> syn::Result<()> {
    if meta.input.peek(syn::Token![=]) {
        let _: syn::Token![=] = meta.input.parse()?;
        let _: syn::Expr = meta.input.parse()?;
    } else if meta.input.peek(syn::token::Paren) {
        let _: proc_macro2::Group = meta.input.parse()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggestions() {
        assert_eq!(
            did_you_mean("renam", &["rename", "skip"]),
            " (did you mean `rename`?)"
        );
        assert_eq!(
            did_you_mean("prefx", &["prefix", "crate"]),
            " (did you mean `prefix`?)"
        );
        assert_eq!(did_you_mean("zzzzzz", &["rename", "skip"]), "");
        assert_eq!(
            did_you_mean("trian", &["train", "evaluate"]),
            " (did you mean `train`?)"
        );
    }
}
